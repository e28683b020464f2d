"""`distillora sweep`: which teacher layers, and how many, should a student keep?

Trains one distilled student per distinct layer list (from named strategies and student depths, or
given by hand) with the run's own distillation recipe, teacher and tokenisation, then measures each
one's accuracy (validation and test, bootstrap 95% intervals), size and speed, and marks the
accuracy-versus-cost Pareto front. Everything lands in the run directory:

  sweep/teacher_outputs.pt        the teacher's outputs on the training split, computed once
  stages/sweep-<layers>.json      a finished student (fingerprint + training statistics); resumable unit
  stages/sweep-<layers>.test.json its validation and test probabilities
  models/sweep-<layers>/          the student (save_pretrained), servable like the study's models
  checkpoints/sweep-<layers>/     Trainer checkpoints while it trains (mid-student resume)
  sweep.json                      the figures; report.md/html gain a sweep section from it

Under `accelerate launch` the students are dealt round-robin to the processes; each process trains
whole students on its own (not data-parallel), and only the main process writes the shared files.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError

log = logging.getLogger("distillora")

STRATEGIES = ("odd", "even", "bottom", "top", "spread", "distilbert")
DEFAULT_DEPTHS = (2, 3, 4, 6)
PREFIX = "sweep-"
ROUNDS, PER_ROUND = 5, 20  # timing: rounds over all models; single sentences per model per round
# Environment variables by which torchrun / accelerate launch make a process part of a group.
_GROUP_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
              "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


# ----------------------------------------------------------------------------- strategies

def _every(pool: list[int], k: int, from_top: bool) -> list[int]:
    """`k` of `pool` (sorted, k <= len(pool)) at a stride of len(pool)/k, starting from the pool's first
    element (or, `from_top`, ending at its last)."""
    n = len(pool)
    picks = [pool[(i * n) // k] for i in range(k)] if not from_top else [pool[n - 1 - (i * n) // k] for i in range(k)]
    return sorted(picks)


def _parity(teacher_depth: int, d: int, first: int) -> list[int]:
    pool = list(range(first, teacher_depth + 1, 2))
    other = list(range(3 - first, teacher_depth + 1, 2))
    from_top = first == 2  # even keeps the teacher's last layer (as [2, 4, ..., 12] does), odd its first
    if d <= len(pool):
        return _every(pool, d, from_top)
    return sorted(pool + _every(other, d - len(pool), from_top))


def odd(teacher_depth: int, d: int) -> list[int]:
    """The original assignment's odd layers (12 -> 6: [1, 3, 5, 7, 9, 11]). Generalised: `d` of the odd
    layers at an even stride starting from layer 1 (12 -> 3: [1, 5, 9]); when `d` exceeds the number
    of odd layers, all of them plus the rest taken the same way from the even layers."""
    return _parity(teacher_depth, d, 1)


def even(teacher_depth: int, d: int) -> list[int]:
    """The original assignment's even layers (12 -> 6: [2, 4, 6, 8, 10, 12]). Generalised: `d` of the even
    layers at an even stride ending at the last even layer (12 -> 3: [4, 8, 12]); when `d` exceeds the
    number of even layers, all of them plus the rest taken the same way from the odd layers."""
    return _parity(teacher_depth, d, 2)


def bottom(teacher_depth: int, d: int) -> list[int]:
    """The first `d` layers. "How to Distill your BERT" (Ko et al., arXiv 2305.15032) found initialising
    a student from the lower layers beats the higher ones, by up to 17.8 points."""
    return list(range(1, d + 1))


def top(teacher_depth: int, d: int) -> list[int]:
    """The last `d` layers (PKD's "last" strategy, Sun et al. 2019, arXiv 1908.09355)."""
    return list(range(teacher_depth - d + 1, teacher_depth + 1))


def spread(teacher_depth: int, d: int) -> list[int]:
    """Evenly spaced, ending at the last layer: layer round(T*k/d) for k = 1..d (12 -> 6: [2, 4, ..., 12];
    12 -> 4: [3, 6, 9, 12]; 12 -> 5: [2, 5, 7, 10, 12]). Like PKD's "skip" (every k-th layer), which
    beat "last" on 5 of 6 GLUE tasks (Sun et al. 2019, arXiv 1908.09355); rounding half up."""
    return [(2 * teacher_depth * k + d) // (2 * d) for k in range(1, d + 1)]


def distilbert(teacher_depth: int, d: int) -> list[int]:
    """DistilBERT's extraction (transformers examples/research_projects/distillation/scripts/
    extract_distilbert.py): teacher layers [0, 2, 4, 7, 9, 11] (0-based) for 12 -> 6, i.e. every other
    layer of the lower half starting at the first and every other of the upper half ending at the last.
    Generalised: ceil(d/2) layers of the lower ceil(T/2) at an even stride starting at layer 1, and
    floor(d/2) of the upper layers at an even stride ending at layer T (12 -> 4: [1, 4, 9, 12];
    6 -> 3: [1, 2, 6]; 12 -> 6: [1, 3, 5, 8, 10, 12])."""
    half = (teacher_depth + 1) // 2
    lower = _every(list(range(1, half + 1)), d - d // 2, from_top=False)
    upper = _every(list(range(half + 1, teacher_depth + 1)), d // 2, from_top=True) if d // 2 else []
    return lower + upper


_FUNCTIONS = {"odd": odd, "even": even, "bottom": bottom, "top": top, "spread": spread, "distilbert": distilbert}


def strategy_layers(strategy: str, teacher_depth: int, d: int) -> list[int]:
    """1-based teacher layers that `strategy` keeps for a `d`-layer student of a `teacher_depth` teacher.

    Raises:
        ValueError: an unknown strategy, or `d` outside 1..teacher_depth.
    """
    if strategy not in _FUNCTIONS:
        raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if not 1 <= d <= teacher_depth:
        raise ValueError(f"student depth {d} outside 1..{teacher_depth} (the teacher's depth)")
    layers = _FUNCTIONS[strategy](teacher_depth, d)
    assert len(layers) == d and len(set(layers)) == d and all(1 <= i <= teacher_depth for i in layers), layers
    return layers


# ----------------------------------------------------------------------------- the plan

@dataclass
class Candidate:
    """One student to train: its layer list and every strategy (or `custom`) that chose it."""

    layers: list[int]
    strategies: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return PREFIX + "-".join(map(str, self.layers))


def parse_layer_lists(text: str, teacher_depth: int) -> list[list[int]]:
    """`"1,2,3;4,8,12"` -> [[1, 2, 3], [4, 8, 12]] (1-based, checked against the teacher's depth).

    Raises:
        ValueError: a malformed list, a repeated layer, a layer out of range.
    """
    from .students import parse_layers

    out = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        try:
            nums = [int(x) for x in part.split(",")]
        except ValueError:
            raise ValueError(f"{part!r} is not a comma-separated list of layer numbers, e.g. \"1,2,3;4,8,12\"") from None
        try:
            out.append(parse_layers(nums, teacher_depth))
        except ValueError as e:
            raise ValueError(f"{part!r}: {e}") from None
    if not out:
        raise ValueError("no layer list given; write e.g. \"1,2,3;4,8,12\"")
    return out


def plan(teacher_depth: int, depths, strategies, layer_lists=()) -> list[Candidate]:
    """Distinct layer lists, in order of depth, then of first appearance; a list chosen by several
    strategies (12 -> 6: even and spread) is one candidate that names all of them. Given lists are
    named `custom`."""
    by_layers: dict[tuple[int, ...], Candidate] = {}
    for d in depths:
        for s in strategies:
            layers = strategy_layers(s, teacher_depth, d)
            by_layers.setdefault(tuple(layers), Candidate(layers)).strategies.append(f"{s}")
    for layers in layer_lists:
        c = by_layers.setdefault(tuple(layers), Candidate(list(layers)))
        if "custom" not in c.strategies:
            c.strategies.append("custom")
    return sorted(by_layers.values(), key=lambda c: len(c.layers))  # stable: first appearance within a depth


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the Pareto-optimal points of (cost, value) pairs: no other point costs at most as much
    and is worth at least as much, with one of the two strictly better. Equal points are all kept."""
    out = []
    for i, (c, v) in enumerate(points):
        dominated = any(c2 <= c and v2 >= v and (c2 < c or v2 > v) for j, (c2, v2) in enumerate(points) if j != i)
        if not dominated:
            out.append(i)
    return out


def smallest_within(students: list[dict], teacher_val: float, points: float = 1.0) -> dict | None:
    """The student with the fewest parameters (then the lowest fp32 batch-1 latency) whose validation
    accuracy is at most `points` accuracy points below the teacher's."""
    ok = [s for s in students if s["validation"]["accuracy"] >= teacher_val - points / 100 - 1e-12]
    return min(ok, key=lambda s: (s["params_total"], s["latency"]["fp32_b1_p50_ms"])) if ok else None


# ----------------------------------------------------------------------------- processes

@dataclass
class Share:
    """This process's place in an `accelerate launch` group, read from the launcher's environment."""

    index: int = 0
    count: int = 1
    token: str = ""

    @property
    def is_main(self) -> bool:
        return self.index == 0


def leave_group() -> Share:
    """Read this process's rank and the group's size, then remove the group variables from the
    environment, so that the Trainer (through accelerate) sees one process and trains the students this
    process was dealt on its own, instead of joining the others data-parallel."""
    count = int(os.environ.get("WORLD_SIZE", "1") or 1)
    local = os.environ.get("LOCAL_RANK")
    if count > 1 and local is not None:
        # one GPU per process: without the group variables every process would take the first one
        ids = [i for i in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if i.strip()]
        os.environ["CUDA_VISIBLE_DEVICES"] = ids[int(local) % len(ids)] if ids else local
    share = Share(int(os.environ.get("RANK", "0") or 0), count,
                  f"{os.environ.get('MASTER_ADDR', '')}:{os.environ.get('MASTER_PORT', '')}:{os.getppid()}")
    for k in _GROUP_ENV:
        os.environ.pop(k, None)
    return share


# ----------------------------------------------------------------------------- checking the request

def _parse_depths(text: str | None, teacher_depth: int, errors: list[str]) -> list[int]:
    if text is None:
        return [d for d in DEFAULT_DEPTHS if d <= teacher_depth] or [teacher_depth]
    depths = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            d = int(part)
        except ValueError:
            errors.append(f"--depths: {part!r} is not a whole number; write e.g. --depths 2,3,4,6")
            continue
        if not 1 <= d <= teacher_depth:
            errors.append(f"--depths: {d} is outside 1..{teacher_depth} (the teacher has {teacher_depth} layers)")
        elif d not in depths:
            depths.append(d)
    if not depths and not errors:
        errors.append("--depths is empty; write e.g. --depths 2,3,4,6")
    return depths


def _parse_strategies(text: str | None, errors: list[str]) -> list[str]:
    if text is None:
        return list(STRATEGIES)
    names = [s.strip() for s in str(text).split(",") if s.strip()]
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown:
        errors.append(f"--strategies: unknown {', '.join(map(repr, unknown))}; known: {', '.join(STRATEGIES)}")
    if not names:
        errors.append(f"--strategies is empty; choose from {', '.join(STRATEGIES)}")
    return list(dict.fromkeys(s for s in names if s in STRATEGIES))


def check_request(run_dir: str | Path, depths: str | None, strategies: str | None, layers: str | None):
    """(teacher depth, candidates) for a sweep of the finished run `run_dir`. All problems are collected
    and raised together as one UserError. With only --layers, no strategy students are planned."""
    from .predict import finished_run

    from .rundir import RunDir

    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"--run {run}: no such directory; give a finished run, made by `distillora run`")
    finished_run(run)  # raises UserError when results.json is missing
    teacher_cfg = RunDir(run).model_dir("teacher") / "config.json"
    if not teacher_cfg.is_file() or not RunDir(run).marker("teacher").is_file():
        raise UserError(f"--run {run}: no fine-tuned teacher (models/teacher, stages/teacher.json); "
                        f"finish the run with `distillora run --output {run}`")
    import json

    teacher_depth = int(json.loads(teacher_cfg.read_text(encoding="utf-8"))["num_hidden_layers"])
    errors: list[str] = []
    only_layers = layers is not None and depths is None and strategies is None
    d = [] if only_layers else _parse_depths(depths, teacher_depth, errors)
    s = [] if only_layers else _parse_strategies(strategies, errors)
    lists = []
    if layers is not None:
        try:
            lists = parse_layer_lists(layers, teacher_depth)
        except ValueError as e:
            errors.append(f"--layers {layers!r}: {e}")
    if errors:
        raise UserError(f"sweep of {run} (teacher with {teacher_depth} layers):\n  - " + "\n  - ".join(errors))
    return teacher_depth, plan(teacher_depth, d, s, lists)


# ----------------------------------------------------------------------------- running

def _wait_for(what: str, ready, poll: float = 1.0):
    """Poll `ready()` until it returns something other than None (another process is producing it)."""
    last = time.monotonic()
    while (value := ready()) is None:
        if time.monotonic() - last > 60:
            log.info("still waiting for %s", what)
            last = time.monotonic()
        time.sleep(poll)
    return value


def _teacher_cache(path: Path, fp: str, share: Share, compute) -> dict:
    """The teacher's outputs on the training split: read from `path` if it holds them for fingerprint
    `fp`; else the main process computes and writes them and the others wait for the file."""
    import torch

    def read():
        if not path.is_file():
            return None
        try:
            data = torch.load(path, weights_only=True)
        except (RuntimeError, OSError, EOFError):
            return None  # being replaced, or damaged: the main process rewrites it
        return data if data.get("fingerprint") == fp else None

    data = read()
    if data is None and share.is_main:
        log.info("caching teacher outputs in %s", path)
        c0 = time.perf_counter()
        data = {"fingerprint": fp, **compute()}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        torch.save(data, tmp)
        os.replace(tmp, path)  # readers never see a half-written file
        log.info("teacher outputs cached in %.1fs", time.perf_counter() - c0)
    elif data is None:
        data = _wait_for(f"the main process to write {path}", read)
    else:
        log.info("teacher outputs read from %s", path)
    return {k: v for k, v in data.items() if k != "fingerprint"}


def _reuse_study_student(run, c: Candidate, fp: str, cfg, teacher_fp: str, recipe: dict, teacher_depth: int) -> bool:
    """If the study already distilled these layers from this teacher with this recipe (and seed: the
    teacher's fingerprint holds it), that training is exactly the one the sweep would run: copy its model
    and record instead of training again. Returns whether it did."""
    import shutil

    from .config import fingerprint
    from .fileio import write_dir
    from .stages import Kind
    from .students import parse_layers

    if run.done(c.name, fp) is not None:
        return False
    for name, layers in cfg.distill.students.items():
        if parse_layers(layers, teacher_depth) != c.layers:
            continue
        rec = run.done(name, fingerprint(teacher_fp, recipe, layers))
        if rec is None:
            continue
        log.info("sweep student %s (%s): the study's `%s` has these layers and recipe; reused, not retrained",
                 c.name, ", ".join(c.strategies), name)
        write_dir(run.model_dir(c.name), lambda tmp: shutil.copytree(run.model_dir(name), tmp, dirs_exist_ok=True))
        run.finish(c.name, fp, {"objective": rec["objective"], "teacher_layers": c.layers, "kind": Kind.SWEEP.value,
                                "reused_from": name, "train": rec["train"]})
        return True
    return False


def _refuse_stale_teacher(run_dir: Path, cfg, teacher_fp: str, teacher_depth: int) -> None:
    """The run's teacher must be the one `distillora run` would train from its config.yaml today: a
    sweep reads the data through today's code, so a teacher trained under settings this version reads
    differently (a normaliser preset whose steps changed) would give students trained, cached and
    scored on other text than the teacher and the run's other models."""
    from . import stages
    from .config import fingerprint, to_dict

    teacher = next(st for st in stages.plan(cfg, to_dict(cfg), teacher_depth) if st.name == "teacher")
    if fingerprint(*teacher.fingerprint_inputs) != teacher_fp:
        raise UserError(f"--run {run_dir}: its teacher was trained under settings this version of distillora "
                        f"reads differently (e.g. the steps of data.normalize's preset), or on a data.extra_train "
                        f"file (or, under teacher.restarts, a data.dev_sets file, which chose it) that has changed "
                        f"or moved since; re-run "
                        f"`distillora run --output {run_dir}` (it retrains what changed), then sweep")


def run_sweep(run_dir: str | Path, depths: str | None = None, strategies: str | None = None,
              layers: str | None = None, max_minutes: float | None = None, quiet: bool = False,
              timing_rounds: int = ROUNDS) -> dict:
    """Train (or skip, when finished) every planned student of the run `run_dir`, this process's share
    of them under `accelerate launch`; on the main process, evaluate and time them all and write
    sweep.json and the report. Returns the sweep record (on other processes: their share's summary).

    Raises:
        UserError: a bad argument or a run that is not finished, before anything is written.
    """
    share = leave_group()  # before anything creates accelerate's state
    if max_minutes is not None and not max_minutes > 0:
        raise UserError(f"--max-minutes {max_minutes}: give a positive number of minutes")
    if timing_rounds < 1:
        raise UserError(f"--timing-rounds {timing_rounds}: give at least 1 (default {ROUNDS})")
    teacher_depth, candidates = check_request(run_dir, depths, strategies, layers)
    t0 = time.monotonic()

    from transformers import AutoTokenizer

    from . import study
    from .config import fingerprint, load_config, to_dict
    from .data import encode, load_splits
    from .fileio import read_json, write_json
    from . import losses
    from .config import stable_section
    from .rundir import RunDir
    from .stages import TEACHER, Kind, Stage, StageContext, StageEnv, distill as distill_stage
    from .training import check_token_masking, group_factors, use_bf16, with_group_weights

    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    cfg = load_config(run.config)
    teacher_fp = read_json(run.marker("teacher"))["fingerprint"]
    splits = load_splits(cfg.data, cfg.seed)  # first: a missing data or extra_train file says so itself
    _refuse_stale_teacher(run_dir, cfg, teacher_fp, teacher_depth)
    cfg = study._with_label_names(cfg, splits.info["label_names"])  # inferred when config.yaml has null
    tokenizer = AutoTokenizer.from_pretrained(str(run.model_dir("teacher")))
    check_token_masking(cfg, tokenizer)
    enc = {s: encode(getattr(splits, s), tokenizer, cfg.data.max_length) for s in ("train", "validation", "test")}
    enc["train"] = with_group_weights(enc["train"], group_factors(splits.train, cfg))
    env = StageEnv(cfg, tokenizer, enc["train"], enc["validation"], run_dir, quiet, splits.extra_rows)
    recipe = stable_section(to_dict(cfg), "distill", drop=("students",))  # as the study's distill stages
    fps = {c.name: fingerprint(teacher_fp, recipe, c.layers) for c in candidates}  # as the study's students
    mine = candidates[share.index::share.count]
    log.info("sweep: %d distinct students planned%s; %d finished earlier", len(candidates),
             f", {len(mine)} for process {share.index} of {share.count}" if share.count > 1 else "",
             sum(run.done(c.name, fps[c.name]) is not None for c in candidates))

    ctx = StageContext(env)
    cache = {}
    needs = losses.teacher_needs(losses.weights_of(cfg.distill))

    def get_cache():
        if not cache:
            cache.update(_teacher_cache(run.sweep_dir / "teacher_outputs.pt", fingerprint(teacher_fp, needs), share,
                                        lambda: distill_stage.teacher_outputs(
                                            ctx.model(TEACHER), env.train, tokenizer, needs,
                                            bf16=use_bf16(cfg.distill.train.precision))))
        return cache

    if share.is_main and any(run.done(c.name, fps[c.name]) is None for c in candidates):
        get_cache()  # every process's students need it: written before the main process trains its own
    trained, stopped = [], []
    objective = distill_stage.objective(cfg.distill)
    for c in mine:
        if max_minutes is not None and time.monotonic() - t0 > 60 * max_minutes and run.done(c.name, fps[c.name]) is None:
            stopped.append(c.name)
            continue

        if _reuse_study_student(run, c, fps[c.name], cfg, teacher_fp, recipe, teacher_depth):
            trained.append(c.name)
            continue

        def train(ctx, key, fp, c=c):
            log.info("sweep student %s (%s): distilling teacher layers %s", c.name, ", ".join(c.strategies), c.layers)
            return distill_stage.train(env, key, ctx.model(TEACHER), c.layers, get_cache(), fp)

        stage = Stage(name=c.name, kind=Kind.SWEEP, section="distill", consumes=(TEACHER, "teacher_outputs"),
                      fingerprint_inputs=(recipe, c.layers), teacher_layers=c.layers, objective=objective, train=train,
                      action="distilling")
        study._run_stage(run, ctx, stage, c.name, fps[c.name])
        trained.append(c.name)
    if stopped:
        log.info("sweep: --max-minutes %g reached; %d students not started: %s", max_minutes, len(stopped),
                 ", ".join(stopped))
    cache.clear()
    ctx = None  # the teacher is no longer needed
    mine_summary = {"token": share.token, "process": share.index, "finished": trained, "not_started": stopped}
    if share.count > 1:
        # each process reports through its own file; only the main process writes the shared ones
        write_json(run.sweep_dir / "processes" / f"{share.index}.json", mine_summary)
        if not share.is_main:
            return mine_summary

        def others():
            rows = []
            for i in range(1, share.count):
                f = run.sweep_dir / "processes" / f"{i}.json"
                r = read_json(f) if f.is_file() else None
                if r is None or r.get("token") != share.token:
                    return None
                rows.append(r)
            return rows

        for r in _wait_for("the other processes' students", others):
            stopped += r["not_started"]
    record = summarise(run, env, candidates, fps, enc, splits, cfg, teacher_depth,
                       budget={"max_minutes": max_minutes, "not_started": stopped}, processes=share.count,
                       rounds=timing_rounds)
    record["wall_seconds_this_invocation"] = round(time.monotonic() - t0, 1)
    write_json(run.sweep_file, record)
    _rewrite_report(run_dir, cfg)
    return record


# ----------------------------------------------------------------------------- measuring

def split_figures(pred, labels, resamples: int, seed: int) -> dict:
    """Accuracy and balanced accuracy of predicted classes `pred` against `labels`, with bootstrap 95%
    intervals."""
    from . import stats

    labels, pred = np.asarray(labels), np.asarray(pred)
    return {"accuracy": float((pred == labels).mean()),
            "balanced_accuracy": float(stats.balanced_accuracy(labels, pred)),
            "ci95": {k: list(stats.bootstrap_ci(labels, pred, k, resamples, seed=seed))
                     for k in ("accuracy", "balanced_accuracy")},
            "rows": int(len(labels))}


def time_models(models: dict, texts: list[str], max_length: int, rounds: int = ROUNDS, per_round: int = PER_ROUND,
                batch_size: int = 32) -> dict:
    """Batch-1 latency (p50, p95; tokenising included, as `predict` and the app run it) and batch-32
    throughput of every model in `models` ({name: inference.Backend}), measured in this one process,
    alternating: each round times every model in turn (the order reversed every other round) on the
    same sentences, so drift in the machine's load falls on all models alike."""
    lat = {n: [] for n in models}
    thr = {n: [0, 0.0] for n in models}
    for b in models.values():  # warm-up
        b.probabilities(texts[:1], max_length)
        b.probabilities(texts[:batch_size], max_length)
    for r in range(rounds):
        ones = [texts[(r * per_round + i) % len(texts)] for i in range(per_round)]
        batch = [texts[(r * batch_size + i) % len(texts)] for i in range(batch_size)]
        for name in (list(models) if r % 2 == 0 else list(reversed(models))):
            b = models[name]
            for t in ones:
                s = time.perf_counter()
                b.probabilities([t], max_length)
                lat[name].append(1000 * (time.perf_counter() - s))
            s = time.perf_counter()
            b.probabilities(batch, max_length)
            thr[name][0] += len(batch)
            thr[name][1] += time.perf_counter() - s
    return {n: {"b1_p50_ms": round(float(np.percentile(lat[n], 50)), 2),
                "b1_p95_ms": round(float(np.percentile(lat[n], 95)), 2),
                "b32_examples_per_s": round(thr[n][0] / thr[n][1], 1)} for n in models}


def summarise(run, env, candidates: list[Candidate], fps: dict, enc: dict, splits, cfg, teacher_depth: int,
              budget: dict, processes: int, rounds: int = ROUNDS) -> dict:
    """Evaluate every finished candidate (once; probabilities kept in stages/<name>.test.json), time them
    all with the teacher, and build the sweep record."""
    import torch

    from . import inference, study
    from .config import to_dict
    from .evaluate import size_on_disk, test_metrics
    from .fileio import read_json
    from .predict import max_length

    labels = {"validation": splits.validation.labels, "test": splits.test.labels}
    R, seed = cfg.bootstrap_resamples, cfg.seed

    def figures(ev) -> dict:
        out = {"validation": split_figures(ev.validation_probabilities.argmax(1), labels["validation"], R, seed),
               "test": split_figures(ev.probabilities.argmax(1), labels["test"], R, seed)}
        # the keys the web app's table shows beside the study's models
        out["test"].update({k: v for k, v in test_metrics(ev.probabilities, labels["test"],
                                                          splits.info["label_names"]).items()
                            if k in ("f1_macro", "per_class", "roc_auc", "confusion")})
        return out

    teacher_rec = read_json(run.marker("teacher"))
    teacher_ev = study._evaluate(run, "teacher", teacher_rec, enc, env.tokenizer)
    teacher = {"name": "teacher", "teacher_layers": list(range(1, teacher_depth + 1)), "num_layers": teacher_depth,
               "params_total": teacher_ev.params_total, "size_bytes": size_on_disk(run.model_dir("teacher")),
               **figures(teacher_ev)}
    students, not_trained = [], []
    for c in candidates:
        rec = run.done(c.name, fps[c.name])
        if rec is None:
            not_trained.append({"name": c.name, "teacher_layers": c.layers, "strategies": c.strategies,
                                "reason": "not started: --max-minutes reached" if c.name in budget["not_started"]
                                else "not finished"})
            continue
        ev = study._evaluate(run, c.name, rec, enc, env.tokenizer)
        students.append({"name": c.name, "kind": "sweep", "strategies": c.strategies, "teacher_layers": c.layers,
                         "num_layers": len(c.layers), "objective": rec["objective"], "path": f"models/{c.name}",
                         "params_total": ev.params_total, "params_trainable": ev.params_total,
                         "size_bytes": size_on_disk(run.model_dir(c.name)),
                         "train": {k: rec["train"].get(k) for k in ("seconds", "steps", "loss", "best_checkpoint",
                                                                    "resumed_from")},
                         **figures(ev)})

    # ---- speed: every model loaded at once, timed alternating in this process
    limit = max_length(run.root)
    texts = splits.test.texts
    models, served = {}, {}
    for m in [teacher] + students:
        path = run.model_dir(m["name"])
        models[m["name"]] = inference.load(path, "fp32")
        copy_ = inference.load_served(run.root, m["name"], path)
        served[m["name"]] = copy_.method
        if copy_.method != "fp32":
            models[m["name"] + "@" + copy_.method] = copy_
    log.info("timing %d models alternately (batch 1 and batch 32)", len(models))
    speed = time_models(models, texts, limit, rounds)
    for m in [teacher] + students:
        fp32, method = speed[m["name"]], served[m["name"]]
        s = speed.get(m["name"] + "@" + method, fp32)
        m["latency"] = {"fp32_b1_p50_ms": fp32["b1_p50_ms"], "fp32_b1_p95_ms": fp32["b1_p95_ms"],
                        "fp32_b32_examples_per_s": fp32["b32_examples_per_s"],
                        "served_as": method, "served_b1_p50_ms": s["b1_p50_ms"],
                        "served_b32_examples_per_s": s["b32_examples_per_s"],
                        "served_note": (f"the {method} copy chosen by `distillora export`" if method != "fp32" else
                                        "no export passed for this model, so the served copy is the fp32 model "
                                        "(same figures)")}
    del models

    # ---- the frontier (on validation accuracy: selection never reads test) and the smallest good student
    for axis, cost in (("latency", lambda m: m["latency"]["fp32_b1_p50_ms"]), ("params", lambda m: m["params_total"])):
        front = set(pareto([(cost(m), m["validation"]["accuracy"]) for m in students]))
        for i, m in enumerate(students):
            m.setdefault("pareto", {})[axis] = i in front
    best = smallest_within(students, teacher["validation"]["accuracy"])
    return {
        "run": run.root.name,
        "teacher": teacher,
        "teacher_depth": teacher_depth,
        "recipe": {k: v for k, v in to_dict(cfg.distill).items() if k != "students"},
        "selection": "each student's epoch chosen on validation (" + cfg.selection_metric + "); the Pareto front "
                     "and the smallest student within 1 point use validation accuracy",
        "students": students,
        "not_trained": not_trained,
        "budget": budget,
        "processes": processes,
        "smallest_within_1_point": best["name"] if best else None,
        "timing": {"threads": torch.get_num_threads(), "device": "cpu", "rounds": rounds,
                   "b1_sentences": rounds * PER_ROUND, "b32_batches": rounds, "texts": "test split, original order",
                   "method": "one process, models alternating each round"},
    }


def _rewrite_report(run_dir: Path, cfg) -> None:
    """report.md and report.html again, from results.json, now with the sweep section."""
    from .fileio import read_json
    from .report import write_report

    from .rundir import RunDir

    write_report(run_dir, RunDir(run_dir).results(), cfg)
