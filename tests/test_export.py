import json
import shutil

import pytest
import torch

from conftest import tiny_bert, tiny_mpnet
from distillora import inference
from distillora.export import METHODS, _choose, export_run, served_method
from distillora.inference import torch_backend
from distillora.inference.torch_backend import PackedLinear, _can_pack, convert


def test_export_measures_gates_and_follows_the_model(tiny_run, tmp_path):
    # on a copy: tiny_run is shared by the whole session, and an exports.json there would change what the
    # serve, fuzz and browser tests serve
    import shutil

    from distillora.rundir import RunDir

    tiny_run = shutil.copytree(tiny_run, tmp_path / "run")
    study = RunDir(tiny_run).results().by_name()
    out = export_run(tiny_run, ["odd"])  # every candidate, the onnx copies included
    assert set(out["models"]) == {"odd"}
    for name, e in out["models"].items():
        assert set(e["candidates"]) == set(METHODS) and set(e["speed"]) == {"fp32", *METHODS}
        # the fp32 reference is the study's model on the study's test split (one flip allowed: other batching)
        assert e["fp32_accuracy"]["test"] == pytest.approx(study[name].test["accuracy"], abs=1.01 / 40)
        for c in e["candidates"].values():
            for split in ("validation", "test"):
                assert c[split]["drop"] == pytest.approx(e["fp32_accuracy"][split] - c[split]["accuracy"], abs=1e-4)
            assert c["passed"] == (max(c["validation"]["drop"], c["test"]["drop"]) <= 0.005)
        for s in e["speed"].values():
            # throughput at batch 32 and one sentence's latency describe the same model: 32 sentences in a
            # batch take less than 32 sentences one by one
            assert s["p50_ms_b1"] > 0 and 1000 * 32 / s["examples_per_s_b32"] < 32 * s["p50_ms_b1"] * 4
        assert e["serve"] in ("fp32", *METHODS) and e["reason"]
        if e["serve"] != "fp32":
            assert e["candidates"][e["serve"]]["passed"]
    assert served_method(tiny_run, "odd") == out["models"]["odd"]["serve"]
    for method in inference.ONNX_METHODS:  # each onnx copy is on disk where its record says
        assert (tiny_run / out["models"]["odd"]["candidates"][method]["path"] / "model.onnx").is_file()
    # a second export of other models keeps the first entries
    export_run(tiny_run, ["lora"], methods=("bf16",))
    saved = json.loads((tiny_run / "exports.json").read_text())["models"]
    assert set(saved) == {"odd", "lora"}
    # once the model is retrained (new stage fingerprint), the old export is not served
    saved["odd"]["serve"] = "int8-dynamic"
    saved["odd"]["fingerprint"] = "stale"
    (tiny_run / "exports.json").write_text(json.dumps({"models": saved}))
    assert served_method(tiny_run, "odd") == "fp32"


def _entry(drops: dict, b1: dict, b32: dict) -> dict:
    return {"candidates": {m: {"worst_drop": d, "passed": d <= 0.005} for m, d in drops.items()},
            "speed": {m: {"p50_ms_b1": b1[m], "examples_per_s_b32": b32[m]} for m in b1}}


def test_choice_is_the_fastest_copy_that_passes_and_beats_fp32():
    b32 = {"fp32": 100, "int8-dynamic": 350, "bf16": 400}
    # the fastest single-sentence copy fails the accuracy gate: the next one is served
    e = _entry({"int8-dynamic": 0.07, "bf16": 0.0}, {"fp32": 20, "int8-dynamic": 7, "bf16": 9}, b32)
    assert _choose(e)[0] == "bf16"
    e = _entry({"int8-dynamic": 0.0, "bf16": 0.0}, {"fp32": 20, "int8-dynamic": 7, "bf16": 9}, b32)
    assert _choose(e)[0] == "int8-dynamic"
    # a copy slower than fp32 at either batch size is not served, and the reason says so
    e = _entry({"int8-dynamic": 0.07, "bf16": 0.0}, {"fp32": 20, "int8-dynamic": 7, "bf16": 25}, b32)
    method, reason = _choose(e)
    assert method == "fp32" and "bf16 is not faster" in reason and "int8-dynamic loses 7.0" in reason


@pytest.mark.parametrize("make", [tiny_bert, tiny_mpnet])
def test_bf16_copy_matches_fp32_and_leaves_it_alone(make):
    model = make(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy_ = convert(model, "bf16")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the original is untouched
    assert any(isinstance(m, PackedLinear) for m in copy_.modules()) == _can_pack()
    ids = torch.randint(5, 100, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.inference_mode():
        ref = torch.softmax(model(input_ids=ids, attention_mask=mask).logits, -1)
        got = torch.softmax(copy_(input_ids=ids, attention_mask=mask).logits.float(), -1)
    assert (ref - got).abs().max() < 0.02  # bf16 keeps about 3 significant digits


def test_single_sentence_without_mask_matches_the_padded_batch(minilm_tokenizer):
    from distillora.predict import probabilities

    model = tiny_bert(2, vocab_size=minilm_tokenizer.vocab_size)
    texts = ["a short one", "a much longer sentence that forces padding onto the short one"]
    batch = probabilities(model, minilm_tokenizer, texts)
    for i, t in enumerate(texts):
        assert torch.allclose(torch.tensor(probabilities(model, minilm_tokenizer, [t])), torch.tensor([batch[i]]), atol=1e-5)


@pytest.mark.parametrize("make", [tiny_bert, tiny_mpnet])
def test_one_sentence_gives_the_same_logits_with_or_without_its_all_ones_mask(make):
    model = make(2)
    ids = torch.randint(5, 100, (1, 11))
    with torch.inference_mode():
        assert torch.allclose(model(input_ids=ids).logits, model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits,
                              atol=1e-6)


def test_bf16_without_onednn_support_runs_plain_bf16(monkeypatch):
    monkeypatch.setattr(torch_backend, "_can_pack", lambda: False)
    model = tiny_bert(2)
    copy_ = convert(model, "bf16")
    assert not any(isinstance(m, PackedLinear) for m in copy_.modules())
    assert next(copy_.parameters()).dtype == torch.bfloat16


def test_a_copy_this_machine_cannot_build_is_served_in_fp32(monkeypatch, tiny_run, caplog):
    def fail(model, method):
        raise RuntimeError("bf16 path needs the cpu support avx_ne_convert or avx512bw, avx512vl and avx512dq")

    monkeypatch.setattr(torch_backend, "convert", fail)
    backend = inference.load(tiny_run / "models" / "odd", "bf16")
    assert next(backend.model.parameters()).dtype == torch.float32 and backend.method == "fp32"
    assert "serving fp32" in caplog.text


def test_web_app_serves_the_bf16_copy_named_in_exports_json(tiny_run):
    from distillora.serve.predictor import Predictor

    fingerprint = json.loads((tiny_run / "stages" / "odd.json").read_text())["fingerprint"]
    (tiny_run / "exports.json").write_text(json.dumps({"models": {"odd": {"fingerprint": fingerprint, "serve": "bf16"}}}))
    try:
        p = Predictor(tiny_run)
        assert p.models["odd"].method == "bf16" and p.models["even"].method == "fp32"
        assert next(p.models["odd"].backend.model.parameters()).dtype == torch.bfloat16
        texts = ["you people are the worst", "lovely weather today"]
        got, _ = p.probabilities("odd", texts)
        want = inference.load(tiny_run / "models" / "odd").probabilities(texts, p.max_length)
        assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=0.02)
    finally:
        (tiny_run / "exports.json").unlink()
