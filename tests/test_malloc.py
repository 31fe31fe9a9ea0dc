"""hopelab.malloc: freed CPU memory stays in the process (glibc), and the user's own setting wins.

Each case runs in a fresh interpreter: the setting is process-wide and glibc reads its environment at start."""

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="the setting is glibc's"
)

# Allocate a 64 MiB tensor and report how many bytes glibc serves by mmap while it lives (mallinfo2's hblkhd).
PROBE = r"""
import ctypes, json, os, sys
import torch
from hopelab.malloc import freed_memory_setting, keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
status = keep_freed_memory() if sys.argv[1] == "apply" else freed_memory_setting()
before = libc.mallinfo2().hblkhd
big = torch.empty(64 * 2**20, dtype=torch.uint8)
mapped = libc.mallinfo2().hblkhd - before
print(json.dumps({"status": status, "mapped": mapped, "reported": freed_memory_setting(),
                  "env": {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")}}))
"""


def _probe(apply: bool, **env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "HOPELAB_MALLOC"}
    out = subprocess.run([sys.executable, "-c", PROBE, "apply" if apply else "skip"], env={**clean, **env},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_default_glibc_maps_large_blocks():
    # the baseline the setting changes: a 64 MiB block is a fresh mmap under glibc's defaults; asking what
    # holds (as the bench does) changes nothing
    res = _probe(apply=False)
    assert res["mapped"] >= 64 * 2**20
    assert res["status"] == res["reported"] == "default"


def test_kept_serves_large_blocks_from_the_heap_and_passes_it_on():
    res = _probe(apply=True)
    assert res["status"].startswith("kept")
    assert res["mapped"] == 0
    assert res["reported"] == res["status"]
    assert res["env"] == {"MALLOC_TRIM_THRESHOLD_": str(2**30), "MALLOC_MMAP_THRESHOLD_": str(2**30)}  # children


def test_opt_out_leaves_glibc_alone():
    res = _probe(apply=True, HOPELAB_MALLOC="default")
    assert res["status"].startswith("default")
    assert res["mapped"] >= 64 * 2**20
    assert res["env"] == {"MALLOC_TRIM_THRESHOLD_": None, "MALLOC_MMAP_THRESHOLD_": None}


def test_users_own_malloc_environment_wins():
    res = _probe(apply=True, MALLOC_MMAP_THRESHOLD_=str(2**20))
    assert res["status"] == "set by MALLOC_* environment"
    assert res["mapped"] >= 64 * 2**20  # the user's 1 MiB threshold holds, not ours
    assert res["env"] == {"MALLOC_TRIM_THRESHOLD_": None, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
