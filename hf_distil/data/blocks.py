"""Training examples for masked-language modelling: tokenise the corpus and group it into fixed-length blocks (one
batched, cached `datasets.map`), cap the block length at what the model accepts, and the collator that masks them.
"""

from __future__ import annotations

import itertools
import logging

import datasets
import numpy as np
from tokenizers import Tokenizer
from transformers import DataCollatorForLanguageModeling

from .arguments import DataArguments
from .cache import _cache_file
from .errors import DataError

logger = logging.getLogger("hf_distil.data")  # one logger for the package: the command line prints its name

# Models whose position ids start after padding_idx (RoBERTa's scheme): padding_idx + 1 fewer usable positions.
# fmt: off
_OFFSET_POSITION_MODEL_TYPES = frozenset({
    "roberta", "roberta-prelayernorm", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer",
    "data2vec-text", "ibert", "mpnet", "xmod", "luke", "markuplm", "layoutlmv3", "esm",
})
# fmt: on


def effective_max_seq_length(requested: int, tokenizer, model_config) -> int:
    """`requested`, capped at the model's position embeddings and the tokenizer's max length (warns when capped)."""
    limits = {}
    positions = getattr(model_config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        if getattr(model_config, "model_type", None) in _OFFSET_POSITION_MODEL_TYPES:
            pad = getattr(model_config, "pad_token_id", None)
            positions -= (1 if pad is None else pad) + 1
        limits["the model's max_position_embeddings"] = positions
    tokenizer_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_max, int) and 0 < tokenizer_max < 1_000_000:  # larger values mean "unset"
        limits["the tokenizer's model_max_length"] = tokenizer_max
    if not limits or requested <= min(limits.values()):
        return requested
    source, cap = min(limits.items(), key=lambda item: item[1])
    logger.warning("max_seq_length=%d is more than %s allows (%d); using %d", requested, source, cap, cap)
    return cap


def tokenize_corpus(
    raw: datasets.DatasetDict, tokenizer, data_args: DataArguments, max_seq_length: int, cache_dir: str | None = None
) -> datasets.DatasetDict:
    """Tokenise every split with one batched, cached `datasets.map`.

    Default: each batch of 1,000 rows is tokenised (special tokens per row, as run_mlm.py does),
    concatenated and cut into blocks of exactly `max_seq_length`; the remainder of each batch is
    dropped. `pack_notes`: whole texts (notes) packed in order into blocks of up to `max_seq_length` tokens, never
    cut across blocks unless longer than one (then cut into block-sized pieces), padding left to the collator.
    `line_by_line`: one truncated example per non-empty line, padding left to the collator.
    Columns: input_ids, attention_mask, special_tokens_mask (+ token_type_ids if the tokenizer makes them).
    The blocks are cached beside the corpus's Arrow files, or under `cache_dir` when the corpus is elsewhere.
    """
    with_types = "token_type_ids" in tokenizer.model_input_names
    if data_args.line_by_line:
        function, features = _tokenize_lines, None
        fn_kwargs = {"tokenizer": tokenizer, "max_seq_length": max_seq_length}
    elif data_args.pack_notes:
        function, features = _tokenize_and_pack_notes, _block_features(with_types)
        fn_kwargs = {"encoder": _block_encoder(tokenizer), "max_seq_length": max_seq_length, "with_types": with_types}
    else:
        function, features = _tokenize_and_group, _block_features(with_types)
        fn_kwargs = {"encoder": _block_encoder(tokenizer), "max_seq_length": max_seq_length, "with_types": with_types}
    out = {}
    for split, ds in raw.items():
        if "text" not in ds.column_names:
            raise DataError(
                f"split {split!r} has no 'text' column (columns: {', '.join(ds.column_names)}); "
                "load the corpus with load_raw_corpus"
            )
        out[split] = ds.map(
            function,
            batched=True,
            num_proc=data_args.preprocessing_num_workers if len(ds) > 1 else None,
            remove_columns=ds.column_names,
            fn_kwargs=fn_kwargs,
            features=features,
            load_from_cache_file=not data_args.overwrite_cache,
            cache_file_name=_cache_file(ds, cache_dir, "tokenised", function.__name__, fn_kwargs, features),
            desc=f"Tokenising {split}" + ("" if data_args.line_by_line else
                                         f" into {'notes packed in ' if data_args.pack_notes else ''}blocks of "
                                         f"{max_seq_length}"),
        )
    if "train" in out and len(out["train"]) == 0 and len(raw["train"]) > 0:
        if data_args.line_by_line or data_args.pack_notes:
            raise DataError("the training corpus has no non-empty text; give a corpus with text")
        raise DataError(
            f"the training corpus gives no block of {max_seq_length} tokens; add text, lower --max_seq_length "
            "or pass --line_by_line"
        )
    if "validation" in out and len(out["validation"]) == 0 and len(raw["validation"]) > 0:
        raise DataError(
            f"the validation corpus gives no example of {max_seq_length} tokens; give more validation text, "
            "lower --max_seq_length or pass --line_by_line"
        )
    for split, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)):
        if limit is not None and split in out and len(out[split]) > limit:
            out[split] = out[split].select(range(limit))
    for split, ds in out.items():
        logger.info("%s: %s examples of up to %d tokens", split, f"{len(ds):,}", max_seq_length)
    return datasets.DatasetDict(out)


def _block_features(with_types: bool) -> datasets.Features:
    columns = {
        "input_ids": datasets.List(datasets.Value("int32")),
        "attention_mask": datasets.List(datasets.Value("int8")),
        "special_tokens_mask": datasets.List(datasets.Value("int8")),
    }
    if with_types:
        columns["token_type_ids"] = datasets.List(datasets.Value("int8"))
    return datasets.Features(columns)


def _block_encoder(tokenizer):
    """A private copy of a fast tokenizer's Rust backend with truncation and padding off.

    Calling it directly skips BatchEncoding's per-row Python lists, which is most of the
    non-tokenising time; a tokenizer.json that enables truncation must not cut documents.
    Slow tokenizers are used as they are.
    """
    if not getattr(tokenizer, "is_fast", False):
        return tokenizer
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    backend.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
    return backend


def _encode_flat(texts: list[str], encoder, with_types: bool):
    """Token ids, special-token mask and token types of `texts`, each concatenated into one array."""
    if isinstance(encoder, Tokenizer):
        encode = getattr(encoder, "encode_batch_fast", encoder.encode_batch)
        encodings = encode(texts, add_special_tokens=True)
        total = sum(len(e) for e in encodings)

        def flat(attribute, dtype):
            values = itertools.chain.from_iterable(getattr(e, attribute) for e in encodings)
            return np.fromiter(values, dtype=dtype, count=total)

        return (
            flat("ids", np.int32),
            flat("special_tokens_mask", np.int8),
            flat("type_ids", np.int8) if with_types else None,
        )
    batch = encoder(texts, return_special_tokens_mask=True, verbose=False)

    def flat(key, dtype):
        return np.fromiter(itertools.chain.from_iterable(batch[key]), dtype=dtype)

    return (
        flat("input_ids", np.int32),
        flat("special_tokens_mask", np.int8),
        flat("token_type_ids", np.int8) if with_types else None,
    )


def _tokenize_and_group(batch, encoder, max_seq_length: int, with_types: bool):
    """Tokenise a batch and cut its token stream into full blocks (one fused map, numpy throughout)."""
    ids, special, types = _encode_flat(batch["text"], encoder, with_types)
    n_blocks = len(ids) // max_seq_length
    shape = (n_blocks, max_seq_length)
    end = n_blocks * max_seq_length
    out = {
        "input_ids": ids[:end].reshape(shape),
        "attention_mask": np.ones(shape, dtype=np.int8),
        "special_tokens_mask": special[:end].reshape(shape),
    }
    if with_types:
        out["token_type_ids"] = types[:end].reshape(shape)
    return out


_tokenize_and_group.__module__ = "hf_distil.data"  # datasets hashes it by this name: caches stay valid


def _encode_each(texts: list[str], encoder, with_types: bool):
    """Per text: (token ids, special-token mask, token types or None), each a numpy array."""
    if not texts:  # tokenizers cannot encode an empty batch
        return []
    if isinstance(encoder, Tokenizer):
        encode = getattr(encoder, "encode_batch_fast", encoder.encode_batch)
        return [(np.asarray(e.ids, np.int32), np.asarray(e.special_tokens_mask, np.int8),
                 np.asarray(e.type_ids, np.int8) if with_types else None)
                for e in encode(texts, add_special_tokens=True)]
    batch = encoder(texts, return_special_tokens_mask=True, verbose=False)
    return [(np.asarray(batch["input_ids"][i], np.int32), np.asarray(batch["special_tokens_mask"][i], np.int8),
             np.asarray(batch["token_type_ids"][i], np.int8) if with_types else None) for i in range(len(texts))]


def pack_lengths(lengths: list[int], max_seq_length: int) -> list[list[tuple[int, int, int]]]:
    """Blocks of (text, start, end) token spans: texts in order, each block filled with whole texts while they fit;
    a text longer than a block is cut into block-sized pieces, each its own block (its last piece may share)."""
    blocks, current, used = [], [], 0
    for index, length in enumerate(lengths):
        if length == 0:
            continue
        if length > max_seq_length:  # whole pieces alone; the remainder goes on like a short text
            full = length // max_seq_length * max_seq_length
            if current:
                blocks.append(current)
                current, used = [], 0
            blocks.extend([[(index, start, start + max_seq_length)] for start in range(0, full, max_seq_length)])
            if full == length:
                continue
            span, size = (index, full, length), length - full
        else:
            span, size = (index, 0, length), length
        if used + size > max_seq_length:
            blocks.append(current)
            current, used = [], 0
        current.append(span)
        used += size
    if current:
        blocks.append(current)
    return blocks


def _tokenize_and_pack_notes(batch, encoder, max_seq_length: int, with_types: bool):
    """Tokenise a batch of notes and pack whole notes into blocks of up to `max_seq_length` tokens (pack_lengths)."""
    # Blank texts would become bare [CLS] [SEP] pairs.
    encoded = _encode_each([text for text in batch["text"] if text and text.strip()], encoder, with_types)
    blocks = pack_lengths([len(ids) for ids, _, _ in encoded], max_seq_length)
    out = {"input_ids": [], "attention_mask": [], "special_tokens_mask": []}
    if with_types:
        out["token_type_ids"] = []
    for block in blocks:
        parts = [[encoded[i][k][start:end] for i, start, end in block] for k in range(3 if with_types else 2)]
        ids = np.concatenate(parts[0])
        out["input_ids"].append(ids)
        out["attention_mask"].append(np.ones(len(ids), dtype=np.int8))
        out["special_tokens_mask"].append(np.concatenate(parts[1]))
        if with_types:
            out["token_type_ids"].append(np.concatenate(parts[2]))
    return out


_tokenize_and_pack_notes.__module__ = "hf_distil.data"  # datasets hashes it by this name: caches stay valid


def _tokenize_lines(batch, tokenizer, max_seq_length: int):
    """One example per non-empty line, truncated to `max_seq_length`."""
    lines = [line for text in batch["text"] for line in text.splitlines() if line.strip()]
    if not lines:  # tokenizers cannot encode an empty batch
        return {name: [] for name in [*tokenizer.model_input_names, "special_tokens_mask"]}
    return dict(tokenizer(lines, truncation=True, max_length=max_seq_length, return_special_tokens_mask=True))


_tokenize_lines.__module__ = "hf_distil.data"  # datasets hashes it by this name: caches stay valid


def make_collator(tokenizer, data_args: DataArguments, seed: int = 42) -> DataCollatorForLanguageModeling:
    """Masked-LM collator: masking at `mlm_probability`, padding to a multiple of 8, masks seeded per example
    (ReproducibleMLMCollator) so resumed and multi-process runs mask exactly like a single uninterrupted one; with
    each example's masked positions (padded to a multiple of 8), so DistillationTrainer's step needs no host sync."""
    from ..collator import ReproducibleMLMCollator

    return ReproducibleMLMCollator(
        tokenizer=tokenizer, mlm=True, mlm_probability=data_args.mlm_probability, pad_to_multiple_of=8, seed=seed,
        positions_bucket=8,
    )
