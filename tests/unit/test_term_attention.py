"""attention: TinyBERT's attention loss as its general_distill.py computes it (the scaled scores q·kᵀ/√d plus the
extended mask, the masked scores set to 0, MSELoss), summed over the layer pairs; and the probability forms."""

import math

import pytest
import torch
from reference import arguments, padded_mask, rows_of, term_value

from hf_distil.layer_map import LayerPlan
from hf_distil.signals import Signals


def tinybert_att_loss(pairs, attention_mask, heads):
    """TinyBERT's general_distill.py, transcribed: for each (student, teacher) pair of (q, k), the scores as its
    modeling.py returns them (q·kᵀ/√d_h + (1 − mask) · −10000), those ≤ −100 set to 0, MSELoss, summed."""
    def scores(q, k):
        b, n, w = q.shape
        d = w // heads
        q = q.view(b, n, heads, d).permute(0, 2, 1, 3)
        k = k.view(b, n, heads, d).permute(0, 2, 1, 3)
        return q @ k.transpose(-1, -2) / math.sqrt(d) + (1.0 - attention_mask[:, None, None, :].float()) * -10000.0

    att_loss = 0.0
    for (s_q, s_k), (t_q, t_k) in pairs:
        student_att, teacher_att = scores(s_q, s_k), scores(t_q, t_k)
        student_att = torch.where(student_att <= -1e2, torch.zeros_like(student_att), student_att)
        teacher_att = torch.where(teacher_att <= -1e2, torch.zeros_like(teacher_att), teacher_att)
        att_loss = att_loss + torch.nn.MSELoss()(student_att, teacher_att)
    return att_loss


def signals(qk: dict, heads=2):
    return Signals(torch.zeros(1, 4), qk={layer: pair for layer, pair in qk.items()}, heads=heads,
                   windows=dict.fromkeys(qk))


def two_pairs(seed=0):
    torch.manual_seed(seed)
    student = {0: (torch.randn(3, 5, 8) * 2, torch.randn(3, 5, 8) * 2), 1: (torch.randn(3, 5, 8), torch.randn(3, 5, 8))}
    teacher = {1: (torch.randn(3, 5, 8) * 2, torch.randn(3, 5, 8) * 2), 3: (torch.randn(3, 5, 8), torch.randn(3, 5, 8))}
    return student, teacher, LayerPlan(((0, 1), (1, 3)))


def test_scores_is_tinyberts_att_loss_on_an_unpadded_batch():
    student, teacher, plan = two_pairs()
    mask = torch.ones(3, 5, dtype=torch.long)
    rows = rows_of(torch.full((3, 5), -100), mask)
    ours = term_value("attention", signals(student), signals(teacher), rows, arguments(), plan)
    theirs = tinybert_att_loss([(student[0], teacher[1]), (student[1], teacher[3])], mask, heads=2)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    assert float(theirs) > 1.0  # the scores' scale, far above the probabilities'


def test_with_padding_each_example_counts_as_the_authors_number_of_its_real_tokens():
    """The authors' mean also runs over padded query rows and divides by the padded length; ours averages the same
    per-row values over the real rows and keys only, so each example alone is the authors' number."""
    student, teacher, plan = two_pairs(1)
    lengths = [5, 3, 2]
    rows = rows_of(torch.full((3, 5), -100), padded_mask(lengths, 5))
    ours = term_value("attention", signals(student), signals(teacher), rows, arguments(), plan)
    per_row = []
    def cut(pair, b, n):
        return tuple(x[b:b + 1, :n] for x in pair)

    for b, n in enumerate(lengths):
        alone = tinybert_att_loss([(cut(student[0], b, n), cut(teacher[1], b, n)),
                                   (cut(student[1], b, n), cut(teacher[3], b, n))], torch.ones(1, n), heads=2)
        per_row += [alone] * n
    torch.testing.assert_close(ours, torch.stack(per_row).mean(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["probs", "kl"])
def test_the_probability_forms(kind):
    student, teacher, plan = two_pairs(2)
    mask = torch.ones(3, 5, dtype=torch.long)
    rows = rows_of(torch.full((3, 5), -100), mask)
    ours = term_value("attention", signals(student), signals(teacher), rows, arguments(attention_loss=kind), plan)

    def probs(q, k):
        return torch.softmax(q.view(3, 5, 2, 4).transpose(1, 2) @ k.view(3, 5, 2, 4).permute(0, 2, 3, 1) / 2.0, -1)

    expected = 0.0
    for s, t in ((student[0], teacher[1]), (student[1], teacher[3])):
        ps, pt = probs(*s), probs(*t)
        if kind == "probs":  # TinyBERT's paper form: MSE of the attention probabilities
            expected += torch.nn.functional.mse_loss(ps, pt)
        else:  # KL(teacher ‖ student) over the keys, mean over heads and queries
            expected += (pt * (pt.log() - ps.log())).sum(-1).mean()
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["scores", "probs"])
def test_local_layers_of_different_windows_each_keep_their_own(kind):
    """A student with a narrower sliding window than its teacher: each map is its own model's (banded by its own
    window), and the squared differences are averaged over the keys either model sees; before, both used the
    larger window, so the student's map was not its real attention."""
    torch.manual_seed(3)
    s_q, s_k, t_q, t_k = (torch.randn(2, 6, 8) for _ in range(4))
    student = Signals(torch.zeros(1, 4), qk={0: (s_q, s_k)}, heads=2, windows={0: 1})
    teacher = Signals(torch.zeros(1, 4), qk={0: (t_q, t_k)}, heads=2, windows={0: 2})
    mask = torch.ones(2, 6, dtype=torch.long)
    ours = term_value("attention", student, teacher, rows_of(torch.full((2, 6), -100), mask),
                      arguments(attention_loss=kind), LayerPlan(((0, 0),)))
    band = lambda w: (torch.arange(6)[:, None] - torch.arange(6)[None, :]).abs() <= w  # noqa: E731

    def own_map(q, k, window):
        scores = q.view(2, 6, 2, 4).transpose(1, 2) @ k.view(2, 6, 2, 4).permute(0, 2, 3, 1) / 2.0
        if kind == "scores":
            return scores.masked_fill(~band(window), 0.0)
        return torch.softmax(scores.masked_fill(~band(window), float("-inf")), -1)

    squared = (own_map(s_q, s_k, 1) - own_map(t_q, t_k, 2)).square().sum(-1)  # (batch, heads, queries)
    expected = (squared / band(2).sum(-1)).mean(1).mean()
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7)
