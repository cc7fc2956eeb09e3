"""kd: Hinton et al.'s soft targets as DistilBERT's distiller computes them (T² · KLDivLoss "batchmean" of the
masked positions' distributions at temperature T)."""

import pytest
import torch
import torch.nn.functional as F
from reference import arguments, padded_mask, rows_of, term_value

from hf_distil.signals import Signals


def distilbert_loss_ce(s_logits, t_logits, lm_labels, temperature):
    """DistilBERT's distiller.py (Sanh et al.), transcribed: select the masked positions, KLDivLoss(batchmean)."""
    mask = (lm_labels > -1).unsqueeze(-1).expand_as(s_logits)
    s_slct = torch.masked_select(s_logits, mask).view(-1, s_logits.size(-1))
    t_slct = torch.masked_select(t_logits, mask).view(-1, s_logits.size(-1))
    ce = torch.nn.KLDivLoss(reduction="batchmean")
    return ce(F.log_softmax(s_slct / temperature, dim=-1), F.softmax(t_slct / temperature, dim=-1)) * temperature**2


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_is_distilberts_loss_ce(temperature):
    torch.manual_seed(0)
    s_logits, t_logits = torch.randn(3, 7, 11) * 3, torch.randn(3, 7, 11) * 3
    labels = torch.full((3, 7), -100)
    labels[0, 1], labels[0, 4], labels[1, 2], labels[2, 0], labels[2, 5] = 3, 7, 1, 9, 2
    rows = rows_of(labels, padded_mask([7, 5, 6], 7))
    flat = rows.positions
    ours = term_value("kd", Signals(s_logits.reshape(-1, 11)[flat]), Signals(t_logits.reshape(-1, 11)[flat]), rows,
                      arguments(temperature=temperature))
    theirs = distilbert_loss_ce(s_logits, t_logits, labels, temperature)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    assert 0.2 < float(theirs)  # not a degenerate case


def test_kd_is_zero_for_the_teachers_own_logits_and_float32_for_half_inputs():
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 5)
    labels = torch.tensor([[1, -100, 2, -100], [-100, 3, -100, -100]])
    rows = rows_of(labels, torch.ones(2, 4, dtype=torch.long))
    flat = rows.positions
    same = term_value("kd", Signals(logits.reshape(-1, 5)[flat]), Signals(logits.reshape(-1, 5)[flat]), rows,
                      arguments())
    assert float(same) == pytest.approx(0.0, abs=1e-7)
    half = term_value("kd", Signals(logits.reshape(-1, 5)[flat].bfloat16()),
                      Signals(logits.reshape(-1, 5)[flat].flip(-1).bfloat16()), rows, arguments())
    assert half.dtype == torch.float32
