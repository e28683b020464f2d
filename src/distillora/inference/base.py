"""The one interface every inference backend offers: class probabilities for raw texts (through the
model's own normaliser, clipped and tokenised as in training) and for an already encoded split (the
evaluation pass, in length-sorted batches)."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

import numpy as np

from ..data import Encoded, clip, length_sorted_batches
from ..normalize import Normalizer

# Rows per forward pass when a whole split or list is scored (evaluation, checks). On CPU smaller batches
# were faster: fp32, 1,000 test rows length-sorted, 2 threads, medians of 3 alternating rounds
# (2026-11-30, 2-core Intel Xeon): seed odd student (6-layer MPNet) 6.00 s at 32 against 8.39 s at 128
# (1.40x), seed teacher 12.17 s against 18.76 s (1.54x), quick teacher (MiniLM) 1.90 s against 2.68 s
# (1.41x); neither 16 nor 64 was faster than 32 on any of the three. Why was not measured; a likely
# cause is a batch's activations (rows x tokens x 3072 floats in MPNet's feed-forward) outgrowing the
# caches. The Trainer's per-epoch validation pass has its own size (`train.eval_batch_size`).
EVAL_BATCH = 32


def tokenize(tokenizer, normalizer: Normalizer, texts: list[str], max_length: int,
             pairs: list[str] | None = None) -> dict:
    """{input name: torch int64 tensor (B, L)} of `texts` (with `pairs[i]` as each one's second text, for
    a sentence-pair model) normalised, clipped and tokenised. As in training (`data.encode`),
    special-token strings a user types (`[SEP]`, `</s>`) stay literal text."""
    second = {} if pairs is None else {"text_pair": [clip(t, max_length) for t in normalizer.many(pairs)]}
    return dict(tokenizer([clip(t, max_length) for t in normalizer.many(texts)], **second, truncation=True,
                          max_length=max_length, padding=True, return_tensors="pt", split_special_tokens=True))


class Backend(ABC):
    """A loaded model copy that answers probabilities.

    Attributes: `method` (fp32, bf16, int8-dynamic, onnx-fp32, onnx-int8-dynamic, onnx-int8-static),
    `tokenizer` (the model's own), `normalizer` (the one saved with the model), `num_labels`."""

    method: str
    tokenizer: object
    normalizer: Normalizer
    num_labels: int

    @abstractmethod
    def _proba(self, batch: dict) -> np.ndarray:
        """Class probabilities (B, C) for a tokenised batch: {input name: torch int64 tensor (B, L)}."""

    def tokenize(self, texts: list[str], max_length: int, pairs: list[str] | None = None) -> dict:
        return tokenize(self.tokenizer, self.normalizer, texts, max_length, pairs)

    def probabilities(self, texts: list[str], max_length: int = 128, pairs: list[str] | None = None) -> list[list[float]]:
        """Class probabilities per text (per (text, pairs[i]) for a sentence-pair model): the one
        normalise-tokenise-forward path of `predict`, the web app, export's timings and the benchmarks."""
        return self._proba(self.tokenize(texts, max_length, pairs)).tolist()

    def predict_encoded(self, encoded: Encoded, batch_size: int = EVAL_BATCH) -> tuple[np.ndarray, float]:
        """Class probabilities (N, C) of an encoded split in its original order, and examples/s of the
        pass. Batches are formed from length-sorted examples so padding stays small."""
        out = np.zeros((len(encoded), self.num_labels), dtype=np.float64)
        start = time.perf_counter()
        for idx, batch in length_sorted_batches(encoded, self.tokenizer, batch_size, self.device):
            out[idx] = self._proba(batch)
        seconds = time.perf_counter() - start
        return out, len(encoded) / seconds if seconds > 0 else float("inf")

    device = "cpu"  # where `predict_encoded` puts its batches

