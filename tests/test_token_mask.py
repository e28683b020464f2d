"""`train.token_mask_prob`: word dropout in training, never in validation or inference."""

import pytest
import torch
from transformers import TrainerCallback

from distillora import training
from distillora.config import TrainConfig, load_config
from distillora.data import Encoded
from distillora.errors import UserError

from conftest import tiny_bert


def test_masks_ordinary_tokens_only(minilm_tokenizer):
    tok = minilm_tokenizer
    row = [tok.cls_token_id, 2000, 2001, tok.sep_token_id, 2002, 2003, tok.sep_token_id, tok.pad_token_id]
    ids = torch.tensor([row] * 64)  # a sentence pair: [CLS] a b [SEP] c d [SEP] [PAD]
    special = torch.tensor(tok.all_special_ids)
    torch.manual_seed(0)
    out = training.mask_tokens(ids, tok.mask_token_id, special, 0.5)
    for col in (0, 3, 6, 7):  # [CLS], both [SEP] and the padding are never masked
        assert torch.equal(out[:, col], ids[:, col])
    changed = out != ids
    assert torch.all(out[changed] == tok.mask_token_id)
    share = changed[:, [1, 2, 4, 5]].float().mean().item()  # 256 ordinary tokens at p = 0.5
    assert 0.4 < share < 0.6
    assert torch.equal(training.mask_tokens(ids, tok.mask_token_id, special, 0.0), ids)
    assert torch.equal(ids[0], torch.tensor(row))  # the input is left as it was


class _Seen:
    """An objective that records the input ids it is given, then defers to the model's own loss."""

    def __init__(self):
        self.train, self.eval = [], []

    def __call__(self, model, inputs):
        (self.train if model.training else self.eval).append(inputs["input_ids"].clone())
        return None


def _data(n: int) -> Encoded:
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        ids = [101] + torch.randint(2000, 2100, (8,), generator=g).tolist() + [102]
        items.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": i % 2})
    return Encoded(items)


def _fit(tmp_path, tokenizer, p, name, objective=None, epochs=1, callbacks=()):
    tc = TrainConfig(epochs=epochs, learning_rate=1e-2, batch_size=8, logging_steps=100, precision="fp32",
                     token_mask_prob=p)
    torch.manual_seed(0)
    model = tiny_bert(2, vocab_size=tokenizer.vocab_size)
    enc = _data(32)
    return training.fit(model, enc, enc, tokenizer, tc, work_dir=tmp_path / name, log_path=tmp_path / f"{name}.jsonl",
                        stage=name, seed=0, selection_metric="accuracy", quiet=True, fingerprint=name,
                        objective=objective, callbacks=callbacks)


def test_training_batches_are_masked_and_validation_batches_are_not(tmp_path, minilm_tokenizer):
    mask = minilm_tokenizer.mask_token_id
    seen = _Seen()
    _fit(tmp_path, minilm_tokenizer, 0.3, "masked", seen)
    assert seen.train and seen.eval
    train_masked = sum(int((b == mask).sum()) for b in seen.train)
    train_tokens = sum(b.numel() - 2 * b.shape[0] for b in seen.train)  # less [CLS] and [SEP]
    assert 0.2 < train_masked / train_tokens < 0.4
    assert all(int((b == mask).sum()) == 0 for b in seen.eval)

    off = _Seen()
    _fit(tmp_path, minilm_tokenizer, 0.0, "plain", off)
    assert all(int((b == mask).sum()) == 0 for b in off.train)


def test_masking_changes_what_is_learned_and_is_reproducible(tmp_path, minilm_tokenizer):
    heads = {name: _fit(tmp_path, minilm_tokenizer, p, name)[0].classifier.weight.detach().clone()
             for name, p in (("a", 0.3), ("b", 0.3), ("off", 0.0))}
    assert torch.equal(heads["a"], heads["b"])  # the masks come from the Trainer's seeded generator
    assert not torch.allclose(heads["a"], heads["off"])


class _StopAfterEpoch1(TrainerCallback):
    def on_epoch_end(self, args, state, control, **kw):
        control.should_training_stop = True


def test_a_resumed_run_draws_the_same_masks(tmp_path, minilm_tokenizer):
    """Stopped after epoch 1 (its checkpoint saved), then the same call again: it resumes from that
    checkpoint and ends with the weights of an uninterrupted run."""
    whole = _fit(tmp_path, minilm_tokenizer, 0.3, "whole", epochs=2)[0]
    _fit(tmp_path, minilm_tokenizer, 0.3, "cut", epochs=2, callbacks=(_StopAfterEpoch1(),))
    resumed, stats = _fit(tmp_path, minilm_tokenizer, 0.3, "cut", epochs=2)
    assert stats["resumed_from"] is not None
    for (name, w), (_, r) in zip(whole.named_parameters(), resumed.named_parameters()):
        assert torch.equal(w, r), name


def test_settings_are_validated_and_a_tokenizer_without_a_mask_token_is_refused(tmp_path, minilm_tokenizer):
    for bad in ("1.0", "-0.1"):
        with pytest.raises(UserError, match=r"teacher.train.token_mask_prob = .*use a share in \[0, 1\)"):
            load_config(None, [f"teacher.train.token_mask_prob={bad}"])

    class NoMask:
        mask_token_id = None

    tc = TrainConfig(epochs=1, token_mask_prob=0.1, precision="fp32")
    with pytest.raises(UserError, match="no mask token"):
        training.fit(tiny_bert(2), _data(8), _data(8), NoMask(), tc, work_dir=tmp_path / "w",
                     log_path=tmp_path / "w.jsonl", stage="teacher", seed=0, selection_metric="accuracy",
                     quiet=True, fingerprint="x")
    assert not (tmp_path / "w").exists()  # refused before anything is written


def test_the_setting_at_zero_leaves_existing_fingerprints_alone():
    from distillora.config import stable_section, to_dict

    cfg = load_config(None, [])
    assert "token_mask_prob" not in stable_section(to_dict(cfg), "teacher")["train"]
    masked = load_config(None, ["teacher.train.token_mask_prob=0.15"])
    assert stable_section(to_dict(masked), "teacher")["train"]["token_mask_prob"] == 0.15


def test_a_run_whose_tokenizer_has_no_mask_token_is_refused_before_it_writes(tmp_path, tiny_teacher_dir, small_data):
    """Only the students mask here, so `fit` would refuse too late (the teacher already trained and saved):
    the study refuses once the tokenizer is loaded."""
    import json
    import shutil

    from distillora.study import run_study

    teacher = shutil.copytree(tiny_teacher_dir, tmp_path / "teacher")
    tc = json.loads((teacher / "tokenizer_config.json").read_text())
    tc["mask_token"] = None  # BertTokenizer would fall back to its default "[MASK]"
    (teacher / "tokenizer_config.json").write_text(json.dumps(tc))
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(teacher)).mask_token_id is None
    cfg = load_config(None, [f"data.source={small_data}", f"teacher.source={teacher}", "data.max_length=32",
                             "distill.train.token_mask_prob=0.1", "lora.train.token_mask_prob=0.2"])
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"distill.train.token_mask_prob = 0.1; lora.train.token_mask_prob = 0.2: "
                                        r"the teacher's tokenizer has no mask token"):
        run_study(cfg, out, quiet=True)
    assert not out.exists()
    training.check_token_masking(load_config(None, []), AutoTokenizer.from_pretrained(str(teacher)))  # off: fine
