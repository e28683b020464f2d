"""Shared fixtures: tiny randomly initialised models (hidden 32) and small slices of the shared data.
Nothing here touches the network."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, MPNetConfig, \
    MPNetForSequenceClassification  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data" / "hate_speech_twitter").resolve()
TINY = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)


def tiny_bert(layers: int = 4, seed: int = 0, vocab_size: int = 30522) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(vocab_size=vocab_size, num_hidden_layers=layers, num_labels=2, **TINY)).eval()


def tiny_mpnet(layers: int = 4, seed: int = 0) -> MPNetForSequenceClassification:
    torch.manual_seed(seed)
    return MPNetForSequenceClassification(MPNetConfig(vocab_size=120, num_hidden_layers=layers, num_labels=2, **TINY)).eval()


@pytest.fixture(scope="session")
def minilm_tokenizer():
    from distillora.bundles import minilm_dir

    return AutoTokenizer.from_pretrained(str(minilm_dir()))


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, minilm_tokenizer) -> Path:
    """A 4-layer, hidden-32 BERT in Hugging Face format, with MiniLM's uncased WordPiece tokenizer."""
    d = tmp_path_factory.mktemp("tiny-teacher")
    model = tiny_bert(4, vocab_size=minilm_tokenizer.vocab_size)
    model.save_pretrained(d)
    minilm_tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "train.csv").is_file():
        pytest.fail(f"shared data not found at {SHARED_DATA}; tests read it from ../shared beside the checkout")
    return SHARED_DATA


@pytest.fixture()
def small_data(tmp_path, shared_data) -> Path:
    """A directory with train.csv (80 rows, both labels) and test.csv (40 rows) cut from the shared data."""
    train = pd.read_csv(shared_data / "train.csv", keep_default_na=False)
    test = pd.read_csv(shared_data / "test.csv", keep_default_na=False)
    train = pd.concat([train[train.label == 0].head(56), train[train.label == 1].head(24)])
    test = pd.concat([test[test.label == 0].head(20), test[test.label == 1].head(20)])
    d = tmp_path / "data"
    d.mkdir()
    train.to_csv(d / "train.csv", index=False)
    test.to_csv(d / "test.csv", index=False)
    return d
