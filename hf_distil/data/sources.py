"""Load a corpus (files, a folder, a Hub dataset or a save_to_disk folder) as "train" and "validation" splits of
one string column, "text", with empty rows dropped and, without validation data, a held-out share of the training rows.
"""

from __future__ import annotations

import logging
import math
import os

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.exceptions import DatasetGenerationError

from .arguments import DataArguments
from .cache import _cache_file
from .errors import DataError, DataFileNotFoundError, _first_line, _root_cause
from .files import _resolve_files
from .noteevents import _load_noteevents, is_noteevents, noteevents_inputs
from .utf8 import _bom_message, _not_utf8_message

logger = logging.getLogger("hf_distil.data")  # one logger for the package: the command line prints its name

_SCAN_BATCH = 10_000  # rows per Arrow batch when scanning a column (flat memory, vectorised)


def load_raw_corpus(data_args: DataArguments, cache_dir: str | None = None, seed: int = 42) -> datasets.DatasetDict:
    """Load the corpus as {"train", "validation"}, each with the single string column "text".

    Rows with empty text are dropped (NOTEEVENTS: also ISERROR=1 rows and unselected categories);
    without validation data, `validation_split_percentage` of the training rows (shuffled with
    `seed`) are held out.
    """
    download_mode = "force_redownload" if data_args.overwrite_cache else None
    if data_args.categories is not None and not noteevents_inputs(data_args):
        given = [p for p in (data_args.train_file, data_args.validation_file) if p is not None]
        source = " and ".join(given) if given else data_args.dataset_name or data_args.dataset_path
        raise DataError(
            f"--note_categories applies to MIMIC NOTEEVENTS.csv only, and {source} is not one; drop the flag"
        )
    validation = None
    if data_args.train_file is not None:
        train = _load_files(data_args.train_file, "--train_file", data_args, cache_dir, download_mode)
    elif data_args.dataset_name is not None:
        train, validation = _load_hub(data_args, cache_dir, download_mode)
    else:
        train, validation = _load_disk(data_args, cache_dir)
    if data_args.validation_file is not None:
        validation = _load_files(data_args.validation_file, "--validation_file", data_args, cache_dir, download_mode)
    if validation is None:
        train, validation = _split_validation(train, data_args.validation_split_percentage, seed, cache_dir)
    return datasets.DatasetDict({"train": train, "validation": validation})


def _load_files(path: str, flag: str, data_args: DataArguments, cache_dir, download_mode) -> datasets.Dataset:
    """One file or folder given on the command line, as a "text"-only Dataset."""
    builder, files = _resolve_files(path, flag)
    bom = _bom_message(files)  # UTF-16 / UTF-32 from Windows: named as such, whichever reader would choke on it
    if bom:
        raise DataError(bom)
    if builder == "csv":
        is_notes = [is_noteevents(f) for f in files]
        if all(is_notes):
            return _load_noteevents(path, files, data_args, cache_dir, download_mode)
        if any(is_notes):
            raise DataError(f"{path} mixes NOTEEVENTS and other CSV files; keep one kind per folder")
    if data_args.categories is not None:
        logger.info("%s is not NOTEEVENTS: --note_categories does not apply to it, all its rows are used", path)
    if all(os.path.getsize(f) == 0 for f in files):
        raise DataError(f"{path} is empty (no rows); point {flag} at a corpus with text")
    options = {"encoding": "utf-8-sig"} if builder == "text" else {}  # a byte-order mark is not text
    try:
        ds = datasets.load_dataset(
            builder, data_files=files, split="train", cache_dir=cache_dir, download_mode=download_mode, **options
        )
    except (DatasetGenerationError, ValueError) as error:
        cause = _root_cause(error)
        if isinstance(cause, UnicodeDecodeError):
            raise DataError(_not_utf8_message(files) or f"{path} is not UTF-8 text; re-encode it as UTF-8") from error
        if "corresponds to no data" in str(cause):
            what = "a header only?" if builder == "csv" else "blank lines only?"
            raise DataError(f"{path} has no rows ({what}); point {flag} at a corpus with text") from error
        raise DataError(f"could not read {path} as {builder}: {_first_line(cause)}") from error
    return _text_only(ds, data_args.text_column or "text", path, cache_dir, files)


def _load_hub(data_args: DataArguments, cache_dir, download_mode):
    name = data_args.dataset_name
    try:
        splits = datasets.load_dataset(
            name, data_args.dataset_config_name, cache_dir=cache_dir, download_mode=download_mode
        )
    except Exception as error:  # offline, unknown name, bad config: all end in the same fix
        raise DataError(
            f"could not load dataset {name!r}: {_first_line(error)}; check --dataset_name/--dataset_config_name "
            "(Hub datasets need a connection or a local cache)"
        ) from error
    return _pick_splits(splits, name, data_args, cache_dir)


def _load_disk(data_args: DataArguments, cache_dir=None):
    path = data_args.dataset_path
    if not os.path.exists(path):
        raise DataFileNotFoundError(f"{path} does not exist; point --dataset_path at a folder written by save_to_disk")
    try:
        loaded = datasets.load_from_disk(path)
    except FileNotFoundError as error:
        raise DataError(
            f"{path} is not a folder written by save_to_disk ({_first_line(error)}); check --dataset_path"
        ) from error
    if isinstance(loaded, datasets.Dataset):
        return _text_only(loaded, data_args.text_column or "text", path, cache_dir), None
    return _pick_splits(loaded, path, data_args, cache_dir)


def _pick_splits(splits: datasets.DatasetDict, source: str, data_args: DataArguments, cache_dir=None):
    if "train" not in splits:
        raise DataError(f"{source} has no 'train' split (splits found: {', '.join(splits)})")
    column = data_args.text_column or "text"
    train = _text_only(splits["train"], column, f"{source}[train]", cache_dir)
    validation = None
    if "validation" in splits and data_args.validation_file is None:
        validation = _text_only(splits["validation"], column, f"{source}[validation]", cache_dir)
    return train, validation


def _text_only(ds: datasets.Dataset, column: str, source: str, cache_dir=None, files=()) -> datasets.Dataset:
    """Keep `column` as "text" (string), drop rows whose text is empty, log the counts.

    `files` (the source files, if any) locate text that is not UTF-8: the json reader lets such bytes through.
    """
    if len(ds) == 0:
        raise DataError(f"{source} is empty (no rows); give a corpus with text")
    if column not in ds.column_names:
        raise DataError(
            f"{source} has no column {column!r} (columns: {', '.join(ds.column_names)}); pass --text_column <name>"
        )
    ds = ds.select_columns([column])
    feature = ds.features[column]
    if not isinstance(feature, datasets.Value):
        raise DataError(f"{source}: column {column!r} holds {feature}, not text; pass --text_column <name>")
    if feature.dtype.startswith(("int", "uint", "float", "bool", "double", "decimal")):
        raise DataError(f"{source}: column {column!r} holds numbers ({feature.dtype}), not text (an id column?); "
                        "pass --text_column <name> of the column with the text")
    if feature.dtype not in ("string", "large_string"):
        ds = ds.cast_column(column, datasets.Value("string"))
    if column != "text":
        ds = ds.rename_column(column, "text")
    try:
        blank = _blank_mask(ds)
    except pa.ArrowInvalid as error:  # invalid UTF-8 inside a string column
        raise DataError(
            _not_utf8_message(files) or f"{source} holds text that is not UTF-8 ({error}); re-encode it as UTF-8"
        ) from None
    n_blank = int(blank.sum())
    if n_blank == len(ds):
        raise DataError(
            f"{source}: all {len(ds):,} rows have empty {column!r}; point --text_column at the column holding the text"
        )
    if n_blank:
        keep = np.flatnonzero(~blank)
        ds = ds.select(keep, indices_cache_file_name=_cache_file(ds, cache_dir, "select", keep))
    logger.info(
        "%s: kept %s of %s rows (%s with empty text dropped)", source, f"{len(ds):,}", f"{len(blank):,}", f"{n_blank:,}"
    )
    return ds


def _blank_mask(ds: datasets.Dataset, column: str = "text") -> np.ndarray:
    """True where the text is null, empty or whitespace only; scanned in Arrow batches."""
    parts = [np.zeros(0, dtype=bool)]
    for table in ds.select_columns([column]).with_format("arrow").iter(batch_size=_SCAN_BATCH):
        text = table.column(0)
        text.validate(full=True)
        blank = pc.or_kleene(pc.equal(pc.utf8_length(text), 0), pc.utf8_is_space(text))
        parts.append(pc.fill_null(blank, True).to_numpy(zero_copy_only=False))
    return np.concatenate(parts)


def _split_validation(train: datasets.Dataset, percentage: int, seed: int, cache_dir=None):
    """Hold out ceil(percentage % of rows), shuffled with `seed`."""
    n = len(train)
    n_val = math.ceil(n * percentage / 100)
    if n_val == 0:
        return train, train.select([])
    if n_val >= n:
        raise DataError(
            f"the training corpus has only {n} row(s), too few to hold out {percentage}% for validation; "
            "pass --validation_file or lower --validation_split_percentage"
        )
    parts = train.train_test_split(
        test_size=n_val,
        shuffle=True,
        seed=seed,
        train_indices_cache_file_name=_cache_file(train, cache_dir, "split-train", n_val, seed),
        test_indices_cache_file_name=_cache_file(train, cache_dir, "split-test", n_val, seed),
    )
    logger.info("held out %s of %s rows (%s%%) for validation", f"{n_val:,}", f"{n:,}", percentage)
    return parts["train"], parts["test"]
