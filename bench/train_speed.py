"""Training speed: one distillation epoch by distillora's pipeline against a deliberately naive
implementation, same student, data slice and number of steps, runs alternated. Prints a table and
writes JSON.

naive:    every batch re-tokenised and padded to 128 tokens, teacher forward on every step (logits and
          hidden states), random order, a plain PyTorch loop with AdamW over all parameters.
pipeline: distillora's own path: tokenised once, teacher outputs computed once (timed and included),
          length-grouped batches with dynamic padding, transformers Trainer with the Distillation objective.

usage: python bench/train_speed.py [--teacher minilm-l6] [--rows 640] [--repeats 2] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed  # noqa: E402

from distillora import build_student, bundles, pooling  # noqa: E402
from distillora.config import StudyConfig  # noqa: E402
from distillora.data import DataConfig, encode, load_splits  # noqa: E402
from distillora.losses import LossInputs, total_loss, weights_of  # noqa: E402
from distillora.stages.distill import teacher_outputs  # noqa: E402
from distillora.training import Distillation, fit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def naive_epoch(teacher, student, tok, texts, labels, batch_size, cfg) -> tuple[float, int]:
    opt = torch.optim.AdamW(student.parameters(), lr=5e-5)
    student.train()
    order = torch.randperm(len(texts)).tolist()
    tokens = 0
    start = time.perf_counter()
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        batch = tok([texts[j] for j in idx], padding="max_length", truncation=True, max_length=128, return_tensors="pt")
        y = torch.tensor([int(labels[j]) for j in idx])
        with torch.no_grad():
            t = teacher(**batch, output_hidden_states=True)
        s = student(**batch, output_hidden_states=True)
        loss, _ = total_loss(LossInputs(s.logits, y, batch["attention_mask"], s.hidden_states,
                                        {"teacher_logits": t.logits, "teacher_hidden": t.hidden_states[-1]},
                                        temperature=cfg.temperature), weights_of(cfg))
        loss.backward()
        opt.step()
        opt.zero_grad()
        print(f"  naive step {i // batch_size + 1}: loss {loss.item():.4f}", end="\r", file=sys.stderr)
        tokens += int(batch["attention_mask"].sum())
    return time.perf_counter() - start, tokens


def pipeline_epoch(teacher, student, tok, splits, cfg: StudyConfig) -> tuple[float, float, int]:
    start = time.perf_counter()
    train = encode(splits.train, tok, cfg.data.max_length)
    validation = encode(splits.validation, tok, cfg.data.max_length)
    objective = Distillation(cfg.distill, list(range(1, student.config.num_hidden_layers + 1)))
    cache = teacher_outputs(teacher, train, tok, objective.teacher_needs)
    setup = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as d:
        tc = cfg.distill.train
        t0 = time.perf_counter()
        fit(student, train.with_fields(**cache), validation, tok, tc, work_dir=Path(d) / "w", log_path=Path(d) / "log",
            stage="bench", seed=0, selection_metric="f1_macro", quiet=True, fingerprint="bench", objective=objective)
        loop = time.perf_counter() - t0
    return setup, loop, sum(train.lengths())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="minilm-l6")
    ap.add_argument("--layers", default="odd")
    ap.add_argument("--rows", type=int, default=640)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--data", default=str(REPO / ".." / "shared" / "data" / "hate_speech_twitter"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    a = ap.parse_args()

    cfg = StudyConfig()
    cfg.data = DataConfig(source=a.data, max_train_rows=a.rows)
    cfg.distill.train.epochs = 1
    cfg.distill.train.eval_batch_size = 256
    cfg.distill.train.logging_steps = 1000
    splits = load_splits(cfg.data, 0)
    source = bundles.resolve(a.teacher)
    tok = AutoTokenizer.from_pretrained(source)
    teacher = pooling.apply_saved(AutoModelForSequenceClassification.from_pretrained(source, num_labels=2).eval())
    bs = cfg.distill.train.batch_size
    runs = {"naive": [], "pipeline": []}
    for r in range(a.repeats):
        for kind in ("naive", "pipeline") if r % 2 == 0 else ("pipeline", "naive"):
            set_seed(r)
            student = build_student(teacher, a.layers)
            if kind == "naive":
                secs, tokens = naive_epoch(teacher, student, tok, splits.train.texts, splits.train.labels, bs, cfg.distill)
                runs[kind].append({"seconds": secs, "real_tokens": tokens})
            else:
                setup, loop, tokens = pipeline_epoch(teacher, student, tok, splits, cfg)
                runs[kind].append({"seconds": setup + loop, "setup_seconds": setup, "loop_seconds": loop,
                                   "real_tokens": tokens})
            print(f"repeat {r} {kind}: {runs[kind][-1]['seconds']:.1f} s", file=sys.stderr)
    n = len(splits.train)
    med = {k: statistics.median(x["seconds"] for x in v) for k, v in runs.items()}
    # the pipeline's epoch also evaluates validation once (the naive loop does not): counted against it
    result = {
        "teacher": a.teacher, "student_layers": a.layers, "train_examples": n, "batch_size": bs,
        "threads": torch.get_num_threads(), "repeats": a.repeats, "runs": runs,
        "examples_per_s": {k: n / v for k, v in med.items()},
        "speedup": med["naive"] / med["pipeline"],
    }
    print(f"\n| implementation | median epoch seconds | examples/s |\n|---|---|---|")
    for k in ("naive", "pipeline"):
        print(f"| {k} | {med[k]:.1f} | {n / med[k]:.1f} |")
    print(f"\npipeline speed-up over naive: {result['speedup']:.2f}x ({a.teacher} teacher, {a.layers} student, "
          f"{n} examples, batch {bs}, {torch.get_num_threads()} threads, {a.repeats} alternating repeats)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_speed.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
