"""The OpenAPI 3 description served at /openapi.json."""


def spec(max_chars: int, max_texts: int, labels: list[str], pair_task: bool = False) -> dict:
    """`pair_task`: the run reads sentence pairs, so `text_pair` (`text_pairs`) is required beside `text`
    (`texts`); on a single-text run the pair fields are refused (400)."""
    text = {"type": "string", "minLength": 1, "maxLength": max_chars}
    pair_props = ({"text_pair": {**text, "description": "the second text (required with `text`)"},
                   "text_pairs": {"type": "array", "items": text, "minItems": 1, "maxItems": max_texts,
                                  "description": "one second text per item of `texts` (required with it)"}}
                  if pair_task else {})
    task = "sentence pairs" if pair_task else "single texts"
    err = {"description": "client error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    probs = {"type": "object", "properties": {n: {"type": "number"} for n in labels}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "distillora", "version": "1", "description": f"Text classifiers ({len(labels)} labels: {', '.join(labels)}; "
                                                                     f"{task}) from one distillora run."},
        "paths": {
            "/api/predict": {"post": {
                "summary": "Classify one text or a batch with every (or the chosen) model",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "properties": {
                        "text": text, "texts": {"type": "array", "items": text, "minItems": 1, "maxItems": max_texts},
                        **pair_props, "models": {"type": "array", "items": {"type": "string"}}}}}}},
                "responses": {"200": {"description": "predictions", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"predictions": {"type": "array", "items": {
                        "type": "object", "properties": {"text": {"type": "string"}, **({"text_pair": {"type": "string"}} if pair_task else {}),
                                                      "results": {"type": "array", "items": {
                            "type": "object", "properties": {"model": {"type": "string"}, "label": {"type": "string", "enum": labels},
                                                             "probabilities": probs, "ms": {"type": "number"}}}}}}}}}}}},
                              "400": err, "404": err, "413": err}}},
            "/api/explain": {"post": {
                "summary": "Word attributions (leave-one-out) toward a class (default: the predicted one) for one model",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["text"] + (["text_pair"] if pair_task else []),
                    "properties": {"text": text, **({"text_pair": pair_props["text_pair"]} if pair_task else {}),
                                   "model": {"type": "string"},
                                   "label": {"type": "string", "enum": labels,
                                             "description": "the class to explain; absent: the predicted class"}}}}}},
                "responses": {"200": {"description": "attributions", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"model": {"type": "string"}, "method": {"type": "string"},
                                                     "label": {"type": "string", "enum": labels},
                                                     "p_label": {"type": "number"}, "chosen": {"type": "boolean"},
                                                     "words": {"type": "array", "items": {
                                                         "type": "object", "properties": {"word": {"type": "string"},
                                                                                          "score": {"type": "number"}}}}}}}}},
                              "400": err, "404": err}}},
            "/api/models": {"get": {"summary": "Models of the run with layers, parameters and test metrics",
                                    "responses": {"200": {"description": "models"}}}},
            "/api/checks": {"get": {"summary": "Behavioural checks of the run (checks.json without per-case results): "
                                               "pass rate per capability and model, 95% intervals, flags against the teacher",
                                    "responses": {"200": {"description": "capability table"}, "404": err}}},
            "/healthz": {"get": {"summary": "200 once the models are loaded", "responses": {"200": {"description": "ok"}}}},
        },
        "components": {"schemas": {"Error": {"type": "object", "required": ["error"],
                                              "properties": {"error": {"type": "string"}}}}},
    }
