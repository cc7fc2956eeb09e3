"""Where the files derived from a dataset (selections, splits, blocks) are cached."""

from __future__ import annotations

import os

import datasets
from datasets.fingerprint import Hasher


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
