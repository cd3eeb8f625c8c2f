"""shared.device.get_device: the best device by default, a clear error for one that is not there."""
import pytest
import torch

from shared.device import get_device


def test_explicit_cpu_and_default():
    assert get_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else None
    if expected:
        assert get_device().type == expected
    else:
        assert get_device().type in ("mps", "cpu")


def test_unknown_device_name_is_explained():
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        get_device("gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_missing_cuda_is_explained():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        get_device("cuda")


def test_missing_gpu_index_is_explained(monkeypatch):
    """'cuda:7' on a one-GPU machine: torch would only say 'invalid device ordinal', later."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert get_device("cuda:0") == torch.device("cuda:0")
    assert get_device("cuda") == torch.device("cuda")
    with pytest.raises(ValueError, match=r"'cuda:7' was asked for, but this machine has 1 CUDA GPU"):
        get_device("cuda:7")
