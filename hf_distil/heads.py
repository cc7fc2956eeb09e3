"""Where the parts a loss term reads live inside a transformers model, per architecture.

hf_distil.signals hooks these modules to capture what the terms need in one forward; this module only finds them,
looking through the wrappers that training adds (DDP, DeepSpeed, FSDP-1, peft): the MLM head, the embedding module
(its output is hidden state 0), the encoder layers (layer i's output is hidden state i + 1) and, inside a layer, the
query / key / value projections of its self-attention with their head count.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

# Attribute names of the MLM head in transformers' masked-LM classes whose forward is
# `logits = head(encoder_output)`: BERT-likes (`cls`), RoBERTa-likes and many others (`lm_head`).
_HEAD_ATTRIBUTES = ("cls", "lm_head")

# Where an encoder keeps its parts, from the base model (`model.<base_model_prefix>`): the embedding module, the list
# of layers, and, inside one layer, the self-attention module with `query`/`key`/`value` linear projections.
# BERT and RoBERTa (and their clinical/biomedical checkpoints) share this layout.
_LAYOUT = {"embeddings": "embeddings", "layers": "encoder.layer", "self_attention": "attention.self"}


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


# What a model's head predicts, from its transformers class name (`BertForTokenClassification` → ...): a masked LM
# predicts a token per position, a token classifier a label per token, a sequence classifier a label per example.
MASKED_LM = "masked-lm"
TOKEN_CLASSIFICATION = "token-classification"
SEQUENCE_CLASSIFICATION = "sequence-classification"
TASK_HEADS = {"ForMaskedLM": MASKED_LM, "ForTokenClassification": TOKEN_CLASSIFICATION,
              "ForSequenceClassification": SEQUENCE_CLASSIFICATION}


def task_of_classes(names) -> str | None:
    """The task the first of these transformers class names (e.g. a config's `architectures`) predicts, from its
    suffix; None when none names one."""
    return next((task for name in names or () for suffix, task in TASK_HEADS.items()
                 if isinstance(name, str) and name.endswith(suffix)), None)


def model_task(model: nn.Module) -> str | None:
    """MASKED_LM, TOKEN_CLASSIFICATION or SEQUENCE_CLASSIFICATION, from the class of the model inside any wrapper;
    None for any other class (a bare encoder, a causal LM, ...)."""
    return task_of_classes([type(unwrap(model)).__name__])


def find_mlm_head(model: nn.Module) -> nn.Module | None:
    """The head module mapping the last hidden state to vocabulary logits, or None when unknown (and for a task
    model, whose classifier is small enough to apply everywhere)."""
    inner = unwrap(model)
    if model_task(inner) not in (MASKED_LM, None):
        return None
    for name in _HEAD_ATTRIBUTES:
        head = getattr(inner, name, None)
        if isinstance(head, nn.Module):
            return head
    return None


def _attribute_path(root: nn.Module, path: str):
    for part in path.split("."):
        root = getattr(root, part, None)
        if root is None:
            return None
    return root


def _base(model: nn.Module) -> nn.Module:
    inner = unwrap(model)
    return getattr(inner, getattr(inner, "base_model_prefix", ""), None) or inner


def encoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The model's list of transformer layers (BERT/RoBERTa: `<base>.encoder.layer`), or None when unknown."""
    layers = _attribute_path(_base(model), _LAYOUT["layers"])
    return layers if isinstance(layers, nn.ModuleList) else None


def embedding_module(model: nn.Module) -> nn.Module | None:
    """The module whose output is hidden state 0 (the embedding output), or None when unknown."""
    module = _attribute_path(_base(model), _LAYOUT["embeddings"])
    return module if isinstance(module, nn.Module) else None


@dataclass(frozen=True)
class SelfAttention:
    """The self-attention projections of one layer: Linear(hidden → heads · head size) each."""

    query: nn.Module
    key: nn.Module
    value: nn.Module
    num_heads: int


def self_attention(layer: nn.Module) -> SelfAttention | None:
    """The query/key/value projections and head count of one encoder layer, or None when unknown."""
    module = _attribute_path(layer, _LAYOUT["self_attention"])
    parts = [getattr(module, name, None) for name in ("query", "key", "value")] if module is not None else []
    heads = getattr(module, "num_attention_heads", None)
    if len(parts) != 3 or not all(isinstance(p, nn.Module) for p in parts) or not isinstance(heads, int):
        return None
    return SelfAttention(*parts, num_heads=heads)
