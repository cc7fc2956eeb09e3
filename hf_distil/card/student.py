"""What the card says about the student itself: its architecture, how it was initialised (copied teacher layers,
a checkpoint, or a random narrower model; ModernBERT's attention kinds), and any peft adapter on it."""

from __future__ import annotations

from ..families import GLOBAL, MASKED_LM, attention_kinds, config_value, task_of_classes

STRATEGY_NAMES = {
    "every_other": "every other layer",
    "distilbert": "DistilBERT's choice",
    "custom": "a custom selection",
}

def _ratio(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.2f}".rstrip("0").rstrip(".")



def adapter_of(model) -> tuple[str | None, int]:
    """(description of the peft adapter on `model`, its trainable parameter count), or (None, 0) without one."""
    if not (hasattr(model, "peft_config") and hasattr(model, "get_base_model")):
        return None, 0
    active = getattr(model, "active_adapters", None) or list(model.peft_config)
    config = model.peft_config[active[0]]
    kind = getattr(config.peft_type, "value", str(config.peft_type))
    if kind == "LORA":
        targets = config.target_modules
        targets = ", ".join(sorted(targets)) if isinstance(targets, (set, list, tuple)) else str(targets)
        description = f"LoRA adapter (rank {config.r}, alpha {config.lora_alpha}, on {targets})"
    else:
        description = f"{kind} adapter"
    trainable, _ = model.get_nb_trainable_parameters()
    return description, trainable


def _ffn_size(config):
    for name in ("intermediate_size", "hidden_dim", "ffn_dim"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    return None


def architecture_text(config, n_params: int) -> str:
    hidden, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    embedding = getattr(config, "embedding_size", None) or hidden
    if embedding == hidden:
        text = f"In this model, the size of the hidden dimension and the embedding layer are both set to {hidden}."
    else:
        text = f"In this model, the hidden dimension is {hidden} and the embedding size is {embedding}."
    text += f" The vocabulary size is {vocab}. The number of transformer layers is {layers}"
    heads = getattr(config, "num_attention_heads", None)
    if heads:
        text += f", each with {heads} attention heads"
    ffn = _ffn_size(config)
    if ffn:
        text += f", and the expansion rate of the feed-forward layer is {_ratio(ffn / hidden)} ({ffn} units)"
    millions = n_params / 1e6
    size = f"{millions:.1f}" if millions >= 1 else f"{millions:.3g}"
    return text + f". Overall this model has around {size} million parameters ({n_params:,} in total)."


def initialisation_text(config, teacher: str) -> str:
    layers = getattr(config, "distil_teacher_layers", None)
    strategy = getattr(config, "distil_layer_strategy", None)
    if getattr(config, "distil_init", None) == "random":
        shape = getattr(config, "distil_teacher_shape", None) or {}
        differs = ", ".join(f"{name.replace('_', ' ')} {config_value(config, name)} (teacher {shape[name]})"
                            for name in ("hidden_size", "intermediate_size", "num_attention_heads")
                            if name in shape and shape[name] != config_value(config, name))
        return (
            f"The student is narrower than {teacher} ({differs}), so no teacher weights fit it: it was randomly"
            " initialised (the teacher's architecture family and vocabulary, no copied weights) and learned from"
            " the teacher only through the training loss, as in TinyBERT's general distillation."
            f"{_attention_kinds_text(config)}"
        )
    if getattr(config, "distil_init", None) == "checkpoint":
        start = getattr(config, "distil_start_checkpoint", None)
        classifier = task_of_classes(getattr(config, "architectures", None)) not in (MASKED_LM, None)
        head = (" with a new classification head for the teacher's labels;" if classifier else ",")
        return (
            f"The student started from the existing checkpoint `{start}` (for example a general-distilled student),"
            f"{head} no weights were copied from {teacher}.{_attention_kinds_text(config, copied=False)}"
        )
    if not layers:
        return (
            "The student's config does not record which teacher layers initialised it (for example, it was"
            " started from an existing checkpoint rather than built from the teacher), so this card cannot say."
        )
    how = f" ({STRATEGY_NAMES.get(strategy, strategy)})" if strategy else ""
    classifier = task_of_classes(getattr(config, "architectures", None)) not in (MASKED_LM, None)
    head = "classification head (and labels)" if classifier else "masked-LM head"
    return (
        f"The student was initialised from {teacher}: its {len(layers)} transformer layers were copied from"
        f" the teacher's layers {', '.join(str(i) for i in layers)}{how}, counting from 0, and the embeddings"
        f" and {head} were copied whole.{_attention_kinds_text(config, layers)}"
    )


def _attention_kinds_text(config, teacher_layers=None, copied: bool = True) -> str:
    """For a family whose layers attend globally or within a local window (ModernBERT): which kind each student
    layer has (and which teacher layer it came from, when copied); empty for the others."""
    kinds = attention_kinds(config)
    if kinds is None:
        return ""
    window = getattr(config, "sliding_window", None)
    local = f"local, a window of ±{window} tokens" if window else "local"
    layers = [f"{i} ← teacher layer {teacher_layers[i]} ({'global' if kind == GLOBAL else local})"
              if teacher_layers else f"{i} ({'global' if kind == GLOBAL else local})" for i, kind in enumerate(kinds)]
    if not teacher_layers:
        return (" Its layers attend globally (over the whole sequence) or locally (within a window), following the"
                f" teacher's pattern{'' if copied else ' as the checkpoint has it'}: layer {'; '.join(layers)}.")
    text = (" Each layer keeps the attention kind it was trained with (global attention over the whole sequence,"
            f" or local attention within a window): student layer {'; '.join(layers)}.")
    if teacher_layers[0] != 0:
        text += (" The first layer of this architecture has no attention pre-norm, so student layer 0 was copied"
                 f" from teacher layer {teacher_layers[0]} without that norm's weights.")
    if 0 in teacher_layers[1:]:
        text += (f" Student layer {teacher_layers.index(0)} was copied from teacher layer 0, which has no attention"
                 " pre-norm: that norm started from its initialisation (weights 1).")
    return text
