"""`teacher.pooling`: what the classifier head reads (distillora.pooling). `mean` makes the head read the
masked mean of the last hidden states, the pooling sentence-transformers models were trained with; the
choice is saved in config.json and every path that builds or loads a model here reads it."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from distillora import pooling
from distillora.config import load_config
from distillora.errors import UserError
from distillora.stages import teacher as teacher_stage
from distillora.students import build_student

from conftest import stage_fingerprints, tiny_bert, tiny_mpnet

IDS = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 2, 1, 1]])
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])


def by_hand(model, ids=IDS, mask=MASK):
    """The head applied by hand to the masked mean of the encoder's last hidden states."""
    with torch.no_grad():
        h = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        mean = ((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))[:, None]
        if hasattr(model, "bert"):  # BERT's head reads its pooler's output, computed from position 0
            return model.classifier(model.bert.pooler(mean))
        return model.classifier(mean)  # MPNet's head reads position 0 itself


@pytest.mark.parametrize("make", [tiny_bert, tiny_mpnet], ids=["bert", "mpnet"])
def test_the_head_reads_the_masked_mean_of_the_last_hidden_states(make):
    model = make(2)
    with torch.no_grad():
        first = model(input_ids=IDS, attention_mask=MASK).logits
    pooling.attach(model, "mean")
    with torch.no_grad():
        mean = model(input_ids=IDS, attention_mask=MASK).logits
        # padding does not move a row: the second row alone, unpadded and without a mask
        alone = model(input_ids=IDS[1:, :3]).logits
    assert torch.allclose(mean, by_hand(model), atol=1e-5)
    assert not torch.allclose(mean, first, atol=1e-4)
    assert torch.allclose(alone, mean[1:], atol=1e-5)
    assert model.config.distillora_pooling == "mean"
    pooling.attach(model, "mean")  # idempotent: one hook
    assert len(model.base_model._forward_hooks) == 1
    pooling.attach(model, "first")  # and back: transformers' own head, nothing recorded
    with torch.no_grad():
        assert torch.allclose(model(input_ids=IDS, attention_mask=MASK).logits, first, atol=1e-6)
    assert not hasattr(model.config, "distillora_pooling") and not model.base_model._forward_hooks


def test_the_pooling_round_trips_through_save_and_load(tmp_path):
    from distillora.inference.torch_backend import load_fp32
    from distillora.integrity import record
    from distillora.stages.base import load_model

    model = pooling.attach(tiny_mpnet(2), "mean")
    with torch.no_grad():
        want = model(input_ids=IDS, attention_mask=MASK).logits
    model.save_pretrained(tmp_path)
    record(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["distillora_pooling"] == "mean"
    # plain transformers does not read it (a first-token head): distillora's loaders do
    plain = AutoModelForSequenceClassification.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        assert not torch.allclose(plain(input_ids=IDS, attention_mask=MASK).logits, want, atol=1e-4)
        for loaded in (load_model(tmp_path).eval(), load_fp32(tmp_path), pooling.apply_saved(plain)):
            assert torch.allclose(loaded(input_ids=IDS, attention_mask=MASK).logits, want, atol=1e-6)


def test_students_and_copies_read_what_their_teacher_reads():
    from distillora.inference.torch_backend import convert

    teacher = pooling.attach(tiny_bert(4), "mean")
    student = build_student(teacher, [1, 3])
    assert pooling.of_model(student) == "mean"
    with torch.no_grad():
        assert torch.allclose(student(input_ids=IDS, attention_mask=MASK).logits, by_hand(student), atol=1e-5)
        want = student(input_ids=IDS, attention_mask=MASK).logits
        # the int8 copy is a deep copy: it keeps the hook, and moving the copy to `first` leaves the original
        int8 = convert(student, "int8-dynamic")
        assert torch.allclose(int8(input_ids=IDS, attention_mask=MASK).logits, want, atol=0.05)
        pooling.attach(int8, "first")
        assert torch.allclose(student(input_ids=IDS, attention_mask=MASK).logits, want, atol=1e-6)


def test_the_onnx_graph_computes_the_mean_too(tmp_path, minilm_tokenizer):
    import onnxruntime as ort

    from distillora.inference import onnx_backend

    model = pooling.attach(tiny_bert(2, vocab_size=minilm_tokenizer.vocab_size), "mean")
    names = onnx_backend.export_fp32(model, minilm_tokenizer, tmp_path / "model.onnx")
    batch = minilm_tokenizer(["a short one", "a much longer sentence that pads the other row"], padding=True,
                             return_tensors="pt")
    feed = {n: batch[n].numpy() for n in names}
    got = ort.InferenceSession(str(tmp_path / "model.onnx")).run(None, feed)[0]
    with torch.no_grad():
        want = model(**{n: batch[n] for n in names}).logits.numpy()
    assert np.abs(got - want).max() < 1e-5


def test_auto_reads_the_sources_own_pooling_config(tmp_path, tiny_teacher_dir):
    from distillora.bundles import minilm_dir

    assert pooling.of_source(str(minilm_dir())) == "mean"  # its 1_Pooling/config.json: mean tokens
    assert pooling.of_source(str(tiny_teacher_dir)) == "first"  # a plain checkpoint
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    assert pooling.of_source(str(tmp_path)) == "first"  # a CLS-pooled sentence-transformers model
    cfg = load_config(None, [f"teacher.source={tiny_teacher_dir}", "teacher.pooling=mean"])
    assert teacher_stage.head_pooling(cfg) == "mean"  # an explicit setting wins over the source
    model = teacher_stage.load_pretrained(str(tiny_teacher_dir), ["no", "yes"], pooling="mean")
    assert pooling.of_model(model) == "mean"


def test_the_setting_is_validated_and_fingerprinted_as_resolved(tiny_teacher_dir):
    with pytest.raises(UserError, match="teacher.pooling = 'cls': use auto, first or mean"):
        load_config(None, ["teacher.pooling=cls"])
    src = f"teacher.source={tiny_teacher_dir}"
    # a source that `auto` reads as `first` keeps the fingerprint it had before the setting existed
    before = stage_fingerprints([src, "teacher.pooling=first"])["teacher"]
    assert stage_fingerprints([src, "teacher.pooling=auto"])["teacher"] == before
    assert stage_fingerprints([src, "teacher.pooling=mean"])["teacher"] != before
    # the minilm bundle's `auto` is its mean
    assert stage_fingerprints(["teacher.source=minilm-l6", "teacher.pooling=auto"])["teacher"] == stage_fingerprints(
        ["teacher.source=minilm-l6", "teacher.pooling=mean"])["teacher"]


def test_a_mean_pooled_study_serves_what_it_evaluated(tmp_path, tiny_teacher_dir, small_data):
    """Every model of a study with teacher.pooling=mean records it, and `predict` and `/api/predict` give a
    raw test row the probability the evaluation stored for it (normalisation and pooling included)."""
    import pandas as pd

    from distillora.predict import load_model, predict
    from distillora.rundir import RunDir, probability_columns
    from distillora.serve import create_app
    from distillora.study import run_study

    cfg = load_config(None, [
        f"data.source={small_data}", "data.validation_fraction=0.25", "data.max_length=32",
        "data.normalize=hate_speech_twitter", f"teacher.source={tiny_teacher_dir}", "teacher.pooling=mean",
        "teacher.train.epochs=1", "distill.train.epochs=1", "lora.train.epochs=1", "baseline.train.epochs=1",
        "lora.r=4", "lora.alpha=8", "check.suites=[]", "distill.students={odd: [1, 3]}"])
    out = run_study(cfg, tmp_path / "run", quiet=True)
    run = RunDir(out)
    for d in (out / "models").iterdir():
        if (d / "config.json").is_file():  # the LoRA student's adapter directory has its own
            assert json.loads((d / "config.json").read_text())["distillora_pooling"] == "mean", d.name
    assert "the head reading the mean of the last hidden states" in run.results().by_name()["teacher"].objective
    raw = pd.read_csv(small_data / "test.csv", keep_default_na=False).tweet[0]
    client = create_app(out).test_client()
    for name in ("teacher", "odd", "lora", "baseline"):
        stored = probability_columns(json.loads(run.marker(name, ".test").read_text()))[0, 1]
        _, backend = load_model(out, name)
        (cli,) = predict(backend, [raw], cfg.data.label_names, cfg.data.max_length)
        assert cli["probabilities"]["hate"] == pytest.approx(stored, abs=1e-5), name
        (res,) = client.post("/api/predict", json={"text": raw, "models": [name]}).get_json()["predictions"][0][
            "results"]
        assert res["probabilities"]["hate"] == pytest.approx(stored, abs=1e-5), name
