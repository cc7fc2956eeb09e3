"""Hinton et al. (2015), "Distilling the Knowledge in a Neural Network"; DistilBERT's L_ce (Sanh et al. 2019).

kd = T² · KL(softmax(t/T) ‖ softmax(s/T)) at each row of P (the masked positions, or every non-padding position
with kd_positions="all"; a task student's labelled tokens or examples), KL summed over the classes.
"""

from __future__ import annotations

import math

from ..errors import ArgumentError, ModelMismatchError
from ..families import MASKED_LM, SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION, model_task, unwrap
from ..losses import kd_loss_rows
from .base import PerRow, Term, weight_text

KD_POSITIONS = ("masked", "all")
# What the KL compares, per student task, and at which rows (the card's words).
COMPARED = {MASKED_LM: "masked-LM output distributions", TOKEN_CLASSIFICATION: "label distributions per token",
            SEQUENCE_CLASSIFICATION: "label distributions per example"}
ROWS_TEXT = {
    (MASKED_LM, "masked"): "on masked positions", (MASKED_LM, "all"): "on all non-padding positions",
    (TOKEN_CLASSIFICATION, "masked"): "on the labelled tokens (first sub-token of each word)",
    (TOKEN_CLASSIFICATION, "all"): "on all non-padding tokens",
    (SEQUENCE_CLASSIFICATION, "masked"): "on each labelled example",
    (SEQUENCE_CLASSIFICATION, "all"): "on each example",
}


class KnowledgeDistillation(Term):
    name = "kd"
    weight = "alpha_kd"
    rows = "P"
    student_reads = ("logits",)
    teacher_reads = ("logits",)
    label = "KD"
    metric_name = "KD loss (KL × T²)"
    citation = "Hinton, Vinyals and Dean (2015), Distilling the Knowledge in a Neural Network"
    fields = ("alpha_kd", "temperature", "kd_positions")
    always_evaluated = True
    trains_mlm_head = True
    card_rank = 0

    def validate(self, args) -> None:
        if not (math.isfinite(args.temperature) and args.temperature > 0):
            raise ArgumentError(
                f"temperature={args.temperature!r} must be a finite number > 0 (the seed recipe uses 2.0)."
            )
        if args.kd_positions not in KD_POSITIONS:
            raise ArgumentError(f"kd_positions={args.kd_positions!r} is not supported; choose one of "
                                f"{', '.join(map(repr, KD_POSITIONS))}.")

    def check(self, student, teacher, args, plan) -> None:
        if model_task(student) in (MASKED_LM, None) and unwrap(teacher).get_output_embeddings() is None:
            raise ModelMismatchError(
                f"The teacher ({type(unwrap(teacher)).__name__}) has no masked-LM head, so the KL term cannot be "
                "computed: load it with AutoModelForMaskedLM, or set alpha_kd=0."
            )

    def per_row(self, student, teacher, rows, args, plan) -> PerRow:
        return PerRow(rows.real(kd_loss_rows(student.logits, teacher.logits, args.temperature)), rows.positions)

    def describe(self, args, context):
        return (f"KL divergence between the teacher's and student's {COMPARED[context.task]} at temperature"
                f" {weight_text(args.temperature)} {ROWS_TEXT[context.task, args.kd_positions]} (weight"
                f" {weight_text(args.alpha_kd)})", f"{weight_text(args.alpha_kd)} · T² · KL")


TERM = KnowledgeDistillation()
