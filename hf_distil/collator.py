"""A masked-LM collator whose masks depend only on (seed, epoch, example), never on the global RNG's position.

`DataCollatorForLanguageModeling` draws masks from the global RNG (or one generator advanced per batch), so:
- a run resumed from a checkpoint masks differently from the uninterrupted run (the data loader collates one
  batch ahead of the step that saved the RNG state, and skipped batches are never collated);
- the same examples split over 2 ranks × 4 get other masks than 1 rank × 8.
Masking each example with a generator seeded from its own token ids, the seed and the epoch makes both runs
exact, while masks still change from epoch to epoch (dynamic masking). `DistillationTrainer` advances `epoch`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DataCollatorForLanguageModeling


@dataclass
class ReproducibleMLMCollator(DataCollatorForLanguageModeling):
    """`DataCollatorForLanguageModeling` (mlm=True) with per-example masks seeded by (seed, epoch, token ids)."""

    seed: int | None = 42
    epoch: int = 0

    def _example_generator(self, ids: list[int]) -> torch.Generator:
        digest = hashlib.blake2b(f"{self.seed}:{self.epoch}".encode(), digest_size=8)
        digest.update(np.asarray(ids, dtype=np.int64).tobytes())
        return torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") >> 1)

    def torch_call(self, examples):
        if self.seed is None or not self.mlm:
            return super().torch_call(examples)
        features = [dict(e) if isinstance(e, Mapping) else {"input_ids": e} for e in examples]
        masked_ids, labels = [], []
        for feature in features:
            ids = torch.as_tensor(feature["input_ids"], dtype=torch.long).unsqueeze(0)
            special = feature.pop("special_tokens_mask", None)
            if special is None:
                special = self.tokenizer.get_special_tokens_mask(ids[0].tolist(), already_has_special_tokens=True)
            special = torch.as_tensor(special, dtype=torch.bool).unsqueeze(0)
            self.generator = self._example_generator(ids[0].tolist())
            new_ids, new_labels = self.torch_mask_tokens(ids, special_tokens_mask=special)
            masked_ids.append(new_ids[0].tolist())
            labels.append(new_labels[0].tolist())
            feature["input_ids"] = masked_ids[-1]
        batch = self.tokenizer.pad(features, return_tensors="pt", pad_to_multiple_of=self.pad_to_multiple_of)
        width = batch["input_ids"].shape[1]
        label_tensor = torch.full((len(labels), width), -100, dtype=torch.long)
        for row, row_labels in enumerate(labels):
            if self.tokenizer.padding_side == "left":
                label_tensor[row, width - len(row_labels):] = torch.tensor(row_labels)
            else:
                label_tensor[row, : len(row_labels)] = torch.tensor(row_labels)
        batch["labels"] = label_tensor
        return batch
