"""Writing a report plot, shared by the report's sections (report, report_checks, sweep_report); apart
from report.py so that the sections it imports need not import it back."""

from __future__ import annotations

from pathlib import Path


def save_figure(fig, out: Path, name: str) -> str:
    """Lay out, write `<out>/plots/<name>` at the report's resolution, close; return the relative path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    (Path(out) / "plots").mkdir(exist_ok=True)
    fig.savefig(Path(out) / "plots" / name, dpi=110)
    plt.close(fig)
    return f"plots/{name}"
