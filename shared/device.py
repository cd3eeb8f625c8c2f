"""Pick the compute device in one place, so every notebook and script agrees."""
import torch


def get_device(prefer: str | None = None) -> torch.device:
    """Return `prefer` if given, else cuda, else Apple's mps, else cpu."""
    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
