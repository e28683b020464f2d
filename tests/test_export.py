import json

from distillora.export import export_run, served_method


def test_export_measures_gates_and_follows_the_model(tiny_run):
    out = export_run(tiny_run, ["odd", "even"])
    assert set(out["models"]) == {"odd", "even"}
    for e in out["models"].values():
        for split in ("validation", "test"):
            assert 0 <= e[split]["int8_accuracy"] <= 1 and abs(e[split]["drop"]) <= 1
        assert e["serve"] in ("fp32", "int8-dynamic") and e["reason"]
        assert e["passed"] == (max(e["validation"]["drop"], e["test"]["drop"]) <= 0.005)
    assert served_method(tiny_run, "odd") == out["models"]["odd"]["serve"]
    # a second export of other models keeps the first entries
    export_run(tiny_run, ["lora"])
    saved = json.loads((tiny_run / "exports.json").read_text())["models"]
    assert set(saved) == {"odd", "even", "lora"}
    # once the model is retrained (new stage fingerprint), the old export is not served
    saved["odd"]["serve"] = "int8-dynamic"
    saved["odd"]["fingerprint"] = "stale"
    (tiny_run / "exports.json").write_text(json.dumps({"models": saved}))
    assert served_method(tiny_run, "odd") == "fp32"
    (tiny_run / "exports.json").unlink()
