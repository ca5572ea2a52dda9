import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from coati_tui.core import hardware

pytestmark = pytest.mark.once  # app/host side: its outcome does not hang on the torch stack (CI: once)


def test_profile_has_cpu_disk_and_stacks():
    prof = hardware.profile()
    assert prof.cpu.cores >= 1 and prof.cpu.ram_total_bytes > 0
    assert prof.disk_free_bytes > 0
    assert prof.stacks["textual"]["installed"]
    if not prof.gpus:
        assert prof.nvml_error  # an empty GPU list always says why


FAKE_NVML = r"""
#include <string.h>
typedef struct { unsigned long long total, free, used; } mem_t;
static int inited = 0;
static const char *ERR = "ERR";
const char *nvmlErrorString(int code) { return code == 9 ? "Driver Not Loaded" : ERR; }
int nvmlInit_v2(void) { if (getenv("FAKE_NVML_FAIL")) return 9; inited = 1; return 0; }
int nvmlShutdown(void) { inited = 0; return 0; }
int nvmlSystemGetDriverVersion(char *v, unsigned int n) { strncpy(v, "555.42.06", n); return 0; }
int nvmlDeviceGetCount_v2(unsigned int *c) { *c = inited ? 2 : 0; return inited ? 0 : 1; }
int nvmlDeviceGetHandleByIndex_v2(unsigned int i, void **h) { *h = (void *)(long)(i + 1); return 0; }
int nvmlDeviceGetName(void *h, char *name, unsigned int n) {
    strncpy(name, (long)h == 1 ? "NVIDIA GeForce RTX 3060" : "NVIDIA GeForce RTX 4090", n); return 0; }
int nvmlDeviceGetMemoryInfo(void *h, mem_t *m) {
    m->total = (long)h == 1 ? 12884901888ULL : 25769803776ULL; m->free = m->total / 2; m->used = m->total / 2;
    return 0; }
int nvmlDeviceGetCudaComputeCapability(void *h, int *major, int *minor) {
    *major = 8; *minor = (long)h == 1 ? 6 : 9; return 0; }
"""


@pytest.fixture(scope="module")
def fake_nvml(tmp_path_factory) -> Path:
    """A stand-in libnvidia-ml built from C: the binding's ctypes signatures meet a real shared library."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler to build the stand-in NVML")
    folder = tmp_path_factory.mktemp("nvml")
    (folder / "nvml.c").write_text("#include <stdlib.h>\n" + FAKE_NVML)
    subprocess.run(
        [cc, "-shared", "-fPIC", "-o", str(folder / "libnvidia-ml.so.1"), str(folder / "nvml.c")], check=True
    )
    return folder / "libnvidia-ml.so.1"


def test_gpus_through_the_nvml_library(fake_nvml, monkeypatch):
    monkeypatch.setenv("COATI_TUI_NVML_LIB", str(fake_nvml))
    found, why = hardware.gpus()
    assert why is None
    assert [(g.index, g.name, g.total_bytes, g.free_bytes, g.compute_capability, g.bf16, g.driver) for g in found] == [
        (0, "NVIDIA GeForce RTX 3060", 12 * 1024**3, 6 * 1024**3, "8.6", True, "555.42.06"),
        (1, "NVIDIA GeForce RTX 4090", 24 * 1024**3, 12 * 1024**3, "8.9", True, "555.42.06"),
    ]


def test_nvml_init_failure_is_an_empty_list(fake_nvml, monkeypatch):
    monkeypatch.setenv("COATI_TUI_NVML_LIB", str(fake_nvml))
    monkeypatch.setenv("FAKE_NVML_FAIL", "1")
    found, why = hardware.gpus()
    assert found == [] and why == "NVML unavailable: Driver Not Loaded"


def test_no_nvml_library_is_an_empty_list(tmp_path, monkeypatch):
    monkeypatch.setenv("COATI_TUI_NVML_LIB", str(tmp_path / "libnvidia-ml.so.1"))
    found, why = hardware.gpus()
    assert found == [] and why.startswith("NVML unavailable: library not found") and "libnvidia-ml" in why


def test_cpu_from_proc_matches_psutil():
    psutil = pytest.importorskip("psutil")
    if not sys.platform.startswith("linux"):
        pytest.skip("/proc is Linux's")
    found = hardware._proc_cpu()
    assert found is not None
    assert found.ram_total_bytes == psutil.virtual_memory().total
    assert found.threads == psutil.cpu_count(logical=True)
    assert 1 <= found.cores <= found.threads
    assert abs(found.ram_available_bytes - psutil.virtual_memory().available) < 256 * 1024**2  # read moments apart


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


def test_stacks_read_as_importlib_metadata_reads_them():
    import importlib.metadata as md

    names = (*hardware.STACK_PACKAGES, "psutil", "rich", "typing_extensions", "no-such-package")
    found = hardware.distributions(names)
    for name in names:
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            assert name not in found
            continue
        assert found[name].version == dist.version, name
        assert found[name].requires == (dist.requires or []), name


def test_cpu_falls_back_to_psutil_without_proc(monkeypatch):
    psutil = pytest.importorskip("psutil")
    monkeypatch.setattr(hardware, "_proc_cpu", lambda: None)
    found = hardware.cpu()
    assert found.ram_total_bytes == psutil.virtual_memory().total and found.threads == psutil.cpu_count()
