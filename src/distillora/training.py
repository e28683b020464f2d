"""Training on the transformers Trainer: the arguments every stage shares, a Trainer that tracks
the mean training loss of the last epoch, the two objectives (cross-entropy, distillation), and the JSONL log callback.

The Trainer (not a hand-written loop) gives checkpointing and resume, dynamic padding, length-grouped
batches, mixed precision and multi-GPU via accelerate."""

from __future__ import annotations

import json
import logging
import shutil
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from transformers import (EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments)
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import get_last_checkpoint
from tqdm.auto import tqdm

from .config import DistillConfig, TrainConfig
from .data import BIAS_LOGPROBS, SAMPLE_WEIGHT, Collator, Encoded, Split
from .errors import UserError
from .fileio import append_jsonl, read_json, read_jsonl, write_json, write_text
from . import losses
from .losses import weighted_cross_entropy
from .students import layer_list_path

log = logging.getLogger("distillora")
EPOCH_LOSS_KEY = "train_epoch_loss"  # log_history entries holding one epoch's mean training loss


VALIDATION_METRICS = ("accuracy", "balanced_accuracy", "f1_macro")  # what compute_metrics returns; fit reports


def compute_metrics(eval_pred) -> dict:
    logits, labels = eval_pred
    pred = np.asarray(logits).argmax(-1)
    return {"accuracy": float(accuracy_score(labels, pred)),
            "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
            "f1_macro": float(f1_score(labels, pred, average="macro", zero_division=0))}


def class_weight_vector(spec, labels: np.ndarray, num_labels: int) -> torch.Tensor | None:
    """Cross-entropy weights from config `class_weights`: None, "balanced" (sklearn's n / (C * n_c),
    counted on the training split) or one weight per label."""
    if spec is None:
        return None
    if spec == "balanced":
        counts = np.bincount(np.asarray(labels), minlength=num_labels).astype(float)
        w = counts.sum() / (num_labels * np.maximum(counts, 1.0))
        return torch.tensor(w, dtype=torch.float32)
    return torch.tensor([float(x) for x in spec], dtype=torch.float32)


def logit_offset_vector(tau: float, labels, num_labels: int) -> torch.Tensor | None:
    """tau * log(prior) (C,), the prior counted on the training split, for config `logit_adjustment`;
    None when tau is 0. A label absent from the split counts as one example, so its offset stays finite."""
    if not tau:
        return None
    counts = np.maximum(np.bincount(np.asarray(labels), minlength=num_labels).astype(float), 1.0)
    return torch.tensor(tau * np.log(counts / counts.sum()), dtype=torch.float32)


def group_weight_factors(labels, groups: list[str]) -> np.ndarray:
    """Per-example loss factors of config `group_weights: balanced`: within each label, every group (a
    value of `data.category_column`; an empty one is a group of its own) gets the same total weight, as
    group-balanced reweighting does (Idrissi et al., "Simple data balancing achieves competitive
    worst-group-accuracy", CLeaR 2022). An example of label y in group g gets n_y / (K_y * n_yg), with
    K_y the number of groups among label y's examples, so a label's factors sum to n_y and the class
    weights keep their meaning. Shapes: labels (N,), groups N strings; returns (N,) float64."""
    labels = np.asarray(labels)
    groups = np.asarray(groups, dtype=object)
    out = np.ones(len(labels), dtype=float)
    for y in np.unique(labels):
        rows = labels == y
        names, inverse, counts = np.unique(groups[rows].astype(str), return_inverse=True, return_counts=True)
        out[rows] = rows.sum() / (len(names) * counts[inverse])
    return out


def group_factors(split: Split, cfg) -> np.ndarray | None:
    """The training split's per-example `group_weight_factors` when the StudyConfig `cfg` sets
    `group_weights: balanced`, else None. Raises UserError when the data names no groups: called as soon
    as the data is read, before a run writes anything."""
    spec = cfg.group_weights
    if spec is None:
        return None
    if split.categories is None:
        raise UserError(f"group_weights = {spec}: the training data has no category column "
                        f"{cfg.data.category_column!r}; set data.category_column to the column that names "
                        f"each row's group, or group_weights: null")
    factors = group_weight_factors(split.labels, split.categories)
    groups = {(int(y), c) for y, c in zip(split.labels, split.categories)}
    labels = {y for y, _ in groups}
    if len(groups) == len(labels):
        log.warning("group_weights = %s: every label has a single group in column %r, so it weighs nothing",
                    spec, cfg.data.category_column)
    else:
        log.info("group_weights = %s: %d groups across %d labels, example factors %.2f to %.2f",
                 spec, len(groups), len(labels), factors.min(), factors.max())
    return factors


def refuse_without_mask_token(tokenizer, settings: dict[str, float]) -> None:
    """UserError naming every positive `token_mask_prob` in `settings` ({key as the user wrote it: value})
    when `tokenizer` has no mask token to mask with."""
    bad = [f"{key} = {p}" for key, p in settings.items() if p]
    if bad and getattr(tokenizer, "mask_token_id", None) is None:
        raise UserError(f"{'; '.join(bad)}: the teacher's tokenizer has no mask token to mask with; set "
                        f"{'it' if len(bad) == 1 else 'them'} to 0")


def check_token_masking(cfg, tokenizer) -> None:
    """`refuse_without_mask_token` for every stage's settings: called once the tokenizer is loaded, before
    a run writes anything (`fit` refuses too, for the benches)."""
    refuse_without_mask_token(tokenizer, {f"{sec}.train.token_mask_prob": getattr(cfg, sec).train.token_mask_prob
                                          for sec in ("teacher", "distill", "lora", "baseline")})


def with_group_weights(encoded: Encoded, factors: np.ndarray | None) -> Encoded:
    """`encoded` (the training split) with each example's factor from `group_factors` attached as its
    loss weight (`data.SAMPLE_WEIGHT`); unchanged when `factors` is None."""
    return encoded if factors is None else encoded.with_fields(**{SAMPLE_WEIGHT: factors.tolist()})


def bias_logprobs(split: Split, cfg) -> np.ndarray | None:
    """lambda * the bias-only model's out-of-fold log-probabilities (N, C) for the training split `split`
    when the StudyConfig `cfg` sets `teacher.debias` to lambda > 0, else None. Raises UserError when the
    data cannot fit a bias model: called as soon as the data is read, before a run writes anything."""
    lam = cfg.teacher.debias
    if not lam:
        return None
    from .debias import bag_of_words_logprobs

    n = len(cfg.data.label_names) if cfg.data.label_names else int(np.max(split.labels)) + 1
    return lam * bag_of_words_logprobs(split, n, cfg.seed)


def with_bias(encoded: Encoded, logprobs: np.ndarray | None) -> Encoded:
    """`encoded` (the training split) with each example's row of `bias_logprobs` attached
    (`data.BIAS_LOGPROBS`); unchanged when None. Only the teacher stage attaches them, to its own copy of
    the split (`stages.teacher.fit_inputs`), for `CrossEntropy(product_of_experts=True)` to read."""
    return encoded if logprobs is None else encoded.with_fields(**{BIAS_LOGPROBS: logprobs.tolist()})


_BF16_CACHE: dict[str, bool] = {}


def bf16_pays(device: str = "cpu", n: int = 1024, reps: int = 5) -> bool:
    """Whether bf16 matrix products run at least 1.5x faster than fp32 here: a short measurement
    (about 0.2 s, once per process), as `export` decides its copies by measured speed. A CPU without
    native bf16 (AVX512-BF16 or AMX) emulates it and loses."""
    if device in _BF16_CACHE:
        return _BF16_CACHE[device]
    if device == "cuda":
        _BF16_CACHE[device] = torch.cuda.is_bf16_supported()
        return _BF16_CACHE[device]
    a32 = torch.randn(n, n)
    times = {}
    for dt in (torch.float32, torch.bfloat16):
        a = a32.to(dt)
        a @ a  # warm-up
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ a
        times[dt] = time.perf_counter() - t0
    _BF16_CACHE[device] = times[torch.float32] / times[torch.bfloat16] >= 1.5
    return _BF16_CACHE[device]


def use_bf16(precision: str) -> bool:
    if precision == "fp32":
        return False
    cuda = torch.cuda.is_available()
    if precision == "bf16":
        return True
    return bf16_pays("cuda" if cuda else "cpu")


def training_args(tc: TrainConfig, out_dir: Path, seed: int, selection_metric: str, quiet: bool,
                  num_processes: int = 1) -> TrainingArguments:
    """`tc.batch_size` is the global batch: with `split_batches`, accelerate hands each of N data-parallel
    processes 1/N of every batch the sampler forms, so N processes take the same optimisation steps,
    over the same examples, as one."""
    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(out_dir),
        num_train_epochs=tc.epochs,
        learning_rate=tc.learning_rate,
        per_device_train_batch_size=tc.batch_size,
        accelerator_config={"split_batches": num_processes > 1},
        per_device_eval_batch_size=tc.eval_batch_size,
        weight_decay=tc.weight_decay,
        warmup_steps=tc.warmup_ratio,  # a float in [0, 1) is a ratio of total steps in transformers 5
        lr_scheduler_type="linear",
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,  # with load_best_model_at_end the best checkpoint is kept as well
        load_best_model_at_end=True,
        metric_for_best_model=selection_metric,
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=tc.logging_steps,
        train_sampling_strategy="group_by_length",
        seed=seed,
        data_seed=seed,
        report_to="none",
        disable_tqdm=quiet,
        remove_unused_columns=False,  # cached teacher outputs ride in the batch
        label_names=["labels"],
        bf16=use_bf16(tc.precision),  # autocast; the master weights and the optimiser stay fp32
        dataloader_pin_memory=cuda,
        use_cpu=not cuda,
        # Each process averages its own half of a split batch and DDP averages the gradients: the same
        # mean as one process over the whole batch (sequence classification has one item per example).
        average_tokens_across_devices=False,
    )


class JsonlLog(TrainerCallback):
    """Every Trainer log (train loss, learning rate, eval metrics) as one JSON line, plus examples/s."""

    def __init__(self, path: Path, stage: str, batch_size: int):
        self.path, self.stage, self.batch_size = Path(path), stage, batch_size
        self._t, self._step = None, 0

    def on_train_begin(self, args, state, control, **kw):
        self._t, self._step = time.perf_counter(), state.global_step

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero or not logs:
            return
        row = {"stage": self.stage, "step": state.global_step, "epoch": state.epoch, **logs}
        if "loss" in logs and self._t is not None:
            now = time.perf_counter()
            steps = state.global_step - self._step
            if steps > 0:
                row["examples_per_s"] = steps * self.batch_size * args.world_size / (now - self._t)
            self._t, self._step = now, state.global_step
        append_jsonl(self.path, row)
        tqdm.write(self.line(row, state.max_steps))

    def line(self, row: dict, max_steps: int) -> str:
        head = f"[{self.stage}] step {row['step']}/{max_steps} epoch {row['epoch'] or 0:.2f}"
        if "loss" in row:
            speed = f" {row['examples_per_s']:.1f} ex/s" if "examples_per_s" in row else ""
            return f"{head} loss {row['loss']:.4f} lr {row.get('learning_rate', 0):.2e}{speed}"
        if "eval_accuracy" in row:
            return (f"{head} validation accuracy {row['eval_accuracy']:.4f} balanced "
                    f"{row.get('eval_balanced_accuracy', 0):.4f} f1_macro {row['eval_f1_macro']:.4f} "
                    f"loss {row['eval_loss']:.4f}")
        return f"{head} " + " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in row.items() if k not in ("stage", "step", "epoch"))


class _Bar(ProgressCallback):
    """The Trainer's progress bar (with ETA) without its raw dict printing: JsonlLog prints one
    readable line per logging step instead."""

    def on_log(self, args, state, control, logs=None, **kw):
        pass


class SparseEmbeddingOptimizer(torch.optim.Optimizer):
    """`train.sparse_word_embeddings`: AdamW (fused, as the Trainer's default) for every dense parameter
    and torch's SparseAdam for the word embeddings, whose gradient is sparse (`nn.Embedding(sparse=True)`):
    a batch reads and writes only the ~600 rows it uses instead of zero-filling and updating all ~30k.

    Departs from transformers: the Trainer builds one optimizer and clips with torch's
    `clip_grad_norm_`, which has no sparse kernel; `StudyTrainer._clip_grad_norm` calls `clip` here
    instead, the same global-norm clipping over dense and sparse gradients together. `param_groups` are
    the inner optimizers' own group dicts, read anew on every access, so the Trainer's LR scheduler
    reaches both: a `load_state_dict` (accelerate calls one when it wraps the optimizer, a resume another)
    gives the inner optimizers new group dicts, and a list taken once would keep the stale ones."""

    def __init__(self, dense: torch.optim.Optimizer, sparse: torch.optim.Optimizer):
        self.inner = (dense, sparse)
        self.defaults = dense.defaults
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = {}, {}
        self._optimizer_state_dict_pre_hooks, self._optimizer_state_dict_post_hooks = {}, {}
        self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = {}, {}

    @property
    def param_groups(self):
        return self.inner[0].param_groups + self.inner[1].param_groups

    @property
    def state(self):
        return {**self.inner[0].state, **self.inner[1].state}

    @torch.no_grad()
    def clip(self, max_norm: float) -> torch.Tensor:
        """Scale every gradient so that their global L2 norm is at most `max_norm`; returns the norm
        before scaling (as `clip_grad_norm_`, with the same 1e-6 guard)."""
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norms = [torch.linalg.vector_norm((g.coalesce().values() if g.is_sparse else g).float()) for g in grads]
        total = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.tensor(0.0)
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for g in grads:
            g.mul_(coef)
        return total

    @torch.no_grad()
    def step(self, closure=None):
        for opt in self.inner:
            opt.step()

    def zero_grad(self, set_to_none: bool = True):
        for opt in self.inner:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"dense": self.inner[0].state_dict(), "sparse": self.inner[1].state_dict()}

    def load_state_dict(self, state_dict):
        self.inner[0].load_state_dict(state_dict["dense"])
        self.inner[1].load_state_dict(state_dict["sparse"])


class StudyTrainer(Trainer):
    """Trainer that also records the mean training loss over each epoch (summed on the device; read
    once per epoch, so no host sync per step). The means go into `state.log_history`, which every
    checkpoint saves (trainer_state.json) and a resume restores, so a resumed stage reports the
    losses of the epochs it did before the kill too."""

    def __init__(self, *a, objective=None, sparse_embeddings: bool = False, layer_lr_decay: float = 1.0,
                 token_mask_prob: float = 0.0, **kw):
        """`sparse_embeddings`: the word embeddings take sparse gradients (see `SparseEmbeddingOptimizer`);
        `layer_lr_decay`: see `layerwise_groups`; `token_mask_prob`: see `mask_tokens`."""
        super().__init__(*a, **kw)
        self.objective = objective
        self.token_mask_prob = token_mask_prob
        if token_mask_prob:  # `fit` has refused a tokenizer without a mask token
            tok = self.processing_class
            self._mask_id, self._special_ids = tok.mask_token_id, torch.tensor(tok.all_special_ids)
        self.sparse_embeddings = sparse_embeddings
        self.layer_lr_decay = layer_lr_decay
        self._loss_sum, self._loss_n = None, 0
        self.add_callback(_EpochLoss(self))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The stage's `objective` (CrossEntropy or Distillation): the Trainer is one class, the loss
        is what the stage chose. An objective answers None for the Trainer's own loss (the model's
        cross-entropy, with the Trainer's handling of `num_items_in_batch`)."""
        if self.token_mask_prob and model.training:
            self._special_ids = self._special_ids.to(inputs["input_ids"].device)  # once: later calls find it there
            inputs = {**inputs, "input_ids": mask_tokens(inputs["input_ids"], self._mask_id, self._special_ids,
                                                         self.token_mask_prob)}
        got = self.objective(model, inputs) if self.objective is not None else None
        if got is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = got
        return (loss, outputs) if return_outputs else loss

    def create_optimizer(self, model=None):
        """The Trainer's AdamW unless a setting needs other parameter groups: layer-wise learning-rate
        decay (one group per depth; the Trainer's linear schedule scales each group's own rate) or
        sparse word-embedding updates (SparseAdam for that matrix)."""
        if not self.sparse_embeddings and self.layer_lr_decay == 1.0:
            return super().create_optimizer(model)
        if self.optimizer is None:
            model = self.model if model is None else model
            emb = model.get_input_embeddings().weight if self.sparse_embeddings else None
            decay = set(self.get_decay_parameter_names(model))
            named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and p is not emb]
            groups = layerwise_groups(model, named, decay, self.args.weight_decay, self.args.learning_rate,
                                      self.layer_lr_decay)
            betas, eps, lr = (self.args.adam_beta1, self.args.adam_beta2), self.args.adam_epsilon, self.args.learning_rate
            dense = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
            self.optimizer = dense if emb is None else SparseEmbeddingOptimizer(
                dense, torch.optim.SparseAdam([emb], lr=lr * self.layer_lr_decay ** (n_layers(model) + 1),
                                              betas=betas, eps=eps))
        return self.optimizer

    def _clip_grad_norm(self, model):
        """Trainer's (private) clipping hook; `max_grad_norm` is always > 0 here (training_args leaves
        transformers' default of 1.0), so the Trainer never asks torch for a norm it cannot take."""
        if not self.sparse_embeddings:
            return super()._clip_grad_norm(model)
        return self.optimizer.optimizer.clip(self.args.max_grad_norm)  # accelerate wraps the optimizer

    @property
    def epoch_losses(self) -> list[float]:
        return [h[EPOCH_LOSS_KEY] for h in self.state.log_history if EPOCH_LOSS_KEY in h]

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._loss_n += 1
        return loss


def mask_tokens(input_ids: torch.Tensor, mask_id: int, special_ids: torch.Tensor, p: float) -> torch.Tensor:
    """`train.token_mask_prob`: a copy of `input_ids` with each token not in `special_ids` (the tokenizer's
    special tokens, padding among them) replaced by `mask_id` with probability `p`. Word dropout (Iyyer et al. 2015),
    the corruption half of SSMBA (Ng et al. 2020, which found it raises out-of-domain accuracy): the
    model must read the rest of the sentence rather than one trigger word. Drawn from torch's generator
    of the batch's device, which the Trainer seeds and saves in each checkpoint, so a resumed run draws
    the same masks (data-parallel ranks share the seed, as their dropout does, so their draws match).
    Unlike transformers' `DataCollatorForLanguageModeling` there is no 80/10/10 split: nothing is
    predicted at the masked positions, only the label."""
    drop = (torch.rand(input_ids.shape, device=input_ids.device) < p) & ~torch.isin(input_ids, special_ids)
    return input_ids.masked_fill(drop, mask_id)


class _EpochLoss(TrainerCallback):
    def __init__(self, trainer: StudyTrainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kw):
        self.trainer._loss_sum, self.trainer._loss_n = None, 0

    def on_epoch_end(self, args, state, control, **kw):
        t = self.trainer
        if t._loss_n:
            mean = t._loss_sum / t._loss_n * args.gradient_accumulation_steps
            # on_epoch_end runs before the epoch's checkpoint is saved, so that checkpoint holds it
            state.log_history.append({"epoch": state.epoch, "step": state.global_step,
                                      EPOCH_LOSS_KEY: float(t.accelerator.reduce(mean, "mean"))})


class CrossEntropy:
    """The objective of the teacher, the baseline and a LoRA student with `lora.objective: ce`: the
    model's own cross-entropy, or a weighted one when `class_weights` (C,) is set or the batch carries
    per-example weights (`group_weights`), logit-adjusted when `logit_offset` (C,) is set
    (transformers' heads take neither). Called as (model, batch) -> (loss, outputs), or None
    where the Trainer's own loss is the same thing."""

    def __init__(self, class_weights: torch.Tensor | None = None, logit_offset: torch.Tensor | None = None,
                 product_of_experts: bool = False):
        self.class_weights = class_weights
        self.logit_offset = logit_offset
        self.product_of_experts = product_of_experts  # the teacher under `teacher.debias`

    def __call__(self, model, inputs: dict):
        weight = inputs.pop(SAMPLE_WEIGHT, None)  # training batches under `group_weights` carry one
        bias = inputs.pop(BIAS_LOGPROBS, None)    # and under `teacher.debias`, which only the teacher reads
        if not self.product_of_experts:
            bias = None
        elif bias is None and model.training and "labels" in inputs:
            # a caller that forgot `with_bias` would otherwise train plain cross-entropy without a word
            raise ValueError("CrossEntropy(product_of_experts=True): the training batch carries no "
                             f"{BIAS_LOGPROBS}; attach them with training.with_bias")
        plain = self.class_weights is None and weight is None and self.logit_offset is None and bias is None
        if plain or "labels" not in inputs:
            return None
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        return weighted_cross_entropy(outputs.logits, labels, self.class_weights, weight, self.logit_offset,
                                      bias), outputs


class Distillation:
    """The distilled students' objective: the weighted sum of the loss terms registered in `losses`
    whose weight in `distill` is positive. Reads the cached teacher outputs (`teacher_*`) from the
    batch; evaluation batches carry none and fall back to the (class-weighted) cross-entropy. Class
    and group weights and the logit adjustment apply to the hard-label term only: the soft terms follow
    the teacher on every example (whose own logits were trained under the same adjustment).
    `layer_map[i]`: the teacher layer (1-based) student layer i+1 was copied from."""

    def __init__(self, distill: DistillConfig, layer_map: list[int] | None = None,
                 class_weights: torch.Tensor | None = None, logit_offset: torch.Tensor | None = None):
        self.weights = losses.weights_of(distill)
        self.temperature = distill.temperature
        self.layer_map = layer_map
        self.class_weights = class_weights
        self.logit_offset = logit_offset
        self.student_hidden = losses.needs_student_hidden(self.weights)

    @property
    def teacher_needs(self) -> tuple[str, ...]:
        return losses.teacher_needs(self.weights)

    def __call__(self, model, inputs: dict):
        teacher = {k: inputs.pop(k) for k in list(inputs) if k.startswith("teacher_")}
        if not teacher:
            return CrossEntropy(self.class_weights, self.logit_offset)(model, inputs)
        weight = inputs.pop(SAMPLE_WEIGHT, None)
        outputs = model(**inputs, output_hidden_states=self.student_hidden)
        x = losses.LossInputs(outputs.logits, inputs["labels"], inputs.get("attention_mask"),
                              outputs.hidden_states if self.student_hidden else None, teacher,
                              self.layer_map, self.temperature, self.class_weights, weight, self.logit_offset)
        return losses.total_loss(x, self.weights)[0], outputs


class _Elapsed(TrainerCallback):
    """Training seconds so far, saved beside each checkpoint, so a resumed stage reports its total."""

    def __init__(self, work_dir: Path, before: float):
        self.work_dir, self.before, self.start = Path(work_dir), before, time.perf_counter()

    def total(self) -> float:
        return self.before + time.perf_counter() - self.start

    def on_save(self, args, state, control, **kw):
        if state.is_world_process_zero:
            write_json(self.work_dir / "elapsed.json", {"seconds": self.total(), "step": state.global_step})


def missing_from_checkpoint(ckpt: Path) -> list[str]:
    """What checkpoint directory `ckpt` lacks to be resumed from: the Trainer writes weights,
    optimiser, scheduler, RNG state and, last, trainer_state.json into it, so a kill mid-write leaves
    some of them out (or trainer_state.json torn). Empty when complete."""
    ckpt = Path(ckpt)
    missing = []
    if not any((ckpt / w).is_file() for w in ("model.safetensors", "adapter_model.safetensors",
                                               "model.safetensors.index.json")):
        missing.append("model weights")
    missing += [f for f in ("optimizer.pt", "scheduler.pt") if not (ckpt / f).is_file()]
    if not any(ckpt.glob("rng_state*.pth")):
        missing.append("rng_state.pth")
    try:
        json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        missing.append("trainer_state.json")
    return missing


def _prepare_work_dir(work_dir: Path, log_path: Path, fingerprint: str) -> None:
    """Reuse `work_dir`'s checkpoints only if they were made with the same settings; otherwise start
    over. Remove checkpoints a kill left incomplete, so the last complete one (or scratch) is resumed.
    Cut the log back to the checkpoint, so resumed steps are not logged twice."""
    work_dir, log_path = Path(work_dir), Path(log_path)
    stamp = work_dir / "fingerprint"
    if work_dir.is_dir() and (not stamp.exists() or stamp.read_text().strip() != fingerprint):
        shutil.rmtree(work_dir)  # checkpoints of other settings (a --force redo): never resume them
    work_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint)
    for ckpt in sorted(work_dir.glob("checkpoint-*")):
        missing = missing_from_checkpoint(ckpt) if ckpt.is_dir() else []
        if missing:
            log.warning("%s: incomplete (no %s: the run was killed while writing it); removed, resuming from the "
                        "checkpoint before it, if any", ckpt, ", ".join(missing))
            shutil.rmtree(ckpt)
    last = get_last_checkpoint(str(work_dir))
    if last is None:
        log_path.unlink(missing_ok=True)
        return
    step = int(Path(last).name.split("-")[-1])
    rows = [r for r in read_jsonl(log_path) if r.get("step", 0) <= step and "event" not in r]
    write_text(log_path, "".join(json.dumps(r) + "\n" for r in rows))


class BitDropout(torch.nn.Module):
    """`nn.Dropout` for CPU training with a cheaper mask: four 16-bit slices of each 64-bit random
    number, compared with a threshold, instead of torch's CPU `bernoulli_`, which draws each element's
    mask separately and took 13% of an MPNet teacher's bf16 training step here (`bench/profile_step.py
    --layers teacher --dropout torch`; `bench/step_variants.py --compare dropout` times both side by side). Same module
    semantics: identity in eval mode or at p = 0, inverted scaling in training. The drop probability
    is quantised to 1/65536 (p = 0.1 drops 6554/65536 = 0.100006) and the scale is 1 / (the kept share
    actually used), applied to each kept value with one rounding, so the expectation is unchanged up
    to the input dtype's rounding. Draws come from torch's default generator, so a seed (and the
    Trainer's RNG checkpointing) fixes them."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p  # read by models that pass `self.dropout.p` on to scaled_dot_product_attention
        self.dropped = min(round(p * 65536), 65536)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.dropped == 0:
            return x
        if self.dropped == 65536:
            return x * 0
        n = x.numel()
        bits = torch.randint(-2 ** 63, 2 ** 63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
        keep = bits.view(torch.int16)[:n].view(x.shape) >= self.dropped - 32768
        return (x * keep).mul_(65536 / (65536 - self.dropped))  # autograd keeps the bool mask only

    def extra_repr(self) -> str:
        return f"p={self.p}"


@contextmanager
def bit_dropout(model):
    """Swap every `nn.Dropout` of `model` (the LoRA path's too) for `BitDropout` while training on CPU,
    and put the originals back afterwards, so what is saved, evaluated and exported holds torch's own
    modules. The modules have no weights, so checkpoints written meanwhile are unchanged."""
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is torch.nn.Dropout and child.p > 0]
    for parent, name, child in swaps:
        setattr(parent, name, BitDropout(child.p))
    try:
        yield len(swaps)
    finally:
        for parent, name, child in swaps:
            child.train(getattr(parent, name).training)  # the mode train()/eval() set while it was out
            setattr(parent, name, child)


def n_layers(model) -> int:
    return len(model.get_submodule(_layer_list(model)))


def _unwrapped(model) -> tuple:
    """(the task model, the dotted prefix of its names in `model`): a peft wrapper's inner model and
    its prefix (`base_model.model`), or `model` itself and ""."""
    if not hasattr(model, "get_base_model"):
        return model, ""
    inner = model.get_base_model()
    return inner, next(n for n, m in model.named_modules() if m is inner)


def _layer_list(model) -> str:
    """The layer list's dotted path in `model`, a task model or a peft model wrapping one."""
    inner, prefix = _unwrapped(model)
    return f"{prefix}.{layer_list_path(inner)}" if prefix else layer_list_path(inner)


def layer_depths(model, names) -> list[int]:
    """Depth of each parameter in `names` for layer-wise decay: 0 for the embeddings (and any other
    base-model weight outside the layers, such as MPNet's shared relative-position bias or a final norm
    after the layers), i for transformer layer i (1-based), L+1 for the pooler and the head."""
    path, depth = _layer_list(model) + ".", n_layers(model)
    inner, prefix = _unwrapped(model)
    base = inner.base_model_prefix + "."

    def one(name: str) -> int:
        if name.startswith(path):
            return int(name[len(path):].split(".", 1)[0]) + 1
        rel = name[len(prefix) + 1:] if prefix and name.startswith(prefix + ".") else name
        return 0 if rel.startswith(base) and ".pooler." not in rel else depth + 1

    return [one(n) for n in names]


def layerwise_groups(model, named: list, decay: set, weight_decay: float, lr: float, factor: float) -> list[dict]:
    """AdamW parameter groups: the Trainer's split (weight decay on `decay`, none on biases and norms)
    crossed with depth, at `lr` x factor^(L+1-depth) (layer-wise learning-rate decay, as in ULMFiT and
    ELECTRA: the pretrained lower layers move less, the head as much as without it). transformers'
    Trainer has no such option, hence these groups. The head's groups come first: the Trainer logs the
    first group's rate."""
    top = n_layers(model) + 1
    groups: dict[tuple[int, bool], list] = {}
    for (n, p), depth in zip(named, layer_depths(model, [n for n, _ in named])):
        groups.setdefault((depth, n in decay), []).append(p)
    return [{"params": ps, "weight_decay": weight_decay if d else 0.0, "lr": lr * factor ** (top - depth)}
            for (depth, d), ps in sorted(groups.items(), key=lambda kv: (-kv[0][0], not kv[0][1]))]


def freeze_lower_layers(model, n: int) -> list[torch.nn.Parameter]:
    """`train.freeze_lower_layers`: stop gradients to the embedding block and the first `n` transformer
    layers (the parameters that were trainable and now are not, to be released after training).
    Nothing below layer n then needs a gradient, so autograd's backward pass ends there."""
    if n <= 0:
        return []
    layers = model.get_submodule(layer_list_path(model))
    if n > len(layers):
        raise ValueError(f"train.freeze_lower_layers = {n}, but the model has {len(layers)} layers")
    modules = [model.base_model.embeddings, *list(layers)[:n]]
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    return params


def _logged_evaluation(state) -> dict | None:
    """The validation metrics logged at the best checkpoint's step. `load_best_model_at_end` reloads
    exactly the weights evaluated then, and evaluation runs in eval mode on the same batches, so a
    second pass over validation (one per stage: ~10 s for an MPNet teacher here) would repeat these
    figures. None (evaluate again) unless the Trainer recorded a best checkpoint of that step, which
    it then reloaded (after a resume whose best checkpoint is gone it records none and returns the last
    weights), and the log holds every metric `fit` reports."""
    step = getattr(state, "best_global_step", None)
    if step is None or not state.best_model_checkpoint or Path(state.best_model_checkpoint).name != f"checkpoint-{step}":
        return None
    for h in reversed(state.log_history):
        if h.get("step") == step and all(f"eval_{k}" in h for k in VALIDATION_METRICS):
            return h
    return None


def fit(model, train: Encoded, validation: Encoded, tokenizer, tc: TrainConfig, *, work_dir: Path,
        log_path: Path, stage: str, seed: int, selection_metric: str, quiet: bool, fingerprint: str,
        class_weights: torch.Tensor | None = None, logit_offset: torch.Tensor | None = None, objective=None,
        callbacks: tuple = ()) -> tuple[torch.nn.Module, dict]:
    """Train `model` on `objective` (default: CrossEntropy(class_weights, logit_offset)), keep the epoch best on
    validation, resume from `work_dir`'s last checkpoint if one exists and was made with the same
    `fingerprint`. `callbacks`: more TrainerCallbacks (the benches' measurements). Returns the best
    model and {loss (mean of last epoch), seconds, steps, validation}."""
    refuse_without_mask_token(tokenizer, {f"{stage}: train.token_mask_prob": tc.token_mask_prob})
    embeddings = model.get_input_embeddings()
    if tc.freeze_word_embeddings:
        embeddings.weight.requires_grad_(False)
    frozen = freeze_lower_layers(model, tc.freeze_lower_layers)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)  # before anything is released
    embeddings.sparse = tc.sparse_word_embeddings
    state = PartialState()
    if state.is_main_process:
        _prepare_work_dir(work_dir, log_path, fingerprint)
    state.wait_for_everyone()
    last = get_last_checkpoint(str(work_dir))
    elapsed_file = Path(work_dir) / "elapsed.json"
    before = float(read_json(elapsed_file)["seconds"]) if last and elapsed_file.exists() else 0.0
    args = training_args(tc, work_dir, seed, selection_metric, quiet, state.num_processes)
    elapsed = _Elapsed(work_dir, before)
    callbacks = [JsonlLog(log_path, stage, tc.batch_size), elapsed, *callbacks]
    if tc.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=tc.early_stopping_patience))
    trainer = StudyTrainer(model=model, args=args, train_dataset=train, eval_dataset=validation,
                  data_collator=Collator(tokenizer), processing_class=tokenizer,
                  compute_metrics=compute_metrics, callbacks=callbacks,
                           objective=objective or CrossEntropy(class_weights, logit_offset), sparse_embeddings=embeddings.sparse,
                           layer_lr_decay=tc.layer_lr_decay, token_mask_prob=tc.token_mask_prob)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if not quiet:
        trainer.add_callback(_Bar())
    # on GPUs torch's dropout draws its mask with Philox in the kernel, so BitDropout is for CPUs only
    with (bit_dropout(model) if not torch.cuda.is_available() else nullcontext()):
        trainer.train(resume_from_checkpoint=last)
    embeddings.sparse = False  # what is saved and served takes dense gradients, as from_pretrained builds it
    for p in frozen:
        p.requires_grad_(True)  # the weights stay as loaded; later stages (LoRA, WiSE-FT) decide their own
    seconds = elapsed.total()
    best = _logged_evaluation(trainer.state) or trainer.evaluate()  # the loaded best model, on validation
    stats = {
        "loss": trainer.epoch_losses[-1] if trainer.epoch_losses else None,
        "epoch_losses": trainer.epoch_losses,
        "seconds": round(seconds, 2),
        "steps": trainer.state.global_step,
        "best_checkpoint": Path(trainer.state.best_model_checkpoint).name if trainer.state.best_model_checkpoint else None,
        "resumed_from": Path(last).name if last else None,
        "precision": "bf16" if args.bf16 else "fp32",
        "params_trainable": trainable,
        "validation": {**{k: best[f"eval_{k}"] for k in VALIDATION_METRICS}, "loss": best.get("eval_loss")},
    }
    append_jsonl(log_path, {"stage": stage, "event": "best", **stats["validation"]})
    # With bf16, accelerate wrapped the model's forward in autocast; take the wrapper off so that what
    # the stage saves, caches from or checks (LoRA's merged copy) runs in the model's own precision.
    return trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False), stats
