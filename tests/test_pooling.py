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


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK).logits


def test_the_teacher_trains_and_the_lora_student_learns_on_the_mean(tiny_teacher_dir):
    """What trains reads the mean too, not only what is evaluated: the pretrained teacher as the stage
    loads it, and the LoRA student wrapped, merged and reloaded from its adapter."""
    from distillora import lora

    teacher = teacher_stage.load_pretrained(str(tiny_teacher_dir), ["no", "yes"], pooling="mean").eval()
    assert torch.allclose(logits(teacher), by_hand(teacher), atol=1e-5)
    first = logits(pooling.attach(build_student(teacher, [1, 3]), "first"))
    wrapped = lora.wrap(build_student(teacher, [1, 3]), r=4, alpha=8, dropout=0.0).eval()
    with torch.no_grad():
        for p in wrapped.parameters():  # adapters away from zero, so that they change the logits
            if p.requires_grad:
                p.add_(0.05)
    want = by_hand(wrapped)
    assert torch.allclose(logits(wrapped), want, atol=1e-5) and not torch.allclose(want, first, atol=1e-3)
    assert torch.allclose(logits(wrapped.merge_and_unload()), want, atol=1e-5)


def test_students_and_copies_read_what_their_teacher_reads():
    from distillora.inference.torch_backend import convert

    teacher = pooling.attach(tiny_bert(4), "mean")
    student = build_student(teacher, [1, 3]).eval()
    assert pooling.of_model(student) == "mean"
    want = logits(student)
    assert torch.allclose(want, by_hand(student), atol=1e-5)
    first = logits(pooling.attach(build_student(teacher, [1, 3]).eval(), "first"))
    assert (want - first).abs().max() > 5e-3  # far apart, next to the int8 copy's error below
    # the int8 copy is a deep copy: it keeps the hook, and moving the copy to `first` leaves the original
    int8 = convert(student, "int8-dynamic")
    assert (logits(int8) - want).abs().max() < 2e-3
    pooling.attach(int8, "first")
    assert torch.allclose(logits(student), want, atol=1e-6)


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


def test_auto_reads_the_sources_own_pooling_config(tmp_path, tiny_teacher_dir, monkeypatch):
    from huggingface_hub import constants

    from distillora.bundles import minilm_dir

    assert pooling.of_source(str(minilm_dir())) == "mean"  # its 1_Pooling/config.json: mean tokens
    assert pooling.of_source(str(tiny_teacher_dir)) == "first"  # a plain checkpoint
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    assert pooling.of_source(str(tmp_path)) == "first"  # a CLS-pooled sentence-transformers model
    # a distillora model as the source: what it records, before any 1_Pooling
    saved = tmp_path / "saved"
    pooling.attach(tiny_bert(2), "mean").save_pretrained(saved)
    assert pooling.of_source(str(saved)) == "mean"
    (tmp_path / "1_Pooling" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot be read as JSON"):
        pooling.of_source(str(tmp_path))
    (saved / "config.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="holds a JSON list, not an object"):
        pooling.of_source(str(saved))
    cfg = load_config(None, [f"teacher.source={tiny_teacher_dir}", "teacher.pooling=mean"])
    assert teacher_stage.head_pooling(cfg) == "mean"  # an explicit setting wins over the source
    model = teacher_stage.load_pretrained(str(tiny_teacher_dir), ["no", "yes"], pooling="mean")
    assert pooling.of_model(model) == "mean"


def test_auto_never_guesses_a_hub_ids_pooling(monkeypatch):
    import huggingface_hub
    import transformers.utils
    from huggingface_hub import constants

    # offline, or online with a Hub that does not answer: a file never fetched is not known, so not guessed
    monkeypatch.setattr(transformers.utils, "cached_file", lambda *a, **k: None)  # what it returns unreachable
    for offline, why in ((True, "offline"), (False, "the Hub did not answer")):
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
        with pytest.raises(UserError, match=f"whether nobody/never-fetched was trained with mean pooling is not "
                                            f"known here \\({why}, and its 1_Pooling/config.json was never fetched\\)"):
            pooling.of_source("nobody/never-fetched")
    # a repo known not to hold the file (the Hub's 404, recorded in the cache): a plain checkpoint
    absent = object()  # huggingface_hub's marker of a file known to be missing
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo, name, **k: None if name == "config.json" else absent)
    assert pooling.of_source("nobody/plain-checkpoint") == "first"
    with pytest.raises(UserError, match="cannot look up not a repo id's pooling configuration"):
        monkeypatch.undo()
        pooling.of_source("not a repo id")


def test_the_setting_is_validated_and_fingerprinted_only_when_set(monkeypatch):
    from distillora import stages
    from distillora.config import to_dict

    with pytest.raises(UserError, match="teacher.pooling = 'cls': use auto, first or mean"):
        load_config(None, ["teacher.pooling=cls"])
    # at the default, runs made before the setting existed keep their teacher's fingerprint
    cfg = load_config(None, [])
    teacher = next(s for s in stages.plan(cfg, to_dict(cfg), 12) if s.name == "teacher")
    assert "pooling" not in json.dumps(teacher.fingerprint_inputs)
    before = stage_fingerprints([])["teacher"]
    assert stage_fingerprints(["teacher.pooling=mean"])["teacher"] != before
    auto = stage_fingerprints(["teacher.pooling=auto"])["teacher"]
    assert auto != before
    # as set, not as the source resolves it: planning a finished run's sweep never needs the source
    for answer in ("first", "mean", UserError("the source is not here")):
        def of_source(source, answer=answer):
            if isinstance(answer, Exception):
                raise answer
            return answer
        monkeypatch.setattr(pooling, "of_source", of_source)
        assert stage_fingerprints(["teacher.pooling=auto"])["teacher"] == auto


def test_a_head_the_mean_does_not_reach_is_refused_before_anything_is_written(tmp_path, minilm_tokenizer,
                                                                              small_data):
    from transformers import AlbertConfig

    from distillora.study import run_study

    albert = AutoModelForSequenceClassification.from_config(AlbertConfig(
        vocab_size=minilm_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, embedding_size=16))
    with pytest.raises(ValueError, match="the head of a model of type albert does not read the position"):
        pooling.attach(albert, "mean")
    source = tmp_path / "albert"
    albert.save_pretrained(source)
    minilm_tokenizer.save_pretrained(source)
    (source / "1_Pooling").mkdir()
    (source / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    for setting, how in (("mean", ""), ("auto", r" \(auto: the source's own pooling configuration says mean\)")):
        cfg = load_config(None, [f"data.source={small_data}", f"teacher.source={source}",
                                 f"teacher.pooling={setting}", "check.suites=[]"])
        with pytest.raises(UserError, match=f"teacher.pooling = {setting}{how}: the head of a model of type albert "
                                            f"does not read the position the mean replaces"):
            run_study(cfg, tmp_path / "run", quiet=True)
        assert not (tmp_path / "run").exists()


def test_a_mean_pooled_study_serves_what_it_evaluated(tmp_path, tiny_teacher_dir, small_data):
    """A study with teacher.pooling=auto on a source whose 1_Pooling/config.json says mean: every model
    records mean, and `predict` and `/api/predict` give a raw test row the probability the evaluation
    stored for it (normalisation and pooling included)."""
    import shutil

    import pandas as pd

    from distillora.predict import load_model, predict
    from distillora.rundir import RunDir, probability_columns
    from distillora.serve import create_app
    from distillora.study import run_study

    source = shutil.copytree(tiny_teacher_dir, tmp_path / "sentence-model")
    (source / "1_Pooling").mkdir()
    (source / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    cfg = load_config(None, [
        f"data.source={small_data}", "data.validation_fraction=0.25", "data.max_length=32",
        "data.normalize=hate_speech_twitter", f"teacher.source={source}", "teacher.pooling=auto",
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
