"""Transparent huge pages for the allocator of a `distillora` process (Linux, glibc).

A CPU training step allocates hundreds of megabytes afresh every step: autocast's bf16 copies of the
weights, the fp32 gradients they cast back to, the dense word-embedding gradient (94 MB for a 30k x
768 vocabulary). Blocks that large come from `mmap`, and each 4 KiB page of them faults on first
touch: about 23,000 faults per step of a 6-layer MPNet student, measured by `bench/allocator.py`. With
glibc's tunable `glibc.malloc.hugetlb=1`, malloc asks the kernel for transparent huge pages (2 MiB) on
what it maps, and the faults drop to a few hundred per step (the step 1.05x to 1.13x faster on a
2-core AMD EPYC; docs/performance.md, "Sixth session").

The tunable is read when a process starts, so the console entry point re-starts itself once with it
set: `os.execve` of the same command line (`sys.orig_argv`, so interpreter options such as torchrun's
`-u`, a profiler's `-m cProfile` and the console script's own path survive), as torch's own CPU
launcher (`torch.backends.xeon.run_cpu`) starts its workers with a chosen allocator preloaded.
`DISTILLORA_HUGE_PAGES=0` turns this off. It is also skipped where it cannot apply (not Linux, glibc
before 2.35, which has no such tunable, huge pages disabled) or when GLIBC_TUNABLES already names the
setting. Library calls (`distillora.cli.main`, tests, notebooks) are never re-started: set the
variable in their environment to get the same effect. Processes that distillora starts inherit it.
Why not torch's own `THP_MEM_ALLOC_ENABLE`: it covers only torch's allocations of 2 MiB and more, and
in `bench/allocator.py` it removed less than two thirds of the faults and did not speed the step up.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "DISTILLORA_HUGE_PAGES"
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _glibc_has_tunable() -> bool:
    """Linux with glibc 2.35 or later (where `glibc.malloc.hugetlb` exists)."""
    if sys.platform != "linux":
        return False
    libc, version = platform.libc_ver()
    try:
        return libc == "glibc" and tuple(int(x) for x in version.split(".")[:2]) >= (2, 35)
    except ValueError:
        return False


def huge_pages_env(environ: dict[str, str], thp_mode: str | None = None) -> dict[str, str] | None:
    """The environment to re-start with, or None where nothing is to be done. `thp_mode`: the kernel's
    setting (read from /sys when not given), such as `always [madvise] never`."""
    if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "off", "no") or not _glibc_has_tunable():
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables:
        return None
    if thp_mode is None:
        try:
            thp_mode = THP_MODE.read_text()
        except OSError:
            return None
    if "[never]" in thp_mode:
        return None
    return {**environ, "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}" if tunables else TUNABLE}


def restart_with_huge_pages() -> None:
    """Replace this process by the same command line with huge pages asked for; return without doing
    anything where `huge_pages_env` says so."""
    env = huge_pages_env(dict(os.environ))
    if env is None or not sys.executable:
        return
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    # sys.orig_argv, not `-m distillora` + sys.argv: keeps the interpreter's options and runs the console
    # script as itself (a `-m` start would put the working directory first on sys.path)
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
