"""Reading fine-tuning data: CoNLL, json(l) and csv/tsv files into train / validation (/ test) splits, the task they
imply, and their label list. Every unusable file or column is a `FinetuneDataError` naming the fix.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from datasets import Dataset, DatasetDict

from .arguments import FinetuneArguments
from .errors import FinetuneDataError, FinetuneFileNotFoundError

CONLL_SUFFIXES = (".conll", ".conll03", ".bio", ".iob", ".iob2", ".txt")
JSON_SUFFIXES = (".json", ".jsonl")
TABLE_SUFFIXES = (".csv", ".tsv")


def _check_file(path: str | os.PathLike, flag: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FinetuneFileNotFoundError(f"{flag} {path} does not exist; pass the path of an existing data file.")
    return path


def infer_task(path: str | os.PathLike, tokens_column: str = "tokens") -> str:
    """'ner' for CoNLL files or json(l) rows with a tokens column, else 'classification'."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in CONLL_SUFFIXES:
        return "ner"
    if suffix in JSON_SUFFIXES:
        with path.open(encoding="utf-8") as f:
            first = f.readline().strip()
        try:
            row = json.loads(first)  # json lines
        except json.JSONDecodeError:
            try:
                row = json.loads(path.read_text(encoding="utf-8"))  # one JSON array of records
            except json.JSONDecodeError:
                row = {}
        if isinstance(row, list):
            row = row[0] if row else {}
        return "ner" if isinstance(row, dict) and tokens_column in row else "classification"
    return "classification"


BIO_TAG = re.compile(r"^(O|[BIESLU](-\S+)?)$")


def read_conll(path: str | os.PathLike) -> Dataset:
    """CoNLL-style file (token first, tag last on each line; blank line between sentences) -> tokens/tags."""
    path = _check_file(path, "CoNLL file")
    sentences: dict[str, list] = {"tokens": [], "tags": []}
    tokens: list[str] = []
    tags: list[str] = []

    def flush():
        if tokens:
            sentences["tokens"].append(list(tokens))
            sentences["tags"].append(list(tags))
        tokens.clear()
        tags.clear()

    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                flush()
                continue
            if parts[0] == "-DOCSTART-":
                flush()
                continue
            if len(parts) < 2:
                raise FinetuneDataError(
                    f"{path}:{lineno}: expected 'TOKEN ... TAG' (whitespace-separated), got {line.strip()!r}; "
                    "put the BIO tag in the last column."
                )
            if not BIO_TAG.match(parts[-1]):
                raise FinetuneDataError(
                    f"{path}:{lineno}: the last column {parts[-1]!r} is not a BIO tag ('O', 'B-TYPE', 'I-TYPE'); put "
                    "the tag in the last column (drop a score or other column after it)."
                )
            tokens.append(parts[0])
            tags.append(parts[-1])
    flush()
    if not sentences["tokens"]:
        raise FinetuneDataError(f"{path} holds no sentences; expected one 'TOKEN TAG' per line.")
    return Dataset.from_dict(sentences)


def _read_table(path: Path) -> Dataset:
    suffix = path.suffix.lower()
    if suffix in JSON_SUFFIXES + TABLE_SUFFIXES:
        with path.open(encoding="utf-8", errors="replace") as f:
            if not f.read(65536).strip():
                raise FinetuneDataError(f"{path} is empty: give it examples (one row per example).")
    if suffix in JSON_SUFFIXES + TABLE_SUFFIXES:
        try:
            if suffix in JSON_SUFFIXES:
                ds = Dataset.from_json(str(path))
            else:
                ds = Dataset.from_csv(str(path), sep="\t" if suffix == ".tsv" else ",")
        except ValueError as err:  # datasets: 'Instruction "train" corresponds to no data!'
            if "no data" not in str(err):
                raise
            ds = None
        if ds is None or len(ds) == 0:
            what = "holds no rows" if suffix in JSON_SUFFIXES else "has a header but no rows"
            raise FinetuneDataError(f"{path} {what}: give it examples (one row per example).")
        return ds
    raise FinetuneDataError(
        f"{path}: unsupported file type {suffix!r}; use {', '.join(CONLL_SUFFIXES + JSON_SUFFIXES + TABLE_SUFFIXES)}."
    )


def _require_columns(ds: Dataset, path: Path, columns: dict[str, str]) -> None:
    for flag, column in columns.items():
        if column not in ds.column_names:
            raise FinetuneDataError(
                f"{path} has no column {column!r} (columns: {', '.join(ds.column_names)}); set --{flag}."
            )


def load_ner_split(path: str | os.PathLike, tokens_column: str = "tokens", tags_column: str = "tags") -> Dataset:
    """One NER split from CoNLL or json(l) as a Dataset with list columns ``tokens`` and ``tags``."""
    path = _check_file(path, "NER file")
    if path.suffix.lower() in CONLL_SUFFIXES:
        return read_conll(path)
    ds = _read_table(path)
    _require_columns(ds, path, {"tokens_column": tokens_column, "tags_column": tags_column})
    ds = ds.select_columns([tokens_column, tags_column])
    ds = ds.rename_columns({c: n for c, n in ((tokens_column, "tokens"), (tags_column, "tags")) if c != n})
    for i, (tokens, tags) in enumerate(zip(ds["tokens"], ds["tags"])):
        if len(tokens) != len(tags):
            raise FinetuneDataError(
                f"{path} row {i}: {len(tokens)} tokens but {len(tags)} tags; give one tag per token."
            )
        if tags and not isinstance(tags[0], str):
            raise FinetuneDataError(f"{path} row {i}: tags must be BIO strings such as 'B-PROBLEM', got {tags[0]!r}.")
    return ds


def load_classification_split(
    path: str | os.PathLike, text_column: str = "text", label_column: str = "label", text_pair_column: str | None = None
) -> Dataset:
    """One classification split from csv/tsv/json(l) with columns ``text`` (``text_pair``) and ``label`` (str)."""
    path = _check_file(path, "classification file")
    ds = _read_table(path)
    wanted = {"text_column": text_column, "label_column": label_column}
    if text_pair_column:
        wanted["text_pair_column"] = text_pair_column
    _require_columns(ds, path, wanted)
    rename = {text_column: "text", label_column: "label"}
    if text_pair_column:
        rename[text_pair_column] = "text_pair"
    ds = ds.select_columns(list(rename)).rename_columns({k: v for k, v in rename.items() if k != v})
    for column, flag in (("text", "text_column"), ("text_pair", "text_pair_column")):
        if column in ds.column_names:
            bad = next(((i, v) for i, v in enumerate(ds[column]) if not isinstance(v, str)), None)
            if bad is not None:
                raise FinetuneDataError(
                    f"{path} row {bad[0]}: the text column {wanted[flag]!r} holds {bad[1]!r}, not text; name the "
                    f"column of the texts with --{flag}, or fill the empty cell."
                )
    empty = next((i for i, v in enumerate(ds["label"]) if v is None or (isinstance(v, str) and not v.strip())), None)
    if empty is not None:
        raise FinetuneDataError(f"{path} row {empty}: the label is empty; give every example a label (or drop it).")
    return ds.map(lambda b: {"label": [str(v) for v in b["label"]]}, batched=True)


def _tag_sort_key(tag: str) -> tuple:
    if tag == "O":
        return (0, "", 0)
    prefix, _, entity = tag.partition("-")
    return (1, entity or prefix, "BIESLU".find(prefix[:1]) if entity else 0)


def build_label_list(raw: DatasetDict, task: str) -> list[str]:
    """Labels of all splits in a stable order: 'O' then B-/I- by entity type (NER); sorted, numerically if all ints."""
    if task == "ner":
        tags = {t for split in raw.values() for row in split["tags"] for t in row}
        return sorted(tags, key=_tag_sort_key)
    labels = {v for split in raw.values() for v in split["label"]}
    if all(re.fullmatch(r"-?\d+", str(v)) for v in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def default_dataset_name(train_file: str | os.PathLike) -> str:
    """'ner' from 'data/ner_train.conll'; 'i2b2' from 'i2b2/train.txt'."""
    path = Path(train_file)
    stem = re.sub(r"(^|[_\-.])(train|training)$", "", path.stem, flags=re.I)
    return stem or path.resolve().parent.name


def load_splits(args: FinetuneArguments) -> tuple[DatasetDict, str, list[str]]:
    """Read train / validation (/ test) files -> (raw DatasetDict, task, label list)."""
    task = args.task
    if task == "auto":
        task = infer_task(_check_file(args.train_file, "train_file"), args.tokens_column)
    files = {"train": args.train_file, "validation": args.validation_file}
    if args.test_file:
        files["test"] = args.test_file
    if task == "ner":
        raw = DatasetDict({k: load_ner_split(v, args.tokens_column, args.tags_column) for k, v in files.items()})
    else:
        raw = DatasetDict(
            {k: load_classification_split(v, args.text_column, args.label_column, args.text_pair_column)
             for k, v in files.items()}
        )
    _check_labels_seen_in_training(raw, task, files)
    return raw, task, build_label_list(raw, task)


def _check_labels_seen_in_training(raw: DatasetDict, task: str, files: dict[str, str]) -> None:
    """A label only in validation/test would add a head row that training never updates: refuse, naming them."""
    def labels(split):
        return {t for row in split["tags"] for t in row} if task == "ner" else set(split["label"])

    seen = labels(raw["train"])
    for name in ("validation", "test"):
        if name in raw:
            unseen = sorted(labels(raw[name]) - seen)
            if unseen:
                shown = ", ".join(map(repr, unseen[:10])) + (f" and {len(unseen) - 10} more" * (len(unseen) > 10))
                raise FinetuneDataError(
                    f"{files[name]} has labels that train_file {files['train']} never uses: {shown}; the model "
                    f"cannot learn them: add training examples with them, or fix/remove those rows of {name}_file."
                )
