"""`teacher.linear_probe_epochs`: LP-FT (Kumar et al., ICLR 2022). The teacher's new head first learns
alone on the frozen pretrained body, then every weight is fine-tuned from it."""

import pytest
import torch

from distillora.config import load_config, stable_section, to_dict
from distillora.errors import UserError
from distillora.stages import teacher as teacher_stage

from conftest import stage_fingerprints, teacher_env, tiny_bert


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory, minilm_tokenizer):
    """A 4-layer, hidden-32 BERT saved without a classification head, as a pretrained encoder is."""
    d = tmp_path_factory.mktemp("tiny-encoder")
    tiny_bert(4, vocab_size=minilm_tokenizer.vocab_size).bert.save_pretrained(d)
    minilm_tokenizer.save_pretrained(d)
    return d


def test_the_new_weights_are_the_head_the_checkpoint_lacks(tiny_encoder_dir, tiny_teacher_dir):
    _, new = teacher_stage.load_pretrained(str(tiny_encoder_dir), ["no", "yes"], new_weights=True)
    assert new == {"classifier.weight", "classifier.bias"}
    # a checkpoint that already holds a 2-class head (a fine-tuned classifier) has none
    _, none = teacher_stage.load_pretrained(str(tiny_teacher_dir), ["no", "yes"], new_weights=True)
    assert none == set()


def test_the_probe_trains_the_head_alone_and_releases_the_body(tmp_path, minilm_tokenizer, tiny_encoder_dir,
                                                               small_data):
    env = teacher_env(tmp_path, "lp", minilm_tokenizer, small_data,
                      ["teacher.linear_probe_epochs=2", "teacher.linear_probe_learning_rate=0.01"])
    model, new = teacher_stage.load_pretrained(str(tiny_encoder_dir), env.cfg.data.label_names, new_weights=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model, stats = teacher_stage.linear_probe(env, model, new, "fp", "teacher")
    for name, p in model.named_parameters():
        assert p.requires_grad, name  # every weight learns in the fine-tuning that follows
        if name in new:
            assert not torch.equal(p, before[name]), name
        else:
            assert torch.equal(p, before[name]), name
    # 2 epochs of 60 training rows (80 less the 25% carve) at batch 8
    assert stats["steps"] == 2 * 8
    assert env.log_path("teacher.linear_probe").is_file()  # its own log, beside the teacher's


def test_the_teacher_with_a_probe_is_the_probe_then_the_fine_tuning(tmp_path, minilm_tokenizer, tiny_encoder_dir,
                                                                   small_data):
    from transformers import set_seed

    from distillora import normalize

    overrides = ["teacher.linear_probe_epochs=1", "teacher.linear_probe_learning_rate=0.01"]
    env = teacher_env(tmp_path, "stage", minilm_tokenizer, small_data, overrides)
    model, stats = teacher_stage.train(env, str(tiny_encoder_dir), "fp")

    # the same two steps by hand, in another work directory
    by_hand = teacher_env(tmp_path, "by-hand", minilm_tokenizer, small_data, overrides)
    set_seed(by_hand.cfg.seed)
    want, new = teacher_stage.load_pretrained(str(tiny_encoder_dir), by_hand.cfg.data.label_names, new_weights=True)
    normalize.attach(want.config, normalize.resolve(by_hand.cfg.data.normalize))
    want, probe = teacher_stage.linear_probe(by_hand, want, new, "fp", "teacher")
    want, ft = by_hand.fit(want, by_hand.cfg.teacher.train, "teacher", "fp")
    for (name, w), (_, got) in zip(want.named_parameters(), model.named_parameters()):
        assert torch.equal(w, got), name
    assert stats["linear_probe"]["steps"] == probe["steps"] and stats["steps"] == ft["steps"]
    assert stats["linear_probe"]["validation"] == probe["validation"]
    # its time was spent on this teacher: counted in the teacher's seconds
    assert stats["seconds"] > stats["linear_probe"]["seconds"] > 0

    # without the probe the teacher is another model
    plain, plain_stats = teacher_stage.train(teacher_env(tmp_path, "plain", minilm_tokenizer, small_data, []),
                                             str(tiny_encoder_dir), "fp")
    assert "linear_probe" not in plain_stats
    assert not torch.equal(plain.classifier.weight, model.classifier.weight)


def test_a_source_with_nothing_new_to_probe_is_refused(tmp_path, minilm_tokenizer, tiny_teacher_dir, small_data):
    env = teacher_env(tmp_path, "refused", minilm_tokenizer, small_data, ["teacher.linear_probe_epochs=1"])
    with pytest.raises(UserError, match="no new head is left to probe; set teacher.linear_probe_epochs: 0"):
        teacher_stage.train(env, str(tiny_teacher_dir), "fp")


def test_the_settings_are_validated_and_change_fingerprints_only_when_set():
    for bad, msg in (("teacher.linear_probe_epochs=-1", "teacher.linear_probe_epochs = -1.0: give 0"),
                     ("teacher.linear_probe_epochs=nan", "teacher.linear_probe_epochs = nan: must be a finite number"),
                     ("teacher.linear_probe_learning_rate=0", "teacher.linear_probe_learning_rate = 0.0: give a rate")):
        with pytest.raises(UserError, match=msg):
            load_config(None, [bad])
    default = stable_section(to_dict(load_config(None, [])), "teacher")
    assert "linear_probe_epochs" not in default and "linear_probe_learning_rate" not in default
    assert stage_fingerprints(["teacher.linear_probe_epochs=1"])["teacher"] != stage_fingerprints([])["teacher"]
    # its learning rate counts only when a probe is trained
    assert stage_fingerprints(["teacher.linear_probe_learning_rate=0.01"])["teacher"] == stage_fingerprints([])["teacher"]
    assert stage_fingerprints(["teacher.linear_probe_epochs=1", "teacher.linear_probe_learning_rate=0.01"])[
        "teacher"] != stage_fingerprints(["teacher.linear_probe_epochs=1"])["teacher"]


def test_the_objective_names_the_probe():
    from distillora import stages

    cfg = load_config(None, ["teacher.linear_probe_epochs=1"])
    teacher = [s for s in stages.plan(cfg, to_dict(cfg), 12) if s.name == "teacher"][0]
    assert teacher.objective == "cross-entropy, all weights fine-tuned after a linear probe of the new head (1 epoch, LP-FT)"


def test_a_study_with_a_probe_records_it_and_cleans_its_checkpoints(tmp_path, tiny_encoder_dir, small_data):
    from distillora.fileio import read_json
    from distillora.rundir import RunDir
    from distillora.study import run_study

    cfg = load_config(None, [
        f"data.source={small_data}", "data.validation_fraction=0.25", "data.max_length=32",
        f"teacher.source={tiny_encoder_dir}", "teacher.linear_probe_epochs=1", "teacher.train.epochs=1",
        "distill.train.epochs=1", "lora.train.epochs=1", "baseline.train.epochs=1", "lora.r=4", "lora.alpha=8",
        "check.suites=[]", "distill.students={odd: [1, 3]}"])
    out = run_study(cfg, tmp_path / "run", quiet=True)
    run = RunDir(out)
    probe = read_json(run.marker("teacher"))["train"]["linear_probe"]
    assert probe["steps"] == 2 and set(probe["validation"]) >= {"accuracy", "f1_macro"}  # 60 rows, batch 32
    assert run.log("teacher.linear_probe").is_file()
    assert not run.checkpoints_dir.exists()  # the probe's checkpoints went with the teacher's
    assert "after a linear probe of the new head (1 epoch, LP-FT)" in run.results().by_name()["teacher"].objective
    assert "The teacher's new head was first trained alone on the frozen pretrained body (2 steps" in (
        out / "report.md").read_text()


def test_a_soup_probes_once_and_every_member_starts_from_that_head(tmp_path, minilm_tokenizer, tiny_encoder_dir,
                                                                   small_data, monkeypatch):
    from distillora.stages.base import StageEnv

    real_fit, starts = StageEnv.fit, {}

    def spy(self, model, tc, key, *a, **k):
        starts[key] = model.classifier.weight.detach().clone()  # the head each fit starts from
        return real_fit(self, model, tc, key, *a, **k)

    monkeypatch.setattr(StageEnv, "fit", spy)
    env = teacher_env(tmp_path, "soup", minilm_tokenizer, small_data,
                      ["teacher.soup=2", "teacher.linear_probe_epochs=1", "teacher.linear_probe_learning_rate=0.01"])
    _, stats = teacher_stage.train(env, str(tiny_encoder_dir), "fp")
    assert set(starts) == {"teacher.linear_probe", "teacher", "teacher.member2"}  # one probe for the soup
    assert torch.equal(starts["teacher"], starts["teacher.member2"])
    assert not torch.equal(starts["teacher"], starts["teacher.linear_probe"])  # the probe's trained head
    assert [m["seed"] for m in stats["soup"]] == [42, 1042] and stats["linear_probe"]["steps"] > 0
