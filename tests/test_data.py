import numpy as np
import pandas as pd
import pytest

from distillora.config import DataConfig
from distillora.data import Collator, encode, load_splits
from distillora.errors import UserError

from conftest import load_bench


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


class _Recording:
    """A tokenizer that records the longest text it was given, then delegates."""

    def __init__(self, tok):
        self.tok, self.longest = tok, 0

    def __call__(self, texts, **kw):
        self.longest = max([self.longest] + [len(t) for t in texts])
        return self.tok(texts, **kw)


def test_a_huge_text_is_clipped_before_tokenising(minilm_tokenizer):
    """Issue 11 H: one 5 MB text reaches the tokenizer as at most 20 * max_length characters (training,
    prediction and the audit alike), with the same tokens as truncating the whole text."""
    from distillora.analysis import run_audit
    from distillora.data import MAX_CHARS_PER_TOKEN, Split, Splits
    from distillora.config import StudyConfig
    from distillora.predict import probabilities
    from conftest import tiny_bert

    huge = "they said hello again " * 250_000
    split = Split([huge, "short one"], np.array([0, 1]))
    rec = _Recording(minilm_tokenizer)
    enc = encode(split, rec, 32)
    assert rec.longest <= MAX_CHARS_PER_TOKEN * 32
    assert enc[0]["input_ids"] == minilm_tokenizer(huge, truncation=True, max_length=32)["input_ids"]

    rec = _Recording(minilm_tokenizer)
    probabilities(tiny_bert(2, vocab_size=minilm_tokenizer.vocab_size), rec, [huge, "hi"], 32)
    assert rec.longest <= MAX_CHARS_PER_TOKEN * 32

    rec = _Recording(minilm_tokenizer)
    splits = Splits(split, split, split, {"dropped_empty": {}})
    a = run_audit(splits, StudyConfig(), rec)
    assert rec.longest <= MAX_CHARS_PER_TOKEN * 512 and a["splits"]["train"]["tokens"]["max"] == 512


def _mpnet_tokenizer(minilm_tokenizer):
    """An MPNet tokenizer (special tokens <s>, </s>, <pad>, <mask>) over MiniLM's WordPiece vocabulary."""
    from transformers import MPNetTokenizer

    words = sorted(minilm_tokenizer.get_vocab(), key=minilm_tokenizer.get_vocab().get)
    return MPNetTokenizer(vocab={w: i for i, w in enumerate(["<s>", "<pad>", "</s>", "<unk>", *words, "<mask>"])})


def test_special_token_strings_in_user_text_stay_text(minilm_tokenizer):
    """Issue 11 J: `[SEP]`/`[CLS]` (BERT) and `</s>`/`<s>` (MPNet) typed in a text are tokenised as the
    characters they are, in training (`encode`) and prediction (`probabilities`) alike."""
    from distillora.data import Split
    from distillora.predict import probabilities
    from conftest import tiny_bert

    bert = minilm_tokenizer
    ids = encode(Split(["hi [SEP] there [CLS]"], np.array([0])), bert, 32)[0]["input_ids"]
    assert ids[0] == bert.cls_token_id and ids[-1] == bert.sep_token_id
    assert bert.sep_token_id not in ids[1:-1] and bert.cls_token_id not in ids[1:-1]
    assert ids == bert("hi [ sep ] there [ cls ]")["input_ids"]  # uncased: the same characters
    model = tiny_bert(2, vocab_size=bert.vocab_size)
    assert probabilities(model, bert, ["hi [SEP] there"]) == probabilities(model, bert, ["hi [ sep ] there"])

    mpnet = _mpnet_tokenizer(minilm_tokenizer)
    ids = encode(Split(["hi </s> <s> there"], np.array([0])), mpnet, 32)[0]["input_ids"]
    assert ids[0] == mpnet.cls_token_id and ids[-1] == mpnet.sep_token_id
    assert mpnet.sep_token_id not in ids[1:-1] and mpnet.cls_token_id not in ids[1:-1]
    assert ids == mpnet("hi < / s > < s > there")["input_ids"]


def test_sep_reads_tab_separated_files(tmp_path):
    """Issue 11 K: `data.sep` reads a tab-separated file (which, by default, gets a hint to set it)."""
    tsv = "tweet\tlabel\n" + _rows(8, 4).replace(",", "\t")
    cfg = _write(tmp_path, tsv, "tweet\tlabel\nhello, there\t0\nvermin\t1\n")
    with pytest.raises(UserError, match="use commas, or set data.sep"):
        load_splits(cfg, 0)
    cfg.sep = "\t"
    s = load_splits(cfg, 0)
    assert s.info["rows"]["test"] == 2 and s.test.texts[0] == "hello, there"


def _three(n: int, label=lambda k: k) -> str:
    return "".join(f"tweet number {i},{label(i % 3)}\n" for i in range(n))


def test_three_integer_labels_with_names_given(tmp_path):
    cfg = _write(tmp_path, "tweet,label\n" + _three(24), "tweet,label\n" + _three(6))
    cfg.label_names = ["a", "b", "c"]
    s = load_splits(cfg, seed=0)
    assert s.info["label_names"] == ["a", "b", "c"] and s.info["label_counts"]["test"] == [2, 2, 2]
    cfg.label_names = ["a", "b"]  # a label 2 no name covers: named by file, row, column and value
    with pytest.raises(UserError, match=r"train\.csv: row 3 \(line 4\), column 'label': label '2' is not one of 0, 1, a, b"):
        load_splits(cfg, seed=0)


def test_label_names_inferred_in_a_stable_order(tmp_path):
    names = {0: "pos", 1: "neg", 2: "neutral"}
    cfg = _write(tmp_path, "tweet,label\n" + _three(24, names.get), "tweet,label\n" + _three(6, names.get))
    cfg.label_names = None
    s = load_splits(cfg, seed=0)
    assert s.info["label_names"] == ["neg", "neutral", "pos"]  # sorted, whatever the row order
    assert s.test.labels.tolist() == [2, 0, 1, 2, 0, 1]
    cfg = _write(tmp_path, "tweet,label\n" + _three(24), "tweet,label\n" + _three(6))
    cfg.label_names = None
    assert load_splits(cfg, seed=0).info["label_names"] == ["0", "1", "2"]  # integers 0..max
    (tmp_path / "test.csv").write_text("tweet,label\n" + _three(3, names.get) + "odd one,other\n")
    cfg = _write(tmp_path, "tweet,label\n" + _three(24, names.get), (tmp_path / "test.csv").read_text())
    cfg.label_names = None
    with pytest.raises(UserError, match=r"test\.csv: row 4 \(line 5\), column 'label': label 'other'"):
        load_splits(cfg, seed=0)


def test_where_filters_rows_and_keeps_file_row_numbers(tmp_path):
    train = "tweet,label,group\n" + "".join(f"t{i},{i % 2},{'AB'[i % 2] if i % 4 < 2 else 'C'}\n" for i in range(40))
    cfg = _write(tmp_path, train, "tweet,label,group\nx,1,B\ny,0,A\nz,1,C\n")
    cfg.where, cfg.label_column, cfg.label_names = {"group": ["A", "B"]}, "label", None
    s = load_splits(cfg, seed=0)
    assert s.info["rows"]["train"] + s.info["rows"]["validation"] == 20 and s.info["where"] == {"group": ["A", "B"]}
    cfg.where, cfg.label_column = {"label": 1}, "group"
    s = load_splits(cfg, seed=0)  # the odd rows: groups B and C
    assert s.info["label_names"] == ["B", "C"]
    # rows keep their number in the file: the first odd row is row 2, though the filter kept it first
    cfg.label_names = ["C", "X"]
    with pytest.raises(UserError, match=r"train\.csv: row 2 \(line 3\), column 'group': label 'B'"):
        load_splits(cfg, seed=0)
    cfg.where = {"nope": 1}
    with pytest.raises(UserError, match="no column 'nope'.*data.where"):
        load_splits(cfg, seed=0)
    cfg.where = {"label": 7}
    with pytest.raises(UserError, match="no rows match data.where"):
        load_splits(cfg, seed=0)


def test_pairs_are_read_checked_and_tokenised_as_pairs(tmp_path, minilm_tokenizer):
    rows = "".join(f"premise {i},hypothesis {i},{i % 2}\n" for i in range(20))
    cfg = _write(tmp_path, "p,h,label\n" + rows + "a premise,,1\n", "p,h,label\nx,y,0\n")
    cfg.text_column, cfg.text_pair_column = "p", "h"
    s = load_splits(cfg, seed=0)
    assert s.info["dropped_empty"]["train"] == 1 and s.test.pairs == ["y"]
    assert all(p.replace("hypothesis", "premise") == t for t, p in zip(s.train.texts, s.train.pairs))
    ids = encode(s.test, minilm_tokenizer, 16)[0]
    assert minilm_tokenizer.decode(ids["input_ids"]) == "[CLS] x [SEP] y [SEP]" and ids["token_type_ids"] == [0, 0, 0, 1, 1]
    cfg.text_pair_column = "hyp"
    with pytest.raises(UserError, match="no column 'hyp'.*data.text_pair_column"):
        load_splits(cfg, seed=0)


def test_the_train_sources_bench_counts_the_second_source_and_the_stems(tmp_path, shared_data):
    bench = load_bench("train_sources")
    p = tmp_path / "train.csv"
    p.write_text('tweet,label,categories\nyou stupid bitch,1,Gender\nPoor people are ugly,1,Class\n'
                 '"idiots, all of them!",1,Behavior\nlovely day at the beach,0,\nstupid printer,0,\n')
    s = bench.summary(bench.read(p))
    assert s["labels"] == {0: 2, 1: 3}
    assert s["second_source"] == {"rows": 2, "labels": {1: 2}, "categories": {"Class": 1, "Behavior": 1}}
    assert s["stems"]["stupid"] == {"hate": 1, "not": 1} and s["stems"]["idiot"] == {"hate": 1, "not": 0}
    # the shared copy: label 0 is exactly Davidson et al.'s "neither" count, and the second source is all hate
    shared = bench.summary(bench.read(shared_data / "train.csv"))
    assert shared["labels"][0] == bench.DAVIDSON["neither"]
    assert shared["second_source"]["labels"] == {1: shared["second_source"]["rows"]}


def test_the_train_sources_bench_names_the_line_of_a_bad_label_and_a_missing_column(tmp_path):
    bench = load_bench("train_sources")
    p = tmp_path / "train.csv"
    p.write_text("tweet,label\nfine,0\nnot fine,x\n")
    with pytest.raises(SystemExit, match=r"train.csv:3: column label: 'x' is not 0 or 1"):
        bench.read(p)
    p.write_text("text,label\nfine,0\n")
    with pytest.raises(SystemExit, match=r"no column 'tweet'"):
        bench.read(p)


def test_the_signal_agreement_bench_correlates_each_signal_with_the_test_figures(tmp_path):
    import json

    bench = load_bench("signal_agreement")
    run = tmp_path / "run"
    run.mkdir()
    acc, rec = [0.70, 0.75, 0.80], [0.40, 0.50, 0.60]
    (run / "results.json").write_text(json.dumps({"models": [
        {"name": "odd", "test": {}, "seeds": [{"seed": 42 + i, "test": {"accuracy": a, "recall": {"not_hate": 0.9,
                                                                                                  "hate": r}}}
                                              for i, (a, r) in enumerate(zip(acc, rec))]}]}))
    assert bench.test_figures(run) == {"odd": (0.70, 0.40), "odd.seed43": (0.75, 0.50), "odd.seed44": (0.80, 0.60)}
    rows = [{"model": m, "dev": {"f1_macro": f, "recall": [0.9, h]}, "functional": {"f1_macro": -f, "recall": [0.9, -h]}}
            for m, f, h in [("odd", 0.1, 0.2), ("odd.seed43", 0.2, 0.3), ("odd.seed44", 0.3, 0.4)]]
    r = bench.agreement([(row, bench.test_figures(run)[row["model"]]) for row in rows])
    assert r["dev"]["f1_vs_accuracy"] == pytest.approx(1.0) and r["functional"]["f1_vs_accuracy"] == pytest.approx(-1.0)
    assert r["dev"]["hate_recall_vs_test_hate_recall"] == pytest.approx(1.0)


def test_the_threshold_transfer_bench_picks_on_the_other_sets_and_scores_the_held_out_one():
    import numpy as np

    bench = load_bench("threshold_transfer")
    y = np.array([0, 1])
    # validation separates at [0.60, 0.80), dev at [0.65, 0.90), implicit at [0.20, 0.40)
    sets = {"validation": (np.array([0.6, 0.8]), y), "dev": (np.array([0.65, 0.9]), y),
            "implicit": (np.array([0.2, 0.4]), y)}
    row = bench.transfer(sets)
    third = 1 / 3  # macro-F1 when both rows get one label
    assert row["threshold"] == 0.65 and row["threshold_validation_alone"] == 0.6
    assert row["score_at_0.5"] == pytest.approx(third, abs=1e-4)
    assert row["score_at_threshold"] == pytest.approx((1 + 1 + third) / 3, abs=1e-4)
    assert row["held_out"]["implicit"] == {"threshold": 0.65, "f1_at_0.5": pytest.approx(third, abs=1e-4),
                                           "f1_at_threshold": pytest.approx(third, abs=1e-4)}
    # validation and implicit tie at 0.60-0.79 and at 0.20-0.39: the one nearest 0.5 is 0.60
    assert row["held_out"]["dev"]["threshold"] == 0.6
    assert row["held_out"]["dev"]["f1_at_threshold"] == pytest.approx(third, abs=1e-4)


def test_the_threshold_transfer_bench_refuses_a_directory_that_is_not_a_run(tmp_path):
    from distillora.errors import UserError

    bench = load_bench("threshold_transfer")
    with pytest.raises(UserError, match=r"config.yaml: not found; give the directory of a finished"):
        bench.stored_sets(tmp_path)
