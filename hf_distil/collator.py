"""A masked-LM collator whose masks depend only on (seed, epoch, example), never on the global RNG's position.

`DataCollatorForLanguageModeling` draws masks from the global RNG (or one generator advanced per batch), so:
- a run resumed from a checkpoint masks differently from the uninterrupted run (the data loader collates one
  batch ahead of the step that saved the RNG state, and skipped batches are never collated);
- the same examples split over 2 ranks × 4 get other masks than 1 rank × 8.
Here every position's random draws are a counter-based hash of (seed, epoch, a key hashed from the example's own
token ids, its position within the example), computed for the whole padded batch at once with int64 tensor
arithmetic (splitmix64). Both runs above are then exact, masks still change from epoch to epoch (dynamic masking;
`DistillationTrainer` advances `epoch`), and it collates faster than the stock collator (benchmarks/bench_collator.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from transformers import BatchEncoding, DataCollatorForLanguageModeling
from transformers.data.data_collator import pad_without_fast_tokenizer_warning

_U64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment: an odd constant, so position ↦ counter is a bijection
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_BITS = 24  # uniform draws are 24-bit integers compared with integer thresholds: exact on every platform
_PADDED_KEYS = ("input_ids", "token_type_ids", "attention_mask", "special_tokens_mask")
ROW_POSITIONS = "masked_positions"  # the batch key of each example's masked positions (positions_bucket > 0)


def _signed(x: int) -> int:
    """The int64 with the same 64 bits as the unsigned `x`."""
    x &= _U64
    return x - (1 << 64) if x >> 63 else x


def mix64(x: int) -> int:
    """splitmix64's finaliser on Python ints (unsigned 64-bit): the reference for `_mix`."""
    x &= _U64
    x = ((x ^ (x >> 30)) * _M1) & _U64
    x = ((x ^ (x >> 27)) * _M2) & _U64
    return x ^ (x >> 31)


def _srl(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's `>>` is arithmetic: it copies the sign bit)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """`mix64` elementwise on int64 tensors (multiplication wraps modulo 2^64, as the hash needs); `z` is consumed."""
    z ^= _srl(z, 30)
    z *= _signed(_M1)
    z ^= _srl(z, 27)
    z *= _signed(_M2)
    z ^= _srl(z, 31)
    return z


def add_row_positions(batch, bucket: int = 8):
    """Prepare a masked-LM batch (with `labels`) on the CPU side so that DistillationTrainer's step syncs nothing;
    `batch` is changed in place and returned. Any collator's output can go through it (in the loader's workers).

    - ROW_POSITIONS, (batch, K) long: each example's masked positions in order, padded with -1, K the most any
      example has rounded up to `bucket` (few distinct shapes). Per example, so that splitting a batch over
      processes along its first dimension keeps each row's own positions. The step reads its masked rows from it
      instead of running `nonzero` on the device.
    - an attention_mask of all ones (packed blocks) is dropped: the models would otherwise read it back to the host
      to find out that it masks nothing.
    """
    masked = batch["labels"] != -100
    counts = masked.sum(1)
    width = max(1, -(-int(counts.max()) // bucket)) * bucket
    order = torch.argsort((~masked).to(torch.int8), dim=1, stable=True)[:, :width]  # masked columns first, in order
    if order.shape[1] < width:
        order = torch.cat([order, order.new_zeros(order.shape[0], width - order.shape[1])], 1)
    kept = torch.arange(width).unsqueeze(0) < counts.unsqueeze(1)
    batch[ROW_POSITIONS] = torch.where(kept, order, -1)
    if "attention_mask" in batch and bool(batch["attention_mask"].all()):
        del batch["attention_mask"]
    return batch


@dataclass
class ReproducibleMLMCollator(DataCollatorForLanguageModeling):
    """`DataCollatorForLanguageModeling` (mlm=True) whose masks are a hash of (seed, epoch, token ids, position).

    Masks of an example never depend on its batch, its place in the batch, padding side or `pad_to_multiple_of`.
    Never masked: padding, every special token of the tokenizer except [UNK], and positions a stored
    `special_tokens_mask` column flags. [UNK] is maskable because it stands for real text (as in BERT's own
    pre-training and in the stored column, which flags only the tokens the tokenizer added around the text,
    while `get_special_tokens_mask(..., already_has_special_tokens=True)` flags every special id, [UNK] too); so a
    batch masks the same with or without the stored column. `seed=None` or `mlm=False`: the stock collator.
    """

    seed: int | None = 42
    epoch: int = 0
    # > 0: also emit ROW_POSITIONS for DistillationTrainer's sync-free step (see `add_row_positions`), each example's
    # masked positions padded to a multiple of this many
    positions_bucket: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.whole_word_mask and self.seed is not None:
            raise ValueError("ReproducibleMLMCollator does not do whole-word masking: set seed=None for the stock one.")

    def _never_masked_ids(self) -> torch.Tensor:
        unk = self.tokenizer.unk_token_id
        return torch.tensor(sorted({i for i in self.tokenizer.all_special_ids if i is not None and i != unk}),
                            dtype=torch.long)

    def torch_call(self, examples):
        if self.seed is None or not self.mlm:
            return super().torch_call(examples)
        features = [e if isinstance(e, Mapping) else {"input_ids": e} for e in examples]
        batch = self._pad(features)
        if batch is None:
            batch = pad_without_fast_tokenizer_warning(self.tokenizer, features, return_tensors="pt",
                                                       pad_to_multiple_of=self.pad_to_multiple_of)
        stored = batch.pop("special_tokens_mask", None)
        ids = batch["input_ids"]
        if "attention_mask" in batch:
            real = batch["attention_mask"].bool()
        else:
            lengths = torch.tensor([len(f["input_ids"]) for f in features]).unsqueeze(1)
            column = torch.arange(ids.shape[1])
            real = column >= ids.shape[1] - lengths if self.tokenizer.padding_side == "left" else column < lengths
        batch["input_ids"], batch["labels"] = self._mask(ids, real, stored)
        if self.positions_bucket:
            add_row_positions(batch, self.positions_bucket)
        return batch

    def _pad(self, features) -> BatchEncoding | None:
        """`tokenizer.pad(features, return_tensors="pt")` with one numpy fill per column instead of per-row lists.

        Only for the columns tokenisation makes, held as lists (else None: the caller uses `tokenizer.pad`).
        """
        tok = self.tokenizer
        keys = features[0].keys()
        if (tok.pad_token_id is None or tok.model_input_names[0] != "input_ids" or "input_ids" not in keys
                or not set(keys) <= set(_PADDED_KEYS)
                or any(f.keys() != keys or not all(isinstance(f[k], (list, tuple)) for k in keys) for f in features)):
            return None
        lengths = [len(f["input_ids"]) for f in features]
        if any(len(f[k]) != n for f, n in zip(features, lengths) for k in keys):
            return None
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        column, lengths_a = np.arange(width), np.array(lengths)[:, None]
        real = column >= width - lengths_a if tok.padding_side == "left" else column < lengths_a
        fills = {"input_ids": tok.pad_token_id, "token_type_ids": tok.pad_token_type_id, "attention_mask": 0,
                 "special_tokens_mask": 1}
        batch = {}
        for key in _PADDED_KEYS:
            if key in keys:
                padded = np.full((len(features), width), fills[key], dtype=np.int64)
                # boolean indexing walks rows in order and each row's own tokens left to right
                padded[real] = np.fromiter(itertools.chain.from_iterable(f[key] for f in features), np.int64,
                                           count=sum(lengths))
                batch[key] = torch.from_numpy(padded)
            elif key == "attention_mask" and key in tok.model_input_names:
                batch[key] = torch.from_numpy(real.astype(np.int64))
        return BatchEncoding(batch)

    def _mask(self, ids: torch.Tensor, real: torch.Tensor, stored: torch.Tensor | None):
        """Masked inputs and labels for a padded batch; `real` marks each row's own tokens (not padding)."""
        position = real.cumsum(1) - 1  # index within the example itself, whatever the padding
        real_long = real.long()
        # Example key: a hash of every (token id, position) pair summed over the example's tokens, and its length.
        pair = _mix(ids + (position << 32) + 0x5851F42D4C957F2D)
        pair *= real_long
        key = _mix(pair.sum(1) + real_long.sum(1) * _signed(_GOLDEN))
        stream = _signed(mix64(mix64(self.seed) ^ mix64(self.epoch + _GOLDEN)))
        draw = _mix((key ^ stream).unsqueeze(1) + position * _signed(_GOLDEN))
        scale = 1 << _BITS
        masking = _srl(draw, 64 - _BITS)
        choice = (draw >> 16) & (scale - 1)

        never = ~real | torch.isin(ids, self._never_masked_ids())
        if stored is not None:
            never |= stored.bool()
        masked = (masking < round(self.mlm_probability * scale)) & ~never
        labels = torch.where(masked, ids, -100)
        to_mask_token = round(self.mask_replace_prob * scale)
        inputs = torch.where(masked & (choice < to_mask_token), self.tokenizer.mask_token_id, ids)
        if self.random_replace_prob > 0:
            to_random = round((self.mask_replace_prob + self.random_replace_prob) * scale)
            randomised = masked & (choice >= to_mask_token) & (choice < to_random)
            # a second hash of the same counter, its top 32 bits scaled to the vocabulary (Lemire's multiply-shift)
            token = (_srl(_mix(draw ^ _signed(_M1)), 32) * len(self.tokenizer)) >> 32
            inputs = torch.where(randomised, token, inputs)
        return inputs, labels
