"""Training steps of several copies of one model timed side by side, for the benches that compare
step variants (embedding_update.py, step_variants.py). Each copy has its own StudyTrainer; `runner`
readies it as the Trainer's own loop would (optimizer and scheduler, accelerate's bf16 autocast
around the forward when the arguments ask for bf16, as `fit` gets it) and `alternate` times the
copies in turns, round by round on the same batches, so a machine whose speed drifts slows every
copy alike."""

from __future__ import annotations

import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def add_step_args(ap) -> None:
    """The arguments every side-by-side step bench takes."""
    ap.add_argument("--rounds", type=int, default=4, help="rounds; each times --steps steps of every mode")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))


def layers_arg(text: str):
    """`--layers` as build_student takes it: a strategy name (odd, even) or a list such as 1,3,5."""
    return [int(x) for x in text.split(",")] if text[0].isdigit() else text


def train_slice(tokenizer, rows: int, normalize: str | None = None):
    """The first `rows` training examples of the shared reference data, encoded (max length 128)."""
    from distillora.config import DataConfig
    from distillora.data import encode, load_splits

    splits = load_splits(DataConfig(source=str(REPO.parent / "shared" / "data" / "hate_speech_twitter"),
                                    normalize=normalize), 42)
    return encode(type(splits.train)(splits.train.texts[:rows], splits.train.labels[:rows]), tokenizer, 128)


def step_setup(a):
    """(tokenizer, the model to step, its encoded training slice, objective, description) for a step bench's
    `--model`, `--layers`, `--rows`, `--precision`: without `--layers` the teacher's cross-entropy step on
    `--model`; with it, a student built from those layers, trained by distillation on the teacher's
    outputs computed once."""
    import torch
    from transformers import AutoTokenizer

    from distillora.bundles import resolve
    from distillora.config import DistillConfig
    from distillora.stages.distill import teacher_outputs
    from distillora.stages.teacher import load_pretrained
    from distillora.students import build_student, parse_layers
    from distillora.training import CrossEntropy, Distillation, use_bf16

    torch.manual_seed(0)
    source = a.model if Path(a.model).is_dir() else resolve(a.model)
    tok = AutoTokenizer.from_pretrained(source)
    model = load_pretrained(source, ["not_hate", "hate"])
    enc = train_slice(tok, a.rows, "hate_speech_twitter")
    if not a.layers:
        return tok, model, enc, CrossEntropy(None), f"teacher {a.model} (cross-entropy)"
    layers = layers_arg(a.layers)
    objective = Distillation(DistillConfig(), parse_layers(layers, model.config.num_hidden_layers))
    enc = enc.with_fields(**teacher_outputs(model, enc, tok, objective.teacher_needs, bf16=use_bf16(a.precision)))
    return tok, build_student(model, layers), enc, objective, f"student {a.layers} of {a.model} (distillation)"


def trainer_for(model, train, tokenizer, objective, a, work: Path, **kw):
    """A one-epoch StudyTrainer of the pipeline's own arguments (`a.batch_size`, `a.precision`) on `train`."""
    from distillora.config import TrainConfig
    from distillora.data import Collator
    from distillora.training import StudyTrainer, training_args

    tc = TrainConfig(epochs=1, batch_size=a.batch_size, precision=a.precision)
    args = training_args(tc, work, 42, "f1_macro", quiet=True)
    return StudyTrainer(model=model, args=args, train_dataset=train, eval_dataset=train,
                        data_collator=Collator(tokenizer), processing_class=tokenizer, objective=objective, **kw)


def runner(trainer, model, steps: int) -> tuple:
    """(trainer, the model to step, `steps` batches) for `alternate`; batches repeat if the data is short."""
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    wrapped = trainer.accelerator.prepare_model(model) if trainer.args.bf16 else model
    trainer.optimizer = trainer.accelerator.prepare_optimizer(trainer.optimizer)
    batches = list(trainer.get_train_dataloader())
    batches = (batches * (steps // len(batches) + 1))[:steps]
    trainer.current_gradient_accumulation_steps = 1  # normally set by the Trainer's own loop
    wrapped.train()
    return trainer, wrapped, batches


def step(trainer, model, batch) -> None:
    """One training step as the Trainer's loop takes it: forward and backward, clipping, optimizer,
    scheduler, gradients dropped."""
    trainer.training_step(model, dict(batch))
    trainer._clip_grad_norm(model)
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def alternate(runners: dict, rounds: int, steps: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """(seconds per step of each runner in each of `rounds` timed rounds of `steps` steps, seconds of
    each runner's untimed warm-up round: where a compiled runner compiles). The order of the runners is
    reversed every other round. Each runner needs `steps * (rounds + 1)` batches."""

    def run(name: str, rnd: int) -> float:
        trainer, model, batches = runners[name]
        start = time.perf_counter()
        for b in batches[rnd * steps:(rnd + 1) * steps]:
            step(trainer, model, b)
        return (time.perf_counter() - start) / steps

    names = list(runners)
    warmup = {name: run(name, 0) * steps for name in names}
    times = {name: [] for name in names}
    for rnd in range(1, rounds + 1):
        for name in (names if rnd % 2 else names[::-1]):
            times[name].append(run(name, rnd))
    return times, warmup
