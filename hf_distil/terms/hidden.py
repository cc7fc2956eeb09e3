"""DistilBERT's L_cos (Sanh et al. 2019): align the student's last hidden state with the teacher's.

hidden = mean over the non-padding positions of 1 − cos(h_s, h_t) ("cosine"), or of the squared error averaged
over the features ("mse").
"""

from __future__ import annotations

from ..errors import ArgumentError, ModelMismatchError
from ..families import unwrap
from ..losses import hidden_loss_rows
from .base import PerRow, Term, every_position, weight_text

HIDDEN_LOSSES = ("cosine", "mse")


class HiddenAlignment(Term):
    name = "hidden"
    weight = "alpha_hidden"
    rows = "N"
    student_reads = ("last_hidden_state",)
    teacher_reads = ("last_hidden_state",)
    label = "hidden"
    metric_name = "Hidden-state alignment loss"
    citation = "Sanh et al. (2019), DistilBERT, a distilled version of BERT: the cosine embedding loss"
    fields = ("alpha_hidden", "hidden_loss")
    card_rank = 30

    def validate(self, args) -> None:
        if args.hidden_loss not in HIDDEN_LOSSES:
            raise ArgumentError(f"hidden_loss={args.hidden_loss!r} is not supported; choose one of "
                                f"{', '.join(map(repr, HIDDEN_LOSSES))}.")

    def check(self, student, teacher, args, plan) -> None:
        s_width, t_width = unwrap(student).config.hidden_size, unwrap(teacher).config.hidden_size
        if s_width != t_width:
            raise ModelMismatchError(
                f"alpha_hidden > 0 aligns last hidden states, but the teacher's hidden size is {t_width} and the "
                f"student's {s_width}: set alpha_hidden=0 (alpha_intermediate projects between widths) or use a "
                "student of the same width."
            )

    def per_row(self, student, teacher, rows, args, plan) -> PerRow:
        width = student.last_hidden_state.shape[-1]
        values = hidden_loss_rows(student.last_hidden_state.reshape(-1, width),
                                  teacher.last_hidden_state.reshape(-1, width), args.hidden_loss)
        return every_position(values, rows)

    def describe(self, args, context):
        kind = "cosine alignment" if args.hidden_loss == "cosine" else "mean-squared-error alignment"
        return (f"a {kind} of the last hidden states (weight {weight_text(args.alpha_hidden)})",
                f"{weight_text(args.alpha_hidden)} · hidden")


TERM = HiddenAlignment()
