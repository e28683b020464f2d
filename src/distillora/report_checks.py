"""checks.json -> the report's "Behavioural checks" section and its heat map. Every number is read from
the checks file that `distillora.check` wrote."""

from __future__ import annotations

import re
from html import escape
from pathlib import Path

from .rundir import RunDir

FLAG = "▼"


def _text(t: str) -> str:
    """A sentence shown safely in markdown (and in the HTML made from it)."""
    t = escape(t, quote=False).replace("\n", "\\n").replace("\t", "\\t")
    return re.sub(r"([\\`*_\[\]|#])", r"\\\1", t)


def _rate(e: dict) -> str:
    if e.get("pass_rate") is None:
        return "–"
    return f"{e['pass_rate']:.2f} [{e['ci95'][0]:.2f}, {e['ci95'][1]:.2f}]" + (f" {FLAG}" if e.get("flagged") else "")


def _pct(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def heatmap(out: Path, checks: dict) -> str | None:
    """plots/checks_heatmap.png: pass rate per capability (rows) and model (columns), one panel per suite."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    suites = [s for s in checks["suites"] if not s.get("skipped")]
    if not suites:
        return None
    models = list(checks["models"])
    heights = [max(2, 0.45 * len(s["capabilities"]) + 1.2) for s in suites]
    fig, axes = plt.subplots(len(suites), 1, figsize=(1.3 * len(models) + 4, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, s in zip(axes[:, 0], suites):
        caps = s["capabilities"]
        grid = np.array([[np.nan if c["models"][m].get("pass_rate") is None else c["models"][m]["pass_rate"]
                          for m in models] for c in caps])
        ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        for i, c in enumerate(caps):
            for j, m in enumerate(models):
                e = c["models"][m]
                if e.get("pass_rate") is not None:
                    ax.text(j, i, f"{e['pass_rate']:.2f}" + (f"\n{FLAG}" if e.get("flagged") else ""),
                            ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(models)), models, fontsize=8)
        ax.set_yticks(range(len(caps)), [f"{c['name']} ({'/'.join(c['types'])}, n={c['cases']})" for c in caps],
                      fontsize=8)
        ax.set_title(f"suite {s['name']}: pass rate per capability ({FLAG}: below the teacher beyond the 95% CI)",
                     fontsize=9)
    from .figures import save_figure

    return save_figure(fig, out, "checks_heatmap.png")


def section(out: Path) -> list[str]:
    """The report's lines for `<out>/checks.json`; none when the run has no checks."""
    checks = RunDir(out).checks()
    if checks is None:
        return []
    models = list(checks["models"])
    lines = ["## Behavioural checks", "",
             "CheckList-style tests (`distillora check`): MFT cases have a fixed expected label; INV cases pass when "
             "a perturbation leaves the predicted label unchanged; DIR cases pass unless p(label) moves the wrong way "
             "by more than the test's tolerance. Pass rate per capability over its generated cases, with a 95% "
             f"percentile bootstrap interval ({checks['resamples']} resamples of the cases). {FLAG} marks a student "
             "whose capability falls below the teacher's beyond chance: the 95% bootstrap interval of the paired "
             "difference (student − teacher, same cases) lies entirely below 0. Models as served: " +
             ", ".join(f"{m} ({meth})" for m, meth in checks["models"].items()) + ".", ""]
    img = heatmap(out, checks)
    if img:
        lines += [f"![Behavioural checks: pass rate per capability]({img})", "",
                  "*Behavioural checks: pass rate per capability and model*", ""]
    for s in checks["suites"]:
        if s.get("skipped"):
            lines += [f"- Suite `{s['name']}` skipped: {s['skipped']}.", ""]
            continue
        lines += [f"### Suite `{s['name']}` ({s['cases']} cases; {s['source']}; seed sentences: {s['seed_source']})",
                  "", "| capability | type | cases | " + " | ".join(models) + " |",
                  "|---|---|---|" + "---|" * len(models)]
        for c in s["capabilities"]:
            lines.append(f"| {_text(c['name'])} | {'/'.join(c['types'])} | {c['cases']} | "
                         + " | ".join(_rate(c["models"][m]) for m in models) + " |")
        ov = s["overall"]
        lines.append("| **mean over capabilities** | | | " + " | ".join(_pct(ov[m]["mean_pass_rate"]) for m in models) + " |")
        if any(ov[m]["balanced_mft_pass_rate"] is not None for m in models):
            lines.append("| **MFT balanced over expected labels** | | | "
                         + " | ".join(_pct(ov[m]["balanced_mft_pass_rate"]) for m in models) + " |")
        lines.append("")
        flags = [(c, m) for c in s["capabilities"] for m in models if c["models"][m].get("flagged")]
        for c, m in flags:
            e, t = c["models"][m], c["models"]["teacher"]
            lines.append(f"- {FLAG} `{m}` loses **{_text(c['name'])}**: pass rate {e['pass_rate']:.3f} vs the teacher's "
                         f"{t['pass_rate']:.3f} (difference {e['diff_vs_teacher']:+.3f}, 95% CI "
                         f"[{e['diff_ci95'][0]:+.3f}, {e['diff_ci95'][1]:+.3f}]).")
        if not flags and "teacher" in models:
            lines.append("- No capability where a student falls below the teacher beyond the 95% interval.")
        lines.append("")
        worst = []
        for t in s["tests"]:
            if t["type"] != "INV":
                continue
            fails = sorted(((w, m) for m in models for w in s["results"][m][t["name"]]["worst"]),
                           key=lambda x: -x[0]["change"])[:3]
            if fails:
                worst.append(f"- *{_text(t['name'])}*: " + "; ".join(
                    f"`{m}` {w['from']} → {w['to']} (largest probability change {w['change']:.2f}): "
                    f"\"{_text(w['text'])}\" → \"{_text(w['perturbed'])}\"" for w, m in fails))
        if worst:
            lines += ["Worst invariance failures (largest probability change, any model):", ""] + worst + [""]
    return lines
