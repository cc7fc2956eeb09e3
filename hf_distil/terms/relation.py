"""MiniLM v2's multi-head self-attention relation distillation (Wang et al. 2021, §3.1).

The student's last layer against the teacher's `relation_teacher_layer`: for each of queries, keys and values, both
split into `relation_heads` heads whatever the models' own head counts, the relation softmax(x_h · x_hᵀ / √d_h)
over the non-padding keys, and per position KL(teacher ‖ student) summed over the keys, averaged over the relation
heads; summed over Q-Q, K-K and V-V.
"""

from __future__ import annotations

import math

from ..errors import ArgumentError, ModelMismatchError
from ..families import self_attention, unwrap
from ..losses import relation_kl_rows, scaled_dot_log_probs
from .base import PerRow, Reads, Term, by_query_row, every_position, recomputed, weight_text


class SelfAttentionRelations(Term):
    name = "relation"
    weight = "alpha_relation"
    rows = "N"
    student_reads = ("qkv",)
    teacher_reads = ("qkv",)
    label = "relation"
    metric_name = "Self-attention relation loss"
    citation = ("Wang et al. (2021), MiniLMv2: Multi-Head Self-Attention Relation Distillation for Compressing "
                "Pretrained Transformers")
    fields = ("alpha_relation", "relation_teacher_layer", "relation_heads")
    card_rank = 60

    def validate(self, args) -> None:
        if not isinstance(args.relation_heads, int) or args.relation_heads < 1:
            raise ArgumentError(f"relation_heads={args.relation_heads!r} must be a positive integer (e.g. 12).")
        if not isinstance(args.relation_teacher_layer, int):
            raise ArgumentError(
                f"relation_teacher_layer={args.relation_teacher_layer!r} must be a layer index (-1: the last)."
            )

    def plan(self, args, student_layers: int, teacher_layers: int) -> dict:
        """The student's last layer and the teacher's relation layer (−1: its last)."""
        layer = args.relation_teacher_layer
        resolved = layer if layer >= 0 else teacher_layers + layer
        if not 0 <= resolved < teacher_layers:
            raise ModelMismatchError(
                f"relation_teacher_layer={layer}: the teacher has layers 0..{teacher_layers - 1} (−1 is its last)."
            )
        return {"pair": (student_layers - 1, resolved)}

    def check(self, student, teacher, args, plan) -> None:
        s_layer, t_layer = plan.term_layers[self.name]["pair"]
        for model, side, layer in ((student, "student", s_layer), (teacher, "teacher", t_layer)):
            if self_attention(model, layer) is None:
                raise ModelMismatchError(
                    f"The {side}'s layer(s) [{layer}] have no self-attention query/key/value projections where "
                    "hf_distil looks for them: set alpha_relation to 0."
                )
        s_width, t_width = unwrap(student).config.hidden_size, unwrap(teacher).config.hidden_size
        bad = [f"the {side}'s width {width}" for side, width in (("student", s_width), ("teacher", t_width))
               if width % args.relation_heads]
        if bad:
            common = math.gcd(s_width, t_width)
            examples = [d for d in (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64) if common % d == 0][-3:]
            raise ModelMismatchError(
                f"relation_heads={args.relation_heads} does not divide {' and '.join(bad)}: choose a divisor of "
                f"{common}, e.g. {', '.join(map(str, examples))}."
            )

    def reads(self, plan):
        s_layer, t_layer = plan.term_layers[self.name]["pair"]
        return Reads(("qkv",), {"qkv": (s_layer,)}), Reads(("qkv",), {"qkv": (t_layer,)})

    def per_row(self, student, teacher, rows, args, plan) -> PerRow:
        """Σ over Q-Q, K-K, V-V of the relation KL per position, with `relation_heads` heads on each side."""
        keys = rows.sets["N"]
        s_layer, t_layer = plan.term_layers[self.name]["pair"]

        def relation_loss(s, t):
            s_rel = scaled_dot_log_probs(s, s, args.relation_heads, keys)
            t_rel = scaled_dot_log_probs(t, t, args.relation_heads, keys)
            return relation_kl_rows(by_query_row(s_rel), by_query_row(t_rel))

        values = 0
        for s, t in zip(student.qkv[s_layer], teacher.qkv[t_layer], strict=True):
            values = values + recomputed(relation_loss, s, t)
        return every_position(values, rows)

    def describe(self, args, context):
        s, t = context.plan.term_layers[self.name]["pair"]
        return (f"MiniLM v2 self-attention relation distillation: the KL divergence between the teacher's and"
                f" the student's query-query, key-key and value-value relations with {args.relation_heads}"
                f" relation heads, student layer {s} against teacher layer {t} (weight"
                f" {weight_text(args.alpha_relation)})", f"{weight_text(args.alpha_relation)} · relation")


TERM = SelfAttentionRelations()
