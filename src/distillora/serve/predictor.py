"""Loads every model of a finished run once (eval mode) and answers predictions and word attributions.

Thread safety: torch inference on shared weights is safe, but a fast tokenizer object may raise
"Already borrowed" when two threads use it at once, so each model's tokenise+forward holds its lock."""

from __future__ import annotations

import queue
import re
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoTokenizer

from ..export import load_for_inference, served_method

from ..predict import finished_run, max_length, probabilities


class Batcher:
    """Coalesces concurrent requests for one model into one forward pass: a worker thread takes the
    first waiting request together with every request already queued behind it (up to `max_texts`),
    runs them as one batch and hands each caller its rows. It never waits for company: a lone request
    goes straight through, and under load the requests that arrive during one forward pass form the
    next batch. One batched pass costs far less than many single ones, and the cores are not
    oversubscribed by parallel forwards."""

    def __init__(self, run_batch, max_texts: int = 64):
        self.run_batch, self.max_texts = run_batch, max_texts
        self.queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._loop, daemon=True).start()

    def submit(self, texts: list[str]) -> Future:
        fut: Future = Future()
        self.queue.put((texts, fut))
        return fut

    def _loop(self):
        while True:
            jobs = [self.queue.get()]
            size = len(jobs[0][0])
            while size < self.max_texts:
                try:
                    job = self.queue.get_nowait()
                except queue.Empty:
                    break
                jobs.append(job)
                size += len(job[0])
            try:
                probs = self.run_batch([t for texts, _ in jobs for t in texts])
            except Exception as e:  # hand the failure to every caller of this batch
                for _, fut in jobs:
                    fut.set_exception(e)
                continue
            i = 0
            for texts, fut in jobs:
                fut.set_result(probs[i:i + len(texts)])
                i += len(texts)


@dataclass
class Loaded:
    name: str
    model: object
    tokenizer: object
    lock: threading.Lock
    method: str  # fp32, or the export that passed (see distillora.export)
    batcher: Batcher | None = field(default=None)


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
            loaded = Loaded(m["name"], load_for_inference(path, method), AutoTokenizer.from_pretrained(str(path)),
                            threading.Lock(), method)
            loaded.batcher = Batcher(lambda texts, name=m["name"]: self._forward(name, texts))
            self.models[m["name"]] = loaded

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

    def _forward(self, name: str, texts: list[str]) -> list[list[float]]:
        m = self.models[name]
        with m.lock:
            return probabilities(m.model, m.tokenizer, texts, self.max_length)

    def probabilities(self, name: str, texts: list[str]) -> tuple[list[list[float]], float]:
        """(per-text class probabilities, milliseconds from request to answer, queueing included).
        Requests of up to 64 texts go through the model's batcher; larger ones run directly."""
        start = time.perf_counter()
        m = self.models[name]
        if len(texts) <= 64 and m.batcher is not None:
            probs = m.batcher.submit(texts).result()
        else:
            probs = self._forward(name, texts)
        return probs, (time.perf_counter() - start) * 1000

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
