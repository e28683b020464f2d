"""What the reference train split is made of: why its validation carve, a dev set and the shifted test
split can disagree (docs/results.md, eighteenth session). Reads the train CSV only, never the test split.

    python bench/train_sources.py [../shared/data/hate_speech_twitter/train.csv]

Prints, from the raw texts (before `data.normalize`):
- the label counts, beside the three classes of Davidson et al. (ICWSM 2017), the corpus of its
  lowercased tweets (the project's brief and issue 10 name it);
- the rows that still carry an upper-case letter or punctuation, which that corpus's rows here had
  stripped: a second source, with their labels and categories;
- for a few insult and slur stems, how many rows holding one are labelled hate and how many not.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import Counter
from pathlib import Path

# Davidson, Warmsley, Macy and Weber, "Automated Hate Speech Detection and the Problem of Offensive
# Language", ICWSM 2017: 24,783 tweets, the majority label of each (their labeled_data.csv, `class`)
DAVIDSON = {"hate speech": 1430, "offensive language": 19190, "neither": 4163}
SECOND_SOURCE = re.compile(r"[A-Z,.!?'\"]")  # kept only by rows that were not cleaned like the rest
STEMS = ("bitch", "hoe", "ugly", "stupid", "idiot", "retard", "fag", "nigg", "trash")


def read(path: Path) -> list[dict]:
    """The rows of a train CSV (columns tweet, label and, optionally, categories); a bad file exits with
    its line, column and value."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for col in ("tweet", "label"):
            if col not in (reader.fieldnames or []):
                sys.exit(f"{path}: no column {col!r} (columns: {reader.fieldnames}); the script reads tweet, "
                         f"label and, optionally, categories")
        rows = []
        for r in reader:
            if r["label"] not in ("0", "1"):
                sys.exit(f"{path}:{reader.line_num}: column label: {r['label']!r} is not 0 or 1")
            rows.append({"text": r["tweet"] or "", "label": int(r["label"]), "category": r.get("categories") or ""})
    return rows


def summary(rows: list[dict]) -> dict:
    labels = Counter(r["label"] for r in rows)
    second = [r for r in rows if SECOND_SOURCE.search(r["text"])]
    stems = {s: Counter(r["label"] for r in rows if re.search(r"\b" + s, r["text"].lower())) for s in STEMS}
    return {"rows": len(rows), "labels": dict(sorted(labels.items())),
            "second_source": {"rows": len(second), "labels": dict(sorted(Counter(r["label"] for r in second).items())),
                              "categories": dict(Counter(r["category"] for r in second).most_common())},
            "stems": {s: {"hate": c[1], "not": c[0]} for s, c in stems.items()}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "hate_speech_twitter" / "train.csv"
    ap.add_argument("train", nargs="?", type=Path, default=default.resolve())
    args = ap.parse_args(argv)
    if not args.train.is_file():
        sys.exit(f"{args.train}: no such file; pass the train CSV (columns tweet, label, categories)")
    s = summary(read(args.train))
    print(f"{args.train}: {s['rows']} rows, label counts {s['labels']}")
    print(f"  Davidson et al. 2017's classes: {DAVIDSON}")
    sec = s["second_source"]
    print(f"  rows with an upper-case letter or punctuation (a second source): {sec['rows']}, "
          f"labels {sec['labels']}, categories {sec['categories']}")
    print("  rows holding a stem, hate / not:")
    for stem, c in s["stems"].items():
        print(f"    {stem:8s} {c['hate']:4d} / {c['not']}")


if __name__ == "__main__":
    main()
