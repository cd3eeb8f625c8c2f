"""Test helper: each switch of shared/config.py's MODEL_SWITCHES set away from its default."""
from shared.config import MODEL_SWITCHES


def other_values(key: str) -> list:
    """The values a switch takes besides its default (a number switch: twice the default)."""
    switch = MODEL_SWITCHES[key]
    if switch.allowed is bool:
        return [not switch.default]
    if switch.allowed is float:
        return [2 * switch.default]
    return [value for value in switch.allowed if value != switch.default]


def one_switch_changed(gpt2_only: bool = False) -> list:
    """[{key: value}, ...]: every value besides the default of every switch (gpt2_only: of the
    switches OpenAI's GPT-2 weights need at their default)."""
    return [{key: value} for key, switch in MODEL_SWITCHES.items()
            if switch.gpt2_only_default or not gpt2_only for value in other_values(key)]
