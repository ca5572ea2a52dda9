"""Machine profile: GPUs through NVML, CPU and RAM through psutil, stacks from package metadata.

Never imports torch (the UI calls this on start-up). No GPU, or no NVML, is a normal answer:
an empty GPU list.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from coati_tui.core import paths

# Packages whose presence decides what the planner may offer; versions read without importing.
STACK_PACKAGES = ("torch", "transformers", "peft", "colossalai", "bitsandbytes", "gptqmodel", "textual")


@dataclass
class GPU:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    compute_capability: str  # "8.6"
    bf16: bool  # Ampere (8.0) and newer
    driver: str


@dataclass
class CPU:
    ram_total_bytes: int
    ram_available_bytes: int
    cores: int  # physical
    threads: int  # logical


@dataclass
class Profile:
    gpus: list[GPU]
    cpu: CPU
    disk_free_bytes: int
    disk_path: str
    stacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    nvml_error: str | None = None  # why the GPU list is empty, when NVML itself was not usable

    @property
    def has_cuda_gpu(self) -> bool:
        return bool(self.gpus)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gpus() -> tuple[list[GPU], str | None]:
    """All NVIDIA GPUs NVML sees, in NVML order. ``([], reason)`` when there is no NVML or no GPU."""
    try:
        import pynvml  # from nvidia-ml-py; a thin ctypes binding, cheap to import
    except ImportError:
        return [], "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return [], f"NVML unavailable: {exc}"
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
        found = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            found.append(GPU(i, name, int(mem.total), int(mem.free), f"{major}.{minor}", major >= 8, driver))
        return found, None
    except Exception as exc:
        return [], f"NVML error: {exc}"
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _torch_is_cuda_build(dist: md.Distribution) -> bool:
    """CPU wheels carry '+cpu'; CUDA wheels carry '+cuXXX' or depend on nvidia-* runtime packages."""
    version = dist.version
    if "+cpu" in version:
        return False
    if "+cu" in version or "+rocm" in version:
        return True
    return any(req.startswith("nvidia-") for req in (dist.requires or []))


def stacks() -> dict[str, dict[str, Any]]:
    """``{"torch": {"installed": True, "version": "2.13.0+cpu", "cuda_build": False}, ...}``."""
    out: dict[str, dict[str, Any]] = {}
    for name in STACK_PACKAGES:
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            out[name] = {"installed": False, "version": None}
            continue
        entry: dict[str, Any] = {"installed": True, "version": dist.version}
        if name == "torch":
            entry["cuda_build"] = _torch_is_cuda_build(dist)
        out[name] = entry
    return out


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def profile(runs_dir: Path | None = None) -> Profile:
    vm = psutil.virtual_memory()
    cpu = CPU(
        ram_total_bytes=int(vm.total),
        ram_available_bytes=int(vm.available),
        cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        threads=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
    )
    disk_path = _existing_parent(runs_dir or paths.runs_dir())
    found, why = gpus()
    return Profile(
        gpus=found,
        cpu=cpu,
        disk_free_bytes=int(shutil.disk_usage(disk_path).free),
        disk_path=str(disk_path),
        stacks=stacks(),
        nvml_error=why,
    )


_early: dict[str, Any] = {}


def profile_early() -> None:
    """Start profiling in a thread now (before the app's imports), for ``take_early`` to collect."""
    import threading

    def run() -> None:
        try:
            _early["profile"] = profile()
        except Exception as exc:  # the app profiles again and shows the error
            _early["error"] = exc

    _early["thread"] = threading.Thread(target=run, daemon=True, name="coati-profile")
    _early["thread"].start()


def take_early() -> Profile | None:
    """The profile started by ``profile_early`` (once), else None."""
    thread = _early.pop("thread", None)
    if thread is None:
        return None
    thread.join()
    found: Profile | None = _early.pop("profile", None)
    return found
