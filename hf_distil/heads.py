"""Where the parts a loss term reads live inside a transformers model, per architecture.

hf_distil.signals hooks these modules to capture what the terms need in one forward; this module only finds them,
looking through the wrappers that training adds (DDP, DeepSpeed, FSDP-1, peft). Today: the MLM head.
"""

from __future__ import annotations

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
