"""retain_freed_memory: glibc serves large tensors from its heap (no mmap per allocation) after the call."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent("""
    import ctypes, torch
    from ideal_components.cpu import retain_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2

    def mmapped_bytes_while_holding_64mb():
        t = torch.empty(64 * 2**20, dtype=torch.uint8)
        t.fill_(1)
        return libc.mallinfo2().hblkhd

    before = mmapped_bytes_while_holding_64mb()
    ok = retain_freed_memory()
    print(ok, before, mmapped_bytes_while_holding_64mb())
    """)


def _has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not _has_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_large_tensors_come_from_the_heap_after_retain_freed_memory():
    # a subprocess: the setting is process-wide and permanent
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.split()
    ok, before, after = out[0] == "True", int(out[1]), int(out[2])
    assert ok
    assert before >= 64 * 2**20  # glibc's default: a fresh mmap for the 64 MB tensor (page faults every step)
    assert after < 64 * 2**20  # now from the heap, reused across steps
