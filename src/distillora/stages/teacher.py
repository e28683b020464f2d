"""Stage 1: fine-tune the teacher (all weights) with cross-entropy; keep its best epoch on validation."""

from __future__ import annotations

from transformers import AutoModelForSequenceClassification, set_seed

from . import StageEnv


def load_pretrained(source: str, label_names: list[str], allow_pickle: bool = False):
    """The pretrained encoder with a fresh 2-class head (the head is new by design: it is trained here).
    Only safetensors weights are read unless `allow_pickle`."""
    return AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=len(label_names), use_safetensors=None if allow_pickle else True,
        id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)},
    )


def train(env: StageEnv, source: str, fingerprint: str, key: str = "teacher"):
    set_seed(env.cfg.seed)
    model = load_pretrained(source, env.cfg.data.label_names, env.cfg.teacher.allow_pickle)
    return env.fit(model, env.cfg.teacher.train, key, fingerprint)
