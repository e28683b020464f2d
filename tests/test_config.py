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
    (["distill.temperature=hot"], "`distill.temperature` = 'hot' has the wrong type"),
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
