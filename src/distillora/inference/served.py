"""Which copy of a run's model is served, as `distillora export` recorded it in exports.json, and where
its onnx copies live. Read here, by predict, the web app and the checks; written by `export`. Paths and
records come from `RunDir`."""

from __future__ import annotations

from pathlib import Path

from ..rundir import RunDir


def stage_fingerprint(run_dir: str | Path, name: str) -> str | None:
    """The fingerprint of the stage that trained model `name` (changes when it is retrained)."""
    return RunDir(run_dir).stage_fingerprint(name)


def copy_dir(run_dir: str | Path, name: str, method: str) -> Path:
    """Where the stored copy (onnx) of model `name` built by `method` lives."""
    return RunDir(run_dir).copy_dir(name, method)


def served_method(run_dir: str | Path, name: str, known: tuple[str, ...]) -> str:
    """The method `predict` and the web app use for model `name`: the export that passed for the model
    as it is now on disk (same stage fingerprint), else fp32. A method not in `known` (a later
    distillora's) is fp32 too."""
    run = RunDir(run_dir)
    entry = run.exports().models.get(name)
    if entry is None or entry.fingerprint != run.stage_fingerprint(name):
        return "fp32"  # none, or the model was retrained after this export was measured
    return entry.serve if entry.serve in known else "fp32"
