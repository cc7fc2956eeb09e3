"""The files a corpus path names (a file, or a folder of one format) and the `datasets` builder that reads them."""

from __future__ import annotations

import glob
import os

from .errors import DataError, DataFileNotFoundError

_BUILDERS = {".txt": "text", ".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
SUPPORTED_FORMATS = ".txt, .csv, .json, .jsonl, .parquet (the text formats may be .gz) or a folder of them"


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
