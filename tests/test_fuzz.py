"""Property-based tests: arbitrary JSON, unicode (emoji, RTL, zero-width, lone surrogates), huge and
nested bodies at every /api/* route: never a 5xx, every error JSON."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distillora.serve import create_app

ROUTES = [("post", "/api/predict"), ("post", "/api/explain"), ("get", "/api/models"), ("post", "/api/models"),
          ("get", "/api/nothing"), ("post", "/api/predict/extra"), ("put", "/api/predict")]
SPECIAL = st.sampled_from(["😀🔥", "مرحبا بالعالم", "\u200b\u200d\ufeff", "\ud800", "\udfff x", "a\x00b", "\u202e", "🏳️‍🌈" * 50,
                           "<script>alert(1)</script>", " ", "x" * 2001])
TEXT = st.one_of(st.text(max_size=80), SPECIAL)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
                    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(TEXT, kids, max_size=5), max_leaves=20)
BODY = st.one_of(
    JSON,
    st.fixed_dictionaries({"text": JSON}),
    st.fixed_dictionaries({"texts": st.lists(TEXT, max_size=70)}),
    st.fixed_dictionaries({"text": TEXT, "models": st.lists(st.sampled_from(["odd", "teacher", "x", ""]), max_size=3)}),
    st.fixed_dictionaries({"text": TEXT, "model": st.one_of(st.sampled_from(["odd", "lora", "nope"]), JSON)}),
)


@pytest.fixture(scope="module")
def client(tiny_run):
    return create_app(tiny_run).test_client()


def _check(resp):
    assert resp.status_code < 500, resp.data[:300]
    body = resp.get_json(silent=True)
    assert body is not None, resp.data[:200]  # every /api/* answer is JSON, errors included
    if resp.status_code >= 400:
        assert isinstance(body.get("error"), str) and "Traceback" not in body["error"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(ROUTES), body=BODY)
def test_any_json_body(client, route, body):
    method, path = route
    data = json.dumps(body, ensure_ascii=True)  # keeps lone surrogates as \\ud800 escapes
    _check(getattr(client, method)(path, data=data, content_type="application/json"))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(ROUTES), raw=st.binary(max_size=300),
       ctype=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""]))
def test_any_bytes(client, route, raw, ctype):
    method, path = route
    _check(getattr(client, method)(path, data=raw, content_type=ctype))


def test_huge_and_deeply_nested_bodies(client):
    deep = "[" * 50_000 + "]" * 50_000
    _check(client.post("/api/predict", data=deep, content_type="application/json"))
    _check(client.post("/api/predict", data='{"text": "' + "a" * 900_000 + '"}', content_type="application/json"))
    _check(client.post("/api/predict", data=b"x" * (3 << 20), content_type="application/json"))
    _check(client.post("/api/explain", data=json.dumps({"text": " ".join(["w"] * 1000)}), content_type="application/json"))


def test_every_response_has_security_headers(client):
    for method, path in ROUTES + [("get", "/"), ("get", "/healthz"), ("get", "/openapi.json")]:
        r = getattr(client, method)(path, json={"text": "hi"})
        assert "default-src 'none'" in r.headers["Content-Security-Policy"], path
        assert r.headers["X-Content-Type-Options"] == "nosniff", path
