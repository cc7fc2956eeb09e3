"""The seed's distillation approach, rebuilt as a benchmark baseline (not product code).

One `nn.Module` holds student and teacher and is trained by the stock `Trainer`. Both models return
full-vocabulary logits at every position and all hidden states; the KL term picks the masked rows out of the
(batch, length, vocabulary) logits with a boolean mask expanded to that shape and `masked_select`; the student's
own masked-LM loss is the model's built-in cross-entropy over the full logits; the cosine term compares the last
hidden states at the non-padding positions (DistilBERT's distiller logic).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def seed_style_loss(student_out, teacher_out, labels, attention_mask, temperature=2.0,
                    alpha_kd=5.0, alpha_mlm=2.0, alpha_cos=1.0):
    """(loss, {"kd", "mlm", "hidden"}) from two full `MaskedLMOutput`s, the way the seed computes it."""
    s_logits, t_logits = student_out.logits, teacher_out.logits
    vocab = s_logits.size(-1)
    mask = (labels > -1).unsqueeze(-1).expand_as(s_logits)
    s_rows = torch.masked_select(s_logits, mask).view(-1, vocab)
    t_rows = torch.masked_select(t_logits, mask).view(-1, vocab)
    kd = nn.KLDivLoss(reduction="batchmean")(
        F.log_softmax(s_rows / temperature, dim=-1), F.softmax(t_rows / temperature, dim=-1)
    ) * temperature**2
    mlm = student_out.loss
    loss = alpha_kd * kd + alpha_mlm * mlm
    terms = {"kd": kd, "mlm": mlm}
    if alpha_cos > 0:
        s_hidden, t_hidden = student_out.hidden_states[-1], teacher_out.hidden_states[-1]
        width = s_hidden.size(-1)
        keep = attention_mask.unsqueeze(-1).expand_as(s_hidden).bool()
        s_hidden = torch.masked_select(s_hidden, keep).view(-1, width)
        t_hidden = torch.masked_select(t_hidden, keep).view(-1, width)
        target = s_hidden.new_ones(s_hidden.size(0))
        terms["hidden"] = nn.CosineEmbeddingLoss(reduction="mean")(s_hidden, t_hidden, target)
        loss = loss + alpha_cos * terms["hidden"]
    return loss, terms


class SeedStyleDistiller(nn.Module):
    """Student and teacher in one trained module; `forward` returns {"loss", "kd", "mlm", "hidden"} for `Trainer`.

    As in the seed, `Trainer`'s `model.train()` also puts the teacher in training mode (its dropout runs);
    the teacher is frozen and run under `no_grad`.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, temperature=2.0, alpha_kd=5.0, alpha_mlm=2.0,
                 alpha_cos=1.0):
        super().__init__()
        self.student, self.teacher = student, teacher
        self.teacher.requires_grad_(False)
        self.temperature, self.alpha_kd, self.alpha_mlm, self.alpha_cos = temperature, alpha_kd, alpha_mlm, alpha_cos

    def forward(self, input_ids, attention_mask, labels, token_type_ids=None):
        types = {} if token_type_ids is None else {"token_type_ids": token_type_ids}  # not every family takes them
        student_out = self.student(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                                   output_hidden_states=True, **types)
        with torch.no_grad():
            teacher_out = self.teacher(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                                       **types)
        loss, terms = seed_style_loss(student_out, teacher_out, labels, attention_mask, self.temperature,
                                      self.alpha_kd, self.alpha_mlm, self.alpha_cos)
        return {"loss": loss, **terms}
