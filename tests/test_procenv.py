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
