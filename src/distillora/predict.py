"""Predictions from a finished run directory (used by `distillora predict` and the web app)."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import torch
from transformers import AutoTokenizer

from . import normalize
from .data import clip
from .errors import UserError
from .rundir import Results, RunDir


def finished_run(run_dir: str | Path) -> Results:
    """The run's results.json (see rundir.Results); UserError when the run is not finished."""
    return RunDir(run_dir).results()


def max_length(run_dir: str | Path) -> int:
    """The token limit the run trained and evaluated with (config.yaml `data.max_length`)."""
    import yaml

    cfg = yaml.safe_load(RunDir(run_dir).config.read_text(encoding="utf-8")) or {}
    return int(cfg.get("data", {}).get("max_length", 128))


def model_entries(run_dir: str | Path, results: dict | None = None) -> list[dict]:
    """The servable models of a finished run: the study's (results.json), then the students of
    `distillora sweep` (sweep.json) whose model directory exists. Each has at least name, path,
    num_layers, teacher_layers, objective, params_total, params_trainable and test."""
    run = RunDir(run_dir)
    models = list((results or finished_run(run_dir)).models)
    sweep = run.sweep_record()
    if sweep:
        names = {m["name"] for m in models}
        models += [s for s in sweep.get("students", [])
                   if s["name"] not in names and (run.model_dir(s["name"]) / "config.json").is_file()]
    return models


def load_model(run_dir: str | Path, name: str | None = None):
    """(name, model, tokenizer) for model `name` of a finished run (a sweep student too); default: the
    best student."""
    results = finished_run(run_dir)
    entries = {m["name"]: m for m in model_entries(run_dir, results)}
    known = list(entries)
    name = name or results.get("best_student") or known[0]
    if name not in known:
        raise UserError(f"--model {name!r} is not in this run; choose one of {', '.join(known)}")
    from .export import load_for_inference, served_method

    path = RunDir(run_dir).model_dir(name)
    model = load_for_inference(path, served_method(run_dir, name))  # the fastest export that passed, else fp32
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return name, model, tokenizer


def blank(text: str) -> bool:
    """True when `text` shows nothing: only whitespace, control characters (NUL) and invisible format
    characters (zero-width space U+200B, byte-order mark U+FEFF, joiners, direction marks)."""
    return all(c.isspace() or unicodedata.category(c) in ("Cc", "Cf", "Cs", "Cn", "Co", "Zs", "Zl", "Zp")
               for c in text)


@torch.inference_mode()
def probabilities(model, tokenizer, texts: list[str], max_length: int = 128) -> list[list[float]]:
    """Class probabilities per text: the one normalise-tokenise-forward path of `predict`, the web app,
    export's timings and the benchmarks. The normaliser is the one saved with the model; as in training
    (`data.encode`), texts are clipped before tokenising, and special-token strings a user types
    (`[SEP]`, `</s>`) stay literal text."""
    texts = normalize.of_model(model).many(texts)
    batch = tokenizer([clip(t, max_length) for t in texts], truncation=True, max_length=max_length, padding=True,
                      return_tensors="pt", split_special_tokens=True)
    if len(texts) == 1:
        # One sentence has no padding: an all-ones mask changes nothing but costs the model its mask
        # arithmetic (about 0.5 ms of a 9 ms bf16 student forward here).
        batch.pop("attention_mask", None)
    return torch.softmax(model(**batch).logits.float(), -1).tolist()


def predict(model, tokenizer, texts: list[str], label_names: list[str], max_length: int = 128) -> list[dict]:
    probs = probabilities(model, tokenizer, texts, max_length)
    return [{"text": t, "label": label_names[max(range(len(p)), key=p.__getitem__)],
             "probabilities": {n: round(x, 6) for n, x in zip(label_names, p)}} for t, p in zip(texts, probs)]
