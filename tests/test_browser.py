"""A real browser (Debian chromium, driven by Playwright) against the app on a free loopback port."""

import shutil
import socket
import threading

import pytest
from werkzeug.serving import make_server

from distillora.serve import create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(tiny_run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = make_server("127.0.0.1", port, create_app(tiny_run), threaded=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{port}"
    srv.shutdown()


def test_type_submit_and_see_a_card_per_model(server, tmp_path):
    import playwright.sync_api as playwright  # installed by setup.sh (the test extra): fail, never skip

    assert shutil.which("chromium") or __import__("os").path.exists(CHROMIUM), \
        "Debian chromium is needed (apt-get install chromium); .ci/run installs it"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        page.goto(server + "/")
        page.click("button.example >> nth=1")  # an example fills the box (app.js under the CSP)
        assert page.input_value("#text").startswith("I hate all of those people")
        page.fill("#text", "they are all vermin and should leave")
        page.click("#submit")
        page.wait_for_selector("#results .card")
        cards = page.query_selector_all("#results .card")
        assert [c.get_attribute("data-model") for c in cards] == ["teacher", "odd", "even", "lora", "baseline"]
        import json
        import urllib.request

        req = urllib.request.Request(server + "/api/predict", method="POST", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"text": "they are all vermin and should leave"}).encode())
        api = {x["model"]: x for x in json.load(urllib.request.urlopen(req))["predictions"][0]["results"]}
        for c in cards:
            # what the page shows is what the API answers for the same sentence and model
            want = api[c.get_attribute("data-model")]
            shown = {x.get_attribute("data-label"): float(x.query_selector(".pval").inner_text())
                     for x in c.query_selector_all(".prob")}
            assert shown == {k: pytest.approx(v, abs=6e-4) for k, v in want["probabilities"].items()}
            assert c.query_selector(".verdict").inner_text() == want["label"]
            assert c.is_visible() and c.bounding_box()["width"] > 100  # laid out, not collapsed
        assert page.query_selector(".badge").inner_text() == "best student"
        assert len(page.query_selector_all(".attribution .w")) == 7
        page.screenshot(path=str(tmp_path / "cards.png"), full_page=True)

        evil = "<script>document.title='pwned'</script> hi"
        page.fill("#text", evil)
        page.click("#submit")
        page.wait_for_selector("#results .card")
        assert page.title() != "pwned"
        assert page.inner_text("q.sentence") == evil  # shown as text, not run
        page.screenshot(path=str(tmp_path / "escaped.png"), full_page=True)
        browser.close()
    assert (tmp_path / "cards.png").stat().st_size > 0  # kept for a person to look at; the checks are above
