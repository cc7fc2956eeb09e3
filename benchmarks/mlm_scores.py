"""Masked-LM scores under one fixed masking: the same positions for every model, so their numbers compare.

Used by bench_quality.py (the MTS test texts), make_quality_teacher.py and the teacher's pretraining curve
(recipes/pretrain_medical_teacher.py): masked-token accuracy, perplexity, top-1 agreement with a teacher, and an
add-one unigram model of the training text as the floor.
"""

from __future__ import annotations

import math

import torch


def masked_batches(tokenizer, texts: list[str], seed: int = 0, rate: float = 0.15, batch_size: int = 64,
                   max_length: int = 128) -> list[dict]:
    """Fixed-mask evaluation batches: `rate` of the tokens of each text (at least one) become [MASK]; special tokens,
    [UNK] included, and padding never do."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start:start + batch_size], truncation=True, max_length=max_length, padding=True,
                        return_special_tokens_mask=True, return_tensors="pt")
        special = torch.isin(enc["input_ids"], torch.tensor(tokenizer.all_special_ids))  # [UNK] included
        maskable = (enc.pop("special_tokens_mask") == 0) & (enc["attention_mask"] == 1) & ~special
        scores = torch.rand(maskable.shape, generator=generator).masked_fill(~maskable, 2.0)
        chosen = (scores < rate) & maskable
        first = scores.argmin(dim=1)  # every text with a maskable token gets at least one mask
        chosen[torch.arange(len(first)), first] |= maskable[torch.arange(len(first)), first]
        labels = enc["input_ids"].masked_fill(~chosen, -100)
        enc["input_ids"] = enc["input_ids"].masked_fill(chosen, tokenizer.mask_token_id)
        batches.append({**enc, "labels": labels})
    return batches


@torch.no_grad()
def masked_lm_predictions(model, batches: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log-probabilities at the masked positions, their labels, top-1 ids) of a masked LM on fixed batches."""
    model.eval()
    device = next(model.parameters()).device
    log_probs, labels = [], []
    for batch in batches:
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits.float().cpu()
        rows = batch["labels"] != -100
        log_probs.append(torch.log_softmax(logits[rows], dim=-1))
        labels.append(batch["labels"][rows])
    log_probs, labels = torch.cat(log_probs), torch.cat(labels)
    return log_probs, labels, log_probs.argmax(-1)


def score_masked_lm(model, batches: list[dict], teacher_top1: torch.Tensor | None = None) -> dict:
    """Masked-token accuracy, perplexity and (given the teacher's top-1) teacher agreement on fixed batches."""
    log_probs, labels, top1 = masked_lm_predictions(model, batches)
    nll = -log_probs.gather(1, labels[:, None]).mean().item()
    scores = {"masked_accuracy": (top1 == labels).float().mean().item(), "perplexity": math.exp(nll),
              "masked_tokens": int(labels.numel())}
    if teacher_top1 is not None:
        scores["teacher_agreement"] = (top1 == teacher_top1).float().mean().item()
    return scores


def unigram_log_probs(tokenizer, texts: list[str]) -> torch.Tensor:
    """Add-one smoothed unigram log-probabilities of the tokens of `texts` (special tokens get no count)."""
    counts = torch.zeros(len(tokenizer), dtype=torch.float64)
    for start in range(0, len(texts), 1000):
        for ids in tokenizer(texts[start:start + 1000], add_special_tokens=False)["input_ids"]:
            counts += torch.bincount(torch.tensor(ids, dtype=torch.long), minlength=len(tokenizer)).double()
    counts[tokenizer.all_special_ids] = 0
    return torch.log((counts + 1) / (counts + 1).sum())


def score_unigram(log_p: torch.Tensor, batches: list[dict]) -> dict:
    """The unigram baseline on the same masked positions: accuracy of its one guess, and its perplexity."""
    labels = torch.cat([b["labels"][b["labels"] != -100] for b in batches])
    return {"masked_accuracy": (labels == log_p.argmax()).float().mean().item(),
            "perplexity": math.exp(-log_p[labels].mean().item()), "masked_tokens": int(labels.numel())}
