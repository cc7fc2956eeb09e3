"""Counting a model's parameters: the one counter behind the model card and the fine-tuning report."""

from __future__ import annotations

from torch import nn

# Names of the weights peft injects (LoRA matrices, trained copies of the head), which are not the model's own.
ADAPTER_PARAMETER_NAMES = ("lora_", "modules_to_save.")


def count_parameters(model: nn.Module, exclude: tuple[str, ...] = ()) -> tuple[int, int]:
    """(trainable, total) numbers of unique parameters, leaving out those whose name contains any of `exclude`.

    Tied weights (e.g. the MLM decoder and the word embeddings) are counted once; a parameter that DeepSpeed ZeRO-3
    partitions across ranks counts its full size (`ds_numel`), not this rank's slice.
    """
    params = [p for name, p in model.named_parameters() if not any(part in name for part in exclude)]

    def size(p) -> int:
        return p.ds_numel if hasattr(p, "ds_numel") else p.numel()

    return sum(size(p) for p in params if p.requires_grad), sum(size(p) for p in params)
