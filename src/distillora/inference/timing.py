"""How fast a backend answers, measured the way it is used: batch-32 throughput over an encoded split
and single-sentence latency with normalising and tokenising included (as `predict` and the web app)."""

from __future__ import annotations

import time

import numpy as np

from ..data import Encoded
from .base import Backend


def cpu_name() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (else the platform's word for it, else "unknown"),
    printed beside every timing: a time measured on one CPU is not a figure for another."""
    import platform

    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def measure(backend: Backend, enc: dict[str, Encoded], texts: list[str], max_length: int) -> tuple[dict, dict]:
    """({split: probabilities (N, C)}, speed) for `enc` = {"validation": ..., "test": ...}: the test pass,
    after a warm-up, gives both the test probabilities and `examples_per_s_b32`; `p50_ms_b1` is the
    median over `texts`, one at a time, after ten warm-up sentences."""
    backend.predict_encoded(Encoded(enc["test"].items[:64]), 32)  # warm-up
    probs = {}
    probs["test"], thr = backend.predict_encoded(enc["test"], 32)
    probs["validation"] = backend.predict_encoded(enc["validation"], 32)[0]
    for t in texts[:10]:
        backend.probabilities([t], max_length)
    lat = []
    for t in texts:
        t0 = time.perf_counter()
        backend.probabilities([t], max_length)
        lat.append(time.perf_counter() - t0)
    return probs, {"examples_per_s_b32": round(thr, 1), "p50_ms_b1": round(1000 * float(np.median(lat)), 2)}
