"""The distillation objective: the steps from a micro-batch to its loss, over the terms of hf_distil.terms.

A micro-batch goes: select rows → forward pair → per-term sums → normalise → weight (DistillationTrainer runs
these steps, and does the forward pair itself, since it owns the models). The registry (hf_distil.terms) knows each
term: its name (logged as `{name}_loss`, evaluated as `eval_{name}_loss`), its weight field in
DistillationArguments, its row set (whose count is its denominator), what it reads from each model, and its loss per
row. Everything here (which rows the heads compute, what each model captures, whether the teacher runs, the
evaluation metrics) is derived from it.

Row sets, as (batch, length) bool masks, and their counts (the denominators):
  P  the KL positions (the masked ones, or every non-padding one with kd_positions="all")
  M  the masked positions (labels != -100)
  N  the non-padding positions

Task students (hf_distil.families.model_task) use the same row sets: a token classifier's labelled tokens are M (its
sub-tokens, special tokens and padding carry -100), and a sequence classifier's examples are rows too, each at its
first position (`label_grid` puts an example's label there), so every count, denominator and per-example statistic
below holds for the three kinds of student alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .collator import ROW_POSITIONS
from .errors import ArgumentError
from .families import MASKED_LM
from .signals import CaptureSpec, Signals
from .terms import ROW_SETS, PerRow, Rows, Term, active_terms, applies_to, by_name, names, registered, weight_of

if TYPE_CHECKING:
    from .arguments import DistillationArguments
    from .layer_map import LayerPlan


def capture_specs(terms: tuple[Term, ...], plan: LayerPlan | None = None) -> tuple[CaptureSpec, CaptureSpec | None]:
    """What the student and the teacher must capture for `terms` at the layers of `plan`; no teacher spec when no
    term needs the teacher."""
    reads = [term.reads(plan) for term in terms]
    student = CaptureSpec.reading(s for s, _ in reads)
    if not any(term.needs_teacher for term in terms):
        return student, None
    return student, CaptureSpec.reading(t for term, (_, t) in zip(terms, reads) if term.needs_teacher)


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

    Without a host sync in training where the batch allows it: the masked rows from the collator's ROW_POSITIONS
    (ReproducibleMLMCollator with positions_bucket), every row of a batch without padding; otherwise `nonzero`
    sizes the selected rows (one sync).
    """
    sets = row_sets(inputs, args.kd_positions)
    read = {term.rows for term in terms if "logits" in term.student_reads}
    grid = label_grid(inputs)
    if evaluating or "P" in read:
        chosen = "P"
    elif "M" in read:
        chosen = "M"
    else:
        return Rows(sets, grid.new_zeros(0), grid.new_zeros(0))
    if not evaluating and (chosen == "M" or args.kd_positions == "masked") and ROW_POSITIONS in inputs:
        local = inputs[ROW_POSITIONS]
        starts = torch.arange(local.shape[0], device=local.device).unsqueeze(1) * grid.shape[1]
        positions = (starts + local.clamp(min=0)).reshape(-1)
        valid = (local >= 0).reshape(-1)
        labels = grid.reshape(-1).index_select(0, positions).masked_fill(~valid, -100)
        return Rows(sets, positions, labels, valid)
    if chosen == "P" and args.kd_positions == "all" and inputs["labels"].dim() == 2 and "attention_mask" not in inputs:
        positions = torch.arange(grid.numel(), device=grid.device)  # no padding: every position is a row
    else:
        positions = sets[chosen].reshape(-1).nonzero().squeeze(1)
    return Rows(sets, positions, grid.reshape(-1).index_select(0, positions))


# ---- per-term sums → normalise → weight --------------------------------------------------------------------------

def per_row_losses(terms: tuple[Term, ...], student: Signals, teacher: Signals | None, rows: Rows,
                   args: DistillationArguments, plan: LayerPlan | None = None) -> dict[str, PerRow]:
    return {term.name: term.per_row(student, teacher, rows, args, plan) for term in terms}


def normalise(sums: dict[str, torch.Tensor], counts: torch.Tensor, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Each term's sum over its row set divided by that set's count (`counts`: (3,) in ROW_SETS order), × scale."""
    denominators = dict(zip(ROW_SETS, counts.unbind()))
    return {name: value / denominators[by_name(name).rows].clamp(min=1) * scale for name, value in sums.items()}


def weigh(terms: dict[str, torch.Tensor], args: DistillationArguments) -> torch.Tensor:
    """Σ weight · term over the terms with a weight > 0."""
    loss = sum(weight_of(args, name) * value for name, value in terms.items() if weight_of(args, name) > 0)
    if not torch.is_tensor(loss):  # no weighted term produced a value (cannot happen with valid arguments)
        raise RuntimeError(f"No loss term was computed; check {' / '.join(term.weight for term in registered())}.")
    return loss


# ---- evaluation statistics ---------------------------------------------------------------------------------------

def sums_dtype(device) -> torch.dtype:
    """The dtype of the streamed sums (evaluation, the non-finite watch): float64 where the device has it; Apple's
    MPS has none, so float32 there."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def eval_fields() -> tuple[str, ...]:
    """The per-example evaluation sums: each term's sum, each row set's size, correct top-1 and teacher-agreeing top-1
    on M."""
    return names() + ROW_SETS + ("correct", "agree")


def eval_stats(per_row: dict[str, PerRow], rows: Rows, student: Signals, teacher: Signals | None) -> torch.Tensor:
    """This batch's evaluation sums per example, packed as (batch, len(eval_fields())) in `sums_dtype` (float64 but
    on MPS) for one gather.

    Per example, so DDP evaluation can drop the duplicates that pad its last batch; `eval_metrics` reads them by name.
    """
    batch_size, length = rows.sets["M"].shape
    device = rows.sets["M"].device
    dtype = sums_dtype(device)

    def per_example(flat: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(batch_size, dtype=dtype, device=device).index_add_(0, flat // length, values)

    stats = {name: per_example(r.flat, r.values.detach().to(dtype)) for name, r in per_row.items()}
    stats.update({name: mask.sum(1).to(dtype) for name, mask in rows.sets.items()})
    is_masked = (rows.labels != -100).to(dtype)
    top1 = student.logits.argmax(-1)
    stats["correct"] = per_example(rows.positions, (top1 == rows.labels).to(dtype) * is_masked)
    if teacher is not None:
        stats["agree"] = per_example(rows.positions, (top1 == teacher.logits.argmax(-1)).to(dtype) * is_masked)
    zero = torch.zeros(batch_size, dtype=dtype, device=device)
    return torch.stack([stats.get(name, zero) for name in eval_fields()], dim=1)


def eval_metrics(sums: torch.Tensor, args: DistillationArguments, has_teacher: bool,
                 student_task: str | None = MASKED_LM) -> dict[str, float]:
    """Token-weighted means over the whole evaluation set from the summed `eval_stats` ((len(eval_fields()),)).

    `{term}_loss` for every term evaluated, their weighted total `loss`, `accuracy` of the student on the masked
    tokens (a task student: on the labelled tokens or examples) and a masked LM's `perplexity`, and, with a teacher,
    `teacher_agreement` (its top-1 agreement with the student's there).
    """
    s = dict(zip(eval_fields(), sums.tolist()))
    # The student's own terms first, then those against the teacher.
    terms = sorted(active_terms(args, has_teacher, evaluating=True, student_task=student_task),
                   key=lambda term: term.needs_teacher)
    metrics = {f"{term.name}_loss": s[term.name] / max(s[term.rows], 1) for term in terms}
    metrics["loss"] = sum(weight_of(args, term.name) * metrics[f"{term.name}_loss"] for term in terms
                          if weight_of(args, term.name) > 0)
    for term in terms:
        metrics.update(term.extra_metrics(metrics[f"{term.name}_loss"]))
    metrics["accuracy"] = s["correct"] / max(s["M"], 1)
    if has_teacher:
        metrics["teacher_agreement"] = s["agree"] / max(s["M"], 1)
    return metrics


# ---- the objective of one run, with its normalisation state ------------------------------------------------------

class Objective:
    """The objective of one run: which terms train a student of this kind (with or without a teacher), and the state
    that makes its normalisation exact, the row counts of the open accumulation window and the evaluation sums.

    In training, each micro-batch's per-term sums are divided by the row counts of the whole window (the micro-batches
    of one optimizer update, `open_window`), gathered over all ranks with `average_tokens_across_devices` and then
    × num_processes, since DDP averages the ranks' gradients. The micro-batch losses so add up to the mean over one
    batch of the window's total size: the loss is already scaled for gradient accumulation and ranks
    (`loss_is_scaled_for_ga`), and Trainer must not divide it again. Outside a window (evaluation, a lone
    compute_loss) a micro-batch is its own denominator.
    """

    loss_is_scaled_for_ga = True

    def __init__(self, args: DistillationArguments, student_task: str | None = MASKED_LM, has_teacher: bool = True,
                 plan: LayerPlan | None = None):
        self.args = args
        self.student_task = student_task
        self.has_teacher = has_teacher
        self.plan = plan
        self.window_counts: torch.Tensor | None = None  # (3,) in ROW_SETS order, while a window is open
        self.window_scale = 1.0
        self.eval_sums: torch.Tensor | None = None  # (len(eval_fields()),) sums, while an evaluation runs

    def terms(self, evaluating: bool = False) -> tuple[Term, ...]:
        return active_terms(self.args, self.has_teacher, evaluating, self.student_task)

    def training_weight(self, name: str) -> float:
        """A term's weight in training: 0 when it needs the absent teacher or is not this student's."""
        term = by_name(name)
        if (term.needs_teacher and not self.has_teacher) or not applies_to(term, self.student_task):
            return 0.0
        return weight_of(self.args, name)

    # ---- the accumulation window

    def open_window(self, batches: list[dict], device, gather=None, num_processes: int = 1) -> torch.Tensor:
        """Count P, M and N over the micro-batches of one optimizer update; `gather` (over ranks) is applied when
        the arguments average tokens across devices. Returns the window's counts."""
        counts = torch.zeros(len(ROW_SETS), dtype=torch.long, device=device)
        for batch in batches:
            counts += row_counts_of(row_sets(batch, self.args.kd_positions)).to(device)
        self.window_scale = 1.0
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            counts = gather(counts.unsqueeze(0)).sum(0)
            self.window_scale = float(num_processes)
        self.window_counts = counts
        return counts

    def close_window(self) -> None:
        self.window_counts = None

    def denominators(self, rows: Rows, training: bool, num_items_in_batch=None) -> tuple[torch.Tensor, float]:
        """(row counts (3,) in ROW_SETS order, scale): the counts each term's sum is divided by.

        In training within a window, the window's (see the class); otherwise this micro-batch's, with M (and P when
        it is M) taken from `num_items_in_batch` when given.
        """
        if training and self.window_counts is not None:
            return self.window_counts, self.window_scale
        counts = rows.counts()
        if num_items_in_batch is None:
            return counts, 1.0
        counts[ROW_SETS.index("M")] = num_items_in_batch
        if self.args.kd_positions == "masked":
            counts[ROW_SETS.index("P")] = num_items_in_batch
        return counts, 1.0

    # ---- one micro-batch

    def loss(self, inputs: dict, forward, training: bool, num_items_in_batch=None, want_stats: bool = False):
        """(loss, {term: value}, evaluation sums or None) of one micro-batch.

        select rows → forward pair → per-term sums → normalise → weigh. `forward(rows, terms)` runs the models once
        each and returns their (student, teacher or None) Signals (see `capture_specs`). Training computes the
        weighted terms; evaluation (`want_stats`) also the always-evaluated ones, so a run without teacher terms
        still reports its student against the teacher.
        """
        terms = self.terms(evaluating=want_stats)
        rows = select_rows(inputs, self.args, terms, evaluating=want_stats)
        student, teacher = forward(rows, terms)
        per_row = per_row_losses(terms, student, teacher, rows, self.args, self.plan)
        counts, scale = self.denominators(rows, training, num_items_in_batch)
        values = normalise({name: r.values.sum() for name, r in per_row.items()}, counts, scale)
        loss = weigh(values, self.args)
        stats = eval_stats(per_row, rows, student, teacher) if want_stats else None
        return loss, values, stats

    # ---- evaluation

    def reset_eval(self) -> None:
        self.eval_sums = None

    def add_eval(self, stats: torch.Tensor) -> None:
        """Add a batch's per-example evaluation sums ((batch, fields), gathered over ranks by the caller)."""
        stats = stats.sum(0)
        self.eval_sums = stats if self.eval_sums is None else self.eval_sums + stats

    def eval_metrics(self) -> dict[str, float] | None:
        """The evaluation's token-weighted metrics (`eval_metrics`), None when nothing was evaluated; resets."""
        if self.eval_sums is None:
            return None
        metrics = eval_metrics(self.eval_sums, self.args, self.has_teacher, self.student_task)
        self.eval_sums = None
        return metrics
