"""`stage_workers`: the students train at once in forked processes once the teacher is trained."""

import json
import time

import numpy as np
import pandas as pd
import pytest
import torch

from distillora import study
from distillora.config import load_config
from distillora.errors import UserError
from distillora.rundir import RunDir
from distillora.runlock import LOCK_NAME


def test_the_split_of_the_cores(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert study.stage_workers("auto", 4) == (2, 1)
    assert study.stage_workers(1, 4) == (1, 2)
    assert study.stage_workers("auto", 1) == (1, 2)  # nothing to run beside it
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert study.stage_workers("auto", 4) == (4, 2)
    assert study.stage_workers(2, 4) == (2, 4)
    assert study.stage_workers("auto", 3) == (3, 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert study.stage_workers("auto", 4) == (1, 1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert study.stage_workers("auto", 4) == (1, 8)


def test_the_setting_is_validated():
    for bad in ("stage_workers=0", "stage_workers=many", "stage_workers=true"):
        with pytest.raises(UserError, match="stage_workers"):
            load_config(None, [bad])
    assert load_config(None, ["stage_workers=3"]).stage_workers == 3


def _config(root, teacher_dir, shared_data, *extra):
    train = pd.read_csv(shared_data / "train.csv", keep_default_na=False)
    test = pd.read_csv(shared_data / "test.csv", keep_default_na=False)
    pd.concat([train[train.label == 0].head(42), train[train.label == 1].head(18)]).to_csv(root / "train.csv", index=False)
    pd.concat([test[test.label == 0].head(10), test[test.label == 1].head(10)]).to_csv(root / "test.csv", index=False)
    return load_config(None, [
        "name=workers", f"data.train_file={root / 'train.csv'}", f"data.test_file={root / 'test.csv'}",
        "data.validation_fraction=0.25", "data.max_length=32", f"teacher.source={teacher_dir}",
        "teacher.train.epochs=1", "distill.train.epochs=1", "lora.train.epochs=1", "baseline.train.epochs=1",
        "lora.r=4", "lora.alpha=8", "check.suites=[]", *extra])


def _probabilities(run) -> dict:
    rd = RunDir(run)
    return {m["name"]: np.asarray(rd.evaluation(m["name"], json.loads(rd.marker(m["name"]).read_text())["fingerprint"])
                                  .probabilities) for m in rd.results().models}


def test_at_once_and_one_at_a_time_train_the_same_models(tmp_path, tiny_teacher_dir, shared_data, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # as on the 2-core CI machine, whatever runs this
    runs = {}
    for workers in ("2", "1"):
        root = tmp_path / workers
        root.mkdir()
        runs[workers] = study.run_study(_config(root, tiny_teacher_dir, shared_data, f"stage_workers={workers}"),
                                        root / "run", quiet=True)
    a, b = _probabilities(runs["2"]), _probabilities(runs["1"])
    assert set(a) == {"teacher", "odd", "even", "lora", "baseline"} == set(b)
    for name in a:  # other thread counts round differently, nothing more
        np.testing.assert_allclose(a[name], b[name], atol=1e-4, err_msg=name)
    # how a run is spread over the cores is not part of its configuration: no --force, nothing redone
    again = study.run_study(_config(tmp_path / "2", tiny_teacher_dir, shared_data, "stage_workers=1"),
                            tmp_path / "2" / "run", quiet=True)
    assert _probabilities(again)["odd"].tolist() == a["odd"].tolist()


def test_a_stage_that_fails_in_its_process_keeps_the_others_and_a_rerun_resumes(tmp_path, tiny_teacher_dir,
                                                                                shared_data, monkeypatch):
    from distillora.stages import distill

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    real = distill.train

    def failing(env, name, *args):
        if name == "even":
            raise UserError("even: made to fail by the test")
        if name == "odd":  # by now even's process has failed and exited: the lock must still be held
            time.sleep(3)
            if not (tmp_path / "run" / LOCK_NAME).read_text():
                raise AssertionError("a child's exit released the run's lock")
        return real(env, name, *args)

    monkeypatch.setattr(distill, "train", failing)
    cfg = _config(tmp_path, tiny_teacher_dir, shared_data, "stage_workers=2")
    with pytest.raises(RuntimeError, match="stage even .*failed.*running the same command again resumes"):
        study.run_study(cfg, tmp_path / "run", quiet=True)
    rd = RunDir(tmp_path / "run")
    # odd trained beside even and is kept; as one at a time, no stage starts after a failure
    assert rd.marker("odd").exists()
    assert not rd.marker("even").exists() and not rd.model_dir("even").exists()
    odd_before = (rd.model_dir("odd") / "model.safetensors").read_bytes()
    monkeypatch.setattr(distill, "train", real)
    study.run_study(cfg, tmp_path / "run", quiet=True)
    assert rd.marker("even").exists()
    assert (rd.model_dir("odd") / "model.safetensors").read_bytes() == odd_before  # skipped, not retrained
    assert (tmp_path / "run" / LOCK_NAME).read_text() == ""  # the parent released the lock; no child did early
