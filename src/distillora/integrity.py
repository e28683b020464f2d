"""Served weights are the trained ones: a sha256 digest of every weight file of a saved model
directory is written beside the weights (`weights.sha256.json`) when its stage saves it, and checked
before the directory is loaded to predict, serve or export. A model directory that cannot be loaded
safely (only pickled `.bin` weights, a damaged safetensors file) is a `UserError` naming the file."""

from __future__ import annotations

import logging
from pathlib import Path

from .errors import UserError
from .fileio import read_json, sha256, write_json

log = logging.getLogger("distillora")
DIGEST_FILE = "weights.sha256.json"


def weight_files(model_dir: Path) -> list[Path]:
    """Every safetensors file under `model_dir` (a LoRA directory holds its adapter's too)."""
    return sorted(p for p in Path(model_dir).rglob("*.safetensors") if p.is_file())


def record(model_dir: Path) -> dict:
    """Write `model_dir/weights.sha256.json`: {relative path: sha256} of its weight files."""
    model_dir = Path(model_dir)
    digests = {p.relative_to(model_dir).as_posix(): sha256(p) for p in weight_files(model_dir)}
    write_json(model_dir / DIGEST_FILE, {"algorithm": "sha256", "files": digests})
    return digests


def _redo(model_dir: Path) -> str:
    run, name = model_dir.parent.parent, model_dir.name
    return (f"restore the file, or train that model again: delete {run / 'stages' / (name + '.json')} and run "
            f"`distillora run` with the same --output")


def verify(model_dir: Path) -> None:
    """Raise UserError unless every weight file of `model_dir` matches the digest recorded when it was
    saved. A directory saved before digests were recorded is loaded with a warning."""
    model_dir = Path(model_dir)
    f = model_dir / DIGEST_FILE
    if not f.is_file():
        log.warning("%s: no %s (saved by an older distillora); its weights cannot be checked", model_dir, DIGEST_FILE)
        return
    try:
        files = read_json(f)["files"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise UserError(f"{f}: damaged (not the JSON distillora writes); {_redo(model_dir)}") from None
    for rel, want in files.items():
        p = model_dir / rel
        if not p.is_file():
            raise UserError(f"{p}: missing (its digest is recorded in {f}); {_redo(model_dir)}")
        got = sha256(p)
        if got != want:
            raise UserError(f"{p}: sha256 {got[:16]}... differs from the {want[:16]}... recorded when it was "
                            f"trained: the file was changed or damaged; {_redo(model_dir)}")


def check_loadable(model_dir: Path) -> None:
    """Raise UserError, naming the file and the fix, unless `model_dir` holds readable safetensors
    weights (only pickled `.bin` weights are refused: loading them can run code)."""
    model_dir = Path(model_dir)
    top = sorted(model_dir.glob("*.safetensors"))
    if not top and not (model_dir / "model.safetensors.index.json").is_file():
        bins = sorted(p.name for p in model_dir.glob("*.bin"))
        if bins:
            raise UserError(f"{model_dir}: only pickled weights ({', '.join(bins)}), which distillora does not load "
                            f"(unpickling can run code); save the model with save_pretrained(..., "
                            f"safe_serialization=True), or {_redo(model_dir)}")
        raise UserError(f"{model_dir}: no model.safetensors; {_redo(model_dir)}")
    from safetensors import safe_open

    for p in top:
        try:
            with safe_open(str(p), framework="pt") as st:
                st.keys()
        except Exception as e:  # safetensors raises its own SafetensorError (no public base) or OSError
            raise UserError(f"{p}: not a readable safetensors file ({str(e).splitlines()[0][:200]}); the file is "
                            f"damaged or truncated; {_redo(model_dir)}") from None
