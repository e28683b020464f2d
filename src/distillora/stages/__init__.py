"""One module per stage. Each takes what the stage before it produced and returns the trained
model with its training statistics; `distillora.study` runs them in order and saves their output."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import StudyConfig
from ..data import Encoded
from ..training import class_weight_vector, fit


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

    def fit(self, model, tc, key: str, fingerprint: str, train: Encoded | None = None, distill=None,
            layer_map: list[int] | None = None):
        """`training.fit` with what every stage shares: this run's splits, tokenizer, seed, selection
        metric, class weights and quietness, and the stage `key`'s work directory and log."""
        labels = [x["labels"] for x in self.train.items]
        weights = class_weight_vector(self.cfg.class_weights, labels, model.config.num_labels)
        return fit(model, self.train if train is None else train, self.validation, self.tokenizer, tc,
                   work_dir=self.work_dir(key), log_path=self.log_path(key), stage=key, seed=self.cfg.seed,
                   selection_metric=self.cfg.selection_metric, quiet=self.quiet, fingerprint=fingerprint,
                   distill=distill, class_weights=weights, layer_map=layer_map)
