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


def fit_tiny(tmp_path, name: str, train, tokenizer, tc, validation=None, **kw):
    """`training.fit` of a fresh 2-layer `tiny_bert` on `train` (validated on `validation`, default
    `train`), working and logging under `tmp_path / name`; `kw`: fit's other keywords. Returns (model, stats)."""
    from distillora import training

    model = tiny_bert(2, vocab_size=tokenizer.vocab_size)
    return training.fit(model, train, train if validation is None else validation, tokenizer, tc,
                        work_dir=tmp_path / name, log_path=tmp_path / f"{name}.jsonl", stage=name, seed=0,
                        selection_metric="accuracy", quiet=True, fingerprint=name, **kw)


def teacher_env(tmp_path, name: str, tokenizer, data, overrides: list[str], dev_sets: dict | None = None):
    """A `StageEnv` for the teacher stage on `data` (1 fp32 epoch, batch 8, 32 tokens), working under
    `tmp_path / name`; `dev_sets` (name -> file) are loaded and encoded as the study encodes them."""
    from distillora import study
    from distillora.config import load_config
    from distillora.data import encode, load_splits
    from distillora.stages import StageEnv

    cfg = load_config(None, [f"data.source={data}", "data.max_length=32", "data.validation_fraction=0.25",
                             "teacher.train.epochs=1", "teacher.train.batch_size=8", "teacher.train.precision=fp32",
                             *([f"data.dev_sets={{{', '.join(f'{n}: {p}' for n, p in dev_sets.items())}}}"]
                               if dev_sets else []), *overrides])
    splits = load_splits(cfg.data, cfg.seed)
    cfg = study._with_label_names(cfg, splits.info["label_names"])
    enc = {s: encode(getattr(splits, s), tokenizer, 32) for s in ("train", "validation")}
    dev = {n: encode(split, tokenizer, 32) for n, split in study._load_sets(cfg, "dev_sets").items()}
    return StageEnv(cfg, tokenizer, enc["train"], enc["validation"], tmp_path / name, quiet=True, dev_sets=dev)


def interrupt_in_member_2(monkeypatch, train) -> None:
    """Call `train()` with `StageEnv.fit` raising KeyboardInterrupt as member 2 of a soup or of restarts
    starts (as a kill would: member 1's checkpoints stay in its work directory), then restore `fit`."""
    from distillora.stages.base import StageEnv

    real_fit = StageEnv.fit

    def dies_in_member_2(self, model, tc, key, *a, **k):
        if key.endswith(".member2"):
            raise KeyboardInterrupt
        return real_fit(self, model, tc, key, *a, **k)

    monkeypatch.setattr(StageEnv, "fit", dies_in_member_2)
    with pytest.raises(KeyboardInterrupt):
        train()
    monkeypatch.setattr(StageEnv, "fit", real_fit)


def load_bench(name: str):
    """The module bench/<name>.py (the benches are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stage_fingerprints(overrides: list[str], depth: int = 12) -> dict[str, str]:
    """{stage name: fingerprint} of the stages that the default config with `overrides` plans for a
    teacher of `depth` layers: what decides whether a finished run's stage is reused."""
    from distillora import stages
    from distillora.config import fingerprint, load_config, to_dict

    cfg = load_config(None, overrides)
    return {s.name: fingerprint(*s.fingerprint_inputs) for s in stages.plan(cfg, to_dict(cfg), depth)}


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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_teacher_dir, shared_data) -> Path:
    """A finished tiny run (4-layer hidden-32 teacher, 80 train rows, 40 test rows), made once."""
    from distillora.config import load_config
    from distillora.study import run_study

    root = tmp_path_factory.mktemp("tiny-run")
    train = pd.read_csv(shared_data / "train.csv", keep_default_na=False)
    test = pd.read_csv(shared_data / "test.csv", keep_default_na=False)
    pd.concat([train[train.label == 0].head(56), train[train.label == 1].head(24)]).to_csv(root / "train.csv", index=False)
    pd.concat([test[test.label == 0].head(20), test[test.label == 1].head(20)]).to_csv(root / "test.csv", index=False)
    cfg = load_config(None, [
        "name=tiny", f"data.train_file={root / 'train.csv'}", f"data.test_file={root / 'test.csv'}",
        "data.validation_fraction=0.25", "data.max_length=32", f"teacher.source={tiny_teacher_dir}",
        "teacher.train.epochs=1", "distill.train.epochs=1", "lora.train.epochs=1", "baseline.train.epochs=1",
        "lora.r=4", "lora.alpha=8", "data.normalize=hate_speech_twitter",
    ])
    return run_study(cfg, root / "runs" / "tiny", quiet=True)
