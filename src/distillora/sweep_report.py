"""sweep.json -> the report's sweep section: a table, the accuracy-versus-cost plot and the smallest
student within 1 point of the teacher. Every number is read from sweep.json."""

from __future__ import annotations

from pathlib import Path

from .rundir import RunDir


def _ci(split: dict, key: str) -> str:
    lo, hi = split["ci95"][key]
    return f"{split[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def plot(out: Path, sweep: dict) -> str:
    """plots/sweep.png: test accuracy (95% CI bars) against fp32 batch-1 latency and against parameters;
    the teacher as a dashed reference line; Pareto-optimal students (on validation) as red stars, named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    students, teacher = sweep["students"], sweep["teacher"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    panels = (("latency", "fp32 latency at batch 1, p50 (ms)", lambda m: m["latency"]["fp32_b1_p50_ms"]),
              ("params", "parameters (millions)", lambda m: m["params_total"] / 1e6))
    for ax, (axis, label, x) in zip(axes, panels):
        for m in students:
            acc, (lo, hi) = m["test"]["accuracy"], m["test"]["ci95"]["accuracy"]
            front = m["pareto"][axis]
            ax.errorbar(x(m), acc, yerr=[[acc - lo], [hi - acc]], fmt="*" if front else "o",
                        color="tab:red" if front else "tab:gray", markersize=11 if front else 5, capsize=2)
            if front:
                ax.annotate(m["name"].removeprefix("sweep-").replace("-", ","), (x(m), acc), fontsize=7,
                            xytext=(4, 4), textcoords="offset points")
        t = teacher["test"]["accuracy"]
        ax.axhline(t, color="tab:blue", linestyle="--", linewidth=1)
        ax.axhspan(*teacher["test"]["ci95"]["accuracy"], color="tab:blue", alpha=0.08)
        ax.annotate(f"teacher {t:.3f} ({x(teacher):.3g})", (0.01, t), xycoords=("axes fraction", "data"),
                    fontsize=8, color="tab:blue", xytext=(0, 3), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (95% bootstrap CI)")
    axes[0].set_title("Accuracy against single-sentence latency")
    axes[1].set_title("Accuracy against size")
    from .figures import save_figure

    return save_figure(fig, out, "sweep.png")


def section(out: Path) -> list[str]:
    """The report's sweep section, or nothing if the run has no sweep.json."""
    sweep = RunDir(out).sweep_record()
    if sweep is None:
        return []
    students, teacher = sweep["students"], sweep["teacher"]
    lines = ["## Layer sweep: which layers, and how many", "",
             f"`distillora sweep`: {len(students)} distinct students distilled from the {sweep['teacher_depth']}-layer "
             f"teacher with this run's recipe; {sweep['selection']}. Intervals are 95% bootstrap intervals. Latency "
             f"is the median over {sweep['timing']['b1_sentences']} single sentences (tokenising included) and "
             f"throughput is at batch 32, all timed in {sweep['timing']['method']} "
             f"({sweep['timing']['threads']} threads). ★ marks students on the Pareto front of validation accuracy "
             "against latency (L) or parameters (P).", ""]
    if not students:
        lines += ["No sweep student has finished yet.", ""]
    else:
        lines += ["| student | strategies | teacher layers | params | size | val acc | val bal. acc | test acc | "
                  "test bal. acc | fp32 b1 ms | served b1 ms | b32 ex/s | Pareto | training |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for m in [teacher] + students:
            lat = m["latency"]
            front = "".join(k for k, a in (("L", "latency"), ("P", "params")) if m.get("pareto", {}).get(a))
            train = f"{m['train']['seconds']:.0f} s" if "train" in m else ""
            lines.append(
                f"| {m['name']} | {', '.join(m.get('strategies', ['reference']))} | {','.join(map(str, m['teacher_layers']))} "
                f"| {m['params_total'] / 1e6:.1f}M | {m['size_bytes'] / 1e6:.0f} MB | {_ci(m['validation'], 'accuracy')} "
                f"| {_ci(m['validation'], 'balanced_accuracy')} | {_ci(m['test'], 'accuracy')} "
                f"| {_ci(m['test'], 'balanced_accuracy')} | {lat['fp32_b1_p50_ms']:.1f} "
                f"| {lat['served_b1_p50_ms']:.1f} ({lat['served_as']}) | {lat['fp32_b32_examples_per_s']:.0f} "
                f"| {'★ ' + front if front else ''} | {train} |")
        lines.append("")
        if all(m["latency"]["served_as"] == "fp32" for m in students):
            lines += ["No export exists for the sweep students, so the served copy is the fp32 model and its "
                      "latency is the fp32 figure; `distillora export --run RUN --models NAME` builds and measures "
                      "the faster copies.", ""]
        caption = ("Test accuracy against fp32 batch-1 latency (left) and parameters (right), with 95% CI bars; "
                   "dashed line and band: the teacher; red stars: Pareto-optimal on validation accuracy, named by "
                   "their teacher layers")
        lines += [f"![{caption}]({plot(Path(out), sweep)})", "", f"*{caption}*", ""]
        best = next((m for m in students if m["name"] == sweep.get("smallest_within_1_point")), None)
        tv = teacher["validation"]["accuracy"]
        if best:
            lines.append(f"- Smallest student within 1 point of the teacher on validation ({tv:.3f}): `{best['name']}` "
                         f"(teacher layers {best['teacher_layers']}, {best['params_total'] / 1e6:.1f}M parameters, "
                         f"{best['params_total'] / teacher['params_total']:.0%} of the teacher's), validation accuracy "
                         f"{best['validation']['accuracy']:.3f}; on test: accuracy {_ci(best['test'], 'accuracy')}, "
                         f"balanced accuracy {_ci(best['test'], 'balanced_accuracy')} (teacher "
                         f"{_ci(teacher['test'], 'accuracy')}), {best['latency']['fp32_b1_p50_ms']:.1f} ms per sentence "
                         f"against the teacher's {teacher['latency']['fp32_b1_p50_ms']:.1f} ms.")
        else:
            lines.append(f"- No sweep student comes within 1 point of the teacher's validation accuracy ({tv:.3f}).")
    for m in sweep.get("not_trained", []):
        lines.append(f"- `{m['name']}` (layers {m['teacher_layers']}, {', '.join(m['strategies'])}): {m['reason']}.")
    return lines + [""]
