"""Saving and restoring a model with its optimizer, atomically and without unpickling code."""
import collections
import pickle
import re
from pathlib import Path

import torch

from shared import checks
from shared.config import MODEL_SWITCHES, with_defaults
from shared.files import atomic_path
from shared.model import unwrap_model
from shared.tokenizer import GPT2_VOCAB_SIZE


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded here: damaged, not ours, or of another model or optimizer."""


def save_checkpoint(path, model, optimizer=None, **extra):
    """Write model (and optimizer) state plus `extra` fields to `path`.

    The file is written under a temporary name in the same folder and renamed when complete, so a
    crash mid-save never leaves a truncated checkpoint under the real name. `extra` must hold plain
    values (numbers, strings, lists, dicts, tensors): the loader refuses anything else.
    """
    path = Path(path)
    for key, value in extra.items():
        _check_plain(value, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model_state_dict": unwrap_model(model).state_dict(), "extra": extra}
    payload.update(_what_it_is(model, optimizer))  # what load_checkpoint compares before loading
    if optimizer is not None:
        payload["optimizer_state_dict"] = optimizer.state_dict()
        payload["optimizer_type"] = type(optimizer).__name__
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(payload, f)
    except (OSError, RuntimeError) as err:  # a full disk, a read-only folder: the old file stays
        err = _os_error_in(err)
        if err is None:
            raise  # not the file system's: a genuine bug keeps its traceback
        kept = "the previous file is kept" if path.exists() else "nothing was written"
        raise OSError(err.errno, f"could not save the checkpoint {path}: "
                                 f"{err.strerror or err}; {kept}") from None
    return path


def _os_error_in(err):
    """The OSError behind `err`, or None. torch.save turns a failed write (ENOSPC) into a
    RuntimeError ("enforce fail ... unexpected pos"), with the OSError as its context."""
    while err is not None and not isinstance(err, OSError):
        err = err.__cause__ or err.__context__
    return err


def _check_plain(value, where):
    """Refuse, at save time, what a weights_only load would refuse later.

    Exact types, not isinstance: np.float64 is a float, an IntEnum an int and a namedtuple a
    tuple, yet each pickles as its own class, which weights_only=True refuses to load.
    """
    if type(value) in (dict, collections.OrderedDict):
        for key, item in value.items():
            _check_plain(key, f"{where} (a key)")
            _check_plain(item, f"{where}[{key!r}]")
    elif type(value) in (list, tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif not (type(value) in (type(None), bool, int, float, str)
              or isinstance(value, torch.Tensor)):
        raise TypeError(f"save_checkpoint: {where} is a {type(value).__name__}; store plain values "
                        "(numbers, strings, lists, dicts, tensors), which load with weights_only=True; "
                        "convert with float(), int(), dict() or .tolist()")


def read_checkpoint(path, map_location=None) -> dict:
    """The payload of a file that save_checkpoint wrote, read with weights_only=True.

    weights_only=True means the file is read as tensors and plain containers only: a checkpoint
    from an untrusted source cannot run code on your machine. Anything else raises
    CheckpointError in one line (FileNotFoundError stays itself).
    """
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        raise  # the path, not the file's contents: torch's own error says it (a cut file is EINVAL)
    except Exception as err:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()  # torch colours part of its message
        if "torch.cuda.is_available() is False" in text:
            raise CheckpointError(f"{path} holds tensors saved on a GPU and this machine has none: "
                                  "load it with map_location='cpu'") from None
        reason = text.splitlines()[0] if text else type(err).__name__
        if isinstance(err, pickle.UnpicklingError) or "weights only" in reason.lower():
            # torch's advice to unpickle arbitrary code is not ours to give
            reason = "it holds objects other than tensors and plain values"
        raise CheckpointError(f"{path} is not a readable checkpoint: {reason}. It may be empty, "
                              "truncated or corrupt: delete it and save (or download) it again.") from None
    if not isinstance(payload, dict) or not _is_state_dict(payload.get("model_state_dict")):
        raise CheckpointError(f"{path} does not look like a checkpoint written by save_checkpoint: "
                              "it needs a 'model_state_dict' that maps names to tensors")
    return payload


def load_checkpoint(path, model, optimizer=None, map_location=None, required=(), check=None):
    """Restore model (and optimizer) state from `path`; returns the extra fields as a dict.

    The file is read by read_checkpoint (no code is unpickled). Loading is all or nothing: first
    the file must hold the extra fields named in `required` and pass `check(extra)` (a function
    that raises to refuse them), the model configuration it records must be the model's (the
    number of heads, a tied head, RoPE... which shapes alone do not tell), its tensors must have
    the model's names and shapes, and its optimizer state must be for the same parameters in the
    same order; only then is anything copied. A refused file leaves model and optimizer untouched.
    """
    payload = read_checkpoint(path, map_location)
    extra = payload.get("extra", {})
    missing = [key for key in required if not isinstance(extra, dict) or key not in extra]
    if missing:
        raise CheckpointError(f"{path} holds no {', '.join(missing)}: it was not written by the "
                              "code that needs them (shared.trainer.train writes them for resume)")
    if check is not None:
        check(extra)
    model = unwrap_model(model)
    recorded = payload.get("model_config", extra.get("model_config") if isinstance(extra, dict) else None)
    _check_config(path, recorded, getattr(model, "cfg", None))
    _check_matches(path, payload["model_state_dict"], model.state_dict())
    if optimizer is not None:
        _check_optimizer(path, payload, optimizer, model)
    model.load_state_dict(payload["model_state_dict"])
    if optimizer is not None:
        optimizer.load_state_dict(payload["optimizer_state_dict"])
    return payload.get("extra", {})


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _check_matches(path, saved, expected):
    """Same tensor names and shapes, or a one-line error naming the first difference."""
    missing, unexpected = sorted(expected.keys() - saved.keys()), sorted(saved.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(f"{path} was saved from another model: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}; build the model with the config it was "
                              "saved with (its 'model_config' field)")
    for name, tensor in expected.items():
        if saved[name].shape != tensor.shape:
            raise CheckpointError(f"{path} was saved from another model configuration: {name} has "
                                  f"shape {tuple(saved[name].shape)} there, {tuple(tensor.shape)} here")


def _check_optimizer(path, payload, optimizer, model):
    if "optimizer_state_dict" not in payload:
        raise CheckpointError(f"{path} holds no optimizer state; load it without an optimizer")
    saved_type = payload.get("optimizer_type")
    if saved_type is not None and saved_type != type(optimizer).__name__:
        raise CheckpointError(f"{path} holds the state of a {saved_type} optimizer, not of a "
                              f"{type(optimizer).__name__}; build the same optimizer to resume")
    saved_groups = payload["optimizer_state_dict"]["param_groups"]
    sizes = [len(g["params"]) for g in saved_groups]
    if sizes != [len(g["params"]) for g in optimizer.param_groups]:
        raise CheckpointError(f"{path} holds optimizer state for parameter groups of sizes {sizes}, "
                              "which do not match this optimizer's")
    here = _optimizer_params(model, optimizer)
    saved = payload.get("optimizer_params") or _shapes_from_state(payload["optimizer_state_dict"], here)
    for g, (saved_group, group) in enumerate(zip(saved, here)):
        for i, (was, now) in enumerate(zip(saved_group, group)):
            # a file without names (older) is compared by shapes; one name unknown ("?"): shapes
            if list(was[1]) != list(now[1]) or "?" not in (was[0], now[0]) and was[0] != now[0]:
                raise CheckpointError(
                    f"{path} holds optimizer state for {was[0]} {tuple(was[1])} as parameter {i} of "
                    f"group {g}, where this optimizer has {now[0]} {tuple(now[1])}: build the "
                    "optimizer with the same parameters in the same order (e.g. "
                    "shared.trainer.configure_optimizer)")


def _architecture(cfg: dict) -> dict:
    """What a model's computation depends on: its sizes, qkv_bias and the switches that
    MODEL_SWITCHES marks as architecture, with the table's defaults for the ones an older config
    lacks. drop_rate and init are left out: dropout is a training choice, and the load overwrites
    the initial weights."""
    arch = {key: cfg[key] for key in checks.SIZE_KEYS + ("qkv_bias",) if key in cfg}
    switches = with_defaults(cfg)
    arch.update({key: switches[key] for key, switch in MODEL_SWITCHES.items()
                 if switch.architecture})
    arch["tokenizer_vocab_size"] = cfg.get("tokenizer_vocab_size",
                                           min(cfg.get("vocab_size", 0), GPT2_VOCAB_SIZE))
    if arch["pos_encoding"] != "rope":
        del arch["rope_theta"]  # unused by learned positions
    return arch


def _check_config(path, recorded, here):
    """The configuration the file records is the model's, or CheckpointError naming the key."""
    if not isinstance(here, dict) or recorded is None:
        return  # not a GPTModel, or a file that records none: the shapes are all there is
    missing = [key for key in checks.REQUIRED_KEYS if not isinstance(recorded, dict) or key not in recorded]
    if missing:
        raise CheckpointError(f"{path} records a model_config without {missing}: the file is damaged "
                              "or was edited; save it again from the model")
    saved, mine = _architecture(recorded), _architecture(here)
    for key, value in mine.items():
        if saved.get(key) != value:
            raise CheckpointError(f"{path} was saved from a model with {key} = {saved.get(key)!r}, "
                                  f"this model has {value!r}: build it with the config the file "
                                  "records (its 'model_config')")


def _what_it_is(model, optimizer) -> dict:
    """The model's configuration and the optimizer's parameters, as plain values for the file."""
    found = {}
    cfg = getattr(unwrap_model(model), "cfg", None)
    if isinstance(cfg, dict):
        try:
            _check_plain(cfg, "model_config")
            found["model_config"] = dict(cfg)
        except TypeError:  # e.g. a numpy float in a hand-made config: shapes are compared instead
            pass
    if optimizer is not None:
        found["optimizer_params"] = _optimizer_params(model, optimizer)
    return found


def _optimizer_params(model, optimizer) -> list:
    """[[name, shape] of each parameter] per group, in the optimizer's order ('?': not the model's)."""
    names = {id(p): name for name, p in unwrap_model(model).named_parameters()}
    return [[[names.get(id(p), "?"), list(p.shape)] for p in group["params"]]
            for group in optimizer.param_groups]


def _shapes_from_state(state_dict, here) -> list:
    """For a file without optimizer_params: the shapes of its moments (exp_avg ...) per parameter."""
    state, index, groups = state_dict.get("state", {}), 0, []
    for group in here:
        saved = []
        for name, shape in group:
            moments = [v for v in state.get(index, {}).values()
                       if isinstance(v, torch.Tensor) and v.dim() > 0]
            saved.append(["?", list(moments[0].shape) if moments else shape])
            index += 1
        groups.append(saved)
    return groups
