"""Would two student stages trained at once, one core each, finish sooner than one after the other on
both cores? Times the project's own distillation step (the Trainer with the Distillation objective, its
collator, length-grouped batches, optimizer, clipping, scheduler) of the odd and even students of one
teacher, three ways, in one run:

- `sequential`: one process, torch on every core, the odd student's steps then the even student's;
- `processes`: two child processes, one per student, each with one torch thread and pinned to one core,
  stepping at the same time (the children wait for each other before the timed steps);
- `threads`: one process, torch at one thread, the two students stepping in two Python threads.

`sequential` and `threads` take turns round by round; `processes` runs after them and is compared with
one more `sequential` round taken right after it (this machine's speed drifts within minutes).

Prints each way's steps per second over both students and its ratio to `sequential`, names the CPU,
writes JSON. Short rounds of steps only: on the 2-core AMD EPYC they promised 1.1-1.4x, and whole stages
trained at once then gained nothing (docs/performance.md, tenth session), so read a ratio here as an
upper bound of what a whole run would gain.

usage: python bench/concurrent_stages.py --teacher RUN/models/teacher [--steps 6] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from distillora.hugepages import restart_with_huge_pages  # noqa: E402  (imports no torch)

if __name__ == "__main__":  # time as a run does (distillora.hugepages, "Benches")
    restart_with_huge_pages()

import torch  # noqa: E402

from distillora.inference.timing import cpu_name  # noqa: E402
from side_by_side import REPO, add_step_args, layers_arg, runner, step, train_slice, trainer_for  # noqa: E402


def steppers(a, layers: tuple[str, ...], need: int) -> list:
    """One (trainer, model, batches) per student in `layers`, from `a.teacher`, `need` batches each."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distillora import pooling
    from distillora.config import DistillConfig
    from distillora.stages.distill import teacher_outputs
    from distillora.students import build_student
    from distillora.training import Distillation

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(a.teacher)
    # a run's teacher reads what it was trained to read, as do the students built from it
    teacher = pooling.apply_saved(AutoModelForSequenceClassification.from_pretrained(a.teacher, num_labels=2))
    enc = train_slice(tok, a.rows)
    objective = Distillation(DistillConfig(), list(range(1, teacher.config.num_hidden_layers // 2 + 1)))
    cache = teacher_outputs(teacher, enc, tok, objective.teacher_needs)
    tmp = tempfile.mkdtemp()
    out = []
    for name in layers:
        student = build_student(teacher, layers_arg(name))
        trainer = trainer_for(student, enc.with_fields(**cache), tok, objective, a, Path(tmp) / name)
        out.append(runner(trainer, student, need))
    return out


def run_steps(r, lo: int, hi: int) -> None:
    trainer, model, batches = r
    for b in batches[lo:hi]:
        step(trainer, model, b)


def child(a) -> None:
    """One student's steps, one thread, after a barrier file shows both children ready: prints the
    seconds of each timed round as one JSON line."""
    torch.set_num_threads(1)
    (r,) = steppers(a, (a.child,), a.steps * (a.rounds + 1))
    run_steps(r, 0, a.steps)  # warm-up
    Path(a.barrier, a.child).touch()
    deadline = time.monotonic() + 600
    while len(list(Path(a.barrier).iterdir())) < 2:
        if time.monotonic() > deadline:
            raise SystemExit(f"{a.child}: the other child never got ready (its error is above)")
        time.sleep(0.01)
    times = []
    for rnd in range(1, a.rounds + 1):
        t0 = time.perf_counter()
        run_steps(r, a.steps * rnd, a.steps * (rnd + 1))
        times.append(time.perf_counter() - t0)
    print(json.dumps({"student": a.child, "seconds": times}), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default=str(REPO / "runs" / "seed" / "models" / "teacher"),
                    help="a fine-tuned teacher directory (its odd and even students are timed)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--barrier", help=argparse.SUPPRESS)
    add_step_args(ap)
    a = ap.parse_args()
    if a.child:
        child(a)
        return 0

    threads = torch.get_num_threads()
    students = ("odd", "even")
    n = a.steps
    seq_runners = steppers(a, students, n * (2 * a.rounds + 2))
    for r in seq_runners:
        run_steps(r, 0, n)  # warm-up
    sequential, threaded = [], []
    for rnd in range(a.rounds):
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        for r in seq_runners:
            run_steps(r, n * (1 + 2 * rnd), n * (2 + 2 * rnd))
        sequential.append(time.perf_counter() - t0)
        torch.set_num_threads(1)
        pool = [threading.Thread(target=run_steps, args=(r, n * (2 + 2 * rnd), n * (3 + 2 * rnd))) for r in seq_runners]
        t0 = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        threaded.append(time.perf_counter() - t0)
    torch.set_num_threads(threads)

    barrier = tempfile.mkdtemp()
    cores = sorted(os.sched_getaffinity(0))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, __file__, "--teacher", a.teacher, "--barrier", barrier, "--steps", str(n),
            "--rounds", str(a.rounds), "--rows", str(a.rows), "--batch-size", str(a.batch_size),
            "--precision", a.precision]
    procs = [subprocess.Popen(["taskset", "-c", str(cores[i % len(cores)]), *argv, "--child", s], env=env,
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent)
             for i, s in enumerate(students)]  # their stderr (loading messages, any error) passes through
    outputs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a child failed (exit codes {[p.returncode for p in procs]}); see its error above")
    rows = [json.loads(o.strip().splitlines()[-1]) for o in outputs]
    # both children step at once; a round of the pair ends when the slower one ends
    processes = [max(r["seconds"][i] for r in rows) for i in range(a.rounds)]
    t0 = time.perf_counter()  # one more sequential round after the children: the machine's drift
    for r in seq_runners:
        run_steps(r, n * (1 + 2 * a.rounds), n * (2 + 2 * a.rounds))
    sequential.append(time.perf_counter() - t0)

    steps_each_round = 2 * n
    rate = {k: [steps_each_round / s for s in v] for k, v in
            (("sequential", sequential), ("processes", processes), ("threads", threaded))}
    # processes ran after the sequential rounds: compare them with the round taken right after
    base = {"sequential": rate["sequential"], "threads": rate["sequential"][:-1],
            "processes": [rate["sequential"][-1]] * a.rounds}
    print(f"CPU: {cpu_name()}, {threads} torch threads; odd and even students of {a.teacher}; batch "
          f"{a.batch_size}; {a.rounds} rounds of {n} steps per student")
    print("| way | steps/s per round (both students) | ratio to sequential, per round |")
    print("|---|---|---|")
    for k, v in rate.items():
        ratios = [x / s for x, s in zip(v, base[k])]
        print(f"| {k} | {', '.join(f'{x:.2f}' for x in v)} | {', '.join(f'{x:.2f}x' for x in ratios)} |")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "concurrent_stages.json").write_text(json.dumps({
        "cpu": cpu_name(), "glibc_tunables": os.environ.get("GLIBC_TUNABLES"), "threads": threads,
        "teacher": a.teacher, "batch_size": a.batch_size, "rounds": a.rounds, "steps": n,
        "seconds_per_round": {"sequential": sequential, "processes": processes, "threads": threaded},
        "steps_per_second": rate}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
