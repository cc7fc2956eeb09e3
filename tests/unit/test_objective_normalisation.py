"""The Objective owns the normalisation: inside an accumulation window (and across ranks) each micro-batch's terms are
divided by the whole window's row counts, so the loss is already scaled for accumulation and ranks
(`loss_is_scaled_for_ga`): the micro-batch gradients add up to the gradient of one big batch. No Trainer here."""

import copy

import torch
from reference import arguments
from tiny import batch_of, tiny_teacher

from hf_distil import create_student
from hf_distil.objective import Objective, capture_specs
from hf_distil.signals import capture

SEED = dict(temperature=2.0, alpha_kd=5.0, alpha_mlm=2.0, alpha_hidden=1.0, alpha_task=None, alpha_attention=0.0,
            alpha_intermediate=0.0, alpha_relation=0.0, average_tokens_across_devices=True, world_size=1)


def forward(student, teacher, inputs):
    def run(rows, terms):
        s_spec, t_spec = capture_specs(terms)
        with torch.no_grad():
            t = capture(teacher, inputs, rows.positions, t_spec) if t_spec else None
        return capture(student, inputs, rows.positions, s_spec), t
    return run


def gradient(student, objective, batches, window=None, gather=None, processes=1):
    student.zero_grad()
    if window is not None:
        objective.open_window(window, "cpu", gather, processes)
    for batch in batches:
        loss, _, _ = objective.loss(batch, forward(student, TEACHER, batch), training=True)
        loss.backward()
    objective.close_window()
    return {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}


TEACHER = tiny_teacher(dropout=0.0).eval()


def halves(batch):
    return [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]


def test_accumulated_micro_batches_give_the_one_batch_gradient():
    student = create_student(TEACHER, 2).eval()
    batch = batch_of(8, seed=3)
    first, second = halves(batch)
    assert (first["labels"] != -100).sum() != (second["labels"] != -100).sum()  # uneven: a mean of means is wrong
    objective = Objective(arguments(**SEED))
    assert objective.loss_is_scaled_for_ga
    one = gradient(student, objective, [batch])  # no window: the batch is its own denominator
    accumulated = gradient(student, objective, [first, second], window=[first, second])
    for name in one:
        torch.testing.assert_close(accumulated[name], one[name], rtol=1e-5, atol=1e-7)
    naive = gradient(student, objective, [first, second])  # each micro-batch its own mean: not the same
    assert any(not torch.allclose(naive[n] / 2, one[n], rtol=1e-3) for n in one)


def test_two_ranks_averaged_give_the_one_batch_gradient():
    """Each rank counts the global window (gathered) and scales by the number of processes; DDP averages."""
    student = create_student(TEACHER, 2).eval()
    batch = batch_of(8, seed=6)
    ranks = halves(batch)
    objective = Objective(arguments(**{**SEED, "world_size": 2}))
    totals = [objective.open_window([r], "cpu", lambda t: t, 1) for r in ranks]  # each rank's own counts
    objective.close_window()

    def gather(counts):  # what accelerator.gather returns on every rank: both ranks' counts
        return torch.stack([t for t in totals])

    grads = [gradient(copy.deepcopy(student), objective, [r], window=[r], gather=gather, processes=2) for r in ranks]
    one = gradient(student, Objective(arguments(**SEED)), [batch])
    for name in one:
        torch.testing.assert_close((grads[0][name] + grads[1][name]) / 2, one[name], rtol=1e-5, atol=1e-7)


def test_evaluation_sums_are_streamed_and_reset():
    student = create_student(TEACHER, 2).eval()
    objective = Objective(arguments(**SEED))
    batch = batch_of(6, seed=2)
    with torch.no_grad():
        for part in (batch, batch):
            _, _, stats = objective.loss(part, forward(student, TEACHER, part), training=False, want_stats=True)
            objective.add_eval(stats)
        twice = objective.eval_metrics()
        _, values, stats = objective.loss(batch, forward(student, TEACHER, batch), training=False, want_stats=True)
        objective.add_eval(stats)
        once = objective.eval_metrics()
    assert objective.eval_metrics() is None  # read once, then reset
    assert twice == once  # token-weighted means: the same batch twice changes nothing
    torch.testing.assert_close(torch.tensor(once["kd_loss"], dtype=torch.float64), values["kd"].double(), rtol=1e-6,
                               atol=0)


def test_streamed_sums_are_float64_except_on_a_device_without_it():
    from hf_distil.objective import sums_dtype

    assert sums_dtype("cpu") == torch.float64 and sums_dtype(torch.device("cuda", 0)) == torch.float64
    assert sums_dtype(torch.device("mps")) == torch.float32  # Apple's MPS has no float64
