"""The few NVML calls the machine profile needs, through ctypes.

nvidia-ml-py binds all of NVML and costs ~20 ms to import (its ctypes structures), on the path to the
app's first frame; the profile needs seven functions. Their signatures are NVML's stable C API (nvml.h);
the ``_v2`` entry points are the ones nvidia-ml-py calls too.

``COATI_TUI_NVML_LIB`` names the library file where it is not on the loader's path (tests point it at a
stand-in built from C).
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass

NAME_BUFFER = 96  # NVML_DEVICE_NAME_V2_BUFFER_SIZE
VERSION_BUFFER = 80  # NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE


class NVMLError(Exception):
    """NVML could not be loaded, or a call returned an error (the message is NVML's own)."""


class _Memory(ctypes.Structure):  # nvmlMemory_t
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


@dataclass
class Device:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    major: int
    minor: int


def _candidates() -> list[str]:
    if os.environ.get("COATI_TUI_NVML_LIB"):
        return [os.environ["COATI_TUI_NVML_LIB"]]
    if sys.platform == "win32":
        system = os.path.join(os.environ.get("WINDIR", r"C:\Windows"), "System32", "nvml.dll")
        nvsmi = os.path.join(os.environ.get("PROGRAMFILES", r"C:\Program Files"), "NVIDIA Corporation", "NVSMI")
        return [system, os.path.join(nvsmi, "nvml.dll")]
    return ["libnvidia-ml.so.1"]


def _load() -> ctypes.CDLL:
    errors = []
    for name in _candidates():
        try:
            return ctypes.CDLL(name)
        except OSError as exc:
            errors.append(str(exc))
    raise NVMLError(f"library not found ({'; '.join(errors)})")


class _Lib:
    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        lib.nvmlErrorString.restype = ctypes.c_char_p

    def __call__(self, fn: str, *args: object) -> None:
        code = getattr(self.lib, fn)(*args)
        if code != 0:  # NVML_SUCCESS
            raise NVMLError(self.lib.nvmlErrorString(code).decode(errors="replace"))

    def text(self, fn: str, *args: object, size: int) -> str:
        buf = ctypes.create_string_buffer(size)
        self(fn, *args, buf, ctypes.c_uint(size))
        return buf.value.decode(errors="replace")


def devices() -> tuple[str, list[Device]]:
    """(driver version, every device NVML lists, in NVML order). Raises NVMLError when NVML is not usable."""
    nvml = _Lib(_load())
    nvml("nvmlInit_v2")
    try:
        driver = nvml.text("nvmlSystemGetDriverVersion", size=VERSION_BUFFER)
        count = ctypes.c_uint()
        nvml("nvmlDeviceGetCount_v2", ctypes.byref(count))
        found = []
        for i in range(count.value):
            handle = ctypes.c_void_p()  # nvmlDevice_t: an opaque pointer
            nvml("nvmlDeviceGetHandleByIndex_v2", ctypes.c_uint(i), ctypes.byref(handle))
            name = nvml.text("nvmlDeviceGetName", handle, size=NAME_BUFFER)
            mem = _Memory()
            nvml("nvmlDeviceGetMemoryInfo", handle, ctypes.byref(mem))
            major, minor = ctypes.c_int(), ctypes.c_int()
            nvml("nvmlDeviceGetCudaComputeCapability", handle, ctypes.byref(major), ctypes.byref(minor))
            found.append(Device(i, name, int(mem.total), int(mem.free), major.value, minor.value))
        return driver, found
    finally:
        try:
            nvml("nvmlShutdown")
        except NVMLError:
            pass
