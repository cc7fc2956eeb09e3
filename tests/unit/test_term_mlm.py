"""mlm: the student's masked-LM loss as DistilBERT's distiller computes it (CrossEntropyLoss, ignore_index -100)."""

import torch
from reference import arguments, padded_mask, rows_of, term_value

from hf_distil.signals import Signals


def test_mlm_is_distilberts_loss_mlm():
    torch.manual_seed(0)
    s_logits = torch.randn(3, 6, 13) * 2
    labels = torch.full((3, 6), -100)
    labels[0, 2], labels[1, 1], labels[1, 3], labels[2, 4] = 5, 0, 12, 7
    rows = rows_of(labels, padded_mask([6, 4, 5], 6), selected="M")
    ours = term_value("mlm", Signals(s_logits.reshape(-1, 13)[rows.positions]), None, rows, arguments())
    lm_loss_fct = torch.nn.CrossEntropyLoss(ignore_index=-100)  # distiller.py
    theirs = lm_loss_fct(s_logits.view(-1, s_logits.size(-1)), labels.view(-1))
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
