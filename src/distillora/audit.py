"""Data audit: what a user should know about the splits before trusting a number: sizes, balance,
empty and duplicate texts, train/test overlap (exact and normalised), token lengths, and
split-shift indicators per split and label."""

from __future__ import annotations

import re
import unicodedata

import numpy as np

from .data import clip

AUDIT_MAX_TOKENS = 512  # the longest max_length a run accepts
URL = re.compile(r"https?://|www\.", re.I)
INDICATORS = {
    "uppercase": lambda t: any(c.isupper() for c in t),
    "hashtag": lambda t: "#" in t,
    "at_user": lambda t: "@user" in t.lower(),
    "url": lambda t: bool(URL.search(t)),
}


def normalise(text: str) -> str:
    """Lowercase, strip accents, @-mentions, URLs, punctuation and digits, collapse spaces: the
    cleaning that separates near-duplicates across differently processed sources."""
    t = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    t = re.sub(r"@\w+|https?://\S+|www\.\S+", " ", t)
    t = re.sub(r"[^a-z ]+", " ", t)
    return " ".join(t.split())


def audit(splits: dict[str, tuple[list[str], np.ndarray]], label_names: list[str], info: dict | None = None,
          tokenizer=None) -> dict:
    """`splits`: name -> (texts, labels). Returns a JSON-able dict."""
    out: dict = {"splits": {}, "overlap": {}, "shift": {}}
    for name, (texts, labels) in splits.items():
        counts = np.bincount(labels, minlength=len(label_names)).tolist()
        entry = {"rows": len(texts), "labels": dict(zip(label_names, counts)),
                 "share": {n: round(c / max(1, len(texts)), 4) for n, c in zip(label_names, counts)},
                 "duplicates": len(texts) - len(set(texts))}
        if tokenizer is not None and texts:
            # clipped first, as training clips (a 50 MB text would otherwise be tokenised whole);
            # lengths are counted up to AUDIT_MAX_TOKENS
            clipped = [clip(t, AUDIT_MAX_TOKENS) for t in texts]
            ids = tokenizer(clipped, truncation=True, max_length=AUDIT_MAX_TOKENS, split_special_tokens=True)["input_ids"]
            lengths = np.array([len(x) for x in ids])
            entry["tokens"] = {"mean": round(float(lengths.mean()), 1), "p50": int(np.percentile(lengths, 50)),
                               "p95": int(np.percentile(lengths, 95)), "max": int(lengths.max())}
        out["splits"][name] = entry
        out["shift"][name] = {
            label_names[k]: {ind: round(float(np.mean([f(t) for t, l in zip(texts, labels) if l == k]) if counts[k] else 0), 4)
                             for ind, f in INDICATORS.items()}
            for k in range(len(label_names))}
    if info:
        out["dropped_empty"] = info.get("dropped_empty")
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ta, tb = set(splits[a][0]), set(splits[b][0])
            na, nb = {normalise(t) for t in ta}, {normalise(t) for t in tb}
            out["overlap"][f"{a}/{b}"] = {"exact": len(ta & tb), "normalised": len((na & nb) - {""})}
    return out


def findings(a: dict, label_names: list[str]) -> list[str]:
    """Plain-language warnings computed from an audit."""
    notes = []
    shift = a["shift"]
    for ind in INDICATORS:
        for split in shift:
            for label in label_names:
                share = shift[split][label][ind]
                other = [shift[s][lab][ind] for s in shift for lab in label_names if (s, lab) != (split, label)]
                if share >= 0.3 and other and max(other) <= share / 3:
                    notes.append(f"{share:.0%} of `{split}` rows labelled `{label}` contain {ind.replace('_', ' ')}, "
                                 f"against at most {max(other):.0%} elsewhere: a surface cue a model can exploit.")
    for pair, o in a["overlap"].items():
        if o["exact"] or o["normalised"]:
            notes.append(f"{pair}: {o['exact']} exact and {o['normalised']} normalised texts in common.")
    b = [s["share"] for s in a["splits"].values()]
    if len({round(x[label_names[1]], 1) for x in b}) > 1:
        parts = ", ".join(f"{n} {s['share'][label_names[1]]:.0%}" for n, s in a["splits"].items())
        notes.append(f"Label balance differs between splits ({label_names[1]}: {parts}).")
    return notes
