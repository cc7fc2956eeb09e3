"""TinyBERT's embedding-layer and hidden-state distillation (Jiao et al. 2020, eqs. 8-9): MSE(h_s · W_h, h_t).

The embedding outputs (hidden state 0) and each layer_map pair's outputs (hidden states s + 1 and t + 1), per
non-padding position the squared error averaged over the teacher's features, through a learned Linear(student width
→ teacher width) per compared hidden state when the widths differ (hf_distil.projections); or 1 − cos for equal
widths ("cosine"). Summed over the hidden-state pairs.
"""

from __future__ import annotations

from torch import nn

from ..errors import ArgumentError, ModelMismatchError
from ..families import embedding_module, unwrap
from ..losses import hidden_loss_rows
from ..projections import attach_projections
from .base import PerRow, Reads, Term, every_position, weight_text

INTERMEDIATE_LOSSES = ("mse", "cosine")


class IntermediateStates(Term):
    name = "intermediate"
    weight = "alpha_intermediate"
    rows = "N"
    student_reads = ("hidden_states",)
    teacher_reads = ("hidden_states",)
    label = "intermediate"
    metric_name = "Intermediate hidden-state loss"
    citation = "Jiao et al. (2020), TinyBERT: Distilling BERT for Natural Language Understanding, eqs. 8-9"
    fields = ("alpha_intermediate", "intermediate_loss", "layer_map")
    uses_layer_map = True
    card_rank = 50

    def validate(self, args) -> None:
        if args.intermediate_loss not in INTERMEDIATE_LOSSES:
            raise ArgumentError(f"intermediate_loss={args.intermediate_loss!r} is not supported; choose one of "
                                "'cosine', 'mse'.")

    def check(self, student, teacher, args, plan) -> None:
        s_cfg, t_cfg = unwrap(student).config, unwrap(teacher).config
        for model, cfg, side in ((student, s_cfg, "student"), (teacher, t_cfg, "teacher")):
            module = embedding_module(model)
            # Narrower embeddings count only when a projection to the layers' width is what hf_distil hooks (ELECTRA)
            embedding = getattr(cfg, "embedding_size", None) or cfg.hidden_size
            if module is None or (embedding != cfg.hidden_size and not isinstance(module, nn.Linear)):
                raise ModelMismatchError(
                    f"The intermediate term compares the embedding outputs (hidden state 0), but the {side}'s are "
                    f"{embedding} wide, not its hidden size {cfg.hidden_size}, or not where hf_distil looks: set "
                    "alpha_intermediate to 0 for this model."
                )
        if args.intermediate_loss == "cosine" and s_cfg.hidden_size != t_cfg.hidden_size:
            raise ModelMismatchError(
                f"intermediate_loss='cosine' needs equal widths, but the student is {s_cfg.hidden_size} wide and the "
                f"teacher {t_cfg.hidden_size}: use intermediate_loss='mse' (through a learned projection)."
            )

    def prepare(self, student, teacher, args, plan) -> None:
        """Learned projections between the widths, attached before Trainer places and wraps the student (so the
        optimizer, DDP and every checkpoint hold them)."""
        s_width, t_width = unwrap(student).config.hidden_size, unwrap(teacher).config.hidden_size
        if s_width == t_width:
            return
        if unwrap(student) is not student:
            raise ArgumentError(
                f"alpha_intermediate between widths {s_width} and {t_width} trains projections beside the student, "
                f"which a {type(student).__name__} (e.g. peft) would not save in its checkpoints: distil a plain "
                "student, or set alpha_intermediate=0."
            )
        attach_projections(student, [s for s, _ in plan.hidden_pairs], s_width, t_width, args.seed)

    def reads(self, plan):
        return (Reads(("hidden_states",), {"hidden_states": tuple(s for s, _ in plan.hidden_pairs)}),
                Reads(("hidden_states",), {"hidden_states": tuple(t for _, t in plan.hidden_pairs)}))

    def per_row(self, student, teacher, rows, args, plan) -> PerRow:
        """Σ over the hidden-state pairs of the per-position loss (the student's states already projected)."""
        values = 0
        for s_index, t_index in plan.hidden_pairs:
            s, t = student.hidden_states[s_index], teacher.hidden_states[t_index]
            values = values + hidden_loss_rows(s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1]),
                                               args.intermediate_loss)
        return every_position(values, rows)

    def describe(self, args, context):
        kind = "mean squared error" if args.intermediate_loss == "mse" else "cosine distance"
        states = ", ".join(f"{s}↔{t}" for s, t in context.plan.hidden_pairs)
        through = (" through learned linear projections from the student's width to the teacher's, one per hidden"
                   " state (trained with the student, not part of this model)" if context.projected else "")
        return (f"the {kind} of student↔teacher hidden states {states} (0 is the embedding output, i the"
                f" output of layer i − 1){through} (weight {weight_text(args.alpha_intermediate)})",
                f"{weight_text(args.alpha_intermediate)} · intermediate")


TERM = IntermediateStates()
