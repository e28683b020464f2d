"""Stage 3: the baseline student: the same layer selection, all weights fine-tuned with
cross-entropy only (no teacher signal): the seed's "standard fine-tuned student"."""

from __future__ import annotations

from transformers import set_seed

from ..students import build_student
from . import StageEnv


def train(env: StageEnv, teacher, fingerprint: str, key: str = "baseline"):
    set_seed(env.cfg.seed)
    student = build_student(teacher, env.cfg.baseline.layers)
    return env.fit(student, env.cfg.baseline.train, key, fingerprint)
