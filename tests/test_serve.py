"""The web app through Flask's test client: the API contract and every bad-input case."""

import io
import json
import time

import pytest

from distillora.serve import create_app, newest_run
from distillora.serve.app import MAX_TEXT_CHARS, MAX_TEXTS

MODELS = ["teacher", "odd", "even", "lora", "baseline"]


@pytest.fixture(scope="module")
def app(tiny_run):
    return create_app(tiny_run)


@pytest.fixture()
def client(app):
    return app.test_client()


def _err(resp, status):
    assert resp.status_code == status, resp.data[:300]
    body = resp.get_json()
    assert isinstance(body, dict) and isinstance(body["error"], str) and body["error"]
    assert b"Traceback" not in resp.data
    return body["error"]


def test_healthz_and_models(client, tiny_run):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.get_json()["run"] == "tiny"
    m = client.get("/api/models").get_json()
    assert [x["name"] for x in m["models"]] == MODELS
    for x in m["models"]:
        assert {"num_layers", "teacher_layers", "params_total", "params_trainable", "test"} <= set(x)
        assert 0 <= x["test"]["accuracy"] <= 1
    assert sum(x["best_student"] for x in m["models"]) == 1
    # the page states the rule the run chose the best student by (the tiny run has no development sets)
    assert "best student, chosen on validation f1_macro." in client.get("/").get_data(as_text=True)


def test_predict_single_and_batch(client):
    start = time.perf_counter()
    r = client.post("/api/predict", json={"text": "you are all wonderful"})
    wall_ms = (time.perf_counter() - start) * 1000
    assert r.status_code == 200
    (pred,) = r.get_json()["predictions"]
    assert pred["text"] == "you are all wonderful"
    assert [x["model"] for x in pred["results"]] == MODELS
    for x in pred["results"]:
        assert set(x["probabilities"]) == {"not_hate", "hate"}
        assert abs(sum(x["probabilities"].values()) - 1) < 1e-5
        assert x["label"] == max(x["probabilities"], key=x["probabilities"].get)
        assert 0 < x["ms"] <= wall_ms  # the model's share of this request's time, in milliseconds
    r = client.post("/api/predict", json={"texts": ["a", "b c"], "models": ["odd", "lora"]})
    preds = r.get_json()["predictions"]
    assert len(preds) == 2 and [x["model"] for x in preds[0]["results"]] == ["odd", "lora"]


def test_predict_agrees_with_cli_predict(client, tiny_run):
    from distillora.predict import load_model, predict

    _, backend = load_model(tiny_run, "even")
    (expected,) = predict(backend, ["they should all leave"], ["not_hate", "hate"])
    got = client.post("/api/predict", json={"text": "they should all leave", "models": ["even"]}).get_json()
    assert abs(got["predictions"][0]["results"][0]["probabilities"]["hate"] - expected["probabilities"]["hate"]) < 1e-5


def test_explain(client):
    r = client.post("/api/explain", json={"text": "i hate those people", "model": "teacher"})
    body = r.get_json()
    assert r.status_code == 200 and body["model"] == "teacher"
    assert [w["word"] for w in body["words"]] == ["i", "hate", "those", "people"]
    assert all(isinstance(w["score"], float) for w in body["words"]) and "leave-one-out" in body["method"]


@pytest.mark.parametrize("body,status,needle", [
    ({"text": ""}, 400, "empty"),
    ({"text": "   \n\t"}, 400, "empty"),
    ({"text": "x" * (MAX_TEXT_CHARS + 1)}, 400, str(MAX_TEXT_CHARS)),
    ({"texts": ["a"] * (MAX_TEXTS + 1)}, 400, str(MAX_TEXTS)),
    ({"texts": []}, 400, "non-empty"),
    ({"texts": ["ok", 3]}, 400, "texts[1]"),
    ({"text": 42}, 400, "string"),
    ({"text": ["a"]}, 400, "string"),
    ({"nothing": 1}, 400, "missing"),
    ({"text": "a", "texts": ["b"]}, 400, "either"),
    ({"text": "a", "models": "odd"}, 400, "list"),
    ({"text": "a", "models": ["odd", "gpt5"]}, 404, "teacher, odd, even, lora, baseline"),
])
def test_predict_bad_input(client, body, status, needle):
    assert needle in _err(client.post("/api/predict", json=body), status)


@pytest.mark.parametrize("data,ctype", [
    (b"not json", "application/json"), (b'["a list"]', "application/json"), (b"42", "application/json"),
    (b'{"text": "a"}', "text/plain"), (b"", "application/json"), (b'{"text": "\\ud800"}', "application/json"),
])
def test_body_not_a_json_object(client, data, ctype):
    r = client.post("/api/predict", data=data, content_type=ctype)
    _err(r, 400)


def test_explain_bad_input(client):
    assert "empty" in _err(client.post("/api/explain", json={"text": " "}), 400)
    assert "known" in _err(client.post("/api/explain", json={"text": "a", "model": "nope"}), 404)
    _err(client.post("/api/explain", json={"text": "a", "model": 3}), 400)


def test_unknown_api_route_and_method(client):
    assert "/api/nothing" in _err(client.get("/api/nothing"), 404)
    _err(client.get("/api/predict"), 405)


def test_upload_too_large(client):
    big = io.BytesIO(b"text\n" + b"x" * (2 << 20))
    r = client.post("/batch", data={"file": (big, "big.csv")}, content_type="multipart/form-data")
    assert r.status_code == 413 and b"limit is 1024 KiB" in r.data and b"Traceback" not in r.data
    _err(client.post("/api/predict", data=b"{" + b" " * (2 << 20) + b"}", content_type="application/json"), 413)


def test_batch_csv(client):
    csv = b"id,text\n1,you are great\n2,I hate them\n3,\n"
    r = client.post("/batch", data={"file": (io.BytesIO(csv), "in.csv"), "models": ["odd", "lora"]},
                    content_type="multipart/form-data")
    assert r.status_code == 200 and r.mimetype == "text/csv"
    lines = r.data.decode().strip().splitlines()
    assert lines[0] == "id,text,odd_label,odd_p_not_hate,odd_p_hate,lora_label,lora_p_not_hate,lora_p_hate"
    assert len(lines) == 4
    assert lines[1].startswith("1,you are great,")
    assert lines[3] == "3,,,,,,,"  # an empty text gets no label rather than a made-up one


def test_batch_unknown_model(client):
    r = client.post("/batch", data={"file": (io.BytesIO(b"text\nhi\n"), "x.csv"), "models": ["gpt5"]},
                    content_type="multipart/form-data")
    assert r.status_code == 404 and b"unknown model" in r.data


def test_concurrent_requests_agree_with_sequential(app):
    """Eight threads at once, each with its own client: the same answers as one at a time."""
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"sentence number {i} about those people" for i in range(16)]

    def ask(t):
        r = app.test_client().post("/api/predict", json={"text": t})
        assert r.status_code == 200
        return [x["probabilities"]["hate"] for x in r.get_json()["predictions"][0]["results"]]

    sequential = [ask(t) for t in texts]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(ask, texts))
    for a, b in zip(sequential, parallel):
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5


def test_models_are_in_eval_mode(app, tiny_run):
    from distillora.serve.predictor import Predictor

    p = Predictor(tiny_run)
    assert all(not m.backend.model.training for m in p.models.values())  # torch copies, with no exports.json


def test_default_bind_is_loopback():
    from distillora.cli import build_parser

    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"


def test_batch_csv_errors_render_page(client):
    r = client.post("/batch", data={"file": (io.BytesIO(b"a,b\n1,2\n"), "x.csv")}, content_type="multipart/form-data")
    assert r.status_code == 400 and b"no text column" in r.data
    rows = b"text\n" + b"hi\n" * 1001
    r = client.post("/batch", data={"file": (io.BytesIO(rows), "x.csv")}, content_type="multipart/form-data")
    assert r.status_code == 400 and b"limit is 1000" in r.data


def test_page_escapes_user_text_and_sets_headers(client):
    evil = "<script>alert(1)</script> hello"
    r = client.post("/", data={"text": evil, "explain_model": "odd"})
    html = r.data.decode()
    assert r.status_code == 200
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count('class="card ') == 5 and "best student" in html and "leave-one-out" in html
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert client.post("/", data={"text": "  "}).status_code == 400


def test_openapi(client):
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.") and {"/api/predict", "/api/explain", "/api/models", "/healthz"} <= set(spec["paths"])


def test_newest_run(tiny_run, tmp_path):
    assert newest_run(tiny_run.parent) == tiny_run
    assert newest_run(tmp_path) is None


def test_app_py_without_runs_explains_how_to_train_one(tmp_path, capsys):
    from distillora.cli import main

    assert main(["serve", "--runs", str(tmp_path / "none")]) == 2
    assert "distillora run --config configs/quick.yaml" in capsys.readouterr().err


def test_torch_thread_batches_queued_requests_per_model_and_runs_all_torch_work_on_one_thread():
    import threading

    from distillora.serve.predictor import TorchThread

    worker = TorchThread(max_texts=3)
    calls, threads, gate = [], set(), threading.Event()

    def run(tag):
        def run_batch(texts):
            threads.add(threading.get_ident())
            if "boom" in texts:
                raise ValueError("boom")
            calls.append((tag, list(texts)))
            return [f"{tag}:{t}" for t in texts]
        return run_batch

    started = threading.Event()

    def hold():
        started.set()
        gate.wait()

    blocker = threading.Thread(target=worker.call, args=(hold,))
    blocker.start()  # occupies the torch thread while the requests below queue up
    assert started.wait(10)
    futs = [worker.submit("a", ["1"], run("a")), worker.submit("b", ["2"], run("b")),
            worker.submit("a", ["3", "4"], run("a")), worker.submit("a", ["5"], run("a")),
            worker.submit("c", ["boom"], run("c"))]
    gate.set()
    blocker.join()
    assert [f.result() for f in futs[:4]] == [["a:1"], ["b:2"], ["a:3", "a:4"], ["a:5"]]
    with pytest.raises(ValueError, match="boom"):
        futs[4].result()
    # same-model requests queued together run as one batch, up to max_texts; other models wait their turn
    assert calls == [("a", ["1", "3", "4"]), ("b", ["2"]), ("a", ["5"])]
    assert worker.call(threading.get_ident) in threads and len(threads) == 1
    # a call made from the torch thread itself runs in place instead of waiting on its own queue
    assert worker.call(lambda: worker.call(lambda: 7)) == 7
    assert worker.call(lambda: worker.submit("a", ["x"], run("a")).result()) == ["a:x"]


def test_batch_csv_neutralises_formulas(client):
    """Issue 11 J: cells a spreadsheet would run as formulas come back prefixed with a quote (OWASP)."""
    import csv

    rows = ["=1+1", "+SUM(A1:A2)", "-2+3", "@cmd", "\tx", "\r=1", "plain text"]
    body = io.StringIO()
    csv.writer(body).writerows([["text"], *[[r] for r in rows]])
    r = client.post("/batch", data={"file": (io.BytesIO(body.getvalue().encode()), "in.csv"), "models": ["odd"]},
                    content_type="multipart/form-data")
    assert r.status_code == 200
    got = list(csv.reader(io.StringIO(r.data.decode(), newline="")))
    assert [g[0] for g in got[1:]] == ["'" + t for t in rows[:-1]] + ["plain text"]
    assert all(g[1] in ("hate", "not_hate") for g in got[1:])


@pytest.mark.parametrize("text", ["\u200b", "\x00", "\ufeff", " \u200b\ufeff\u2060\u200d \x00 "])
def test_invisible_text_is_empty(client, text):
    """Issue 11 J: a text of only invisible characters gets the 400 for an empty text."""
    assert "empty" in _err(client.post("/api/predict", json={"text": text}), 400)
    assert "empty" in _err(client.post("/api/explain", json={"text": text}), 400)


def test_api_responses_are_not_cached(client):
    """Issue 11 J: answers that hold user text carry Cache-Control: no-store."""
    for r in (client.post("/api/predict", json={"text": "hello"}), client.get("/api/models"), client.get("/healthz"),
              client.post("/api/predict", json={}), client.get("/")):
        assert r.headers["Cache-Control"] == "no-store"
