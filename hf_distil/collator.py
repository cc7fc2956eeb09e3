"""A masked-LM collator whose masks depend only on the batch and a seed, never on the global RNG's position.

`DataCollatorForLanguageModeling` draws masks from the global RNG (or one generator advanced per batch), so a run
resumed from a checkpoint masks differently from the uninterrupted run: the data loader collates one batch ahead
of the step that saved the RNG state, and skipped batches are never collated. Seeding each batch from its content
makes masking a pure function of (seed, batch), so `resume_from_checkpoint` reproduces the run exactly.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DataCollatorForLanguageModeling


@dataclass
class ReproducibleMLMCollator(DataCollatorForLanguageModeling):
    """`DataCollatorForLanguageModeling` with per-batch masking seeded by (seed, token ids of the batch)."""

    seed: int | None = 42

    def torch_call(self, examples):
        if self.seed is not None:
            digest = hashlib.blake2b(str(self.seed).encode(), digest_size=8)
            for example in examples:
                ids = example["input_ids"] if isinstance(example, Mapping) else example
                digest.update(np.asarray(ids, dtype=np.int64).tobytes())
                digest.update(b"|")
            self.generator = torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") >> 1)
            self._generator_pid = os.getpid()
        return super().torch_call(examples)
