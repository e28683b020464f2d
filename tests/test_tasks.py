"""Tasks other than binary single texts, end to end on tiny random models (4-layer, hidden-32 BERT):
a 3-class task (the target group of hateful tweets, filtered from the shared data with `data.where`,
label names inferred) and a 3-class sentence-pair task. Each: train -> results.json -> `predict` ->
/api/predict -> CSV batch -> the page in a real browser."""

from __future__ import annotations

import io
import json
import shutil
import socket
import threading

import numpy as np
import pandas as pd
import pytest
from transformers import BertConfig, BertModel
from werkzeug.serving import make_server

from conftest import TINY

from distillora.cli import main
from distillora.serve import create_app

MODELS = ["teacher", "odd", "even", "lora", "baseline"]
GROUPS = ["Gender", "Race", "Religion"]  # inferred: the distinct texts, sorted
NLI = ["entailment", "neutral", "contradiction"]
TINY_TRAINING = ["data.max_length=32", "teacher.train.epochs=1", "distill.train.epochs=1", "lora.train.epochs=1",
                 "baseline.train.epochs=1", "lora.r=4", "lora.alpha=8", "teacher.train.batch_size=16",
                 "distill.train.batch_size=16", "lora.train.batch_size=16", "baseline.train.batch_size=16",
                 "data.validation_fraction=0.25"]


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory, minilm_tokenizer):
    """A 4-layer hidden-32 BERT encoder without a classification head (as a pretrained bundle is), so the
    teacher stage gives it a head of any size."""
    import torch

    d = tmp_path_factory.mktemp("tiny-encoder")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=minilm_tokenizer.vocab_size, num_hidden_layers=4, **TINY)).save_pretrained(d)
    minilm_tokenizer.save_pretrained(d)
    return d


def _run(out, overrides) -> None:
    assert main(["run", "--output", str(out), "--quiet", *overrides]) == 0


@pytest.fixture(scope="module")
def groups_run(tmp_path_factory, tiny_encoder_dir, shared_data):
    out = tmp_path_factory.mktemp("groups") / "run"
    _run(out, ["name=groups", f"data.source={shared_data}", "data.label_column=categories", "data.label_names=null",
               "data.where={label: 1, categories: [Race, Gender, Religion]}", "data.category_column=null",
               "data.max_train_rows=60", f"teacher.source={tiny_encoder_dir}", *TINY_TRAINING])
    return out


def _pair_rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    words = ["cat", "dog", "man", "woman", "car", "tree", "runs", "sleeps", "eats", "the", "a", "red", "blue"]
    rows = []
    for i in range(n):
        a = " ".join(rng.choice(words, 5))
        label = i % 3
        b = a if label == 0 else (" ".join(rng.choice(words, 4)) if label == 1 else "not " + a)
        rows.append({"premise": a, "hypothesis": b, "label": label})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def pairs_run(tmp_path_factory, tiny_encoder_dir):
    root = tmp_path_factory.mktemp("pairs")
    _pair_rows(60, 0).to_csv(root / "train.csv", index=False)
    _pair_rows(30, 1).to_csv(root / "test.csv", index=False)
    out = root / "run"
    _run(out, ["name=pairs", f"data.source={root}", "data.text_column=premise", "data.text_pair_column=hypothesis",
               f"data.label_names=[{', '.join(NLI)}]", f"teacher.source={tiny_encoder_dir}", *TINY_TRAINING])
    return out


# ----------------------------------------------------------------------------- results

def test_three_class_results(groups_run):
    r = json.loads((groups_run / "results.json").read_text())
    ds = r["dataset"]
    assert ds["label_names"] == GROUPS and ds["where"] == {"label": 1, "categories": ["Race", "Gender", "Religion"]}
    # the shared test split's hate rows of these groups: Gender 56, Race 64, Religion 52
    assert ds["label_counts"]["test"] == [56, 64, 52] and ds["rows"]["train"] + ds["rows"]["validation"] == 60
    assert [m["name"] for m in r["models"]] == MODELS
    for m in r["models"]:
        t = m["test"]
        assert np.array(t["confusion"]).shape == (3, 3) and np.sum(t["confusion"]) == 172
        assert list(t["per_class"]) == GROUPS and [c["support"] for c in t["per_class"].values()] == [56, 64, 52]
        assert t["roc_auc"] is not None and not any(k.endswith("_hate") for k in t)
        assert m["threshold"] is None and 0 <= m["calibration"]["test"]["ece"] <= 1
    report = (groups_run / "report.md").read_text()
    assert "## Per class (test split)" in report and "Threshold tuning is for binary tasks only" in report
    assert "hate P / R" not in report and (groups_run / "plots" / "confusion_matrices.png").is_file()
    checks = json.loads((groups_run / "checks.json").read_text())
    assert {s["name"]: bool(s["skipped"]) for s in checks["suites"]} == {"generic": False, "hate_speech": True}


def test_pair_results(pairs_run):
    r = json.loads((pairs_run / "results.json").read_text())
    assert r["dataset"]["label_names"] == NLI and r["dataset"]["text_pair_column"] == "hypothesis"
    for m in r["models"]:
        assert np.array(m["test"]["confusion"]).shape == (3, 3) and np.sum(m["test"]["confusion"]) == 30
    assert not (pairs_run / "checks.json").exists()  # the suites hold single sentences
    cfg = json.loads((pairs_run / "models" / "even" / "config.json").read_text())
    assert [cfg["id2label"][str(i)] for i in range(3)] == NLI  # the students keep the teacher's names


# ----------------------------------------------------------------------------- predict

def test_predict_cli(groups_run, pairs_run, capsys):
    capsys.readouterr()
    assert main(["predict", "--run", str(groups_run), "--model", "odd", "they hate women"]) == 0
    (p,) = json.loads(capsys.readouterr().out)["predictions"]
    assert list(p["probabilities"]) == GROUPS and p["label"] == max(p["probabilities"], key=p["probabilities"].get)
    assert main(["predict", "--run", str(groups_run), "a", "--pair", "b"]) == 2
    assert "single texts" in capsys.readouterr().err
    assert main(["predict", "--run", str(pairs_run), "a dog runs", "--pair", "a dog sleeps"]) == 0
    (p,) = json.loads(capsys.readouterr().out)["predictions"]
    assert p["text_pair"] == "a dog sleeps" and list(p["probabilities"]) == NLI
    assert main(["predict", "--run", str(pairs_run), "a dog runs"]) == 2
    assert "--pair" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the app

def test_api_three_class(groups_run):
    client = create_app(groups_run).test_client()
    r = client.post("/api/predict", json={"text": "they hate women"})
    assert r.status_code == 200
    for x in r.get_json()["predictions"][0]["results"]:
        assert list(x["probabilities"]) == GROUPS and abs(sum(x["probabilities"].values()) - 1) < 1e-5
        assert x["label"] == max(x["probabilities"], key=x["probabilities"].get)
    r = client.post("/api/predict", json={"text": "a", "text_pair": "b"})
    assert r.status_code == 400 and "single texts" in r.get_json()["error"]
    e = client.post("/api/explain", json={"text": "they hate women", "model": "even", "label": "Religion"}).get_json()
    assert e["label"] == "Religion" and e["chosen"] and [w["word"] for w in e["words"]] == ["they", "hate", "women"]
    e = client.post("/api/explain", json={"text": "they hate women", "model": "even"}).get_json()
    pred = client.post("/api/predict", json={"text": "they hate women", "models": ["even"]}).get_json()
    assert e["label"] == pred["predictions"][0]["results"][0]["label"] and not e["chosen"]
    assert client.post("/api/explain", json={"text": "a", "label": "hate"}).status_code == 400
    models = client.get("/api/models").get_json()["models"]
    assert all(list(m["test"]["per_class"]) == GROUPS for m in models)
    spec = client.get("/openapi.json").get_json()
    props = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert "text_pair" not in props
    r = client.post("/batch", data={"file": (io.BytesIO(b"id,text\n1,they hate women\n2,\n"), "in.csv"),
                                    "models": ["even"]}, content_type="multipart/form-data")
    lines = r.data.decode().strip().splitlines()
    assert lines[0] == "id,text,even_label,even_p_Gender,even_p_Race,even_p_Religion" and lines[2] == "2,,,,,"
    assert abs(sum(float(x) for x in lines[1].split(",")[3:]) - 1) < 1e-4


def test_api_pairs(pairs_run):
    client = create_app(pairs_run).test_client()
    r = client.post("/api/predict", json={"text": "a dog runs"})
    assert r.status_code == 400 and "text_pair" in r.get_json()["error"] and "pairs" in r.get_json()["error"]
    r = client.post("/api/predict", json={"text": "a dog runs", "text_pair": "a dog sleeps", "models": ["odd"]})
    (p,) = r.get_json()["predictions"]
    assert r.status_code == 200 and p["text_pair"] == "a dog sleeps" and list(p["results"][0]["probabilities"]) == NLI
    r = client.post("/api/predict", json={"texts": ["a", "b"], "text_pairs": ["c", "d"]})
    assert r.status_code == 200 and len(r.get_json()["predictions"]) == 2
    assert client.post("/api/predict", json={"texts": ["a", "b"], "text_pairs": ["c"]}).status_code == 400
    assert client.post("/api/predict", json={"text": "a", "text_pairs": ["c"]}).status_code == 400
    assert client.post("/api/explain", json={"text": "a dog runs"}).status_code == 400
    e = client.post("/api/explain", json={"text": "a dog runs", "text_pair": "a cat"}).get_json()
    assert [w["word"] for w in e["words"]] == ["a", "dog", "runs"] and e["label"] in NLI
    props = client.get("/openapi.json").get_json()["paths"]["/api/predict"]["post"]["requestBody"][
        "content"]["application/json"]["schema"]["properties"]
    assert {"text_pair", "text_pairs"} <= set(props)
    csv = b"text,text_pair\na dog runs,a dog sleeps\nthe cat,\n"
    r = client.post("/batch", data={"file": (io.BytesIO(csv), "in.csv"), "models": ["odd"]},
                    content_type="multipart/form-data")
    lines = r.data.decode().strip().splitlines()
    assert lines[0] == "text,text_pair,odd_label,odd_p_entailment,odd_p_neutral,odd_p_contradiction"
    assert lines[1].split(",")[2] in NLI and lines[2] == "the cat,,,,,"
    r = client.post("/batch", data={"file": (io.BytesIO(b"text\na\n"), "in.csv")}, content_type="multipart/form-data")
    assert r.status_code == 400 and b"second-text column" in r.data


# ----------------------------------------------------------------------------- the page, in a browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _serve(run_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = make_server("127.0.0.1", port, create_app(run_dir), threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("task", ["groups", "pairs"])
def test_browser_cards(task, request):
    import playwright.sync_api as playwright  # installed by setup.sh (the test extra): fail, never skip

    run_dir = request.getfixturevalue(f"{task}_run")
    names = GROUPS if task == "groups" else NLI
    srv, url = _serve(run_dir)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page()
            page.goto(url + "/")
            assert (page.query_selector("#text_pair") is not None) == (task == "pairs")
            page.fill("#text", "they hate women and want them gone")
            if task == "pairs":
                page.click("button.example >> nth=0")  # app.js fills both boxes
                assert page.input_value("#text_pair") == "Someone is performing music."
            page.select_option("#explain_label", names[2])
            page.click("#submit")
            page.wait_for_selector("#results .card")
            cards = page.query_selector_all("#results .card")
            assert [c.get_attribute("data-model") for c in cards] == MODELS
            for c in cards:
                bars = c.query_selector_all(".prob")
                assert [b.get_attribute("data-label") for b in bars] == names
                ps = [float(b.get_attribute("data-p")) for b in bars]
                assert abs(sum(ps) - 1) < 1e-4
                assert c.query_selector(".verdict").inner_text() == names[int(np.argmax(ps))]
            assert page.inner_text(".target") == names[2]
            browser.close()
    finally:
        srv.shutdown()
