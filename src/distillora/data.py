"""Datasets: load (Hub id | local directory | explicit files), validate with fix-it messages,
drop empty texts, carve a stratified validation split, tokenise once, and collate."""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from .config import DataConfig
from .errors import UserError
from .normalize import Normalizer

log = logging.getLogger(__name__)

READERS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
# Only the first MAX_CHARS_PER_TOKEN * max_length characters of a text are tokenised: a WordPiece or
# BPE token covers at least one character, so this keeps every token that truncation would keep
# unless a text holds long runs of whitespace, and one 50 MB text costs no more than a tweet.
MAX_CHARS_PER_TOKEN = 20


def clip(text: str, max_length: int) -> str:
    """`text` cut to the characters that can yield its first `max_length` tokens (see above)."""
    return text[: MAX_CHARS_PER_TOKEN * max_length]


@dataclass
class Split:
    texts: list[str]
    labels: np.ndarray  # (N,) int64
    categories: list[str] | None = None  # per-row category (e.g. the target group), when the data has one
    pairs: list[str] | None = None  # the second text of each row, for a sentence-pair task

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, idx) -> "Split":
        """The rows `idx` (positions, in that order)."""
        pick = (lambda xs: None if xs is None else [xs[i] for i in idx])
        return Split(pick(self.texts), self.labels[idx], pick(self.categories), pick(self.pairs))

    def __add__(self, other: "Split") -> "Split":
        """The rows of both, `self`'s first. Categories: `self`'s kind decides (none stays none; a side
        without them gets empty ones); pairs are both or neither (one `data.text_pair_column` reads both)."""
        cats = None if self.categories is None else self.categories + (other.categories or [""] * len(other))
        pairs = None if self.pairs is None else self.pairs + other.pairs
        return Split(self.texts + other.texts, np.concatenate([self.labels, other.labels]), cats, pairs)


@dataclass
class Splits:
    train: Split
    validation: Split
    test: Split
    info: dict = field(default_factory=dict)  # source, rows per split, dropped, duplicates, label names

    @property
    def extra_rows(self) -> int:
        """How many of train's rows (its last ones) came from `data.extra_train`."""
        return sum(self.info.get("extra_train_rows", {}).values())


# ----------------------------------------------------------------------------- reading

def _read_table(path: Path, sep: str = ",") -> pd.DataFrame:
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{path}: unsupported file type {path.suffix!r}; use .csv, .jsonl or .parquet")
    if not path.is_file():
        raise UserError(f"{path}: file not found; check data.source / data.train_file / data.test_file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty; it needs a header row and at least one data row")
    try:
        if kind == "parquet":
            return pd.read_parquet(path)
        raw = path.read_bytes()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
            row = f"row {line - 1} (line {line})" if kind == "csv" else f"row {line} (line {line})"
            raise UserError(f"{path}: {row}, column {col}: byte 0x{raw[e.start]:02x} is not UTF-8; "
                            f"re-save the file as UTF-8") from None
        if kind == "csv":
            header = raw.split(b"\n", 1)[0].decode("utf-8")
            if sep not in header and "\t" in header:
                raise UserError(f"{path}: line 1 holds tabs but no {sep!r}: the file looks tab-separated; "
                                f"use commas, or set data.sep='\\t'")
            # keep_default_na=False: a tweet reading "NA" or "null" is text, not a missing value.
            return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[])
        return pd.read_json(path, lines=True, dtype=False)
    except UserError:
        raise
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the file is empty; it needs a header row and at least one data row") from None
    except (pd.errors.ParserError, ValueError, OSError) as e:
        raise UserError(f"{path}: cannot be read as {kind} ({str(e).strip().splitlines()[0]}); fix the file") from None
    except Exception as e:  # pyarrow's errors for a corrupt parquet file have no common base we can name
        raise UserError(f"{path}: cannot be read as {kind} ({type(e).__name__}: {e}); fix the file") from None


def _find_files(directory: Path) -> tuple[Path, Path]:
    found = {}
    for split in ("train", "test"):
        hits = sorted(p for p in directory.iterdir() if p.stem == split and p.suffix.lower() in READERS)
        if not hits:
            raise UserError(f"{directory}: no {split}.csv / {split}.jsonl / {split}.parquet here; "
                            f"add it or give data.train_file and data.test_file")
        found[split] = hits[0]
    return found["train"], found["test"]


def _label_to_index(value, names: list[str]) -> int | None:
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value) if 0 <= int(value) < len(names) else None
    if isinstance(value, (float, np.floating)):
        return int(value) if float(value).is_integer() and 0 <= value < len(names) else None
    if isinstance(value, str):
        s = value.strip()
        if s in names:
            return names.index(s)
        if s.lstrip("-").isascii() and s.lstrip("-").isdigit():  # not "²", which isdigit() accepts
            return int(s) if 0 <= int(s) < len(names) else None
    return None


def _as_int(value) -> int | None:
    """`value` as a non-negative integer label (1, 1.0, "1"), else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value) if value >= 0 else None
    if isinstance(value, (float, np.floating)):
        return int(value) if float(value).is_integer() and value >= 0 else None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value.strip())
    return None


def infer_label_names(values: list) -> list[str]:
    """Label names when `data.label_names` is null, from the train labels: integer labels 0..max are
    named "0".."max"; otherwise the distinct non-empty texts, sorted (Python string order), so the
    order, and so each label's index, does not depend on the order of the rows."""
    ints = [_as_int(v) for v in values]
    if ints and all(i is not None for i in ints):
        return [str(i) for i in range(max(ints) + 1)]
    return sorted({str(v).strip() for v in values if v is not None and str(v).strip()
                   and not (isinstance(v, float) and np.isnan(v))})


def _cell_text(value) -> str:
    """A cell as `data.where` compares it: text, with 1.0 read as 1 (jsonl and parquet keep numbers)."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    return "" if value is None else str(value).strip()


def apply_where(df: pd.DataFrame, path: str, where: dict) -> pd.DataFrame:
    """Rows of `df` whose column equals the value (or one of the values) of every `data.where` entry,
    compared as text; the index keeps each row's position in the file, for error messages."""
    for col, value in where.items():
        if col not in df.columns:
            raise UserError(f"{path}: no column {col!r} (columns: {', '.join(map(str, df.columns))}); "
                            f"fix data.where")
        wanted = {_cell_text(v) for v in (value if isinstance(value, list) else [value])}
        df = df[[_cell_text(v) in wanted for v in df[col].tolist()]]
    if len(df) == 0:
        raise UserError(f"{path}: no rows match data.where {where}; check its columns and values")
    return df


def _columns(df: pd.DataFrame, path: str, cfg: DataConfig) -> tuple[str, str | None]:
    """The text (and pair) columns of `df`; raises UserError naming the missing one and the key to set."""
    text_col = cfg.text_column
    if text_col not in df.columns and "text" in df.columns and text_col == "tweet":
        text_col = "text"
    wanted = [(text_col, "data.text_column"), (cfg.label_column, "data.label_column")]
    if cfg.text_pair_column is not None:
        wanted.append((cfg.text_pair_column, "data.text_pair_column"))
    for col, key in wanted:
        if col not in df.columns:
            raise UserError(f"{path}: no column {col!r} (columns: {', '.join(map(str, df.columns))}); "
                            f"set {key} to the right one")
    return text_col, cfg.text_pair_column


def _validate(df: pd.DataFrame, path: str, cfg: DataConfig, names: list[str], first_row: int = 1) -> dict:
    """Texts, pairs (None for a single-text task), labels (indices into `names`) and counts (with
    `categories` when the table has the category column) of one table; raises UserError naming file,
    row, column and fix. Rows are numbered by their position in the file, before `data.where`."""
    if len(df) == 0:
        raise UserError(f"{path}: has a header but no data rows; add rows")
    text_col, pair_col = _columns(df, path, cfg)
    labels = np.empty(len(df), dtype=np.int64)
    allowed = ", ".join([str(i) for i in range(len(names))] + [n for n in names if n not in
                                                                 [str(i) for i in range(len(names))]])
    for i, (pos, value) in enumerate(zip(df.index, df[cfg.label_column].tolist())):
        idx = _label_to_index(value, names)
        if idx is None:
            row = first_row + int(pos)
            line = f" (line {_csv_line(Path(path), row, cfg.sep)})" if path.endswith(".csv") else ""
            raise UserError(f"{path}: row {row}{line}, column {cfg.label_column!r}: label {value!r} is not one of "
                            f"{allowed}; fix the value or set data.label_names")
        labels[i] = idx
    norm = Normalizer(cfg.normalize)
    texts_raw = [norm(t) if isinstance(t, str) else t for t in df[text_col].tolist()]
    keep = [isinstance(t, str) and t.strip() != "" for t in texts_raw]
    pairs = None
    if pair_col is not None:
        pairs_raw = [norm(t) if isinstance(t, str) else t for t in df[pair_col].tolist()]
        keep = [k and isinstance(t, str) and t.strip() != "" for k, t in zip(keep, pairs_raw)]
        pairs = [t for t, k in zip(pairs_raw, keep) if k]
    texts = [t for t, k in zip(texts_raw, keep) if k]
    dropped = len(keep) - sum(keep)
    if dropped:
        log.warning("%s: dropped %d empty or null text(s)%s", path, dropped,
                    f" (empty after data.normalize {norm.steps})" if norm else "")
    labels = labels[np.asarray(keep, dtype=bool)]
    rows = texts if pairs is None else list(zip(texts, pairs))
    counts = {"rows": len(df), "dropped_empty": dropped, "duplicates": int(len(rows) - len(set(rows)))}
    out = {"texts": texts, "pairs": pairs, "labels": labels, "counts": counts, "categories": None}
    if cfg.category_column and cfg.category_column in df.columns:
        cats = df[cfg.category_column].tolist()
        out["categories"] = ["" if c is None or (isinstance(c, float) and np.isnan(c)) else str(c)
                             for c, k in zip(cats, keep) if k]
    return out


def _csv_line(path: Path, row: int, sep: str) -> int:
    """The physical line on which data row `row` (1-based, after the header) of csv `path` starts:
    quoted fields may span lines, so this is not `row + 1`. Blank lines are skipped, as pandas does."""
    reader = csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline=""), delimiter=sep)
    start, n = 1, -1  # n: data rows read so far; the header is row 0
    for record in reader:
        if record:
            n += 1
            if n == row:
                return start
        start = reader.line_num + 1
    return start


def _prepare(df: pd.DataFrame, path: str, cfg: DataConfig) -> pd.DataFrame:
    """`df` indexed by row position in the file, filtered by `data.where`."""
    df = df.reset_index(drop=True)
    return apply_where(df, path, cfg.where) if cfg.where else df


def load_table(path: str | Path, cfg: DataConfig, names: list[str] | None = None) -> Split:
    """One extra labelled file (e.g. an extra test set), read and checked like the test split; `names`:
    the run's label names (default `data.label_names`)."""
    df = _prepare(_read_table(Path(path), cfg.sep), str(path), cfg)
    v = _validate(df, str(path), cfg, names or cfg.label_names or infer_label_names(
        df[_label_column(df, str(path), cfg)].tolist()))
    if not v["texts"]:
        raise UserError(f"{path}: no rows left after dropping empty texts")
    return Split(v["texts"], v["labels"], v["categories"], v["pairs"])


def load_extra(key: str, path: str, cfg: DataConfig, names: list[str] | None = None) -> Split:
    """The extra labelled file `path` named by the setting `key` (`data.extra_tests.NAME`,
    `data.dev_sets.NAME`, `data.extra_train[i]`), read by `load_table`; its errors name the setting and say what to fix.
    A relative path is read from the current directory, as `data.source` is."""
    if not Path(path).expanduser().is_file():
        where = "" if Path(path).is_absolute() else (f" (looked for {Path(path).resolve()}: a relative path is read "
                                                      f"from the current directory, {Path.cwd()})")
        raise UserError(f"{key} = {path!r}: file not found{where}; run from the directory the path is relative "
                        f"to (for the presets, the repository root), give an absolute path, or remove the entry")
    try:
        return load_table(Path(path).expanduser(), cfg, names)
    except UserError as e:
        raise UserError(f"{key}: {e} (the file needs the columns the data source has: data.text_column, "
                        f"data.label_column and, for pairs, data.text_pair_column)") from None


def _label_column(df: pd.DataFrame, path: str, cfg: DataConfig) -> str:
    if cfg.label_column not in df.columns:
        raise UserError(f"{path}: no column {cfg.label_column!r} (columns: {', '.join(map(str, df.columns))}); "
                        f"set data.label_column to the right one")
    return cfg.label_column


def as_saved(cfg: DataConfig, model_dir) -> DataConfig:
    """`cfg` with `normalize` set to the steps saved with the model at `model_dir`: the data settings under
    which a finished run's splits are rebuilt (export, checks, benches), so its texts are normalised as
    they were in training and as serving normalises them, even where the preset named by the run's
    `data.normalize` has changed since (as `hate_speech_twitter` did when it gained `strip_digits`). The
    same steps also drop the same empty rows, so the validation carve is the run's."""
    from .normalize import resolve, saved_steps

    # the training-only files are left out: validation and test are carved before they are added, and
    # the rebuilt splits serve evaluation only (so a moved augment file does not stop an export)
    cfg = replace(cfg, extra_train=[])
    if not (Path(model_dir) / "config.json").is_file():
        return cfg  # no saved model to ask (a run stopped before its teacher was saved): the config's steps
    steps = saved_steps(model_dir)
    if steps != resolve(cfg.normalize):
        log.warning("%s was trained with normalisation steps %s; data.normalize = %r now means %s: rebuilding "
                    "the splits with the model's own steps", model_dir, steps, cfg.normalize, resolve(cfg.normalize))
    return replace(cfg, normalize=steps)


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    """Read train and test, filter (`where`), validate, drop empty texts, sample (`max_train_rows`) and
    carve validation. Label names are `data.label_names`, or inferred from train (`infer_label_names`)."""
    if cfg.train_file:
        train_df, test_df = _read_table(Path(cfg.train_file), cfg.sep), _read_table(Path(cfg.test_file), cfg.sep)
        names = (cfg.train_file, cfg.test_file)
    elif Path(cfg.source).expanduser().is_dir():
        tr, te = _find_files(Path(cfg.source).expanduser())
        train_df, test_df = _read_table(tr, cfg.sep), _read_table(te, cfg.sep)
        names = (str(tr), str(te))
    elif Path(cfg.source).suffix or cfg.source.startswith((".", "/", "~")):
        raise UserError(f"data.source = {cfg.source!r}: no such directory; give a directory holding train and "
                        f"test files, explicit data.train_file/data.test_file, or a Hub dataset id")
    else:
        train_df, test_df, names = _load_hub(cfg.source)
    train_df, test_df = _prepare(train_df, names[0], cfg), _prepare(test_df, names[1], cfg)
    label_names = list(cfg.label_names) if cfg.label_names is not None else \
        infer_label_names(train_df[_label_column(train_df, names[0], cfg)].tolist())
    tr_v = _validate(train_df, names[0], cfg, label_names)
    te_v = _validate(test_df, names[1], cfg, label_names)
    train_texts, train_pairs, train_labels, train_counts = tr_v["texts"], tr_v["pairs"], tr_v["labels"], tr_v["counts"]
    test_counts = te_v["counts"]
    if len(te_v["texts"]) == 0:
        raise UserError(f"{names[1]}: no test rows left after dropping empty texts; the test split needs rows")
    present = set(train_labels.tolist())
    if len(present) < 2:
        raise UserError(f"{names[0]}: every train row has label {label_names[train_labels[0]] if len(train_labels) else '?'}; "
                        f"a classifier needs both labels in train")
    absent = [n for i, n in enumerate(label_names) if i not in present]
    if absent:
        raise UserError(f"{names[0]}: no train row has label(s) {absent}; add rows with them, or remove them from "
                        f"data.label_names {label_names}")
    full = Split(train_texts, train_labels, tr_v["categories"], train_pairs)  # categories: for group_weights
    if cfg.max_train_rows is not None and cfg.max_train_rows < len(train_texts):
        idx, _ = train_test_split(np.arange(len(train_texts)), train_size=cfg.max_train_rows,
                                  stratify=train_labels, random_state=seed)
        full = full.take(np.sort(idx))
    try:
        tr_idx, va_idx = train_test_split(np.arange(len(full)), test_size=cfg.validation_fraction,
                                          stratify=full.labels, random_state=seed)
    except ValueError as e:
        raise UserError(f"{names[0]}: cannot carve a stratified validation split ({e}); add rows or "
                        f"change data.validation_fraction") from None
    train, validation = full.take(np.sort(tr_idx)), full.take(np.sort(va_idx))
    test = Split(te_v["texts"], te_v["labels"], te_v["categories"], te_v["pairs"])
    extra_rows = {}
    held_out = set(validation.texts) | set(test.texts) if cfg.extra_train else set()  # for the overlap warning
    for i, path in enumerate(cfg.extra_train):  # after the carve: validation stays the source's own rows
        if any(Path(path).expanduser().resolve() == Path(n).resolve() for n in names if Path(n).is_file()):
            raise UserError(f"data.extra_train[{i}] = {path!r} is the data source's own train or test file: extra "
                            f"training rows must come from another file; remove the entry")
        extra = load_extra(f"data.extra_train[{i}]", path, cfg, label_names)
        if train.categories is not None and extra.categories is None:
            log.warning("data.extra_train[%d] = %r has no column %r: its rows get no category (group_weights "
                        "would count them as one group)", i, path, cfg.category_column)
        overlap = sum(t in held_out for t in extra.texts)
        if overlap:
            log.warning("data.extra_train[%d] = %r: %d of its texts are also in validation or test; they now "
                        "train the models that are scored on them", i, path, overlap)
        train, extra_rows[str(path)] = train + extra, len(extra)
    info = {
        "source": cfg.source if not cfg.train_file else {"train": cfg.train_file, "test": cfg.test_file},
        "files": {"train": names[0], "test": names[1]},
        "label_names": label_names,
        "rows": {"train": len(train), "validation": len(validation), "test": len(test)},
        "rows_read": {"train": train_counts["rows"], "test": test_counts["rows"]},
        "dropped_empty": {"train": train_counts["dropped_empty"], "test": test_counts["dropped_empty"]},
        "duplicates": {"train": train_counts["duplicates"], "test": test_counts["duplicates"]},
        "label_counts": {s: np.bincount(x.labels, minlength=len(label_names)).tolist()
                         for s, x in (("train", train), ("validation", validation), ("test", test))},
        "max_train_rows": cfg.max_train_rows,
    }
    if extra_rows:
        info["extra_train_rows"] = extra_rows  # included in rows.train and label_counts.train
    if cfg.text_pair_column is not None:
        info["text_pair_column"] = cfg.text_pair_column
    if cfg.where:
        info["where"] = dict(cfg.where)
    return Splits(train, validation, test, info)


def _load_hub(source: str) -> tuple[pd.DataFrame, pd.DataFrame, tuple[str, str]]:
    try:
        import datasets

        ds = datasets.load_dataset(source)
    except Exception as e:  # offline, unknown id, auth: all surface the same way to the user
        raise UserError(f"data.source = {source!r}: could not load it from the Hugging Face Hub "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); when offline, point data.source "
                        f"to a local directory such as ../shared/data/hate_speech_twitter") from None
    for split in ("train", "test"):
        if split not in ds:
            raise UserError(f"data.source = {source!r} has splits {list(ds)}, no {split!r}; give local files instead")
    return ds["train"].to_pandas(), ds["test"].to_pandas(), (f"{source}:train", f"{source}:test")


# ----------------------------------------------------------------------------- tokenising

class Encoded(torch.utils.data.Dataset):
    """Tokenised examples as a list of dicts (`input_ids`, `attention_mask`, `labels`), padded later
    per batch. Extra per-example fields (cached teacher outputs, the loss weight `SAMPLE_WEIGHT`, a bias
    model's log-probabilities `BIAS_LOGPROBS`) can be attached with `with_fields`."""

    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]

    def lengths(self) -> list[int]:
        return [len(x["input_ids"]) for x in self.items]

    def with_fields(self, **columns) -> "Encoded":
        return Encoded([{**x, **{k: v[i] for k, v in columns.items()}} for i, x in enumerate(self.items)])

    def with_tail_repeated(self, n: int, times: int) -> "Encoded":
        """The examples with the last `n` (the `data.extra_train` rows, which `load_splits` puts last)
        `times` times in all; the items are shared, not copied."""
        if times <= 1 or n <= 0:
            return self
        return Encoded(self.items + self.items[len(self.items) - n:] * (times - 1))


def encode(split: Split, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Encoded:
    """Tokenise once, without padding (padding happens per batch in the collator). Texts are clipped
    first (see `clip`); `[SEP]`, `<s>` and the like in a text are read as literal text. A pair task's
    two texts are tokenised as a pair (`[CLS] a [SEP] b [SEP]`), the longer one truncated first."""
    pairs = {} if split.pairs is None else {"text_pair": [clip(t, max_length) for t in split.pairs]}
    enc = tokenizer([clip(t, max_length) for t in split.texts], **pairs, truncation=True, max_length=max_length,
                    padding=False, split_special_tokens=True)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    items = [{**{k: enc[k][i] for k in keys}, "labels": int(split.labels[i])} for i in range(len(split))]
    return Encoded(items)


# the per-example loss weight a training item may carry (`training.with_group_weights`)
SAMPLE_WEIGHT = "sample_weight"
# the per-example log-probabilities (C,) of a bias-only model a training item may carry (`debias`)
BIAS_LOGPROBS = "bias_logprobs"


def _model_field(key: str) -> bool:
    """Whether an item's field is a model input or label (not a cached teacher output, a loss weight or
    a bias model's log-probabilities)."""
    return not key.startswith("teacher_") and key not in (SAMPLE_WEIGHT, BIAS_LOGPROBS)


class Collator:
    """Dynamic padding of token fields (via `DataCollatorWithPadding`) plus cached teacher outputs
    (`losses.TEACHER_OUTPUTS`): per-token ones, (L_i, H), are zero-padded to the batch length; the
    others, fixed-shape, are stacked; per-example loss weights (`SAMPLE_WEIGHT`) become a float (B,), a bias
    model's log-probabilities (`BIAS_LOGPROBS`) a float (B, C)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.pad = DataCollatorWithPadding(tokenizer)

    def __call__(self, features: list[dict]) -> dict:
        from .losses import TEACHER_OUTPUTS

        plain = [{k: v for k, v in f.items() if _model_field(k)} for f in features]
        batch = dict(self.pad(plain))
        if SAMPLE_WEIGHT in features[0]:
            batch[SAMPLE_WEIGHT] = torch.tensor([f[SAMPLE_WEIGHT] for f in features], dtype=torch.float32)
        if BIAS_LOGPROBS in features[0]:
            batch[BIAS_LOGPROBS] = torch.tensor([f[BIAS_LOGPROBS] for f in features], dtype=torch.float32)
        for key in features[0]:
            if not key.startswith("teacher_"):
                continue
            values = [f[key] for f in features]
            if TEACHER_OUTPUTS[key].per_token:
                out = values[0].new_zeros((len(values), batch["input_ids"].shape[1], *values[0].shape[1:]))
                for i, v in enumerate(values):
                    out[i, : v.shape[0]] = v
                batch[key] = out
            else:
                batch[key] = torch.stack(values).float()
        return batch


def length_sorted_batches(encoded: Encoded, tokenizer: PreTrainedTokenizerBase, batch_size: int, device):
    """Yield (indices, batch on `device`) over `encoded` in order of length, so padding stays small;
    only the model inputs are collated (no labels, cached teacher outputs, loss weights or bias
    log-probabilities)."""
    order = np.argsort(encoded.lengths(), kind="stable")
    collate = Collator(tokenizer)
    for i in range(0, len(order), batch_size):
        idx = order[i: i + batch_size]
        batch = collate([{k: v for k, v in encoded[j].items() if k != "labels" and _model_field(k)} for j in idx])
        yield idx, {k: v.to(device) for k, v in batch.items()}
