"""Machine profile: GPUs through NVML (core/nvml.py), CPU and RAM from /proc (psutil elsewhere), stacks from
package metadata.

Never imports torch (the UI calls this on start-up). No GPU, or no NVML, is a normal answer:
an empty GPU list.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
    from coati_tui.core import nvml

    try:
        driver, devices = nvml.devices()
    except nvml.NVMLError as exc:  # no library (no driver), driver not loaded, ...
        return [], f"NVML unavailable: {exc}"
    if not devices:
        return [], "NVML lists no GPU"
    return [
        GPU(d.index, d.name, d.total_bytes, d.free_bytes, f"{d.major}.{d.minor}", d.major >= 8, driver) for d in devices
    ], None


@dataclass
class Dist:
    """An installed distribution's version and requirements, from its METADATA's header."""

    version: str
    requires: list[str]


def _normalize(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def distributions(names: tuple[str, ...]) -> dict[str, Dist]:
    """The installed ones of ``names``, found as importlib.metadata finds them (the first ``*.dist-info`` or
    ``*.egg-info`` on sys.path), without importing it: importlib.metadata brings the email parser, ~10 ms
    on the path to the app's first frame."""
    wanted, found = {_normalize(n): n for n in names}, {}
    for entry in sys.path:
        try:
            items = list(os.scandir(entry or "."))
        except OSError:
            continue
        for item in items:
            stem, dot, kind = item.name.rpartition(".")
            name = _normalize(stem.split("-", 1)[0])
            if dot and kind in ("dist-info", "egg-info") and name in wanted and wanted[name] not in found:
                dist = _read_dist(Path(item.path), kind)
                if dist:
                    found[wanted[name]] = dist
    return found


def _read_dist(folder: Path, kind: str) -> Dist | None:
    meta = folder / ("METADATA" if kind == "dist-info" else "PKG-INFO")
    try:
        header = meta.read_text(encoding="utf-8", errors="replace").split("\n\n", 1)[0]
    except OSError:
        return None
    fields = [line.split(":", 1) for line in header.splitlines() if ":" in line and not line[:1].isspace()]
    version = next((v.strip() for k, v in fields if k == "Version"), None)
    if version is None:
        return None
    return Dist(version, [v.strip() for k, v in fields if k == "Requires-Dist"])


def _torch_is_cuda_build(dist: Dist) -> bool:
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
    found = distributions(STACK_PACKAGES)
    for name in STACK_PACKAGES:
        dist = found.get(name)
        if dist is None:
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


def _proc_cpu() -> CPU | None:
    """RAM and cores from /proc (Linux): what psutil reads there, without its ~15 ms import on start-up."""
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        total, avail = (int(meminfo[k].split()[0]) * 1024 for k in ("MemTotal", "MemAvailable"))
        cores, block = set(), {}
        for line in Path("/proc/cpuinfo").read_text().splitlines() + [""]:
            if ":" in line:
                key, value = (part.strip() for part in line.split(":", 1))
                block[key] = value
            elif block:  # a blank line ends one logical CPU
                cores.add((block.get("physical id"), block.get("core id", block.get("processor"))))
                block = {}
    except (OSError, KeyError, ValueError):
        return None
    threads = os.cpu_count() or 1
    return CPU(ram_total_bytes=total, ram_available_bytes=avail, cores=len(cores) or threads, threads=threads)


def cpu() -> CPU:
    found = _proc_cpu() if sys.platform.startswith("linux") else None
    if found:
        return found
    import psutil

    vm = psutil.virtual_memory()
    return CPU(
        ram_total_bytes=int(vm.total),
        ram_available_bytes=int(vm.available),
        cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        threads=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
    )


def profile(runs_dir: Path | None = None) -> Profile:
    disk_path = _existing_parent(runs_dir or paths.runs_dir())
    found, why = gpus()
    return Profile(
        gpus=found,
        cpu=cpu(),
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


def take_early(wait: bool = True) -> Profile | None:
    """The profile started by ``profile_early`` (once), else None; with ``wait=False`` None too while it
    is still being taken (it stays for a later call)."""
    thread = _early.get("thread")
    if thread is None or (not wait and thread.is_alive()):
        return None
    _early.pop("thread").join()
    found: Profile | None = _early.pop("profile", None)
    return found
