"""Writing a report plot, shared by the report's sections (report, report_checks, sweep_report); apart
from report.py so that the sections it imports need not import it back."""

from __future__ import annotations

from pathlib import Path

from .rundir import RunDir


def save_figure(fig, out: Path, name: str) -> str:
    """Lay out, write `<out>/plots/<name>` at the report's resolution, close; return the relative path."""
    import matplotlib.pyplot as plt

    run = RunDir(out)
    fig.tight_layout()
    run.plots_dir.mkdir(exist_ok=True)
    fig.savefig(run.plot(name), dpi=110)
    plt.close(fig)
    return run.plot_ref(name)
