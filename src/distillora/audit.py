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
    if "train" in splits:
        out["unseen"] = {name: unseen(splits["train"][0], texts) for name, (texts, _) in splits.items() if name != "train"}
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ta, tb = set(splits[a][0]), set(splits[b][0])
            na, nb = {normalise(t) for t in ta}, {normalise(t) for t in tb}
            out["overlap"][f"{a}/{b}"] = {"exact": len(ta & tb), "normalised": len((na & nb) - {""})}
    return out


def unseen(train: list[str], other: list[str], top: int = 8) -> dict:
    """Characters and words of `other` that no training text contains: rows affected, the most
    frequent of each, and which preset of `distillora.normalize`, applied to both sides, leaves no row
    with an unseen character (None when none does)."""
    from .normalize import PRESETS, Normalizer

    def gap(tr: list[str], ot: list[str]) -> tuple[int, dict, dict]:
        chars = set("".join(tr))
        words = {w for t in tr for w in t.split()}
        rows, cc, wc = 0, {}, {}
        for t in ot:
            new = set(t) - chars
            rows += bool(new)
            for c in new:
                cc[c] = cc.get(c, 0) + 1
            for w in set(t.split()) - words:
                wc[w] = wc.get(w, 0) + 1
        return rows, cc, wc

    rows, cc, wc = gap(train, other)
    out = {"rows": rows, "share": round(rows / max(1, len(other)), 4),
           "chars": dict(sorted(cc.items(), key=lambda kv: -kv[1])[:top]),
           # words that no train row has but at least 1% of these rows do: a vocabulary the model never saw
           "words": {w: n for w, n in sorted(wc.items(), key=lambda kv: -kv[1])[:top] if n >= max(2, len(other) // 100)},
           "closed_by": None}
    if rows:
        for name in ("basic", "hate_speech_twitter"):
            norm = Normalizer(PRESETS[name])
            if gap(norm.many(train), norm.many(other))[0] == 0:
                out["closed_by"] = name
                break
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
    for split, u in a.get("unseen", {}).items():
        if u["share"] >= 0.01:
            chars = " ".join(repr(c) for c in u["chars"])
            fix = (f"data.normalize: {u['closed_by']} closes the gap" if u["closed_by"] else
                   "no preset of data.normalize closes it; add steps or clean the data")
            notes.append(f"{u['share']:.0%} of `{split}` rows contain characters no training text contains "
                         f"({chars}): the model never saw them in training; {fix}.")
    for pair, o in a["overlap"].items():
        if o["exact"] or o["normalised"]:
            notes.append(f"{pair}: {o['exact']} exact and {o['normalised']} normalised texts in common.")
    b = [s["share"] for s in a["splits"].values()]
    # binary: label 1's share says it all; with more labels, every label whose share differs is named
    for label in (label_names[1:] if len(label_names) == 2 else label_names):
        if len({round(x[label], 1) for x in b}) > 1:
            parts = ", ".join(f"{n} {s['share'][label]:.0%}" for n, s in a["splits"].items())
            notes.append(f"Label balance differs between splits ({label}: {parts}).")
    return notes
