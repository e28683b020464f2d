"""One run directory: every path in it, and the typed records of its files, each read and written here.

  config.yaml              resolved configuration
  stages/<name>.json       a finished stage: fingerprint, kind, objective, training statistics
  stages/<name>.test.json  its evaluation (`Evaluation`: test and validation probabilities, N columns)
  stages/<name>.extra-<set>.json  its probabilities on an extra test set or a development set
  .lock                    held by the one process writing here (see runlock)
  models/<name>/           save_pretrained output (lora: merged, adapter in models/lora/adapter),
                           with weights.sha256.json (see integrity)
  checkpoints/<name>/      Trainer checkpoints while a stage runs (removed when it finishes)
  logs/<name>.jsonl        training logs
  checks.json              behavioural checks (distillora.check)
  exports.json             inference copies measured by `distillora export` (`Exports`)
  exports/<name>/<method>/ stored copies (onnx: model.onnx, tokenizer, distillora_onnx.json)
  sweep.json, sweep/       `distillora sweep`'s record and work files
  results.json             `Results`; written last, its presence marks the run finished
  report.md, report.html, plots/
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError
from .fileio import read_json, write_json

KINDS = ("teacher", "distilled", "lora", "baseline", "sweep")  # values of stages.Kind


class _Record:
    """Read access by key as well as by attribute, for readers written against the JSON dicts;
    unknown keys of a file are kept in `other` and written back."""

    def __getitem__(self, key: str):
        if key in self._fields():
            return getattr(self, key)
        return self.other[key]

    def get(self, key: str, default=None):
        try:
            value = self[key]
        except KeyError:
            return default
        return default if value is None else value

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    @classmethod
    def _fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "other"]

    @classmethod
    def from_dict(cls, d: dict):
        known = cls._fields()
        return cls(**{k: v for k, v in d.items() if k in known}, other={k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self._fields()}
        out = {k: v for k, v in out.items() if v is not None or k not in self._optional}
        return {**out, **self.other}

    _optional: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------- results.json

# Per-class keys of results.json before per-class figures were keyed by label name (issue 14): the
# figures of label 1 of a binary task.
LEGACY_PER_CLASS = {"precision_hate": "precision", "recall_hate": "recall", "f1_hate": "f1"}


def upgrade_metrics(test: dict, label_names: list[str]) -> dict:
    """A model's test figures from a results.json written before per-class figures were keyed by label
    name (`precision_hate`, `recall_hate`, `f1_hate`), in the current layout: those keys move under
    `per_class[label_names[1]]`. Current figures pass unchanged."""
    if "per_class" in test or not any(k in test for k in LEGACY_PER_CLASS):
        return test
    out = {k: v for k, v in test.items() if k not in LEGACY_PER_CLASS}
    out["per_class"] = {label_names[1]: {new: test[old] for old, new in LEGACY_PER_CLASS.items() if old in test}}
    return out


def _legacy_kind(d: dict) -> str:
    """The kind of a model entry written before kinds were recorded (distillora before issue 12): the
    stage names and objective sentences that version wrote. Only old files are read this way."""
    if d["name"] in ("teacher", "lora", "baseline"):
        return d["name"]
    if str(d.get("objective", "")).startswith("distillation"):
        return "distilled"
    raise UserError(f"results.json: model {d['name']!r} has no kind and is not one an earlier distillora wrote; "
                    f"redo the evaluation with `distillora run --output <run>` (finished stages are kept)")


@dataclass
class ModelRecord(_Record):
    """One model of results.json. Metric dicts (`test`, `validation`) are keyed by metric name; per-class
    figures belong in them keyed by label name."""

    name: str
    kind: str
    num_layers: int
    teacher_layers: list[int]
    objective: str
    params_total: int
    params_trainable: int
    train: dict
    validation: dict
    test: dict
    inference: dict
    size_bytes: int
    adapter_size_bytes: int | None = None
    merge_max_abs_diff: float | None = None
    path: str = ""
    calibration: dict | None = None
    threshold: dict | None = None
    per_category: dict | None = None
    extra_tests: dict | None = None
    dev_sets: dict | None = None  # data.dev_sets: name -> figures, as extra_tests
    seeds: list | None = None
    seed_summary: dict | None = None
    other: dict = field(default_factory=dict)

    _optional = ("calibration", "per_category", "extra_tests", "dev_sets", "seeds", "seed_summary")  # threshold: null for N > 2

    @classmethod
    def from_dict(cls, d: dict) -> "ModelRecord":
        if "kind" not in d or d["kind"] == "study":
            d = {**d, "kind": _legacy_kind(d)}
        if d["kind"] not in KINDS:
            raise UserError(f"results.json: model {d['name']!r} has kind {d['kind']!r}; known: {', '.join(KINDS)}")
        return super().from_dict(d)

    @property
    def is_student(self) -> bool:
        return self.kind != "teacher"


def selection_rule(results: dict) -> str:
    """How a run's best_student was chosen, in words, from its results.json as a dict: files written
    before the rule was recorded chose on the primary seed's validation figure."""
    return results.get("best_student_rule") or f"validation {results['selection_metric']}"


@dataclass
class Results(_Record):
    name: str
    dataset: dict
    models: list[ModelRecord]
    best_student: str | None
    selection_metric: str
    significance: list
    audit: dict
    wall_seconds_this_invocation: float
    versions: dict
    # how best_student was chosen, in words; absent in results.json written before it was recorded
    # (those chose on the primary seed's validation figure)
    best_student_rule: str | None = None
    # each student's figures for that choice (analysis.selection_scores); absent in older results.json
    best_student_scores: dict | None = None
    other: dict = field(default_factory=dict)

    _optional = ("best_student_rule", "best_student_scores")

    @classmethod
    def from_dict(cls, d: dict) -> "Results":
        r = super().from_dict(d)
        r.models = [m if isinstance(m, ModelRecord) else ModelRecord.from_dict(m) for m in r.models]
        names = r.dataset["label_names"]
        for m in r.models:  # results.json files written before per-class figures were keyed by label name
            m.test = upgrade_metrics(m.test, names)
            if m.extra_tests:
                m.extra_tests = {k: upgrade_metrics(v, names) for k, v in m.extra_tests.items()}
        return r

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["models"] = [m.to_dict() for m in self.models]
        return out

    def of_kind(self, *kinds: str) -> list[ModelRecord]:
        return [m for m in self.models if m.kind in kinds]

    def by_name(self) -> dict[str, ModelRecord]:
        return {m.name: m for m in self.models}


# -------------------------------------------------------------------------------------- exports.json

@dataclass
class ExportEntry(_Record):
    """One model's inference copies: fp32 accuracy, speed per method, each candidate's gate, the choice."""

    fingerprint: str | None = None
    fp32_accuracy: dict = field(default_factory=dict)  # entries of earlier layouts may lack the figures
    speed: dict = field(default_factory=dict)
    candidates: dict = field(default_factory=dict)
    serve: str = "fp32"
    reason: str = ""
    other: dict = field(default_factory=dict)


@dataclass
class Exports(_Record):
    methods: dict = field(default_factory=dict)
    max_accuracy_drop: float | None = None
    threads: int | None = None
    latency_sentences: int | None = None
    models: dict[str, ExportEntry] = field(default_factory=dict)
    other: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "Exports":
        d = {k: v for k, v in d.items() if k != "method"}  # the single-method layout of earlier versions
        e = super().from_dict(d)
        e.models = {n: v if isinstance(v, ExportEntry) else ExportEntry.from_dict(v) for n, v in e.models.items()}
        return e

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["models"] = {n: v.to_dict() for n, v in self.models.items()}
        return out


# ------------------------------------------------------------------------------ stages/<name>.test.json

def probability_columns(rec: dict, key: str = "probabilities") -> np.ndarray:
    """(n, C) class probabilities of a stored evaluation. Files written before issue 12 hold only the
    second class's probability under `<key minus 'probabilities'>probabilities_hate`; those are read as
    two columns."""
    if key in rec:
        return np.asarray(rec[key], dtype=float)
    p = np.asarray(rec[key.replace("probabilities", "probabilities_hate")], dtype=float)
    return np.stack([1 - p, p], axis=1)


def rounded(probs: np.ndarray) -> list[list[float]]:
    return [[round(float(x), 6) for x in row] for row in np.asarray(probs)]


@dataclass
class Evaluation:
    """A saved model's evaluation: test and validation probabilities (n, C), size and speed."""

    fingerprint: str
    probabilities: np.ndarray
    validation_probabilities: np.ndarray
    params_total: int
    params_trainable: int
    num_layers: int
    inference: dict
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # extra test set -> (n, C)

    @classmethod
    def from_dict(cls, d: dict) -> "Evaluation":
        return cls(d["fingerprint"], probability_columns(d), probability_columns(d, "validation_probabilities"),
                   d["params_total"], d["params_trainable"], d["num_layers"], d["inference"])

    def to_dict(self) -> dict:
        return {"fingerprint": self.fingerprint, "probabilities": rounded(self.probabilities),
                "validation_probabilities": rounded(self.validation_probabilities),
                "params_total": self.params_total, "params_trainable": self.params_trainable,
                "num_layers": self.num_layers, "inference": self.inference}


# ------------------------------------------------------------------------------------------- RunDir

class RunDir:
    """Every path of one run directory, and the reading and writing of its records."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # ---- paths
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def results_file(self) -> Path:
        return self.root / "results.json"

    @property
    def exports_file(self) -> Path:
        return self.root / "exports.json"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    def copy_dir(self, name: str, method: str) -> Path:
        """Where `distillora export` keeps model `name`'s stored (onnx) copy built by `method`."""
        return self.exports_dir / name / method

    @property
    def checks_file(self) -> Path:
        return self.root / "checks.json"

    @property
    def sweep_file(self) -> Path:
        return self.root / "sweep.json"

    @property
    def sweep_dir(self) -> Path:
        return self.root / "sweep"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def plots_dir(self) -> Path:
        return self.root / "plots"

    def plot(self, name: str) -> Path:
        return self.plots_dir / name

    @staticmethod
    def plot_ref(name: str) -> str:
        """How report.md refers to plot `name` (relative to the run)."""
        return f"plots/{name}"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    def work_dir(self, stage: str) -> Path:
        return self.checkpoints_dir / stage

    def log(self, stage: str) -> Path:
        return self.root / "logs" / f"{stage}.jsonl"

    @staticmethod
    def model_ref(name: str) -> str:
        """Model `name`'s directory relative to the run, as results.json records it."""
        return f"models/{name}"

    def model_dir(self, name: str) -> Path:
        return self.root / self.model_ref(name)

    def adapter_dir(self, name: str) -> Path:
        return self.model_dir(name) / "adapter"

    def marker(self, name: str, suffix: str = "") -> Path:
        return self.root / "stages" / f"{name}{suffix}.json"

    # ---- stage records
    def done(self, name: str, fp: str, suffix: str = "") -> dict | None:
        """The record of stage `name` (+ `suffix`) if it finished with fingerprint `fp` and its model exists."""
        m = self.marker(name, suffix)
        if m.exists() and (self.model_dir(name) / "config.json").exists():
            rec = read_json(m)
            if rec.get("fingerprint") == fp:
                return rec
        return None

    def finish(self, name: str, fp: str, record: dict, suffix: str = "") -> dict:
        rec = {"fingerprint": fp, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **record}
        write_json(self.marker(name, suffix), rec)
        return rec

    def stage_record(self, name: str) -> dict | None:
        f = self.marker(name)
        return read_json(f) if f.exists() else None

    def stage_fingerprint(self, name: str) -> str | None:
        rec = self.stage_record(name)
        return rec.get("fingerprint") if rec else None

    def evaluation(self, key: str, fp: str) -> Evaluation | None:
        """The stored evaluation of model `key` if made with fingerprint `fp` (and validation included)."""
        rec = self.done(key, fp, ".test")
        if rec is None or not ({"validation_probabilities", "validation_probabilities_hate"} & set(rec)):
            return None
        return Evaluation.from_dict(rec)

    def write_evaluation(self, key: str, ev: Evaluation) -> Evaluation:
        self.finish(key, ev.fingerprint, {k: v for k, v in ev.to_dict().items() if k != "fingerprint"}, ".test")
        return ev

    def extra_probabilities(self, key: str, set_name: str, fp: str) -> np.ndarray | None:
        rec = self.done(key, fp, f".extra-{set_name}")
        return None if rec is None else probability_columns(rec)

    def write_extra_probabilities(self, key: str, set_name: str, fp: str, probs: np.ndarray) -> np.ndarray:
        self.finish(key, fp, {"probabilities": rounded(probs)}, f".extra-{set_name}")
        return np.asarray(probs, dtype=float)

    # ---- results.json
    def finished(self) -> bool:
        return self.results_file.is_file()

    def results(self) -> Results:
        """The finished run's results; UserError when the run is not finished or the file unreadable."""
        if not self.finished():
            raise UserError(f"{self.root}: not a finished run (no results.json); finish it with "
                            f"`distillora run --output {self.root}`")
        try:
            return Results.from_dict(read_json(self.results_file))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{self.results_file}: not a results file this version reads ({type(e).__name__}: {e}); "
                            f"redo the evaluation with `distillora run --output {self.root}` (finished stages are "
                            f"kept)") from None

    def write_results(self, results: Results) -> None:
        write_json(self.results_file, results.to_dict())

    def discard_results(self) -> None:
        self.results_file.unlink(missing_ok=True)

    # ---- exports.json
    def exports(self) -> Exports:
        return Exports.from_dict(read_json(self.exports_file)) if self.exports_file.exists() else Exports()

    def write_exports(self, exports: Exports) -> None:
        write_json(self.exports_file, exports.to_dict())

    # ---- checks.json, sweep.json
    def checks(self) -> dict | None:
        return read_json(self.checks_file) if self.checks_file.is_file() else None

    def sweep_record(self) -> dict | None:
        return read_json(self.sweep_file) if self.sweep_file.is_file() else None


def as_record(value: Any):
    """A record's dict for JSON (records pass through `to_dict`, everything else as it is)."""
    return value.to_dict() if hasattr(value, "to_dict") else value
