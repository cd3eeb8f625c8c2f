"""Pick the compute device in one place, so every notebook and script agrees."""
import torch


def get_device(prefer: str | None = None) -> torch.device:
    """Return `prefer` if given, else cuda, else Apple's mps, else cpu."""
    if prefer:
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
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
