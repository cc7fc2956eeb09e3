"""What each model exposes to the loss terms, captured in ONE forward per model.

A loss term reads *signals* (the logits at the selected rows, the last hidden state; next, hidden states of mapped
layers and attention queries/keys/values), not model outputs. `capture` calls the model as usual, so the forward
hooks of DDP / DeepSpeed / FSDP still fire, and takes what a `CaptureSpec` asks for with forward hooks on its modules
(found by hf_distil.heads): no second forward, and no `output_attentions=True`, which would force eager attention.

The MLM head (hidden → vocabulary) is the largest matrix product of a BERT step and its logits the largest tensors,
yet only the ~15 % masked positions need them: a forward pre-hook on the head gathers the selected rows first, so the
model returns logits of shape (rows, vocab). Architectures whose head we do not know fall back to the full forward
and select the rows afterwards (the reference the sparse path must match); so does nn.DataParallel, whose replicas
would share the hook's captures and see only their slice of the batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .heads import find_mlm_head

# The signals a term may read (Term.student_reads / Term.teacher_reads name fields of `Signals`).
SIGNALS = ("logits", "last_hidden_state")


@dataclass(frozen=True)
class CaptureSpec:
    """What to capture from one model's forward; the logits at the selected rows always come back."""

    last_hidden_state: bool = False

    @classmethod
    def reading(cls, names: Iterable[str]) -> CaptureSpec:
        """The spec that captures every signal in `names` (the union of what the terms in use read)."""
        names = set(names)
        unknown = names.difference(SIGNALS)
        if unknown:
            raise ValueError(f"Unknown signal(s) {sorted(unknown)}; hf_distil.signals captures {list(SIGNALS)}.")
        return cls(last_hidden_state="last_hidden_state" in names)


@dataclass
class Signals:
    """What one forward of one model exposed to the loss terms."""

    logits: torch.Tensor  # (rows, vocab): logits at the selected positions only
    last_hidden_state: torch.Tensor | None = None  # (batch, length, hidden) when the spec asks for it


def _model_inputs(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k not in ("labels", "special_tokens_mask")}


def capture(model: nn.Module, inputs: dict, positions: torch.Tensor, spec: CaptureSpec,
            sparse: bool = True) -> Signals:
    """Forward `model` once on `inputs`; the logits at `positions` and what `spec` asks for.

    positions: (rows,) long, flat indices into batch × length (the rows whose logits the terms read)
    With `sparse=False`, for nn.DataParallel, or for an unknown architecture, the full logits are computed and the
    rows selected afterwards.
    """
    sparse = sparse and not isinstance(model, nn.DataParallel)
    head = find_mlm_head(model) if sparse else None

    if head is None:
        out = model(**_model_inputs(inputs), output_hidden_states=spec.last_hidden_state, return_dict=True)
        logits = out.logits.reshape(-1, out.logits.shape[-1]).index_select(0, positions)
        return Signals(logits, out.hidden_states[-1] if spec.last_hidden_state else None)

    captured: dict[str, torch.Tensor] = {}

    def gather_rows(module, args, kwargs):
        hidden = args[0]
        if spec.last_hidden_state:
            captured["last_hidden_state"] = hidden
        rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
        return (rows, *args[1:]), kwargs

    hooks = [head.register_forward_pre_hook(gather_rows, with_kwargs=True)]
    try:
        out = model(**_model_inputs(inputs), return_dict=True)
    finally:
        for hook in hooks:
            hook.remove()
    return Signals(out.logits, captured.get("last_hidden_state"))
