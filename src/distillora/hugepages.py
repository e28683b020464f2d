"""Transparent huge pages, and a heap that keeps its memory, for the allocator of a `distillora`
process (Linux, glibc).

A CPU training step allocates hundreds of megabytes afresh every step: autocast's bf16 copies of the
weights, the fp32 gradients they cast back to, the dense word-embedding gradient (94 MB for a 30k x
768 vocabulary). By default glibc serves blocks that large with a fresh `mmap` and unmaps them when
they are freed, so every step maps them again and each 4 KiB page faults on first touch: about 23,000
faults per step of a 6-layer MPNet student, measured by `bench/allocator.py`. Three glibc tunables
remove that:

- `glibc.malloc.hugetlb=1`: malloc asks the kernel for transparent huge pages (2 MiB). Alone, it cut
  the faults to a few hundred per step, and the step 1.05x to 1.13x faster (2-core AMD EPYC;
  docs/performance.md, "Sixth session").
- `glibc.malloc.mmap_max=0` and `glibc.malloc.trim_threshold` (16 GiB): blocks come from the heap, and
  the heap is not given back to the kernel when its top is freed, so the next step reuses the same,
  already mapped pages (about 35 faults per step). Together with huge pages, against huge pages alone:
  MPNet teacher steps 1.20x faster (3 of 4 rounds), odd-student steps 1.05x (3 of 6 rounds: too close
  to call), the same peak memory in those step benches, but a whole seed study's peak 4.81 GiB against
  4.22 (docs/performance.md, "Seventh session"). Without huge pages the kept
  heap was slower than glibc's default, so these two are only added with the first.
  Limits: on the main thread (where training and the study's evaluation run) every block comes from
  the heap; a thread's own arena still maps blocks larger than its 64 MiB heaps. The cost: resident
  memory stays at the heap's largest extent (its peak plus any gaps between blocks) until the process
  exits, which also matters where memory is capped (cgroup, `RLIMIT_DATA`). So only batch commands
  keep the heap; `distillora serve`, a long-lived process whose batches vary, gets huge pages alone.

The tunables are read when a process starts, so the console entry point re-starts itself once with them
set: `os.execve` of the same command line (`sys.orig_argv`, so interpreter options such as torchrun's
`-u`, a profiler's `-m cProfile` and the console script's own path survive), as torch's own CPU
launcher (`torch.backends.xeon.run_cpu`) starts its workers with a chosen allocator preloaded.
`DISTILLORA_HUGE_PAGES=0` turns this off. It is also skipped where it cannot apply (not Linux, glibc
before 2.35, which has no huge-page tunable, huge pages disabled) or when GLIBC_TUNABLES already names
`glibc.malloc.hugetlb`; a user's own value of either of the other two is kept. Library calls
(`distillora.cli.main`, tests, notebooks) are never re-started: set the variable in their environment
to get the same effect. Processes that distillora starts inherit it.
Benches: the scripts under bench/ that train or time steps (recipe, student_recipe, embedding_update,
step_phases, step_variants) call `restart_with_huge_pages` too, under `if __name__ == "__main__"` (a
module importing one of them is not re-started), so their timings are those of a run: under glibc's
default the dense word-embedding gradient's page faults made sparse updates look 1.3x faster per step
where a run gains 1.03x (docs/performance.md, "Ninth session").
Why not torch's own `THP_MEM_ALLOC_ENABLE`: it covers only torch's allocations of 2 MiB and more, and
in `bench/allocator.py` it removed less than two thirds of the faults and did not speed the step up.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

HUGE_PAGES = {"glibc.malloc.hugetlb": "1"}  # the switch (see the module's docstring)
KEEP_HEAP = {"glibc.malloc.mmap_max": "0", "glibc.malloc.trim_threshold": str(16 << 30)}
# glibc's older environment variables for the same settings; a user's value there is kept too
ALIASES = {"glibc.malloc.mmap_max": ("MALLOC_MMAP_MAX_",),
           "glibc.malloc.trim_threshold": ("MALLOC_TRIM_THRESHOLD_",)}
# a user who chose when blocks are mapped keeps that: no mmap_max=0 over it
MMAP_CHOSEN = ("glibc.malloc.mmap_threshold", "MALLOC_MMAP_THRESHOLD_")
def tunables(settings: dict[str, str]) -> str:
    """`settings` as one GLIBC_TUNABLES value."""
    return ":".join(f"{k}={v}" for k, v in settings.items())


TUNABLES = tunables({**HUGE_PAGES, **KEEP_HEAP})  # added to no tunables
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


def huge_pages_env(environ: dict[str, str], thp_mode: str | None = None,
                   keep_heap: bool = True) -> dict[str, str] | None:
    """The environment to re-start with, or None where nothing is to be done. `thp_mode`: the kernel's
    setting (read from /sys when not given), such as `always [madvise] never`; `keep_heap`: add the heap
    settings too (batch commands), else huge pages alone."""
    if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "off", "no") or not _glibc_has_tunable():
        return None
    given = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in given:
        return None
    if thp_mode is None:
        try:
            thp_mode = THP_MODE.read_text()
        except OSError:
            return None
    if "[never]" in thp_mode:
        return None
    named = {item.split("=", 1)[0] for item in given.split(":") if item}
    named |= {k for k, aliases in ALIASES.items() if any(a in environ for a in aliases)}
    if any(k in named or k in environ for k in MMAP_CHOSEN):
        named.add("glibc.malloc.mmap_max")
    settings = {**HUGE_PAGES, **(KEEP_HEAP if keep_heap else {})}
    ours = tunables({k: v for k, v in settings.items() if k not in named})
    return {**environ, "GLIBC_TUNABLES": ":".join(x for x in (given, ours) if x)}


def restart_with_huge_pages(keep_heap: bool = True) -> None:
    """Replace this process by the same command line with huge pages asked for (and the heap kept, with
    `keep_heap`); return without doing anything where `huge_pages_env` says so."""
    env = huge_pages_env(dict(os.environ), keep_heap=keep_heap)
    if env is None or not sys.executable:
        return
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    # sys.orig_argv, not `-m distillora` + sys.argv: keeps the interpreter's options and runs the console
    # script as itself (a `-m` start would put the working directory first on sys.path)
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
