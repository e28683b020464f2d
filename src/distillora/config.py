"""The typed configuration of a study: defaults, YAML file, `key=value` overrides, validation, and
per-stage fingerprints for resuming.

Every field carries help text (as peft's configs do). All problems are collected and raised once,
as one `UserError` that names the key, the value and the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from .errors import UserError

Layers = Union[str, list[int]]  # "odd", "even" or an explicit 1-based list


def _f(default, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: json.loads(json.dumps(d)), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


# the reference task's quality bars (issue 10), the default of `quality_bars`
QUALITY_BARS = {"teacher_accuracy": 0.80, "student_ratio": 0.97, "lora_accuracy": 0.75, "lora_ratio": 0.95,
                "lora_max_trainable": 0.01}


@dataclass
class TrainConfig:
    epochs: float = _f(3.0, "Training epochs (the best epoch on validation is kept).")
    learning_rate: float = _f(5e-5, "Peak learning rate (AdamW, linear decay).")
    batch_size: int = _f(32, "Examples per device per step.")
    eval_batch_size: int = _f(128, "Examples per step of the Trainer's per-epoch validation pass (the "
                                   "final evaluation and the checks use inference.base.EVAL_BATCH).")
    weight_decay: float = _f(0.01, "AdamW weight decay.")
    warmup_ratio: float = _f(0.06, "Share of steps with linear warm-up.")
    early_stopping_patience: int = _f(0, "Stop after this many epochs without validation gain (0: never).")
    logging_steps: int = _f(10, "Steps between log lines (loss, learning rate, examples/s).")
    freeze_word_embeddings: bool = _f(False, "Keep the word-embedding matrix fixed (a student's is the fine-tuned "
                                             "teacher's): no gradient for its ~30k x hidden entries.")
    freeze_lower_layers: int = _f(0, "Keep the embeddings and the first N transformer layers at their loaded "
                                     "weights: backward stops at layer N, and what pre-training learned there stays.")
    sparse_word_embeddings: bool = _f(False, "Update only the word-embedding rows a batch uses (sparse gradients, "
                                             "SparseAdam, no weight decay on those rows) instead of AdamW on every row.")
    layer_lr_decay: float = _f(1.0, "Layer-wise learning-rate decay (Howard & Ruder 2018; Clark et al. 2020): the head "
                                     "(and pooler) learn at `learning_rate`, transformer layer i of L at "
                                     "learning_rate x decay^(L+1-i), the embeddings at x decay^(L+1). 1: one rate.")
    token_mask_prob: float = _f(0.0, "Probability per token of a training text that it is replaced by the tokenizer's "
                                     "mask token (a fresh draw per step; special tokens and padding never; "
                                     "validation and inference see the text as it is): word dropout, so the model "
                                     "cannot lean on single trigger tokens. A distilled student's cached teacher "
                                     "targets come from the unmasked text. 0: off.")
    precision: str = _f("auto", "fp32, bf16 (autocast, fp32 master weights), or auto: bf16 where the device runs "
                                "bf16 matrix products natively and measurably faster than fp32, else fp32.")
    extra_train_repeat: int = _f(1, "Passes over the `data.extra_train` rows per epoch: each of them appears this "
                                    "many times in the stage's training split, the source's own rows once (balanced "
                                    "class weights are counted on the split so repeated). 1: as read.")


@dataclass
class DataConfig:
    source: str = _f("thefrankhsu/hate_speech_twitter",
                     "Hub dataset id, or a local directory holding train.* and test.* (csv, jsonl, parquet).")
    train_file: str | None = _f(None, "Explicit train file (overrides `source`).")
    test_file: str | None = _f(None, "Explicit test file (overrides `source`).")
    text_column: str = _f("tweet", "Column holding the text (`text` is accepted when this one is absent).")
    text_pair_column: str | None = _f(None, "Column holding the second text of a sentence-pair task (e.g. the "
                                            "hypothesis of an NLI premise/hypothesis pair); the two are tokenised "
                                            "as a pair. null: single-text task.")
    label_column: str = _f("label", "Column holding the label (an integer index or one of `label_names`).")
    label_names: list[str] | None = _f(["not_hate", "hate"],
                                       "Names of labels 0..N-1 shown to users (N >= 2). null: inferred from the "
                                       "train labels: integer labels 0..max are named \"0\"..\"max\"; text "
                                       "labels are named by themselves, sorted (Python string order).")
    where: dict[str, Any] = _f({}, "Keep only rows whose column equals the value (or one of a list of values), "
                                   "compared as text, e.g. {label: 1}; applied to every file before validation.")
    category_column: str | None = _f("categories", "Optional column of per-row categories: per-category test "
                                                   "results (ignored when absent), and the groups that "
                                                   "group_weights balances (which then needs it in train).")
    validation_fraction: float = _f(0.1, "Share of train carved (stratified, seeded) as the validation split.")
    max_train_rows: int | None = _f(None, "Use a stratified sample of this many train rows (before the carve; "
                                          "data.extra_train rows come on top).")
    max_length: int = _f(128, "Tokens kept per text (longer texts are truncated; only the first "
                              "20 * max_length characters are tokenised).")
    normalize: Union[str, list[str]] = _f("basic", "Text normaliser saved with every model and applied to every "
                                                   "text (train, test, predict, the app): a preset (none, basic, "
                                                   "hate_speech_twitter) or a list of steps; see distillora.normalize.")
    extra_tests: dict[str, str] = _f({}, "Extra labelled test sets, name -> file (csv/jsonl/parquet with the same "
                                         "text and label columns); every model is evaluated on each.")
    dev_sets: dict[str, str] = _f({}, "Labelled development sets, name -> file (csv/jsonl/parquet with the same text "
                                      "and label columns), e.g. sentences of the kind the model will serve: every "
                                      "model is scored on each, and the best student is chosen on the mean of its "
                                      "validation figure and its figures on these (selection_metric, equal weight), "
                                      "never on test. Never used for training.")
    extra_train: list[str] = _f([], "Extra labelled training files (csv/jsonl/parquet with the same text and label "
                                     "columns), added to the training split after the validation carve: every "
                                     "model trains on them, and they are never in validation or test (e.g. "
                                     "authored counterfactual pairs, configs/augment/). Relative paths are read "
                                     "from the current directory; data.where applies to them too, "
                                     "data.max_train_rows does not.")
    sep: str = _f(",", "Field separator of csv files (one character, e.g. \"\\t\" for tab-separated files).")


@dataclass
class TeacherConfig:
    source: str = _f("mpnet-base", "Hub id, local Hugging Face directory, or offline bundle (minilm-l6, mpnet-base).")
    allow_pickle: bool = _f(False, "Load pickled (.bin) teacher weights, which can run code: only for a trusted source.")
    wise_alpha: float = _f(1.0, "WiSE-FT: keep alpha * fine-tuned + (1 - alpha) * pretrained weights (the new head "
                                "stays fine-tuned); 1 keeps the fine-tuned teacher as it is.")
    soup: int = _f(1, "Fine-tune this many teachers (training seeds seed, seed+1000, ...: data order and dropout; "
                      "the same pretrained weights, head initialisation and validation carve) and keep their "
                      "uniform weight average, a model soup (Wortsman et al., ICML 2022), as the one teacher. "
                      "N times the teacher's training. 1: one teacher.")
    restarts: int = _f(1, "Fine-tune this many teachers (training seeds as for soup: seed, seed+1000, ...) and keep "
                          "the one with the highest selection score: the mean of its validation selection_metric "
                          "and the same metric on each development set (data.dev_sets), the rule that chooses the "
                          "best student; never the test split (Dodge et al. 2020: fine-tuning restarts differ, and "
                          "the better ones are found on held-out data). N times the teacher's training. "
                          "1: one teacher. Not with soup > 1.")
    linear_probe_epochs: float = _f(0.0, "LP-FT (Kumar et al., ICLR 2022): first train only the weights the pretrained "
                                         "checkpoint lacks (the new head) for this many epochs on the frozen body, then "
                                         "fine-tune all weights from that head (teacher.train), so that fine-tuning "
                                         "starts from a head that fits the pretrained features and distorts them less. "
                                         "0: off (all weights from a random head).")
    linear_probe_learning_rate: float = _f(1e-3, "Peak learning rate of the linear probe (teacher.linear_probe_epochs); "
                                                 "its other settings are teacher.train's.")
    pooling: str = _f("first", "What the classifier head reads: `first`, the first token's last hidden state (transformers' "
                              "sequence-classification heads), or `mean`, the masked mean of the last hidden states, "
                              "the pooling sentence-transformers models are trained to be read through (distillora."
                              "pooling; saved in config.json, so every student and copy of the model reads the same). "
                              "`auto`: `mean` where the source is a sentence-transformers model whose "
                              "1_Pooling/config.json says mean pooling (both offline bundles), `first` otherwise.")
    debias: float = _f(0.0, "Weight lambda of a bag-of-words bias-only model in a product of experts while the teacher "
                            "trains (Clark et al., EMNLP 2019): its loss is the cross-entropy of logits + lambda * log "
                            "p_bias(y|x), p_bias predicted out of fold; the teacher is used alone afterwards, having "
                            "learned least from the rows that words alone decide (distillora.debias). 0: off.")
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3.0, learning_rate=3e-5))


@dataclass
class DistillConfig:
    students: dict[str, Layers] = _f({"odd": "odd", "even": "even"},
                                     "Student name -> teacher layers (1-based list, `odd` or `even`).")
    w_ce: float = _f(0.5, "Weight of cross-entropy on the hard labels.")
    w_kd: float = _f(0.5, "Weight of T^2 * KL(teacher || student) on logits softened by `temperature`.")
    w_cos: float = _f(1.0, "Weight of the cosine loss between final hidden states (non-padding tokens).")
    w_layer: float = _f(0.0, "Weight of the layer-to-layer term (Patient KD): each student layer's normalised "
                             "first-token state matched to the teacher layer it was copied from.")
    temperature: float = _f(2.0, "Softmax temperature T of the KL term.")
    weights: dict[str, float] = _f({}, "Weights of further loss terms registered in distillora.losses, by name "
                                       "(e.g. {mine: 0.1}); a name here overrides its w_<name> key.")
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3.0, learning_rate=5e-5))


@dataclass
class LoraConfig:
    enabled: bool = _f(True, "Train the LoRA student.")
    layers: Layers = _f("even", "Teacher layers the LoRA student is built from.")
    r: int = _f(8, "LoRA rank.")
    alpha: int = _f(16, "LoRA alpha (scaling = alpha / r).")
    dropout: float = _f(0.1, "Dropout on the LoRA path.")
    target_modules: Union[str, list[str], None] = _f(
        None, "Modules to adapt: a list of Linear names, `all-linear` (every Linear inside the transformer layers), "
              "or null for the attention query and value (BERT query,value; MPNet q,v; DistilBERT q_lin,v_lin).")
    objective: str = _f("ce", "ce: cross-entropy on the labels; distill: the distilled students' loss (the "
                              "teacher's soft targets, distill.* weights and temperature).")
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3.0, learning_rate=5e-4))


@dataclass
class BaselineConfig:
    enabled: bool = _f(True, "Train the cross-entropy-only baseline student.")
    layers: Layers = _f("even", "Teacher layers the baseline student is built from.")
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3.0, learning_rate=5e-5))


@dataclass
class CheckConfig:
    suites: list[str] = _f(["generic", "hate_speech"],
                           "Behavioural suites run on every model after training: built-in names (generic, "
                           "hate_speech) or YAML files (see distillora/suites). A suite whose labels differ from "
                           "data.label_names is skipped with a note; [] runs none.")


@dataclass
class StudyConfig:
    name: str = _f("study", "A name for the run (shown in the report and the web app).")
    seed: int = _f(42, "Seed for the validation carve, initialisation and data order.")
    seeds: list[int] = _f([], "Extra training seeds: every trainable stage runs again per seed (same validation "
                              "carve); results report per-seed figures, mean and std.")
    class_weights: Union[str, list[float], None] = _f(
        "balanced", "Cross-entropy class weights of every stage: balanced (n / (C * n_c) from the training "
                    "split), a list of one weight per label, or null for none. Default balanced: the deployment "
                    "prior is unknown, so no class is favoured for being frequent in train.")
    logit_adjustment: float = _f(
        0.0, "tau >= 0 of the logit-adjusted cross-entropy (Menon et al., ICLR 2021); 0: off, 1: the balanced error. "
             "Every stage's hard-label loss adds "
             "tau * log(prior) to the logits (the prior: the training split's label frequencies), so the "
             "model's own logits aim at the balanced error, as if every label were equally likely. Class "
             "weights lose their effect once a model fits its training data (Byrd & Lipton, ICML 2019); the "
             "margin this asks of a rare label stays. Use with class_weights: null, or the prior is corrected "
             "twice.")
    group_weights: Union[str, None] = _f(
        None, "Group-balanced cross-entropy weights (Idrissi et al., CLeaR 2022): balanced gives every group of "
              "a label (the values of data.category_column in train, e.g. the target group of a hate tweet) the "
              "same total weight within that label, on top of class_weights; null for none.")
    selection_metric: str = _f("f1_macro", "Validation metric that selects the best epoch: f1_macro or accuracy.")
    bootstrap_resamples: int = _f(1000, "Resamples of the test split for 95% confidence intervals.")
    quality_bars: Union[dict[str, float], None] = _f(
        dict(QUALITY_BARS), "The bars the report's analysis states as met or not: teacher_accuracy, student_ratio "
        "(of the teacher's accuracy), lora_accuracy, lora_ratio (of the baseline's), lora_max_trainable (share). "
        "The defaults are the reference task's (hate speech on the shifted test split); null: the figures "
        "without verdicts, for a task whose bars are not known.")
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    check: CheckConfig = field(default_factory=CheckConfig)


# ----------------------------------------------------------------------------- loading

def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        k, v = typing.get_args(tp)
        return isinstance(value, dict) and all(_type_ok(a, k) and _type_ok(b, v) for a, b in value.items())
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _type_name(tp: Any) -> str:
    """`tp` in words: what a user writes in YAML ("a number", "text or null", "a list of whole numbers")."""
    words = {str: "text", float: "a number", int: "a whole number", bool: "true or false", type(None): "null",
             Any: "any value"}
    if tp in words:
        return words[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        return f"a list (each item {_type_name(args[0])})"
    if origin is dict:
        return f"a mapping ({_type_name(args[0])} to {_type_name(args[1])})"
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _help_sentence(f) -> str:
    """The first sentence of a field's help text, for an error message."""
    text = f.metadata.get("help", "")
    return re.split(r"(?<=\.)\s+(?=[A-Z])", text)[0] if text else ""


def _build(obj, raw: dict, prefix: str, errors: list[str], where: str):
    """Set the fields of dataclass instance `obj` (holding its defaults) from `raw`, in place."""
    hints = typing.get_type_hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if not isinstance(raw, dict):
        errors.append(f"{where}: `{prefix.rstrip('.') or '<top>'}` must be a mapping, got {raw!r}")
        return obj
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            close = [k for k in fields if k.startswith(str(key)[:3])]
            hint = f" (did you mean {', '.join(prefix + c for c in close)}?)" if close else ""
            errors.append(f"{where}: unknown key `{dotted}`{hint}; known keys here: {', '.join(fields)}")
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            _build(getattr(obj, key), value, dotted + ".", errors, where)
        elif _type_ok(value, tp):
            setattr(obj, key, float(value) if tp is float else value)
        elif tp is float and isinstance(value, str) and _as_float(value) is not None:
            setattr(obj, key, _as_float(value))  # YAML 1.1 reads `1e-4` (no dot) as a string
        else:
            errors.append(f"{where}: `{dotted}` = {value!r} has the wrong type; expected {_type_name(tp)}. "
                          f"{_help_sentence(fields[key])}".rstrip())
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise UserError(f"command line: override {text!r} must look like key=value, e.g. teacher.train.epochs=2")
    key, value = text.split("=", 1)
    try:
        return key.strip().split("."), yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as e:
        raise UserError(f"command line: the value of {key.strip()} is not valid YAML ({getattr(e, 'problem', e)}): "
                        f"{value!r}; quote it or fix the brackets, e.g. distill.students='{{odd: [1, 3, 5]}}'") from None


def _merge(base: dict, keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        base = base.setdefault(k, {})
        if not isinstance(base, dict):
            raise UserError(f"command line: cannot set {'.'.join(keys)}: {k} is not a section")
    base[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> StudyConfig:
    """Defaults <- YAML file <- `key=value` overrides, validated once."""
    raw: dict = {}
    where = "defaults"
    if path is not None:
        p = Path(path)
        where = str(p)
        if not p.is_file():
            raise UserError(f"{p}: config file not found; pass an existing YAML file to --config (see configs/)")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise UserError(f"{p}:{at} is not valid YAML ({getattr(e, 'problem', e)}); fix the syntax there")
        except UnicodeDecodeError as e:
            raise UserError(f"{p}: not UTF-8 text (byte {e.start}); save the config as UTF-8")
        if not isinstance(raw, dict):
            raise UserError(f"{p}: the top level must be a mapping of keys, got {type(raw).__name__}")
    for o in overrides:
        keys, value = parse_override(o)
        _merge(raw, keys, value)
        where = f"{where} + overrides" if "overrides" not in where else where
    errors: list[str] = []
    cfg = StudyConfig()
    _build(cfg, raw, "", errors, where)
    if not errors:
        errors = validate(cfg)
    if errors:
        raise UserError("invalid configuration:\n  - " + "\n  - ".join(errors))
    return cfg


def validate(cfg: StudyConfig) -> list[str]:
    from .students import parse_layers  # late import: students imports torch

    errs = _non_finite(cfg)
    d = cfg.data
    for key, seed in [("seed", cfg.seed)] + [(f"seeds[{i}]", s) for i, s in enumerate(cfg.seeds)]:
        if not 0 <= seed < 2 ** 32:
            errs.append(f"{key} = {seed}: use a seed in 0..4294967295 (2**32 - 1)")
    if len(d.sep) != 1 or d.sep in ('"', "\n", "\r"):
        errs.append(f"data.sep = {d.sep!r}: use one character other than a quote or a newline, e.g. ',' or '\\t'")
    if d.label_names is not None and (len(d.label_names) < 2 or len(set(d.label_names)) != len(d.label_names)
                                      or not all(n.strip() == n and n for n in d.label_names)):
        errs.append(f"data.label_names = {d.label_names!r}: give two or more distinct, non-empty names without "
                    f"surrounding spaces, e.g. [not_hate, hate], or null to infer them from the train labels")
    if d.text_pair_column is not None and d.text_pair_column in (d.text_column, d.label_column):
        errs.append(f"data.text_pair_column = {d.text_pair_column!r}: must differ from data.text_column and "
                    f"data.label_column")
    for col, value in d.where.items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, (str, int, float, bool)) for v in values):
            errs.append(f"data.where.{col} = {value!r}: give a value or a non-empty list of values, e.g. {{label: 1}}")
    if not 0 < d.validation_fraction < 0.5:
        errs.append(f"data.validation_fraction = {d.validation_fraction}: use a share in (0, 0.5), e.g. 0.1")
    if d.max_train_rows is not None and d.max_train_rows < 20:
        errs.append(f"data.max_train_rows = {d.max_train_rows}: use at least 20 rows, or null for all")
    if not 8 <= d.max_length <= 512:
        errs.append(f"data.max_length = {d.max_length}: use 8..512 tokens")
    if (d.train_file is None) != (d.test_file is None):
        errs.append("data.train_file and data.test_file: give both or neither")
    if math.isfinite(cfg.teacher.debias) and cfg.teacher.debias < 0:
        errs.append(f"teacher.debias = {cfg.teacher.debias!r}: give 0 (off) or more (1: the plain product of experts)")
    if not 1 <= cfg.teacher.soup <= 16:
        errs.append(f"teacher.soup = {cfg.teacher.soup}: use 1 (one teacher) to 16 fine-tuned teachers to average")
    if not 1 <= cfg.teacher.restarts <= 16:
        errs.append(f"teacher.restarts = {cfg.teacher.restarts}: use 1 (one teacher) to 16 fine-tuned teachers to "
                    f"choose from")
    elif cfg.teacher.restarts > 1 and cfg.teacher.soup > 1:
        errs.append(f"teacher.restarts = {cfg.teacher.restarts} with teacher.soup = {cfg.teacher.soup}: choose one "
                    f"(a soup averages its members, restarts keep the best); set the other to 1")
    elif cfg.teacher.restarts > 1 and cfg.teacher.wise_alpha < 1:
        # the restarts are scored as fine-tuned; the interpolated teacher would be another model than the
        # one chosen (not measured together)
        errs.append(f"teacher.restarts = {cfg.teacher.restarts} with teacher.wise_alpha = {cfg.teacher.wise_alpha}: "
                    f"choose one; set teacher.wise_alpha to 1 or teacher.restarts to 1")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        errs.append(f"seeds = {cfg.seeds}: each seed may appear once")
    if cfg.bootstrap_resamples < 100:
        errs.append(f"bootstrap_resamples = {cfg.bootstrap_resamples}: use at least 100 (default 1000)")
    for key, sets in (("extra_tests", d.extra_tests), ("dev_sets", d.dev_sets)):
        for name in sets:
            if name in ("train", "validation", "test"):
                errs.append(f"data.{key}.{name}: that name is taken by a split; pick another")
            elif name == "score":  # the selection row's mean (evaluate.selection_row) goes by that name
                errs.append(f"data.{key}.{name}: that name is taken by the selection score; pick another")
            elif not re.fullmatch(r"[A-Za-z0-9_-]+", str(name)):  # it names files under the run's stages/
                errs.append(f"data.{key}: the name {name!r} may hold only letters, digits, _ and -")
    for name in sorted(set(d.extra_tests) & set(d.dev_sets)):
        errs.append(f"data.dev_sets.{name}: data.extra_tests has a set of that name too; give each set its own name")
    for key in sorted(set(cfg.quality_bars or {}) - set(QUALITY_BARS)):
        errs.append(f"quality_bars.{key}: not a bar the report knows; use {', '.join(QUALITY_BARS)} (or null for none)")
    if cfg.selection_metric not in ("f1_macro", "accuracy", "balanced_accuracy"):
        errs.append(f"selection_metric = {cfg.selection_metric!r}: use f1_macro, balanced_accuracy or accuracy")
    try:
        from .normalize import resolve

        resolve(d.normalize)
    except ValueError as e:
        errs.append(f"data.normalize = {d.normalize!r}: {e}")
    cw = cfg.class_weights
    if isinstance(cw, str) and cw != "balanced":
        errs.append(f"class_weights = {cw!r}: use balanced, a list of one weight per label, or null")
    if isinstance(cw, list) and d.label_names is None:
        errs.append(f"class_weights = {cw!r}: a list needs data.label_names given (it pairs one weight with each "
                    f"label); give data.label_names, or use balanced")
    elif isinstance(cw, list) and (len(cw) != len(d.label_names) or not all(0 < w < float("inf") for w in cw)):
        errs.append(f"class_weights = {cw!r}: give {len(d.label_names)} positive finite weights, one per label "
                    f"({', '.join(d.label_names)})")
    if math.isfinite(cfg.logit_adjustment) and cfg.logit_adjustment < 0:  # a wrong type or NaN: their own messages
        errs.append(f"logit_adjustment = {cfg.logit_adjustment!r}: give 0 (off) or more (1: the balanced error)")
    extra = [str(x) for x in d.extra_train]
    if len(set(extra)) < len(extra):
        errs.append(f"data.extra_train = {extra}: a file named twice would train twice on its rows; name each once")
    if cfg.group_weights is not None and cfg.group_weights != "balanced":
        errs.append(f"group_weights = {cfg.group_weights!r}: use balanced or null")
    if cfg.group_weights is not None and not d.category_column:
        errs.append(f"group_weights = {cfg.group_weights!r} needs data.category_column (the column that names "
                    f"each row's group); set it, or group_weights: null")
    if cfg.distill.temperature <= 0:
        errs.append(f"distill.temperature = {cfg.distill.temperature}: must be > 0 (try 2.0)")
    from .losses import TERMS, weights_of  # the registered loss terms

    for w in ("w_ce", "w_kd", "w_cos", "w_layer"):
        if getattr(cfg.distill, w) < 0:
            errs.append(f"distill.{w} = {getattr(cfg.distill, w)}: weights must be >= 0")
    for name, w in cfg.distill.weights.items():
        if name not in TERMS:
            errs.append(f"distill.weights.{name}: no such loss term; registered: {', '.join(TERMS)}")
        elif not 0 <= w < float("inf"):
            errs.append(f"distill.weights.{name} = {w}: weights must be finite and >= 0")
    if not weights_of(cfg.distill):
        errs.append("distill.w_ce, w_kd, w_cos, w_layer are all 0: at least one loss term needs a positive weight")
    names = set()
    for name, layers in cfg.distill.students.items():
        if name in ("teacher", "lora", "baseline") or not name.replace("_", "").replace("-", "").isalnum():
            errs.append(f"distill.students: name {name!r} is reserved or not a plain word; pick another")
        names.add(name)
        try:
            parse_layers(layers, None)
        except ValueError as e:
            errs.append(f"distill.students.{name} = {layers!r}: {e}")
    for sec in ("lora", "baseline"):
        try:
            parse_layers(getattr(cfg, sec).layers, None)
        except ValueError as e:
            errs.append(f"{sec}.layers = {getattr(cfg, sec).layers!r}: {e}")
    lp = cfg.teacher  # a wrong type or NaN: their own messages
    if math.isfinite(lp.linear_probe_epochs) and lp.linear_probe_epochs < 0:
        errs.append(f"teacher.linear_probe_epochs = {lp.linear_probe_epochs!r}: give 0 (off) or a number of epochs, "
                    f"e.g. 1")
    if lp.pooling not in ("auto", "first", "mean"):
        errs.append(f"teacher.pooling = {lp.pooling!r}: use auto, first or mean")
    if math.isfinite(lp.linear_probe_learning_rate) and lp.linear_probe_learning_rate <= 0:
        errs.append(f"teacher.linear_probe_learning_rate = {lp.linear_probe_learning_rate!r}: give a rate > 0, "
                    f"e.g. 1e-3")
    if not 0 < cfg.teacher.wise_alpha <= 1:
        errs.append(f"teacher.wise_alpha = {cfg.teacher.wise_alpha}: use a value in (0, 1]; 1 turns WiSE-FT off")
    if cfg.lora.objective not in ("ce", "distill"):
        errs.append(f"lora.objective = {cfg.lora.objective!r}: use ce or distill")
    if isinstance(cfg.lora.target_modules, str) and cfg.lora.target_modules != "all-linear":
        errs.append(f"lora.target_modules = {cfg.lora.target_modules!r}: use all-linear, a list of names, or null")
    for i, suite in enumerate(cfg.check.suites):
        from .suites import BUILTIN_DIR, builtin_suites  # late import: numpy

        if not (BUILTIN_DIR / f"{suite}.yaml").is_file() and not Path(suite).is_file():
            errs.append(f"check.suites[{i}] = {suite!r}: not a built-in suite ({', '.join(builtin_suites())}) "
                        f"and no such file; fix the name or path, or remove it")
    if cfg.lora.r < 1:
        errs.append(f"lora.r = {cfg.lora.r}: must be >= 1 (default 8)")
    if not 0 <= cfg.lora.dropout < 1:
        errs.append(f"lora.dropout = {cfg.lora.dropout}: must be in [0, 1)")
    for sec, t in (("teacher", cfg.teacher.train), ("distill", cfg.distill.train),
                   ("lora", cfg.lora.train), ("baseline", cfg.baseline.train)):
        if t.epochs <= 0:
            errs.append(f"{sec}.train.epochs = {t.epochs}: must be > 0")
        if t.learning_rate <= 0:
            errs.append(f"{sec}.train.learning_rate = {t.learning_rate}: must be > 0")
        if t.batch_size < 1 or t.eval_batch_size < 1:
            errs.append(f"{sec}.train.batch_size/eval_batch_size must be >= 1")
        if t.logging_steps < 1:
            errs.append(f"{sec}.train.logging_steps = {t.logging_steps}: must be >= 1")
        if not 0 <= t.warmup_ratio < 1:
            errs.append(f"{sec}.train.warmup_ratio = {t.warmup_ratio}: use a share of steps in [0, 1), e.g. 0.06")
        if t.freeze_word_embeddings and t.sparse_word_embeddings:
            errs.append(f"{sec}.train: freeze_word_embeddings and sparse_word_embeddings are both true; a frozen "
                        f"matrix takes no update, sparse or dense: set one of them")
        if t.precision not in ("auto", "fp32", "bf16"):
            errs.append(f"{sec}.train.precision = {t.precision!r}: use auto, fp32 or bf16")
        if t.freeze_lower_layers < 0:
            errs.append(f"{sec}.train.freeze_lower_layers = {t.freeze_lower_layers}: must be >= 0")
        elif sec == "lora" and t.freeze_lower_layers:
            errs.append(f"lora.train.freeze_lower_layers = {t.freeze_lower_layers}: LoRA keeps every pretrained "
                        f"weight fixed already; set it to 0")
        if not 0 < t.layer_lr_decay <= 1:
            errs.append(f"{sec}.train.layer_lr_decay = {t.layer_lr_decay}: use a factor in (0, 1], e.g. 0.9 "
                        f"(1: every layer at learning_rate)")
        if not 0 <= t.token_mask_prob < 1:
            errs.append(f"{sec}.train.token_mask_prob = {t.token_mask_prob}: use a share in [0, 1), e.g. 0.15 (0: off)")
        if t.early_stopping_patience < 0:
            errs.append(f"{sec}.train.early_stopping_patience = {t.early_stopping_patience}: must be >= 0")
        if not isinstance(t.extra_train_repeat, int) or t.extra_train_repeat < 1:
            errs.append(f"{sec}.train.extra_train_repeat = {t.extra_train_repeat}: use a whole number >= 1 (1: each "
                        f"data.extra_train row once)")
        elif t.extra_train_repeat > 1 and not cfg.data.extra_train:
            errs.append(f"{sec}.train.extra_train_repeat = {t.extra_train_repeat} repeats the data.extra_train rows, "
                        f"and data.extra_train names no file: add one, or set it to 1")
    return errs


def _non_finite(obj, prefix: str = "") -> list[str]:
    """Every NaN or infinite float in the configuration (they pass `x > 0` style checks, as NaN
    compares false and inf is positive, and then fail or train on garbage much later)."""
    errs = []
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            errs += _non_finite(value, key + ".")
        elif isinstance(value, float) and not math.isfinite(value):
            errs.append(f"{key} = {value}: must be a finite number")
    return errs


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# keys added after runs existed: at these values they are left out of a section's fingerprint, so the
# finished stages of those runs stay finished
NEW_KEY_DEFAULTS = {"data": {"sep": ",", "text_pair_column": None, "where": {}, "extra_train": [], "dev_sets": {}}, "distill": {"weights": {}},
                    "teacher": {"soup": 1, "debias": 0.0, "restarts": 1,
                                "linear_probe_epochs": 0.0, "linear_probe_learning_rate": 1e-3,
                                "pooling": "first"}}


# keys added to every section's `train` settings after runs existed, at the value that leaves them out
NEW_TRAIN_KEY_DEFAULTS = {"sparse_word_embeddings": False, "freeze_lower_layers": 0, "layer_lr_decay": 1.0,
                          "token_mask_prob": 0.0, "extra_train_repeat": 1}


def stable_section(resolved: dict, section: str, drop: tuple[str, ...] = ()) -> dict:
    """`resolved[section]` for a fingerprint: without `drop` and without keys at their NEW_KEY_DEFAULTS
    (nor `train` keys at their NEW_TRAIN_KEY_DEFAULTS)."""
    new = NEW_KEY_DEFAULTS.get(section, {})
    out = {k: v for k, v in resolved[section].items() if k not in drop and (k not in new or new[k] != v)}
    if section == "data" and "normalize" in out:
        from .normalize import fingerprinted

        out["normalize"] = fingerprinted(out["normalize"])
    if isinstance(out.get("train"), dict):
        out["train"] = {k: v for k, v in out["train"].items() if NEW_TRAIN_KEY_DEFAULTS.get(k, object()) != v}
    return out


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts: what a stage's result depends on."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out
