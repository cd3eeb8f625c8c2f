"""shared.device.get_device: the best device by default, a clear error for one that is not there,
and the CPU (with a warning) for a device that computes a tiny forward and backward pass wrongly."""
import warnings
from types import SimpleNamespace

import pytest
import torch

import shared.device as device_module
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
    assert get_device("cuda:0", check=False) == torch.device("cuda:0")
    assert get_device("cuda", check=False) == torch.device("cuda")
    with pytest.raises(ValueError, match=r"'cuda:7' was asked for, but this machine has 1 CUDA GPU"):
        get_device("cuda:7")


# --- the self-check: a device must compute what the CPU computes ------------------------------

@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA GPU that is not there: get_device("cuda") passes its checks, and the tiny pass
    "on the GPU" runs on the CPU, then goes through `fake.fault` (set by each test) to mimic a bad
    device; `fake.calls` lists the devices the tiny pass was asked to run on."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU 9000")
    monkeypatch.setattr(device_module, "_checked", {})  # a fresh process: nothing checked yet
    real = device_module.tiny_forward_backward
    fake = SimpleNamespace(calls=[], fault=lambda loss, grads: (loss, grads))

    def on_device(device):
        fake.calls.append(torch.device(device).type)
        loss, grads = real(torch.device("cpu"))
        return (loss, grads) if fake.calls[-1] == "cpu" else fake.fault(loss, grads)
    monkeypatch.setattr(device_module, "tiny_forward_backward", on_device)
    return fake


def test_device_that_agrees_with_the_cpu_is_kept_and_checked_once(fake_gpu):
    # Rounding-sized differences, as TF32 matmuls give, are within tolerance.
    fake_gpu.fault = lambda loss, grads: (loss * (1 + 1e-4), [g * (1 + 1e-4) for g in grads])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert get_device() == torch.device("cuda")
        assert get_device("cuda") == torch.device("cuda")
    assert fake_gpu.calls == ["cpu", "cuda"]  # one check for both calls: the result is cached


def test_device_with_wrong_gradients_falls_back_to_the_cpu_with_a_warning(fake_gpu):
    def wrong_gradients(loss, grads):  # the loss is right, one gradient is off by 5%
        return loss, [g * 1.05 if i == 3 else g for i, g in enumerate(grads)]
    fake_gpu.fault = wrong_gradients
    with pytest.warns(UserWarning) as record:
        assert get_device("cuda") == torch.device("cpu")
    message = str(record[0].message)
    assert f"cuda (Fake GPU 9000) with torch {torch.__version__} disagrees with the CPU" in message
    assert "largest relative error 0.05" in message and "check=False" in message
    with pytest.warns(UserWarning, match="using the CPU instead"):
        assert get_device() == torch.device("cpu")
    assert fake_gpu.calls == ["cpu", "cuda"]  # the verdict is cached too


@pytest.mark.parametrize("fault, words", [
    (lambda loss, grads: (torch.tensor(float("nan")), grads), "loss nan vs"),
    (lambda loss, grads: (loss + 1.5, grads), "disagrees with the CPU"),
])
def test_wrong_or_nan_loss_falls_back(fake_gpu, fault, words):
    fake_gpu.fault = fault
    with pytest.warns(UserWarning, match=words):
        assert get_device("cuda") == torch.device("cpu")


def test_device_that_raises_falls_back_with_the_error(fake_gpu):
    def broken(loss, grads):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")
    fake_gpu.fault = broken
    with pytest.warns(UserWarning, match=r"failed a tiny forward and backward pass: RuntimeError: "
                                         r"CUDA error: no kernel image"):
        assert get_device("cuda") == torch.device("cpu")


def test_check_false_skips_the_check(fake_gpu):
    fake_gpu.fault = lambda loss, grads: (loss + 1.5, grads)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert get_device("cuda", check=False) == torch.device("cuda")
    assert fake_gpu.calls == []


def test_the_check_leaves_the_callers_random_numbers_alone(fake_gpu):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    get_device("cuda")
    assert torch.equal(torch.rand(3), expected)


def test_tiny_pass_is_sensitive_and_deterministic():
    """The pass exercises every parameter: each gets a nonzero gradient, and two runs agree."""
    loss, grads = device_module.tiny_forward_backward(torch.device("cpu"))
    again, grads_again = device_module.tiny_forward_backward(torch.device("cpu"))
    assert torch.equal(loss, again) and all(torch.equal(a, b) for a, b in zip(grads, grads_again))
    assert all(g.abs().max() > 0 for g in grads)
    assert device_module.device_disagreement(torch.device("cpu")) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_gpu_agrees_with_the_cpu(monkeypatch):
    monkeypatch.setattr(device_module, "_checked", {})
    assert device_module.device_disagreement(torch.device("cuda")) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert get_device("cuda") == torch.device("cuda")


def test_benchmarks_stop_on_a_device_that_fails_the_check(fake_gpu):
    """get_device would fall back to the CPU; a benchmark asked for the GPU must not time the CPU."""
    from benchmarks.common import setup
    args = SimpleNamespace(device="cuda", threads=torch.get_num_threads(), seed=0)
    fake_gpu.fault = lambda loss, grads: (loss + 1.5, grads)
    with pytest.raises(RuntimeError, match="disagrees with the CPU.*not benchmarking it"):
        setup(args)
    fake_gpu.fault = lambda loss, grads: (loss, grads)  # a device that agrees is used as asked
    device_module._checked.clear()
    assert setup(args) == torch.device("cuda")
