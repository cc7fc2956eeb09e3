"""The student's own masked-LM loss (Devlin et al. 2019); DistilBERT's L_mlm (Sanh et al. 2019).

mlm = CE(s_p, label_p) at each masked position p (labels != -100).
"""

from __future__ import annotations

import torch

from ..families import MASKED_LM
from ..losses import mlm_loss_rows
from .base import PerRow, Term, weight_text


class MaskedLM(Term):
    name = "mlm"
    weight = "alpha_mlm"
    rows = "M"
    student_reads = ("logits",)
    label = "MLM"
    metric_name = "MLM loss"
    citation = "Devlin et al. (2019), BERT: Pre-training of Deep Bidirectional Transformers"
    fields = ("alpha_mlm",)
    always_evaluated = True
    # masked LMs, and models of unknown class (as before task students existed)
    students = (MASKED_LM, None)
    trains_mlm_head = True
    card_rank = 10

    def per_row(self, student, teacher, rows, args, plan) -> PerRow:
        return PerRow(mlm_loss_rows(student.logits, rows.labels), rows.positions)

    def extra_metrics(self, value: float) -> dict[str, float]:
        return {"perplexity": float(torch.exp(torch.tensor(min(value, 80.0))))}

    def describe(self, args, context):
        if context.task != MASKED_LM:
            return None
        return (f"the student's masked-LM loss (weight {weight_text(args.alpha_mlm)})",
                f"{weight_text(args.alpha_mlm)} · MLM")


TERM = MaskedLM()
