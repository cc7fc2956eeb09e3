"""TinyBERT's attention-based distillation (Jiao et al. 2020, §3.1): each layer_map pair's attention, head by head.

Per non-padding query row, the mean over heads of the squared difference of the two models' maps summed over the
keys the query attends to and divided by their number: of the scaled scores q·kᵀ/√d before the softmax with the
other keys at 0 ("scores": TinyBERT's released code, which sets the masked scores to 0; on an unpadded batch exactly
its MSELoss over batch × heads × queries × keys), or of the probabilities ("probs"); or KL(teacher ‖ student) of the
probabilities over the keys ("kl"). Summed over the pairs.
"""

from __future__ import annotations

import functools

from ..errors import ArgumentError, ModelMismatchError
from ..families import GLOBAL, attention_is_plain, attention_kinds, family_of, self_attention, unwrap
from ..losses import (
    map_mse_rows,
    masked_scaled_dot_scores,
    relation_kl_rows,
    scaled_dot_log_probs,
    visible_key_counts,
)
from .base import PerRow, Reads, Term, by_query_row, every_position, recomputed, weight_text

ATTENTION_LOSSES = ("scores", "probs", "kl")
KIND_TEXT = {"scores": "mean squared error of the scaled attention scores before the softmax (masked keys at 0,"
                       " TinyBERT's form)",
             "probs": "mean squared error of the attention probabilities",
             "kl": "KL divergence between the attention distributions"}


def _pairs_text(pairs) -> str:
    return ",".join(f"{s}:{t}" for s, t in pairs)


def _nearest_same_kind(s_kinds: list[str], t_kinds: list[str]) -> list[int] | None:
    """For each student layer, the teacher layer of its kind nearest to its uniform partner (the deeper on a tie);
    None when the teacher has no layer of some student layer's kind."""
    chosen = []
    for i, kind in enumerate(s_kinds):
        target = (i + 1) * len(t_kinds) // len(s_kinds) - 1
        same = [t for t, other in enumerate(t_kinds) if other == kind]
        if not same:
            return None
        chosen.append(min(same, key=lambda t: (abs(t - target), -t)))
    return chosen


def check_attention_kinds(pairs, s_cfg, t_cfg) -> None:
    """Global and local (sliding-window) attention layers spread their attention over different keys: comparing the
    maps of a local layer with a global one would push the student towards keys it cannot see."""
    s_kinds, t_kinds = attention_kinds(s_cfg), attention_kinds(t_cfg)
    if s_kinds is None and t_kinds is None:
        return
    # A family without local layers attends globally in every layer.
    s_kinds = s_kinds or [GLOBAL] * s_cfg.num_hidden_layers
    t_kinds = t_kinds or [GLOBAL] * t_cfg.num_hidden_layers
    mixed = [f"{s}:{t} ({s_kinds[s]}↔{t_kinds[t]})" for s, t in pairs if s_kinds[s] != t_kinds[t]]
    if mixed:
        copied = getattr(s_cfg, "distil_teacher_layers", None)
        if copied and len(copied) == len(s_kinds) and all(s_kinds[i] == t_kinds[t] for i, t in enumerate(copied)):
            hint = f', e.g. the layers the student was copied from: layer_map "{_pairs_text(enumerate(copied))}"'
        else:
            nearest = _nearest_same_kind(s_kinds, t_kinds)
            hint = f', e.g. layer_map "{_pairs_text(enumerate(nearest))}"' if nearest else ""
        raise ModelMismatchError(
            f"layer_map pairs attention layers of different kinds ({', '.join(mixed)}): the attention term compares "
            f"global with global and local with local layers; give a layer_map of same-kind pairs{hint}."
        )


class AttentionMaps(Term):
    name = "attention"
    weight = "alpha_attention"
    rows = "N"
    student_reads = ("qk",)
    teacher_reads = ("qk",)
    label = "attention"
    metric_name = "Attention-map loss"
    citation = "Jiao et al. (2020), TinyBERT: Distilling BERT for Natural Language Understanding, eq. 7"
    fields = ("alpha_attention", "attention_loss", "layer_map")
    uses_layer_map = True
    card_rank = 40

    def validate(self, args) -> None:
        if args.attention_loss == "mse":
            raise ArgumentError(
                "attention_loss='mse' was renamed: use 'probs' for the MSE of the attention probabilities (what 'mse' "
                "computed), or 'scores' for TinyBERT's own MSE of the pre-softmax scores."
            )
        if args.attention_loss not in ATTENTION_LOSSES:
            raise ArgumentError(f"attention_loss={args.attention_loss!r} is not supported; choose one of "
                                f"{', '.join(map(repr, ATTENTION_LOSSES))}.")

    def check(self, student, teacher, args, plan) -> None:
        for model, side, layers in ((student, "student", [s for s, _ in plan.layer_pairs]),
                                    (teacher, "teacher", [t for _, t in plan.layer_pairs])):
            missing = sorted({i for i in layers if self_attention(model, i) is None})
            if missing:
                raise ModelMismatchError(
                    f"The {side}'s layer(s) {missing} have no self-attention query/key/value projections where "
                    "hf_distil looks for them: set alpha_attention to 0."
                )
            if not attention_is_plain(model):
                family = family_of(model)
                raise ModelMismatchError(
                    f"The {side} ({family.name}, model_type {getattr(unwrap(model).config, 'model_type', None)!r}) "
                    f"{family.not_plain}, so the attention term cannot compare its attention maps: set "
                    "alpha_attention to 0 and use alpha_relation (MiniLM v2) or alpha_intermediate."
                )
        s_cfg, t_cfg = unwrap(student).config, unwrap(teacher).config
        check_attention_kinds(plan.layer_pairs, s_cfg, t_cfg)
        if args.attention_loss == "kl":
            narrower = [f"{s}:{t}" for s, t in plan.layer_pairs
                        if (self_attention(student, s).window or 0) < (self_attention(teacher, t).window or 0)]
            if narrower:
                raise ModelMismatchError(
                    f"attention_loss='kl' with layer pairs {', '.join(narrower)} whose student window is narrower "
                    "than the teacher's: the KL is infinite where the teacher attends beyond the student's window; "
                    "use attention_loss='scores' or 'probs'."
                )
        if s_cfg.num_attention_heads != t_cfg.num_attention_heads:
            raise ModelMismatchError(
                f"alpha_attention > 0 compares attention maps head by head, but the student's layers have "
                f"{s_cfg.num_attention_heads} attention head(s) and the teacher's {t_cfg.num_attention_heads}: build "
                f"the student with num_attention_heads={t_cfg.num_attention_heads}, or use alpha_relation "
                "(MiniLM v2), which frees the head count."
            )

    def reads(self, plan):
        return (Reads(("qk",), {"qk": tuple(s for s, _ in plan.layer_pairs)}),
                Reads(("qk",), {"qk": tuple(t for _, t in plan.layer_pairs)}))

    def per_row(self, student, teacher, rows, args, plan) -> PerRow:
        keys = rows.sets["N"]

        def pair_loss(s_q, s_k, t_q, t_k, s_window, t_window):
            # each model's own attention (its own window, in a local layer); the squared differences are averaged
            # over the keys either of them sees
            union = None if s_window is None or t_window is None else max(s_window, t_window)
            counts = visible_key_counts(keys, union).reshape(-1)
            if args.attention_loss == "scores":
                s = masked_scaled_dot_scores(s_q, s_k, student.heads, keys, s_window)
                t = masked_scaled_dot_scores(t_q, t_k, teacher.heads, keys, t_window)
                return map_mse_rows(by_query_row(s), by_query_row(t), counts)
            s = scaled_dot_log_probs(s_q, s_k, student.heads, keys, s_window)
            t = scaled_dot_log_probs(t_q, t_k, teacher.heads, keys, t_window)
            if args.attention_loss == "kl":
                return relation_kl_rows(by_query_row(s), by_query_row(t))
            return map_mse_rows(by_query_row(s).exp(), by_query_row(t).exp(), counts)

        values = 0
        for s_layer, t_layer in plan.layer_pairs:
            (s_q, s_k), (t_q, t_k) = student.qk[s_layer], teacher.qk[t_layer]
            pair = functools.partial(pair_loss, s_window=student.windows[s_layer], t_window=teacher.windows[t_layer])
            values = values + recomputed(pair, s_q, s_k, t_q, t_k)
        return every_position(values, rows)

    def describe(self, args, context):
        layers = ", ".join(f"{s}↔{t}" for s, t in context.plan.layer_pairs)
        return (f"the {KIND_TEXT[args.attention_loss]}, head by head, of student↔teacher layers {layers} (weight "
                f"{weight_text(args.alpha_attention)})", f"{weight_text(args.alpha_attention)} · attention")


TERM = AttentionMaps()
