"""Measure a student recipe (distilled, LoRA or baseline) on validation and on the development sets of
configs/dev/, never on the test split, from a fine-tuned teacher saved by bench/recipe.py, and its
agreement with that teacher's decisions on each.

    python bench/student_recipe.py --teacher /tmp/distillora-recipe/base/model --stage lora --name lora-all \\
        lora.target_modules=all-linear lora.objective=distill

One JSON line per student goes to `--log` (default bench/results/student_recipe.jsonl)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from distillora.hugepages import restart_with_huge_pages  # noqa: E402  (imports no torch)

if __name__ == "__main__":  # time as a run does (distillora.hugepages, "Benches")
    restart_with_huge_pages()

import numpy as np  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

from distillora import pooling  # noqa: E402
from distillora.check import TEACHER  # noqa: E402
from distillora.config import fingerprint, load_config  # noqa: E402
from distillora.data import encode, load_splits  # noqa: E402
from distillora.inference.timing import cpu_name  # noqa: E402
from distillora.evaluate import count_params, predict_proba  # noqa: E402
from distillora.stages import StageEnv  # noqa: E402
from distillora.stages import baseline as baseline_stage, distill as distill_stage, lora as lora_stage  # noqa: E402
from distillora.students import parse_layers  # noqa: E402
from distillora.training import group_factors, with_group_weights  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe import REPO, dev_sets, split_scores  # noqa: E402


def check_scores(cfg, tok, models: dict, validation_texts: list[str]) -> dict:
    """Per model (`teacher` among them) and suite of `cfg.check.suites`: the balanced MFT pass rate and
    the mean pass rate over capabilities (distillora.check.summarise), answered in memory through each
    model's own saved normaliser. `validation_texts`: the seeds of suites that sample validation (the
    generic suite), as a study passes them."""
    from distillora.check import check_models
    from distillora.data import Split
    from distillora.normalize import of_model

    def predictor(model):
        norm = of_model(model)

        def predict(texts):
            split = Split(norm.many(texts), np.zeros(len(texts), dtype=np.int64))
            return predict_proba(model, encode(split, tok, cfg.data.max_length), tok)[0].tolist()
        return lambda: ("fp32", predict)

    out = check_models({n: predictor(m) for n, m in models.items()}, cfg.check.suites, cfg.data.label_names,
                       validation_texts, resamples=200)
    return {s["name"]: {m: {k: round(v, 4) for k, v in o.items() if isinstance(v, float)}
                        for m, o in s.get("overall", {}).items()} for s in out["suites"] if not s["skipped"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "seed.yaml"))
    ap.add_argument("--teacher", required=True, help="a fine-tuned teacher directory (bench/recipe.py saves one)")
    ap.add_argument("--stage", choices=["distill", "lora", "baseline"], required=True)
    ap.add_argument("--layers", default="even", help="teacher layers of a distilled student")
    ap.add_argument("--name", required=True)
    ap.add_argument("--work", default="/tmp/distillora-student-recipe")
    ap.add_argument("--log", default=str(REPO / "bench" / "results" / "student_recipe.jsonl"))
    ap.add_argument("--train-seed", type=int, default=None,
                    help="seed of the student's training only; the validation carve stays the config's (as `--seeds`)")
    ap.add_argument("--checks", action="store_true",
                    help="also score the student and the teacher on the config's behavioural suites (check.suites)")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()

    cfg = load_config(a.config, a.overrides)
    splits = load_splits(cfg.data, cfg.seed)
    devs = dev_sets(cfg.data)
    tok = AutoTokenizer.from_pretrained(a.teacher)
    teacher = pooling.apply_saved(AutoModelForSequenceClassification.from_pretrained(a.teacher).eval())
    enc = {n: encode(getattr(splits, n), tok, cfg.data.max_length) for n in ("train", "validation")}
    enc.update({n: encode(t, tok, cfg.data.max_length) for n, t in devs.items()})
    enc["train"] = with_group_weights(enc["train"], group_factors(splits.train, cfg))
    if a.train_seed is not None:
        cfg = dataclasses.replace(cfg, seed=a.train_seed)
    env = StageEnv(cfg, tok, enc["train"], enc["validation"], Path(a.work) / a.name, quiet=True,
                   extra_rows=splits.extra_rows)
    # what the training depends on: a second call with the same --name but another seed, override or
    # teacher starts afresh instead of resuming the first one's checkpoint
    fp = fingerprint(a.name, cfg.seed, a.overrides, a.layers, a.teacher)
    t0 = time.perf_counter()
    needs_cache = a.stage == "distill" or (a.stage == "lora" and cfg.lora.objective == "distill")
    from distillora.losses import teacher_needs, weights_of

    cache = distill_stage.teacher_outputs(teacher, enc["train"], tok, teacher_needs(weights_of(cfg.distill))
                                          ) if needs_cache else None
    if a.stage == "distill":
        layers = parse_layers(a.layers if a.layers in ("odd", "even") else json.loads(a.layers),
                              teacher.config.num_hidden_layers)
        model, stats = distill_stage.train(env, a.name, teacher, layers, cache, fp)
    elif a.stage == "lora":
        model, stats = lora_stage.train(env, teacher, fp, a.name, cache)
    else:
        model, stats = baseline_stage.train(env, teacher, fp, a.name)
    total, trainable = count_params(model)
    row = {"name": a.name, "stage": a.stage, "config": Path(a.config).name, "overrides": a.overrides,
           "teacher": a.teacher, "train_seed": cfg.seed, "train_seconds": round(time.perf_counter() - t0, 1),
           "params_trainable": stats.get("params_trainable", trainable), "params_total": total,
           "trainable_pct": round(100 * stats.get("params_trainable", trainable) / total, 3), "cpu": cpu_name(), "glibc_tunables": os.environ.get("GLIBC_TUNABLES")}
    for split, table in {"validation": splits.validation, **devs}.items():
        probs, _ = predict_proba(model, enc[split], tok)
        row[split] = split_scores(probs, split, table)
        # fidelity (Stanton et al., NeurIPS 2021): the share of inputs where the student's decision is
        # the teacher's; what a student is trained for, measurable without labels and without test
        teacher_probs, _ = predict_proba(teacher, enc[split], tok)
        row[split]["teacher_agreement"] = round(float((probs.argmax(1) == teacher_probs.argmax(1)).mean()), 4)
    if a.checks:
        row["checks"] = check_scores(cfg, tok, {"student": model, TEACHER: teacher}, splits.validation.texts)
    print(json.dumps(row))
    Path(a.log).parent.mkdir(parents=True, exist_ok=True)
    with open(a.log, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
