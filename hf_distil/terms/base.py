"""What a loss term is: the `Term` interface every module of this package implements, and the row types it uses.

A term declares what it reads (signals of the student and of the teacher, at which layers), checks that it can
compare the two models, computes one loss value per row from the pure functions of hf_distil.losses, and says how
the card and the plot name it. The objective (hf_distil.objective) sums, normalises and weighs what the terms in
the registry (hf_distil.terms) return; nothing else in the package needs to know a term by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.utils.checkpoint

if TYPE_CHECKING:
    from ..signals import Signals

# The row sets a term's values are summed over (its denominator is the set's size), in the order of every
# row-count vector: P the KL positions (masked, or every non-padding one with kd_positions="all"), M the masked (or
# labelled) positions, N the non-padding positions.
ROW_SETS = ("P", "M", "N")


@dataclass
class Rows:
    """The "select rows" step: a micro-batch's row sets and the rows whose logits the heads compute."""

    sets: dict[str, torch.Tensor]  # "P" / "M" / "N" -> (batch, length) bool
    positions: torch.Tensor  # (rows,) long: flat indices into batch × length, increasing within each example
    labels: torch.Tensor  # (rows,) long: the labels at `positions` (-100 where not masked)
    # (rows,) bool, or None when every row is one: False at the rows that only pad the collator's ROW_POSITIONS to
    # a static size (they point at a real position, so the heads compute them; terms weigh them 0, see `real`)
    valid: torch.Tensor | None = None

    def real(self, values: torch.Tensor) -> torch.Tensor:
        """Per-row `values` with the padding rows zeroed (a term over the selected rows whose value at a row with
        label -100 is not already 0, e.g. the KL)."""
        return values if self.valid is None else values * self.valid

    def counts(self) -> torch.Tensor:
        """(3,) long: the sizes of P, M, N in this micro-batch."""
        return torch.stack([self.sets[name].sum() for name in ROW_SETS])


@dataclass
class PerRow:
    """A term's loss value per row and the flat position (into batch × length) of each row."""

    values: torch.Tensor  # (rows,) float32
    flat: torch.Tensor  # (rows,) long


@dataclass(frozen=True)
class LayerPlan:
    """The layers each side exposes to the layer terms, resolved for one student and one teacher
    (hf_distil.layer_map.plan_layers)."""

    layer_pairs: tuple[tuple[int, int], ...]  # (student layer, teacher layer) of layer_map; () when no term uses it
    term_layers: dict = field(default_factory=dict)  # term name -> the layers it chose itself (Term.plan)

    @property
    def hidden_pairs(self) -> tuple[tuple[int, int], ...]:
        """(student hidden state, teacher hidden state): the embedding outputs, then each mapped layer's output."""
        return ((0, 0),) + tuple((s + 1, t + 1) for s, t in self.layer_pairs)


@dataclass(frozen=True)
class Reads:
    """The signals (hf_distil.signals.SIGNALS) one model must expose to a term, and at which layers: hidden-state
    indices for "hidden_states" (0 the embedding output, i + 1 the output of layer i), layer indices for "qk" and
    "qkv"."""

    signals: tuple[str, ...] = ()
    layers: dict[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class CardContext:
    """What a term's card text may depend on besides the arguments."""

    task: str  # hf_distil.families.model_task of the student (masked-LM when unknown)
    plan: LayerPlan | None  # the layers the layer terms compare
    projected: bool  # whether the student trained learned projections (widths differ)


class Term:
    """One weighted term of the objective. Subclasses set the class attributes and implement `per_row`."""

    name: ClassVar[str]  # logged as `{name}_loss`, evaluated as `eval_{name}_loss`
    weight: ClassVar[str]  # the DistillationArguments field weighting it (its default weight when None: see below)
    rows: ClassVar[str]  # "P" / "M" / "N": the row set its values are summed over; its size is the denominator
    student_reads: ClassVar[tuple[str, ...]]  # signal names it reads from the student
    teacher_reads: ClassVar[tuple[str, ...]] = ()  # ... and from the teacher; none: it needs no teacher
    label: ClassVar[str]  # short name in the plot and the card's last-log line
    metric_name: ClassVar[str]  # the card's metrics table
    citation: ClassVar[str] = ""  # where the term comes from
    # The arguments of this term (its weight and options), shown in the card's hyperparameters
    fields: ClassVar[tuple[str, ...]] = ()
    always_evaluated: ClassVar[bool] = False  # also scored in evaluation at weight 0 (it must cost no extra capture)
    students: ClassVar[tuple[str | None, ...] | None] = None  # the students whose objective has it; None: all
    default_weight: ClassVar[float | None] = None  # the weight when the field is None (unset)
    uses_layer_map: ClassVar[bool] = False  # compares the layer pairs of `layer_map`
    trains_mlm_head: ClassVar[bool] = False  # its gradient reaches a masked-LM student's prediction head
    card_rank: ClassVar[int] = 50  # order in the card's formula, metrics table and plot

    @property
    def needs_teacher(self) -> bool:
        return bool(self.teacher_reads)

    def __repr__(self) -> str:
        return f"<term {self.name} ({self.weight})>"

    # ---- arguments and models, before any compute

    def validate(self, args) -> None:
        """Check this term's options in DistillationArguments (raise ArgumentError naming the field)."""

    def check(self, student, teacher, args, plan: LayerPlan | None) -> None:
        """Check, with this term weighted, that it can compare these two models (raise ModelMismatchError)."""

    def plan(self, args, student_layers: int, teacher_layers: int) -> dict:
        """Layers this term chooses itself (not from layer_map), by name; stored in LayerPlan.term_layers."""
        return {}

    def prepare(self, student, teacher, args, plan: LayerPlan | None) -> None:
        """Attach what the student needs to train this term (learned projections), before Trainer wraps it."""

    # ---- the loss

    def reads(self, plan: LayerPlan | None) -> tuple[Reads, Reads]:
        """(student, teacher) signals and layers under `plan`."""
        return Reads(self.student_reads), Reads(self.teacher_reads)

    def per_row(self, student: Signals, teacher: Signals | None, rows: Rows, args, plan: LayerPlan | None) -> PerRow:
        """The term's value at each of its rows (from a pure function of hf_distil.losses)."""
        raise NotImplementedError

    def extra_metrics(self, value: float) -> dict[str, float]:
        """Evaluation metrics this term's mean value gives (a masked LM's perplexity); none by default."""
        return {}

    # ---- the card

    def describe(self, args, context: CardContext) -> tuple[str, str] | None:
        """(the procedure's description of this term with its weight, its part of the formula), or None."""
        return None

    def note(self, args, context: CardContext) -> str:
        """A sentence the card adds after the formula (e.g. what a weight of 0 meant); empty for none."""
        return ""


def weight_text(x) -> str:
    """How the card writes a weight or a temperature: 5 -> '5.0'."""
    return str(float(x))


def every_position(values: torch.Tensor, rows: Rows) -> PerRow:
    """A value at every position of the batch, padding zeroed: no boolean indexing, so no host sync."""
    flat_non_pad = rows.sets["N"].reshape(-1)
    return PerRow(torch.where(flat_non_pad, values, torch.zeros_like(values)),
                  torch.arange(flat_non_pad.numel(), device=flat_non_pad.device))


def by_query_row(maps: torch.Tensor) -> torch.Tensor:
    """(batch, heads, length, keys) → (batch · length, heads, keys): one row per query position."""
    batch, heads, length, keys = maps.shape
    return maps.transpose(1, 2).reshape(batch * length, heads, keys)


# Recompute each pair's (batch, heads, length, length) maps in the backward pass instead of keeping them from the
# forward: the attention / relation terms then hold the small query/key/value tensors only (see bench_step's
# ours_attention lever). False keeps the maps (the reference the tests compare against).
RECOMPUTE_MAPS = True


def recomputed(fn, *tensors):
    """fn(*tensors), with its intermediates recomputed in backward when a gradient will flow through it."""
    if RECOMPUTE_MAPS and torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return torch.utils.checkpoint.checkpoint(fn, *tensors, use_reentrant=False)
    return fn(*tensors)
