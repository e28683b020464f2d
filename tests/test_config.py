import pytest

from distillora.config import load_config
from distillora.errors import UserError

REPO_CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("preset", ["seed", "quick", "smoke"])
def test_presets_load(preset):
    cfg = load_config(REPO_CONFIGS / f"{preset}.yaml")
    assert cfg.name == preset


def test_seed_preset_is_the_seed_study():
    cfg = load_config(REPO_CONFIGS / "seed.yaml")
    assert cfg.teacher.source == "mpnet-base"
    assert cfg.distill.students == {"odd": "odd", "even": "even"}


def test_override_keeps_other_section_defaults(tmp_path):
    cfg = load_config(None, ["teacher.train.epochs=1", "distill.temperature=4"])
    assert cfg.teacher.train.epochs == 1.0 and cfg.teacher.train.learning_rate == 3e-5
    assert cfg.distill.temperature == 4.0


@pytest.mark.parametrize("overrides,needle", [
    (["teacher.trian.epochs=1"], "unknown key `teacher.trian`"),
    (["distill.temperature=hot"], "`distill.temperature` = 'hot' has the wrong type; expected a number. Softmax temperature"),
    # the type in words and the setting's first help sentence, which names the values it takes
    (["group_weights=true"], "`group_weights` = True has the wrong type; expected text or null. Group-balanced"),
    (["seeds=x"], "expected a list (each item a whole number)"),
    (["distill.temperature=0"], "distill.temperature = 0.0: must be > 0"),
    (["distill.students={odd: [1, 1]}"], "more than once"),
    (["distill.students={odd: []}"], "non-empty"),
    (["baseline.layers=[0, 2]"], None),  # range is checked against the teacher's depth at run time
    (["lora.r=0"], "lora.r = 0"),
    (["data.label_names=[a]"], "two or more distinct"),
    (["nonsense"], "key=value"),
])
def test_bad_config_values(overrides, needle):
    if needle is None:
        cfg = load_config(None, overrides)
        assert cfg.baseline.layers == [0, 2]  # accepted here; the teacher's depth is checked at run time:
        from transformers import BertConfig

        from distillora.study import _check_models

        with pytest.raises(UserError, match=r"baseline.layers = \[0, 2\]"):
            _check_models(cfg, BertConfig(num_hidden_layers=4, hidden_size=32, num_attention_heads=2,
                                          intermediate_size=64))
        return
    with pytest.raises(UserError) as e:
        load_config(None, overrides)
    assert needle in str(e.value)


def test_all_problems_reported_at_once():
    with pytest.raises(UserError) as e:
        load_config(None, ["distill.temperature=-1", "lora.r=0"])
    assert "temperature" in str(e.value) and "lora.r" in str(e.value)


def test_yaml_syntax_error_names_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nteacher: [unclosed\n")
    with pytest.raises(UserError, match=r"bad.yaml: line \d+, column \d+"):
        load_config(p)


def test_quality_bars_default_to_the_reference_tasks_and_can_be_switched_off():
    from distillora.config import QUALITY_BARS
    from distillora.report import analysis
    from distillora.rundir import Results

    assert load_config(None).quality_bars == QUALITY_BARS
    cfg = load_config(REPO_CONFIGS / "targets.yaml")
    assert cfg.quality_bars is None
    with pytest.raises(UserError, match="quality_bars.teacher_acc"):
        load_config(None, ["quality_bars={teacher_acc: 0.9}"])
    test = {"accuracy": 0.5, "f1_macro": 0.4, "confusion": [[1, 1], [1, 1]],
            "per_class": {"a": {"precision": 0.5, "recall": 0.5, "f1": 0.5}, "b": {"precision": 0.5, "recall": 0.5, "f1": 0.5}}}
    model = {"num_layers": 2, "objective": "x", "params_total": 10, "params_trainable": 10, "train": {}, "validation": {},
             "test": test, "inference": {"examples_per_s": 1.0}, "size_bytes": 1}
    results = Results.from_dict({
        "name": "t", "dataset": {"label_names": ["a", "b"], "rows": {"test": 4}, "label_counts": {"test": [2, 2], "train": [2, 2]}},
        "models": [{**model, "name": "teacher", "kind": "teacher", "teacher_layers": [1, 2]},
                   {**model, "name": "s", "kind": "distilled", "teacher_layers": [1]},
                   {**model, "name": "lo", "kind": "lora", "teacher_layers": [1], "params_trainable": 1},
                   {**model, "name": "ba", "kind": "baseline", "teacher_layers": [1]}],
        "best_student": "s", "selection_metric": "f1_macro", "significance": [], "audit": {},
        "wall_seconds_this_invocation": 1.0, "versions": {}})
    judged = "\n".join(analysis(results, QUALITY_BARS))
    assert "falls short of the target of 0.80" in judged and "is not met" in judged
    assert "which meets the 97% target" in judged  # the student keeps 100% of the teacher's 0.5
    plain = "\n".join(analysis(results, None))
    assert "target" not in plain and "keeps 100.0% of the teacher's test accuracy (0.500)" in plain


@pytest.mark.parametrize("preset", sorted(p.name for p in REPO_CONFIGS.glob("*.yaml")))
def test_every_presets_extra_training_files_load_from_the_repository_root(preset, monkeypatch):
    """The presets name data.extra_train relative to the repository root, where the README's commands run."""
    from distillora.data import load_table

    cfg = load_config(REPO_CONFIGS / preset)
    monkeypatch.chdir(REPO_CONFIGS.parent)
    for path in cfg.data.extra_train:
        split = load_table(path, cfg.data, cfg.data.label_names)
        assert len(split) > 100 and set(split.labels.tolist()) == {0, 1}


def test_the_authored_sets_share_no_sentence_across_training_development_and_test(shared_data):
    """No row of a configs/augment training file may equal, or nearly equal (normalised word sets at
    Jaccard 0.6 or more), a row of a development set or of the test split; no row of the functional
    development set one of the older development set, of the test split or of the train split; no row of
    the implicit set one of the other two, of the test split or of the train split
    (configs/augment/README.md, configs/dev/README.md)."""
    import csv

    from distillora.normalize import Normalizer, resolve

    norm = Normalizer(resolve("hate_speech_twitter"))

    def word_sets(path):
        with open(path, newline="", encoding="utf-8") as f:
            return [set(norm(r["tweet"]).split()) for r in csv.DictReader(f)]

    augment = sorted((REPO_CONFIGS / "augment").glob("*.csv"))
    dev, functional, implicit = (REPO_CONFIGS / "dev" / n for n in ("short_sentences.csv", "functional_sentences.csv",
                                                                      "implicit_sentences.csv"))
    test, train = shared_data / "test.csv", shared_data / "train.csv"
    assert len(augment) >= 2
    for one, others in ([(a, (dev, functional, implicit, test)) for a in augment] + [(functional, (dev, test, train))]
                        + [(implicit, (dev, functional, test, train))]):
        rows = word_sets(one)
        for other in others:
            held_out = word_sets(other)
            near = [a for a in rows if any(len(a & b) >= 0.6 * len(a | b) for b in held_out)]
            assert not near, f"{len(near)} rows of {one.name} are (nearly) in {other.name}"
