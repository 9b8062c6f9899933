import importlib.machinery
import sys
import types

from core.models.device import configure_threads, detect_device, on_gpu


def work(x):
    return x * 2


def test_gpu_wrapper_is_a_no_op_without_spaces(monkeypatch):
    monkeypatch.delitem(sys.modules, "spaces", raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "spaces" not in p])
    assert on_gpu(work) is work


def test_gpu_wrapper_uses_spaces_gpu_on_zerogpu(monkeypatch):
    fake = types.ModuleType("spaces")
    fake.__spec__ = importlib.machinery.ModuleSpec("spaces", None)
    fake.GPU = lambda fn: ("wrapped", fn)
    monkeypatch.setitem(sys.modules, "spaces", fake)
    assert on_gpu(work) == ("wrapped", work)


def test_cpu_device_and_threads():
    assert configure_threads(1) == 1
    assert detect_device("cpu").kind == "cpu"
    configure_threads()
