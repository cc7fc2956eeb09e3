"""The term registry, the pipeline steps and the signals layer; a baseline's evaluation against its teacher."""

import dataclasses

import pytest
import tiny
import torch
from tiny import batch_of, premasked_dataset, tiny_teacher
from torch import nn
from transformers import default_data_collator

from hf_distil import DistillationArguments, DistillationTrainer, create_student
from hf_distil.objective import (
    capture_specs,
    eval_fields,
    eval_stats,
    normalise,
    per_row_losses,
    select_rows,
    weigh,
)
from hf_distil.signals import SIGNALS, CaptureSpec, capture
from hf_distil.terms import ROW_SETS, Reads, active_terms, names, registered


def args_for(tmp_path, **kw):
    return tiny.args_for(tmp_path, **{"per_device_eval_batch_size": 5, **kw})


def test_the_registry_is_consistent_with_the_arguments_and_the_signals():
    fields = {f.name for f in dataclasses.fields(DistillationArguments)}
    # the logged order: kd_loss, mlm_loss, hidden_loss, attention_loss, intermediate_loss, relation_loss, task_loss
    assert names() == ("kd", "mlm", "hidden", "attention", "intermediate", "relation", "task")
    for term in registered():
        assert term.weight in fields and term.rows in ROW_SETS
        assert set(term.student_reads) | set(term.teacher_reads) <= set(SIGNALS)
        assert term.needs_teacher == (term.name not in ("mlm", "task"))
    assert eval_fields() == names() + ("P", "M", "N", "correct", "agree")
    with pytest.raises(ValueError, match="Unknown signal"):
        CaptureSpec.reading([Reads(("attention_probs",))])


@pytest.mark.parametrize("alphas, teacher, evaluating, expected", [
    ((5.0, 2.0, 1.0), True, False, ("kd", "mlm", "hidden")),
    ((0.0, 1.0, 0.0), True, False, ("mlm",)),
    ((0.0, 1.0, 0.0), True, True, ("kd", "mlm")),  # a baseline is still scored against its teacher
    ((0.0, 1.0, 0.0), False, True, ("mlm",)),
    ((1.0, 0.0, 0.0), True, False, ("kd",)),
    ((0.0, 0.0, 1.0), True, True, ("kd", "mlm", "hidden")),
])
def test_active_terms(tmp_path, alphas, teacher, evaluating, expected):
    a = args_for(tmp_path, alpha_kd=alphas[0], alpha_mlm=alphas[1], alpha_hidden=alphas[2])
    terms = active_terms(a, teacher, evaluating)
    assert tuple(t.name for t in terms) == expected
    student_spec, teacher_spec = capture_specs(terms)
    assert student_spec.last_hidden_state == ("hidden" in expected)
    assert (teacher_spec is None) == (not any(t.needs_teacher for t in terms))


@pytest.mark.parametrize("kd_positions", ["masked", "all"])
def test_rows_selected_are_those_the_logit_terms_read(tmp_path, kd_positions):
    batch = batch_of()
    masked, non_pad = batch["labels"] != -100, batch["attention_mask"].bool()
    kd = masked if kd_positions == "masked" else non_pad
    for alphas, evaluating, want in [((1.0, 1.0, 0.0), False, kd), ((0.0, 1.0, 1.0), False, masked),
                                     ((0.0, 0.0, 1.0), False, torch.zeros_like(masked)),
                                     ((0.0, 1.0, 0.0), True, kd)]:
        a = args_for(tmp_path, kd_positions=kd_positions, alpha_kd=alphas[0], alpha_mlm=alphas[1],
                     alpha_hidden=alphas[2])
        rows = select_rows(batch, a, active_terms(a, True, evaluating), evaluating)
        assert torch.equal(rows.positions, want.reshape(-1).nonzero().squeeze(1))
        assert torch.equal(rows.labels, batch["labels"].reshape(-1)[rows.positions])
        assert rows.counts().tolist() == [int(kd.sum()), int(masked.sum()), int(non_pad.sum())]


def test_normalise_divides_each_sum_by_its_row_set_and_weigh_skips_zero_weights(tmp_path):
    sums = {"kd": torch.tensor(6.0), "mlm": torch.tensor(4.0), "hidden": torch.tensor(10.0)}
    terms = normalise(sums, torch.tensor([3, 2, 0]), scale=2.0)  # P=3, M=2, N=0 (clamped to 1)
    assert {k: float(v) for k, v in terms.items()} == {"kd": 4.0, "mlm": 4.0, "hidden": 20.0}
    a = args_for(tmp_path, alpha_kd=0.5, alpha_mlm=0.0, alpha_hidden=1.0)
    assert float(weigh(terms, a)) == 22.0
    with pytest.raises(RuntimeError, match="check alpha_kd / alpha_mlm / alpha_hidden"):
        weigh({"mlm": terms["mlm"]}, a)


@pytest.mark.parametrize("last_hidden", [False, True])
def test_capture_sparse_equals_dense_and_dataparallel_takes_the_dense_path(last_hidden):
    teacher = tiny_teacher(dropout=0.0)
    teacher.eval()
    batch = batch_of()
    positions = (batch["labels"] != -100).reshape(-1).nonzero().squeeze(1)
    spec = CaptureSpec(last_hidden_state=last_hidden)
    rows_seen = []
    teacher.cls.predictions.decoder.register_forward_hook(lambda m, i, o: rows_seen.append(o.reshape(-1, 64).shape[0]))
    with torch.no_grad():
        sparse = capture(teacher, batch, positions, spec, sparse=True)
        dense = capture(teacher, batch, positions, spec, sparse=False)
        wrapped = capture(nn.DataParallel(teacher), batch, positions, spec, sparse=True)
    full = batch["input_ids"].numel()
    assert rows_seen == [positions.numel(), full, full]
    assert sparse.logits.shape == (positions.numel(), 64)
    assert torch.allclose(sparse.logits, dense.logits, atol=1e-5) and torch.allclose(wrapped.logits, dense.logits)
    if last_hidden:
        assert sparse.last_hidden_state.shape == (4, 16, 32)
        assert torch.allclose(sparse.last_hidden_state, dense.last_hidden_state)
    else:
        assert sparse.last_hidden_state is None and dense.last_hidden_state is None


def test_eval_stats_are_named_per_example_sums(tmp_path):
    teacher = tiny_teacher(dropout=0.0)
    student = create_student(teacher, 2).eval()
    batch = batch_of()
    a = args_for(tmp_path)
    terms = active_terms(a, True, evaluating=True)
    rows = select_rows(batch, a, terms, evaluating=True)
    student_spec, teacher_spec = capture_specs(terms)
    with torch.no_grad():
        s, t = capture(student, batch, rows.positions, student_spec), capture(teacher, batch, rows.positions,
                                                                             teacher_spec)
    per_row = per_row_losses(terms, s, t, rows, a)
    stats = dict(zip(eval_fields(), eval_stats(per_row, rows, s, t).unbind(1)))
    assert stats["M"].tolist() == (batch["labels"] != -100).sum(1).double().tolist()
    assert stats["N"].tolist() == batch["attention_mask"].sum(1).double().tolist()
    assert set(per_row) == {"kd", "mlm", "hidden"}  # the seed objective's terms; the layer terms are off
    for name in names():
        expected = per_row[name].values.double().sum() if name in per_row else torch.zeros((), dtype=torch.float64)
        assert torch.allclose(stats[name].sum(), expected)
    assert 0 <= float(stats["agree"].sum()) <= float(stats["M"].sum())


def test_a_baseline_without_teacher_terms_is_still_evaluated_against_its_teacher(tmp_path):
    """alpha_kd=0, alpha_hidden=0: training never runs the teacher, evaluation reports kd and agreement."""
    teacher = tiny_teacher(dropout=0.0)
    student = create_student(teacher, 2)
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    data = premasked_dataset(12, seed=5)
    baseline = DistillationTrainer(model=student, teacher_model=teacher, eval_dataset=data, train_dataset=data,
                                   data_collator=default_data_collator,
                                   args=args_for(tmp_path / "b", alpha_kd=0.0, alpha_hidden=0.0, alpha_mlm=1.0,
                                                 max_steps=2))
    baseline.train()
    assert not calls
    metrics = baseline.evaluate()
    assert calls
    full = DistillationTrainer(model=baseline.model, teacher_model=teacher, eval_dataset=data,
                               data_collator=default_data_collator, args=args_for(tmp_path / "f")).evaluate()
    for key in ("eval_kd_loss", "eval_teacher_agreement", "eval_mlm_loss", "eval_accuracy"):
        assert metrics[key] == full[key], key
    assert "eval_hidden_loss" not in metrics
    assert metrics["eval_loss"] == metrics["eval_mlm_loss"]  # the weighted total of what the baseline trains
    # without a teacher, nothing is reported against one
    alone = DistillationTrainer(model=baseline.model, eval_dataset=data, data_collator=default_data_collator,
                                args=args_for(tmp_path / "a", alpha_kd=0.0, alpha_hidden=0.0)).evaluate()
    assert "eval_kd_loss" not in alone and "eval_teacher_agreement" not in alone
    assert alone["eval_mlm_loss"] == metrics["eval_mlm_loss"]
