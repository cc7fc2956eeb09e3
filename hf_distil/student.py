"""`create_student`: a shallower copy of a masked-LM teacher, initialised from chosen teacher layers."""

from __future__ import annotations

import contextlib
import copy
import logging

import torch
from torch import nn
from transformers import PreTrainedModel

from .errors import ModelMismatchError
from .families import (
    attention_kinds,
    config_value,
    encoder_layers,
    family_of,
    known_families,
    layer_prefix,
    set_config_value,
)

logger = logging.getLogger("hf_distil")

# DistilBERT's choice for a 12 → 6 layer student (Sanh et al. research code).
_DISTILBERT_LAYERS = (0, 2, 4, 7, 9, 11)


def select_teacher_layers(num_teacher_layers: int, num_hidden_layers: int, layers) -> list[int]:
    """Teacher layer indices for each student layer, per strategy name or explicit list."""
    if not isinstance(num_hidden_layers, int) or num_hidden_layers < 1:
        raise ModelMismatchError(f"num_hidden_layers={num_hidden_layers!r} must be a positive integer.")
    if num_hidden_layers > num_teacher_layers:
        raise ModelMismatchError(
            f"num_hidden_layers={num_hidden_layers} is deeper than the teacher ({num_teacher_layers} layers); "
            f"choose at most {num_teacher_layers}."
        )
    if layers == "every_other":
        chosen = [2 * i + 1 for i in range(num_hidden_layers)]
        if chosen[-1] >= num_teacher_layers:
            raise ModelMismatchError(
                f"layers='every_other' needs a teacher of at least {2 * num_hidden_layers} layers for "
                f"{num_hidden_layers} student layers (teacher has {num_teacher_layers}); pass fewer layers or a list."
            )
        return chosen
    if layers == "distilbert":
        if (num_teacher_layers, num_hidden_layers) != (12, 6):
            raise ModelMismatchError(
                "layers='distilbert' (teacher layers 0, 2, 4, 7, 9, 11) is defined for a 12-layer teacher and a "
                f"6-layer student, not {num_teacher_layers} → {num_hidden_layers}; use 'every_other' or a list."
            )
        return list(_DISTILBERT_LAYERS)
    if isinstance(layers, str):
        raise ModelMismatchError(
            f"layers={layers!r} is not supported; use 'every_other', 'distilbert' or a list of teacher layer indices."
        )
    chosen = [int(i) for i in layers]
    if len(chosen) != num_hidden_layers:
        raise ModelMismatchError(
            f"layers has {len(chosen)} indices {chosen} but num_hidden_layers={num_hidden_layers}."
        )
    bad = [i for i in chosen if not 0 <= i < num_teacher_layers]
    if bad:
        raise ModelMismatchError(f"layers {bad} are out of range: the teacher has layers 0..{num_teacher_layers - 1}.")
    if len(set(chosen)) != len(chosen):
        raise ModelMismatchError(f"layers {chosen} repeat an index; each student layer needs a distinct teacher layer.")
    return chosen


def _encoder_layers(model: nn.Module) -> nn.ModuleList:
    layers = encoder_layers(model)
    if layers is None:
        raise ModelMismatchError(
            f"create_student knows where {known_families()} keep their layers; {type(model).__name__} "
            f"(model_type {getattr(model.config, 'model_type', None)!r}) is none of them."
        )
    return layers


def _gathered(teacher: nn.Module, chosen: list[int]):
    """Under DeepSpeed ZeRO-3 (`from_pretrained` ran in `zero.Init`) each rank holds an empty slice of every teacher
    parameter: gather the ones the student copies (all but the unchosen layers) for the duration of the copy."""
    prefix = layer_prefix(teacher)
    params = [
        p for name, p in teacher.named_parameters()
        if hasattr(p, "ds_id") and (not name.startswith(prefix) or int(name[len(prefix):].split(".", 1)[0]) in chosen)
    ]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def layer_strategy_name(layers) -> str:
    return layers if isinstance(layers, str) else "custom"


# The width settings a narrower student may change; any change means a randomly initialised student.
WIDTH_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads")


def create_student(teacher: PreTrainedModel, num_hidden_layers: int = 6, layers="every_other", *,
                   hidden_size: int | None = None, intermediate_size: int | None = None,
                   num_attention_heads: int | None = None, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A new model of the teacher's class with `num_hidden_layers` layers copied from the chosen teacher layers.

    Embeddings and the whole MLM head are copied too; weights the teacher ties stay tied in the student.
    The chosen indices are recorded as `config.distil_teacher_layers` for the model card. The student is built in
    `dtype` (float32: the master weights that mixed precision needs) whatever the teacher's dtype.

    A narrower student (`hidden_size`, `intermediate_size` or `num_attention_heads` other than the teacher's, as in
    TinyBERT's 4 × 312) cannot copy the teacher's weights: it is a fresh model of the teacher's class and vocabulary,
    randomly initialised (config.distil_init = "random", and the card says so); `layers` is then not used.
    """
    teacher_layers = _encoder_layers(teacher)
    widths = {"hidden_size": hidden_size, "intermediate_size": intermediate_size,
              "num_attention_heads": num_attention_heads}
    changed = {name: value for name, value in widths.items()
               if value is not None and value != config_value(teacher.config, name)}
    if changed:
        return _random_student(teacher, num_hidden_layers, len(teacher_layers), changed, dtype)
    chosen = select_teacher_layers(len(teacher_layers), num_hidden_layers, layers)

    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = num_hidden_layers
    kinds = attention_kinds(teacher.config)
    if kinds is not None:  # each copied layer keeps the attention kind (global / local window) it was trained with
        config.layer_types = [teacher.config.layer_types[i] for i in chosen]
    config.distil_teacher_layers = chosen
    config.distil_layer_strategy = layer_strategy_name(layers)
    config.distil_init = "teacher_layers"
    student = type(teacher)(config)
    student.to(dtype=dtype)  # float32 master weights whatever the teacher's dtype; --bf16/--fp16 autocast them

    student_layers = _encoder_layers(student)
    prefix = layer_prefix(teacher)
    with _gathered(teacher, chosen):
        state = {}
        for name, value in teacher.state_dict().items():
            if name.startswith(prefix):
                index, rest = name[len(prefix) :].split(".", 1)
                if int(index) in chosen:
                    state[f"{prefix}{chosen.index(int(index))}.{rest}"] = value
            else:
                state[name] = value
        missing, unexpected = student.load_state_dict(state, strict=False)
    # A family whose layer 0 lacks some parameters (ModernBERT: no attention pre-norm) leaves them at their
    # initialisation when a student layer > 0 comes from teacher layer 0, and drops them when student layer 0 comes
    # from a later teacher layer (said here and on the card); the rest must match exactly.
    not_in_first = family_of(teacher).not_in_first_layer
    optional = tuple(f"{prefix}{i}.{name}" for i in range(num_hidden_layers) for name in not_in_first)
    names = ", ".join(name.rstrip(".") for name in not_in_first)
    if not_in_first and chosen[0] != 0:
        logger.warning("Student layer 0 is copied from teacher layer %d without its %s: the first layer of %s has "
                       "none.", chosen[0], names, family_of(teacher).name)
    if not_in_first and 0 in chosen[1:]:
        logger.warning("Student layer %d is copied from teacher layer 0, which has no %s: the student's starts from "
                       "its initialisation.", chosen.index(0), names)
    missing = [name for name in missing if not name.startswith(optional)]
    unexpected = [name for name in unexpected if not name.startswith(optional)]
    if unexpected or missing:
        raise RuntimeError(f"create_student could not copy all weights: missing {missing}, unexpected {unexpected}.")
    assert len(student_layers) == num_hidden_layers
    student.tie_weights()
    student.train(teacher.training)
    return student


def _repeat_pattern(types: list, depth: int) -> list:
    """`types` (one per teacher layer) continued to `depth` layers by its period: the shortest prefix it repeats."""
    period = next(p for p in range(1, len(types) + 1) if all(t == types[i % p] for i, t in enumerate(types)))
    return [types[i % period] for i in range(depth)]


def _random_student(teacher: PreTrainedModel, num_hidden_layers: int, num_teacher_layers: int, changed: dict,
                    dtype: torch.dtype) -> PreTrainedModel:
    """A randomly initialised model of the teacher's class with the teacher's vocabulary and the changed widths."""
    if not isinstance(num_hidden_layers, int) or num_hidden_layers < 1:
        raise ModelMismatchError(f"num_hidden_layers={num_hidden_layers!r} must be a positive integer.")
    bad = {name: value for name, value in changed.items() if not isinstance(value, int) or value < 1}
    if bad:
        raise ModelMismatchError(f"{', '.join(f'{k}={v!r}' for k, v in bad.items())}: widths and head counts must be "
                                 "positive integers.")
    config = copy.deepcopy(teacher.config)
    for name, value in changed.items():
        set_config_value(config, name, value)
    if config.hidden_size % config.num_attention_heads:
        raise ModelMismatchError(
            f"hidden_size={config.hidden_size} is not divisible by num_attention_heads={config.num_attention_heads}: "
            f"choose a head count that divides the width (e.g. 12 for 312 or 384)."
        )
    config.num_hidden_layers = num_hidden_layers
    if attention_kinds(teacher.config) is not None:  # the teacher's repeating pattern, continued to this depth
        config.layer_types = _repeat_pattern(teacher.config.layer_types, num_hidden_layers)
    if getattr(config, "pooler_hidden_size", None) == teacher.config.hidden_size:  # DeBERTa's pooler follows the width
        config.pooler_hidden_size = config.hidden_size
    config.distil_teacher_layers = None
    config.distil_layer_strategy = None
    config.distil_init = "random"
    config.distil_teacher_shape = {"num_hidden_layers": num_teacher_layers,
                                   **{name: config_value(teacher.config, name) for name in WIDTH_FIELDS}}
    student = type(teacher)(config)
    student.to(dtype=dtype)
    student.train(teacher.training)
    return student
