"""Loads every model of a finished run once (eval mode) and answers predictions and word attributions.

All torch work of the app (loading and every forward pass) runs on one thread, `TorchThread`. Why:
PyTorch's OpenMP runtime (libgomp) keeps a worker pool per thread that calls into torch; once two
threads have pools, there are more OpenMP threads than cores and libgomp stops spinning between
parallel regions, so every one of the ~100 regions in a forward pays a wake-up. Measured here with the
bf16 student: 6.8 ms per sentence while one thread uses torch, 15.6 ms on either thread once a second
one has. One thread also keeps the fast tokenizers single-threaded (they raise "Already borrowed" when
shared) and does not oversubscribe the cores with parallel forwards."""

from __future__ import annotations

import queue
import re
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from .. import inference
from ..predict import finished_run, is_pair_task, max_length, model_entries
from ..rundir import RunDir


@dataclass
class _Job:
    fut: Future
    fn: object  # run_batch(texts) for a batch job, a plain callable otherwise
    key: object = None  # what may share a batch (predictor and model) for a batch job
    texts: list[str] | None = None


class TorchThread:
    """The one thread that runs torch. `call(fn, ...)` runs any function there and returns its result.
    `submit(key, texts, run_batch)` coalesces requests: the thread takes the first waiting request
    together with every request of the same key already queued behind it (up to `max_texts`), runs
    them as one batch and hands each caller its rows. It never waits for company: a lone request goes
    straight through, and under load the requests that queue during one forward pass form the next
    batch. Use `torch_thread()`, the process's one instance."""

    def __init__(self, max_texts: int = 64):
        self.max_texts = max_texts
        self.queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="distillora-torch", daemon=True)
        self._thread.start()

    def call(self, fn, *args, **kwargs):
        if threading.current_thread() is self._thread:  # already here: queueing would wait for ever
            return fn(*args, **kwargs)
        fut: Future = Future()
        self.queue.put(_Job(fut, lambda: fn(*args, **kwargs)))
        return fut.result()

    def submit(self, key, texts: list[str], run_batch) -> Future:
        if threading.current_thread() is self._thread:
            fut: Future = Future()
            fut.set_result(run_batch(texts))
            return fut
        fut = Future()
        self.queue.put(_Job(fut, run_batch, key, texts))
        return fut

    def _loop(self):
        waiting: deque[_Job] = deque()
        while True:
            jobs = []
            try:
                first = waiting.popleft() if waiting else self.queue.get()
                jobs = [first]
                if first.key is None:
                    first.fut.set_result(first.fn())
                    continue
                while True:  # everything queued so far, in order
                    try:
                        waiting.append(self.queue.get_nowait())
                    except queue.Empty:
                        break
                size, rest = len(first.texts), deque()
                for job in waiting:
                    if job.key == first.key and size + len(job.texts) <= self.max_texts:
                        jobs.append(job)
                        size += len(job.texts)
                    else:
                        rest.append(job)
                waiting = rest
                probs = first.fn([t for job in jobs for t in job.texts])
                i = 0
                for job in jobs:
                    job.fut.set_result(probs[i:i + len(job.texts)])
                    i += len(job.texts)
            except BaseException as e:  # hand any failure to the callers; the thread lives on
                for job in jobs:
                    if not job.fut.done():
                        job.fut.set_exception(e)
            finally:
                first = jobs = None  # hold no model or predictor between requests


_TORCH_THREAD: TorchThread | None = None
_TORCH_THREAD_LOCK = threading.Lock()


def torch_thread() -> TorchThread:
    """The process's one torch thread (several predictors, as in tests, share it)."""
    global _TORCH_THREAD
    with _TORCH_THREAD_LOCK:
        if _TORCH_THREAD is None:
            _TORCH_THREAD = TorchThread()
        return _TORCH_THREAD


@dataclass
class Loaded:
    name: str
    backend: inference.Backend  # the copy export chose (torch or onnxruntime), else fp32

    @property
    def method(self) -> str:  # fp32, or the export that passed (see distillora.export)
        return self.backend.method


class Predictor:
    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.results = finished_run(self.run_dir)
        self.label_names: list[str] = self.results["dataset"]["label_names"]
        self.best_student: str | None = self.results.get("best_student")
        self.max_length = max_length(self.run_dir)  # as the run trained and evaluated
        self.pair_task = is_pair_task(self.run_dir)  # its models read (text, text_pair)
        self.torch = torch_thread()
        self.models: dict[str, Loaded] = {}
        self.entries = model_entries(self.run_dir, self.results)  # the study's models, then sweep students
        for m in self.entries:
            path = RunDir(self.run_dir).model_dir(m["name"])
            self.models[m["name"]] = self.torch.call(
                lambda: Loaded(m["name"], inference.load_served(self.run_dir, m["name"], path)))

    @property
    def name(self) -> str:
        return self.results.get("name") or self.run_dir.name

    def info(self) -> list[dict]:
        out = []
        for m in self.entries:
            out.append({"name": m["name"], "num_layers": m["num_layers"], "teacher_layers": m["teacher_layers"],
                        "objective": m["objective"], "params_total": m["params_total"],
                        "params_trainable": m["params_trainable"], "served_as": self.models[m["name"]].method,
                        "best_student": m["name"] == self.best_student, "kind": m["kind"],
                        "test": {k: v for k, v in m["test"].items()}})
        return out

    def _forward(self, name: str, items: list) -> list[list[float]]:  # on the torch thread only
        """`items`: texts, or (text, text_pair) tuples for a pair task."""
        backend = self.models[name].backend
        if self.pair_task:
            return backend.probabilities([a for a, _ in items], self.max_length, [b for _, b in items])
        return backend.probabilities(items, self.max_length)

    def probabilities(self, name: str, texts: list[str], pairs: list[str] | None = None) -> tuple[list[list[float]], float]:
        """(per-text class probabilities, milliseconds from request to answer, queueing included).
        Requests of up to 64 texts are batched with concurrent ones; larger ones run alone. `pairs`: the
        second texts of a pair task, one per text."""
        start = time.perf_counter()
        items = texts if pairs is None else list(zip(texts, pairs))
        if len(items) <= self.torch.max_texts:
            probs = self.torch.submit((id(self), name), items, lambda batch: self._forward(name, batch)).result()
        else:
            probs = self.torch.call(self._forward, name, items)
        return probs, (time.perf_counter() - start) * 1000

    def verdict(self, p: list[float]) -> str:
        """The label with the highest probability (the first of equals)."""
        return self.label_names[max(range(len(p)), key=p.__getitem__)]

    def predict(self, texts: list[str], models: list[str], pairs: list[str] | None = None) -> list[dict]:
        per_model = {name: self.probabilities(name, texts, pairs) for name in models}
        out = []
        for i, text in enumerate(texts):
            results = []
            for name in models:
                probs, ms = per_model[name]
                p = probs[i]
                results.append({"model": name, "label": self.verdict(p),
                                "probabilities": dict(zip(self.label_names, p)),
                                "ms": round(ms / len(texts), 2)})
            rec = {"text": text} if pairs is None else {"text": text, "text_pair": pairs[i]}
            out.append({**rec, "results": results})
        return out

    def explain(self, text: str, name: str, label: str | None = None, pair: str | None = None) -> dict:
        """Word-level leave-one-out toward class `label` (default: the class the model predicts): a word's
        score is p(label | sentence) - p(label | sentence without it); positive scores pushed toward
        `label`. For a pair task the words are those of `text`, and `pair` stays whole. All variants go
        through the model in one batch."""
        words = re.findall(r"\S+", text)[:64]
        variants = [text] + [" ".join(words[:i] + words[i + 1:]) or " " for i in range(len(words))]
        probs, ms = self.probabilities(name, variants, None if pair is None else [pair] * len(variants))
        k = self.label_names.index(label) if label is not None else self.label_names.index(self.verdict(probs[0]))
        full = probs[0][k]
        return {"model": name, "method": "word-level leave-one-out (occlusion)", "label": self.label_names[k],
                "p_label": full, "chosen": label is not None,
                "words": [{"word": w, "score": round(full - probs[i + 1][k], 6)} for i, w in enumerate(words)],
                "ms": round(ms, 2)}
