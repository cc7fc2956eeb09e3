"""Inference speed: non-padding tokens per second of a model on evaluation batches, timed on this machine."""

from __future__ import annotations

import time
from itertools import islice

import torch
from datasets import Dataset


@torch.inference_mode()
def measure_inference_speed(model, dataset: Dataset, collator, batch_size: int = 32, max_batches: int = 20,
                            min_seconds: float = 1.0, warmup: int = 1) -> float:
    """Non-padding input tokens per second of ``model`` on ``dataset`` (a short timed loop, eval mode).

    NaN (not measured) for a model whose weights DeepSpeed ZeRO-3 partitions across ranks: every forward would gather
    them (not the deployed speed), and ranks timing loops of their own could stop at different passes and hang.
    """
    from torch.utils.data import DataLoader

    if any(hasattr(p, "ds_id") for p in model.parameters()):
        return float("nan")

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    columns = [c for c in dataset.column_names if c != "labels"]
    loader = DataLoader(dataset.select_columns(columns), batch_size=batch_size, collate_fn=collator)
    batches = [{k: v.to(device) for k, v in b.items()} for b in islice(loader, max_batches)]
    if not batches:
        raise ValueError("cannot time inference on an empty evaluation set.")
    tokens_per_pass = sum(int(b["attention_mask"].sum()) for b in batches)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for batch in batches[:warmup]:
        model(**batch)
    sync()
    passes, start = 0, time.perf_counter()
    while True:
        for batch in batches:
            model(**batch)
        sync()
        passes += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            break
    model.train(was_training)
    return passes * tokens_per_pass / elapsed

