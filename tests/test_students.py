import pytest
import torch
from transformers import (AutoModelForSequenceClassification, DistilBertConfig, DistilBertForSequenceClassification,
                          ElectraConfig, ElectraForSequenceClassification, RobertaConfig,
                          RobertaForSequenceClassification)

from conftest import TINY, tiny_bert, tiny_mpnet
from distillora import build_student
from distillora.students import layer_list_path, parse_layers


def _layer_tensors(model, path, i):
    prefix = f"{path}.{i}."
    return {k[len(prefix):]: v for k, v in model.state_dict().items() if k.startswith(prefix)}


def _assert_copied(teacher, student, chosen):
    path = layer_list_path(teacher)
    assert student.config.num_hidden_layers == len(chosen)
    for s, t in enumerate(chosen):
        st, tt = _layer_tensors(student, path, s), _layer_tensors(teacher, path, t - 1)
        assert st.keys() == tt.keys() and st
        for k in st:
            assert torch.equal(st[k], tt[k]), f"student layer {s} {k} != teacher layer {t}"
    # everything outside the layer list (embeddings, pooler, head, MPNet's relative bias) is the teacher's
    outside = {k: v for k, v in teacher.state_dict().items() if not k.startswith(path + ".")}
    sd = student.state_dict()
    assert set(outside) == {k for k in sd if not k.startswith(path + ".")}
    for k, v in outside.items():
        assert torch.equal(sd[k], v), k


@pytest.mark.parametrize("make", [tiny_bert, tiny_mpnet], ids=["bert", "mpnet"])
@pytest.mark.parametrize("layers,expected", [("odd", [1, 3]), ("even", [2, 4]), ([4, 1, 2], [4, 1, 2])])
def test_build_student_copies_exactly_the_chosen_layers(make, layers, expected):
    teacher = make(4)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = build_student(teacher, layers)
    assert type(student) is type(teacher)
    _assert_copied(teacher, student, expected)
    # the teacher is left unchanged, and the student does not share storage with it
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k])
    next(student.parameters()).data.add_(1.0)
    assert torch.equal(next(teacher.parameters()), before[next(iter(before))])


def test_twelve_layer_odd_even():
    teacher = tiny_bert(12)
    assert build_student(teacher, "odd").config.distillora_teacher_layers == [1, 3, 5, 7, 9, 11]
    _assert_copied(teacher, build_student(teacher, "even"), [2, 4, 6, 8, 10, 12])


@pytest.mark.parametrize("cls,cfg", [
    (RobertaForSequenceClassification, RobertaConfig(vocab_size=100, num_hidden_layers=3, num_labels=2, **TINY)),
    (ElectraForSequenceClassification, ElectraConfig(vocab_size=100, num_hidden_layers=3, num_labels=2,
                                                     embedding_size=32, **TINY)),
    (DistilBertForSequenceClassification, DistilBertConfig(vocab_size=100, n_layers=3, dim=32, n_heads=2,
                                                           hidden_dim=64, max_position_embeddings=64, num_labels=2)),
], ids=["roberta", "electra", "distilbert"])
def test_other_architectures(cls, cfg):
    teacher = cls(cfg).eval()
    student = build_student(teacher, [3, 1])
    _assert_copied(teacher, student, [3, 1])
    ids = torch.randint(5, 100, (2, 7))
    assert student(input_ids=ids).logits.shape == (2, 2)


def test_student_round_trips_through_save_pretrained(tmp_path):
    teacher = tiny_bert(4)
    student = build_student(teacher, "even").eval()
    student.save_pretrained(tmp_path)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert again.config.num_hidden_layers == 2
    ids = torch.randint(1000, 2000, (3, 9))
    assert torch.allclose(again(input_ids=ids).logits, student(input_ids=ids).logits, atol=1e-6)


def test_student_of_first_layers_matches_truncated_teacher_forward():
    """A student built from layers [1, 2] computes what the teacher's first two layers compute."""
    teacher = tiny_bert(4)
    student = build_student(teacher, [1, 2]).eval()
    ids = torch.randint(1000, 2000, (2, 8))
    hs = teacher.bert(input_ids=ids, output_hidden_states=True).hidden_states
    assert torch.allclose(student.bert(input_ids=ids).last_hidden_state, hs[2], atol=1e-6)


@pytest.mark.parametrize("layers,msg", [
    ([0, 2], "out of range"), ([5], "out of range"), ([2, 2], "more than once"), ([], "non-empty"),
    ("middle", "odd"), ([1.5], "integers"),
])
def test_bad_layer_lists_are_rejected(layers, msg):
    with pytest.raises(ValueError, match=msg):
        build_student(tiny_bert(4), layers)


def test_parse_layers_any_depth():
    assert parse_layers("odd", 7) == [1, 3, 5, 7]
    assert parse_layers("even", 7) == [2, 4, 6]
