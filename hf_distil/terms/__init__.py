"""The loss terms of the objective: one module each, and the registry (its order is the order of the logged terms,
of the loss sum and of every per-term vector).

Adding a term = one module with a `Term` subclass (what it reads, its checks, its per-row loss, its card text) and
its weight field (and options) in DistillationArguments; `register` it. The objective, the argument validation, the
layer plan, the logs, the card's formula and procedure, its metrics table and the loss plot iterate the registry.
"""

from __future__ import annotations

from ..families import MASKED_LM
from . import attention, hidden, intermediate, kd, mlm, relation, task
from .base import ROW_SETS, CardContext, PerRow, Reads, Rows, Term

__all__ = ["ROW_SETS", "CardContext", "PerRow", "Reads", "Rows", "Term", "active_terms", "applies_to", "by_name",
           "card_ordered", "names", "register", "registered", "unregister", "weight_of"]

_REGISTRY: list[Term] = [kd.TERM, mlm.TERM, hidden.TERM, attention.TERM, intermediate.TERM, relation.TERM, task.TERM]


def register(term: Term) -> Term:
    """Add a term at the end of the registry (a second term of the same name is refused)."""
    if any(t.name == term.name for t in _REGISTRY):
        raise ValueError(f"A term named {term.name!r} is already registered.")
    _REGISTRY.append(term)
    return term


def unregister(name: str) -> None:
    _REGISTRY[:] = [t for t in _REGISTRY if t.name != name]


def registered() -> tuple[Term, ...]:
    return tuple(_REGISTRY)


def names() -> tuple[str, ...]:
    return tuple(t.name for t in _REGISTRY)


def by_name(name: str) -> Term:
    for term in _REGISTRY:
        if term.name == name:
            return term
    raise KeyError(name)


def card_ordered(terms=None) -> tuple[Term, ...]:
    """Terms in the order the card and the plot show them (the teacher's outputs, the student's own loss, then the
    alignments)."""
    return tuple(sorted(_REGISTRY if terms is None else terms, key=lambda t: t.card_rank))


def weight_of(args, name: str) -> float:
    """A term's weight in `args` (its default where unset; 0 where the arguments lack its field)."""
    term = by_name(name)
    value = getattr(args, term.weight, 0.0)
    return term.default_weight if value is None else value


def applies_to(term: Term, student_task: str | None) -> bool:
    """Whether `term` is part of the objective of a student of this kind (hf_distil.families.model_task)."""
    return term.students is None or student_task in term.students


def active_terms(args, has_teacher: bool, evaluating: bool, student_task: str | None = MASKED_LM) -> tuple[Term, ...]:
    """The terms a micro-batch computes: training only weighted ones; evaluation also the always-evaluated ones.

    A term that needs the teacher is never computed without one, nor one that is not the student's (`applies_to`).
    """
    return tuple(term for term in _REGISTRY
                 if (weight_of(args, term.name) > 0 or (evaluating and term.always_evaluated))
                 and (has_teacher or not term.needs_teacher) and applies_to(term, student_task))
