"""Run the study's registered stages (`distillora.stages`) in order into one run directory
(`distillora.rundir`), skipping stages already finished with the same configuration; then evaluate
every saved model once and write results.json and the report."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path

import torch
import yaml
from accelerate import PartialState
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from . import bundles, integrity, stages
from .config import StudyConfig, diff, fingerprint, load_config, to_dict, to_yaml
from .data import encode, load_extra, load_splits
from .errors import UserError
from .evaluate import count_params, predict_proba, size_on_disk
from .inference.base import EVAL_BATCH
from .fileio import read_json, remove_stale_temporaries, sha256, write_dir, write_text
from .rundir import Evaluation, ModelRecord, Results, RunDir
from .runlock import LOCK_NAME, RunLock
from .stages import Kind, Stage, StageContext, StageEnv, load_model
from .stages.teacher import head_pooling
from .students import parse_layers
from .training import bias_logprobs, check_token_masking, group_factors, with_group_weights

log = logging.getLogger("distillora")


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _prepare_output(out: Path, resolved: dict, force: bool, write: bool = True) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {out} is a file; give a directory")
    cfg_file = RunDir(out).config
    if cfg_file.exists():
        try:
            # through load_config, so keys added to distillora since that run compare as their defaults
            old = to_dict(load_config(cfg_file))
        except UserError:
            raise UserError(f"{cfg_file} is damaged or from an incompatible version; use another --output, or "
                            f"delete that file and pass --force to redo the run there") from None
        changes = diff(old, resolved)
        if changes and not force:
            raise UserError(f"{out} holds a run with a different configuration:\n  " + "\n  ".join(changes[:20]) +
                            "\nuse another --output, or pass --force to redo the stages these changes affect")
        if changes and write:
            RunDir(out).discard_results()  # no longer describes what is on disk
    elif out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()):
        raise UserError(f"{out} exists, is not empty and is not a distillora run; choose another --output")
    if not write:
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{out}: cannot write there ({e.strerror}); choose a writable --output") from None


def check_disk(out: Path, teacher_dir: str, members: int = 1, linear_probe: bool = False) -> None:
    """Fail before training if the disk cannot hold checkpoints and models (about 8x the teacher, and 6x
    more for each further member of a teacher soup or restart: its best and last checkpoints, weights and two Adam
    moments each, are kept until the teacher stage ends; 2x more for a linear probe, whose two checkpoints
    hold the weights and the head's moments only)."""
    weights = sum(f.stat().st_size for f in Path(teacher_dir).glob("*.safetensors")) if Path(teacher_dir).is_dir() else 0
    need = (8 + 6 * (members - 1) + (2 if linear_probe else 0)) * weights
    probe = out
    while not probe.exists():
        probe = probe.parent
    # writability first: a read-only filesystem reports no free space, which is not the problem
    if os.statvfs(probe).f_flag & os.ST_RDONLY:
        raise UserError(f"{out}: {probe} is on a read-only filesystem; choose a writable --output")
    if probe.is_dir() and not os.access(probe, os.W_OK):
        raise UserError(f"{out}: {probe} is not writable by this user; choose a writable --output")
    free = shutil.disk_usage(probe).free
    if need and free < need:
        raise UserError(f"{out}: {free / 1e9:.1f} GB free, the study needs about {need / 1e9:.1f} GB "
                        f"(checkpoints and models); free space or choose another --output")


def _load_source(name: str, source: str):
    try:
        return AutoTokenizer.from_pretrained(source), AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise UserError(f"teacher.source = {name!r}: cannot load its tokenizer and config ({first}); use a local "
                        f"Hugging Face directory, an offline bundle ({', '.join(bundles.BUNDLES)}), or a Hub id "
                        f"while online") from None


def _check_models(cfg: StudyConfig, teacher_config, pooling: str = "first") -> None:
    """Every layer list against the teacher's depth, the LoRA targets against its architecture and the
    head's `pooling` (teacher.pooling resolved) against its head, before anything is trained or written."""
    from .pooling import SUPPORTED

    depth = teacher_config.num_hidden_layers
    errors = []
    if pooling == "mean" and teacher_config.model_type not in SUPPORTED:
        how = " (auto: the source's own pooling configuration says mean)" if cfg.teacher.pooling == "auto" else ""
        errors.append(f"teacher.pooling = {cfg.teacher.pooling}{how}: the head of a model of type "
                      f"{teacher_config.model_type} does not read the position the mean replaces (supported: "
                      f"{', '.join(SUPPORTED)}); set teacher.pooling: first")
    if cfg.lora.enabled:
        from . import lora

        with torch.device("meta"):  # structure only: no weights are allocated
            skeleton = AutoModelForSequenceClassification.from_config(teacher_config)
        try:
            lora.target_modules(skeleton, cfg.lora.target_modules)
            lora.head_modules(skeleton)
        except ValueError as e:
            errors.append(f"lora.target_modules = {cfg.lora.target_modules!r}: {e}")
    specs = [(f"distill.students.{n}", l) for n, l in cfg.distill.students.items()]
    specs += [(f"{s}.layers", getattr(cfg, s).layers) for s in ("lora", "baseline") if getattr(cfg, s).enabled]
    for key, layers in specs:
        try:
            parse_layers(layers, depth)
        except ValueError as e:
            errors.append(f"{key} = {layers!r}: {e}")
    if errors:
        raise UserError(f"teacher {cfg.teacher.source!r} ({teacher_config.model_type}, {depth} layers):\n  - "
                        + "\n  - ".join(errors))


def _save(model, tokenizer, path: Path) -> None:
    def fill(tmp: Path):
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        integrity.record(tmp)
    write_dir(path, fill)


_load = load_model


def objectives(cfg: StudyConfig, depth: int = 12) -> dict[str, str]:
    """{stage name: its objective line}, from the registered stages."""
    return {s.name: s.objective for s in stages.plan(cfg, to_dict(cfg), depth)}


def run_study(cfg: StudyConfig, output: str | Path, force: bool = False, quiet: bool = False) -> Path:
    """Run every stage into `output`; return the run directory. Raises UserError for bad input
    before anything is written, and when another process holds the run directory's lock."""
    held: list[RunLock] = []
    try:
        return _run_study(cfg, Path(output), force, quiet, held)
    finally:
        for lock in held:
            if lock is not None:
                lock.release()


def _take_lock(out: Path, state: PartialState) -> RunLock | None:
    """The main process takes the run directory's lock (the other data-parallel processes are its
    helpers, not rival writers) and removes what killed writes left; every process raises the main's
    refusal, so none waits for a main process that has given up."""
    lock, refusal = None, None
    if state.is_main_process:
        try:
            lock = RunLock(out, "run").acquire()
        except UserError as e:
            refusal = str(e)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        refusal = broadcast_object_list([refusal])[0]
    if refusal:
        raise UserError(refusal)
    if lock is not None:
        for p in remove_stale_temporaries(out):
            log.info("removed %s, left by an interrupted write", p)
    return lock


def _with_label_names(cfg: StudyConfig, names: list[str]) -> StudyConfig:
    """`cfg` with `data.label_names` as the data resolved them (given, or inferred when null), so the
    teacher's head, the class weights, extra test sets and the checks all use the same names."""
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, label_names=list(names)))


def _load_sets(cfg: StudyConfig, key: str) -> dict:
    """Every file of `data.<key>` (extra_tests or dev_sets), read and checked before anything is trained
    or written."""
    return {name: load_extra(f"data.{key}.{name}", path, cfg.data) for name, path in getattr(cfg.data, key).items()}


def _check_dev_sets(dev: dict, splits) -> None:
    """A development set chooses the best student, so it must not be the test split: refused when every
    row's text is a test text, and a warning names the count when some are."""
    test = set(splits.test.texts)
    for name, split in dev.items():
        shared = sum(t in test for t in split.texts)
        if shared == len(split.texts):
            raise UserError(f"data.dev_sets.{name}: every one of its {shared} texts is in the test split; the best "
                            f"student would be chosen on test. Name a set that is not the test split")
        if shared:
            log.warning("data.dev_sets.%s: %d of its %d texts are also in the test split (after normalisation); the "
                        "choice of the best student (and, under teacher.restarts, of the teacher) reads them", name,
                        shared, len(split.texts))


def _set_probabilities(run: RunDir, key: str, rec: dict, sets: dict, tokenizer) -> dict:
    """Probabilities of the saved model `key` on each labelled set in `sets` (name -> (encoded split, its
    file's sha256); the names of data.extra_tests and data.dev_sets, which config validation keeps apart),
    computed once per model and file content and kept in stages/<key>.extra-<name>.json. The model is
    loaded only if a set needs it."""
    model, out = None, {}
    for set_name, (split_enc, content) in sets.items():
        # by content, as data.extra_train is: these files may decide which model is served
        fp = fingerprint(rec["fingerprint"], content)
        probs = run.extra_probabilities(key, set_name, fp)
        if probs is None:
            log.info("evaluating %s on %s", key, set_name)
            model = model or _load(run.model_dir(key))
            probs = run.write_extra_probabilities(key, set_name, fp, predict_proba(model, split_enc, tokenizer)[0])
        out[set_name] = probs
    return out


def _run_study(cfg: StudyConfig, out: Path, force: bool, quiet: bool, held: list) -> Path:
    resolved = to_dict(cfg)
    splits = load_splits(cfg.data, cfg.seed)          # data errors surface before any file is written
    group = group_factors(splits.train, cfg)          # so does a missing group column (group_weights)
    config_yaml = to_yaml(cfg)                        # as given (label_names may be null: inferred)
    cfg = _with_label_names(cfg, splits.info["label_names"])
    bias = bias_logprobs(splits.train, cfg)           # so does data too small for teacher.debias
    extra = _load_sets(cfg, "extra_tests")            # so do extra test sets'
    dev = _load_sets(cfg, "dev_sets")                 # and development sets'
    _check_dev_sets(dev, splits)
    if cfg.teacher.restarts > 1 and not dev:
        log.warning("teacher.restarts = %d without data.dev_sets: the teacher is chosen on validation alone, the "
                    "split that already chose each restart's best epoch; name development sets to choose on data "
                    "of the kind the model will serve", cfg.teacher.restarts)
    if cfg.logit_adjustment and cfg.class_weights is not None:
        log.warning("logit_adjustment = %g with class_weights = %r corrects the class prior twice (measured worse "
                    "in docs/results.md); set class_weights: null for the logit-adjusted loss alone",
                    cfg.logit_adjustment, cfg.class_weights)
    source = bundles.resolve(cfg.teacher.source, cfg.teacher.allow_pickle)  # so do tampered bundles, pickles
    tokenizer, teacher_config = _load_source(cfg.teacher.source, source)
    pooling = head_pooling(cfg, source)  # `auto` looked up once, here
    _check_models(cfg, teacher_config, pooling)
    if cfg.teacher.pooling == "auto":
        log.info("teacher.pooling = auto: the head reads %s", "the mean of the last hidden states" if pooling == "mean"
                 else "the first token")
    # every stage reads what this chose, while fingerprints keep the setting as given (`resolved`, above)
    cfg = dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, pooling=pooling))
    check_token_masking(cfg, tokenizer)
    check_disk(out, source, max(cfg.teacher.soup, cfg.teacher.restarts), bool(cfg.teacher.linear_probe_epochs))
    # Data-parallel (accelerate launch / torchrun): every process trains; the main process alone
    # writes files, and the others wait at each stage's end.
    state = PartialState(cpu=not torch.cuda.is_available())  # cpu=True: gloo across CPU processes
    _prepare_output(out, resolved, force, write=False)  # every process checks before any writes
    state.wait_for_everyone()
    held.append(_take_lock(out, state))
    if state.is_main_process:
        _prepare_output(out, resolved, force)
        write_text(RunDir(out).config, config_yaml)
    state.wait_for_everyone()
    run = RunDir(out)
    log.info("data: %s", splits.info["rows"])

    t0 = time.perf_counter()
    enc = {name: encode(getattr(splits, name), tokenizer, cfg.data.max_length)
           for name in ("train", "validation", "test")}
    enc["train"] = with_group_weights(enc["train"], group)
    # the development sets, encoded once: teacher.restarts scores its members on them, evaluation every model
    dev_enc = {name: encode(split, tokenizer, cfg.data.max_length) for name, split in dev.items()}
    seeds = [cfg.seed] + [x for x in cfg.seeds if x != cfg.seed]
    seed_records: dict[int, dict[str, dict]] = {}
    for seed in seeds:
        # The validation carve stays the primary seed's; each seed re-runs every trainable stage.
        suffix = "" if seed == cfg.seed else f".seed{seed}"
        if suffix:
            log.info("seed %d: training every stage again", seed)
        env = StageEnv(dataclasses.replace(cfg, seed=seed), tokenizer, enc["train"], enc["validation"], out, quiet,
                       splits.extra_rows, teacher_bias=bias, dev_sets=dev_enc)
        seed_records[seed] = _train_models(run, env, source, teacher_config, resolved, suffix)
    records = seed_records[cfg.seed]
    if not state.is_main_process:
        state.wait_for_everyone()  # the main process evaluates and reports
        return out
    shutil.rmtree(run.checkpoints_dir, ignore_errors=True)

    # ---- evaluation: every saved model, reloaded from disk, on the test split once (and on the
    # validation split, for calibration and a threshold chosen there, on any extra test sets, and on
    # the development sets, which with validation choose the best student)
    files = {**cfg.data.extra_tests, **cfg.data.dev_sets}
    sets = {name: (dev_enc[name] if name in dev_enc else encode(split, tokenizer, cfg.data.max_length),
                   sha256(Path(files[name]).expanduser())) for name, split in {**extra, **dev}.items()}
    dev_sets = {name: sets[name] for name in dev}
    evaluations = {}
    for name, rec in records.items():
        ev = _evaluate(run, name, rec, enc, tokenizer)
        ev.extra = _set_probabilities(run, name, rec, sets, tokenizer)
        evaluations[name] = ev

    from . import analysis  # scipy and the statistics are needed only here

    models = [_model_entry(name, Kind(rec["kind"]), rec, evaluations[name], run) for name, rec in records.items()]
    analysis.add_to_models(models, evaluations, splits, extra, cfg, dev)
    per_seed = {cfg.seed: evaluations}
    for seed in seeds[1:]:
        per_seed[seed] = {}
        for name, rec in seed_records[seed].items():
            key = name + f".seed{seed}"
            ev = per_seed[seed][name] = _evaluate(run, key, rec, enc, tokenizer)
            ev.extra = _set_probabilities(run, key, rec, dev_sets, tokenizer)  # for the choice below
    if len(seeds) > 1:
        analysis.add_seeds(models, seeds, seed_records, per_seed, splits, dev)
    scores = analysis.selection_scores(models, per_seed, splits, dev, cfg.selection_metric)
    best, rule = _best_student(scores, cfg.selection_metric, list(dev), len(seeds))
    results = Results(
        name=cfg.name,
        dataset=splits.info,
        models=models,
        best_student=best,
        best_student_rule=rule,
        best_student_scores=scores,
        selection_metric=cfg.selection_metric,
        significance=analysis.significance(models, evaluations, splits.test.labels),
        audit=analysis.run_audit(splits, cfg, tokenizer),
        wall_seconds_this_invocation=round(time.perf_counter() - t0, 1),
        versions=_versions(),
    )
    from . import check  # behavioural suites (config check.suites): checks.json, read by the report

    check.for_study(out, cfg, [m.name for m in models], splits.validation.texts)
    from .report import write_report  # matplotlib is imported only when a report is written

    write_report(out, results, cfg)
    run.write_results(results)  # last: its presence marks the run finished
    state.wait_for_everyone()
    return out


def _train_models(run: RunDir, env: StageEnv, source: str, teacher_config, resolved: dict,
                  suffix: str) -> dict[str, dict]:
    """Train (or skip, when finished) every registered stage for `env.cfg.seed`; stage keys are name +
    `suffix`. Returns each model's stage record, keyed by model name."""
    planned = stages.plan(env.cfg, resolved, teacher_config.num_hidden_layers)
    ctx = StageContext(env, source, suffix)
    fps: dict[str, str] = {}
    records: dict[str, dict] = {}
    for i, stage in enumerate(planned):
        # a stage's result depends on the stages it consumes (their fingerprints) and its own inputs
        fps[stage.name] = fingerprint(*[fps[c] for c in stage.consumes if c in fps], *stage.fingerprint_inputs)
        consumed_later = any(stage.name in later.consumes for later in planned[i + 1:])
        records[stage.name] = _run_stage(run, ctx, stage, stage.name + suffix, fps[stage.name], consumed_later)
        if not any(stages.TEACHER_OUTPUTS in later.consumes for later in planned[i + 1:]):
            ctx.release_teacher_outputs()
    return records


def _run_stage(run: RunDir, ctx: StageContext, stage: Stage, key: str, fp: str, keep: bool = False) -> dict:
    """Skip a stage finished with fingerprint `fp`; otherwise train it (on every process, when
    data-parallel), then save and mark it finished on the main process only. `keep`: later stages
    consume this model; hold it in `ctx` rather than reload it."""
    rec = run.done(key, fp)
    if rec is not None:
        log.info("stage %s: finished earlier, skipped", key)
        return {**rec, "kind": stage.kind.value}
    log.info("stage %s: %s (kind %s, teacher layers %s)", key, stage.action, stage.kind.value, stage.teacher_layers)
    model, stats = stage.train(ctx, key, fp)
    if keep:
        ctx.keep(stage.name, model)
    state = PartialState()
    if state.is_main_process:
        def fill(tmp: Path):
            stage.save(ctx, model, stats, tmp)
            integrity.record(tmp)
        write_dir(run.model_dir(key), fill)
        run.finish(key, fp, {"kind": stage.kind.value, "objective": stage.objective,
                             "teacher_layers": stage.teacher_layers, **stage.record(stats), "train": stats})
        # a soup's or restarts' members, and the teacher's linear probe (teacher.linear_probe_epochs)
        for work in (run.work_dir(key), run.work_dir(f"{key}.linear_probe"), *run.checkpoints_dir.glob(f"{key}.member*")):
            shutil.rmtree(work, ignore_errors=True)
    state.wait_for_everyone()
    return read_json(run.marker(key))


def _evaluate(run: RunDir, key: str, rec: dict, enc: dict, tokenizer) -> Evaluation:
    """Test and validation probabilities of the saved model `key` (reloaded from disk), computed once
    per trained model and kept in stages/<key>.test.json."""
    ev = run.evaluation(key, rec["fingerprint"])
    if ev is not None:
        return ev
    log.info("evaluating %s on the test split", key)
    model = _load(run.model_dir(key))
    probs, throughput = predict_proba(model, enc["test"], tokenizer)
    val_probs, _ = predict_proba(model, enc["validation"], tokenizer)
    total, trainable = count_params(model)
    return run.write_evaluation(key, Evaluation(
        fingerprint=rec["fingerprint"], probabilities=probs, validation_probabilities=val_probs,
        # what learned in training (frozen weights excluded), as `fit` recorded it; runs before it did: all
        params_total=total, params_trainable=rec["train"].get("params_trainable", trainable),
        num_layers=model.config.num_hidden_layers,
        inference={"examples_per_s": round(throughput, 1), "batch_size": EVAL_BATCH,
                   "device": str(_device()), "threads": torch.get_num_threads()}))


def _model_entry(name: str, kind: Kind, rec: dict, ev: Evaluation, run: RunDir) -> ModelRecord:
    tr = rec["train"]
    return ModelRecord(
        name=name,
        kind=kind.value,
        num_layers=ev.num_layers,
        teacher_layers=rec["teacher_layers"],
        objective=rec["objective"],
        params_total=ev.params_total,
        params_trainable=ev.params_trainable,
        train={"loss": tr["loss"], "seconds": tr["seconds"], "steps": tr["steps"],
               "epoch_losses": tr.get("epoch_losses"), "best_checkpoint": tr.get("best_checkpoint"),
               "precision": tr.get("precision", "fp32"),
               # teacher.restarts: each member's selection scores, which one was kept and where its log is;
               # teacher.linear_probe_epochs: the probe's steps, seconds and validation figures
               **{k: tr[k] for k in ("restarts", "log_key", "linear_probe") if k in tr}},
        validation={k: tr["validation"][k] for k in ("accuracy", "balanced_accuracy", "f1_macro")
                    if k in tr["validation"]},
        test={},  # filled by analysis.add_to_models from the stored test probabilities
        inference=ev.inference,
        size_bytes=size_on_disk(run.model_dir(name)),
        adapter_size_bytes=size_on_disk(run.adapter_dir(name), ()) if kind is Kind.LORA else None,
        merge_max_abs_diff=tr.get("merge_max_abs_diff"),
        path=run.model_ref(name),
    )


def _best_student(scores: dict[str, dict], metric: str, dev_sets: list[str], seeds: int) -> tuple[str | None, str]:
    """(name, the rule in words): the student with the highest `score` of `analysis.selection_scores`, the
    mean of its validation `metric` and the same metric on each development set (`data.dev_sets`), with
    equal weight, averaged over the seeds of a `--seeds N` run. Never the test split. Validation is a
    carve of the training distribution; the development sets stand for what the model will serve (a
    shifted distribution), and one seed's validation alone is noise at the margins students differ by:
    on the seed preset it separated odd and even by 0.001 (568 rows, about 1 point of standard error)
    while the development sets separated them by 2.4 and 4.8 points (docs/results.md). The primary
    seed's model is the one served."""
    rule = f"validation {metric}" + (f" and {metric} on the development sets {', '.join(dev_sets)} (their mean, "
                                     f"equal weight)" if dev_sets else "")
    rule = f"mean {rule} over {seeds} seeds" if seeds > 1 else rule
    return (max(scores, key=lambda n: scores[n]["score"]) if scores else None), rule


def _versions() -> dict:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
