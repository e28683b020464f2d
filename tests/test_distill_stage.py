"""Cached teacher outputs: one entry per example, in the examples' original order (the batches are
formed from length-sorted examples, so a wrong un-sort would pair a student with another text's targets)."""

import torch

from distillora.data import Encoded
from distillora.stages.distill import teacher_outputs

from conftest import tiny_bert


def test_teacher_outputs_come_back_in_the_examples_order(minilm_tokenizer):
    teacher = tiny_bert(3, vocab_size=minilm_tokenizer.vocab_size)
    texts = ["a much longer sentence than the others, with many words in it", "short", "medium length one",
             "x", "another fairly long sentence for the batch"]
    enc = minilm_tokenizer(texts)
    data = Encoded([{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": 0}
                    for i in range(len(texts))])
    cache = teacher_outputs(teacher, data, minilm_tokenizer, ("teacher_logits", "teacher_hidden", "teacher_layers"),
                            batch_size=2)
    assert len(cache["teacher_logits"]) == len(texts)
    with torch.no_grad():
        for i in range(len(texts)):
            ids = torch.tensor([enc["input_ids"][i]])
            out = teacher(input_ids=ids, output_hidden_states=True)
            assert torch.allclose(cache["teacher_logits"][i], out.logits[0], atol=1e-5), i
            assert cache["teacher_hidden"][i].shape == (len(enc["input_ids"][i]), 32)
            assert torch.allclose(cache["teacher_hidden"][i].float(), out.hidden_states[-1][0], atol=1e-2), i
            layers = torch.stack([h[0, 0] for h in out.hidden_states[1:]])  # (depth, H) first-token states
            assert torch.allclose(cache["teacher_layers"][i].float(), layers, atol=1e-2), i


def test_teacher_outputs_under_bf16_autocast_match_fp32_closely(minilm_tokenizer):
    """`bf16=True` (what the study passes when the students train in bf16) runs the teacher's passes in
    bf16 autocast: the cached logits differ from fp32 (they went through bf16 products) but only by
    bf16's rounding, and the cache keeps its dtypes."""
    torch.manual_seed(0)
    teacher = tiny_bert(2, vocab_size=minilm_tokenizer.vocab_size)
    texts = ["one sentence here", "and another, somewhat longer one", "three"]
    enc = minilm_tokenizer(texts)
    data = Encoded([{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": 0}
                    for i in range(len(texts))])
    full = teacher_outputs(teacher, data, minilm_tokenizer, ("teacher_logits",))
    half = teacher_outputs(teacher, data, minilm_tokenizer, ("teacher_logits",), bf16=True)
    a, b = torch.stack(full["teacher_logits"]), torch.stack(half["teacher_logits"])
    assert a.dtype == b.dtype == torch.float32
    assert not torch.equal(a, b)
    assert torch.allclose(a, b, atol=5e-2, rtol=5e-2), (a, b)
