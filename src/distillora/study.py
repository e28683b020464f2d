"""Run the study's stages in order into one run directory, skipping stages already finished with
the same configuration.

Run directory:
  config.yaml              resolved configuration
  stages/<name>.json       a finished stage: fingerprint + training statistics
  stages/<name>.test.json  its test-split evaluation
  .lock                    held by the one process writing here (see runlock)
  models/<name>/           save_pretrained output (lora: merged, adapter in models/lora/adapter),
                           with weights.sha256.json (see integrity)
  checkpoints/<name>/      Trainer checkpoints while a stage runs (removed when it finishes)
  logs/<name>.jsonl        training logs
  checks.json              behavioural checks (config check.suites; distillora.check)
  results.json, report.md, plots/   written last; results.json marks the run finished
"""

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

from . import bundles, integrity
from .config import StudyConfig, diff, fingerprint, load_config, to_dict, to_yaml
from .data import encode, load_splits, load_table
from .errors import UserError
from .evaluate import count_params, has_probabilities, pack_probabilities, predict_proba, size_on_disk, \
    unpack_probabilities
from .fileio import read_json, remove_stale_temporaries, write_dir, write_json, write_text
from .runlock import LOCK_NAME, RunLock
from .stages import StageEnv, baseline as baseline_stage, distill as distill_stage, lora as lora_stage
from .stages import teacher as teacher_stage
from .students import parse_layers

log = logging.getLogger("distillora")


EVALUATION_ONLY_DATA_KEYS = ("extra_tests", "category_column")
# data keys added after runs existed: at their default they leave the fingerprints (and so the
# finished stages) of those runs as they were
NEW_KEY_DEFAULTS = {"sep": ",", "text_pair_column": None, "where": {}}


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Run:
    """Paths and stage bookkeeping of one run directory."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def model_dir(self, name: str) -> Path:
        return self.root / "models" / name

    def marker(self, name: str, kind: str = "") -> Path:
        return self.root / "stages" / f"{name}{kind}.json"

    def done(self, name: str, fp: str, kind: str = "") -> dict | None:
        m = self.marker(name, kind)
        if m.exists() and (self.model_dir(name) / "config.json").exists():
            rec = read_json(m)
            if rec.get("fingerprint") == fp:
                return rec
        return None

    def finish(self, name: str, fp: str, record: dict, kind: str = "") -> dict:
        rec = {"fingerprint": fp, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **record}
        write_json(self.marker(name, kind), rec)
        return rec


def _prepare_output(out: Path, resolved: dict, force: bool, write: bool = True) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {out} is a file; give a directory")
    cfg_file = out / "config.yaml"
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
            (out / "results.json").unlink(missing_ok=True)  # no longer describes what is on disk
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


def check_disk(out: Path, teacher_dir: str) -> None:
    """Fail before training if the disk cannot hold checkpoints and models (about 8x the teacher)."""
    weights = sum(f.stat().st_size for f in Path(teacher_dir).glob("*.safetensors")) if Path(teacher_dir).is_dir() else 0
    need = 8 * weights
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


def _check_models(cfg: StudyConfig, teacher_config) -> None:
    """Every layer list against the teacher's depth, and the LoRA targets against its architecture,
    before anything is trained or written."""
    depth = teacher_config.num_hidden_layers
    errors = []
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


def _load(path: Path):
    integrity.verify(path)
    return AutoModelForSequenceClassification.from_pretrained(str(path), use_safetensors=True).to(_device())


def objectives(cfg: StudyConfig) -> dict[str, str]:
    d, c = cfg.distill, cfg.lora
    return {
        "teacher": "cross-entropy, all weights fine-tuned",
        "distill": (f"distillation: {d.w_ce:g}*CE + {d.w_kd:g}*T^2*KL (T={d.temperature:g}) + {d.w_cos:g}*cosine(hidden)"
                    + (f" + {d.w_layer:g}*layer-to-layer (PKD)" if d.w_layer > 0 else "")),
        "lora": (f"{'distillation (as distill)' if c.objective == 'distill' else 'cross-entropy'}, LoRA r={c.r} "
                 f"alpha={c.alpha} dropout={c.dropout:g} on {c.target_modules or 'query, value'}; adapters + head "
                 f"trainable"),
        "baseline": "cross-entropy, all weights fine-tuned (no teacher signal)",
    }


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


def _load_extra_tests(cfg: StudyConfig) -> dict:
    """Every `data.extra_tests` file, read and checked before anything is trained or written."""
    extra = {}
    for name, path in cfg.data.extra_tests.items():
        if not Path(path).is_file():
            raise UserError(f"data.extra_tests.{name} = {path!r}: file not found; fix the path or remove the entry")
        try:
            extra[name] = load_table(path, cfg.data)
        except UserError as e:
            raise UserError(f"data.extra_tests.{name}: {e}") from None
    return extra


def _run_study(cfg: StudyConfig, out: Path, force: bool, quiet: bool, held: list) -> Path:
    resolved = to_dict(cfg)
    splits = load_splits(cfg.data, cfg.seed)          # data errors surface before any file is written
    config_yaml = to_yaml(cfg)                        # as given (label_names may be null: inferred)
    cfg = _with_label_names(cfg, splits.info["label_names"])
    extra = _load_extra_tests(cfg)                    # so do extra test sets'
    source = bundles.resolve(cfg.teacher.source, cfg.teacher.allow_pickle)  # so do tampered bundles, pickles
    tokenizer, teacher_config = _load_source(cfg.teacher.source, source)
    _check_models(cfg, teacher_config)
    check_disk(out, source)
    # Data-parallel (accelerate launch / torchrun): every process trains; the main process alone
    # writes files, and the others wait at each stage's end.
    state = PartialState(cpu=not torch.cuda.is_available())  # cpu=True: gloo across CPU processes
    _prepare_output(out, resolved, force, write=False)  # every process checks before any writes
    state.wait_for_everyone()
    held.append(_take_lock(out, state))
    if state.is_main_process:
        _prepare_output(out, resolved, force)
        write_text(out / "config.yaml", config_yaml)
    state.wait_for_everyone()
    run = Run(out)
    log.info("data: %s", splits.info["rows"])

    t0 = time.perf_counter()
    enc = {name: encode(getattr(splits, name), tokenizer, cfg.data.max_length)
           for name in ("train", "validation", "test")}
    seeds = [cfg.seed] + [x for x in cfg.seeds if x != cfg.seed]
    seed_records: dict[int, dict[str, dict]] = {}
    for seed in seeds:
        # The validation carve stays the primary seed's; each seed re-runs every trainable stage.
        suffix = "" if seed == cfg.seed else f".seed{seed}"
        if suffix:
            log.info("seed %d: training every stage again", seed)
        env = StageEnv(dataclasses.replace(cfg, seed=seed), tokenizer, enc["train"], enc["validation"], out, quiet)
        seed_records[seed] = _train_models(run, env, source, teacher_config, resolved, suffix)
    records = seed_records[cfg.seed]
    if not state.is_main_process:
        state.wait_for_everyone()  # the main process evaluates and reports
        return out
    shutil.rmtree(out / "checkpoints", ignore_errors=True)

    # ---- evaluation: every saved model, reloaded from disk, on the test split once (and on the
    # validation split, for calibration and a threshold chosen there, and on any extra test sets)
    extra_enc = {name: encode(split, tokenizer, cfg.data.max_length) for name, split in extra.items()}
    evaluations = {}
    for name, rec in records.items():
        ev = _evaluate(run, name, rec, enc, tokenizer)
        model = None  # loaded at most once, only if an extra set still needs this model
        for set_name in extra:
            path = Path(cfg.data.extra_tests[set_name])
            fp_extra = fingerprint(rec["fingerprint"], str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns)
            done = run.done(name, fp_extra, f".extra-{set_name}")
            if done is None:
                log.info("evaluating %s on extra test set %s", name, set_name)
                model = model or _load(run.model_dir(name))
                probs, _ = predict_proba(model, extra_enc[set_name], tokenizer)
                done = run.finish(name, fp_extra, pack_probabilities(probs), f".extra-{set_name}")
            ev.setdefault("extra", {})[set_name] = unpack_probabilities(done)
        evaluations[name] = ev

    from . import analysis  # scipy and the statistics are needed only here

    models = [_model_entry(name, rec, evaluations[name], run) for name, rec in records.items()]
    analysis.add_to_models(models, evaluations, splits, extra, cfg)
    if len(seeds) > 1:
        per_seed = {seed: {name: _evaluate(run, name + f".seed{seed}", rec, enc, tokenizer)
                           for name, rec in seed_records[seed].items()} for seed in seeds[1:]}
        per_seed[cfg.seed] = evaluations
        analysis.add_seeds(models, seeds, seed_records, per_seed, splits)
    results = {
        "name": cfg.name,
        "dataset": splits.info,
        "models": models,
        "best_student": _best_student(models, cfg.selection_metric),
        "selection_metric": cfg.selection_metric,
        "significance": analysis.significance(models, evaluations, splits.test.labels),
        "audit": analysis.run_audit(splits, cfg, tokenizer),
        "wall_seconds_this_invocation": round(time.perf_counter() - t0, 1),
        "versions": _versions(),
    }
    from . import check  # behavioural suites (config check.suites): checks.json, read by the report

    check.for_study(out, cfg, [m["name"] for m in models], splits.validation.texts)
    from .report import write_report  # matplotlib is imported only when a report is written

    write_report(out, results, cfg)
    write_json(out / "results.json", results)  # last: its presence marks the run finished
    state.wait_for_everyone()
    return out


def _train_models(run: Run, env: StageEnv, source: str, teacher_config, resolved: dict, suffix: str) -> dict[str, dict]:
    """Train (or skip, when finished) every stage for `env.cfg.seed`; stage keys are name + `suffix`.
    Returns each model's stage record, keyed by model name."""
    cfg, tokenizer = env.cfg, env.tokenizer
    obj = objectives(cfg)
    depth = teacher_config.num_hidden_layers
    records: dict[str, dict] = {}
    # what the trained models depend on (not evaluation-only keys such as extra_tests)
    data_fp = {k: v for k, v in resolved["data"].items()
               if k not in EVALUATION_ONLY_DATA_KEYS and NEW_KEY_DEFAULTS.get(k, object()) != v}
    teacher_fp = {k: v for k, v in resolved["teacher"].items() if k != "allow_pickle"}  # a permission, not a setting
    fp_teacher = fingerprint(data_fp, cfg.seed, cfg.selection_metric, teacher_fp, cfg.class_weights)
    trained: dict[str, object] = {}

    def save_model(key):
        return lambda model, stats: _save(model, tokenizer, run.model_dir(key))

    # ---- teacher
    def train_teacher():
        log.info("stage teacher%s: fine-tuning %s", suffix, cfg.teacher.source)
        model, stats = teacher_stage.train(env, source, fp_teacher, "teacher" + suffix)
        trained["teacher"] = model
        return model, stats

    records["teacher"] = _run_stage(
        run, env, "teacher" + suffix, fp_teacher, train_teacher, save_model("teacher" + suffix),
        lambda model, stats: {"objective": obj["teacher"], "teacher_layers": list(range(1, depth + 1)), "train": stats})

    def get_teacher():
        if "teacher" not in trained:
            trained["teacher"] = _load(run.model_dir("teacher" + suffix))
        return trained["teacher"]

    # ---- distilled students (teacher outputs computed once, shared by all of them)
    cache = {}

    def teacher_cache():
        if not cache:
            log.info("caching teacher outputs for %d training examples", len(env.train))
            c0 = time.perf_counter()
            cache.update(distill_stage.teacher_outputs(get_teacher(), env.train, tokenizer,
                                                       with_hidden=cfg.distill.w_cos > 0,
                                                       with_layers=cfg.distill.w_layer > 0))
            log.info("teacher outputs cached in %.1fs", time.perf_counter() - c0)
        return cache

    distill_common = {k: v for k, v in resolved["distill"].items() if k != "students"}
    for name, layers in cfg.distill.students.items():
        chosen = parse_layers(layers, depth)
        fp = fingerprint(fp_teacher, distill_common, layers)

        def train_student(key=name + suffix, chosen=chosen, fp=fp):
            log.info("stage %s: distilling teacher layers %s", key, chosen)
            return distill_stage.train(env, key, get_teacher(), chosen, teacher_cache(), fp)

        records[name] = _run_stage(
            run, env, name + suffix, fp, train_student, save_model(name + suffix),
            lambda model, stats, chosen=chosen: {"objective": obj["distill"], "teacher_layers": chosen, "train": stats})

    # ---- LoRA student
    if cfg.lora.enabled:
        # the distill objective reads distill.*'s weights and temperature
        fp = fingerprint(fp_teacher, resolved["lora"], distill_common if cfg.lora.objective == "distill" else None)

        def train_lora():
            log.info("stage lora%s: LoRA on teacher layers %s", suffix, parse_layers(cfg.lora.layers, depth))
            return lora_stage.train(env, get_teacher(), fp, "lora" + suffix,
                                    teacher_cache() if cfg.lora.objective == "distill" else None)

        records["lora"] = _run_stage(
            run, env, "lora" + suffix, fp, train_lora,
            lambda model, stats: write_dir(run.model_dir("lora" + suffix),
                                           lambda tmp: (lora_stage.save(env, model, stats, tmp), integrity.record(tmp))),
            lambda model, stats: {"objective": obj["lora"], "teacher_layers": stats["teacher_layers"],
                                  "params_trainable": stats["params_trainable"], "train": stats})
    cache.clear()

    # ---- baseline student
    if cfg.baseline.enabled:
        fp = fingerprint(fp_teacher, resolved["baseline"])
        chosen = parse_layers(cfg.baseline.layers, depth)

        def train_baseline():
            log.info("stage baseline%s: cross-entropy on teacher layers %s", suffix, chosen)
            return baseline_stage.train(env, get_teacher(), fp, "baseline" + suffix)

        records["baseline"] = _run_stage(
            run, env, "baseline" + suffix, fp, train_baseline, save_model("baseline" + suffix),
            lambda model, stats: {"objective": obj["baseline"], "teacher_layers": chosen, "train": stats})
    return records


def _run_stage(run: Run, env: StageEnv, name: str, fp: str, train, save, describe) -> dict:
    """Skip a stage finished with fingerprint `fp`; otherwise train it (on every process, when
    data-parallel), then save and mark it finished on the main process only."""
    rec = run.done(name, fp)
    if rec is not None:
        log.info("stage %s: finished earlier, skipped", name)
        return rec
    model, stats = train()
    state = PartialState()
    if state.is_main_process:
        save(model, stats)
        run.finish(name, fp, describe(model, stats))
        shutil.rmtree(env.work_dir(name), ignore_errors=True)
    state.wait_for_everyone()
    return read_json(run.marker(name))


def _evaluate(run: Run, key: str, rec: dict, enc: dict, tokenizer) -> dict:
    """Test and validation probabilities of the saved model `key` (reloaded from disk), computed once
    per trained model and kept in stages/<key>.test.json."""
    ev = run.done(key, rec["fingerprint"], ".test")
    if ev is not None and has_probabilities(ev, "validation_"):
        return ev
    log.info("evaluating %s on the test split", key)
    model = _load(run.model_dir(key))
    probs, throughput = predict_proba(model, enc["test"], tokenizer)
    val_probs, _ = predict_proba(model, enc["validation"], tokenizer)
    total, trainable = count_params(model)
    return run.finish(key, rec["fingerprint"], {
        **pack_probabilities(probs),
        **pack_probabilities(val_probs, "validation_"),
        "params_total": total,
        "params_trainable": rec.get("params_trainable", trainable),
        "num_layers": model.config.num_hidden_layers,
        "inference": {"examples_per_s": round(throughput, 1), "batch_size": 128,
                      "device": str(_device()), "threads": torch.get_num_threads()},
    }, ".test")


def _model_entry(name: str, rec: dict, ev: dict, run: Run) -> dict:
    tr = rec["train"]
    return {
        "name": name,
        "num_layers": ev["num_layers"],
        "teacher_layers": rec["teacher_layers"],
        "objective": rec["objective"],
        "params_total": ev["params_total"],
        "params_trainable": ev["params_trainable"],
        "train": {"loss": tr["loss"], "seconds": tr["seconds"], "steps": tr["steps"],
                  "epoch_losses": tr.get("epoch_losses"), "best_checkpoint": tr.get("best_checkpoint"),
                  "precision": tr.get("precision", "fp32")},
        "validation": {k: tr["validation"][k] for k in ("accuracy", "balanced_accuracy", "f1_macro")
                       if k in tr["validation"]},
        "test": {},  # filled by analysis.add_to_models from the stored test probabilities
        "inference": ev["inference"],
        "size_bytes": size_on_disk(run.model_dir(name)),
        "adapter_size_bytes": size_on_disk(run.model_dir(name) / "adapter", ()) if name == "lora" else None,
        "merge_max_abs_diff": tr.get("merge_max_abs_diff"),
        "path": f"models/{name}",
    }


def _best_student(models: list[dict], metric: str) -> str | None:
    """Chosen on validation, never on test."""
    students = [m for m in models if m["name"] != "teacher"]
    return max(students, key=lambda m: m["validation"][metric])["name"] if students else None


def _versions() -> dict:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
