"""MIMIC-III NOTEEVENTS: recognise it by its header, stream-parse it into cached Arrow, drop the rows not to train on.

Each row is kept with its status (ISERROR, empty, malformed), so the counts logged survive the cache.
"""

from __future__ import annotations

import csv
import gzip
import logging
import os

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.exceptions import DatasetGenerationError
from datasets.packaged_modules.generator.generator import Generator

from .arguments import DataArguments
from .errors import DataError, _first_line
from .files import _resolve_files
from .utf8 import _not_utf8_message

logger = logging.getLogger("hf_distil.data")  # one logger for the package: the command line prints its name

# fmt: off
NOTEEVENTS_COLUMNS = (
    "ROW_ID", "SUBJECT_ID", "HADM_ID", "CHARTDATE", "CHARTTIME", "STORETIME",
    "CATEGORY", "DESCRIPTION", "CGID", "ISERROR", "TEXT",
)
# fmt: on
_MAX_NOTE_CHARS = 16 * 2**20  # a longer CSV field means broken quoting, not a note
_NOTES_PARSER_VERSION = 1  # part of the NOTEEVENTS cache key: bump when parsing rules change
# Status of a NOTEEVENTS row, stored beside it so counts survive the cache.
_KEEP, _ISERROR, _EMPTY, _MALFORMED = 0, 1, 2, 3


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


_noteevents_rows.__module__ = "hf_distil.data"  # datasets hashes it by this name: caches stay valid


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
