import torch

from conftest import tiny_bert, tiny_mpnet
from distillora import build_student
from distillora.lora import load_adapter, target_modules, wrap


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_only_adapters_and_head_train_bert():
    model = wrap(build_student(tiny_bert(4), "even"), r=4, alpha=8, dropout=0.0)
    names = _trainable(model)
    assert names
    for n in names:
        assert "lora_" in n or "classifier" in n, n
    assert any("query.lora_A" in n for n in names) and any("value.lora_B" in n for n in names)
    assert not any("key" in n or "pooler" in n or "embeddings" in n for n in names)


def test_mpnet_targets_are_q_and_v():
    student = build_student(tiny_mpnet(4), "odd")
    assert target_modules(student) == ["q", "v"]
    names = _trainable(wrap(student, r=4, alpha=8, dropout=0.0))
    assert any(".q.lora_A" in n for n in names) and any(".v.lora_A" in n for n in names)
    assert not any(".k.lora" in n or ".o.lora" in n for n in names)


def test_saved_adapter_reloads_with_its_head(tmp_path):
    teacher = tiny_bert(4)
    model = wrap(build_student(teacher, "even"), r=4, alpha=8, dropout=0.0)
    with torch.no_grad():  # stand-in for training: move adapters and head away from their init
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.5 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(tmp_path)
    (tmp_path / "distillora.json").write_text('{"teacher_layers": [2, 4]}')
    ids = torch.randint(1000, 2000, (4, 10))
    expected = model(input_ids=ids).logits
    reloaded = load_adapter(teacher, tmp_path).eval()
    assert torch.allclose(reloaded(input_ids=ids).logits, expected, atol=1e-5)
    # and the head really was saved: a fresh student (teacher's head) predicts something else
    fresh = build_student(teacher, "even").eval()
    assert not torch.allclose(fresh(input_ids=ids).logits, expected, atol=1e-3)
    merged = reloaded.merge_and_unload()
    assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-4)
