"""Pure tensor functions for the distillation objective (no Trainer, no model: tensors in, tensors out).

Every function returns one value per row, shape `(rows,)`; the caller (hf_distil.objective) sums them and chooses
the denominator: the rows of this batch (a per-batch mean) or the rows of the whole accumulated (and, across ranks,
global) batch. A row is one token position (or, for a sequence classifier's logits, one example): `rows` is however
many the caller selected.
Every function computes in float32 whatever the inputs' dtype (bf16/fp16 teachers and autocast students).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def kd_loss_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)) per row, KL summed over the classes (the vocabulary of a masked LM, the
    labels of a task head).

    student_logits: (rows, classes)
    teacher_logits: (rows, classes), the same rows
    returns:        (rows,) float32
    """
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="none").sum(-1) * temperature**2


def mlm_loss_rows(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student's logits against the labels per row (rows labelled -100 give 0): the masked-LM
    loss on token ids, and a task student's loss on its gold labels.

    student_logits: (rows, classes)
    labels:         (rows,) long, token (or label) ids or -100
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


def scaled_dot_scores(a: torch.Tensor, b: torch.Tensor, heads: int) -> torch.Tensor:
    """a_h · b_hᵀ / √d_h for each of `heads` heads (d_h = width / heads): with a = queries and b = keys of one layer,
    its attention scores before the mask and the softmax.

    a, b:    (batch, length, width), width divisible by heads
    returns: (batch, heads, length, length) float32
    """
    batch, length, width = a.shape
    size = width // heads
    a = a.float().reshape(batch, length, heads, size).transpose(1, 2)
    b = b.float().reshape(batch, b.shape[1], heads, size).transpose(1, 2)
    return a @ b.transpose(-1, -2) / math.sqrt(size)


def allowed_keys(key_mask: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """(batch, 1, length or 1, length) bool: the keys each query may attend to, the real (non-padding) ones, and of
    those only the ones within ±`window` positions when a window is given (a local-attention layer's band)."""
    allowed = key_mask[:, None, None, :]
    if window is not None:
        length = key_mask.shape[1]
        positions = torch.arange(length, device=key_mask.device)
        allowed = allowed & ((positions[:, None] - positions[None, :]).abs() <= window)
    return allowed


def scaled_dot_log_probs(a: torch.Tensor, b: torch.Tensor, heads: int, key_mask: torch.Tensor,
                         window: int | None = None) -> torch.Tensor:
    """log softmax over keys of a_h · b_hᵀ / √d_h for each of `heads` heads (d_h = width / heads).

    With a = queries and b = keys of one layer this is its attention distribution (before attention dropout); with
    a = b = its queries (or keys, or values) and `heads` relation heads, MiniLM v2's self-attention relation.
    Padded keys get probability 0 (a row with no real key gets a uniform distribution, never NaN); so do keys more
    than `window` positions from the query, when a window is given (a local-attention layer's band).

    a, b:     (batch, length, width), width divisible by heads
    key_mask: (batch, length) bool, True at real (non-padding) tokens
    returns:  (batch, heads, length, length) float32
    """
    scores = scaled_dot_scores(a, b, heads)
    scores = scores.masked_fill(~allowed_keys(key_mask, window), torch.finfo(torch.float32).min)
    return scores.log_softmax(dim=-1)


def masked_scaled_dot_scores(a: torch.Tensor, b: torch.Tensor, heads: int, key_mask: torch.Tensor,
                             window: int | None = None) -> torch.Tensor:
    """TinyBERT's attention target: the scores a_h · b_hᵀ / √d_h with the keys a query cannot attend to (padding,
    outside a local layer's window) set to 0, as its code sets the masked scores (≤ −100) to 0.

    a, b:     (batch, length, width), width divisible by heads
    key_mask: (batch, length) bool, True at real (non-padding) tokens
    returns:  (batch, heads, length, length) float32
    """
    return scaled_dot_scores(a, b, heads).masked_fill(~allowed_keys(key_mask, window), 0.0)


def visible_key_counts(key_mask: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """(batch, length): how many real keys each query position sees, all of them or those within ±`window`."""
    if window is None:
        return key_mask.sum(1, keepdim=True).expand(key_mask.shape)
    length = key_mask.shape[1]
    before = torch.nn.functional.pad(key_mask.long().cumsum(1), (1, 0))  # before[:, j] = real keys among 0 .. j−1
    positions = torch.arange(length, device=key_mask.device)
    high = (positions + window + 1).clamp(max=length)
    low = (positions - window).clamp(min=0)
    return before[:, high] - before[:, low]


def map_mse_rows(student_maps: torch.Tensor, teacher_maps: torch.Tensor, real_keys: torch.Tensor) -> torch.Tensor:
    """Per query row, the mean over heads of the squared difference of two attention maps summed over the keys and
    divided by the row's real keys (the keys outside them must be equal in both maps, e.g. 0).

    Averaged over the rows of an unpadded batch this is the element-wise MSE of the maps (TinyBERT's `MSELoss`): of
    the scores with masked keys at 0 (TinyBERT's code, attention_loss "scores") or of the probabilities ("probs").

    student_maps: (rows, heads, keys)
    teacher_maps: (rows, heads, keys), the same head count
    real_keys:    (rows,) the number of keys each row attends over (its example's non-padding keys, within the
                  window of a local layer: visible_key_counts)
    returns:      (rows,) float32
    """
    squared = (student_maps.float() - teacher_maps.float()).square().sum(-1)
    return squared.mean(-1) / real_keys.clamp(min=1).to(squared.dtype)


def relation_kl_rows(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor) -> torch.Tensor:
    """Per row, the mean over (relation) heads of KL(teacher ‖ student) summed over the keys.

    student_log_probs: (rows, heads, keys) log probabilities
    teacher_log_probs: (rows, heads, keys), the same heads
    returns:           (rows,) float32
    """
    kl = F.kl_div(student_log_probs.float(), teacher_log_probs.float(), log_target=True, reduction="none")
    return kl.sum(-1).mean(-1)
