"""Pure tensor functions for the distillation objective (no Trainer, no model: tensors in, tensors out).

Every function returns one value per row, shape `(rows,)`; the caller (hf_distil.objective) sums them and chooses
the denominator: the rows of this batch (a per-batch mean) or the rows of the whole accumulated (and, across ranks,
global) batch. A row is one token position: `rows` is however many positions the caller selected.
Every function computes in float32 whatever the inputs' dtype (bf16/fp16 teachers and autocast students).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)) per row, KL summed over the vocabulary.

    student_logits: (rows, vocab)
    teacher_logits: (rows, vocab), the same rows
    returns:        (rows,) float32
    """
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="none").sum(-1) * temperature**2


def mlm_loss_rows(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student's logits against the labels per row (rows labelled -100 give 0).

    student_logits: (rows, vocab)
    labels:         (rows,) long, token ids or -100
    returns:        (rows,) float32
    """
    return F.cross_entropy(student_logits.float(), labels, ignore_index=-100, reduction="none")


def hidden_loss_rows(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, kind: str) -> torch.Tensor:
    """Per row (token position): 1 - cos for "cosine", the mean squared error over the features for "mse".

    Averaged over rows these give mean(1 - cos) and the element-wise MSE.

    student_hidden: (rows, hidden)
    teacher_hidden: (rows, hidden), the same width (check_compatibility refuses others)
    returns:        (rows,) float32
    """
    s, t = student_hidden.float(), teacher_hidden.float()
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(s, t, dim=-1)
    if kind == "mse":
        return F.mse_loss(s, t, reduction="none").mean(dim=-1)
    raise ValueError(f"hidden_loss={kind!r} is not supported; choose 'cosine' or 'mse'.")
