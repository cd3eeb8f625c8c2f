"""Saving and restoring a model with its optimizer, atomically and without unpickling code."""
import collections
from pathlib import Path

import torch

from shared.files import atomic_path


def unwrap_model(model):
    """The plain module inside DistributedDataParallel (.module) or torch.compile (._orig_mod)."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


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
    if optimizer is not None:
        payload["optimizer_state_dict"] = optimizer.state_dict()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)
    return path


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


def load_checkpoint(path, model, optimizer=None, map_location=None):
    """Restore model (and optimizer) state from `path`; returns the extra fields as a dict.

    weights_only=True means the file is read as tensors and plain containers only: a checkpoint
    from an untrusted source cannot run code on your machine.
    """
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise RuntimeError(f"{path} is not a readable checkpoint ({err}). It may be truncated or "
                           "corrupt: delete it and save (or download) it again.") from err
    if not isinstance(payload, dict) or "model_state_dict" not in payload:
        raise RuntimeError(f"{path} does not look like a checkpoint written by save_checkpoint")
    unwrap_model(model).load_state_dict(payload["model_state_dict"])
    if optimizer is not None:
        if "optimizer_state_dict" not in payload:
            raise RuntimeError(f"{path} holds no optimizer state; load it without an optimizer")
        optimizer.load_state_dict(payload["optimizer_state_dict"])
    return payload.get("extra", {})
