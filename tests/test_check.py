"""Behavioural checks: the suite format and its errors, generation, scoring (stub predictors), the
intervals and flags, a tiny model trained here on a known rule, and `distillora check` on a tiny run."""

from __future__ import annotations

import shutil
import textwrap

import numpy as np
import pytest
import torch

from distillora import stats
from distillora.check import check_models, evaluate_suite, score, summarise
from distillora.cli import main
from distillora.errors import UserError
from distillora.fileio import read_json
from distillora.suites import Case, Test, builtin_suites, generate, load_suite

LABELS = ["not_hate", "hate"]


def _write(tmp_path, text: str, name: str = "suite.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


def _error(spec) -> str:
    with pytest.raises(UserError) as e:
        load_suite(spec)
    return str(e.value)


# ----------------------------------------------------------------------------- the suite loader

def test_builtin_suites_load_and_generate_enough_cases():
    assert builtin_suites() == ["generic", "hate_speech"]
    validation = [f"tweet number {i} about the weather, really" for i in range(300)]
    hate = generate(load_suite("hate_speech"))
    generic = generate(load_suite("generic"), validation)
    n_hate, n_generic = sum(map(len, hate.values())), sum(map(len, generic.values()))
    assert n_hate >= 1500  # the hate suite alone meets the 1,500 cases
    assert n_generic >= 900
    capabilities = {t.capability for t in load_suite("generic").tests}
    assert capabilities == {"case", "punctuation", "@user mentions", "hashtags", "URLs", "emoji", "typos", "whitespace"}
    assert {t.type for t in load_suite("hate_speech").tests} == {"MFT", "INV", "DIR"}
    for cases in list(hate.values()) + list(generic.values()):
        assert len(cases) <= 150 and len({(c.text, c.perturbed) for c in cases}) == len(cases)
        assert all(c.perturbed != c.text for c in cases if c.perturbed is not None)


def test_generation_is_deterministic_and_capped(tmp_path):
    p = _write(tmp_path, """
        labels: [not_hate, hate]
        seed: 3
        max_cases_per_test: 7
        lexicons: {a: [x1, x2, x3, x4], b: [y1, y2, y3]}
        tests:
          - {name: t, capability: c, type: MFT, templates: ["{a} and {b}", "{b} {{literal}} {a}"], expect: hate}
          - {name: u, capability: c, type: MFT, templates: ["{a} {a}"], expect: not_hate, max_cases: 100}
          - {name: v, capability: c, type: INV, templates: ["{a} is {b}"], perturb: ["{text} #{b}"], max_cases: 5}
    """)
    first, second = generate(load_suite(p)), generate(load_suite(p))
    assert [(c.text, c.perturbed) for cs in first.values() for c in cs] == \
           [(c.text, c.perturbed) for cs in second.values() for c in cs]
    assert len(first["t"]) == 7 and len(first["v"]) == 5
    assert all("{literal}" in c.text or " and " in c.text for c in first["t"])
    assert sorted(c.text for c in first["u"]) == sorted(f"{v} {v}" for v in ["x1", "x2", "x3", "x4"])  # same value twice
    assert all(c.perturbed.startswith(c.text + " #y") for c in first["v"])


BAD_SUITE = """\
labels: [not_hate, hate]
lexicons:
  group: [women, men]
tests:
  - name: one
    capability: explicit hate
    type: MTF
    templates: ["{group} are bad"]
    expect: hate
  - name: two
    capability: explicit hate
    type: MFT
    templates: ["{grop} are bad"]
    expect: hateful
  - name: three
    capability: case
    type: INV
    templates: ["{group} are here"]
    perturb: uppercase
  - name: four
    capability: urls
    type: INV
    templates: ["{group} are here"]
    perturb: ["{url} appended"]
    colour: red
  - name: five
    capability: dir
    type: DIR
    templates: ["{group} are here"]
    perturb: upper
    direction: sideways
    label: hate
"""


def test_bad_suite_lists_every_problem_with_file_line_value_and_fix(tmp_path):
    p = _write(tmp_path, BAD_SUITE)
    msg = _error(p)
    assert "8 problems" in msg
    assert f"{p}:7: `tests[0].type` = 'MTF': use one of MFT, INV, DIR" in msg
    assert f"{p}:13: `tests[1].templates[0]`" in msg and "placeholder {grop} is not a lexicon" in msg \
        and "did you mean group" in msg
    assert f"{p}:14: `tests[1].expect` = 'hateful': use one of the suite's labels ['not_hate', 'hate']" in msg
    assert f"{p}:19: `tests[2].perturb` = 'uppercase' is not a built-in perturbation" in msg
    assert f"{p}:24: `tests[3].perturb[0]` = '{{url}} appended' has no {{text}}" in msg
    assert f"{p}:24: `tests[3].perturb[0]` = '{{url}} appended': placeholder {{url}} is not a lexicon" in msg
    assert f"{p}:25: `tests[3].colour` is not a test key" in msg
    assert f"{p}:31: `tests[4].direction` = 'sideways': use up or down" in msg


@pytest.mark.parametrize("text, needle", [
    ("tests: [\n  {name: a, capability: b, type: MFT, templates: [x], expect: hate\n", ":3: not valid YAML"),
    ("- just a list\n", "must be a mapping with `tests`"),
    ("tests: []\n", "`tests` = []: give a non-empty list"),
    ("tests:\n  - {name: a, capability: b, type: MFT, templates: [x], expect: hate}\n",
     "a MFT test names a label, so the suite needs a top-level `labels: [...]` list"),
    ("lexicons: {x: [1, 2]}\ntests:\n  - {name: a, capability: b, type: INV, seeds: validation, perturb: typo}\n",
     "`lexicons.x` = [1, 2]: give a non-empty list of non-empty strings"),
    ("tests:\n  - {name: a, capability: b, type: INV, perturb: typo}\n",
     "give exactly one of `templates` (seed sentences) or `seeds: validation`"),
    ("tests:\n  - {name: a, capability: b, type: INV, seeds: train, perturb: typo}\n",
     "`tests[0].seeds` = 'train': the one seed source is `validation`"),
    ("tests:\n  - {name: a, capability: b, type: INV, seeds: validation, perturb: typo, expect: hate}\n",
     "`tests[0].expect` does not apply to a INV test"),
    ("tests:\n  - {name: a, capability: b, type: INV, seeds: validation, perturb: typo}\n"
     "  - {name: a, capability: b, type: INV, seeds: validation, perturb: upper}\n", "= 'a' is used twice"),
    ("labels: [n, h]\ntests:\n  - {name: a, capability: b, type: MFT, templates: ['{x:>3}'], expect: h}\n",
     "is not a plain {name}"),
    ("labels: [n, h]\ntests:\n  - {name: a, capability: b, type: DIR, seeds: validation, perturb: typo, "
     "direction: up, label: h, tolerance: 2}\n", "`tests[0].tolerance` = 2: give a probability change in [0, 1)"),
])
def test_suite_errors(tmp_path, text, needle):
    assert needle in _error(_write(tmp_path, text))


def test_missing_suite_names_the_builtins():
    assert "not a built-in suite; use a YAML file or one of generic, hate_speech" in _error("hate-speech")


def test_config_rejects_unknown_suite():
    from distillora.config import load_config

    with pytest.raises(UserError, match=r"check.suites\[1\] = 'nope': not a built-in suite"):
        load_config(None, ["check.suites=[generic, nope]"])
    assert load_config(None, ["check.suites=[]"]).check.suites == []


# ----------------------------------------------------------------------------- scoring only (stub predictors)
# These tests exercise the scoring and the summary with hand-made probabilities: no model involved.

def test_score_mft_inv_dir_on_given_probabilities():
    mft = Test("m", "c", "MFT", expect="hate")
    passed, change = score(mft, [Case("a", expect="hate")] * 3, LABELS, [[0.2, 0.8], [0.7, 0.3], [0.5, 0.5]])
    assert passed.tolist() == [True, False, False] and change is None  # a tie goes to label 0, as in predict
    inv = Test("i", "c", "INV", perturb="upper")
    cases = [Case("a", "A")] * 3
    passed, change = score(inv, cases, LABELS, [[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]], [[0.7, 0.3], [0.3, 0.7], [0.1, 0.9]])
    assert passed.tolist() == [True, False, True] and np.allclose(change, [0.2, 0.3, 0.1])
    up = Test("d", "c", "DIR", perturb="upper", direction="up", label="hate", tolerance=0.05)
    before, after = [[0.5, 0.5]] * 4, [[0.4, 0.6], [0.5, 0.5], [0.54, 0.46], [0.6, 0.4]]
    passed, delta = score(up, [Case("a", "A")] * 4, LABELS, before, after)
    assert passed.tolist() == [True, True, True, False] and np.allclose(delta, [0.1, 0, -0.04, -0.1])
    down = Test("d", "c", "DIR", perturb="upper", direction="down", label="hate", tolerance=0.0)
    assert score(down, [Case("a", "A")] * 4, LABELS, before, after)[0].tolist() == [False, True, True, True]


def _stub(texts):
    """hate iff the text holds 'vermin' (any case), slightly shifted by upper case letters."""
    out = []
    for t in texts:
        p = 0.9 if "vermin" in t.lower() else 0.1
        p = min(1.0, p + 0.45 * (sum(ch.isupper() for ch in t) > 3))  # a stub that is not case-invariant
        out.append([1 - p, p])
    return out


STUB_SUITE = """\
labels: [not_hate, hate]
lexicons: {g: [cats, dogs, birds, fish]}
tests:
  - {name: hate, capability: explicit, type: MFT, templates: ["{g} are vermin"], expect: hate}
  - {name: neutral, capability: neutral, type: MFT, templates: ["{g} are nice"], expect: not_hate}
  - {name: upper, capability: case, type: INV, templates: ["{g} are nice", "{g} are vermin"], perturb: upper}
  - {name: add hate, capability: direction, type: DIR, templates: ["{g} are nice"],
     perturb: ["{text} and vermin"], direction: up, label: hate}
"""


def test_evaluate_suite_with_a_stub_predictor(tmp_path):
    suite = load_suite(_write(tmp_path, STUB_SUITE))
    cases = generate(suite)
    res = evaluate_suite(suite, cases, LABELS, _stub)
    assert res["hate"]["passed"] == "1111" and res["neutral"]["passed"] == "1111"
    assert res["add hate"]["passed"] == "1111"
    # upper case flips only the not_hate seeds (0.1 -> 0.55); the hateful ones stay hate (0.9 -> 1.0)
    flips = [c.text.endswith("nice") for c in cases["upper"]]
    assert res["upper"]["passed"] == "".join("0" if f else "1" for f in flips)
    worst = res["upper"]["worst"]
    assert len(worst) == 4 and all(w["from"] == "not_hate" and w["to"] == "hate" for w in worst)
    assert all(abs(w["change"] - 0.45) < 1e-9 for w in worst) and worst[0]["perturbed"] == worst[0]["text"].upper()


def test_served_predictor_answers_each_normalised_text_once_in_input_order(monkeypatch, tmp_path):
    """Texts the model's normaliser makes equal go through the model once, as one of their raw texts;
    every input still gets its answer, in order."""
    from distillora import check, inference
    from distillora.normalize import Normalizer

    calls = []

    class Stub:
        method = "fp32"
        normalizer = Normalizer(["lowercase", "strip_mentions", "collapse_spaces"])

        def probabilities(self, texts, max_length=128):
            calls.append(list(texts))
            return [[1 - len(self.normalizer(t)) / 100, len(self.normalizer(t)) / 100] for t in texts]

    monkeypatch.setattr(inference, "load_served", lambda run_dir, name, model_dir: Stub())
    method, predict = check.served_predictor(tmp_path, "odd", 128)
    texts = ["Hello there", "hello there", "@user hello there", "a much longer sentence", "A much longer sentence"]
    out = predict(texts)
    assert method == "fp32"
    assert out[0] == out[1] == out[2] and out[3] == out[4]
    assert out[0][1] == pytest.approx(0.11) and out[3][1] == pytest.approx(0.22)
    sent = [t for c in calls for t in c]
    assert sent == ["Hello there", "a much longer sentence"]  # shortest first, the first raw text of each


# ----------------------------------------------------------------------------- intervals and flags

def test_paired_bootstrap_diff():
    ones, zeros = np.ones(50), np.zeros(50)
    assert stats.paired_bootstrap_diff(ones, zeros) == (1.0, 1.0)
    assert stats.paired_bootstrap_diff(ones, ones) == (0.0, 0.0)
    rng = np.random.default_rng(1)
    a, b = rng.random(2000) < 0.8, rng.random(2000) < 0.6
    lo, hi = stats.paired_bootstrap_diff(a, b, resamples=2000)
    d = a.mean() - b.mean()
    se = np.std(a.astype(float) - b, ddof=1) / np.sqrt(len(a))  # normal approximation of the same interval
    assert lo < d < hi and abs((hi - lo) - 2 * 1.96 * se) < 0.15 * (2 * 1.96 * se)
    with pytest.raises(ValueError, match="equal-length"):
        stats.paired_bootstrap_diff(ones, ones[:3])


def _results(passes: dict[str, dict[str, str]]) -> dict:
    return {m: {t: {"passed": s, "worst": []} for t, s in per.items()} for m, per in passes.items()}


def test_summary_rates_intervals_flags_and_balanced_figure(tmp_path):
    suite = load_suite(_write(tmp_path, """
        labels: [not_hate, hate]
        lexicons: {n: ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16", "17",
                       "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31", "32",
                       "33", "34", "35", "36", "37", "38", "39", "40"]}
        tests:
          - {name: h, capability: hate, type: MFT, templates: ["hate {n}"], expect: hate, max_cases: 10}
          - {name: o, capability: other, type: MFT, templates: ["ok {n}"], expect: not_hate, max_cases: 30}
          - {name: p, capability: other, type: INV, templates: ["x {n}"], perturb: upper, max_cases: 40}
    """))
    cases = generate(suite)
    assert [len(cases[t]) for t in "hop"] == [10, 30, 40]
    res = _results({
        "teacher": {"h": "1" * 10, "o": "1" * 30, "p": "1" * 40},
        "student": {"h": "1" * 10, "o": "0" * 30, "p": "1" * 20 + "0" * 20},   # loses `other` clearly
        "same": {"h": "1" * 10, "o": "1" * 30, "p": "1" * 39 + "0"},            # one case worse: not beyond chance
    })
    s = summarise(suite, cases, res, resamples=500, seed=0)
    caps = {c["name"]: c for c in s["capabilities"]}
    assert caps["other"]["cases"] == 70 and caps["other"]["types"] == ["INV", "MFT"]
    st = caps["other"]["models"]["student"]
    assert st["pass_rate"] == pytest.approx(20 / 70) and st["ci95"][0] < 20 / 70 < st["ci95"][1]
    assert st["flagged"] and st["diff_ci95"][1] < 0 and st["diff_vs_teacher"] == pytest.approx(20 / 70 - 1)
    assert not caps["other"]["models"]["same"]["flagged"]
    assert not caps["hate"]["models"]["student"]["flagged"]
    assert "flagged" not in caps["hate"]["models"]["teacher"]
    assert caps["hate"]["models"]["teacher"]["ci95"] == [1.0, 1.0]
    ov = s["overall"]["student"]
    assert ov["mean_pass_rate"] == pytest.approx((1.0 + 20 / 70) / 2)
    # MFT: hate 10/10, not_hate 0/30 -> balanced 0.5 (pooled would be 0.25)
    assert ov["balanced_mft_pass_rate"] == pytest.approx(0.5)
    assert ov["mft_pass_rate_by_label"] == {"hate": 1.0, "not_hate": 0.0}


def test_pass_rate_interval_matches_the_normal_approximation(tmp_path):
    n = 400
    passed = np.random.default_rng(0).random(n) < 0.7
    lo, hi = stats.bootstrap_ci(np.ones(n, dtype=int), passed.astype(int), "accuracy", 2000, 0)
    p = passed.mean()
    half = 1.96 * np.sqrt(p * (1 - p) / n)
    assert abs(lo - (p - half)) < 0.01 and abs(hi - (p + half)) < 0.01


def test_suite_that_does_not_fit_the_labels_is_skipped_with_a_note():
    checks = check_models({"teacher": lambda: ("fp32", _stub)}, ["generic", "hate_speech"], ["negative", "positive"],
                          [f"sentence {i} is Here" for i in range(30)], resamples=100)
    by = {s["name"]: s for s in checks["suites"]}
    assert by["hate_speech"]["skipped"] == "its labels ['not_hate', 'hate'] are not the run's ['negative', 'positive']"
    assert by["generic"]["skipped"] is None and by["generic"]["cases"] > 0
    assert checks["models"] == {"teacher": "fp32"}


# ----------------------------------------------------------------------------- a tiny model trained on a known rule

@pytest.fixture(scope="module")
def rule_model(minilm_tokenizer):
    """A tiny BERT trained here until it follows one rule: hate iff the sentence contains 'vermin'.
    The MiniLM tokenizer lowercases, so upper-casing a sentence cannot change its tokens."""
    from conftest import tiny_bert

    words = ["cats", "dogs", "birds", "fish", "people", "cars", "trees", "rivers", "songs", "towns"]
    rng = np.random.default_rng(0)
    texts, labels = [], []
    for _ in range(256):
        w = [words[i] for i in rng.integers(len(words), size=3)]
        hate = bool(rng.random() < 0.5)
        if hate:
            w.insert(int(rng.integers(4)), "vermin")
        texts.append(" ".join(w))
        labels.append(int(hate))
    model = tiny_bert(2, seed=0, vocab_size=minilm_tokenizer.vocab_size).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny steps: one thread is ~30x faster than two on a busy machine (measured)
    try:
        for step in range(120):
            idx = rng.integers(len(texts), size=32)
            batch = minilm_tokenizer([texts[i] for i in idx], padding=True, return_tensors="pt")
            loss = model(**batch, labels=torch.tensor([labels[i] for i in idx])).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def test_each_test_type_on_a_tiny_model_trained_on_a_rule(tmp_path, rule_model, minilm_tokenizer):
    from distillora.predict import probabilities

    suite = _write(tmp_path, """
        labels: [not_hate, hate]
        lexicons: {w: [cats, dogs, birds, fish, people, cars, trees], v: [songs, towns, rivers]}
        tests:
          - {name: with the word, capability: rule, type: MFT, templates: ["{w} {v} vermin", "vermin {w} {v}"], expect: hate}
          - {name: without it, capability: rule, type: MFT, templates: ["{w} {v} {w}"], expect: not_hate}
          - {name: upper case, capability: case, type: INV, templates: ["{w} {v}", "{w} vermin {v}"], perturb: upper}
          - {name: word added, capability: direction, type: DIR, templates: ["{w} {v} {w}"],
             perturb: ["{text} vermin"], direction: up, label: hate}
          - {name: word added the wrong way, capability: wrong, type: DIR, templates: ["{w} {v} {w}"],
             perturb: ["{text} vermin"], direction: down, label: hate}
    """)
    predict = lambda texts: probabilities(rule_model, minilm_tokenizer, texts, 32)  # noqa: E731
    checks = check_models({"teacher": lambda: ("fp32", predict)}, [str(suite)], LABELS, None, resamples=200)
    caps = {c["name"]: c["models"]["teacher"] for c in checks["suites"][0]["capabilities"]}
    assert caps["rule"]["pass_rate"] == 1.0
    assert caps["case"]["pass_rate"] == 1.0
    assert caps["direction"]["pass_rate"] == 1.0
    assert caps["wrong"]["pass_rate"] == 0.0  # the trained rule moves p(hate) up, never down


# ----------------------------------------------------------------------------- a finished run

def test_run_reports_checks_by_default(tiny_run):
    checks = read_json(tiny_run / "checks.json")
    assert [s["name"] for s in checks["suites"]] == ["generic", "hate_speech"]
    assert list(checks["models"]) == ["teacher", "odd", "even", "lora", "baseline"]
    for s in checks["suites"]:
        assert s["skipped"] is None and s["cases"] > 0
        for c in s["capabilities"]:
            for m, e in c["models"].items():
                assert 0 <= e["ci95"][0] <= e["pass_rate"] <= e["ci95"][1] <= 1
                assert (m == "teacher") == ("flagged" not in e)
    md = (tiny_run / "report.md").read_text()
    assert "## Behavioural checks" in md and "### Suite `hate_speech`" in md and "mean over capabilities" in md
    assert (tiny_run / "plots" / "checks_heatmap.png").stat().st_size > 1000
    assert "data:image/png;base64" in (tiny_run / "report.html").read_text()


def test_check_command_on_a_copy_of_a_run(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "checks.json").unlink()
    assert main(["check", "--run", str(run), "--suite", "hate_speech"]) == 0
    out = capsys.readouterr().out
    assert "suite hate_speech" in out and "negated hate" in out and "written:" in out
    checks = read_json(run / "checks.json")
    assert [s["name"] for s in checks["suites"]] == ["hate_speech"]
    assert "### Suite `hate_speech`" in (run / "report.md").read_text()
    assert "### Suite `generic`" not in (run / "report.md").read_text()


def test_check_command_bad_suite_is_exit_2_without_traceback(tiny_run, tmp_path, capsys):
    p = _write(tmp_path, BAD_SUITE)
    assert main(["check", "--run", str(tiny_run), "--suite", str(p)]) == 2
    err = capsys.readouterr().err
    assert "invalid behavioural suite (8 problems)" in err and "Traceback" not in err
    assert main(["check", "--run", str(tmp_path), "--suite", "generic"]) == 2
    assert "not a finished run" in capsys.readouterr().err


def test_app_shows_the_capability_table(tiny_run):
    from distillora.serve import create_app

    client = create_app(tiny_run).test_client()
    page = client.get("/").get_data(as_text=True)
    assert 'id="checks"' in page and 'data-suite="hate_speech"' in page and "negated hate" in page
    body = client.get("/api/checks").get_json()
    assert [s["name"] for s in body["suites"]] == ["generic", "hate_speech"]
    assert "results" not in body["suites"][0] and body["suites"][1]["capabilities"][0]["models"]["teacher"]["ci95"]


def test_app_without_readable_checks_shows_none(tmp_path):
    from distillora.serve.app import capability_table

    assert capability_table(tmp_path) is None and capability_table(None) is None
    (tmp_path / "checks.json").write_text("{not json")
    assert capability_table(tmp_path) is None


def test_report_section_escapes_texts_and_lists_worst_failures(tmp_path):
    from distillora.fileio import write_json
    from distillora.report_checks import section

    suite = load_suite(_write(tmp_path, STUB_SUITE))
    cases = generate(suite)
    cases["upper"][0] = Case("<script>alert(1)</script> | *x*", "<SCRIPT>ALERT(1)</SCRIPT> | *X*")
    results = {m: evaluate_suite(suite, cases, LABELS, _stub) for m in ("teacher", "student")}
    entry = {"name": suite.name, "source": "test", "skipped": None, "cases": 16, "seed_source": "templates",
             "tests": [{"name": t.name, "type": t.type} for t in suite.tests], "results": results,
             **summarise(suite, cases, results, resamples=100)}
    write_json(tmp_path / "checks.json", {"models": {"teacher": "fp32", "student": "bf16"}, "resamples": 100,
                                          "suites": [entry, {"name": "other", "skipped": "its labels differ"}]})
    md = "\n".join(section(tmp_path))
    assert "&lt;script&gt;alert(1)&lt;/script&gt; \\| \\*x\\*" in md and "<script>" not in md
    assert "Worst invariance failures" in md and "`teacher` not_hate → hate (largest probability change 0.45)" in md
    assert "- Suite `other` skipped: its labels differ." in md and "teacher (fp32), student (bf16)" in md
    assert "| case | INV | 8 | 0.50 [" in md  # the stub flips the 4 not_hate seeds (one is the script) of 8
    assert (tmp_path / "plots" / "checks_heatmap.png").is_file()
