"""Behavioural test suites (CheckList-style): the YAML format, its loader with precise errors, and the
deterministic generation of test cases. Built-in suites live beside this file as `<name>.yaml`.

A suite file:

    name: hate_speech                # shown in reports (default: the file name)
    description: what it tests
    labels: [not_hate, hate]         # label names the expectations use; a suite fits a run only when
                                     # the run has exactly these labels. Omit for a task-agnostic suite
                                     # (INV tests only).
    seed: 0                          # generation is seeded: the same file gives the same cases
    max_cases_per_test: 120          # cap per test (a test may lower it with `max_cases`)
    lexicons:                        # placeholder -> values
      group: [women, Muslims]
    tests:
      - name: hate, dehumanising     # unique within the suite
        capability: explicit hate    # tests of one capability are pooled in the report
        type: MFT                    # MFT: fixed expected label; INV: the perturbation must not change
                                     # the predicted label; DIR: p(label) must move `direction`
        templates: ["{group} are vermin"]   # MFT: the cases. INV/DIR: the seed sentences...
        seeds: validation            # ...or, instead, a seeded sample of the run's validation split
        expect: hate                 # MFT only
        perturb: upper               # INV/DIR: a built-in perturbation (see PERTURBATIONS), or a list of
                                     # rewrite templates holding {text} (the seed) and lexicon placeholders
        direction: up                # DIR only: up or down ...
        label: hate                  # ... for p(label) ...
        tolerance: 0.02              # ... passing unless it moves the wrong way by more than this
        max_cases: 50

Placeholders are `{name}` (a lexicon); `{{` and `}}` are literal braces. A placeholder used twice in a
template takes the same value both times.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import string
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from ..errors import UserError

BUILTIN_DIR = Path(__file__).resolve().parent
TYPES = ("MFT", "INV", "DIR")
ENUMERATE_LIMIT = 20_000  # fillings of one test enumerated in full below this; sampled above it


# ----------------------------------------------------------------------------- perturbations

def _typo(text: str, rng: np.random.Generator) -> str:
    """One keyboard slip in one word of 4+ letters: swap two inner letters, drop one, or double one."""
    words = [(m.start(), m.end()) for m in re.finditer(r"[A-Za-z]{4,}", text)]
    if not words:
        return text
    a, b = words[rng.integers(len(words))]
    w = text[a:b]
    i = int(rng.integers(1, len(w) - 2))  # an inner position: the first and last letters stay
    kind = int(rng.integers(3))
    w = (w[:i] + w[i + 1] + w[i] + w[i + 2:] if kind == 0 else
         w[:i] + w[i + 1:] if kind == 1 else w[:i] + w[i] + w[i:])
    return text[:a] + w + text[b:]


def _whitespace(text: str, rng: np.random.Generator) -> str:
    spaces = [m.start() for m in re.finditer(" ", text)]
    if spaces and rng.random() < 0.7:
        i = spaces[rng.integers(len(spaces))]
        return text[:i] + ["  ", "   ", "\t", " \n "][rng.integers(4)] + text[i + 1:]
    return [" ", "  ", "\n"][rng.integers(3)] + text + [" ", "  ", "\n"][rng.integers(3)]


PERTURBATIONS = {
    "upper": lambda t, rng: t.upper(),
    "lower": lambda t, rng: t.lower(),
    "capitalize_words": lambda t, rng: " ".join(w[:1].upper() + w[1:] for w in t.split(" ")),
    "strip_punctuation": lambda t, rng: re.sub(r"\s+", " ", re.sub(r"[.,!?;:\"()…]", " ", t)).strip(),
    "add_punctuation": lambda t, rng: t.rstrip() + [".", "!", "!!", "?", "...", " !"][rng.integers(6)],
    "typo": _typo,
    "whitespace": _whitespace,
}


# ----------------------------------------------------------------------------- the format

@dataclass
class Test:
    __test__ = False  # not a pytest test class

    name: str
    capability: str
    type: str
    templates: list[str] | None = None
    seeds: str | None = None
    expect: str | None = None
    perturb: str | list[str] | None = None
    direction: str | None = None
    label: str | None = None
    tolerance: float = 0.0
    max_cases: int | None = None


@dataclass
class Suite:
    name: str
    source: str  # "built-in" or the file's path
    description: str
    labels: list[str] | None
    seed: int
    max_cases_per_test: int
    lexicons: dict[str, list[str]]
    tests: list[Test]
    digest: str = ""  # sha256 of the file: what the generated cases depend on (with the seed texts)

    def fits(self, label_names: list[str]) -> str | None:
        """None when the suite fits a run with these labels, else the reason it does not."""
        if self.labels is not None and sorted(self.labels) != sorted(label_names):
            return (f"its labels {self.labels} are not the run's {list(label_names)}")
        return None

    def needs_validation(self) -> bool:
        return any(t.seeds == "validation" for t in self.tests)


@dataclass
class Case:
    text: str
    perturbed: str | None = None  # INV and DIR: the perturbed text
    expect: str | None = None  # MFT: the expected label


TOP_KEYS = {"name", "description", "labels", "seed", "max_cases_per_test", "lexicons", "tests"}
TEST_KEYS = {"name", "capability", "type", "templates", "seeds", "expect", "perturb", "direction", "label",
             "tolerance", "max_cases"}
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")


def _lines(node, path=(), out=None) -> dict:
    """YAML path (tuple of keys and indices) -> 1-based line, from the composed node tree."""
    out = {} if out is None else out
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            out[path + (key,)] = k.start_mark.line + 1
            _lines(v, path + (key,), out)
            out[path + (key,)] = k.start_mark.line + 1  # the key's line, not its value's
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _lines(v, path + (i,), out)
    return out


def _dotted(path: tuple) -> str:
    s = ""
    for p in path:
        s += f"[{p}]" if isinstance(p, int) else (f".{p}" if s else str(p))
    return s or "<top>"


class _Errors:
    def __init__(self, where: str, lines: dict):
        self.where, self.lines, self.items = where, lines, []

    def add(self, path: tuple, message: str) -> None:
        line = next((self.lines[path[:n]] for n in range(len(path), -1, -1) if path[:n] in self.lines), None)
        at = f":{line}" if line else ""
        self.items.append(f"{self.where}{at}: `{_dotted(path)}` {message}")


def _placeholders(template: str) -> list[str]:
    """Field names of a template; ValueError for unbalanced braces, format specs or attribute access."""
    names = []
    for _, name, spec, conv in string.Formatter().parse(template):
        if name is None:
            continue
        if spec or conv or not NAME_RE.match(name):
            raise ValueError(f"placeholder {{{name}{'!' + conv if conv else ''}{':' + spec if spec else ''}}} "
                             f"is not a plain {{name}}")
        names.append(name)
    return names


def _close(word: str, known) -> str:
    near = [k for k in known if k.lower().startswith(str(word).lower()[:3])]
    return f" (did you mean {', '.join(near)}?)" if near else ""


def _strings(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v.strip() for v in value)


def load_suite(spec: str | Path) -> Suite:
    """A suite from a built-in name (`generic`, `hate_speech`) or a YAML file. Raises UserError with
    every problem (file, line, key, value, fix) at once."""
    path = Path(spec)
    builtin = BUILTIN_DIR / f"{spec}.yaml"
    if not path.is_file() and NAME_RE.match(str(spec)) and builtin.is_file():
        path = builtin
    if not path.is_file():
        raise UserError(f"suite {str(spec)!r}: no such file and not a built-in suite; use a YAML file or one of "
                        f"{', '.join(builtin_suites())}")
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); save the suite as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{at}: not valid YAML ({getattr(e, 'problem', e)}); fix the syntax there "
                        f"(quote templates that start with {{ or contain ': ')") from None
    errs = _Errors(str(path), _lines(node) if node is not None else {})
    suite = _parse(raw, path, errs)
    if errs.items:
        raise UserError(f"invalid behavioural suite ({len(errs.items)} problem{'s' * (len(errs.items) > 1)}):\n  - "
                        + "\n  - ".join(errs.items))
    suite.source = "built-in" if path.parent == BUILTIN_DIR else str(path)
    suite.digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return suite


def builtin_suites() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def _parse(raw, path: Path, errs: _Errors) -> Suite | None:
    if not isinstance(raw, dict):
        errs.add((), f"must be a mapping with `tests` (and `lexicons`), got {type(raw).__name__}")
        return None
    for key in raw:
        if key not in TOP_KEYS:
            errs.add((key,), f"is not a suite key{_close(key, TOP_KEYS)}; known: {', '.join(sorted(TOP_KEYS))}")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        errs.add(("name",), f"= {name!r}: give a non-empty name")
    labels = raw.get("labels")
    if labels is not None and (not _strings(labels) or len(set(labels)) != len(labels) or len(labels) < 2):
        errs.add(("labels",), f"= {labels!r}: give two or more distinct label names, e.g. [not_hate, hate], "
                              f"or leave `labels` out for a task-agnostic suite")
        labels = None
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        errs.add(("seed",), f"= {seed!r}: give a non-negative integer")
        seed = 0
    cap = raw.get("max_cases_per_test", 100)
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
        errs.add(("max_cases_per_test",), f"= {cap!r}: give a positive integer, e.g. 100")
        cap = 100
    lexicons = raw.get("lexicons") or {}
    if not isinstance(lexicons, dict):
        errs.add(("lexicons",), f"must map placeholder names to lists of strings, got {type(lexicons).__name__}")
        lexicons = {}
    for k, v in lexicons.items():
        if not isinstance(k, str) or not NAME_RE.match(k) or k == "text":
            errs.add(("lexicons", k), "is not a usable placeholder name; use letters, digits and _ "
                                      "(`text` is reserved for the seed sentence of a rewrite)")
        if not _strings(v):
            errs.add(("lexicons", k), f"= {v!r}: give a non-empty list of non-empty strings "
                                      f"(quote values YAML would read as numbers or booleans)")
    lexicons = {k: v for k, v in lexicons.items() if isinstance(k, str) and _strings(v)}
    tests_raw = raw.get("tests")
    if not isinstance(tests_raw, list) or not tests_raw:
        errs.add(("tests",), f"= {tests_raw!r}: give a non-empty list of tests")
        tests_raw = []
    tests, seen = [], set()
    for i, t in enumerate(tests_raw):
        test = _parse_test(t, ("tests", i), lexicons, labels, errs)
        if test is None:
            continue
        if test.name in seen:
            errs.add(("tests", i, "name"), f"= {test.name!r} is used twice; test names must be unique")
        seen.add(test.name)
        tests.append(test)
    return Suite(name if isinstance(name, str) else path.stem, str(path), str(raw.get("description", "")), labels,
                 seed, cap, lexicons, tests)


def _check_templates(values, key: tuple, lexicons: dict, errs: _Errors, rewrite: bool) -> list[str]:
    if not _strings(values):
        errs.add(key, f"= {values!r}: give a non-empty list of non-empty strings")
        return []
    for j, tpl in enumerate(values):
        try:
            names = _placeholders(tpl)
        except ValueError as e:
            errs.add(key + (j,), f"= {tpl!r}: {e}; write placeholders as {{name}} and literal braces as {{{{ }}}}")
            continue
        if rewrite and "text" not in names:
            errs.add(key + (j,), f"= {tpl!r} has no {{text}}: a rewrite template must place the seed sentence, "
                                 f"e.g. \"{{text}} {{url}}\"")
        for n in names:
            if n not in lexicons and not (rewrite and n == "text"):
                hint = " ({text} is only for the rewrite templates of `perturb`)" if n == "text" else ""
                errs.add(key + (j,), f"= {tpl!r}: placeholder {{{n}}} is not a lexicon{hint}{_close(n, lexicons)}; "
                                     f"add it under `lexicons` or fix the name (known: {', '.join(lexicons) or 'none'})")
    return list(values)


def _parse_test(t, at: tuple, lexicons: dict, labels, errs: _Errors) -> Test | None:
    if not isinstance(t, dict):
        errs.add(at, f"must be a mapping with name, capability, type, ...; got {t!r}")
        return None
    for key in t:
        if key not in TEST_KEYS:
            errs.add(at + (key,), f"is not a test key{_close(key, TEST_KEYS)}; known: {', '.join(sorted(TEST_KEYS))}")
    name = t.get("name")
    if not isinstance(name, str) or not name.strip():
        errs.add(at + ("name",), f"= {name!r}: every test needs a non-empty name")
        name = f"test {at[-1]}"
    cap = t.get("capability")
    if not isinstance(cap, str) or not cap.strip():
        errs.add(at + ("capability",), f"= {cap!r}: give the capability this test measures, e.g. negation")
        cap = "?"
    kind = t.get("type")
    if kind not in TYPES:
        fix = f"; did you mean {str(kind).upper()}?" if str(kind).upper() in TYPES else ""
        errs.add(at + ("type",), f"= {kind!r}: use one of {', '.join(TYPES)}{fix} (MFT: fixed expected label, "
                                 f"INV: prediction must not change, DIR: probability must move one way)")
        return None
    test = Test(name, cap, kind)
    allowed = {"MFT": {"templates", "expect"}, "INV": {"templates", "seeds", "perturb"},
               "DIR": {"templates", "seeds", "perturb", "direction", "label", "tolerance"}}[kind]
    for key in TEST_KEYS - {"name", "capability", "type", "max_cases"} - allowed:
        if key in t:
            errs.add(at + (key,), f"does not apply to a {kind} test; remove it (it takes {', '.join(sorted(allowed))})")
    if "max_cases" in t:
        m = t["max_cases"]
        if not isinstance(m, int) or isinstance(m, bool) or m < 1:
            errs.add(at + ("max_cases",), f"= {m!r}: give a positive integer")
        else:
            test.max_cases = m

    def need_label(key: str) -> str | None:
        v = t.get(key)
        if labels is None:
            errs.add(at + (key,), f"= {v!r}: a {kind} test names a label, so the suite needs a top-level "
                                  f"`labels: [...]` list")
            return None
        if v not in labels:
            errs.add(at + (key,), f"= {v!r}: use one of the suite's labels {labels}{_close(str(v), labels)}")
            return None
        return v

    if kind == "MFT":
        test.templates = _check_templates(t.get("templates"), at + ("templates",), lexicons, errs, False)
        test.expect = need_label("expect")
        return test
    # INV and DIR: seed sentences, then one perturbation
    if ("templates" in t) == ("seeds" in t):
        errs.add(at, "give exactly one of `templates` (seed sentences) or `seeds: validation` "
                     "(a sample of the run's validation split)")
    elif "templates" in t:
        test.templates = _check_templates(t["templates"], at + ("templates",), lexicons, errs, False)
    elif t["seeds"] != "validation":
        errs.add(at + ("seeds",), f"= {t['seeds']!r}: the one seed source is `validation`; for your own "
                                  f"sentences use `templates`")
    else:
        test.seeds = "validation"
    p = t.get("perturb")
    if isinstance(p, str):
        if p not in PERTURBATIONS:
            errs.add(at + ("perturb",), f"= {p!r} is not a built-in perturbation{_close(p, PERTURBATIONS)}; use one "
                                        f"of {', '.join(PERTURBATIONS)} or a list of rewrite templates with {{text}}")
        test.perturb = p
    elif isinstance(p, list):
        test.perturb = _check_templates(p, at + ("perturb",), lexicons, errs, True)
    else:
        errs.add(at + ("perturb",), f"= {p!r}: give a built-in perturbation ({', '.join(PERTURBATIONS)}) or a list "
                                    f"of rewrite templates with {{text}}, e.g. [\"{{text}} {{url}}\"]")
    if kind == "DIR":
        if t.get("direction") not in ("up", "down"):
            errs.add(at + ("direction",), f"= {t.get('direction')!r}: use up or down")
        test.direction = t.get("direction")
        test.label = need_label("label")
        tol = t.get("tolerance", 0.0)
        if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not 0 <= tol < 1:
            errs.add(at + ("tolerance",), f"= {tol!r}: give a probability change in [0, 1), e.g. 0.02")
        else:
            test.tolerance = float(tol)
    return test


# ----------------------------------------------------------------------------- generation

def _rng(suite: Suite, test: Test) -> np.random.Generator:
    return np.random.default_rng([suite.seed, zlib.crc32(test.name.encode())])


def _fill(template: str, values: dict) -> str:
    return string.Formatter().vformat(template, (), values)


def fillings(templates: list[str], lexicons: dict, cap: int, rng: np.random.Generator) -> list[str]:
    """Up to `cap` distinct texts from the templates: every combination of lexicon values when there
    are at most ENUMERATE_LIMIT, else random draws; a seeded sample of `cap` when there are more."""
    per = [(tpl, sorted(set(_placeholders(tpl)))) for tpl in templates]
    total = sum(int(np.prod([len(lexicons[n]) for n in names])) for _, names in per)
    if total <= ENUMERATE_LIMIT:
        texts = list(dict.fromkeys(
            _fill(tpl, dict(zip(names, combo)))
            for tpl, names in per for combo in itertools.product(*(lexicons[n] for n in names))))
        if len(texts) <= cap:
            return texts
        keep = np.sort(rng.choice(len(texts), size=cap, replace=False))
        return [texts[i] for i in keep]
    texts: dict[str, None] = {}
    for _ in range(cap * 20):  # random draws; duplicates are dropped
        tpl, names = per[rng.integers(len(per))]
        texts[_fill(tpl, {n: lexicons[n][rng.integers(len(lexicons[n]))] for n in names})] = None
        if len(texts) == cap:
            break
    return list(texts)


def perturb(test: Test, text: str, lexicons: dict, rng: np.random.Generator) -> str:
    if isinstance(test.perturb, str):
        return PERTURBATIONS[test.perturb](text, rng)
    tpl = test.perturb[rng.integers(len(test.perturb))]
    names = sorted(set(_placeholders(tpl)) - {"text"})
    return _fill(tpl, {"text": text, **{n: lexicons[n][rng.integers(len(lexicons[n]))] for n in names}})


def generate(suite: Suite, validation_texts: list[str] | None = None) -> dict[str, list[Case]]:
    """Test name -> its cases, deterministic for a given suite file (and validation split). INV/DIR
    cases whose perturbation leaves the text unchanged are dropped: they test nothing."""
    out = {}
    for test in suite.tests:
        rng = _rng(suite, test)
        cap = test.max_cases or suite.max_cases_per_test
        if test.type == "MFT":
            out[test.name] = [Case(t, expect=test.expect) for t in fillings(test.templates, suite.lexicons, cap, rng)]
            continue
        if test.seeds == "validation":
            if validation_texts is None:
                raise UserError(f"suite {suite.name!r}, test {test.name!r} samples the run's validation split, "
                                f"which was not given")
            # one sample per suite (and cap): the tests perturb the same sentences, which are answered once
            pool = list(dict.fromkeys(t for t in validation_texts if t.strip()))
            pick = np.random.default_rng([suite.seed, cap]).choice(len(pool), size=min(cap, len(pool)), replace=False)
            seeds = [pool[i] for i in np.sort(pick)]
        else:
            seeds = fillings(test.templates, suite.lexicons, cap, rng)
        cases = [Case(s, perturb(test, s, suite.lexicons, rng)) for s in seeds]
        out[test.name] = [c for c in cases if c.perturbed != c.text]
    return out
