"""`teacher.soup: N`: N teachers fine-tuned with training seeds seed, seed+1000, ... from one head
initialisation, averaged uniformly into the one teacher."""

import dataclasses

import pytest
import torch

from distillora.config import load_config, stable_section, to_dict
from distillora.errors import UserError
from distillora.stages import teacher as teacher_stage

from conftest import interrupt_in_member_2, teacher_env, tiny_bert


def test_uniform_soup_is_the_mean_of_every_floating_point_weight():
    a, b, c = (tiny_bert(2, seed=s) for s in (0, 1, 2))
    want = {k: (a.state_dict()[k] + b.state_dict()[k] + c.state_dict()[k]) / 3
            for k, v in a.state_dict().items() if v.is_floating_point()}
    ints = {k: v.clone() for k, v in a.state_dict().items() if not v.is_floating_point()}
    soup = teacher_stage.uniform_soup([a, b, c])
    for k, v in soup.state_dict().items():
        assert torch.allclose(v, want[k], atol=1e-6) if k in want else torch.equal(v, ints[k]), k


def test_a_tied_weight_is_averaged_once():
    """A weight shared under two names (a masked-LM's decoder and word embeddings) is summed once."""
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                     tie_word_embeddings=True)
    models = []
    for s in (0, 1):
        torch.manual_seed(s)
        models.append(BertForMaskedLM(cfg))
    assert models[0].cls.predictions.decoder.weight is models[0].bert.embeddings.word_embeddings.weight
    want = (models[0].bert.embeddings.word_embeddings.weight + models[1].bert.embeddings.word_embeddings.weight) / 2
    soup = teacher_stage.uniform_soup(models)
    assert torch.allclose(soup.cls.predictions.decoder.weight, want.detach(), atol=1e-6)


def test_a_soup_of_two_is_the_mean_of_the_two_teachers_trained_alone(tmp_path, minilm_tokenizer, tiny_teacher_dir,
                                                                     small_data):
    def train(name, overrides):
        return teacher_stage.train(teacher_env(tmp_path, name, minilm_tokenizer, small_data, overrides), str(tiny_teacher_dir),
                                   "fp-" + name)

    one, one_stats = train("one", [])
    # the second member alone: training seed 1042, but the head initialised and the carve made as for seed 42
    env2 = teacher_env(tmp_path, "second", minilm_tokenizer, small_data, [])
    env2 = dataclasses.replace(env2, cfg=dataclasses.replace(env2.cfg, seed=1042))
    second, second_stats = env2.fit(_head_of_seed(tiny_teacher_dir, env2.cfg, 42), env2.cfg.teacher.train,
                                    "teacher", "fp-second")
    soup, stats = train("soup", ["teacher.soup=2"])
    assert [m["seed"] for m in stats["soup"]] == [42, 1042]
    assert stats["loss"] is None and stats["soup"][1]["loss"] == second_stats["loss"]
    assert stats["soup"][0]["validation"] == one_stats["validation"]  # member 1 is the one-teacher run
    assert stats["soup"][1]["validation"] == second_stats["validation"]
    assert stats["seconds"] == pytest.approx(sum(m["seconds"] for m in stats["soup"]), abs=0.01)
    assert stats["steps"] == one_stats["steps"] + second_stats["steps"]
    one_w, second_w = dict(one.named_parameters()), dict(second.named_parameters())
    for name, w in soup.named_parameters():
        assert torch.allclose(w, (one_w[name] + second_w[name]) / 2, atol=1e-6), name
    assert set(stats["validation"]) >= {"accuracy", "balanced_accuracy", "f1_macro"}
    assert not torch.allclose(one.classifier.weight, second.classifier.weight)


def test_a_soup_killed_between_members_resumes_to_the_same_teacher(tmp_path, minilm_tokenizer, tiny_teacher_dir,
                                                                   small_data, monkeypatch):
    def train(name):
        return teacher_stage.train(teacher_env(tmp_path, name, minilm_tokenizer, small_data, ["teacher.soup=2"]),
                                   str(tiny_teacher_dir), "fp")

    whole, _ = train("whole")
    interrupt_in_member_2(monkeypatch, lambda: train("killed"))
    resumed, stats = train("killed")
    assert stats["soup"][0]["resumed_from"] is not None and stats["soup"][1]["resumed_from"] is None
    for (name, w), (_, r) in zip(whole.named_parameters(), resumed.named_parameters()):
        assert torch.equal(w, r), name


def _head_of_seed(source, cfg, seed):
    from transformers import set_seed

    from distillora import normalize

    set_seed(seed)
    model = teacher_stage.load_pretrained(str(source), cfg.data.label_names)
    normalize.attach(model.config, normalize.resolve(cfg.data.normalize))
    return model


def test_soup_setting_is_validated_and_one_teacher_keeps_existing_fingerprints():
    with pytest.raises(UserError, match="teacher.soup = 0"):
        load_config(None, ["teacher.soup=0"])
    assert "soup" not in stable_section(to_dict(load_config(None, [])), "teacher")
    assert stable_section(to_dict(load_config(None, ["teacher.soup=3"])), "teacher")["soup"] == 3


def test_a_study_with_a_soup_records_its_members_and_cleans_their_checkpoints(tmp_path, tiny_teacher_dir, small_data):
    from distillora.fileio import read_json
    from distillora.rundir import RunDir
    from distillora.study import run_study

    cfg = load_config(None, [
        f"data.source={small_data}", "data.validation_fraction=0.25", "data.max_length=32",
        f"teacher.source={tiny_teacher_dir}", "teacher.soup=2", "teacher.train.epochs=1", "distill.train.epochs=1",
        "lora.train.epochs=1", "baseline.train.epochs=1", "lora.r=4", "lora.alpha=8", "check.suites=[]",
        "distill.students={odd: [1, 3]}"])
    out = run_study(cfg, tmp_path / "run", quiet=True)
    rec = read_json(RunDir(out).marker("teacher"))
    assert [m["seed"] for m in rec["train"]["soup"]] == [42, 1042]
    assert (RunDir(out).log("teacher")).is_file()  # member 1's curve is the teacher's in the loss plot
    assert not RunDir(out).checkpoints_dir.exists()
    results = RunDir(out).results()
    assert {m.name for m in results.models} == {"teacher", "odd", "lora", "baseline"}
    assert results.by_name()["teacher"].objective.endswith("a uniform soup of 2 such teachers")
    assert "The teacher is a uniform soup of 2 such teachers" in (out / "report.md").read_text()
