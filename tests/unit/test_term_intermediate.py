"""intermediate: TinyBERT's hidden-state loss as its general_distill.py computes it (MSELoss of the fitted student
states and the teacher's, hidden states 0 and each mapped layer's, summed), and the cosine form."""

import torch
from reference import arguments, padded_mask, rows_of, term_value

from hf_distil.layer_map import LayerPlan
from hf_distil.signals import Signals


def test_mse_is_tinyberts_rep_loss_on_an_unpadded_batch_and_skips_padding_otherwise():
    torch.manual_seed(0)
    plan = LayerPlan(((0, 1), (1, 3)))  # hidden states 0↔0, 1↔2, 2↔4
    fit_dense = torch.nn.Linear(6, 8)  # TinyBERT's W_h: the student's states are fitted before the MSE
    student = {i: fit_dense(torch.randn(2, 5, 6)).detach() for i in (0, 1, 2)}
    teacher = {i: torch.randn(2, 5, 8) for i in (0, 2, 4)}
    logits = torch.zeros(1, 4)
    full = torch.ones(2, 5, dtype=torch.long)
    ours = term_value("intermediate", Signals(logits, hidden_states=student), Signals(logits, hidden_states=teacher),
                      rows_of(torch.full((2, 5), -100), full), arguments(), plan)
    loss_mse = torch.nn.MSELoss()
    rep_loss = sum(loss_mse(student[s], teacher[t]) for s, t in plan.hidden_pairs)  # general_distill.py
    torch.testing.assert_close(ours, rep_loss, rtol=1e-6, atol=1e-7)
    mask = padded_mask([5, 2], 5)
    padded = term_value("intermediate", Signals(logits, hidden_states=student), Signals(logits, hidden_states=teacher),
                        rows_of(torch.full((2, 5), -100), mask), arguments(), plan)
    real = mask.bool()
    torch.testing.assert_close(padded, sum(loss_mse(student[s][real], teacher[t][real]) for s, t in plan.hidden_pairs))


def test_cosine_for_equal_widths():
    torch.manual_seed(1)
    plan = LayerPlan(((0, 0),))
    student = {i: torch.randn(2, 4, 8) for i in (0, 1)}
    teacher = {i: torch.randn(2, 4, 8) for i in (0, 1)}
    logits = torch.zeros(1, 4)
    ours = term_value("intermediate", Signals(logits, hidden_states=student), Signals(logits, hidden_states=teacher),
                      rows_of(torch.full((2, 4), -100), torch.ones(2, 4, dtype=torch.long)),
                      arguments(intermediate_loss="cosine"), plan)
    expected = sum((1 - torch.cosine_similarity(student[i], teacher[i], dim=-1)).mean() for i in (0, 1))
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-7)
