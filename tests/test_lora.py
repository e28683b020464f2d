import torch

from conftest import stage_fingerprints, tiny_bert, tiny_mpnet
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
    assert any("classifier.modules_to_save" in n for n in names)  # the head trains in full
    assert not any("key" in n or "pooler" in n or "embeddings" in n for n in names)


def test_mpnet_targets_are_q_and_v():
    student = build_student(tiny_mpnet(4), "odd")
    assert target_modules(student) == ["q", "v"]
    names = _trainable(wrap(student, r=4, alpha=8, dropout=0.0))
    assert any(".q.lora_A" in n for n in names) and any(".v.lora_A" in n for n in names)
    assert not any(".k.lora" in n or ".o.lora" in n for n in names)
    # MPNet's head: dense gets a low-rank adapter, out_proj trains in full
    assert any("classifier.dense.lora_A" in n for n in names)
    assert any("classifier.out_proj.modules_to_save" in n for n in names)


def test_saved_adapter_reloads_with_its_head(tmp_path):
    teacher = tiny_bert(4)
    model = wrap(build_student(teacher, "even"), r=4, alpha=8, dropout=0.0)
    with torch.no_grad():  # stand-in for training: move adapters and head away from their init
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.5 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f:
        assert {"base_model.model.classifier.weight", "base_model.model.classifier.bias"} <= set(f.keys())
    (tmp_path / "distillora.json").write_text('{"teacher_layers": [2, 4]}')
    ids = torch.randint(1000, 2000, (4, 10))
    expected = model(input_ids=ids).logits
    reloaded = load_adapter(teacher, tmp_path).eval()
    assert torch.allclose(reloaded(input_ids=ids).logits, expected, atol=1e-5)
    # the head really was saved: the student with LoRA alone (teacher's head) predicts something else
    no_head = wrap(build_student(teacher, "even"), r=4, alpha=8, dropout=0.0)
    no_head.load_state_dict({k: v for k, v in model.state_dict().items() if "classifier" not in k}, strict=False)
    assert not torch.allclose(no_head.eval()(input_ids=ids).logits, expected, atol=1e-3)
    merged = reloaded.merge_and_unload()
    assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-4)


def test_the_lora_stage_depends_on_the_distillation_loss_not_on_how_the_students_train():
    def lora_fp(overrides):
        return stage_fingerprints(["lora.objective=distill", *overrides])["lora"]

    base = lora_fp([])
    assert lora_fp(["distill.train.epochs=7", "distill.train.sparse_word_embeddings=true"]) == base
    assert lora_fp(["distill.temperature=4"]) != base
    assert lora_fp(["distill.w_kd=0.9"]) != base
