"""The model's own text normaliser: its steps, its round trip through save and load, and parity of
`predict` and `/api/predict` with the evaluation for a raw test sentence."""

import json

import numpy as np
import pandas as pd
import pytest
from transformers import AutoModelForSequenceClassification

from distillora import normalize
from distillora.audit import unseen
from distillora.config import load_config
from distillora.errors import UserError
from distillora.predict import load_model, predict, probabilities
from distillora.rundir import RunDir, probability_columns
from distillora.serve import create_app

from conftest import tiny_bert


def test_hate_speech_twitter_preset_reproduces_the_datasets_cleaning():
    n = normalize.Normalizer("hate_speech_twitter")
    assert n("RT @user: Look at THIS!!! https://t.co/x #Blessed 2day\u200b") == "look at this blessed day"
    assert n("no Palestine in 50 years, #euros2016") == "no palestine in years euros"  # train has no digits
    assert n("rt rt") == "rt"  # only a leading retweet marker goes
    assert n(n("Hello, @World!")) == n("Hello, @World!") == "hello"  # idempotent
    assert normalize.Normalizer("none")("  A b  ") == "  A b  "
    assert normalize.Normalizer(["lowercase", "collapse_spaces"])("  A   B ") == "a b"


def test_a_preset_whose_steps_changed_is_fingerprinted_by_its_steps():
    """hate_speech_twitter gained strip_digits: runs made under its old steps must train again, so its
    fingerprint holds the steps; the other presets keep their name, so their runs stay finished."""
    from distillora.config import stable_section

    def data_section(spec):
        return stable_section({"data": {"source": "d", "normalize": spec}}, "data")["normalize"]

    assert data_section("hate_speech_twitter") == normalize.PRESETS["hate_speech_twitter"]
    assert "strip_digits" in data_section("hate_speech_twitter")
    assert data_section("basic") == "basic" and data_section(["lowercase"]) == ["lowercase"]


@pytest.mark.parametrize("spec, needle", [("shout", "unknown preset"), (["lowercase", "nope"], "unknown step"),
                                          ([3], "list of step names")])
def test_bad_normalize_settings_are_refused(spec, needle):
    with pytest.raises(ValueError, match=needle):
        normalize.resolve(spec)
    with pytest.raises(UserError, match="data.normalize"):
        load_config(None, [f"data.normalize={json.dumps(spec)}"])


def test_normaliser_round_trips_through_save_and_load(tmp_path, minilm_tokenizer):
    model = tiny_bert(2, vocab_size=minilm_tokenizer.vocab_size)
    normalize.attach(model.config, normalize.resolve("hate_speech_twitter"))
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["distillora_normalize"] == normalize.PRESETS["hate_speech_twitter"]
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert normalize.of_model(loaded).steps == normalize.PRESETS["hate_speech_twitter"]
    raw, clean = "@user You ARE awful!!! http://x.co", "you are awful"
    assert probabilities(loaded, minilm_tokenizer, [raw]) == probabilities(loaded, minilm_tokenizer, [clean])
    bare = tiny_bert(2, vocab_size=minilm_tokenizer.vocab_size)  # no normaliser recorded: text as given
    assert normalize.of_model(bare).steps == []
    assert probabilities(bare, minilm_tokenizer, [raw]) != probabilities(bare, minilm_tokenizer, [clean])


def test_every_saved_model_of_a_run_carries_the_runs_normaliser(tiny_run):
    for d in (tiny_run / "models").iterdir():
        if (d / "config.json").is_file():
            cfg = json.loads((d / "config.json").read_text())
            assert cfg["distillora_normalize"] == normalize.PRESETS["hate_speech_twitter"], d.name


def test_raw_test_sentence_gets_the_evaluations_probability_in_predict_and_the_api(tiny_run):
    """A raw test row (capitals, @user, punctuation) scored by `predict` and `/api/predict` matches the
    probability the evaluation stored for that row, which it computed on the normalised split."""
    cfg = load_config(tiny_run / "config.yaml")
    test = pd.read_csv(cfg.data.test_file, keep_default_na=False)
    rows = [i for i, t in enumerate(test.tweet) if t != normalize.Normalizer(cfg.data.normalize)(t)]
    assert rows, "the slice should hold raw rows that the normaliser changes"
    i = rows[0]
    raw = test.tweet[i]
    client = create_app(tiny_run).test_client()
    for name in ("teacher", "odd", "lora"):
        stored = probability_columns(json.loads(RunDir(tiny_run).marker(name, ".test").read_text()))[i, 1]
        _, backend = load_model(tiny_run, name)
        (cli,) = predict(backend, [raw], cfg.data.label_names, cfg.data.max_length)
        assert cli["probabilities"]["hate"] == pytest.approx(stored, abs=1e-5), name
        r = client.post("/api/predict", json={"text": raw, "models": [name]})
        (res,) = r.get_json()["predictions"][0]["results"]
        assert res["probabilities"]["hate"] == pytest.approx(stored, abs=1e-5), name


def test_audit_flags_unseen_characters_and_names_the_preset_that_closes_the_gap():
    train = ["you are all great", "what a day"]
    other = ["@user you are GREAT!", "what a day"]  # 7 unseen characters: all within the top 8 listed
    u = unseen(train, other)
    assert u["rows"] == 1 and {"@", "G", "!"} <= set(u["chars"])
    assert u["closed_by"] == "hate_speech_twitter"
    assert unseen(train, ["what a great day"])["rows"] == 0
    assert unseen(train, ["what a day 2"])["closed_by"] == "hate_speech_twitter"  # digits: strip_digits


def test_a_runs_splits_are_rebuilt_with_the_steps_saved_with_its_models(tiny_run, tmp_path, caplog):
    """Export, `distillora check` and the benches rebuild a finished run's splits: with the normaliser
    saved with its teacher, not with what the run's `data.normalize` names today (a preset can change)."""
    import shutil

    from distillora.data import as_saved, load_splits
    from distillora.export import _splits

    run = RunDir(shutil.copytree(tiny_run, tmp_path / "run"))
    saved = normalize.saved_steps(run.model_dir("teacher"))
    assert saved == normalize.resolve("hate_speech_twitter")
    cfg = load_config(run.config)
    # the run's config now names another normaliser (as if the preset behind its name had changed)
    run.config.write_text(run.config.read_text().replace("normalize: hate_speech_twitter", "normalize: basic"))
    changed = load_config(run.config)
    assert changed.data.normalize == "basic"
    as_trained = load_splits(cfg.data, cfg.seed)
    assert load_splits(changed.data, cfg.seed).test.texts != as_trained.test.texts  # the change matters here
    with caplog.at_level("WARNING"):
        validation, test = _splits(run.root)
    assert test.texts == as_trained.test.texts and validation.texts == as_trained.validation.texts
    assert "trained with normalisation steps" in caplog.text
    assert as_saved(cfg.data, run.model_dir("teacher")).normalize == saved
    assert as_saved(cfg.data, tmp_path / "no-model") == cfg.data  # nothing saved to ask: the config's steps


def test_distillora_check_seeds_its_suites_with_validation_texts_normalised_as_the_models_were(tiny_run, tmp_path,
                                                                                               monkeypatch):
    import dataclasses
    import shutil

    from distillora import check, report
    from distillora.data import load_splits

    run = RunDir(shutil.copytree(tiny_run, tmp_path / "run"))
    cfg = load_config(run.config)
    # tweets that the run's normaliser and `basic` treat differently: each with a mention and digits
    train = pd.read_csv(cfg.data.train_file, keep_default_na=False)
    train["tweet"] = train["tweet"] + " @someone 123"
    train.to_csv(tmp_path / "train.csv", index=False)
    text = run.config.read_text().replace("normalize: hate_speech_twitter", "normalize: basic")
    run.config.write_text(text.replace(str(cfg.data.train_file), str(tmp_path / "train.csv")))
    changed = load_config(run.config)
    saved = dataclasses.replace(changed.data, normalize=normalize.saved_steps(run.model_dir("teacher")))
    want = load_splits(saved, cfg.seed).validation.texts
    assert load_splits(changed.data, cfg.seed).validation.texts != want  # the change matters here
    seen = {}

    def fake_run_checks(run_dir, names, specs, label_names, validation_texts, *rest):
        seen["validation"] = validation_texts
        return {}

    monkeypatch.setattr(check, "run_checks", fake_run_checks)
    monkeypatch.setattr(report, "write_report", lambda *a, **k: None)
    check.check_run(run.root, suites=["generic"])
    assert seen["validation"] == want and not any("@" in t for t in want)
