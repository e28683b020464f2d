"""One module per stage. Each takes what the stage before it produced and returns the trained
model with its training statistics; `distillora.study` runs them in order and saves their output."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import StudyConfig
from ..data import Encoded


@dataclass
class StageEnv:
    """What every stage needs: the run's config, its tokenizer and tokenised splits, where to work."""

    cfg: StudyConfig
    tokenizer: object
    train: Encoded
    validation: Encoded
    run_dir: Path
    quiet: bool = False

    def work_dir(self, stage: str) -> Path:
        return self.run_dir / "checkpoints" / stage

    def log_path(self, stage: str) -> Path:
        return self.run_dir / "logs" / f"{stage}.jsonl"
