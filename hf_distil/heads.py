"""Run a masked LM but apply its MLM head only at selected positions.

The LM head (hidden → vocabulary) is the largest matrix product of a BERT step and its logits the largest
tensors, yet only the ~15 % masked positions need them. Rather than calling sub-modules by hand (which would
bypass DDP / DeepSpeed / FSDP forward hooks), we call the model as usual and put a forward pre-hook on its head
that gathers the selected rows first. The model then returns logits of shape (rows, vocab).
Architectures whose head we do not know fall back to the full forward and select the rows afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Attribute names of the MLM head in transformers' masked-LM classes whose forward is
# `logits = head(encoder_output)`: BERT-likes (`cls`), RoBERTa-likes and many others (`lm_head`).
_HEAD_ATTRIBUTES = ("cls", "lm_head")


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP / DeepSpeed / FSDP-1 wrappers and peft's PeftModel."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "get_base_model") and callable(model.get_base_model):
            inner = model.get_base_model()
            if inner is model:
                return model
            model = inner
        else:
            return model


def find_mlm_head(model: nn.Module) -> nn.Module | None:
    """The head module mapping the last hidden state to vocabulary logits, or None when unknown."""
    inner = unwrap(model)
    for name in _HEAD_ATTRIBUTES:
        head = getattr(inner, name, None)
        if isinstance(head, nn.Module):
            return head
    return None


@dataclass
class MLMOutput:
    logits: torch.Tensor  # (rows, vocab): logits at the selected positions only
    last_hidden_state: torch.Tensor | None  # (batch, length, hidden) when requested


def _model_inputs(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k not in ("labels", "special_tokens_mask")}


def forward_selected(
    model: nn.Module,
    inputs: dict,
    flat_positions: torch.Tensor,
    need_hidden: bool,
    sparse: bool = True,
) -> MLMOutput:
    """Forward `model` on `inputs` and return logits at `flat_positions` (indices into batch × length).

    With `sparse=False`, or for an unknown architecture, the full logits are computed and the rows selected
    afterwards: the reference the sparse path must match.
    """
    head = find_mlm_head(model) if sparse else None
    captured: dict[str, torch.Tensor] = {}

    if head is None:
        out = model(**_model_inputs(inputs), output_hidden_states=need_hidden, return_dict=True)
        logits = out.logits.reshape(-1, out.logits.shape[-1]).index_select(0, flat_positions)
        hidden = out.hidden_states[-1] if need_hidden else None
        return MLMOutput(logits, hidden)

    def gather_rows(module, args, kwargs):
        hidden = args[0]
        if need_hidden:
            captured["hidden"] = hidden
        rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat_positions)
        return (rows, *args[1:]), kwargs

    handle = head.register_forward_pre_hook(gather_rows, with_kwargs=True)
    try:
        out = model(**_model_inputs(inputs), return_dict=True)
    finally:
        handle.remove()
    return MLMOutput(out.logits, captured.get("hidden"))
