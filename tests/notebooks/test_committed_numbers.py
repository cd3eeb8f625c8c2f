"""The numbers chapters 2-4 and their solutions are committed with are the numbers their code prints.

Each of these notebooks runs in well under a minute on two cores, so each is run again here, at its
committed parameters (papermill with no parameters), on a temporary copy of the repository, and
every number it prints is compared with the committed output of the same cell. (The long notebooks,
chapters 5 and 6, are checked by the fingerprint of the code they ran: test_committed_outputs.py.)

What is compared: the text each code cell prints (stdout, and the text form of displayed values;
not stderr, whose warnings depend on the installed package versions, and not the pixels of a
figure). The words of a line must be the same; its numbers are compared one by one:
- integers (counts, token ids, sizes) must be equal;
- a decimal may differ by one unit in its last printed digit, or by 1e-6, because a sum taken in
  another order (another CPU, another thread count) rounds differently; nothing else is tolerated.
- A cell that prints a duration or a speed (a number followed by s, ms, us, min, tokens/s, it/s)
  measures the clock: its numbers, and the verdict it draws from them, change from run to run, so
  only its number of lines is compared. A line about resident memory (RSS) is skipped the same way.
"""
import json
import math
import re
import shutil

import pytest

from nbrun import REPO

NOTEBOOKS = sorted(p.relative_to(REPO).as_posix() for p in REPO.glob("chapters/*.ipynb"))

NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?!\d)")
CLOCK = re.compile(r"\d\s*(?:ns|us|µs|ms|s|sec|seconds|min|minutes|(?:tokens|it)/s)\b")
MEMORY = re.compile(r"\bRSS\b")


def printed(notebook: dict) -> list[list[str]]:
    """The lines each code cell printed, in order (consecutive stdout chunks joined)."""
    cells = []
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        text = ""
        for out in cell.get("outputs", []):
            if out["output_type"] == "stream" and out["name"] == "stdout":
                text += "".join(out["text"])
            elif "text/plain" in out.get("data", {}):
                text += "".join(out["data"]["text/plain"]) + "\n"
        cells.append(text.splitlines())
    return cells


def last_digit(number: str) -> float:
    """One unit in the last printed digit of a decimal: 0.01 for '3.14', 1e-5 for '4.7e-04'."""
    mantissa, _, exponent = number.lower().partition("e")
    places = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - places)


def same_number(committed: str, rerun: str) -> bool:
    if committed == rerun:
        return True
    if "." not in committed + rerun and "e" not in (committed + rerun).lower():
        return False  # integers: exact
    a, b = (float(n.replace(",", "")) for n in (committed, rerun))
    unit = max(last_digit(committed), last_digit(rerun))
    return math.isclose(a, b, rel_tol=0, abs_tol=unit * (1 + 1e-9)) or abs(a - b) <= 1e-6


def line_differences(committed: str, rerun: str) -> bool:
    """True when the two lines differ in their words or in a number beyond the tolerance."""
    if NUMBER.sub("#", committed) != NUMBER.sub("#", rerun):
        return True
    if MEMORY.search(committed):
        return False
    return not all(map(same_number, NUMBER.findall(committed), NUMBER.findall(rerun)))


def differences(committed: dict, rerun: dict) -> list[str]:
    """Where the re-run printed something other than the committed notebook (empty: nowhere)."""
    old, new = printed(committed), printed(rerun)
    if len(old) != len(new):
        return [f"{len(old)} code cells committed, {len(new)} re-run"]
    found = []
    for index, (a, b) in enumerate(zip(old, new), start=1):
        if len(a) != len(b):
            found.append(f"code cell {index}: {len(a)} lines committed, {len(b)} printed")
        elif not any(CLOCK.search(line) for line in a + b):  # a cell that times something: skipped
            found += [f"code cell {index}: committed {x!r}, printed {y!r}"
                      for x, y in zip(a, b) if line_differences(x, y)]
    return found


@pytest.fixture(scope="module")
def reruns(tmp_path_factory):
    """name -> the notebook re-run on a temporary copy of shared/, bundled/ and chapters/ (each
    notebook run once, when a test first asks; the solutions read their chapter's code)."""
    import papermill as pm

    copy = tmp_path_factory.mktemp("repo")
    for folder in ("shared", "bundled", "chapters"):
        shutil.copytree(REPO / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__"))
    done = {}

    def rerun(name):
        if name not in done:
            out = copy / "reruns" / name
            out.parent.mkdir(parents=True, exist_ok=True)
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("PYTHONPATH", str(copy))  # the kernel imports the copy's shared/
                patch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # as
                pm.execute_notebook(str(copy / name), str(out),  # commit_outputs.sh runs them
                                    cwd=str((copy / name).parent), kernel_name="python3",
                                    progress_bar=False, execution_timeout=600)
            done[name] = json.loads(out.read_text(encoding="utf-8"))
        return done[name]

    return rerun


def committed(name: str) -> dict:
    return json.loads((REPO / name).read_text(encoding="utf-8"))


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_a_rerun_prints_the_committed_numbers(name, reruns):
    assert differences(committed(name), reruns(name)) == [], \
        f"re-run it: bash scripts/commit_outputs.sh {name}"


def edit_first_number(notebook: dict, integer: bool) -> dict:
    """A copy of `notebook` with the leading digit of one printed number changed, as a hand edit
    would: the first integer (or decimal) of at least two digits outside a timing cell."""
    notebook = json.loads(json.dumps(notebook))
    for cell in notebook["cells"]:
        streams = [o for o in cell.get("outputs", []) if o.get("name") == "stdout"]
        if not streams or any(CLOCK.search("".join(o["text"])) for o in streams):
            continue
        for out in streams:
            text = "".join(out["text"])
            for match in NUMBER.finditer(text):
                number = match.group().lstrip("-")
                if ("." in number) == integer or len(number.replace(",", "")) < 2:
                    continue
                edited = str(int(number[0]) % 9 + 1) + number[1:]  # 1-9: no leading zero
                out["text"] = text[:match.end() - len(number)] + edited + text[match.end():]
                return notebook
    raise AssertionError("no number to edit")


@pytest.mark.slow
@pytest.mark.parametrize("integer", [True, False], ids=["an integer", "a decimal"])
def test_a_number_edited_by_hand_in_a_copy_is_seen(integer, reruns):
    name = "chapters/ch03_attention.ipynb"
    rerun = reruns(name)
    assert differences(committed(name), rerun) == []
    edited = edit_first_number(committed(name), integer)
    changed = [(cell, line) for cell, (a, b) in enumerate(zip(printed(committed(name)),
                                                               printed(edited)), start=1)
               for line, (x, y) in enumerate(zip(a, b)) if x != y]
    assert len(changed) == 1  # one line of one cell edited
    cell, line = changed[0]
    assert differences(edited, rerun) == [
        f"code cell {cell}: committed {printed(edited)[cell - 1][line]!r}, "
        f"printed {printed(rerun)[cell - 1][line]!r}"]


def test_the_tolerance_is_one_unit_in_the_last_digit_and_integers_are_exact():
    assert same_number("0.4419", "0.4420") and not same_number("0.4419", "0.4421")
    assert same_number("4.7e-04", "4.8e-04") and not same_number("4.7e-04", "4.9e-04")
    assert same_number("-2.9802322387695312e-08", "1.1e-08")  # float32 round-off around 0
    assert same_number("1.0", "0.9999999403953552")
    assert not same_number("5,145", "5,146") and not same_number("15496", "15497")
    assert line_differences("loss 10.98 after 4 steps", "loss 10.98 after 5 steps")
    assert line_differences("SDPA is faster", "SDPA is slower")  # words are compared too
    assert NUMBER.findall("[290, 4920] 5,145 tokens, -1.5e-03, 1.9x as fast, float32 v1.0") == [
        "290", "4920", "5,145", "-1.5e-03", "1.9"]


def test_a_cell_that_prints_a_duration_is_not_compared_but_others_are():
    def notebook(*lines):
        return {"cells": [{"cell_type": "code", "outputs": [
            {"output_type": "stream", "name": "stdout", "text": line + "\n"}]} for line in lines]}
    old = notebook("forward: 648.35 ms\nratio 1.86", "4,690 tokens")
    assert differences(old, notebook("forward: 670.93 ms\nratio 1.85", "4,690 tokens")) == []
    assert differences(old, notebook("forward: 670.93 ms\nratio 1.85", "4,691 tokens")) == [
        "code cell 2: committed '4,690 tokens', printed '4,691 tokens'"]
    assert differences(old, notebook("forward: 670.93 ms", "4,690 tokens")) == [
        "code cell 1: 2 lines committed, 1 printed"]
