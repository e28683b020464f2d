import platform
import subprocess
import sys

import pytest

STEPS = """
import resource, sys, torch
from distillora.training import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    g = torch.zeros(30527, 768)  # the size of MPNet's word-embedding gradient (94 MB)
    g.add_(1.0)
    del g
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(" ".join(str(step()) for _ in range(12)))
"""


def _faults(mode: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, timeout=120, check=True)
    return [int(x) for x in out.stdout.split()]


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc malloc tuning")
def test_freed_large_buffers_are_reused_instead_of_faulted_in_every_step():
    pages = 30527 * 768 * 4 // 4096
    default, kept = _faults("default"), _faults("keep")
    # glibc's default unmaps the freed 94 MB block, so each step faults all its pages in again
    assert all(f > pages // 2 for f in default[-4:])
    # with the setting the block stays in the process and later steps reuse it (the first few steps
    # still fault while the heap settles)
    assert all(f < pages // 10 for f in kept[-4:])
