"""Pick the compute device in one place, so every notebook and script agrees.

An accelerator is only useful if it computes the same numbers as the CPU. Some PyTorch versions get
this wrong on some devices (Apple's MPS has trained models to a loss stuck near 6 where the CPU reached
far lower), and nothing fails loudly: training just goes badly. So before handing out a device other
than the CPU, get_device runs one tiny fixed forward and backward pass on the CPU and on the device and
compares the loss and the gradients. On a mismatch (or an error) it warns, naming the PyTorch version
and the device, and returns the CPU. The check runs once per device per process; check=False skips it.
"""
import warnings

import torch
import torch.nn.functional as F

# Largest relative difference allowed between the CPU's and the device's loss and gradients.
# TF32 matmuls (torch.set_float32_matmul_precision("high")) stay near 1e-3; a broken kernel is off
# by far more, usually by 100%.
CHECK_RTOL = 1e-2

_checked: dict[str, str | None] = {}  # str(device) -> None if it agrees with the CPU, else why not


def get_device(prefer: str | None = None, check: bool = True) -> torch.device:
    """Return `prefer` if given, else cuda, else Apple's mps, else cpu.

    With check=True a device other than the CPU must first compute a tiny forward and backward
    pass as the CPU does (see the module docstring); if it does not, a warning says why and the
    CPU is returned.
    """
    device = _requested(prefer) if prefer else _best_available()
    if not check or device.type == "cpu":
        return device
    key = str(device)
    if key not in _checked:
        _checked[key] = device_disagreement(device)
    if _checked[key] is None:
        return device
    warnings.warn(f"{_checked[key]}; using the CPU instead. Try another PyTorch version, or "
                  "pass check=False to get_device to use the device anyway.", stacklevel=2)
    return torch.device("cpu")


def _best_available() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _requested(prefer: str) -> torch.device:
    try:
        device = torch.device(prefer)
    except RuntimeError as err:
        raise ValueError(f"unknown device {prefer!r}: use 'cpu', 'cuda', 'cuda:1' or 'mps'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {prefer!r} was asked for, but this PyTorch sees no CUDA GPU; "
                         "use 'cpu' (or leave the device unset to pick the best available)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {prefer!r} was asked for, but this machine has "
                         f"{torch.cuda.device_count()} CUDA GPU(s), numbered from 0; "
                         "nvidia-smi lists them")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {prefer!r} was asked for, but MPS is not available here; use 'cpu'")
    return device


# ---------------------------------------------------------------------------------------------
# The self-check
# ---------------------------------------------------------------------------------------------

def tiny_forward_backward(device) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Loss and gradients, on the CPU, of a fixed 2-layer GPTModel's cross-entropy on fixed tokens
    computed on `device`: embeddings, causal attention, LayerNorm, GELU and the loss, both ways."""
    from shared.model import GPT_CONFIG_124M, GPTModel

    cfg = {**GPT_CONFIG_124M, "vocab_size": 97, "context_length": 16, "emb_dim": 32,
           "num_heads": 4, "num_layers": 2, "drop_rate": 0.0, "qkv_bias": True}
    with torch.random.fork_rng(devices=[]):  # leave the caller's random numbers alone
        torch.manual_seed(0)
        model = GPTModel(cfg)
        idx = torch.randint(0, cfg["vocab_size"], (2, cfg["context_length"] + 1))
    model = model.to(device)
    idx = idx.to(device)
    logits = model(idx[:, :-1])  # (2, 16, 97)
    loss = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
    loss.backward()
    return loss.detach().cpu(), [p.grad.cpu() for p in model.parameters()]


def device_disagreement(device) -> str | None:
    """None if `device` computes tiny_forward_backward as the CPU does; else a sentence saying
    how it differs (or which error it raised), with the PyTorch version and the device's name."""
    where = f"{device} ({_device_name(device)}) with torch {torch.__version__}"
    expected_loss, expected_grads = tiny_forward_backward(torch.device("cpu"))
    try:
        loss, grads = tiny_forward_backward(device)
    except Exception as err:  # e.g. a kernel missing for this GPU, an op MPS lacks
        return f"{where} failed a tiny forward and backward pass: {type(err).__name__}: {err}"
    errors = [_relative_error(loss, expected_loss)]
    errors += [_relative_error(g, e) for g, e in zip(grads, expected_grads)]
    worst = max(errors)
    if not worst <= CHECK_RTOL:  # `not <=` also catches NaN
        return (f"{where} disagrees with the CPU on a tiny forward and backward pass: loss "
                f"{loss.item():.6f} vs {expected_loss.item():.6f} on the CPU, largest relative "
                f"error {worst:.2g} (tolerance {CHECK_RTOL:g})")
    return None


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected.double()).norm() / expected.double().norm()).item()


def _device_name(device: torch.device) -> str:
    if device.type == "mps":
        return "Apple MPS"
    try:
        return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    except Exception as err:  # a broken driver: the check below will say more
        return f"name unknown: {type(err).__name__}"
