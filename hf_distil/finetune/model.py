"""The model to fine-tune: a token- or sequence-classification head on a masked-LM checkpoint, LoRA-wrapped if asked."""

from __future__ import annotations

import torch

from .arguments import FinetuneArguments

# Attention query/value projection names by family, tried when peft knows no default for the model type.
_QV_CANDIDATES = (("query", "value"), ("q_lin", "v_lin"), ("q_proj", "v_proj"), ("Wqkv",), ("qkv",))


def head_module_names(model) -> list[str]:
    """Top-level modules outside the backbone that hold weights (e.g. ['classifier']): the task head."""
    prefix = getattr(model, "base_model_prefix", "")
    return [
        name for name, module in model.named_children()
        if name != prefix and any(True for _ in module.parameters())
    ]


def default_lora_target_modules(model) -> list[str]:
    """The attention query/value projections: peft's default for the model type, else found by name."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

    model_type = getattr(model.config, "model_type", None)
    if model_type in defaults:
        return list(defaults[model_type])
    leaf_names = {
        name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)
    }
    for candidate in _QV_CANDIDATES:
        if set(candidate) <= leaf_names:
            return list(candidate)
    raise ValueError(
        f"no default LoRA target modules for model type {model_type!r}; pass --lora_target_modules "
        "with the names of its attention projections."
    )


def apply_lora(model, task: str, r: int = 8, alpha: int = 16, dropout: float = 0.1,
               target_modules: list[str] | None = None):
    """Wrap ``model`` with peft LoRA on ``target_modules``; the classification head is trained fully."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.TOKEN_CLS if task == "ner" else TaskType.SEQ_CLS,
        r=r, lora_alpha=alpha, lora_dropout=dropout,
        target_modules=list(target_modules) if target_modules else default_lora_target_modules(model),
        modules_to_save=head_module_names(model),
    )
    return get_peft_model(model, config)


def build_model(model_name_or_path: str, task: str, label_list: list[str], args: FinetuneArguments | None = None):
    """Token- or sequence-classification model from a (masked-LM) checkpoint, LoRA-wrapped if asked.

    Always float32 weights, whatever dtype the checkpoint was saved in: an optimizer on float16 weights rounds small
    updates away. Mixed precision is --bf16/--fp16 (autocast over float32 master weights), as in distillation.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    auto = AutoModelForTokenClassification if task == "ner" else AutoModelForSequenceClassification
    model = auto.from_pretrained(
        model_name_or_path,
        num_labels=len(label_list),
        id2label=dict(enumerate(label_list)),
        label2id={label: i for i, label in enumerate(label_list)},
        ignore_mismatched_sizes=True,  # a checkpoint that already has a head with other labels
        dtype=torch.float32,  # not "auto": a checkpoint saved in float16 would train in float16
    )
    if args is not None and args.use_lora:
        model = apply_lora(model, task, args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_target_modules)
    return model

