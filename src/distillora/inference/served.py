"""Which copy of a run's model is served, as `distillora export` recorded it in exports.json, and where
its onnx copies live. Read here, by predict, the web app and the checks; written by `export`."""

from __future__ import annotations

from pathlib import Path

from ..fileio import read_json

EXPORTS_FILE = "exports.json"


def stage_fingerprint(run_dir: str | Path, name: str) -> str | None:
    """The fingerprint of the stage that trained model `name` (changes when it is retrained)."""
    f = Path(run_dir) / "stages" / f"{name}.json"
    return read_json(f).get("fingerprint") if f.exists() else None


def copy_dir(run_dir: str | Path, name: str, method: str) -> Path:
    """Where the stored copy (onnx) of model `name` built by `method` lives."""
    return Path(run_dir) / "exports" / name / method


def served_method(run_dir: str | Path, name: str, known: tuple[str, ...]) -> str:
    """The method `predict` and the web app use for model `name`: the export that passed for the model
    as it is now on disk (same stage fingerprint), else fp32. A method not in `known` (a later
    distillora's) is fp32 too."""
    f = Path(run_dir) / EXPORTS_FILE
    if not f.exists():
        return "fp32"
    entry = read_json(f).get("models", {}).get(name, {})
    if entry.get("fingerprint") != stage_fingerprint(run_dir, name):
        return "fp32"  # the model was retrained after this export was measured
    serve = entry.get("serve", "fp32")
    return serve if serve in known else "fp32"
