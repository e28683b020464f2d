"""Predictions from a finished run directory (used by `distillora predict` and the web app)."""

from __future__ import annotations

import unicodedata
from pathlib import Path

from . import inference
from .errors import UserError
from .rundir import Results, RunDir


def finished_run(run_dir: str | Path) -> Results:
    """The run's results.json (see rundir.Results, which reads earlier layouts too); UserError when the
    run is not finished or its results file unreadable."""
    return RunDir(run_dir).results()


def _data_setting(run_dir: str | Path, key: str, default):
    import yaml

    cfg = yaml.safe_load(RunDir(run_dir).config.read_text(encoding="utf-8")) or {}
    return cfg.get("data", {}).get(key, default)


def max_length(run_dir: str | Path) -> int:
    """The token limit the run trained and evaluated with (config.yaml `data.max_length`)."""
    return int(_data_setting(run_dir, "max_length", 128))


def is_pair_task(run_dir: str | Path) -> bool:
    """Whether the run's models read sentence pairs (config.yaml `data.text_pair_column` is set)."""
    return _data_setting(run_dir, "text_pair_column", None) is not None


def check_pairs(texts: list[str], pairs: list[str] | None, pair_task: bool, text_key: str = "text",
                pair_key: str = "text_pair") -> None:
    """Raise UserError unless `pairs` fits the run: one second text per text for a pair task, none for a
    single-text task. The message names the keys to send (`text_key`, `pair_key`)."""
    if pair_task and pairs is None:
        raise UserError(f"this run classifies sentence pairs: send `{pair_key}` (the second text) with `{text_key}`")
    if not pair_task and pairs is not None:
        raise UserError(f"this run classifies single texts: drop `{pair_key}`, send `{text_key}` alone")
    if pairs is not None and len(pairs) != len(texts):
        raise UserError(f"{len(texts)} `{text_key}` but {len(pairs)} `{pair_key}`: send one second text per text")


def model_entries(run_dir: str | Path, results: dict | None = None) -> list[dict]:
    """The servable models of a finished run: the study's (results.json), then the students of
    `distillora sweep` (sweep.json) whose model directory exists. Each has at least name, path,
    num_layers, teacher_layers, objective, params_total, params_trainable and test."""
    from .rundir import upgrade_metrics

    run = RunDir(run_dir)
    results = results or finished_run(run_dir)
    models = list(results.models)
    sweep = run.sweep_record()
    if sweep:
        names = {m["name"] for m in models}
        models += [{**s, "test": upgrade_metrics(s["test"], results["dataset"]["label_names"])}
                   for s in sweep.get("students", [])
                   if s["name"] not in names and (run.model_dir(s["name"]) / "config.json").is_file()]
    return models


def load_model(run_dir: str | Path, name: str | None = None) -> tuple[str, inference.Backend]:
    """(name, backend) for model `name` of a finished run (a sweep student too), as it is served: the
    copy `distillora export` chose, else fp32. Default: the best student."""
    results = finished_run(run_dir)
    entries = {m["name"]: m for m in model_entries(run_dir, results)}
    known = list(entries)
    name = name or results.get("best_student") or known[0]
    if name not in known:
        raise UserError(f"--model {name!r} is not in this run; choose one of {', '.join(known)}")
    return name, inference.load_served(run_dir, name, RunDir(run_dir).model_dir(name))


def blank(text: str) -> bool:
    """True when `text` shows nothing: only whitespace, control characters (NUL) and invisible format
    characters (zero-width space U+200B, byte-order mark U+FEFF, joiners, direction marks)."""
    return all(c.isspace() or unicodedata.category(c) in ("Cc", "Cf", "Cs", "Cn", "Co", "Zs", "Zl", "Zp")
               for c in text)


def probabilities(model, tokenizer, texts: list[str], max_length: int = 128,
                  pairs: list[str] | None = None) -> list[list[float]]:
    """Class probabilities per text (per (text, pairs[i]) for a sentence-pair model) from a torch model
    (through its saved normaliser), the path every backend shares (`inference.Backend.probabilities`)."""
    return inference.TorchBackend(model, tokenizer).probabilities(texts, max_length, pairs)


def predict(backend: inference.Backend, texts: list[str], label_names: list[str], max_length: int = 128,
            pairs: list[str] | None = None) -> list[dict]:
    """One record per text: the argmax label and every label's probability (with `text_pair` for a pair)."""
    probs = backend.probabilities(texts, max_length, pairs)
    out = []
    for i, (t, p) in enumerate(zip(texts, probs)):
        rec = {"text": t} if pairs is None else {"text": t, "text_pair": pairs[i]}
        rec.update({"label": label_names[max(range(len(p)), key=p.__getitem__)],
                    "probabilities": {n: round(x, 6) for n, x in zip(label_names, p)}})
        out.append(rec)
    return out
