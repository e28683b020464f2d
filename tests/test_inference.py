"""The inference backends (distillora.inference): the onnx copies load in plain onnxruntime and agree
with torch, BERT and MPNet alike; the int8 copies stay close; a damaged copy is refused; the web app
and `predict` serve an onnx copy when export chose it."""

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers import AutoTokenizer, MPNetConfig, MPNetForSequenceClassification

from conftest import TINY, tiny_bert
from distillora import inference
from distillora.errors import UserError
from distillora.inference import onnx_backend

TEXTS = ["you people are the worst", "lovely weather today, isn't it", "ok"]


def _mpnet(vocab_size: int):
    torch.manual_seed(0)
    cfg = MPNetConfig(vocab_size=vocab_size, num_hidden_layers=2, num_labels=2, pad_token_id=0, **TINY)
    return MPNetForSequenceClassification(cfg).eval()


def _bert(vocab_size: int):
    return tiny_bert(2, vocab_size=vocab_size)


@pytest.mark.parametrize("make", [_bert, _mpnet], ids=["bert", "mpnet"])
def test_onnx_copy_runs_in_plain_onnxruntime_like_torch(make, minilm_tokenizer, tmp_path):
    model = make(minilm_tokenizer.vocab_size)
    model.config.distillora_normalize = ["lowercase"]
    onnx_backend.build(model, minilm_tokenizer, tmp_path, "onnx-fp32", max_length=32, label_names=["no", "yes"])

    # what a user without distillora does: the json says how, the tokenizer files and model.onnx do it
    meta = json.loads((tmp_path / onnx_backend.META_FILE).read_text())
    assert meta["distillora_normalize"] == ["lowercase"] and meta["max_length"] == 32
    assert meta["label_names"] == ["no", "yes"]
    assert meta["inputs"] == (["input_ids", "token_type_ids", "attention_mask"] if model.config.model_type == "bert"
                              else ["input_ids", "attention_mask"])
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == meta["inputs"]
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    texts = [t.lower() for t in TEXTS]
    for batch in (texts, texts[:1]):  # dynamic batch and sequence axes: 3 padded rows, then 1 short row
        enc = tok(batch, truncation=True, max_length=32, padding=True, return_tensors="np")
        logits = session.run(["logits"], {n: enc[n].astype(np.int64) for n in meta["inputs"]})[0]
        got = torch.softmax(torch.from_numpy(logits), -1)
        with torch.inference_mode():
            want = torch.softmax(model(**{n: torch.from_numpy(enc[n]) for n in meta["inputs"]}).logits, -1)
        assert got.shape == (len(batch), 2)
        assert torch.allclose(got, want, atol=1e-4)

    # and through the backend interface, which applies the saved normaliser itself
    backend = inference.OnnxBackend.load(tmp_path)
    assert backend.method == "onnx-fp32" and backend.normalizer.steps == ["lowercase"]
    want = inference.TorchBackend(model, minilm_tokenizer).probabilities(TEXTS, 32)
    assert np.allclose(backend.probabilities(TEXTS, 32), want, atol=1e-4)


@pytest.mark.parametrize("method", ["onnx-int8-dynamic", "onnx-int8-static"])
def test_int8_onnx_copies_stay_close_to_fp32(method, minilm_tokenizer, tmp_path):
    model = _bert(minilm_tokenizer.vocab_size)
    fp32 = tmp_path / "fp32"
    onnx_backend.build(model, minilm_tokenizer, fp32, "onnx-fp32", max_length=32)
    onnx_backend.build(model, minilm_tokenizer, tmp_path / method, method, max_length=32,
                       calibration_texts=TEXTS * 4, fp32_onnx=fp32 / "model.onnx")
    ops = {n.op_type for n in __import__("onnx").load(str(tmp_path / method / "model.onnx")).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "QuantizeLinear", "QLinearMatMul"}  # it is quantised
    got = inference.OnnxBackend.load(tmp_path / method).probabilities(TEXTS, 32)
    want = inference.OnnxBackend.load(fp32).probabilities(TEXTS, 32)
    assert np.abs(np.array(got) - np.array(want)).max() < 0.05


def test_static_int8_without_calibration_texts_is_refused(minilm_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="calibration"):
        onnx_backend.build(_bert(minilm_tokenizer.vocab_size), minilm_tokenizer, tmp_path, "onnx-int8-static",
                           max_length=32)


def test_a_changed_onnx_file_is_refused(minilm_tokenizer, tmp_path):
    onnx_backend.build(_bert(minilm_tokenizer.vocab_size), minilm_tokenizer, tmp_path, "onnx-fp32", max_length=32)
    with open(tmp_path / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(UserError, match="sha256 differs"):
        inference.OnnxBackend.load(tmp_path)
    with pytest.raises(UserError, match="no onnx copy"):
        inference.OnnxBackend.load(tmp_path / "missing")


def test_unknown_methods_are_refused(tiny_run):
    with pytest.raises(ValueError, match="unknown inference method"):
        inference.load(tiny_run / "models" / "odd", "fp8")
    with pytest.raises(ValueError, match="copy_dir"):
        inference.load(tiny_run / "models" / "odd", "onnx-fp32")


def test_predict_and_the_web_app_serve_the_onnx_copy_export_chose(tiny_run):
    from distillora.predict import load_model
    from distillora.serve.predictor import Predictor

    mdir = tiny_run / "models" / "odd"
    fp32 = inference.load(mdir)
    dest = inference.copy_dir(tiny_run, "odd", "onnx-fp32")
    onnx_backend.build(fp32.model, fp32.tokenizer, dest, "onnx-fp32", max_length=32)
    fingerprint = inference.stage_fingerprint(tiny_run, "odd")
    (tiny_run / "exports.json").write_text(json.dumps({"models": {"odd": {"fingerprint": fingerprint,
                                                                          "serve": "onnx-fp32"}}}))
    try:
        name, backend = load_model(tiny_run, "odd")
        assert isinstance(backend, inference.OnnxBackend)
        p = Predictor(tiny_run)
        assert p.models["odd"].method == "onnx-fp32" and p.models["even"].method == "fp32"
        got, _ = p.probabilities("odd", TEXTS)
        assert np.allclose(got, fp32.probabilities(TEXTS, p.max_length), atol=1e-4)
    finally:
        (tiny_run / "exports.json").unlink()
        shutil.rmtree(tiny_run / "exports")


def test_the_evaluation_pass_and_the_text_path_agree(tiny_run):
    """predict_encoded (length-sorted batches, as evaluation runs) and probabilities (as predict runs)
    give the same numbers for the same texts."""
    from distillora.data import Split, encode

    backend = inference.load(tiny_run / "models" / "odd")
    texts = backend.normalizer.many(TEXTS)
    enc = encode(Split(texts, np.zeros(len(texts), dtype=np.int64)), backend.tokenizer, 32)
    probs, per_s = backend.predict_encoded(enc, 2)
    assert per_s > 0
    assert np.allclose(probs, backend.probabilities(TEXTS, 32), atol=1e-5)
