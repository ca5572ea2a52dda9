import os
import subprocess
import sys

import pytest

from coati_tui.core.procenv import child_env, mimalloc_library

pytestmark = pytest.mark.once  # app/host side: its outcome does not hang on the torch stack (CI: once)

MIMALLOC = mimalloc_library()
needs_mimalloc = pytest.mark.skipif(MIMALLOC is None, reason="cmeel-mimalloc is installed on Linux x86_64/aarch64 only")
GLIBC = {"COATI_TUI_ALLOCATOR": "glibc"}


def maps_of_a_child(env: dict[str, str]) -> str:
    """What a real child started with ``env`` has mapped, and the allocator the trainer reports for it."""
    probe = "from coati_tui.trainer.malloc import describe; print(describe()); print(open('/proc/self/maps').read())"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    return out.stdout


@needs_mimalloc
def test_children_run_on_mimalloc_by_default():
    env = child_env({"PATH": os.environ["PATH"]})
    assert env["LD_PRELOAD"] == MIMALLOC
    assert "MALLOC_MMAP_THRESHOLD_" not in env and "COATI_TUI_BACKWARD_MMAP" not in env
    out = maps_of_a_child(env)
    assert out.splitlines()[0] == "mimalloc" and "libmimalloc" in out
    # a child's own children (the demo's trainers, torchrun's workers) keep it, not a second copy
    assert child_env(env)["LD_PRELOAD"] == MIMALLOC


@needs_mimalloc
def test_the_users_allocator_wins():
    assert child_env({"MIMALLOC_PURGE_DECOMMITS": "0"})["MIMALLOC_PURGE_DECOMMITS"] == "0"
    theirs = child_env({"LD_PRELOAD": "/opt/libjemalloc.so.2"})
    assert theirs["LD_PRELOAD"] == "/opt/libjemalloc.so.2"
    for mine in (GLIBC, {"MALLOC_MMAP_THRESHOLD_": "65536"}):  # asked for glibc, or tuned it by hand
        env = child_env({"PATH": os.environ["PATH"], **mine})
        assert "LD_PRELOAD" not in env
        out = maps_of_a_child(env)
        assert out.splitlines()[0].startswith("glibc") and "libmimalloc" not in out


def test_glibc_fallback_pins_malloc_and_keeps_the_users_choice():
    env = child_env({"PATH": "/bin", "MALLOC_MMAP_THRESHOLD_": "65536"}, EXTRA="1")
    assert env["MALLOC_MMAP_THRESHOLD_"] == "65536" and env["EXTRA"] == "1" and env["PATH"] == "/bin"
    assert child_env(GLIBC)["MALLOC_MMAP_THRESHOLD_"] == "131072"
    out = maps_of_a_child(child_env({"PATH": os.environ["PATH"], **GLIBC}))
    assert out.splitlines()[0] == "glibc (MALLOC_MMAP_THRESHOLD_=131072, GLIBC_TUNABLES=glibc.malloc.hugetlb=1, " + (
        f"COATI_TUI_BACKWARD_MMAP={4 * 2**20})"
    )


def test_huge_pages_for_mmapped_blocks_unless_the_user_tunes_glibc():
    assert child_env(GLIBC)["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    mine = "glibc.malloc.arena_max=2"
    assert child_env({**GLIBC, "GLIBC_TUNABLES": mine})["GLIBC_TUNABLES"] == mine


def test_the_heap_serves_the_backward_pass_only_where_the_threshold_is_ours():
    """trainer/malloc.py: inside ``PHASES.backward()`` a 2 MiB block comes from the heap, outside it is
    its own mmap (glibc marks a chunk's header IS_MMAPPED, bit 0x2); the user's own threshold turns it off."""
    assert child_env(GLIBC)["COATI_TUI_BACKWARD_MMAP"] == str(4 * 2**20)
    assert "COATI_TUI_BACKWARD_MMAP" not in child_env({"MALLOC_MMAP_THRESHOLD_": "65536"})
    probe = (
        "import ctypes\n"
        "from coati_tui.trainer.malloc import PHASES\n"
        "libc = ctypes.CDLL('libc.so.6'); libc.malloc.restype = ctypes.c_void_p\n"
        "def mmapped():\n"
        "    p = libc.malloc(2 << 20); flag = ctypes.c_size_t.from_address(p - 8).value & 2\n"
        "    libc.free(ctypes.c_void_p(p)); return bool(flag)\n"
        "before = mmapped()\n"
        "with PHASES.backward():\n"
        "    inside = mmapped()\n"
        "print(before, inside, mmapped())\n"
    )
    for env, want in (
        (child_env({"PATH": os.environ["PATH"], **GLIBC}), "True False True"),
        (child_env({"PATH": os.environ["PATH"], **GLIBC, "COATI_TUI_BACKWARD_MMAP": "0"}), "True True True"),
    ):
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.split() == want.split(), (env.get("COATI_TUI_BACKWARD_MMAP"), out.stdout)


def test_the_library_is_found_on_sys_path_where_ld_preload_can_hold_its_path(tmp_path, monkeypatch):
    for name, found in (("site-packages", True), ("my env", False), ("a:b", False)):
        lib = tmp_path / name / "cmeel.prefix" / "lib" / "libmimalloc.so"
        lib.parent.mkdir(parents=True)
        lib.write_bytes(b"")
        monkeypatch.setattr(sys, "path", [str(tmp_path / "nothing"), str(tmp_path / name)])
        assert mimalloc_library() == (str(lib) if found else None), name  # LD_PRELOAD splits on spaces and colons
    monkeypatch.setattr(sys, "platform", "darwin")
    assert mimalloc_library() is None
