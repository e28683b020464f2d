"""The stage interface (`Stage`, `Kind`, `StageEnv`, `StageContext`) and the registry of planners;
see the package's docstring."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Callable

import torch

from ..config import StudyConfig
from ..data import Encoded, length_sorted_batches
from ..losses import TEACHER_OUTPUTS as OUTPUT_SPECS
from ..training import Distillation, class_weight_vector, fit, logit_offset_vector, use_bf16

log = logging.getLogger("distillora")


class Kind(str, Enum):
    """What a model is. Report, analysis, export and the web app decide by kind, never by name."""

    TEACHER = "teacher"
    DISTILLED = "distilled"   # built from teacher layers, trained on the distillation loss
    LORA = "lora"             # built from teacher layers, frozen, LoRA adapters + head trained
    BASELINE = "baseline"     # built from teacher layers, cross-entropy only
    SWEEP = "sweep"           # a distilled student of `distillora sweep`

    @property
    def student(self) -> bool:
        return self is not Kind.TEACHER


# what a stage may consume
TEACHER = "teacher"                  # the fine-tuned teacher model
TEACHER_OUTPUTS = "teacher_outputs"  # its outputs on the training split, cached once


@dataclass
class StageEnv:
    """What every stage needs: the run's config, its tokenizer and tokenised splits, where to work."""

    cfg: StudyConfig
    tokenizer: object
    train: Encoded
    validation: Encoded
    run_dir: Path
    quiet: bool = False
    extra_rows: int = 0  # how many of `train`'s last examples are data.extra_train rows (Splits.info)
    # under teacher.debias: lambda * the bias model's log-probabilities (N, C) for `train`'s rows
    # (training.bias_logprobs, computed before a run writes anything); only the teacher's loss reads them
    teacher_bias: object = None
    # data.dev_sets, encoded (name -> Encoded); only teacher.restarts reads them during training (it
    # chooses the teacher on the selection score, as the study chooses the best student)
    dev_sets: dict = field(default_factory=dict)

    @property
    def rundir(self):
        from ..rundir import RunDir

        return RunDir(self.run_dir)

    def work_dir(self, stage: str) -> Path:
        return self.rundir.work_dir(stage)

    def log_path(self, stage: str) -> Path:
        return self.rundir.log(stage)

    def seen(self, tc, train: Encoded | None = None) -> Encoded:
        """`train` (default: the training split) as a stage with train settings `tc` sees it: the
        data.extra_train rows `tc.extra_train_repeat` times."""
        return (self.train if train is None else train).with_tail_repeated(self.extra_rows, tc.extra_train_repeat)

    def _train_labels(self, tc) -> tuple[list[int], int]:
        """The labels of the training split as a stage with train settings `tc` sees it and the number
        of labels: the resolved label names (the study fills in inferred ones), else the labels the data
        holds."""
        labels = [x["labels"] for x in self.seen(tc).items]
        return labels, len(self.cfg.data.label_names) if self.cfg.data.label_names else max(labels) + 1

    def class_weights(self, tc) -> torch.Tensor | None:
        """Config `class_weights`, counted on the training split as the stage with settings `tc` sees it."""
        return class_weight_vector(self.cfg.class_weights, *self._train_labels(tc))

    def logit_offset(self, tc) -> torch.Tensor | None:
        """tau * log(prior) of config `logit_adjustment`, the prior counted as `class_weights` counts."""
        return logit_offset_vector(self.cfg.logit_adjustment, *self._train_labels(tc))

    def distillation(self, layer_map: list[int], tc) -> Distillation:
        """The distillation objective (`distill.*` weights and temperature) for a student whose layer i+1
        was copied from teacher layer layer_map[i], trained with settings `tc`."""
        return Distillation(self.cfg.distill, list(layer_map), self.class_weights(tc), self.logit_offset(tc))

    def fit(self, model, tc, key: str, fingerprint: str, train: Encoded | None = None, objective=None,
            callbacks: tuple = ()):
        """`training.fit` with what every stage shares: this run's splits, tokenizer, seed, selection
        metric, class weights and quietness, and the stage `key`'s work directory and log; `tc.extra_train_repeat`
        passes over the extra training rows (the class weights and the logit offset counted on the split so
        repeated, as the stage sees it). `objective`:
        default cross-entropy; `self.distillation(...)` for a distilled student. `callbacks`: see `fit`."""
        return fit(model, self.seen(tc, train), self.validation, self.tokenizer, tc,
                   work_dir=self.work_dir(key), log_path=self.log_path(key), stage=key, seed=self.cfg.seed,
                   selection_metric=self.cfg.selection_metric, quiet=self.quiet, fingerprint=fingerprint,
                   class_weights=self.class_weights(tc), logit_offset=self.logit_offset(tc), objective=objective,
                   callbacks=callbacks)


class StageContext:
    """What a stage's `train` reads: `env`, the teacher's `source` (a local directory), the models of earlier stages (`model(name)`: kept in memory
    when trained in this process, else loaded from the run directory) and the cached teacher outputs."""

    def __init__(self, env: StageEnv, source: str = "", suffix: str = ""):
        self.env, self.source, self.suffix = env, source, suffix
        self._models: dict[str, torch.nn.Module] = {}
        self._outputs: dict = {}

    def keep(self, name: str, model) -> None:
        self._models[name] = model

    def model(self, name: str):
        if name not in self._models:
            self._models[name] = load_model(self.env.rundir.model_dir(name + self.suffix))
        return self._models[name]

    def teacher_outputs(self) -> dict:
        """The teacher's outputs that the active distillation terms read, computed once."""
        from .. import losses

        if not self._outputs:
            keys = losses.teacher_needs(losses.weights_of(self.env.cfg.distill))
            log.info("caching teacher outputs (%s) for %d training examples", ", ".join(keys),
                     len(self.env.train))
            t0 = time.perf_counter()
            self._outputs.update(teacher_outputs(self.model(TEACHER), self.env.train, self.env.tokenizer, keys,
                                                 bf16=use_bf16(self.env.cfg.distill.train.precision)))
            log.info("teacher outputs cached in %.1fs", time.perf_counter() - t0)
        return self._outputs

    def release_teacher_outputs(self) -> None:
        self._outputs.clear()


def _save_pretrained(ctx: StageContext, model, stats: dict, out: Path) -> None:
    model.save_pretrained(str(out))
    ctx.env.tokenizer.save_pretrained(str(out))


@dataclass(frozen=True)
class Stage:
    """One stage of the study.

    name: its model's name (and stage key); kind: see `Kind`; section: its config section;
    consumes: TEACHER and/or TEACHER_OUTPUTS; fingerprint_inputs: what its result depends on besides the
    fingerprints of the stages it consumes; train(ctx, key, fingerprint) -> (model, stats);
    save(ctx, model, stats, directory) writes the model (default: save_pretrained + tokenizer);
    record(stats) -> extra fields of its stage record; action: for the log line."""

    name: str
    kind: Kind
    section: str
    consumes: tuple[str, ...]
    fingerprint_inputs: tuple
    teacher_layers: list[int]
    objective: str
    train: Callable
    save: Callable = _save_pretrained
    record: Callable[[dict], dict] = field(default=lambda stats: {})
    action: str = "training"  # what the log line says the stage is doing


PLANNERS: list[Callable] = []


def register(planner: Callable) -> Callable:
    """Register `planner(cfg, resolved, depth) -> [Stage]`: the stages of one module for a config."""
    PLANNERS.append(planner)
    return planner


def plan(cfg: StudyConfig, resolved: dict, depth: int) -> list[Stage]:
    """Every stage this config asks for, in the order they run."""
    return [stage for planner in PLANNERS for stage in planner(cfg, resolved, depth)]


def load_model(path: Path):
    """A saved model, its weights checked against their recorded hashes, on this machine's device."""
    from transformers import AutoModelForSequenceClassification

    from .. import integrity, pooling

    integrity.verify(path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return pooling.apply_saved(AutoModelForSequenceClassification.from_pretrained(str(path), use_safetensors=True)
                               .to(device))


@torch.inference_mode()
def teacher_outputs(teacher, encoded: Encoded, tokenizer, keys=("teacher_logits",), batch_size: int = 64,
                    bf16: bool = False) -> dict:
    """{key: one tensor per example, in `encoded`'s order} for each of `keys` (see
    `losses.TEACHER_OUTPUTS`; `losses.teacher_needs` names those the active loss terms read).
    Per-token outputs keep each example's real tokens only. Sizes, for MPNet-base on about 5k tweets
    x 25 tokens: final hidden states in float16 0.2 GB, the first-token states of all 12 layers 0.09 GB.
    `bf16`: the forward passes run under bf16 autocast, as the students' training does when it uses
    bf16 (the cache is stored in float16 or float32 either way); on the seed teacher this pass took
    86 s in fp32."""
    teacher.eval()
    device = next(teacher.parameters()).device
    specs = {k: OUTPUT_SPECS[k] for k in keys}
    n = len(encoded)
    cache = {k: [None] * n for k in specs}
    hidden = any(s.hidden_states for s in specs.values())
    for idx, batch in length_sorted_batches(encoded, tokenizer, batch_size, device):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = teacher(**batch, output_hidden_states=hidden)
        lengths = batch["attention_mask"].sum(-1).tolist()
        for key, spec in specs.items():
            values = spec.extract(out).to(spec.dtype).cpu()
            for row, j in enumerate(idx):
                cache[key][j] = values[row, : lengths[row]].clone() if spec.per_token else values[row].clone()
    return cache
