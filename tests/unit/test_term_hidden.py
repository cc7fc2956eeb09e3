"""hidden: DistilBERT's cosine loss on the last hidden states of the non-padding positions (CosineEmbeddingLoss with
target 1, i.e. mean(1 − cos)), or their MSE."""

import torch
from reference import arguments, padded_mask, rows_of, term_value

from hf_distil.signals import Signals


def distilbert_loss_cos(s_hidden, t_hidden, attention_mask):
    """DistilBERT's distiller.py, transcribed."""
    mask = attention_mask.unsqueeze(-1).expand_as(s_hidden).bool()
    dim = s_hidden.size(-1)
    s_slct = torch.masked_select(s_hidden, mask).view(-1, dim)
    t_slct = torch.masked_select(t_hidden, mask).view(-1, dim)
    target = s_slct.new(s_slct.size(0)).fill_(1)
    return torch.nn.CosineEmbeddingLoss(reduction="mean")(s_slct, t_slct, target)


def test_hidden_cosine_is_distilberts_loss_cos_and_mse_the_elementwise_mse():
    torch.manual_seed(0)
    s_hidden, t_hidden = torch.randn(3, 6, 8), torch.randn(3, 6, 8)
    mask = padded_mask([6, 3, 5], 6)
    labels = torch.full((3, 6), -100)
    labels[0, 1] = 1
    rows = rows_of(labels, mask)
    logits = torch.zeros(1, 4)
    ours = term_value("hidden", Signals(logits, s_hidden), Signals(logits, t_hidden), rows, arguments())
    torch.testing.assert_close(ours, distilbert_loss_cos(s_hidden, t_hidden, mask), rtol=1e-6, atol=1e-7)
    mse = term_value("hidden", Signals(logits, s_hidden), Signals(logits, t_hidden), rows,
                     arguments(hidden_loss="mse"))
    real = mask.bool()
    torch.testing.assert_close(mse, torch.nn.functional.mse_loss(s_hidden[real], t_hidden[real]))
