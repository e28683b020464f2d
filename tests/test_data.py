import numpy as np
import pandas as pd
import pytest

from distillora.config import DataConfig
from distillora.data import Collator, encode, load_splits
from distillora.errors import UserError


def _write(tmp_path, train: str, test: str = "tweet,label\nhello there,0\nyou people are vermin,1\n", ext="csv"):
    (tmp_path / f"train.{ext}").write_bytes(train.encode() if isinstance(train, str) else train)
    (tmp_path / f"test.{ext}").write_text(test)
    return DataConfig(source=str(tmp_path), validation_fraction=0.25)


def _rows(n0, n1):
    return "".join(f"harmless tweet {i},0\n" for i in range(n0)) + "".join(f"hateful tweet {i},1\n" for i in range(n1))


def test_shared_data_loads_with_counts(shared_data):
    s = load_splits(DataConfig(source=str(shared_data)), seed=42)
    assert s.info["dropped_empty"] == {"train": 1, "test": 0}
    assert s.info["duplicates"]["train"] > 0 and s.info["duplicates"]["test"] > 0
    assert len(s.train) + len(s.validation) == 5678 and len(s.test) == 1000
    assert abs(len(s.validation) / 5678 - 0.1) < 0.01
    # stratified: the hate share is the same in train and validation
    assert abs(s.train.labels.mean() - s.validation.labels.mean()) < 0.01
    # the splits share no text except exact duplicates of the source, which the carve may separate
    everything = s.train.texts + s.validation.texts
    duplicated = {t for t in set(everything) if everything.count(t) > 1}
    assert (set(s.train.texts) & set(s.validation.texts)) <= duplicated


def test_split_is_seeded(shared_data):
    a = load_splits(DataConfig(source=str(shared_data)), seed=1)
    b = load_splits(DataConfig(source=str(shared_data)), seed=1)
    c = load_splits(DataConfig(source=str(shared_data)), seed=2)
    assert a.validation.texts == b.validation.texts != c.validation.texts


def test_label_outside_set_names_file_row_and_fix(tmp_path):
    cfg = _write(tmp_path, "tweet,label\n" + _rows(5, 5) + "odd one,7\n")
    with pytest.raises(UserError) as e:
        load_splits(cfg, 0)
    msg = str(e.value)
    assert "train.csv: row 11 (line 12)" in msg and "label '7'" in msg and "data.label_names" in msg


def test_missing_column(tmp_path):
    cfg = _write(tmp_path, "words,label\n" + _rows(5, 5))
    with pytest.raises(UserError, match=r"train.csv: no column 'tweet' \(columns: words, label\); set data.text_column"):
        load_splits(cfg, 0)


def test_text_column_accepted(tmp_path):
    cfg = _write(tmp_path, "text,label\n" + _rows(6, 6), "text,label\na,0\nb,1\n")
    assert len(load_splits(cfg, 0).test) == 2


def test_empty_and_header_only_files(tmp_path):
    with pytest.raises(UserError, match="train.csv: the file is empty"):
        load_splits(_write(tmp_path, ""), 0)
    with pytest.raises(UserError, match="train.csv: has a header but no data rows"):
        load_splits(_write(tmp_path, "tweet,label\n"), 0)


def test_undecodable_bytes_name_row_and_column(tmp_path):
    cfg = _write(tmp_path, b"tweet,label\nfine,0\nbad \xff byte,1\n")
    with pytest.raises(UserError, match=r"train.csv: row 2 \(line 3\), column 5: byte 0xff is not UTF-8"):
        load_splits(cfg, 0)


def test_one_class_train_and_empty_test(tmp_path):
    with pytest.raises(UserError, match="both labels"):
        load_splits(_write(tmp_path, "tweet,label\n" + _rows(8, 0)), 0)
    with pytest.raises(UserError, match="no test rows left"):
        load_splits(_write(tmp_path, "tweet,label\n" + _rows(6, 6), "tweet,label\n ,0\n"), 0)


def test_label_names_and_jsonl(tmp_path):
    lines = [f'{{"tweet": "t{i}", "label": "{"hate" if i % 2 else "not_hate"}"}}' for i in range(12)]
    cfg = _write(tmp_path, "\n".join(lines) + "\n", '{"tweet": "x", "label": 1}\n', ext="jsonl")
    s = load_splits(cfg, 0)
    assert sorted(np.concatenate([s.train.labels, s.validation.labels]).tolist()) == [0] * 6 + [1] * 6


def test_parquet(tmp_path):
    pd.DataFrame({"tweet": [f"t{i}" for i in range(12)], "label": [0, 1] * 6}).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame({"tweet": ["a", "b"], "label": [0, 1]}).to_parquet(tmp_path / "test.parquet")
    assert len(load_splits(DataConfig(source=str(tmp_path), validation_fraction=0.25), 0).test) == 2


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        load_splits(DataConfig(source=str(tmp_path / "nope")), 0)
    with pytest.raises(UserError, match="no train.csv"):
        load_splits(DataConfig(source=str(tmp_path)), 0)


def test_collator_pads_inputs_and_teacher_hidden(minilm_tokenizer):
    from distillora.data import Split
    import torch

    enc = encode(Split(["a b c d", "a"], np.array([0, 1])), minilm_tokenizer, 16)
    lengths = enc.lengths()
    hidden = [torch.ones(n, 3) for n in lengths]
    enc = enc.with_fields(teacher_logits=[torch.zeros(2), torch.ones(2)], teacher_hidden=hidden)
    batch = Collator(minilm_tokenizer)([enc[0], enc[1]])
    assert batch["input_ids"].shape == (2, max(lengths))
    assert batch["teacher_hidden"].shape == (2, max(lengths), 3)
    assert batch["teacher_hidden"][1, lengths[1]:].abs().sum() == 0
    assert batch["teacher_logits"].shape == (2, 2) and batch["labels"].tolist() == [0, 1]
