"""Loads every model of a finished run once (eval mode) and answers predictions and word attributions.

Thread safety: torch inference on shared weights is safe, but a fast tokenizer object may raise
"Already borrowed" when two threads use it at once, so each model's tokenise+forward holds its lock."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from ..export import load_for_inference, served_method

from ..predict import finished_run, max_length


@dataclass
class Loaded:
    name: str
    model: object
    tokenizer: object
    lock: threading.Lock
    method: str  # fp32, or the export that passed (see distillora.export)


class Predictor:
    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.results = finished_run(self.run_dir)
        self.label_names: list[str] = self.results["dataset"]["label_names"]
        self.best_student: str | None = self.results.get("best_student")
        self.max_length = max_length(self.run_dir)  # as the run trained and evaluated
        self.models: dict[str, Loaded] = {}
        for m in self.results["models"]:
            path = self.run_dir / m["path"]
            method = served_method(self.run_dir, m["name"])
            self.models[m["name"]] = Loaded(m["name"], load_for_inference(path, method),
                                            AutoTokenizer.from_pretrained(str(path)), threading.Lock(), method)

    @property
    def name(self) -> str:
        return self.results.get("name") or self.run_dir.name

    def info(self) -> list[dict]:
        out = []
        for m in self.results["models"]:
            out.append({"name": m["name"], "num_layers": m["num_layers"], "teacher_layers": m["teacher_layers"],
                        "objective": m["objective"], "params_total": m["params_total"],
                        "params_trainable": m["params_trainable"], "served_as": self.models[m["name"]].method,
                        "best_student": m["name"] == self.best_student,
                        "test": {k: v for k, v in m["test"].items()}})
        return out

    @torch.inference_mode()
    def probabilities(self, name: str, texts: list[str]) -> tuple[list[list[float]], float]:
        """(per-text class probabilities, milliseconds for the whole batch)."""
        m = self.models[name]
        with m.lock:
            start = time.perf_counter()
            batch = m.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
            probs = torch.softmax(m.model(**batch).logits.float(), -1).tolist()
            ms = (time.perf_counter() - start) * 1000
        return probs, ms

    def predict(self, texts: list[str], models: list[str]) -> list[dict]:
        per_model = {name: self.probabilities(name, texts) for name in models}
        out = []
        for i, text in enumerate(texts):
            results = []
            for name in models:
                probs, ms = per_model[name]
                p = probs[i]
                results.append({"model": name, "label": self.label_names[int(p[1] > p[0])],
                                "probabilities": dict(zip(self.label_names, p)),
                                "ms": round(ms / len(texts), 2)})
            out.append({"text": text, "results": results})
        return out

    def explain(self, text: str, name: str) -> dict:
        """Word-level leave-one-out: a word's score is p(hate | sentence) - p(hate | sentence without it).
        Positive scores pushed toward `hate`. All variants go through the model in one batch."""
        words = re.findall(r"\S+", text)[:64]
        variants = [text] + [" ".join(words[:i] + words[i + 1:]) or " " for i in range(len(words))]
        probs, ms = self.probabilities(name, variants)
        full = probs[0][1]
        return {"model": name, "method": "word-level leave-one-out (occlusion)", "p_hate": full,
                "words": [{"word": w, "score": round(full - probs[i + 1][1], 6)} for i, w in enumerate(words)],
                "ms": round(ms, 2)}
