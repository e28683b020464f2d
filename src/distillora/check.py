"""Behavioural checks: every model of a run answers the cases of behavioural suites
(`distillora.suites`), each case is scored, and the results are summarised capability by capability
with bootstrap intervals and flags against the teacher. Written to `<run>/checks.json`; the report
and the web app read that file.

Scoring (`score`, pure):
  MFT  passes when the predicted label is the expected one.
  INV  passes when the perturbed text gets the same predicted label as the original. Its size is the
       largest change of any class probability (the worst examples are the failures with the largest).
  DIR  passes unless p(label) moves against `direction` by more than the test's `tolerance`.
Summary (`summarise`, pure):
  pass rate per capability (cases of its tests pooled) with a 95% percentile bootstrap interval over
  cases; a student's capability is *flagged* when the 95% bootstrap interval of the paired difference
  (student pass - teacher pass, same cases, same resampled indices) lies entirely below 0. Per model:
  the mean pass rate over capabilities, and the MFT pass rate balanced over expected labels (the mean
  of the per-label pass rates, so a model that always answers the majority expectation gains nothing).

Models are the run's served copies (the export `distillora export` chose, else fp32), answered through
`predict.probabilities`, the path of `distillora predict` and the web app.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from . import stats
from .errors import UserError
from .fileio import write_json
from .rundir import RunDir
from .suites import Case, Suite, Test, generate, load_suite

log = logging.getLogger("distillora")

TEACHER = "teacher"
WORST_KEPT = 5  # worst invariance failures kept per model and test

Predict = Callable[[list[str]], list[list[float]]]


# ----------------------------------------------------------------------------- scoring (pure)

def score(test: Test, cases: list[Case], label_names: list[str], probs, perturbed=None) -> tuple[np.ndarray, np.ndarray | None]:
    """(passed, change) per case. probs: (n, classes) for each case's text; perturbed: the same for each
    case's perturbed text (INV and DIR). change: INV the largest absolute change of a class probability,
    DIR the signed change of p(test.label); None for MFT."""
    probs = np.asarray(probs, dtype=float)
    pred = probs.argmax(1)
    if test.type == "MFT":
        want = np.array([label_names.index(c.expect) for c in cases], dtype=int)
        return pred == want, None
    q = np.asarray(perturbed, dtype=float)
    if test.type == "INV":
        return pred == q.argmax(1), np.abs(q - probs).max(1)
    k = label_names.index(test.label)
    delta = q[:, k] - probs[:, k]
    sign = 1.0 if test.direction == "up" else -1.0
    return sign * delta >= -test.tolerance - 1e-12, delta


def evaluate_suite(suite: Suite, cases: dict[str, list[Case]], label_names: list[str], predict: Predict) -> dict:
    """Test name -> {"passed": "0110...", "worst": [...]} for one model; every distinct text is answered once."""
    texts = list(dict.fromkeys(t for cs in cases.values() for c in cs for t in (c.text, c.perturbed) if t is not None))
    answer = dict(zip(texts, predict(texts))) if texts else {}
    out = {}
    for test in suite.tests:
        cs = cases[test.name]
        if not cs:
            out[test.name] = {"passed": "", "worst": []}
            continue
        probs = [answer[c.text] for c in cs]
        pert = [answer[c.perturbed] for c in cs] if test.type != "MFT" else None
        passed, change = score(test, cs, label_names, probs, pert)
        entry = {"passed": "".join("1" if p else "0" for p in passed), "worst": []}
        if test.type == "INV":
            failed = [i for i in np.argsort(-change, kind="stable") if not passed[i]][:WORST_KEPT]
            entry["worst"] = [{"text": cs[i].text, "perturbed": cs[i].perturbed, "change": round(float(change[i]), 4),
                               "from": label_names[int(np.argmax(probs[i]))],
                               "to": label_names[int(np.argmax(pert[i]))]} for i in failed]
        out[test.name] = entry
    return out


def _bits(s: str) -> np.ndarray:
    return np.frombuffer(s.encode(), dtype=np.uint8) == ord("1")


def summarise(suite: Suite, cases: dict[str, list[Case]], results: dict[str, dict], resamples: int = 1000,
              seed: int = 0) -> dict:
    """Capabilities (in the suite's order) with per-model pass rate, interval, difference to the
    teacher and flag; and per-model overall figures. results: model -> evaluate_suite(...)."""
    caps: dict[str, list[Test]] = {}
    for t in suite.tests:
        caps.setdefault(t.capability, []).append(t)
    models = list(results)
    capabilities = []
    for cap, tests in caps.items():
        n = sum(len(cases[t.name]) for t in tests)
        entry = {"name": cap, "types": sorted({t.type for t in tests}), "tests": [t.name for t in tests],
                 "cases": n, "models": {}}
        passed = {m: np.concatenate([_bits(results[m][t.name]["passed"]) for t in tests]) if n else None
                  for m in models}
        for m in models:
            if not n:
                entry["models"][m] = {"pass_rate": None}
                continue
            lo, hi = stats.bootstrap_ci(np.ones(n, dtype=int), passed[m].astype(int), "accuracy", resamples, seed)
            e = {"pass_rate": float(passed[m].mean()), "ci95": [lo, hi]}
            if m != TEACHER and TEACHER in passed:
                dlo, dhi = stats.paired_bootstrap_diff(passed[m], passed[TEACHER], resamples, seed)
                e.update(diff_vs_teacher=float(passed[m].mean() - passed[TEACHER].mean()), diff_ci95=[dlo, dhi],
                         flagged=dhi < 0)
            entry["models"][m] = e
        capabilities.append(entry)
    overall = {}
    for m in models:
        rates = [c["models"][m]["pass_rate"] for c in capabilities if c["cases"]]
        by_label: dict[str, list[bool]] = {}
        for t in suite.tests:
            if t.type == "MFT" and cases[t.name]:
                by_label.setdefault(t.expect, []).extend(_bits(results[m][t.name]["passed"]).tolist())
        overall[m] = {"mean_pass_rate": float(np.mean(rates)) if rates else None,
                      "balanced_mft_pass_rate": float(np.mean([np.mean(v) for v in by_label.values()]))
                      if by_label else None,
                      "mft_pass_rate_by_label": {k: float(np.mean(v)) for k, v in by_label.items()}}
    return {"capabilities": capabilities, "overall": overall}


# ----------------------------------------------------------------------------- running a run's models

def served_predictor(run_dir: Path, name: str, max_length: int) -> tuple[str, Predict]:
    """(method, texts -> probabilities) for model `name` as the app serves it."""
    from . import inference  # torch, transformers and onnxruntime only when a model is checked
    from .inference.base import EVAL_BATCH as BATCH

    # Texts per forward pass (length-sorted, so little padding): the evaluation's batch. 1,568 tweets
    # through the seed odd student's fp32 `probabilities` (what a study checks: it runs before any
    # export) took 17.00 s in batches of 32 and 18.56 s in 256, the size used before (3 alternating
    # rounds, 2 threads); with the tests' tiny models the suite time did not change. The bf16 and
    # onnx copies that `distillora check` finds after an export were not timed.
    backend = inference.load_served(run_dir, name, RunDir(run_dir).model_dir(name))

    def predict(texts: list[str]) -> list[list[float]]:
        # Texts that the model's normaliser makes equal are one input to the model: each is answered once,
        # through one of its raw texts (the normaliser need not be idempotent, so the raw text, not the
        # normalised one, goes to `probabilities`). With the presets' `hate_speech_twitter` normaliser
        # most of the generic suite's perturbations (case, @user, #, URL, emoji, punctuation, spaces)
        # normalise back to their original sentence.
        keys = backend.normalizer.many(texts)
        first = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        order = sorted(first, key=len)  # similar lengths share a batch
        answer = {}
        for s in range(0, len(order), BATCH):
            chunk = order[s:s + BATCH]
            answer.update(zip(chunk, backend.probabilities([texts[first[k]] for k in chunk], max_length)))
        return [answer[k] for k in keys]

    return backend.method, predict


def check_models(predictors: dict[str, Callable[[], tuple[str, Predict]]], suite_specs: list[str],
                 label_names: list[str], validation_texts: list[str] | None, resamples: int = 1000,
                 seed: int = 0) -> dict:
    """Run every fitting suite on every model. predictors: model name -> a function that loads it and
    returns (served method, predict); models are loaded one at a time. Suites that do not fit the run's
    labels are recorded as skipped, with the reason."""
    suites = [load_suite(s) for s in suite_specs]  # every suite error before any model is loaded
    names = [s.name for s in suites]
    if len(set(names)) != len(names):
        raise UserError(f"check suites {suite_specs}: two suites share a name ({names}); rename one (`name:` key)")
    entries, generated = [], {}
    for s in suites:
        entry = {"name": s.name, "source": s.source, "digest": s.digest, "description": s.description}
        reason = s.fits(label_names)
        if reason is None and s.needs_validation() and not validation_texts:
            reason = "it samples the run's validation split, which is not available"
        if reason:
            log.info("check: suite %s skipped: %s", s.name, reason)
            entries.append({**entry, "skipped": reason})
            continue
        cases = generate(s, validation_texts)
        generated[s.name] = (s, cases)
        entries.append({**entry, "skipped": None, "cases": sum(map(len, cases.values())),
                        "seed_source": ("a seeded sample of the run's validation split" if s.needs_validation()
                                        else "the suite's templates"),
                        "tests": [_describe(t, len(cases[t.name])) for t in s.tests]})
    per_model: dict[str, dict] = {}
    served = {}
    for name, load in predictors.items():
        if not generated:
            break
        method, predict = load()
        served[name] = method
        for sname, (s, cases) in generated.items():
            log.info("check: %s on suite %s (%d cases)", name, sname, sum(map(len, cases.values())))
            per_model.setdefault(sname, {})[name] = evaluate_suite(s, cases, label_names, predict)
        del predict
    for entry in entries:
        if entry["skipped"] is None:
            s, cases = generated[entry["name"]]
            entry["results"] = per_model.get(entry["name"], {})
            entry.update(summarise(s, cases, entry["results"], resamples, seed))
    return {"label_names": list(label_names), "models": served, "resamples": resamples, "seed": seed,
            "flag_rule": "flagged: the 95% paired bootstrap interval of (student pass - teacher pass) lies below 0",
            "suites": entries}


def _describe(t: Test, n: int) -> dict:
    d = {"name": t.name, "capability": t.capability, "type": t.type, "cases": n}
    if t.type == "MFT":
        d["expect"] = t.expect
    else:
        d["perturb"] = t.perturb if isinstance(t.perturb, str) else "rewrite: " + " | ".join(t.perturb)
    if t.type == "DIR":
        d.update(direction=t.direction, label=t.label, tolerance=t.tolerance)
    return d


def run_checks(run_dir: Path, model_names: list[str], suite_specs: list[str], label_names: list[str],
               validation_texts: list[str] | None, max_length: int, resamples: int, seed: int) -> dict:
    """check_models on a run's saved models; writes and returns `<run_dir>/checks.json`."""
    run_dir = Path(run_dir)
    predictors = {n: (lambda n=n: served_predictor(run_dir, n, max_length)) for n in model_names}
    checks = check_models(predictors, suite_specs, label_names, validation_texts, resamples, seed)
    write_json(RunDir(run_dir).checks_file, checks)
    return checks


def for_study(out: Path, cfg, model_names: list[str], validation_texts: list[str]) -> None:
    """The checks `distillora run` makes (config `check.suites`); none, and no checks.json, when empty."""
    if not cfg.check.suites:
        RunDir(out).checks_file.unlink(missing_ok=True)
        return
    if cfg.data.text_pair_column is not None:
        log.info("check: skipped: the suites hold single sentences and this is a sentence-pair task")
        (Path(out) / "checks.json").unlink(missing_ok=True)
        return
    run_checks(out, model_names, cfg.check.suites, cfg.data.label_names, validation_texts, cfg.data.max_length,
               cfg.bootstrap_resamples, cfg.seed)


def check_run(run_dir: str | Path, suites: list[str] | None = None, data: str | None = None) -> dict:
    """`distillora check`: run `suites` (default: the run's `check.suites`) on every model of a finished
    run, write checks.json and regenerate report.md/report.html."""
    from .config import load_config
    from .report import write_report

    run = Path(run_dir)
    results = RunDir(run).results()
    cfg = load_config(RunDir(run).config, [f"data.source={data}"] if data else [])
    if cfg.data.text_pair_column is not None:
        raise UserError(f"{run}: a sentence-pair run (data.text_pair_column = {cfg.data.text_pair_column!r}); the "
                        f"behavioural suites hold single sentences, so they cannot check it")
    specs = suites or cfg.check.suites
    if not specs:
        raise UserError(f"{run}: its config has check.suites = []; name suites with --suite "
                        f"(e.g. --suite generic --suite hate_speech, or a YAML file)")
    needs_validation = any(load_suite(s).needs_validation() for s in specs)
    validation = None
    if needs_validation:
        from .data import as_saved, load_splits

        try:
            validation = load_splits(as_saved(cfg.data, RunDir(run).model_dir("teacher")), cfg.seed).validation.texts
        except UserError as e:
            raise UserError(f"{e}\n(the run's validation split is needed for the seed sentences of a suite; "
                            f"pass --data with the run's data directory)") from None
    checks = run_checks(run, [m.name for m in results.models], specs, results.dataset["label_names"],
                        validation, cfg.data.max_length, cfg.bootstrap_resamples, cfg.seed)
    write_report(run, results, cfg)
    return checks
