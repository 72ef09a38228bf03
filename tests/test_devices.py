import pytest
import torch

from segtrt.backends import choose_backend, create_runners
from segtrt.config import PredictSettings
from segtrt.devices import resolve_device
from segtrt.errors import BackendUnavailableError


def test_auto_device_without_cuda_is_cpu_and_says_why(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    device, reason = resolve_device("auto")
    assert device.type == "cpu" and "no CUDA" in reason


def test_explicit_cuda_without_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailableError, match="--device cpu"):
        resolve_device("cuda")


@pytest.mark.parametrize("name", ["gpu", "mps", "cuda:x"])
def test_unknown_device_is_refused(name):
    with pytest.raises(BackendUnavailableError):
        resolve_device(name)


def test_backend_auto_on_cpu_is_torch_with_reason():
    backend, reason = choose_backend(torch.device("cpu"))
    assert backend == "torch" and "cpu" in reason.lower()


def test_tensorrt_backend_needs_cuda():
    class Model:
        networks = [torch.nn.Identity()]

    with pytest.raises(BackendUnavailableError, match="CUDA"):
        create_runners(Model(), PredictSettings(backend="tensorrt"), torch.device("cpu"))
