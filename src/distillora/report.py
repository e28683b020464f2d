"""results.json -> report.md and plots. Every number in the report is read from `results`
(or the JSONL logs, for loss curves); nothing is typed by hand."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .config import StudyConfig  # noqa: E402
from .figures import save_figure  # noqa: E402
from .fileio import read_jsonl, write_text  # noqa: E402
from .rundir import Results, RunDir, selection_rule  # noqa: E402




def _mb(n: int | None) -> str:
    return "" if n is None else f"{n / 1e6:.1f} MB"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _plots(out: Path, results: Results) -> list[tuple[str, str]]:
    run = RunDir(out)
    made = []
    models = results["models"]

    fig, ax = plt.subplots(figsize=(7, 4))
    for m in models:
        # teacher.restarts: the kept member's log, which may be under another stage key than the model's name
        rows = [r for r in read_jsonl(run.log(m["train"].get("log_key") or m["name"])) if "loss" in r and "epoch" in r]
        if rows:
            ax.plot([r["epoch"] for r in rows], [r["loss"] for r in rows], label=m["name"])
    ax.set_xlabel("epoch"); ax.set_ylabel("training loss (per logging step)"); ax.set_title("Training loss")
    if ax.lines:
        ax.legend()
    made.append(("Training loss per logging step (distilled students' loss includes the KD and cosine terms, "
                 "so it is not comparable in level with cross-entropy)", save_figure(fig, out, "loss_curves.png")))

    names = results["dataset"]["label_names"]
    n = len(names)
    # one panel per model, grown with the number of labels: up to 3 panels a row once N > 2
    per_row = len(models) if n == 2 else min(3, len(models))
    rows = -(-len(models) // per_row)
    side = 2.6 if n == 2 else 1.2 + 0.42 * n
    fig, axes = plt.subplots(rows, per_row, figsize=(side * per_row, (side + 0.2) * rows), squeeze=False)
    for ax in axes.flat[len(models):]:
        ax.axis("off")
    for ax, m in zip(axes.flat, models):
        cm = m["test"]["confusion"]
        ax.imshow(cm, cmap="Blues")
        for i in range(n):
            for j in range(n):
                ax.text(j, i, cm[i][j], ha="center", va="center", fontsize=7 if n > 4 else 10)
        ax.set_xticks(range(n), names, fontsize=7, rotation=0 if n == 2 else 90)
        ax.set_yticks(range(n), names, fontsize=7)
        ax.set_title(m["name"], fontsize=9); ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
    made.append(("Confusion matrices on the test split", save_figure(fig, out, "confusion_matrices.png")))

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in models:
        ax.scatter(m["params_total"] / 1e6, m["test"]["accuracy"], label=f"{m['name']} (total)")
        ax.scatter(m["params_trainable"] / 1e6, m["test"]["accuracy"], marker="x", color="gray")
        ax.annotate(m["name"], (m["params_total"] / 1e6, m["test"]["accuracy"]), fontsize=8)
    ax.set_xscale("log"); ax.set_xlabel("parameters (millions; x = trainable)"); ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy against parameters")
    made.append(("Test accuracy against parameters (dots: total, crosses: trainable)",
                 save_figure(fig, out, "accuracy_vs_params.png")))
    fig, ax = plt.subplots(figsize=(5, 4.5))
    low = 1 / n  # a top-label confidence among n classes is at least 1/n
    ax.plot([low, 1], [low, 1], color="gray", linestyle=":", label="perfect")
    for m in models:
        bins = m.get("calibration", {}).get("test", {}).get("bins", [])
        if bins:
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o",
                    label=f"{m['name']} (ECE {m['calibration']['test']['ece']:.3f})")
    ax.set_xlabel("confidence of the predicted class"); ax.set_ylabel("accuracy on test")
    ax.set_title("Reliability on the test split"); ax.legend(fontsize=7)
    made.append(("Reliability diagram on the test split (10 confidence bins)", save_figure(fig, out, "reliability.png")))
    return made


def _ci(test: dict, key: str) -> str:
    ci = test.get("ci95", {}).get(key)
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def _sections(results: dict) -> list[str]:
    """Seeds, significance, calibration and threshold, per-category, development and extra test sets, data
    audit."""
    lines = []
    ms = results["models"]
    if any(m.get("seed_summary") for m in ms):
        n = ms[0]["seed_summary"]["test_accuracy"]["n"]
        lines += [f"## Across {n} seeds", "", "Every trainable stage was repeated per seed (same validation carve). "
                  "Mean ± sample standard deviation; the intervals in the first table are bootstrap intervals "
                  "of the primary seed's model.", "",
                  "| model | validation F1 | test accuracy | test balanced accuracy | test F1 (macro) | per-seed test accuracy |",
                  "|---|---|---|---|---|---|"]
        for m in ms:
            s = m["seed_summary"]
            f = lambda k: f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f}"  # noqa: E731
            per = ", ".join(f"{r['test']['accuracy']:.3f} (seed {r['seed']})" for r in m["seeds"])
            lines.append(f"| {m['name']} | {f('validation_f1_macro')} | {f('test_accuracy')} | "
                         f"{f('test_balanced_accuracy')} | {f('test_f1_macro')} | {per} |")
        lines.append("")
        by = {m["name"]: m for m in ms}
        for r in results.get("significance") or []:
            a, b = by[r["a"]]["seeds"], by[r["b"]]["seeds"]
            d = [x["test"]["accuracy"] - y["test"]["accuracy"] for x, y in zip(a, b)]
            consistent = all(v > 0 for v in d) or all(v < 0 for v in d)
            lines.append(f"- `{r['a']}` − `{r['b']}` test accuracy per seed: {', '.join(f'{v:+.3f}' for v in d)}: " +
                         ("the same sign for every seed." if consistent else
                          "the sign changes across seeds, so the McNemar verdict below (one seed, the primary) "
                          "speaks about those two trained models, not about the method."))
        lines.append("")
    sig = results.get("significance") or []
    if sig:
        lines += ["## Are the differences real?", "",
                  "McNemar's exact test on the test split (paired: the same examples), significance level 0.05. "
                  "Only the examples on which the two models disagree count.", "",
                  "| comparison | accuracy | only A right | only B right | p-value | verdict |", "|---|---|---|---|---|---|"]
        for r in sig:
            verdict = "significant" if r["significant"] else "not significant"
            lines.append(f"| {r['a']} vs {r['b']} | {r['accuracy_a']:.3f} vs {r['accuracy_b']:.3f} | "
                         f"{r['a_right_b_wrong']} | {r['a_wrong_b_right']} | {r['p_value']:.3g} | {verdict} |")
        lines.append("")
        for r in sig:
            if r["significant"]:
                better = r["a"] if r["accuracy_a"] > r["accuracy_b"] else r["b"]
                lines.append(f"- `{r['a']}` and `{r['b']}` differ significantly (p = {r['p_value']:.3g}); `{better}` is "
                             f"more accurate on this test split.")
            else:
                lines.append(f"- `{r['a']}` and `{r['b']}` are not significantly different on this test split "
                             f"(p = {r['p_value']:.3g}): the data does not show one to be better.")
        lines.append("")
    binary = len(results["dataset"]["label_names"]) == 2
    if any("calibration" in m for m in ms) and not binary:
        lines += ["## Calibration", "", "| model | top-label ECE (test) | top-label ECE (validation) |", "|---|---|---|"]
        lines += [f"| {m['name']} | {m['calibration']['test']['ece']:.3f} | {m['calibration']['validation_ece']:.3f} |"
                  for m in ms]
        lines += ["", "ECE of the predicted class's confidence (top-label). Threshold tuning is for binary tasks "
                      "only: with more than two labels the verdict is the argmax, so no threshold is reported.", ""]
    if any("calibration" in m for m in ms) and binary:
        lines += ["## Calibration and decision threshold", "",
                  "| model | ECE (test) | ECE (validation) | threshold chosen on validation | test accuracy at it | "
                  "test F1 at it | at 0.5: accuracy / F1 |", "|---|---|---|---|---|---|---|"]
        for m in ms:
            c, t = m["calibration"], m["threshold"]
            lines.append(f"| {m['name']} | {c['test']['ece']:.3f} | {c['validation_ece']:.3f} | {t['value']:.2f} | "
                         f"{t['test_accuracy']:.3f} | {t['test_f1_macro']:.3f} | {m['test']['accuracy']:.3f} / "
                         f"{m['test']['f1_macro']:.3f} |")
        lines += ["", "The 0.5 threshold stays the headline; the tuned threshold is shown beside it, chosen on "
                      "validation only.", ""]
    if any(m.get("per_category") for m in ms):
        cats = list(ms[0]["per_category"])
        positive = results["dataset"]["label_names"][1] if binary else None
        lines += ["## Per category (test split)", "", (f"Accuracy ({positive} recall) per category" if binary else
                                                       "Accuracy per category") +
                  "; categories of the reference data are LLM-generated (see its PROVENANCE.md).", "",
                  "| model | " + " | ".join(f"{c} (n={ms[0]['per_category'][c]['rows']})" for c in cats) + " |",
                  "|---|" + "---|" * len(cats)]
        for m in ms:
            cells = []
            for c in cats:
                e = m["per_category"][c]
                r = e["recall"].get(positive) if binary else None
                rec = "" if r is None else f" ({r:.2f})"
                cells.append(f"{e['accuracy']:.2f}{rec}")
            lines.append(f"| {m['name']} | " + " | ".join(cells) + " |")
        lines.append("")
    positive = results["dataset"]["label_names"][-1]
    if any(m.get("dev_sets") for m in ms):
        lines += ["## Development sets", "",
                  "Labelled sets of the kind the model will serve (`data.dev_sets`), never trained on; with "
                  "validation they choose the best student (next section). Figures of the primary seed's models."]
        lines += _sets_table(ms, "dev_sets", positive, binary)
    lines += _selection_lines(results)
    if any(m.get("extra_tests") for m in ms):
        lines += ["## Extra test sets"] + _sets_table(ms, "extra_tests", positive, binary)
    if results.get("audit"):
        lines += audit_lines(results["audit"], results["dataset"]["label_names"])
    return lines


def _selection_lines(results: dict) -> list[str]:
    """The figures the best student was chosen on (results.json files from before they were recorded:
    none)."""
    scores = results.get("best_student_scores")
    if not scores:
        return []
    sets = [k for k in next(iter(scores.values())) if k not in ("validation", "score")]
    metric = results["selection_metric"]
    lines = ["## Choosing the best student", "", f"Chosen on {selection_rule(results)}; the test split is not read. "
             f"{metric} from each model's stored probabilities.", "",
             "| student | validation | " + "".join(f"{d} | " for d in sets) + "score |",
             "|---|---|" + "---|" * len(sets) + "---|"]
    for name, s in scores.items():
        star = " (chosen)" if name == results.get("best_student") else ""
        lines.append(f"| {name}{star} | {s['validation']:.3f} | " + "".join(f"{s[d]:.3f} | " for d in sets)
                     + f"{s['score']:.3f} |")
    return lines + [""]


def _sets_table(ms: list[dict], key: str, positive: str, binary: bool) -> list[str]:
    """Every model's figures on each labelled set of `key` (extra_tests or dev_sets)."""
    lines = ["", "| model | set | rows | accuracy [95% CI] | balanced accuracy | F1 (macro) |"
             + (f" {positive} P / R |" if binary else ""), "|---|---|---|---|---|---|" + ("---|" if binary else "")]
    for m in ms:
        for name, r in (m.get(key) or {}).items():
            pr = f" {_pr(r, positive)} |" if binary else ""
            lines.append(f"| {m['name']} | {name} | {r['rows']} | {r['accuracy']:.3f}{_ci(r, 'accuracy')} | "
                         f"{r.get('balanced_accuracy', float('nan')):.3f} | {r['f1_macro']:.3f} |{pr}")
    return lines + [""]


def audit_lines(a: dict, names: list[str]) -> list[str]:
    lines = ["## Data audit", "", "| split | rows | " + " | ".join(names) + " | duplicates | tokens mean / p95 / max |",
             "|---|---|" + "---|" * len(names) + "---|---|"]
    for split, e in a["splits"].items():
        tok = e.get("tokens") or {}
        lines.append(f"| {split} | {e['rows']} | " + " | ".join(f"{e['labels'][n]} ({e['share'][n]:.0%})" for n in names)
                     + f" | {e['duplicates']} | {tok.get('mean', '')} / {tok.get('p95', '')} / {tok.get('max', '')} |")
    if a.get("dropped_empty"):
        lines += ["", f"Empty or null texts dropped: {a['dropped_empty']}."]
    lines += ["", "Split-shift indicators: share of rows containing each feature, per split and label.", "",
              "| split | label | uppercase | `#` | `@user` | URL |", "|---|---|---|---|---|---|"]
    for split, per in a["shift"].items():
        for label, v in per.items():
            lines.append(f"| {split} | {label} | {v['uppercase']:.1%} | {v['hashtag']:.1%} | {v['at_user']:.1%} | {v['url']:.1%} |")
    lines += ["", "Overlap between splits: " + "; ".join(f"{k}: {v['exact']} exact, {v['normalised']} normalised"
                                                     for k, v in a["overlap"].items()) + ".", ""]
    return lines + [f"- {f}" for f in a.get("findings", [])] + [""]


def _pr(test: dict, label: str) -> str:
    """`precision / recall` of `label` (per_class, or the keys of a results.json from before them)."""
    c = test.get("per_class", {}).get(label) or {"precision": test.get("precision_hate"), "recall": test.get("recall_hate")}
    return f"{c['precision']:.2f} / {c['recall']:.2f}"


def per_class_lines(results: dict) -> list[str]:
    """Per-class F1 (and support) of every model on the test split: the table of a task with more than two
    labels, where one positive class's precision and recall would not describe the model."""
    names = results["dataset"]["label_names"]
    ms = results["models"]
    support = ms[0]["test"]["per_class"]
    lines = ["## Per class (test split)", "", "F1 per class; recall in brackets. n: test rows of the class.", "",
             "| model | " + " | ".join(f"{n} (n={support[n]['support']})" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for m in ms:
        pc = m["test"]["per_class"]
        lines.append(f"| {m['name']} | " + " | ".join(f"{pc[n]['f1']:.2f} ({pc[n]['recall']:.2f})" for n in names) + " |")
    return lines + [""]


def _table(results: dict) -> list[str]:
    names = results["dataset"]["label_names"]
    binary = len(names) == 2
    pr_head = f" {names[1]} P / R |" if binary else ""
    lines = ["| model | teacher layers | training loss | val F1 | test accuracy [95% CI] | test balanced accuracy [95% CI] "
             f"| test F1 (macro) [95% CI] |{pr_head} trainable params (%) | size on disk | training time | throughput |",
             "|---|---|---|---|---|---|---|" + ("---|" if binary else "") + "---|---|---|---|"]
    best = results.get("best_student")
    for m in results["models"]:
        t = m["test"]
        pct = 100 * m["params_trainable"] / m["params_total"]
        layers = ",".join(map(str, m["teacher_layers"]))
        name = f"**{m['name']}** (best student)" if m["name"] == best else m["name"]
        loss = "" if m["train"]["loss"] is None else f"{m['train']['loss']:.4f}"
        size = _mb(m["size_bytes"]) + (f" (adapter {_mb(m['adapter_size_bytes'])})" if m.get("adapter_size_bytes") else "")
        lines.append(
            f"| {name} | {layers} | {loss} | {m['validation']['f1_macro']:.3f} | {t['accuracy']:.3f}{_ci(t, 'accuracy')} "
            f"| {t['balanced_accuracy']:.3f}{_ci(t, 'balanced_accuracy')} | {t['f1_macro']:.3f}{_ci(t, 'f1_macro')} "
            + (f"| {_pr(t, names[1])} " if binary else "") + f"| {m['params_trainable'] / 1e6:.2f}M ({pct:.2f}%) "
            f"| {size} | {_duration(m['train']['seconds'])} | {m['inference']['examples_per_s']:.0f} ex/s |")
    return lines


def analysis(results: Results, bars: dict | None = None) -> list[str]:
    """Plain-language findings computed from the numbers, including every shortfall against `bars`
    (config `quality_bars`; None: figures without verdicts). Models are found by kind (rundir.KINDS),
    never by name."""
    from .config import QUALITY_BARS

    bars = None if bars is None else {**QUALITY_BARS, **bars}  # a bar left out keeps the reference value
    out = []
    teacher = next(iter(results.of_kind("teacher")), None)
    if teacher:
        acc = teacher["test"]["accuracy"]
        names = results["dataset"]["label_names"]
        if len(names) == 2:
            p, r = _pr(teacher["test"], names[1]).split(" / ")
            detail = f"{names[1]} precision {p}, recall {r}"
        else:
            pc = teacher["test"]["per_class"]
            weakest = min(names, key=lambda n: pc[n]["f1"])
            detail = f"macro-F1 {teacher['test']['f1_macro']:.3f}; weakest class `{weakest}`, F1 {pc[weakest]['f1']:.2f}"
        bar = "" if bars is None else (f", which {'meets' if acc >= bars['teacher_accuracy'] else 'falls short of'} "
                                       f"the target of {bars['teacher_accuracy']:.2f}")
        out.append(f"- The teacher reaches test accuracy {acc:.3f}{bar} ({detail}).")
        for m in results.of_kind("distilled"):
            ratio = m["test"]["accuracy"] / acc if acc else 0.0
            bar = "" if bars is None else (f", which {'meets' if ratio >= bars['student_ratio'] else 'falls short of'} "
                                           f"the {100 * bars['student_ratio']:.0f}% target")
            speed = m["inference"]["examples_per_s"] / teacher["inference"]["examples_per_s"]
            out.append(f"- Student `{m['name']}` (teacher layers {m['teacher_layers']}) keeps {100 * ratio:.1f}% of the "
                       f"teacher's test accuracy ({m['test']['accuracy']:.3f}){bar}, with "
                       f"{m['params_total'] / teacher['params_total']:.0%} of its parameters and "
                       f"{speed:.2f}x its measured throughput.")
    students = results.of_kind("distilled")
    if len(students) == 2:
        a, b = students
        d = a["test"]["accuracy"] - b["test"]["accuracy"]
        n = sum(map(sum, a["test"]["confusion"]))
        sig = next((r for r in results.get("significance") or [] if {r["a"], r["b"]} == {a["name"], b["name"]}), None)
        verdict = ("" if sig is None else
                   f"; McNemar's exact test: p = {sig['p_value']:.3g}, "
                   f"{'a significant' if sig['significant'] else 'not a significant'} difference at 0.05")
        out.append(f"- `{a['name']}` minus `{b['name']}` test accuracy: {d:+.3f} ({abs(d) * n:.0f} of {n} examples){verdict}.")
    for lo, ba in [(lo, ba) for lo in results.of_kind("lora") for ba in results.of_kind("baseline")]:
        ratio = lo["test"]["accuracy"] / ba["test"]["accuracy"] if ba["test"]["accuracy"] else 0.0
        share = lo["params_trainable"] / lo["params_total"]
        bar = ""
        if bars is not None:
            ok = (ratio >= bars["lora_ratio"] and share <= bars["lora_max_trainable"]
                  and lo["test"]["accuracy"] >= bars["lora_accuracy"])
            bar = (f": the target (at least {bars['lora_accuracy']:.2f} and {100 * bars['lora_ratio']:.0f}% of the "
                   f"baseline, at most {100 * bars['lora_max_trainable']:.0f}% trainable) is {'met' if ok else 'not met'}")
        out.append(f"- LoRA student `{lo['name']}` reaches test accuracy {lo['test']['accuracy']:.3f}, {100 * ratio:.1f}% of "
                   f"the baseline's, with {100 * share:.2f}% of its parameters trainable{bar}.")
    if results.get("best_student"):
        out.append(f"- Best student, chosen on {selection_rule(results)}: `{results['best_student']}`.")
    ds = results["dataset"]
    out.append(f"- Test split: {ds['rows']['test']} rows, label counts {ds['label_counts']['test']}; train "
               f"{ds['label_counts']['train']}. If the test split comes from another source than train (as for "
               f"the reference data), its figures measure out-of-distribution transfer.")
    return out


def write_report(out: Path, results: Results | dict, cfg: StudyConfig) -> None:
    out = Path(out)
    run = RunDir(out)
    if not isinstance(results, Results):
        results = Results.from_dict(results)
    plots = _plots(out, results)
    ds = results["dataset"]
    lines = [f"# distillora report: {results['name']}", ""]
    lines += _table(results)
    if len(ds["label_names"]) > 2:
        lines += [""] + per_class_lines(results)
    lines += ["", "Training loss is the mean over the last epoch of each model's own objective. Throughput is "
              "test-split inference with length-sorted batches, measured on this machine. Hyper-parameters and "
              "epochs were selected on the validation split; the test split was read once per model.", ""]
    for m in results["models"]:
        if "soup" in (m.get("objective") or ""):  # teacher.soup: say so, and why it shows no training loss
            lines += [f"The {m['name']} is {m['objective'].split('; ', 1)[1]} (each fine-tuned on all weights "
                      f"with its own training seed), averaged weight by weight: it has no training loss of its "
                      f"own, and its loss curve is the first member's.", ""]
        elif "restarts" in m["train"]:  # teacher.restarts: which member was kept, and on what
            kept = [r for r in m["train"]["restarts"] if r["kept"]][0]
            scores = ", ".join(f"{r['selection']['score']:.4f}" for r in m["train"]["restarts"])
            sets = [k for k in kept["selection"] if k != "score"]
            lines += [f"The {m['name']} is the best of {len(m['train']['restarts'])} teachers fine-tuned with "
                      f"training seeds {', '.join(str(r['seed']) for r in m['train']['restarts'])}, each scored on "
                      f"{' and '.join(sets)} (the mean of its figures there; never the test split; scores {scores}): "
                      f"the one with training seed {kept['seed']} was kept, and its loss curve is shown. Its "
                      f"training time counts every restart.", ""]
        probe = m["train"].get("linear_probe")
        if probe:  # teacher.linear_probe_epochs (LP-FT)
            lines += [f"The {m['name']}'s new head was first trained alone on the frozen pretrained body ("
                      f"{probe['steps']} steps, a linear probe: LP-FT; validation accuracy after it "
                      f"{probe['validation']['accuracy']:.3f}); then every weight was fine-tuned from that head. "
                      f"Its training time includes the probe's {probe['seconds']:.1f} s.", ""]
    lines += ["## Data", "",
              f"- Source: `{ds['source']}`; rows used: {ds['rows']}; dropped empty texts: {ds['dropped_empty']}; "
              f"exact duplicate texts: {ds['duplicates']}; labels: {ds['label_names']}."]
    if ds.get("extra_train_rows"):  # data.extra_train: counted in rows.train, never in validation or test
        lines += [f"- Extra training rows (`data.extra_train`, added after the validation carve and counted in "
                  f"train above): " + "; ".join(f"`{p}`: {n}" for p, n in ds["extra_train_rows"].items()) + "."]
    lines += [""]
    lines += ["## Plots", ""]
    for caption, path in plots:
        lines += [f"![{caption}]({path})", "", f"*{caption}*", ""]
    lines += ["## Analysis", ""] + analysis(results, cfg.quality_bars) + [""]
    lines += _sections(results)
    from .report_checks import section as checks_section  # read from checks.json when the run has one

    lines += checks_section(out)

    from .sweep_report import section as sweep_section

    lines += sweep_section(out)  # empty unless `distillora sweep` has written sweep.json
    md = "\n".join(lines)
    write_text(run.report_md, md)
    write_text(run.report_html, to_html(md, out, results.name))


def to_html(md: str, out: Path, title: str) -> str:
    """One self-contained HTML file: the same markdown rendered, plots embedded as data URIs."""
    import base64
    import html as html_lib
    import re

    import markdown

    body = markdown.markdown(md, extensions=["tables"])

    def embed(m):
        path = out / m.group(1)
        if not path.is_file():
            return m.group(0)
        return f'src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"'

    body = re.sub(r'src="(plots/[^"]+\.png)"', embed, body)
    style = ("body{font-family:system-ui,sans-serif;max-width:75rem;margin:auto;padding:1rem}"
             "table{border-collapse:collapse;font-size:.85rem}td,th{border:1px solid #ccc;padding:.2rem .5rem}"
             "img{max-width:100%}")
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html_lib.escape(title)}</title>"
            f"<style>{style}</style></head><body>{body}</body></html>\n")
