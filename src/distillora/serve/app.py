"""Flask app factory: the page (one card per model, word attributions, test metrics, CSV batch) and
the JSON API (/api/predict, /api/explain, /api/models, /healthz, /openapi.json).

Client mistakes get 4xx JSON (or a page message), never a 500 or a traceback. Models load once, at
start-up; the app never reads a path taken from a request."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pandas as pd
from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from ..errors import UserError
from ..predict import blank, check_pairs
from ..rundir import RunDir, selection_rule
from .openapi import spec
from .predictor import Predictor

MAX_TEXT_CHARS = 2000
MAX_TEXTS = 64
MAX_CSV_ROWS = 1000
MAX_UPLOAD_BYTES = 1 << 20  # 1 MiB
EXAMPLES = [
    "Have a wonderful day, everyone!",
    "I hate all of those people, they should go back where they came from",
    "That game last night was insane #football",
    "women are too stupid to vote",
]
# for a sentence-pair run: (text, text_pair)
EXAMPLE_PAIRS = [
    ("A man is playing a guitar on stage.", "Someone is performing music."),
    ("A man is playing a guitar on stage.", "The stage is empty."),
]
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")

log = logging.getLogger(__name__)


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message, self.status = message, status


def newest_run(root: str | Path = "runs") -> Path | None:
    """The most recently finished run (by its results.json) under `root`, or None."""
    root = Path(root)
    runs = [RunDir(p) for p in root.iterdir() if RunDir(p).finished()] if root.is_dir() else []
    return max(runs, key=lambda r: r.results_file.stat().st_mtime).root if runs else None


def capability_table(run_dir) -> dict | None:
    """The capability table of `<run_dir>/checks.json` (pass rates, intervals, flags, overall figures;
    not the per-case results), or None when the run has none or it cannot be read."""
    from ..fileio import read_json

    path = RunDir(run_dir).checks_file if run_dir else None
    if path is None or not path.is_file():
        return None
    try:
        raw = read_json(path)
        return {"models": raw["models"], "flag_rule": raw["flag_rule"],
                "suites": [{k: v for k, v in s.items() if k not in ("results", "tests")} for s in raw["suites"]]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("%s: cannot read the behavioural checks (%s); the page shows none", path, e)
        return None


def _check_text(t, where: str = "text") -> str:
    if not isinstance(t, str):
        raise BadRequest(f"`{where}` must be a string")
    if blank(t):  # whitespace, NUL, zero-width space, U+FEFF and other invisible characters only
        raise BadRequest(f"`{where}` is empty; send some text")
    if len(t) > MAX_TEXT_CHARS:
        raise BadRequest(f"`{where}` has {len(t)} characters; the limit is {MAX_TEXT_CHARS}")
    try:
        t.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"`{where}` holds invalid unicode (a lone surrogate); send valid UTF-8 text") from None
    return t


# OWASP's advice against CSV (formula) injection: a cell a spreadsheet would read as a formula (it
# starts with = + - @, or with a tab or carriage return that hides one) is prefixed with a single quote.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formulas(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with every string cell (and header) that could start a spreadsheet formula prefixed by `'`."""
    def safe(v):
        return "'" + v if isinstance(v, str) and v.startswith(FORMULA_START) else v
    out = df.map(safe)
    out.columns = [safe(c) for c in df.columns]
    return out


def _check_models(p: Predictor, models) -> list[str]:
    if models is None:
        return list(p.models)
    if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
        raise BadRequest("`models` must be a non-empty list of model names")
    unknown = [m for m in models if m not in p.models]
    if unknown:
        raise BadRequest(f"unknown model(s) {unknown}; known: {', '.join(p.models)}", 404)
    return list(dict.fromkeys(models))


def _json_body() -> dict:
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # json's decoder recurses per nesting level; silent=True does not cover this
        raise BadRequest("the JSON body is nested too deeply; send {\"text\": \"...\"}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object, e.g. {\"text\": \"...\"}, sent as application/json")
    return body


def create_app(run_dir: str | Path | None = None, predictor: Predictor | None = None) -> Flask:
    """App factory. `run_dir` defaults to the DISTILLORA_RUN environment variable (for WSGI servers:
    `waitress-serve --call distillora.serve:create_app`)."""
    import os

    if predictor is None:
        run_dir = run_dir or os.environ.get("DISTILLORA_RUN")
        if not run_dir:
            raise UserError("no run directory: pass one, or set DISTILLORA_RUN=runs/<name>")
        predictor = Predictor(run_dir)
    p = predictor
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES
    app.json.sort_keys = False
    metrics = {m["name"]: m for m in p.info()}
    checks = capability_table(getattr(p, "run_dir", None))

    @app.after_request
    def headers(resp: Response):
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "no-referrer"
        if not request.path.startswith("/static/"):  # answers hold user text: no cache may keep them
            resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.errorhandler(BadRequest)
    def bad_request(e: BadRequest):
        return jsonify(error=e.message), e.status

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        if e.code == 413:
            msg = f"upload too large; the limit is {MAX_UPLOAD_BYTES // 1024} KiB"
        elif e.code == 404:
            msg = f"no such route {request.path}; see /openapi.json"
        else:
            msg = e.description or e.name
        if request.path.startswith("/api/") or request.path in ("/healthz", "/openapi.json"):
            return jsonify(error=msg), e.code
        return render_template("error.html", code=e.code, message=msg), e.code

    @app.errorhandler(Exception)
    def server_error(e: Exception):
        log.exception("unhandled error on %s", request.path)
        return jsonify(error="internal error; the server log has the details"), 500

    # ---------------------------------------------------------------- API
    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok", run=p.name, models=list(p.models))

    @app.get("/openapi.json")
    def openapi():
        return jsonify(spec(MAX_TEXT_CHARS, MAX_TEXTS, p.label_names, p.pair_task))

    @app.get("/api/models")
    def api_models():
        return jsonify(run=p.name, best_student=p.best_student, models=p.info())

    @app.get("/api/checks")
    def api_checks():
        if checks is None:
            raise BadRequest("this run has no behavioural checks; run `distillora check --run RUN`", 404)
        return jsonify(checks)

    def _texts(body: dict, one: str, many: str) -> list[str] | None:
        """The strings under `one` (a string) or `many` (a list of strings) of `body`; None when absent."""
        if one in body and many in body:
            raise BadRequest(f"send either `{one}` or `{many}`, not both")
        if many in body:
            texts = body[many]
            if not isinstance(texts, list) or not texts:
                raise BadRequest(f"`{many}` must be a non-empty list of strings")
            if len(texts) > MAX_TEXTS:
                raise BadRequest(f"`{many}` has {len(texts)} items; the limit is {MAX_TEXTS} per request")
            return [_check_text(t, f"{many}[{i}]") for i, t in enumerate(texts)]
        if one in body:
            return [_check_text(body[one], one)]
        return None

    def _pairs_for(texts: list[str], pairs: list[str] | None, text_key: str, pair_key: str) -> None:
        """400 unless the pair fields fit the run: required on a pair run, refused on a single-text one."""
        try:
            check_pairs(texts, pairs, p.pair_task, text_key, pair_key)
        except UserError as e:
            raise BadRequest(str(e)) from None

    @app.post("/api/predict")
    def api_predict():
        body = _json_body()
        texts = _texts(body, "text", "texts")
        if texts is None:
            raise BadRequest("missing `text` (a string) or `texts` (a list of strings)")
        pairs = _texts(body, "text_pair", "text_pairs")
        if ("texts" in body) != ("text_pairs" in body) and pairs is not None:
            raise BadRequest("send `text` with `text_pair`, or `texts` with `text_pairs`")
        _pairs_for(texts, pairs, "texts" if "texts" in body else "text",
                   "text_pairs" if "texts" in body else "text_pair")
        models = _check_models(p, body.get("models"))
        return jsonify(predictions=p.predict(texts, models, pairs))

    @app.post("/api/explain")
    def api_explain():
        body = _json_body()
        text = _check_text(body.get("text"))
        pair = _texts(body, "text_pair", "text_pairs")
        if "text_pairs" in body:
            raise BadRequest("send one `text_pair` (a string) with `text`")
        _pairs_for([text], pair, "text", "text_pair")
        model = body.get("model", p.best_student or next(iter(p.models)))
        if not isinstance(model, str):
            raise BadRequest("`model` must be a string")
        (model,) = _check_models(p, [model])
        label = body.get("label")
        if label is not None and label not in p.label_names:
            raise BadRequest(f"`label` must be one of {', '.join(p.label_names)} (or absent: the predicted class)")
        return jsonify(p.explain(text, model, label, pair[0] if pair else None))

    # ---------------------------------------------------------------- page
    def page(**kw):
        return render_template("index.html", run=p.name, examples=EXAMPLES, models=list(p.models),
                               best=p.best_student, metrics=metrics, label_names=p.label_names,
                               best_rule=selection_rule(p.results),
                               pair_task=p.pair_task, examples_pairs=EXAMPLE_PAIRS,
                               max_chars=MAX_TEXT_CHARS, max_rows=MAX_CSV_ROWS,
                               max_kib=MAX_UPLOAD_BYTES // 1024, checks=checks, **kw)

    @app.get("/")
    def index():
        return page(text="", text_pair="", explain_model=p.best_student, explain_label="")

    @app.post("/")
    def index_post():
        text = request.form.get("text", "")
        text_pair = request.form.get("text_pair", "") if p.pair_task else None
        explain_model = request.form.get("explain_model") or p.best_student
        if explain_model not in p.models:
            explain_model = p.best_student
        explain_label = request.form.get("explain_label") or ""
        if explain_label not in p.label_names:
            explain_label = ""  # the predicted class
        try:
            _check_text(text)
            if text_pair is not None:
                _check_text(text_pair, "text_pair")
        except BadRequest as e:
            return page(text=text, text_pair=text_pair or "", explain_model=explain_model,
                        explain_label=explain_label, error=e.message), 400
        pairs = None if text_pair is None else [text_pair]
        (pred,) = p.predict([text], list(p.models), pairs)
        explanation = p.explain(text, explain_model, explain_label or None, text_pair)
        top = max((abs(w["score"]) for w in explanation["words"]), default=0.0) or 1.0
        for w in explanation["words"]:
            w["alpha"] = round(min(1.0, abs(w["score"]) / top), 3)
        return page(text=text, text_pair=text_pair or "", prediction=pred, explanation=explanation,
                    explain_model=explain_model, explain_label=explain_label)

    @app.post("/batch")
    def batch():
        f = request.files.get("file")
        if f is None or not f.filename:
            return page(text="", explain_model=p.best_student, error="choose a CSV file to upload"), 400
        chosen = request.form.getlist("models") or [p.best_student or next(iter(p.models))]
        unknown = [m for m in chosen if m not in p.models]
        if unknown:
            return page(text="", explain_model=p.best_student,
                        error=f"unknown model(s) {unknown}; known: {', '.join(p.models)}"), 404
        try:
            df = pd.read_csv(io.BytesIO(f.read()), dtype=str, keep_default_na=False)
        except Exception as e:  # pandas raises several unrelated types for malformed CSV
            return page(text="", explain_model=p.best_student, error=f"cannot read the CSV: {str(e)[:200]}"), 400
        column = request.form.get("column") or next((c for c in ("text", "tweet") if c in df.columns), None)
        if column not in df.columns:
            return page(text="", explain_model=p.best_student,
                        error=f"no text column {column!r}; columns are {', '.join(map(str, df.columns))}"), 400
        if len(df) > MAX_CSV_ROWS:
            return page(text="", explain_model=p.best_student,
                        error=f"{len(df)} rows; the limit is {MAX_CSV_ROWS}"), 400
        texts = df[column].astype(str).str.slice(0, MAX_TEXT_CHARS).tolist()
        pairs = None
        if p.pair_task:
            pair_column = request.form.get("pair_column") or "text_pair"
            if pair_column not in df.columns:
                return page(text="", explain_model=p.best_student,
                            error=f"this run classifies sentence pairs: no second-text column {pair_column!r}; "
                                  f"columns are {', '.join(map(str, df.columns))}"), 400
            pairs = df[pair_column].astype(str).str.slice(0, MAX_TEXT_CHARS).tolist()
        # empty rows (either text, for a pair) get an empty label and empty probabilities
        rows = [i for i, t in enumerate(texts) if not blank(t) and (pairs is None or not blank(pairs[i]))]
        for name in chosen:
            probs = []
            for i in range(0, len(rows), MAX_TEXTS):
                chunk = rows[i:i + MAX_TEXTS]
                probs += p.probabilities(name, [texts[j] for j in chunk],
                                         None if pairs is None else [pairs[j] for j in chunk])[0]
            labels = [""] * len(texts)
            per_class = {n: [""] * len(texts) for n in p.label_names}
            for j, q in zip(rows, probs):
                labels[j] = p.verdict(q)
                for n, x in zip(p.label_names, q):
                    per_class[n][j] = round(x, 6)
            df[f"{name}_label"] = labels
            for n in p.label_names:  # one probability column per class
                df[f"{name}_p_{n}"] = per_class[n]
        # CRLF rows (RFC 4180): with them the csv writer also quotes a cell holding a bare CR
        return Response(neutralise_formulas(df).to_csv(index=False, lineterminator="\r\n"), mimetype="text/csv",
                        headers={"Content-Disposition": "attachment; filename=predictions.csv"})

    return app
