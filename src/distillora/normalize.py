"""The text normaliser that belongs to a model: named steps applied to every text before it is
tokenised, in training, evaluation, `predict`, the web app, exports and the benchmarks.

The steps are saved with every model (in its config.json as `distillora_normalize`), so a model
loaded anywhere applies the same cleaning it was trained with. Why it matters here: the reference
data's train split went through its authors' cleaner (lowercase; @mentions, URLs, a leading `rt`,
every non-alphanumeric character and, by the data itself, digits removed) while its test split and
what people type into the app did not; `@user` appears in 155 test rows and in no train row.

A config gives either a preset name or a list of step names (applied in order).
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path
from typing import Callable

_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_MENTION = re.compile(r"@\w+")
_LEADING_RT = re.compile(r"^\s*rt\b[:\s]*", re.IGNORECASE)
_NON_ALNUM = re.compile(r"[^0-9a-zA-Z]+")
_DIGITS = re.compile(r"[0-9]+")
_SPACES = re.compile(r"\s+")
# Characters that render as nothing (zero-width space/joiners, BOM, soft hyphen) and control characters.
_INVISIBLE = re.compile("[\u200b-\u200f\u2060-\u2064\ufeff\u00ad\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

STEPS: dict[str, Callable[[str], str]] = {
    "nfkc": lambda t: unicodedata.normalize("NFKC", t),
    "strip_invisible": lambda t: _INVISIBLE.sub("", t),
    "lowercase": str.lower,
    "strip_urls": lambda t: _URL.sub(" ", t),
    "strip_mentions": lambda t: _MENTION.sub(" ", t),
    "strip_leading_rt": lambda t: _LEADING_RT.sub("", t),
    "alnum_only": lambda t: _NON_ALNUM.sub(" ", t),
    "strip_digits": lambda t: _DIGITS.sub(" ", t),
    "collapse_spaces": lambda t: _SPACES.sub(" ", t).strip(),
}

PRESETS: dict[str, list[str]] = {
    "none": [],
    # Only what cannot change a text's meaning: Unicode compatibility forms, invisible characters, spaces.
    "basic": ["nfkc", "strip_invisible", "collapse_spaces"],
    # The cleaning the authors of thefrankhsu/hate_speech_twitter applied to its train split, as their
    # inference notebook does it (GitHub Wei-Hsi/AI4health, `Model inference.ipynb`): lowercase, drop
    # @mentions, URLs, a leading `rt` and every non-alphanumeric character. The order matters: URLs
    # and mentions go before punctuation, or their pieces would survive as words. Digits too: the
    # notebook's cleaner keeps them, but the train split has none (2 digit characters in 5,679 rows;
    # the dataset's PROVENANCE.md: "lowercased with punctuation, digits, @-mentions and URLs removed"),
    # while 13% of its test rows have some: a model trained there never saw a digit.
    "hate_speech_twitter": ["nfkc", "strip_invisible", "lowercase", "strip_urls", "strip_mentions",
                            "strip_leading_rt", "alnum_only", "strip_digits", "collapse_spaces"],
}

# presets whose steps changed after runs were made with them (hate_speech_twitter gained strip_digits):
# a run's fingerprint holds their steps, not their name, so the stages trained under the old steps are
# trained again; every other preset is fingerprinted by its name, as before
FINGERPRINT_BY_STEPS = {"hate_speech_twitter"}


def fingerprinted(spec):
    """What a data fingerprint holds for `data.normalize = spec`."""
    return resolve(spec) if isinstance(spec, str) and spec in FINGERPRINT_BY_STEPS else spec

CONFIG_KEY = "distillora_normalize"  # the attribute of a model's config that carries its steps


def resolve(spec) -> list[str]:
    """A preset name or a list of step names -> the list of step names. Raises ValueError."""
    if spec is None:
        return []
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(f"unknown preset {spec!r}; use one of {', '.join(PRESETS)} or a list of steps "
                             f"({', '.join(STEPS)})")
        return list(PRESETS[spec])
    if not isinstance(spec, (list, tuple)) or not all(isinstance(s, str) for s in spec):
        raise ValueError("give a preset name or a list of step names")
    unknown = [s for s in spec if s not in STEPS]
    if unknown:
        raise ValueError(f"unknown step(s) {unknown}; known steps: {', '.join(STEPS)}")
    return list(spec)


class Normalizer:
    """Applies its steps in order. `Normalizer([])` leaves texts unchanged."""

    def __init__(self, steps: list[str] | str | None = None):
        self.steps = resolve(steps)
        self._fns = [STEPS[s] for s in self.steps]

    def __call__(self, text: str) -> str:
        for fn in self._fns:
            text = fn(text)
        return text

    def many(self, texts: list[str]) -> list[str]:
        return [self(t) for t in texts] if self._fns else list(texts)

    def __bool__(self) -> bool:
        return bool(self._fns)

    def __repr__(self) -> str:
        return f"Normalizer({self.steps})"


def attach(model_config, steps: list[str]) -> None:
    """Record the steps in a model's config, so `save_pretrained` writes them into config.json."""
    setattr(model_config, CONFIG_KEY, list(steps))


def of_model(model) -> Normalizer:
    """The normaliser saved with `model` (a transformers model or anything with a `.config`); none
    recorded means the model was trained on unnormalised text."""
    cfg = getattr(model, "config", None)
    return Normalizer(getattr(cfg, CONFIG_KEY, None) or [])


def saved_steps(model_dir) -> list[str]:
    """The steps recorded in the config.json of the model saved at `model_dir` (`of_model` without
    loading the model); none recorded: [] (trained on unnormalised text)."""
    return list(json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8")).get(CONFIG_KEY) or [])
