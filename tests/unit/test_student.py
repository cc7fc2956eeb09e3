import pytest
import torch
from tiny import tiny_teacher
from transformers import (
    AlbertConfig,
    AlbertForMaskedLM,
    BertConfig,
    BertForMaskedLM,
    RobertaConfig,
    RobertaForMaskedLM,
)

from hf_distil import create_student
from hf_distil.student import select_teacher_layers


@pytest.mark.parametrize(
    "n_teacher, n_student, layers, expected",
    [
        (12, 6, "every_other", [1, 3, 5, 7, 9, 11]),
        (12, 6, "distilbert", [0, 2, 4, 7, 9, 11]),
        (4, 2, "every_other", [1, 3]),
        (4, 2, [0, 3], [0, 3]),
    ],
)
def test_layer_selection(n_teacher, n_student, layers, expected):
    assert select_teacher_layers(n_teacher, n_student, layers) == expected


@pytest.mark.parametrize(
    "n_student, layers, words",
    [
        (5, "every_other", ["deeper than the teacher", "4 layers"]),
        (3, "every_other", ["every_other", "at least 6 layers"]),
        (2, [0, 4], ["[4]", "out of range", "0..3"]),
        (2, [1, 1], ["repeat"]),
        (2, [0, 1, 2], ["3 indices", "num_hidden_layers=2"]),
        (2, "middle", ["'middle'", "every_other", "distilbert"]),
        (2, "distilbert", ["12-layer teacher"]),
        (0, "every_other", ["positive integer"]),
    ],
)
def test_bad_layers_fail_clearly(n_student, layers, words):
    with pytest.raises(ValueError) as err:
        create_student(tiny_teacher(), n_student, layers)
    for word in words:
        assert word in str(err.value)


def test_copies_embeddings_head_and_chosen_layers_and_records_them():
    teacher = tiny_teacher()
    student = create_student(teacher, 2, "every_other")
    assert type(student) is type(teacher)
    assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4
    assert student.config.distil_teacher_layers == [1, 3]
    assert student.config.distil_layer_strategy == "every_other"
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for name, value in s_state.items():
        source = name
        if name.startswith("bert.encoder.layer."):
            index, rest = name[len("bert.encoder.layer."):].split(".", 1)
            source = f"bert.encoder.layer.{[1, 3][int(index)]}.{rest}"
        assert torch.equal(value, t_state[source]), name
    # the whole MLM head, including the transform that an AutoModel-built student would leave random
    assert torch.equal(student.cls.predictions.transform.dense.weight, teacher.cls.predictions.transform.dense.weight)
    assert torch.equal(student.cls.predictions.transform.LayerNorm.weight,
                       teacher.cls.predictions.transform.LayerNorm.weight)
    assert torch.equal(student.cls.predictions.bias, teacher.cls.predictions.bias)


def test_student_is_independent_and_ties_stay_tied():
    teacher = tiny_teacher()
    before = teacher.bert.embeddings.word_embeddings.weight.clone()
    student = create_student(teacher, 2)
    assert student.cls.predictions.decoder.weight is student.bert.embeddings.word_embeddings.weight
    with torch.no_grad():
        student.bert.embeddings.word_embeddings.weight.add_(1.0)
        student.bert.encoder.layer[0].output.dense.weight.zero_()
    assert torch.equal(teacher.bert.embeddings.word_embeddings.weight, before)
    assert teacher.bert.encoder.layer[1].output.dense.weight.abs().sum() > 0


def test_same_outputs_as_teacher_when_all_layers_kept():
    teacher = tiny_teacher().eval()
    student = create_student(teacher, 4, [0, 1, 2, 3]).eval()
    ids = torch.randint(5, 64, (2, 9))
    assert torch.allclose(student(input_ids=ids).logits, teacher(input_ids=ids).logits, atol=1e-6)


def test_roberta_student():
    torch.manual_seed(0)
    teacher = RobertaForMaskedLM(RobertaConfig(vocab_size=80, hidden_size=32, num_hidden_layers=4,
                                               num_attention_heads=2, intermediate_size=64))
    student = create_student(teacher, 2, [0, 2])
    assert student.lm_head.decoder.weight is student.roberta.embeddings.word_embeddings.weight
    assert torch.equal(student.lm_head.dense.weight, teacher.lm_head.dense.weight)
    assert torch.equal(student.roberta.encoder.layer[1].attention.self.query.weight,
                       teacher.roberta.encoder.layer[2].attention.self.query.weight)


def test_unsupported_architecture_fails_clearly():
    # ALBERT shares one layer group across its depth: there are no per-layer weights to choose from
    teacher = AlbertForMaskedLM(AlbertConfig(vocab_size=50, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=64))
    with pytest.raises(ValueError, match="AlbertForMaskedLM") as err:
        create_student(teacher, 1)
    assert "'albert'" in str(err.value) and "DistilBERT and ModernBERT" in str(err.value)


def test_bio_clinicalbert_architecture_gives_the_seed_student():
    teacher = BertForMaskedLM(BertConfig(vocab_size=28996))  # Bio_ClinicalBERT's shape, random weights
    student = create_student(teacher, num_hidden_layers=6, layers="every_other")
    c = student.config
    shape = (c.num_hidden_layers, c.hidden_size, c.vocab_size, c.intermediate_size // c.hidden_size)
    assert shape == (6, 768, 28996, 4)
    n = student.num_parameters()
    assert round(n / 1e6, 1) == 65.8, n
    assert c.distil_teacher_layers == [1, 3, 5, 7, 9, 11]
