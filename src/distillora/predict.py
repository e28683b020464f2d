"""Predictions from a finished run directory (used by `distillora predict` and the web app)."""

from __future__ import annotations

import unicodedata
from pathlib import Path

from . import inference
from .errors import UserError
from .fileio import read_json


def finished_run(run_dir: str | Path) -> dict:
    run = Path(run_dir)
    if not (run / "results.json").is_file():
        raise UserError(f"{run}: not a finished run (no results.json); finish it with `distillora run --output {run}`")
    return read_json(run / "results.json")


def max_length(run_dir: str | Path) -> int:
    """The token limit the run trained and evaluated with (config.yaml `data.max_length`)."""
    import yaml

    cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8")) or {}
    return int(cfg.get("data", {}).get("max_length", 128))


def model_entries(run_dir: str | Path, results: dict | None = None) -> list[dict]:
    """The servable models of a finished run: the study's (results.json), then the students of
    `distillora sweep` (sweep.json) whose model directory exists. Each has at least name, path,
    num_layers, teacher_layers, objective, params_total, params_trainable and test."""
    run = Path(run_dir)
    models = list((results or finished_run(run))["models"])
    sweep = run / "sweep.json"
    if sweep.is_file():
        names = {m["name"] for m in models}
        models += [s for s in read_json(sweep).get("students", [])
                   if s["name"] not in names and (run / s["path"] / "config.json").is_file()]
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
    return name, inference.load_served(run_dir, name, Path(run_dir) / entries[name]["path"])


def blank(text: str) -> bool:
    """True when `text` shows nothing: only whitespace, control characters (NUL) and invisible format
    characters (zero-width space U+200B, byte-order mark U+FEFF, joiners, direction marks)."""
    return all(c.isspace() or unicodedata.category(c) in ("Cc", "Cf", "Cs", "Cn", "Co", "Zs", "Zl", "Zp")
               for c in text)


def probabilities(model, tokenizer, texts: list[str], max_length: int = 128) -> list[list[float]]:
    """Class probabilities per text from a torch model (through its saved normaliser), the path every
    backend shares (`inference.Backend.probabilities`)."""
    return inference.TorchBackend(model, tokenizer).probabilities(texts, max_length)


def predict(backend: inference.Backend, texts: list[str], label_names: list[str], max_length: int = 128) -> list[dict]:
    probs = backend.probabilities(texts, max_length)
    return [{"text": t, "label": label_names[max(range(len(p)), key=p.__getitem__)],
             "probabilities": {n: round(x, 6) for n, x in zip(label_names, p)}} for t, p in zip(texts, probs)]
