"""Shared pieces of the per-term tests: a term's value on given tensors, as the objective computes it (the term's
per-row values summed and divided by its row set's size), and random fixed inputs."""

from types import SimpleNamespace

import torch

from hf_distil.layer_map import LayerPlan
from hf_distil.objective import normalise, row_sets
from hf_distil.signals import Signals
from hf_distil.terms import Rows, by_name


def arguments(**kw):
    """The argument fields the terms read (a namespace: the terms need no Trainer)."""
    base = dict(temperature=2.0, kd_positions="masked", hidden_loss="cosine", attention_loss="scores",
                intermediate_loss="mse", relation_heads=2, alpha_kd=1.0, alpha_mlm=1.0, alpha_task=1.0,
                alpha_hidden=1.0, alpha_attention=1.0, alpha_intermediate=1.0, alpha_relation=1.0)
    return SimpleNamespace(**{**base, **kw})


def rows_of(labels: torch.Tensor, attention_mask: torch.Tensor, kd_positions: str = "masked",
            selected: str = "P") -> Rows:
    """The row sets of a batch, and its selected rows (P or M) as positions and labels."""
    inputs = {"labels": labels, "attention_mask": attention_mask, "input_ids": torch.zeros_like(attention_mask)}
    sets = row_sets(inputs, kd_positions)
    positions = sets[selected].reshape(-1).nonzero().squeeze(1)
    grid = labels if labels.dim() == 2 else torch.full_like(attention_mask, -100).index_put_(
        (torch.arange(len(labels)), torch.zeros(len(labels), dtype=torch.long)), labels)
    return Rows(sets, positions, grid.reshape(-1)[positions])


def term_value(name: str, student: Signals, teacher: Signals | None, rows: Rows, args,
               plan: LayerPlan | None = None) -> torch.Tensor:
    """What the objective logs as `{name}_loss` for one batch: Σ per-row values / |its row set|."""
    term = by_name(name)
    per_row = term.per_row(student, teacher, rows, args, plan)
    return normalise({name: per_row.values.sum()}, rows.counts())[name]


def padded_mask(lengths, length):
    return (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).long()
