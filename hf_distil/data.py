"""Corpora for distillation: load text (files, MIMIC-III NOTEEVENTS, Hub, disk), tokenise it and
group it into fixed-length blocks for masked-language modelling.

Everything streams through `datasets` (Arrow files on disk, batched `.map`), so a 4 GB
NOTEEVENTS.csv is never held in Python memory and every step is cached.
"""

from __future__ import annotations

import csv
import glob
import gzip
import itertools
import logging
import math
import os
from dataclasses import dataclass, field

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.exceptions import DatasetGenerationError
from datasets.fingerprint import Hasher
from datasets.packaged_modules.generator.generator import Generator
from tokenizers import Tokenizer
from transformers import DataCollatorForLanguageModeling

logger = logging.getLogger(__name__)

# fmt: off
NOTEEVENTS_COLUMNS = (
    "ROW_ID", "SUBJECT_ID", "HADM_ID", "CHARTDATE", "CHARTTIME", "STORETIME",
    "CATEGORY", "DESCRIPTION", "CGID", "ISERROR", "TEXT",
)
# fmt: on
_BUILDERS = {".txt": "text", ".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
SUPPORTED_FORMATS = ".txt, .csv, .json, .jsonl, .parquet (the text formats may be .gz) or a folder of them"
_SCAN_BATCH = 10_000  # rows per Arrow batch when scanning a column (flat memory, vectorised)
_MAX_NOTE_CHARS = 16 * 2**20  # a longer CSV field means broken quoting, not a note
_NOTES_PARSER_VERSION = 1  # part of the NOTEEVENTS cache key: bump when parsing rules change
# Models whose position ids start after padding_idx (RoBERTa's scheme): padding_idx + 1 fewer usable positions.
# fmt: off
_OFFSET_POSITION_MODEL_TYPES = frozenset({
    "roberta", "roberta-prelayernorm", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer",
    "data2vec-text", "ibert", "mpnet", "xmod", "luke", "markuplm", "layoutlmv3", "esm",
})
# fmt: on
# Status of a NOTEEVENTS row, stored beside it so counts survive the cache.
_KEEP, _ISERROR, _EMPTY, _MALFORMED = 0, 1, 2, 3


class DataError(ValueError):
    """A corpus problem the user can fix; the message is one line that names the fix."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A corpus path that does not exist."""


@dataclass
class DataArguments:
    """Where the corpus comes from and how it becomes training blocks (parsed by `HfArgumentParser`)."""

    train_file: str | None = field(
        default=None,
        metadata={
            "help": f"Training corpus: {SUPPORTED_FORMATS}. MIMIC-III NOTEEVENTS.csv(.gz) is recognised by its header."
        },
    )
    validation_file: str | None = field(
        default=None,
        metadata={"help": "Validation corpus, same formats as --train_file. Default: split off the training corpus."},
    )
    dataset_name: str | None = field(default=None, metadata={"help": "A dataset on the Hub (datasets.load_dataset)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The configuration of --dataset_name."})
    dataset_path: str | None = field(
        default=None, metadata={"help": "A folder written by Dataset.save_to_disk (a Dataset or a DatasetDict)."}
    )
    text_column: str | None = field(
        default=None, metadata={"help": "Column holding the text. Default: 'TEXT' for NOTEEVENTS, 'text' otherwise."}
    )
    note_categories: str | None = field(
        default=None,
        metadata={
            "help": "NOTEEVENTS only: comma-separated CATEGORY values to keep, e.g. 'Discharge summary,Physician' "
            "(trimmed, case-insensitive)."
        },
    )
    malformed_rows: str = field(
        default="stop",
        metadata={
            "help": "NOTEEVENTS row that cannot be parsed: 'stop' (error naming the row) or 'skip' (drop and count)."
        },
    )
    max_seq_length: int = field(
        default=128, metadata={"help": "Tokens per training block (capped at what the model and tokenizer accept)."}
    )
    line_by_line: bool = field(
        default=False,
        metadata={"help": "One example per non-empty line (truncated) instead of concatenating into full blocks."},
    )
    mlm_probability: float = field(
        default=0.15, metadata={"help": "Share of tokens masked for the masked-LM objective."}
    )
    validation_split_percentage: int = field(
        default=5,
        metadata={"help": "Percent of training rows held out for validation when no validation data is given (0-50)."},
    )
    max_train_samples: int | None = field(
        default=None,
        metadata={
            "help": "Keep only the first N training examples (blocks, or lines with --line_by_line); for debugging."
        },
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N validation examples; for debugging."}
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes used to tokenise (datasets.map num_proc)."}
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Rebuild the cached corpus and tokenised datasets."})

    def __post_init__(self):
        for name in ("train_file", "validation_file", "dataset_name", "dataset_path"):
            if isinstance(getattr(self, name), str) and not getattr(self, name).strip():
                setattr(self, name, None)  # `--validation_file ""` unsets a config's value
        sources = [f"--{n}" for n in ("train_file", "dataset_name", "dataset_path") if getattr(self, n) is not None]
        if not sources:
            raise DataError("no corpus given: pass one of --train_file, --dataset_name or --dataset_path")
        if len(sources) > 1:
            raise DataError(f"{' and '.join(sources)} given: pass exactly one corpus source")
        self.malformed_rows = str(self.malformed_rows).lower()
        if self.malformed_rows not in ("stop", "skip"):
            raise DataError(f"--malformed_rows must be 'stop' or 'skip', got {self.malformed_rows!r}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise DataError(f"--mlm_probability must be between 0 and 1 (exclusive), got {self.mlm_probability}")
        if not 0 <= self.validation_split_percentage <= 50:
            raise DataError(f"--validation_split_percentage must be 0..50, got {self.validation_split_percentage}")
        if self.max_seq_length < 1:
            raise DataError(f"--max_seq_length must be positive, got {self.max_seq_length}")
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise DataError(f"--{name} must be >= 1 (unset: every example), got {getattr(self, name)}")
        if self.preprocessing_num_workers is not None and self.preprocessing_num_workers < 1:
            raise DataError(f"--preprocessing_num_workers must be >= 1, got {self.preprocessing_num_workers}")
        if self.note_categories is not None and not self.categories:
            raise DataError(
                f"--note_categories={self.note_categories!r} names no category; e.g. 'Discharge summary,Physician'"
            )

    @property
    def categories(self) -> list[str] | None:
        """`note_categories` as trimmed, lower-cased names (None: keep all)."""
        if self.note_categories is None:
            return None
        return [c.strip().lower() for c in self.note_categories.split(",") if c.strip()]


# ----------------------------------------------------------------------------------------------
# Loading


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
            raise DataError(f"{path} has no rows (a header only?); point {flag} at a corpus with text") from error
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


def _resolve_files(path: str, flag: str) -> tuple[str, list[str]]:
    """The datasets builder and the files behind a path (a file or a folder of one format)."""
    if not os.path.exists(path):
        raise DataFileNotFoundError(f"{path} does not exist; check {flag}")
    if not os.path.isdir(path):
        builder = _builder_for(path)
        if builder is None:
            raise DataError(f"{path}: unsupported file type; {flag} takes {SUPPORTED_FORMATS}")
        return builder, [path]
    found = sorted(
        p
        for p in glob.glob(os.path.join(path, "**", "*"), recursive=True)
        if os.path.isfile(p) and not os.path.basename(p).startswith(".") and _builder_for(p)
    )
    builders = sorted({_builder_for(p) for p in found})
    if not builders:
        raise DataError(f"{path} holds no corpus files; {flag} takes {SUPPORTED_FORMATS}")
    if len(builders) > 1:
        raise DataError(f"{path} mixes {' and '.join(builders)} files; keep one format per folder")
    return builders[0], found


def _builder_for(path: str) -> str | None:
    name = os.path.basename(path).lower()
    gz = name.endswith(".gz")
    ext = os.path.splitext(name[:-3] if gz else name)[1]
    if gz and ext == ".parquet":
        return None
    return _BUILDERS.get(ext)


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


def _cache_file(ds: datasets.Dataset, cache_dir: str | None, *key) -> str | None:
    """A cache file under `cache_dir` for an operation on `ds`, or None (datasets' choice: beside `ds`'s files) when
    `ds` lives there already or no cache_dir is given. A save_to_disk folder would otherwise get the derived files."""
    if cache_dir is None or not ds.cache_files:
        return None  # no cache_dir, or in memory (datasets writes nothing)
    root = os.path.realpath(cache_dir)
    if all(os.path.realpath(f["filename"]).startswith(root + os.sep) for f in ds.cache_files):
        return None
    folder = os.path.join(root, "hf_distil")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{key[0]}-{Hasher.hash((ds._fingerprint, *key))}.arrow")


def _not_utf8_message(files) -> str | None:
    """One line naming the first file, line and byte that are not UTF-8, and the fix; None if all decode."""
    for path in files:
        with gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb") as handle:
            line, carry = 1, b""
            while True:
                chunk = handle.read(1 << 20)
                data, carry, bad = carry + chunk, b"", None
                try:
                    data.decode("utf-8")
                except UnicodeDecodeError as error:
                    if chunk and error.reason == "unexpected end of data" and error.end == len(data):
                        data, carry = data[: error.start], data[error.start :]  # a character cut by the chunk end
                    else:
                        bad = error.start
                if bad is not None:
                    line += data.count(b"\n", 0, bad)
                    plain = path[:-3] if path.lower().endswith(".gz") else path
                    stem, ext = os.path.splitext(plain)
                    fix = f"iconv -f latin1 -t utf-8 {plain} > {stem}.utf8{ext}"
                    fix += " (gunzip it first)" if plain != path else ""
                    return (
                        f"{path} is not UTF-8: line {line} has byte 0x{data[bad]:02x}; re-encode it, e.g. {fix} "
                        "(-f cp1252 for Windows/Excel files)"
                    )
                line += data.count(b"\n")
                if not chunk:
                    break
    return None


# ----------------------------------------------------------------------------------------------
# MIMIC-III NOTEEVENTS


def _open_text(path: str):
    """UTF-8 text; "utf-8-sig" drops the byte-order mark that spreadsheets' "CSV UTF-8" puts before the header."""
    if path.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _csv_header(path: str) -> list[str]:
    """The first CSV record's fields, read from the first line only (later bytes may be anything)."""
    try:
        with gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb") as handle:
            line = handle.readline(1 << 16).decode("utf-8-sig", errors="replace")
        return next(csv.reader([line]), [])
    except (OSError, csv.Error, EOFError):
        return []  # not a readable CSV: the csv builder reports it


def is_noteevents(path: str) -> bool:
    """NOTEEVENTS is recognised by its header (any case, any order), not by its file name."""
    header = [h.strip().upper() for h in _csv_header(path)]
    return len(header) == len(NOTEEVENTS_COLUMNS) and set(header) == set(NOTEEVENTS_COLUMNS)


_is_noteevents = is_noteevents  # the name hf_distil.recipe imported first


def noteevents_inputs(data_args: DataArguments) -> list[str]:
    """The --train_file/--validation_file paths that hold NOTEEVENTS (a file, or a folder with one at any depth)."""
    found = []
    for path in (data_args.train_file, data_args.validation_file):
        if path is None or not os.path.exists(path):
            continue
        try:
            builder, files = _resolve_files(path, "")
        except DataError:
            continue
        if builder == "csv" and any(is_noteevents(f) for f in files):
            found.append(path)
    return found


_NOTES_FEATURES = datasets.Features(
    {
        "row": datasets.Value("int64"),  # 1-based data row (record) number in its file
        "line": datasets.Value("int64"),  # 1-based physical line where the record starts
        "row_id": datasets.Value("string"),
        "category": datasets.Value("string"),  # trimmed
        "status": datasets.Value("int8"),
        "problem": datasets.Value("string"),  # why a row is malformed, else null
        "text": datasets.Value("string"),
    }
)


def _parse_iserror(value: str) -> int | None:
    """MIMIC's ISERROR is empty or 1 (re-saved files may hold 0 or 1.0); None when it is neither."""
    value = value.strip()
    if not value:
        return 0
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number in (0.0, 1.0) else None


def _noteevents_rows(files, text_column: str, stop_on_malformed: bool, version: int):
    """Yield every NOTEEVENTS record with its status; streams the file, RFC-4180 quoting (strict).

    `files` holds (path, size, mtime) and `version` the parser's, both only to key the cache.
    """
    csv.field_size_limit(max(csv.field_size_limit(), _MAX_NOTE_CHARS))
    for path, _size, _mtime in files:
        with _open_text(path) as handle:
            reader = csv.reader(handle, strict=True)
            try:
                header = [h.strip().upper() for h in next(reader)]
                index = {name: i for i, name in enumerate(header)}
                i_text, i_error, i_cat, i_id = (
                    index[c] for c in (text_column.upper(), "ISERROR", "CATEGORY", "ROW_ID")
                )
                row, last_line = 0, reader.line_num
                while True:
                    start = last_line + 1
                    try:
                        fields, problem = next(reader), None
                    except StopIteration:
                        break
                    except csv.Error as error:
                        fields, problem = [], f"broken CSV quoting ({error})"
                    last_line = reader.line_num
                    if not fields and problem is None:
                        continue  # a blank line between records
                    row += 1
                    if problem is None and len(fields) != len(header):
                        problem = f"{len(fields)} fields instead of {len(header)}"
                    iserror = _parse_iserror(fields[i_error]) if problem is None else None
                    if problem is None and iserror is None:
                        problem = f"ISERROR is {fields[i_error]!r}, expected empty or 1"
                    row_id = fields[i_id].strip() if len(fields) > i_id else ""
                    if problem is not None:
                        if stop_on_malformed:
                            where = (
                                f"row {row} (line {start}" + (f", ROW_ID {row_id}" if row_id.isdigit() else "") + ")"
                            )
                            raise DataError(
                                f"{path}: malformed NOTEEVENTS {where}: {problem}; "
                                "fix the file or pass --malformed_rows skip to drop such rows"
                            )
                        status, text, category = _MALFORMED, "", ""
                    else:
                        text, category = fields[i_text], fields[i_cat].strip()
                        status = _ISERROR if iserror == 1 else _EMPTY if not text or text.isspace() else _KEEP
                    yield {
                        "row": row,
                        "line": start,
                        "row_id": row_id,
                        "category": category,
                        "status": status,
                        "problem": problem,
                        "text": text,
                    }
            except UnicodeDecodeError as error:
                message = _not_utf8_message([path]) or f"{path} is not UTF-8 text ({error.reason}); re-encode it"
                raise DataError(message) from error


def _load_noteevents(
    source: str, files: list[str], data_args: DataArguments, cache_dir, download_mode
) -> datasets.Dataset:
    """Parse NOTEEVENTS into Arrow (cached), drop error/empty/unselected rows, log why."""
    text_column = data_args.text_column or "TEXT"
    header = [h.strip().upper() for h in _csv_header(files[0])]
    if text_column.upper() not in header:
        raise DataError(
            f"{source} has no column {text_column!r} (columns: {', '.join(header)}); pass --text_column <name>"
        )
    stats = [(os.path.abspath(f), os.path.getsize(f), os.stat(f).st_mtime_ns) for f in files]
    builder = Generator(
        cache_dir=cache_dir,
        generator=_noteevents_rows,
        gen_kwargs={
            "files": stats,
            "text_column": text_column,
            "stop_on_malformed": data_args.malformed_rows == "stop",
            "version": _NOTES_PARSER_VERSION,
        },
        features=_NOTES_FEATURES,
        split=datasets.Split.TRAIN,
    )
    try:
        builder.download_and_prepare(download_mode=download_mode)
    except DatasetGenerationError as error:
        cause = error
        while cause.__cause__ is not None and not isinstance(cause, DataError):
            cause = cause.__cause__
        if isinstance(cause, DataError):
            raise cause from None
        raise DataError(f"could not read {source}: {_first_line(cause)}") from error
    try:
        notes = builder.as_dataset(split=datasets.Split.TRAIN)
    except ValueError:  # datasets writes no file for zero rows
        notes = None
    if notes is None or len(notes) == 0:
        raise DataError(f"{source} has a header but no notes; give a NOTEEVENTS file with rows")

    status = notes.data.column("status").to_numpy()
    counts = np.bincount(status, minlength=4)
    keep = status == _KEEP
    n_ok = int(keep.sum())
    categories = data_args.categories
    if categories is not None:
        in_category = pc.is_in(pc.utf8_lower(notes.data.column("category")), value_set=pa.array(categories))
        keep &= in_category.to_numpy(zero_copy_only=False)
    n_kept = int(keep.sum())
    n_category = n_ok - n_kept
    summary = f"{counts[_ISERROR]:,} with ISERROR=1, {counts[_EMPTY]:,} with empty {text_column}"
    if categories is not None:
        summary += f", {n_category:,} outside --note_categories"
    if data_args.malformed_rows == "skip":
        summary += f", {counts[_MALFORMED]:,} malformed (skipped)"
    logger.info("%s: kept %s of %s notes; dropped %s", source, f"{n_kept:,}", f"{len(notes):,}", summary)
    if counts[_MALFORMED]:
        first = notes[int(np.flatnonzero(status == _MALFORMED)[0])]
        logger.warning(
            "%s: skipped %s malformed rows (first: row %s, line %s: %s)",
            source,
            f"{counts[_MALFORMED]:,}",
            first["row"],
            first["line"],
            first["problem"],
        )
    if n_kept == 0:
        hint = "check the file"
        if categories is not None and n_ok:
            found = sorted(set(pc.unique(notes.data.column("category")).to_pylist()) - {""})
            hint = f"--note_categories={data_args.note_categories!r} matches none of: {', '.join(found)}"
        raise DataError(f"{source}: no notes left after filtering {len(notes):,} rows ({summary}); {hint}")
    notes = notes.select_columns(["text"])
    return notes if n_kept == len(notes) else notes.select(np.flatnonzero(keep))


# ----------------------------------------------------------------------------------------------
# Tokenisation


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
    dropped. `line_by_line`: one truncated example per non-empty line, padding left to the collator.
    Columns: input_ids, attention_mask, special_tokens_mask (+ token_type_ids if the tokenizer makes them).
    The blocks are cached beside the corpus's Arrow files, or under `cache_dir` when the corpus is elsewhere.
    """
    with_types = "token_type_ids" in tokenizer.model_input_names
    if data_args.line_by_line:
        function, features = _tokenize_lines, None
        fn_kwargs = {"tokenizer": tokenizer, "max_seq_length": max_seq_length}
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
            desc=f"Tokenising {split}" + ("" if data_args.line_by_line else f" into blocks of {max_seq_length}"),
        )
    if "train" in out and len(out["train"]) == 0 and len(raw["train"]) > 0:
        if data_args.line_by_line:
            raise DataError("the training corpus has no non-empty line; give a corpus with text")
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


def _tokenize_lines(batch, tokenizer, max_seq_length: int):
    """One example per non-empty line, truncated to `max_seq_length`."""
    lines = [line for text in batch["text"] for line in text.splitlines() if line.strip()]
    if not lines:  # tokenizers cannot encode an empty batch
        return {name: [] for name in [*tokenizer.model_input_names, "special_tokens_mask"]}
    return dict(tokenizer(lines, truncation=True, max_length=max_seq_length, return_special_tokens_mask=True))


def make_collator(tokenizer, data_args: DataArguments, seed: int = 42) -> DataCollatorForLanguageModeling:
    """Masked-LM collator: masking at `mlm_probability`, padding to a multiple of 8, masks seeded per example
    (ReproducibleMLMCollator) so resumed and multi-process runs mask exactly like a single uninterrupted one."""
    from .collator import ReproducibleMLMCollator

    return ReproducibleMLMCollator(
        tokenizer=tokenizer, mlm=True, mlm_probability=data_args.mlm_probability, pad_to_multiple_of=8, seed=seed
    )


# ----------------------------------------------------------------------------------------------


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
