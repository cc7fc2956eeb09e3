"""A task student's own loss: cross-entropy on its gold labels, per labelled token or per example (the hard-label
term of Hinton et al. 2015; TinyBERT's task stage leaves it out).

task = CE(s_p, label_p) at each labelled row p; weighted by alpha_task (1 when unset).
"""

from __future__ import annotations

from ..families import MASKED_LM, SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION
from ..losses import mlm_loss_rows
from .base import PerRow, Term, weight_text


class TaskLoss(Term):
    name = "task"
    weight = "alpha_task"
    rows = "M"
    student_reads = ("logits",)
    label = "task"
    metric_name = "Task loss (cross-entropy on the gold labels)"
    citation = "Hinton, Vinyals and Dean (2015): the hard-label term"
    fields = ("alpha_task",)
    always_evaluated = True
    students = (TOKEN_CLASSIFICATION, SEQUENCE_CLASSIFICATION)
    default_weight = 1.0
    card_rank = 20

    def per_row(self, student, teacher, rows, args, plan) -> PerRow:
        return PerRow(mlm_loss_rows(student.logits, rows.labels), rows.positions)

    def _weight(self, args) -> float:
        return self.default_weight if args.alpha_task is None else args.alpha_task

    def describe(self, args, context):
        if context.task == MASKED_LM or self._weight(args) <= 0:
            return None
        return (f"the student's cross-entropy on the gold labels (weight {weight_text(self._weight(args))})",
                f"{weight_text(self._weight(args))} · CE")

    def note(self, args, context) -> str:
        if context.task != MASKED_LM and self._weight(args) == 0:
            return (" The gold labels were not part of the loss (alpha_task = 0): the student learned the task from"
                    " the teacher's label distributions alone.")
        return ""


TERM = TaskLoss()
