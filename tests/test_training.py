"""Training options on tiny models: class weights, the precision choice and the layer-to-layer term
reaching the Trainer."""

import numpy as np
import pytest
import torch

from distillora import training
from distillora.config import TrainConfig, load_config
from distillora.data import Encoded
from distillora.errors import UserError

from conftest import tiny_bert


def _encoded(n: int, label_of) -> Encoded:
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        ids = [101] + torch.randint(1000, 1100, (6,), generator=g).tolist() + [102]
        items.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": label_of(i)})
    return Encoded(items)


def test_balanced_class_weights_follow_sklearns_formula():
    w = training.class_weight_vector("balanced", np.array([0, 0, 0, 1]), 2)
    assert w.tolist() == pytest.approx([4 / (2 * 3), 4 / (2 * 1)])
    assert training.class_weight_vector(None, np.array([0, 1]), 2) is None
    assert training.class_weight_vector([1, 5], np.array([0, 1]), 2).tolist() == [1.0, 5.0]


def test_class_weights_are_validated():
    with pytest.raises(UserError, match="class_weights"):
        load_config(None, ["class_weights=[1, 2, 3]"])
    with pytest.raises(UserError, match="class_weights"):
        load_config(None, ["class_weights=square"])
    assert load_config(None, ["class_weights=null"]).class_weights is None


def test_class_weights_move_a_tiny_models_decisions(tmp_path, minilm_tokenizer):
    """Labels are noise (no signal in the tokens), 3:1 for class 0. Unweighted, the model learns the
    prior and predicts class 0; with class 1 weighted 9x, it predicts class 1 for most examples."""
    data = _encoded(64, lambda i: int(i % 4 == 0))
    preds = {}
    for name, weights in (("none", None), ("heavy", torch.tensor([1.0, 9.0]))):
        model = tiny_bert(2, vocab_size=minilm_tokenizer.vocab_size)
        tc = TrainConfig(epochs=1, learning_rate=3e-3, batch_size=8, logging_steps=100, precision="fp32")
        model, _ = training.fit(model, data, data, minilm_tokenizer, tc, work_dir=tmp_path / name,
                                log_path=tmp_path / f"{name}.jsonl", stage=name, seed=0, selection_metric="accuracy",
                                quiet=True, fingerprint=name, class_weights=weights)
        with torch.no_grad():
            batch = training.Collator(minilm_tokenizer)([{k: v for k, v in x.items() if k != "labels"} for x in data])
            preds[name] = model(**batch).logits.argmax(-1).float().mean().item()
    assert preds["none"] < 0.5 < preds["heavy"], preds


def test_precision_choice(monkeypatch):
    assert training.use_bf16("fp32") is False
    assert training.use_bf16("bf16") is True
    monkeypatch.setattr(training, "bf16_pays", lambda device="cpu": False)
    assert training.use_bf16("auto") is False
    monkeypatch.setattr(training, "bf16_pays", lambda device="cpu": True)
    assert training.use_bf16("auto") is True
    with pytest.raises(UserError, match="precision"):
        load_config(None, ["teacher.train.precision=fp8"])


def test_bf16_measurement_is_cached_and_boolean():
    training._BF16_CACHE.pop("cpu", None)
    first = training.bf16_pays("cpu", n=128, reps=1)
    assert isinstance(first, bool) and training._BF16_CACHE["cpu"] is first


def test_frozen_word_embeddings_stay_fixed_while_the_rest_trains(tmp_path, minilm_tokenizer):
    model = tiny_bert(2, vocab_size=minilm_tokenizer.vocab_size)
    emb = model.get_input_embeddings().weight.detach().clone()
    layer = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    data = _encoded(16, lambda i: i % 2)
    tc = TrainConfig(epochs=1, learning_rate=1e-2, batch_size=8, logging_steps=100, precision="fp32",
                     freeze_word_embeddings=True)
    total = sum(p.numel() for p in model.parameters())
    model, stats = training.fit(model, data, data, minilm_tokenizer, tc, work_dir=tmp_path / "w",
                                log_path=tmp_path / "l", stage="s", seed=0, selection_metric="accuracy", quiet=True,
                                fingerprint="f")
    assert stats["params_trainable"] == total - emb.numel()  # what the report's "trainable" column shows
    assert torch.equal(model.get_input_embeddings().weight, emb)
    assert not torch.equal(model.bert.encoder.layer[0].attention.self.query.weight, layer)


def test_freeze_lower_layers_keeps_embeddings_and_lower_layers_and_trains_the_rest(tmp_path, minilm_tokenizer):
    """`freeze_lower_layers=2` on a 3-layer model: the embedding block and layers 0-1 end bit-identical,
    layer 2 and the head change, and every parameter is trainable again afterwards."""
    model = tiny_bert(3, vocab_size=minilm_tokenizer.vocab_size)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = _encoded(16, lambda i: i % 2)
    tc = TrainConfig(epochs=1, learning_rate=1e-2, batch_size=8, logging_steps=100, precision="fp32",
                     freeze_lower_layers=2)
    model, _ = training.fit(model, data, data, minilm_tokenizer, tc, work_dir=tmp_path / "w", log_path=tmp_path / "l",
                            stage="s", seed=0, selection_metric="accuracy", quiet=True, fingerprint="f")
    after = dict(model.named_parameters())
    fixed = [n for n in before if n.startswith(("bert.embeddings.", "bert.encoder.layer.0.", "bert.encoder.layer.1."))]
    moved = [n for n in before if n.startswith(("bert.encoder.layer.2.", "classifier."))]
    assert fixed and moved
    assert all(torch.equal(after[n], before[n]) for n in fixed)
    assert all(not torch.equal(after[n], before[n]) for n in moved if n.endswith("weight"))
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="3 layers"):
        training.freeze_lower_layers(model, 4)
    with pytest.raises(UserError, match="LoRA keeps"):
        load_config(None, ["lora.train.freeze_lower_layers=2"])


def test_sparse_word_embeddings_update_only_the_rows_a_batch_uses(tmp_path, minilm_tokenizer):
    """`sparse_word_embeddings`: rows of tokens that occur in training change, every other row stays
    bit-identical (dense AdamW would decay them all), the rest of the model trains, and the saved
    model takes dense gradients again."""
    model = tiny_bert(2, vocab_size=minilm_tokenizer.vocab_size)
    emb = model.get_input_embeddings().weight.detach().clone()
    layer = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    data = _encoded(16, lambda i: i % 2)
    used = sorted({t for x in data.items for t in x["input_ids"]})
    tc = TrainConfig(epochs=2, learning_rate=1e-2, batch_size=8, logging_steps=100, precision="fp32",
                     sparse_word_embeddings=True)
    model, stats = training.fit(model, data, data, minilm_tokenizer, tc, work_dir=tmp_path / "w",
                                log_path=tmp_path / "l", stage="s", seed=0, selection_metric="accuracy",
                                quiet=True, fingerprint="f")
    after = model.get_input_embeddings().weight.detach()
    unused = torch.ones(len(emb), dtype=torch.bool)
    unused[used] = False
    assert torch.equal(after[unused], emb[unused])
    assert not torch.equal(after[used], emb[used])
    assert not torch.equal(model.bert.encoder.layer[0].attention.self.query.weight, layer)
    assert model.get_input_embeddings().sparse is False and stats["steps"] == 4


def test_sparse_word_embeddings_resume_from_a_checkpoint(tmp_path, minilm_tokenizer):
    """The split optimizer's state is saved in each checkpoint and loaded on resume."""
    data = _encoded(16, lambda i: i % 2)
    kw = dict(work_dir=tmp_path / "w", log_path=tmp_path / "l", stage="s", seed=0, selection_metric="accuracy",
              quiet=True, fingerprint="f")
    tc = TrainConfig(epochs=1, learning_rate=1e-2, batch_size=8, logging_steps=100, precision="fp32",
                     sparse_word_embeddings=True, weight_decay=0.0)
    training.fit(tiny_bert(2, vocab_size=minilm_tokenizer.vocab_size), data, data, minilm_tokenizer, tc, **kw)
    saved = torch.load(tmp_path / "w" / "checkpoint-2" / "optimizer.pt", weights_only=True)
    assert set(saved) == {"dense", "sparse"} and saved["sparse"]["state"]
    tc.epochs = 2
    _, stats = training.fit(tiny_bert(2, vocab_size=minilm_tokenizer.vocab_size), data, data, minilm_tokenizer, tc, **kw)
    assert stats["resumed_from"] == "checkpoint-2" and stats["steps"] == 4


def test_sparse_optimizer_clips_dense_and_sparse_gradients_together():
    """The global norm over a dense and a sparse gradient is clipped to the limit, as clip_grad_norm_
    does for dense ones (which has no sparse kernel)."""
    emb = torch.nn.Embedding(10, 3, sparse=True)
    lin = torch.nn.Linear(3, 1)
    lin(emb(torch.tensor([1, 1, 4]))).sum().mul(100).backward()
    opt = training.SparseEmbeddingOptimizer(torch.optim.AdamW(lin.parameters()), torch.optim.SparseAdam([emb.weight]))
    want = torch.linalg.vector_norm(torch.cat([emb.weight.grad.to_dense().flatten(),
                                               *[p.grad.flatten() for p in lin.parameters()]]))
    assert torch.isclose(opt.clip(1.0), want) and want > 1
    after = torch.linalg.vector_norm(torch.cat([emb.weight.grad.to_dense().flatten(),
                                                *[p.grad.flatten() for p in lin.parameters()]]))
    assert torch.isclose(after, torch.tensor(1.0), atol=1e-4)
    state = opt.state_dict()
    opt.step()
    opt.load_state_dict(state)
    assert set(state) == {"dense", "sparse"}


def test_distill_trainer_matches_each_student_layer_to_the_teacher_layer_it_was_copied_from(tmp_path, minilm_tokenizer):
    """The Trainer's loss with w_layer > 0 equals the hand-assembled loss: student layer i's first-token
    state against cached teacher layer layer_map[i]."""
    from transformers import TrainingArguments

    from distillora.config import DistillConfig
    from distillora.losses import LossInputs, patient_loss, total_loss
    from distillora.stages.distill import teacher_outputs
    from distillora.students import build_student

    teacher = tiny_bert(4, vocab_size=minilm_tokenizer.vocab_size)
    student = build_student(teacher, [2, 4]).eval()
    data = _encoded(4, lambda i: i % 2)
    d = DistillConfig(w_ce=0.5, w_kd=0.5, w_cos=0.0, w_layer=2.0, temperature=2.0)
    objective = training.Distillation(d, layer_map=[2, 4])
    assert objective.teacher_needs == ("teacher_logits", "teacher_layers")
    cache = teacher_outputs(teacher, data, minilm_tokenizer, objective.teacher_needs)
    batch = training.Collator(minilm_tokenizer)(list(data.with_fields(**cache)))
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = training.StudyTrainer(model=student, args=args, objective=objective)
    with torch.no_grad():
        got = trainer.compute_loss(student, dict(batch))
        out = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        s_layers = torch.stack([out.hidden_states[1][:, 0], out.hidden_states[2][:, 0]], 1)
        t_layers = batch["teacher_layers"][:, [1, 3]]  # teacher layers 2 and 4, 1-based
        want, _ = total_loss(LossInputs(out.logits, batch["labels"], teacher={"teacher_logits": batch["teacher_logits"]},
                                        temperature=2.0), {"ce": 0.5, "kd": 0.5})
        want = want + 2.0 * patient_loss(s_layers, t_layers)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert patient_loss(s_layers, t_layers).item() > 0  # the term is part of what the Trainer returned


def test_a_model_trained_in_bf16_runs_in_fp32_afterwards(tmp_path, minilm_tokenizer):
    """accelerate wraps forward in autocast while training; the returned model must not keep it, or a
    LoRA adapter (bf16) and its merged copy (fp32) disagree, and cached teacher outputs are bf16."""
    model = tiny_bert(2, vocab_size=minilm_tokenizer.vocab_size)
    data = _encoded(16, lambda i: i % 2)
    tc = TrainConfig(epochs=1, learning_rate=1e-3, batch_size=8, logging_steps=100, precision="bf16")
    model, stats = training.fit(model, data, data, minilm_tokenizer, tc, work_dir=tmp_path / "w",
                                log_path=tmp_path / "l", stage="s", seed=0, selection_metric="accuracy", quiet=True,
                                fingerprint="f")
    assert stats["precision"] == "bf16"
    seen = []
    model.bert.encoder.layer[0].register_forward_hook(lambda m, i, o: seen.append(torch.is_autocast_enabled("cpu")))
    with torch.no_grad():
        model(input_ids=torch.tensor([data[0]["input_ids"]]))
    assert seen == [False]


def test_sparse_word_embeddings_at_its_default_leaves_fingerprints_as_they_were():
    """Runs made before `sparse_word_embeddings` existed keep their finished stages."""
    from distillora.config import load_config, stable_section, to_dict

    resolved = to_dict(load_config(None))
    for section in ("teacher", "distill", "lora", "baseline"):
        before = {k: v for k, v in resolved[section].items()}
        before["train"] = {k: v for k, v in before["train"].items() if k != "sparse_word_embeddings"}
        assert stable_section(resolved, section) == stable_section({section: before}, section)
    on = to_dict(load_config(None, ["distill.train.sparse_word_embeddings=true"]))
    assert stable_section(on, "distill")["train"]["sparse_word_embeddings"] is True
    with pytest.raises(UserError, match="sparse_word_embeddings"):
        load_config(None, ["lora.train.sparse_word_embeddings=true", "lora.train.freeze_word_embeddings=true"])


def test_bit_dropout_drops_at_the_rate_asked_and_keeps_the_expectation():
    torch.manual_seed(0)
    drop = training.BitDropout(0.1)
    x = torch.ones(200_000)
    y = drop(x)
    kept = (y != 0).float().mean().item()
    assert kept == pytest.approx(1 - 6554 / 65536, abs=0.003)  # p quantised to 1/65536
    assert torch.all((y == 0) | torch.isclose(y, torch.tensor(65536 / (65536 - 6554))))
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)  # inverted scaling: expectation unchanged
    # a fresh mask each call, the same masks under the same seed, bf16 kept in bf16, shape of any rank
    assert not torch.equal(drop(x), drop(x))
    torch.manual_seed(1)
    a = drop(torch.ones(3, 5, 7))
    torch.manual_seed(1)
    assert torch.equal(a, drop(torch.ones(3, 5, 7))) and a.shape == (3, 5, 7)
    kept_bf16 = drop(torch.ones(100_000, dtype=torch.bfloat16))
    assert kept_bf16.dtype == torch.bfloat16
    # each kept value scaled with one rounding: 1.1111 in bf16 is 1.1094 (the scale's own bf16 value would be too)
    assert torch.all((kept_bf16 == 0) | (kept_bf16 == torch.tensor(65536 / (65536 - 6554)).bfloat16()))
    # gradient: through the kept elements, scaled; none through the dropped ones
    x = torch.ones(1000, requires_grad=True)
    out = drop(x)
    out.sum().backward()
    assert torch.equal(x.grad, out.detach())
    # identity in eval mode and at p = 0; zeros at p = 1
    drop.eval()
    assert torch.equal(drop(x), x)
    assert torch.equal(training.BitDropout(0.0).train()(x), x)
    assert torch.equal(training.BitDropout(1.0).train()(x.detach()), torch.zeros(1000))


@pytest.mark.skipif(torch.cuda.is_available(), reason="fit swaps dropout on CPU only")
def test_fit_trains_with_bit_dropout_on_cpu_and_returns_torchs_own_modules(tmp_path, minilm_tokenizer):
    """Every nn.Dropout (embeddings, attention, hidden, head) is swapped while training and put back after."""
    model = tiny_bert(2, vocab_size=minilm_tokenizer.vocab_size)
    before = [type(m) for m in model.modules()]
    seen = []
    model.bert.encoder.layer[0].attention.output.register_forward_pre_hook(
        lambda m, i: seen.append(type(m.dropout).__name__) if m.training else None)
    data = _encoded(16, lambda i: i % 2)
    tc = TrainConfig(epochs=1, learning_rate=1e-3, batch_size=8, logging_steps=100, precision="fp32")
    model, _ = training.fit(model, data, data, minilm_tokenizer, tc, work_dir=tmp_path / "w",
                            log_path=tmp_path / "l", stage="s", seed=0, selection_metric="accuracy", quiet=True,
                            fingerprint="f")
    assert seen and set(seen) == {"BitDropout"}
    assert [type(m) for m in model.modules()] == before
    n = sum(type(m) is torch.nn.Dropout for m in model.modules())
    with training.bit_dropout(model) as swapped:
        assert swapped == n > 0
        assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    assert sum(type(m) is torch.nn.Dropout for m in model.modules()) == n
    # put back on an error too, in the train/eval mode the model was set to meanwhile
    model.train()
    with pytest.raises(RuntimeError, match="killed"):
        with training.bit_dropout(model):
            model.eval()
            raise RuntimeError("killed")
    dropouts = [m for m in model.modules() if type(m) is torch.nn.Dropout]
    assert len(dropouts) == n and not any(m.training for m in dropouts)


def test_logged_evaluation_is_the_reloaded_best_checkpoints_or_none():
    from types import SimpleNamespace

    log = [{"step": s, "eval_accuracy": a, "eval_balanced_accuracy": a, "eval_f1_macro": a} for s, a in
           ((10, 0.7), (20, 0.9), (30, 0.8))]
    state = SimpleNamespace(best_global_step=20, best_model_checkpoint="/w/checkpoint-20", log_history=log)
    assert training._logged_evaluation(state)["eval_accuracy"] == 0.9  # the best, not the last
    # no best recorded, or one the Trainer did not reload (its folder was gone after a resume): evaluate again
    assert training._logged_evaluation(SimpleNamespace(**{**vars(state), "best_global_step": None})) is None
    assert training._logged_evaluation(SimpleNamespace(**{**vars(state), "best_model_checkpoint": None})) is None
    assert training._logged_evaluation(SimpleNamespace(**{**vars(state), "best_model_checkpoint": "/w/checkpoint-30"})) is None
    # a log entry without a metric fit reports
    old = [{"step": 20, "eval_accuracy": 0.9, "eval_f1_macro": 0.9}]
    assert training._logged_evaluation(SimpleNamespace(**{**vars(state), "log_history": old})) is None


def test_fit_reports_the_validation_figures_of_the_model_it_returns(tmp_path, minilm_tokenizer, monkeypatch):
    """fit reads the best epoch's validation metrics from the Trainer's log instead of evaluating the
    reloaded best model again: they must be that model's figures."""
    from distillora.evaluate import predict_proba, test_metrics

    calls = []
    evaluate = training.StudyTrainer.evaluate
    monkeypatch.setattr(training.StudyTrainer, "evaluate", lambda self, *a, **k: calls.append(1) or evaluate(self, *a, **k))
    model = tiny_bert(2, vocab_size=minilm_tokenizer.vocab_size)
    train, val = _encoded(32, lambda i: i % 2), _encoded(24, lambda i: (i // 3) % 2)
    tc = TrainConfig(epochs=3, learning_rate=5e-3, batch_size=8, logging_steps=100, precision="fp32")
    model, stats = training.fit(model, train, val, minilm_tokenizer, tc, work_dir=tmp_path / "w",
                                log_path=tmp_path / "l", stage="s", seed=0, selection_metric="f1_macro", quiet=True,
                                fingerprint="f")
    assert len(calls) == 3  # once per epoch, none after the best model is reloaded
    probs, _ = predict_proba(model.eval(), val, minilm_tokenizer)
    got = test_metrics(probs, np.array([x["labels"] for x in val]))
    assert stats["validation"]["accuracy"] == pytest.approx(got["accuracy"])
    assert stats["validation"]["f1_macro"] == pytest.approx(got["f1_macro"])
    assert stats["validation"]["loss"] == pytest.approx(got["loss"], abs=1e-4)


def test_fit_calls_extra_callbacks_on_the_model_it_returns(tmp_path, minilm_tokenizer):
    """`fit(callbacks=...)` (the benches' measurements, e.g. tail weight averages): each callback sees
    every optimizer step, and the model it is handed is the one `fit` returns (same parameter names)."""
    from transformers import TrainerCallback

    class Record(TrainerCallback):
        def __init__(self):
            self.steps, self.names = [], set()

        def on_step_end(self, args, state, control, model=None, **kw):
            self.steps.append(state.global_step)
            self.names = {n for n, p in model.named_parameters() if p.requires_grad}

    record = Record()
    data = _encoded(16, lambda i: i % 2)
    tc = TrainConfig(epochs=2, learning_rate=1e-3, batch_size=8, logging_steps=100, precision="fp32")
    model, stats = training.fit(tiny_bert(2, vocab_size=minilm_tokenizer.vocab_size), data, data, minilm_tokenizer,
                                tc, work_dir=tmp_path / "w", log_path=tmp_path / "l", stage="s", seed=0,
                                selection_metric="accuracy", quiet=True, fingerprint="f", callbacks=(record,))
    assert record.steps == list(range(1, stats["steps"] + 1)) and stats["steps"] == 4
    assert record.names == {n for n, _ in model.named_parameters()}


def test_layer_lr_decay_gives_each_depth_its_rate(tmp_path, minilm_tokenizer):
    """`layer_lr_decay=0.5` on a 3-layer model at lr 1e-2: the Trainer's optimizer holds the classifier
    and pooler at 1e-2, layer i (1-based) at 1e-2 x 0.5^(4-i), the embeddings at 1e-2 x 0.5^4, with
    the Trainer's weight-decay split kept (no decay on biases and LayerNorms)."""
    from transformers import TrainerCallback

    model = tiny_bert(3, vocab_size=minilm_tokenizer.vocab_size)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = {}

    class Rates(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kw):
            for g in optimizer.param_groups:
                for p in g["params"]:
                    seen[names[id(p)]] = (g["initial_lr"], g["weight_decay"])

    tc = TrainConfig(epochs=1, learning_rate=1e-2, batch_size=8, logging_steps=100, precision="fp32",
                     layer_lr_decay=0.5)
    training.fit(model, _encoded(16, lambda i: i % 2), _encoded(8, lambda i: i % 2), minilm_tokenizer, tc,
                 work_dir=tmp_path / "w", log_path=tmp_path / "l", stage="s", seed=0, selection_metric="accuracy",
                 quiet=True, fingerprint="f", callbacks=(Rates(),))
    expected = {"bert.embeddings.word_embeddings.weight": 1e-2 / 16,
                "bert.encoder.layer.0.attention.self.query.weight": 1e-2 / 8,
                "bert.encoder.layer.1.output.dense.weight": 1e-2 / 4,
                "bert.encoder.layer.2.intermediate.dense.weight": 1e-2 / 2,
                "bert.pooler.dense.weight": 1e-2, "classifier.weight": 1e-2}
    assert set(seen) == set(names.values())  # every parameter is in exactly one group
    for name, lr in expected.items():
        assert seen[name] == (pytest.approx(lr), 0.01), name
    assert seen["bert.encoder.layer.1.output.LayerNorm.weight"] == (pytest.approx(1e-2 / 4), 0.0)
    with pytest.raises(UserError, match="layer_lr_decay"):
        load_config(None, ["teacher.train.layer_lr_decay=0"])


def test_layer_depth_sees_through_a_peft_wrapper():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_bert(3), LoraConfig(target_modules=["query", "value"], r=2))
    names = [n for n, _ in model.named_parameters()]
    depths = dict(zip(names, training.layer_depths(model, names)))
    assert depths["base_model.model.bert.encoder.layer.2.attention.self.query.lora_A.default.weight"] == 3
    assert depths["base_model.model.bert.embeddings.word_embeddings.weight"] == 0
    assert depths["base_model.model.classifier.weight"] == 4


def test_the_schedule_reaches_the_inner_optimizers_of_sparse_updates_with_layer_decay(tmp_path, minilm_tokenizer):
    """With sparse word-embedding updates (and layer-wise decay), the linear schedule must change the
    rates the inner AdamW and SparseAdam use, not copies: accelerate's wrapping reloads their state,
    which gives them new group dicts. Checked after every step against the scheduler's own rates."""
    from transformers import TrainerCallback

    seen = []

    class Rates(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, lr_scheduler=None, **kw):
            inner = optimizer.optimizer.inner  # accelerate's wrapper around SparseEmbeddingOptimizer
            seen.append(([g["lr"] for o in inner for g in o.param_groups], lr_scheduler.get_last_lr()))

    tc = TrainConfig(epochs=1, learning_rate=1e-2, batch_size=4, logging_steps=100, precision="fp32",
                     sparse_word_embeddings=True, layer_lr_decay=0.5, warmup_ratio=0.0)
    data = _encoded(16, lambda i: i % 2)
    training.fit(tiny_bert(2, vocab_size=minilm_tokenizer.vocab_size), data, data, minilm_tokenizer, tc,
                 work_dir=tmp_path / "w", log_path=tmp_path / "l", stage="s", seed=0, selection_metric="accuracy",
                 quiet=True, fingerprint="f", callbacks=(Rates(),))
    assert len(seen) == 4
    for used, scheduled in seen:
        assert used == pytest.approx(scheduled)
    assert seen[-1][0][0] < seen[0][0][0]  # the head's rate decayed
    assert seen[0][0][-1] == pytest.approx(seen[0][0][0] * 0.5 ** 3)  # the embeddings: decay^(L+1)


def test_layer_depth_of_a_peft_wrapped_model_whose_prefix_is_model():
    """peft names start with `base_model.model.`; a task model whose own base prefix is `model` (e.g.
    ModernBERT) must not have its head taken for a base-model weight."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_bert(2), LoraConfig(target_modules=["query", "value"], r=2))
    model.get_base_model().base_model_prefix = "model"  # pretend: only the name test matters here
    assert training.layer_depths(model, ["base_model.model.classifier.weight"]) == [3]
