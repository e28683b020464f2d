"""Served weights are the trained ones (issue 11 I), and a model directory that cannot be loaded safely
is a message naming the file, not a traceback (issue 11 G)."""

import json
import shutil

import pytest

from distillora.cli import main
from distillora.errors import UserError
from distillora import inference
from distillora.integrity import DIGEST_FILE, sha256


@pytest.fixture()
def run_copy(tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out, ignore=shutil.ignore_patterns("exports.json"))
    return out


def test_every_saved_model_records_its_weight_digests(tiny_run):
    for m in json.loads((tiny_run / "results.json").read_text())["models"]:
        d = tiny_run / m["path"]
        files = json.loads((d / DIGEST_FILE).read_text())["files"]
        assert "model.safetensors" in files
        if m["name"] == "lora":
            assert "adapter/adapter_model.safetensors" in files
        for rel, digest in files.items():
            assert sha256(d / rel) == digest


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # in the last tensor's data, not the header: the file still loads
    path.write_bytes(bytes(data))


def test_a_changed_weight_file_is_refused_by_serve_predict_and_export(run_copy, capsys):
    weights = run_copy / "models" / "odd" / "model.safetensors"
    _flip_last_byte(weights)
    with pytest.raises(UserError, match="model.safetensors: sha256 .* differs"):
        inference.load(weights.parent)
    for argv in (["serve", "--run", str(run_copy)], ["predict", "--run", str(run_copy), "--model", "odd", "hi"],
                 ["export", "--run", str(run_copy), "--models", "odd"]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert str(weights) in err and "differs" in err and "Traceback" not in err


def test_damaged_or_pickled_weights_name_the_file_at_serve(run_copy, capsys):
    weights = run_copy / "models" / "odd" / "model.safetensors"
    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])  # the header length is garbage
    (weights.parent / DIGEST_FILE).unlink()  # as a directory saved before digests: the load itself must say it
    assert main(["serve", "--run", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert f"{weights}: not a readable safetensors file" in err and "Traceback" not in err

    import torch

    weights.unlink()
    torch.save({"w": torch.zeros(1)}, weights.parent / "pytorch_model.bin")
    assert main(["serve", "--run", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert "only pickled weights (pytorch_model.bin)" in err and str(weights.parent) in err
