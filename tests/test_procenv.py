import os
import subprocess
import sys

import pytest

from coati_tui.core.procenv import child_env

pytestmark = pytest.mark.once  # app/host side: its outcome does not hang on the torch stack (CI: once)


def test_child_env_pins_malloc_and_keeps_the_users_choice():
    env = child_env({"PATH": "/bin", "MALLOC_MMAP_THRESHOLD_": "65536"}, EXTRA="1")
    assert env["MALLOC_MMAP_THRESHOLD_"] == "65536" and env["EXTRA"] == "1" and env["PATH"] == "/bin"
    assert child_env({})["MALLOC_MMAP_THRESHOLD_"] == "131072"


def test_a_child_sees_it():
    out = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ['MALLOC_MMAP_THRESHOLD_'])"],
        env=child_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == os.environ.get("MALLOC_MMAP_THRESHOLD_", "131072")


def test_huge_pages_for_mmapped_blocks_unless_the_user_tunes_glibc():
    assert child_env({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    mine = "glibc.malloc.arena_max=2"
    assert child_env({"GLIBC_TUNABLES": mine})["GLIBC_TUNABLES"] == mine


def test_the_heap_serves_the_backward_pass_only_where_the_threshold_is_ours():
    """trainer/malloc.py: inside ``PHASES.backward()`` a 2 MiB block comes from the heap, outside it is
    its own mmap (glibc marks a chunk's header IS_MMAPPED, bit 0x2); the user's own threshold turns it off."""
    assert child_env({})["COATI_TUI_BACKWARD_MMAP"] == str(4 * 2**20)
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
        (child_env({"PATH": os.environ["PATH"]}), "True False True"),
        (child_env({"PATH": os.environ["PATH"], "COATI_TUI_BACKWARD_MMAP": "0"}), "True True True"),
    ):
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.split() == want.split(), (env.get("COATI_TUI_BACKWARD_MMAP"), out.stdout)
