"""Learned projections from the student's width to the teacher's, for the intermediate term (TinyBERT's W_h).

They are trainable but not part of the student's architecture. They are attached to the student as the submodule
`distil_projections` (one nn.Linear per compared hidden state, keyed by its index) so that everything `Trainer` does
with the model's parameters covers them without special cases: the optimizer, DDP gradient synchronisation,
DeepSpeed / FSDP sharding, every checkpoint (resume is bit-exact). They are applied inside the student's forward
(hf_distil.signals), and `DistillationTrainer.save_model` leaves them out of the final folder, which holds the
student alone.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .families import unwrap

ATTRIBUTE = "distil_projections"


def is_projection_key(name: str) -> bool:
    """Whether a state-dict key (or parameter name) belongs to the projections, at any wrapper depth."""
    return name.startswith(f"{ATTRIBUTE}.") or f".{ATTRIBUTE}." in name


def projections_of(model: nn.Module) -> nn.ModuleDict | None:
    return getattr(unwrap(model), ATTRIBUTE, None)


def attach_projections(student: nn.Module, indices, student_width: int, teacher_width: int,
                       seed: int) -> nn.ModuleDict:
    """Give the student one Linear(student_width → teacher_width) per hidden state it compares (`indices`).

    Initialised like nn.Linear (uniform in ±1/√student_width) from a generator seeded with `seed`, so two runs with
    the same seed start alike. Projections already attached with the same layout are kept (a second `train()`).
    """
    model = unwrap(student)
    wanted = [str(i) for i in indices]
    existing = getattr(model, ATTRIBUTE, None)
    if isinstance(existing, nn.ModuleDict) and list(existing.keys()) == wanted and all(
            tuple(existing[k].weight.shape) == (teacher_width, student_width) for k in wanted):
        return existing
    reference = next(model.parameters())
    generator = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(student_width)
    modules = nn.ModuleDict()
    for key in wanted:
        linear = nn.Linear(student_width, teacher_width)
        with torch.no_grad():
            linear.weight.copy_(torch.empty_like(linear.weight).uniform_(-bound, bound, generator=generator))
            linear.bias.copy_(torch.empty_like(linear.bias).uniform_(-bound, bound, generator=generator))
        modules[key] = linear
    modules.to(device=reference.device, dtype=torch.float32)
    setattr(model, ATTRIBUTE, modules)
    return modules


def without_projections(state_dict: dict) -> dict:
    return {k: v for k, v in state_dict.items() if not is_projection_key(k)}


def strip_projections_from_folder(folder: str) -> list[str]:
    """Rewrite a saved model's safetensors weights (one file or shards with their index) without the projections;
    returns the keys removed."""
    import json
    import os

    from safetensors import safe_open
    from safetensors.torch import save_file

    index_path = os.path.join(folder, "model.safetensors.index.json")
    index = None
    if os.path.isfile(index_path):
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
        files = sorted(set(index.get("weight_map", {}).values()))
    else:
        files = ["model.safetensors"]
    removed = []
    for name in files:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        with safe_open(path, framework="pt") as weights:
            keys = list(weights.keys())
            drop = [k for k in keys if is_projection_key(k)]
            if not drop:
                continue
            kept = {k: weights.get_tensor(k) for k in keys if k not in drop}
            metadata = weights.metadata() or {"format": "pt"}
        save_file(kept, path, metadata=metadata)
        removed += drop
    if index is not None and removed:
        index["weight_map"] = {k: v for k, v in index["weight_map"].items() if not is_projection_key(k)}
        with open(index_path, "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2)
    return removed
