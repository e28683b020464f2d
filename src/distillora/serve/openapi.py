"""The OpenAPI 3 description served at /openapi.json."""


def spec(max_chars: int, max_texts: int, labels: list[str]) -> dict:
    text = {"type": "string", "minLength": 1, "maxLength": max_chars}
    err = {"description": "client error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    probs = {"type": "object", "properties": {n: {"type": "number"} for n in labels}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "distillora", "version": "1", "description": "Hate-speech classifiers from one distillora run."},
        "paths": {
            "/api/predict": {"post": {
                "summary": "Classify one text or a batch with every (or the chosen) model",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "properties": {
                        "text": text, "texts": {"type": "array", "items": text, "minItems": 1, "maxItems": max_texts},
                        "models": {"type": "array", "items": {"type": "string"}}}}}}},
                "responses": {"200": {"description": "predictions", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"predictions": {"type": "array", "items": {
                        "type": "object", "properties": {"text": {"type": "string"}, "results": {"type": "array", "items": {
                            "type": "object", "properties": {"model": {"type": "string"}, "label": {"type": "string", "enum": labels},
                                                             "probabilities": probs, "ms": {"type": "number"}}}}}}}}}}}},
                              "400": err, "404": err, "413": err}}},
            "/api/explain": {"post": {
                "summary": "Word attributions (leave-one-out) toward the hate class for one model",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["text"], "properties": {"text": text, "model": {"type": "string"}}}}}},
                "responses": {"200": {"description": "attributions", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"model": {"type": "string"}, "method": {"type": "string"},
                                                     "p_hate": {"type": "number"}, "words": {"type": "array", "items": {
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
