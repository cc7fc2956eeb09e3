"""The distillation objective: the registry of loss terms, and the steps from a micro-batch to its loss.

A micro-batch goes: select rows → forward pair → per-term sums → normalise → weight (DistillationTrainer runs
these steps, and does the forward pair itself, since it owns the models). `TERMS` is the one place that knows the
terms: a term's name (logged as `{name}_loss`, evaluated as `eval_{name}_loss`), its weight field in
DistillationArguments, its row set (whose count is its denominator), whether it needs the teacher, which signals it
reads, and how its pure loss function from hf_distil.losses is fed. Everything else (which rows the heads compute,
what each model captures, whether the teacher runs, logging, evaluation metrics, the non-finite watch) is derived
from it.

Row sets, as (batch, length) bool masks, and their counts (the denominators):
  P  the KL positions (the masked ones, or every non-padding one with kd_positions="all")
  M  the masked positions (labels != -100)
  N  the non-padding positions

Task students (hf_distil.heads.model_task) use the same row sets: a token classifier's labelled tokens are M (its
sub-tokens, special tokens and padding carry -100), and a sequence classifier's examples are rows too, each at its
first position (`label_grid` puts an example's label there), so every count, denominator and per-example statistic
below holds for the three kinds of student alike.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.utils.checkpoint

from .errors import ArgumentError
from .heads import MASKED_LM, SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION
from .losses import (
    hidden_loss_rows,
    kd_loss_rows,
    map_mse_rows,
    masked_scaled_dot_scores,
    mlm_loss_rows,
    relation_kl_rows,
    scaled_dot_log_probs,
    visible_key_counts,
)
from .signals import CaptureSpec, LayerSelection, Signals

if TYPE_CHECKING:
    from .arguments import DistillationArguments
    from .layer_map import LayerPlan

# The order of every row-count vector: (P, M, N).
ROW_SETS = ("P", "M", "N")


@dataclass
class Rows:
    """The "select rows" step: a micro-batch's row sets and the rows whose logits the heads compute."""

    sets: dict[str, torch.Tensor]  # "P" / "M" / "N" -> (batch, length) bool
    positions: torch.Tensor  # (rows,) long: flat indices into batch × length, increasing
    labels: torch.Tensor  # (rows,) long: the labels at `positions` (-100 where not masked)

    def counts(self) -> torch.Tensor:
        """(3,) long: the sizes of P, M, N in this micro-batch."""
        return row_counts_of(self.sets)


@dataclass
class PerRow:
    """A term's loss value per row and the flat position (into batch × length) of each row."""

    values: torch.Tensor  # (rows,) float32
    flat: torch.Tensor  # (rows,) long


@dataclass(frozen=True)
class Term:
    """One weighted term of the objective."""

    name: str  # logged as `{name}_loss`, evaluated as `eval_{name}_loss`
    weight: str  # the DistillationArguments field weighting it
    rows: str  # "P" / "M" / "N": the row set its values are summed over; its size is the denominator
    student_reads: tuple[str, ...]  # signals (hf_distil.signals.SIGNALS) it reads from the student
    teacher_reads: tuple[str, ...]  # ... and from the teacher; none: the term needs no teacher
    # (student signals, teacher signals or None, rows, arguments) -> its loss per row, from a hf_distil.losses function
    per_row: Callable[[Signals, Signals | None, Rows, DistillationArguments], PerRow]
    # Also scored in evaluation when weighted 0 (a baseline's report needs it; it must cost no extra capture).
    always_evaluated: bool = False
    # The students (hf_distil.heads.model_task) whose objective has this term; None: every student.
    students: tuple[str | None, ...] | None = None

    @property
    def needs_teacher(self) -> bool:
        return bool(self.teacher_reads)


def _kd(student: Signals, teacher: Signals, rows: Rows, args: DistillationArguments) -> PerRow:
    return PerRow(kd_loss_rows(student.logits, teacher.logits, args.temperature), rows.positions)


def _mlm(student: Signals, teacher: Signals | None, rows: Rows, args: DistillationArguments) -> PerRow:
    return PerRow(mlm_loss_rows(student.logits, rows.labels), rows.positions)


# The students of each supervised term: the masked-LM loss for masked LMs (and models of unknown class, as before
# task students existed), the cross-entropy on the gold labels for token and sequence classifiers.
MLM_STUDENTS = (MASKED_LM, None)
TASK_STUDENTS = (TOKEN_CLASSIFICATION, SEQUENCE_CLASSIFICATION)
# alpha_task when unset (None): a task student learns from its gold labels by default.
DEFAULT_TASK_WEIGHT = 1.0


def _every_position(values: torch.Tensor, rows: Rows) -> PerRow:
    """A value at every position of the batch, padding zeroed: no boolean indexing, so no host sync."""
    flat_non_pad = rows.sets["N"].reshape(-1)
    return PerRow(torch.where(flat_non_pad, values, torch.zeros_like(values)),
                  torch.arange(flat_non_pad.numel(), device=flat_non_pad.device))


def _hidden(student: Signals, teacher: Signals, rows: Rows, args: DistillationArguments) -> PerRow:
    width = student.last_hidden_state.shape[-1]
    values = hidden_loss_rows(student.last_hidden_state.reshape(-1, width),
                              teacher.last_hidden_state.reshape(-1, width), args.hidden_loss)
    return _every_position(values, rows)


def _intermediate(student: Signals, teacher: Signals, rows: Rows, args: DistillationArguments) -> PerRow:
    """Σ over the hidden-state pairs of the per-position loss (the student's states already projected)."""
    values = 0
    for s, t in zip(student.hidden_states, teacher.hidden_states, strict=True):
        values = values + hidden_loss_rows(s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1]),
                                           args.intermediate_loss)
    return _every_position(values, rows)


def _by_query_row(log_probs: torch.Tensor) -> torch.Tensor:
    """(batch, heads, length, keys) → (batch · length, heads, keys): one row per query position."""
    batch, heads, length, keys = log_probs.shape
    return log_probs.transpose(1, 2).reshape(batch * length, heads, keys)


# Recompute each pair's (batch, heads, length, length) maps in the backward pass instead of keeping them from the
# forward: the attention / relation terms then hold the small query/key/value tensors only (see bench_step's
# ours_attention lever). False keeps the maps (the reference the tests compare against).
RECOMPUTE_MAPS = True


def _recomputed(fn, *tensors):
    """fn(*tensors), with its intermediates recomputed in backward when a gradient will flow through it."""
    if RECOMPUTE_MAPS and torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return torch.utils.checkpoint.checkpoint(fn, *tensors, use_reentrant=False)
    return fn(*tensors)


def _attention(student: Signals, teacher: Signals, rows: Rows, args: DistillationArguments) -> PerRow:
    """Σ over the layer pairs of the attention-map loss per query position (padded keys, and keys outside a local
    layer's window, excluded): the MSE of the scaled scores with those keys at 0 ("scores", TinyBERT's code), the
    MSE of the probabilities ("probs") or KL(teacher ‖ student) of the probabilities ("kl")."""
    keys = rows.sets["N"]

    def pair_loss(s_q, s_k, t_q, t_k, window):
        if args.attention_loss == "scores":
            s = masked_scaled_dot_scores(s_q, s_k, student.attention_heads, keys, window)
            t = masked_scaled_dot_scores(t_q, t_k, teacher.attention_heads, keys, window)
            return map_mse_rows(_by_query_row(s), _by_query_row(t), visible_key_counts(keys, window).reshape(-1))
        s = scaled_dot_log_probs(s_q, s_k, student.attention_heads, keys, window)
        t = scaled_dot_log_probs(t_q, t_k, teacher.attention_heads, keys, window)
        if args.attention_loss == "kl":
            return relation_kl_rows(_by_query_row(s), _by_query_row(t))
        return map_mse_rows(_by_query_row(s).exp(), _by_query_row(t).exp(),
                            visible_key_counts(keys, window).reshape(-1))

    values = 0
    pairs = zip(student.attention_qk, teacher.attention_qk, student.attention_windows, teacher.attention_windows,
                strict=True)
    for (s_q, s_k), (t_q, t_k), s_window, t_window in pairs:
        # layer_map pairs layers of one kind (hf_distil.layer_map), so both windows are None or both local
        window = None if s_window is None or t_window is None else max(s_window, t_window)
        values = values + _recomputed(functools.partial(pair_loss, window=window), s_q, s_k, t_q, t_k)
    return _every_position(values, rows)


def _relation(student: Signals, teacher: Signals, rows: Rows, args: DistillationArguments) -> PerRow:
    """MiniLM v2: Σ over Q-Q, K-K, V-V of the relation KL per position, with `relation_heads` heads on each side."""
    keys = rows.sets["N"]

    def relation_loss(s, t):
        s_rel = scaled_dot_log_probs(s, s, args.relation_heads, keys)
        t_rel = scaled_dot_log_probs(t, t, args.relation_heads, keys)
        return relation_kl_rows(_by_query_row(s_rel), _by_query_row(t_rel))

    values = 0
    for s, t in zip(student.relation_qkv, teacher.relation_qkv, strict=True):
        values = values + _recomputed(relation_loss, s, t)
    return _every_position(values, rows)


# The order is the order of the logged terms, of the loss sum and of the non-finite bookkeeping vectors.
TERMS = (
    Term("kd", weight="alpha_kd", rows="P", student_reads=("logits",), teacher_reads=("logits",), per_row=_kd,
         always_evaluated=True),
    Term("mlm", weight="alpha_mlm", rows="M", student_reads=("logits",), teacher_reads=(), per_row=_mlm,
         always_evaluated=True, students=MLM_STUDENTS),
    Term("hidden", weight="alpha_hidden", rows="N", student_reads=("last_hidden_state",),
         teacher_reads=("last_hidden_state",), per_row=_hidden),
    Term("attention", weight="alpha_attention", rows="N", student_reads=("attention_qk",),
         teacher_reads=("attention_qk",), per_row=_attention),
    Term("intermediate", weight="alpha_intermediate", rows="N", student_reads=("hidden_states",),
         teacher_reads=("hidden_states",), per_row=_intermediate),
    Term("relation", weight="alpha_relation", rows="N", student_reads=("relation_qkv",),
         teacher_reads=("relation_qkv",), per_row=_relation),
    # A task student's own loss: the same cross-entropy, on the gold labels (per labelled token, or per example).
    Term("task", weight="alpha_task", rows="M", student_reads=("logits",), teacher_reads=(), per_row=_mlm,
         always_evaluated=True, students=TASK_STUDENTS),
)
# Terms that compare layers paired by `layer_map` (they need hf_distil.heads to know the layers of both models).
LAYER_TERMS = ("attention", "intermediate", "relation")
TERM_NAMES = tuple(term.name for term in TERMS)
BY_NAME = {term.name: term for term in TERMS}


def weight_of(args: DistillationArguments, name: str) -> float:
    value = getattr(args, BY_NAME[name].weight)
    return DEFAULT_TASK_WEIGHT if value is None and name == "task" else value


def applies_to(term: Term, student_task: str | None) -> bool:
    """Whether `term` is part of the objective of a student of this kind (hf_distil.heads.model_task)."""
    return term.students is None or student_task in term.students


def active_terms(args: DistillationArguments, has_teacher: bool, evaluating: bool,
                 student_task: str | None = MASKED_LM) -> tuple[Term, ...]:
    """The terms a micro-batch computes: training only weighted ones; evaluation also the always-evaluated ones.

    A term that needs the teacher is never computed without one, nor one that is not the student's (`applies_to`).
    """
    return tuple(term for term in TERMS
                 if (weight_of(args, term.name) > 0 or (evaluating and term.always_evaluated))
                 and (has_teacher or not term.needs_teacher) and applies_to(term, student_task))


def layer_selections(plan: LayerPlan | None) -> tuple[LayerSelection, LayerSelection]:
    """The layers the student and the teacher expose under `plan` (none without one)."""
    if plan is None:
        return LayerSelection(), LayerSelection()
    relation = plan.relation_pair or (None, None)
    return (
        LayerSelection(tuple(s for s, _ in plan.hidden_pairs), tuple(s for s, _ in plan.layer_pairs), relation[0]),
        LayerSelection(tuple(t for _, t in plan.hidden_pairs), tuple(t for _, t in plan.layer_pairs), relation[1]),
    )


def capture_specs(terms: tuple[Term, ...], plan: LayerPlan | None = None) -> tuple[CaptureSpec, CaptureSpec | None]:
    """What the student and the teacher must capture for `terms` at the layers of `plan`; no teacher spec when no
    term needs the teacher."""
    student_layers, teacher_layers = layer_selections(plan)
    student = CaptureSpec.reading((name for term in terms for name in term.student_reads), student_layers)
    if not any(term.needs_teacher for term in terms):
        return student, None
    return student, CaptureSpec.reading((name for term in terms for name in term.teacher_reads), teacher_layers)


# ---- select rows -------------------------------------------------------------------------------------------------

def label_grid(inputs: dict) -> torch.Tensor:
    """The batch's labels as (batch, length): as given for a masked LM or a token classifier; a sequence
    classifier's (batch,) labels at each example's first position, -100 elsewhere."""
    labels = inputs["labels"]
    if labels.is_floating_point() or (labels.dim() != 1 and labels.shape != inputs["input_ids"].shape):
        raise ArgumentError(
            f"labels of dtype {labels.dtype} and shape {tuple(labels.shape)} (input_ids "
            f"{tuple(inputs['input_ids'].shape)}): distillation takes class ids, one per example or one per token "
            "(-100 where none); regression and multi-label targets are not supported."
        )
    if labels.dim() != 1:
        return labels
    grid = torch.full_like(inputs["input_ids"], -100)
    grid[:, 0] = labels
    return grid


def row_sets(inputs: dict, kd_positions: str) -> dict[str, torch.Tensor]:
    """The P / M / N masks of a batch, each (batch, length) bool."""
    masked = label_grid(inputs) != -100
    attention = inputs.get("attention_mask")
    non_pad = attention.bool() if attention is not None else torch.ones_like(masked)
    if kd_positions == "masked":
        kd_rows = masked
    elif inputs["labels"].dim() == 1:  # a sequence classifier: every example, labelled or not
        kd_rows = torch.zeros_like(masked)
        kd_rows[:, 0] = True
    else:
        kd_rows = non_pad | masked
    return {"P": kd_rows, "M": masked, "N": non_pad}


def row_counts_of(sets: dict[str, torch.Tensor]) -> torch.Tensor:
    """(3,) long: the sizes of the row sets, in ROW_SETS order."""
    return torch.stack([sets[name].sum() for name in ROW_SETS])


def select_rows(inputs: dict, args: DistillationArguments, terms: tuple[Term, ...], evaluating: bool) -> Rows:
    """The row sets and the rows whose logits the heads compute: the union of the rows the logit-reading terms sum
    over (P ⊇ M, so P when any reads P). Evaluation always scores the student on P.

    The one host sync of a training step is here: `nonzero` sizes the selected rows.
    """
    sets = row_sets(inputs, args.kd_positions)
    read = {term.rows for term in terms if "logits" in term.student_reads}
    if evaluating or "P" in read:
        selected = sets["P"]
    elif "M" in read:
        selected = sets["M"]
    else:
        selected = torch.zeros_like(sets["M"])
    positions = selected.reshape(-1).nonzero().squeeze(1)
    labels = label_grid(inputs).reshape(-1).index_select(0, positions)
    return Rows(sets, positions, labels)


# ---- per-term sums → normalise → weight --------------------------------------------------------------------------

def per_row_losses(terms: tuple[Term, ...], student: Signals, teacher: Signals | None, rows: Rows,
                   args: DistillationArguments) -> dict[str, PerRow]:
    return {term.name: term.per_row(student, teacher, rows, args) for term in terms}


def normalise(sums: dict[str, torch.Tensor], counts: torch.Tensor, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Each term's sum over its row set divided by that set's count (`counts`: (3,) in ROW_SETS order), × scale."""
    denominators = dict(zip(ROW_SETS, counts.unbind()))
    return {name: value / denominators[BY_NAME[name].rows].clamp(min=1) * scale for name, value in sums.items()}


def weigh(terms: dict[str, torch.Tensor], args: DistillationArguments) -> torch.Tensor:
    """Σ weight · term over the terms with a weight > 0."""
    loss = sum(weight_of(args, name) * value for name, value in terms.items() if weight_of(args, name) > 0)
    if not torch.is_tensor(loss):  # no weighted term produced a value (cannot happen with valid arguments)
        raise RuntimeError(f"No loss term was computed; check {' / '.join(term.weight for term in TERMS)}.")
    return loss


# ---- evaluation statistics ---------------------------------------------------------------------------------------

# Per-example evaluation sums: each term's sum, each row set's size, correct top-1 and teacher-agreeing top-1 on M.
EVAL_FIELDS = TERM_NAMES + ROW_SETS + ("correct", "agree")


def eval_stats(per_row: dict[str, PerRow], rows: Rows, student: Signals, teacher: Signals | None) -> torch.Tensor:
    """This batch's evaluation sums per example, packed as (batch, len(EVAL_FIELDS)) float64 for one gather.

    Per example, so DDP evaluation can drop the duplicates that pad its last batch; `eval_metrics` reads them by name.
    """
    batch_size, length = rows.sets["M"].shape
    device = rows.sets["M"].device

    def per_example(flat: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(batch_size, dtype=torch.float64, device=device).index_add_(0, flat // length, values)

    stats = {name: per_example(r.flat, r.values.detach().double()) for name, r in per_row.items()}
    stats.update({name: mask.sum(1).double() for name, mask in rows.sets.items()})
    is_masked = (rows.labels != -100).double()
    top1 = student.logits.argmax(-1)
    stats["correct"] = per_example(rows.positions, (top1 == rows.labels).double() * is_masked)
    if teacher is not None:
        stats["agree"] = per_example(rows.positions, (top1 == teacher.logits.argmax(-1)).double() * is_masked)
    zero = torch.zeros(batch_size, dtype=torch.float64, device=device)
    return torch.stack([stats.get(name, zero) for name in EVAL_FIELDS], dim=1)


def eval_metrics(sums: torch.Tensor, args: DistillationArguments, has_teacher: bool,
                 student_task: str | None = MASKED_LM) -> dict[str, float]:
    """Token-weighted means over the whole evaluation set from the summed `eval_stats` ((len(EVAL_FIELDS),)).

    `{term}_loss` for every term evaluated, their weighted total `loss`, `accuracy` of the student on the masked
    tokens (a task student: on the labelled tokens or examples) and a masked LM's `perplexity`, and, with a teacher,
    `teacher_agreement` (its top-1 agreement with the student's there).
    """
    s = dict(zip(EVAL_FIELDS, sums.tolist()))
    # The student's own terms first, then those against the teacher.
    terms = sorted(active_terms(args, has_teacher, evaluating=True, student_task=student_task),
                   key=lambda term: term.needs_teacher)
    metrics = {f"{term.name}_loss": s[term.name] / max(s[term.rows], 1) for term in terms}
    metrics["loss"] = sum(weight_of(args, term.name) * metrics[f"{term.name}_loss"] for term in terms
                          if weight_of(args, term.name) > 0)
    if "mlm_loss" in metrics:
        metrics["perplexity"] = float(torch.exp(torch.tensor(min(metrics["mlm_loss"], 80.0))))
    metrics["accuracy"] = s["correct"] / max(s["M"], 1)
    if has_teacher:
        metrics["teacher_agreement"] = s["agree"] / max(s["M"], 1)
    return metrics
