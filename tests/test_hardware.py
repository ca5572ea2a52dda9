import sys

from coati_tui.core import hardware


def test_profile_has_cpu_disk_and_stacks():
    prof = hardware.profile()
    assert prof.cpu.cores >= 1 and prof.cpu.ram_total_bytes > 0
    assert prof.disk_free_bytes > 0
    assert prof.stacks["textual"]["installed"]
    if not prof.gpus:
        assert prof.nvml_error  # an empty GPU list always says why


def test_no_nvml_binding_is_an_empty_list(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    found, why = hardware.gpus()
    assert found == [] and "nvidia-ml-py" in why


def test_nvml_init_failure_is_an_empty_list(monkeypatch):
    class FakeNVML:
        @staticmethod
        def nvmlInit():
            raise RuntimeError("Driver Not Loaded")

        @staticmethod
        def nvmlShutdown():
            pass

    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML)
    found, why = hardware.gpus()
    assert found == [] and "Driver Not Loaded" in why


def test_cuda_build_detection():
    class Dist:
        def __init__(self, version, requires):
            self.version, self.requires = version, requires

    assert not hardware._torch_is_cuda_build(Dist("2.13.0+cpu", []))
    assert hardware._torch_is_cuda_build(Dist("2.5.1+cu121", []))
    assert hardware._torch_is_cuda_build(Dist("2.5.1", ["nvidia-cublas-cu12==12.4.5.8; platform_system == 'Linux'"]))
    assert not hardware._torch_is_cuda_build(Dist("2.5.1", ["filelock", "sympy"]))


def test_units():
    from coati_tui.core.units import fmt_bytes, parse_bytes

    assert parse_bytes("12GiB") == 12 * 1024**3 and parse_bytes("24 GB") == 24 * 10**9
    assert parse_bytes("512M") == 512 * 1024**2 and parse_bytes(1000) == 1000
    assert fmt_bytes(1536) == "1.5 KiB"
    import pytest

    with pytest.raises(ValueError, match="not a size"):
        parse_bytes("twelve")
