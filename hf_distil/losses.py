"""Pure tensor functions for the distillation objective.

Every function returns a *sum* over the selected rows, so the caller decides the denominator: the rows of this
batch (a per-batch mean) or the rows of the whole accumulated (and, across ranks, global) batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss_sum(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · Σ_rows KL(softmax(t/T) ‖ softmax(s/T)), KL summed over the vocabulary; computed in float32."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="sum") * temperature**2


def mlm_loss_sum(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Σ_rows cross-entropy of the student's logits against the labels (rows labelled -100 count zero)."""
    return F.cross_entropy(student_logits.float(), labels, ignore_index=-100, reduction="sum")


def hidden_loss_sum(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, kind: str) -> torch.Tensor:
    """Σ over rows of (1 - cos) for "cosine", or of the per-row mean squared error for "mse".

    Rows are the token positions; dividing by their number gives mean(1 - cos) or the element-wise MSE.
    """
    s, t = student_hidden.float(), teacher_hidden.float()
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(s, t, dim=-1)).sum()
    if kind == "mse":
        return F.mse_loss(s, t, reduction="none").mean(dim=-1).sum()
    raise ValueError(f"hidden_loss={kind!r} is not supported; choose 'cosine' or 'mse'.")
