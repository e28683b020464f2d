"""The `smoke` preset on the shared data, as a user runs it (subprocess, repository root)."""

import json
import subprocess
import sys
import time

import pytest

from conftest import REPO


@pytest.mark.slow
def test_smoke_preset_on_shared_data(tmp_path, shared_data):
    out = tmp_path / "smoke"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "distillora", "run", "--config", "configs/smoke.yaml",
                           "--output", str(out), "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((out / "results.json").read_text())
    assert [m["name"] for m in r["models"]] == ["teacher", "odd", "even", "lora", "baseline"]
    assert [m["kind"] for m in r["models"]] == ["teacher", "distilled", "distilled", "lora", "baseline"]
    assert r["dataset"]["rows"]["test"] == 1000 and r["dataset"]["dropped_empty"]["train"] in (0, 1)
    for m in r["models"]:
        c = m["test"]["confusion"]
        assert sum(map(sum, c)) == 1000 and m["test"]["accuracy"] == pytest.approx((c[0][0] + c[1][1]) / 1000)
    print(f"smoke preset wall time: {wall:.0f} s")
