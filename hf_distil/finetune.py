"""Downstream evaluation: fine-tune a masked-LM checkpoint (a distilled student or its teacher) on
NER or (sentence-pair) classification, optionally with LoRA, and compare two models on metric,
size and inference speed; results can be added to a model card.

Used by ``recipes/run_finetune.py``; every step is a function here so it can be reused from Python.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, DatasetDict
from transformers import Trainer

from .checkpoints import OutputFolderError, check_output_dir, expected_save_bytes, probe_output_dir
from .errors import DistillationConfigError
from .hub import NoPickleHubMixin, check_push_to_hub

logger = logging.getLogger(__name__)

TASKS = ("auto", "ner", "classification")
CONLL_SUFFIXES = (".conll", ".conll03", ".bio", ".iob", ".iob2", ".txt")
JSON_SUFFIXES = (".json", ".jsonl")
TABLE_SUFFIXES = (".csv", ".tsv")
METRICS_DIR = Path(__file__).resolve().parent / "metrics"
# Written beside each fine-tuned model: what made it, and the output_dir that may overwrite it.
FINETUNE_MARKER = "finetune_args.json"
# Attention query/value projection names by family, tried when peft knows no default for the model type.
_QV_CANDIDATES = (("query", "value"), ("q_lin", "v_lin"), ("q_proj", "v_proj"), ("Wqkv",), ("qkv",))


class FinetuneDataError(DistillationConfigError):
    """A data file or column that cannot be used as given; the message says how to fix it."""


class FinetuneFileNotFoundError(FinetuneDataError, FileNotFoundError):
    """A file or folder named in the arguments does not exist."""


@dataclass
class FinetuneArguments:
    """What to fine-tune on which data, LoRA settings, and the comparison / card options.

    Parsed by ``HfArgumentParser`` beside ``transformers.TrainingArguments`` (CLI flags, JSON or YAML).
    """

    model_name_or_path: str = field(
        metadata={"help": "Masked-LM checkpoint to fine-tune (folder or Hub id), e.g. a distilled student."}
    )
    train_file: str = field(
        metadata={"help": "Training data: CoNLL (.conll/.bio/.iob/.txt) or jsonl for NER; csv/tsv/json/jsonl "
                  "for classification."}
    )
    validation_file: str = field(metadata={"help": "Evaluation data, same format as train_file."})
    test_file: str | None = field(
        default=None,
        metadata={"help": "Optional held-out data; when given, reported metrics come from it instead of "
                  "validation_file."},
    )
    task: str = field(
        default="auto",
        metadata={"help": "ner, classification, or auto (CoNLL files or a tokens column -> ner, else "
                  "classification)."},
    )
    tokens_column: str = field(default="tokens", metadata={"help": "NER json/jsonl: column with the word list."})
    tags_column: str = field(default="tags", metadata={"help": "NER json/jsonl: column with the BIO tag list."})
    text_column: str = field(default="text", metadata={"help": "Classification: column with the (first) text."})
    text_pair_column: str | None = field(
        default=None,
        metadata={"help": "Classification: column with the second text of a pair (e.g. 'hypothesis' for NLI); "
                  "unset for single sentences."},
    )
    label_column: str = field(default="label", metadata={"help": "Classification: column with the class label."})
    max_seq_length: int = field(default=128, metadata={"help": "Inputs are truncated to this many sub-tokens."})
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Name shown in comparison.md and the model card; default: from the train file name."},
    )
    use_lora: bool = field(
        default=False, metadata={"help": "Fine-tune LoRA adapters (peft) instead of all weights; the head "
                                 "is trained fully."}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = lora_alpha / lora_r)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA branch input."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Module names to adapt; default: the attention query/value projections "
                  "(['query', 'value'] for BERT-style models)."},
    )
    merge_lora: bool = field(
        default=False,
        metadata={"help": "Also save the LoRA weights merged into the model under OUTPUT_DIR/merged "
                  "(loads with plain transformers, no peft)."},
    )
    compare_with: str | None = field(
        default=None,
        metadata={"help": "Second checkpoint (e.g. the teacher) fine-tuned the same way; writes "
                  "comparison.md / comparison.json to OUTPUT_DIR."},
    )
    update_card: str | None = field(
        default=None,
        metadata={"help": "Folder whose README.md model card gets a 'Downstream evaluation' table and "
                  "model-index results (usually the distilled model's folder)."},
    )
    speed_batches: int = field(
        default=20, metadata={"help": "Number of evaluation batches timed to measure inference tokens/s."}
    )
    speed_min_seconds: float = field(
        default=1.0, metadata={"help": "Repeat the timed batches until at least this many seconds have passed."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Allow writing into a non-empty output_dir. A model that an earlier run_finetune did not "
                  "write there, and the models being fine-tuned or compared, are never overwritten."},
    )

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r} is not supported; use one of {', '.join(TASKS)}.")
        for name in ("max_seq_length", "lora_r", "speed_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = [m.strip() for m in self.lora_target_modules.split(",") if m.strip()]
        if self.merge_lora and not self.use_lora:
            raise ValueError("merge_lora needs use_lora; add --use_lora or drop --merge_lora.")


@dataclass
class FinetuneResult:
    """What one fine-tuning run measured; ``model`` / ``merged_model`` are not serialised."""

    name: str
    model_name_or_path: str
    task: str
    split: str
    metrics: dict[str, float]
    parameters: int
    trainable_parameters: int
    tokens_per_second: float
    output_dir: str
    lora: dict[str, Any] | None = None
    model: Any = field(default=None, repr=False)
    merged_model: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        skip = ("model", "merged_model")
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}


# ----------------------------------------------------------------------------------------------- data


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
    if all(re.fullmatch(r"-?\d+", v) for v in labels):
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


def tokenize_and_align_labels(examples: dict, tokenizer, label2id: dict[str, int], max_length: int) -> dict:
    """Tokenise pre-split words; each word's label goes to its first sub-token, -100 elsewhere."""
    encoding = tokenizer(examples["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
    labels = []
    for i, tags in enumerate(examples["tags"]):
        previous = None
        row = []
        for word in encoding.word_ids(i):
            row.append(-100 if word is None or word == previous else label2id[tags[word]])
            previous = word
        labels.append(row)
    encoding["labels"] = labels
    return encoding


def tokenize_classification(examples: dict, tokenizer, label2id: dict[str, int], max_length: int) -> dict:
    """Tokenise single texts or (text, text_pair) pairs and map labels to ids."""
    pairs = examples.get("text_pair")
    encoding = tokenizer(examples["text"], pairs, truncation=True, max_length=max_length)
    encoding["labels"] = [label2id[v] for v in examples["label"]]
    return encoding


def preprocess(raw: DatasetDict, tokenizer, task: str, label_list: list[str], max_seq_length: int = 128) -> DatasetDict:
    """Tokenise every split with ``datasets.map(batched=True)``; keeps only model inputs and ``labels``."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; word-to-sub-token alignment needs one "
            "(save the tokenizer with tokenizer.json, or load it with use_fast=True)."
        )
    label2id = {label: i for i, label in enumerate(label_list)}
    fn = tokenize_and_align_labels if task == "ner" else tokenize_classification
    return DatasetDict(
        {
            name: split.map(
                fn, batched=True, remove_columns=split.column_names, desc=f"Tokenising {name}",
                fn_kwargs={"tokenizer": tokenizer, "label2id": label2id, "max_length": max_seq_length},
            )
            for name, split in raw.items()
        }
    )


# ---------------------------------------------------------------------------------------------- model


def head_module_names(model) -> list[str]:
    """Top-level modules outside the backbone that hold weights (e.g. ['classifier']): the task head."""
    prefix = getattr(model, "base_model_prefix", "")
    return [
        name for name, module in model.named_children()
        if name != prefix and any(True for _ in module.parameters())
    ]


def default_lora_target_modules(model) -> list[str]:
    """The attention query/value projections: peft's default for the model type, else found by name."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

    model_type = getattr(model.config, "model_type", None)
    if model_type in defaults:
        return list(defaults[model_type])
    leaf_names = {
        name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)
    }
    for candidate in _QV_CANDIDATES:
        if set(candidate) <= leaf_names:
            return list(candidate)
    raise ValueError(
        f"no default LoRA target modules for model type {model_type!r}; pass --lora_target_modules "
        "with the names of its attention projections."
    )


def apply_lora(model, task: str, r: int = 8, alpha: int = 16, dropout: float = 0.1,
               target_modules: list[str] | None = None):
    """Wrap ``model`` with peft LoRA on ``target_modules``; the classification head is trained fully."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.TOKEN_CLS if task == "ner" else TaskType.SEQ_CLS,
        r=r, lora_alpha=alpha, lora_dropout=dropout,
        target_modules=list(target_modules) if target_modules else default_lora_target_modules(model),
        modules_to_save=head_module_names(model),
    )
    return get_peft_model(model, config)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def build_model(model_name_or_path: str, task: str, label_list: list[str], args: FinetuneArguments | None = None):
    """Token- or sequence-classification model from a (masked-LM) checkpoint, LoRA-wrapped if asked."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    auto = AutoModelForTokenClassification if task == "ner" else AutoModelForSequenceClassification
    model = auto.from_pretrained(
        model_name_or_path,
        num_labels=len(label_list),
        id2label=dict(enumerate(label_list)),
        label2id={label: i for i, label in enumerate(label_list)},
        ignore_mismatched_sizes=True,  # a checkpoint that already has a head with other labels
    )
    if args is not None and args.use_lora:
        model = apply_lora(model, task, args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_target_modules)
    return model


# -------------------------------------------------------------------------------------------- metrics


def load_metric(name: str):
    """A metric module shipped in hf_distil/metrics/<name>/<name>.py, loaded by path (works offline)."""
    import evaluate

    path = METRICS_DIR / name / f"{name}.py"
    if not path.is_file():
        available = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"no shipped metric {name!r}; available: {', '.join(available)}.")
    return evaluate.load(str(path), keep_in_memory=True)


def _argmax_logits(logits, labels):
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def build_compute_metrics(task: str, label_list: list[str]):
    """``compute_metrics`` for ``Trainer``: entity P/R/F1 (NER) or accuracy + macro-F1 (classification).

    Expects predictions already reduced to class ids (see ``preprocess_logits_for_metrics``).
    """
    metric = load_metric("seqeval_entities" if task == "ner" else "classification")

    def compute_metrics(prediction) -> dict[str, float]:
        preds, labels = prediction.predictions, prediction.label_ids
        if isinstance(preds, tuple):
            preds = preds[0]
        if task != "ner":
            return metric.compute(predictions=preds.reshape(-1).tolist(), references=labels.reshape(-1).tolist())
        predictions, references = [], []
        for pred_row, label_row in zip(preds, labels):
            keep = label_row != -100
            predictions.append([label_list[i] for i in pred_row[keep]])
            references.append([label_list[i] for i in label_row[keep]])
        return metric.compute(predictions=predictions, references=references)

    return compute_metrics


# ---------------------------------------------------------------------------------------------- speed


@torch.inference_mode()
def measure_inference_speed(model, dataset: Dataset, collator, batch_size: int = 32, max_batches: int = 20,
                            min_seconds: float = 1.0, warmup: int = 1) -> float:
    """Non-padding input tokens per second of ``model`` on ``dataset`` (a short timed loop, eval mode)."""
    from torch.utils.data import DataLoader

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    columns = [c for c in dataset.column_names if c != "labels"]
    loader = DataLoader(dataset.select_columns(columns), batch_size=batch_size, collate_fn=collator)
    batches = [{k: v.to(device) for k, v in b.items()} for b in islice(loader, max_batches)]
    if not batches:
        raise ValueError("cannot time inference on an empty evaluation set.")
    tokens_per_pass = sum(int(b["attention_mask"].sum()) for b in batches)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for batch in batches[:warmup]:
        model(**batch)
    sync()
    passes, start = 0, time.perf_counter()
    while True:
        for batch in batches:
            model(**batch)
        sync()
        passes += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            break
    model.train(was_training)
    return passes * tokens_per_pass / elapsed


# ------------------------------------------------------------------------------------------- training


def display_name(model_name_or_path: str) -> str:
    """Folder name for local checkpoints, the id for Hub models."""
    path = Path(model_name_or_path)
    return path.resolve().name if path.is_dir() else str(model_name_or_path)


class FinetuneTrainer(NoPickleHubMixin, Trainer):
    """`Trainer` whose saves and pushes hold no pickle and no Hub token (arguments as training_args.json)."""


def finetune_model(model_name_or_path: str, raw: DatasetDict, task: str, label_list: list[str],
                   args: FinetuneArguments, training_args, model=None) -> FinetuneResult:
    """Fine-tune one checkpoint with ``Trainer``, evaluate, save, and time inference.

    Writes to ``training_args.output_dir``: the model (or LoRA adapter + the labelled config),
    tokenizer, ``eval_results.json``; with ``merge_lora`` also ``merged/``. Pass ``model`` to use a
    model you built (e.g. with ``build_model``) instead of loading one.
    """
    from transformers import (
        AutoTokenizer,
        DataCollatorForTokenClassification,
        DataCollatorWithPadding,
        Trainer,
        set_seed,
    )

    set_seed(training_args.seed)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
    except OSError as err:
        raise FinetuneFileNotFoundError(
            f"{model_name_or_path} could not be loaded ({str(err).strip().splitlines()[0]}): pass a folder with "
            "config.json, weights and tokenizer files, or a Hub id reachable from here."
        ) from err
    data = preprocess(raw, tokenizer, task, label_list, args.max_seq_length)
    if model is None:
        model = build_model(model_name_or_path, task, label_list, args)
    if training_args.should_save:  # an unwritable or too small output_dir fails now, not after training
        probe_output_dir(training_args.output_dir, expected_save_bytes(
            model, checkpoint=training_args.save_strategy != "no", optimizer=not training_args.save_only_model))
    trainable, total = count_parameters(model)
    print(f"{display_name(model_name_or_path)}: trainable params: {trainable:,d} || all params: {total:,d} "
          f"|| trainable%: {100 * trainable / total:.4f}")

    collator = (DataCollatorForTokenClassification(tokenizer) if task == "ner"
                else DataCollatorWithPadding(tokenizer))
    eval_split = "test" if "test" in data else "validation"
    trainer = FinetuneTrainer(
        model=model, args=training_args, data_collator=collator,
        train_dataset=data["train"], eval_dataset=data["validation"], processing_class=tokenizer,
        compute_metrics=build_compute_metrics(task, label_list),
        preprocess_logits_for_metrics=_argmax_logits,
    )
    trainer.train()
    metrics = trainer.evaluate(data[eval_split], metric_key_prefix=eval_split)
    trainer.save_metrics(eval_split, metrics)
    trainer.save_model()
    if trainer.is_world_process_zero():
        marker = {"output_dir": str(training_args.output_dir), **dataclasses.asdict(args)}
        (Path(training_args.output_dir) / FINETUNE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")

    deployed = trainer.model
    merged = None
    lora = None
    if args.use_lora:
        # The adapter alone does not record the label names: save the labelled config beside it.
        deployed.get_base_model().config.save_pretrained(training_args.output_dir)
        merged = copy.deepcopy(deployed).merge_and_unload()
        deployed = merged
        lora = {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout,
                "target_modules": sorted(trainer.model.peft_config["default"].target_modules)}
        if args.merge_lora and trainer.is_world_process_zero():
            merged.save_pretrained(Path(training_args.output_dir) / "merged")
            tokenizer.save_pretrained(Path(training_args.output_dir) / "merged")

    speed = measure_inference_speed(
        deployed, data[eval_split], collator, batch_size=training_args.per_device_eval_batch_size,
        max_batches=args.speed_batches, min_seconds=args.speed_min_seconds,
    )
    prefix = f"{eval_split}_"
    return FinetuneResult(
        name=display_name(model_name_or_path), model_name_or_path=str(model_name_or_path), task=task,
        split=eval_split,
        metrics={k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)},
        parameters=sum(p.numel() for p in deployed.parameters()), trainable_parameters=trainable,
        tokens_per_second=speed, output_dir=str(training_args.output_dir), lora=lora,
        model=trainer.model, merged_model=merged,
    )


def check_finetune_output_dir(args: FinetuneArguments, training_args) -> None:
    """Raise OutputFolderError before any work when output_dir (or its compare_with/) is the folder of a model this
    run reads, holds a model an earlier run_finetune did not write, or is not empty without overwrite_output_dir."""
    sources = {"--model_name_or_path": args.model_name_or_path, "--compare_with": args.compare_with,
               "--update_card": args.update_card}
    out = str(training_args.output_dir)
    for folder in [out] + ([os.path.join(out, "compare_with")] if args.compare_with else []):
        check_output_dir(folder, sources, marker=FINETUNE_MARKER)
    if os.path.isdir(out) and any(Path(out).iterdir()) and not args.overwrite_output_dir:
        raise OutputFolderError(
            f"output_dir {out!r} is not empty: pass --overwrite_output_dir true to write over it, or choose another "
            "output_dir."
        )


def run_finetune(args: FinetuneArguments, training_args) -> list[FinetuneResult]:
    """The whole recipe: fine-tune, optionally the comparison model too, write the table, update the card.

    With push_to_hub the repository is private unless hub_private_repo says otherwise; only the first model is pushed.
    """
    check_push_to_hub(training_args)
    for flag, path in (("model_name_or_path", args.model_name_or_path), ("compare_with", args.compare_with)):
        if path and os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
            raise FinetuneFileNotFoundError(
                f"--{flag} {path} has no config.json: pass the folder that save_pretrained wrote."
            )
    if training_args.push_to_hub and training_args.hub_private_repo is None:
        training_args.hub_private_repo = True
    check_finetune_output_dir(args, training_args)
    raw, task, label_list = load_splits(args)
    dataset_name = args.dataset_name or default_dataset_name(args.train_file)
    logger.info("task=%s, %d labels: %s", task, len(label_list), label_list)
    runs = [(args.model_name_or_path, training_args)]
    if args.compare_with:
        compare_dir = str(Path(training_args.output_dir) / "compare_with")
        runs.append((args.compare_with,
                     dataclasses.replace(training_args, output_dir=compare_dir, push_to_hub=False)))
    results = []
    for path, run_args in runs:
        result = finetune_model(path, raw, task, label_list, args, run_args)
        result.model = result.merged_model = None  # free memory before the next model
        results.append(result)
    is_main = training_args.process_index == 0
    if args.compare_with and is_main:
        write_comparison(results, training_args.output_dir, dataset_name)
    if args.update_card and is_main:
        update_model_card(args.update_card, results, dataset_name)
    return results


# ----------------------------------------------------------------------------------- tables and cards

_TASK_INFO = {
    "ner": ("token-classification", "Named-entity recognition",
            [("f1", "entity F1"), ("precision", "precision"), ("recall", "recall")]),
    "classification": ("text-classification", "Text classification",
                       [("accuracy", "accuracy"), ("macro_f1", "macro-F1")]),
}


def _fmt_int(n: int) -> str:
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n:,d}"


def results_table(results: list[FinetuneResult], first_label: str | None = None) -> str:
    """Markdown table: the task metrics, parameters, trainable parameters and inference tokens/s per model."""
    columns = _TASK_INFO[results[0].task][2]
    header = ["model", *(label for _, label in columns), "parameters", "trained parameters", "inference tokens/s"]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for i, r in enumerate(results):
        name = first_label if (i == 0 and first_label) else f"`{r.name}`"
        if r.lora:
            name += f" (LoRA r={r.lora['r']})"
        cells = [name, *(f"{r.metrics.get(key, float('nan')):.4f}" for key, _ in columns),
                 _fmt_int(r.parameters), _fmt_int(r.trainable_parameters), f"{r.tokens_per_second:,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_summary(results: list[FinetuneResult]) -> str:
    """One sentence: the first model's main metric, size and speed relative to the second."""
    first, second = results[0], results[1]
    key, label = _TASK_INFO[first.task][2][0]
    if second.metrics.get(key):
        quality = f"reaches {100 * first.metrics[key] / second.metrics[key]:.1f} % of `{second.name}`'s {label}"
    else:
        quality = f"scores {label} {first.metrics[key]:.4f} against {second.metrics[key]:.4f} for `{second.name}`"
    return (f"`{first.name}` {quality} with "
            f"{first.parameters / second.parameters:.2f}x the parameters and "
            f"{first.tokens_per_second / second.tokens_per_second:.2f}x the inference speed.")


def _device_note() -> str:
    if torch.cuda.is_available():
        return f"GPU ({torch.cuda.get_device_name(0)})"
    return f"CPU ({torch.get_num_threads()} threads)"


def write_comparison(results: list[FinetuneResult], output_dir: str | os.PathLike, dataset_name: str) -> Path:
    """Write ``comparison.md`` and ``comparison.json`` to ``output_dir``; returns the markdown path."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    first = results[0]
    text = (
        f"# Fine-tuning comparison: {dataset_name} ({_TASK_INFO[first.task][1].lower()}, {first.split} split)\n\n"
        f"{results_table(results)}\n\n{comparison_summary(results)}\n\n"
        f"Inference tokens/s: non-padding tokens per second on the {first.split} inputs, measured on this "
        f"machine ({_device_note()}), same batches for every model.\n"
    )
    (out / "comparison.md").write_text(text, encoding="utf-8")
    payload = {"dataset": dataset_name, "device": _device_note(), "results": [r.to_dict() for r in results]}
    (out / "comparison.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return out / "comparison.md"


_SECTION = "## Downstream evaluation"


def _replace_section(text: str, heading: str, body: str) -> str:
    """Replace (or append) the '### heading' block inside the '## Downstream evaluation' section."""
    block = f"{heading}\n\n{body.strip()}\n"
    match = re.search(rf"^{re.escape(_SECTION)}[ \t]*$", text, flags=re.M)
    if match is None:
        intro = ("Fine-tuned on downstream tasks with `recipes/run_finetune.py` (hf-distil); "
                 "metrics on the split named in each heading.")
        return text.rstrip("\n") + f"\n\n{_SECTION}\n\n{intro}\n\n{block}"
    end_match = re.compile(r"^#{1,2} ", flags=re.M).search(text, match.end())
    end = end_match.start() if end_match else len(text)
    section = text[match.end():end]
    sub = re.search(rf"^{re.escape(heading)}[ \t]*$", section, flags=re.M)
    if sub:
        next_sub = re.compile(r"^### ", flags=re.M).search(section, sub.end())
        stop = next_sub.start() if next_sub else len(section)
        section = section[:sub.start()] + block + ("\n" if next_sub else "") + section[stop:]
    else:
        section = section.rstrip("\n") + f"\n\n{block}"
    tail = text[end:]
    return text[:match.end()] + section + ("\n" + tail if tail else "")


def update_model_card(folder: str | os.PathLike, results: list[FinetuneResult], dataset_name: str):
    """Add the first result to ``folder/README.md``: ``model-index`` eval results and a table row.

    Results for the same task, dataset, split and metric are replaced, others kept; the other
    results (e.g. the teacher) appear in the table for context. Returns the re-loaded, validated card.
    """
    from huggingface_hub import EvalResult, ModelCard

    readme = Path(folder) / "README.md"
    if not readme.is_file():
        raise FinetuneFileNotFoundError(
            f"{readme} does not exist; --update_card takes the folder of a saved model that has a model card."
        )
    card = ModelCard.load(readme)
    first = results[0]
    task_type, task_name, columns = _TASK_INFO[first.task]
    dataset_type = re.sub(r"[^A-Za-z0-9_.\-]+", "-", dataset_name).strip("-").lower() or "dataset"
    new = [
        EvalResult(
            task_type=task_type, task_name=task_name, dataset_type=dataset_type, dataset_name=dataset_name,
            dataset_split=first.split, metric_type="f1" if key.endswith("f1") else key,
            metric_name=label if first.task == "classification" else f"{label} (seqeval)",
            metric_value=round(float(first.metrics[key]), 4),
            metric_args={"average": "macro"} if key == "macro_f1" else None,
        )
        for key, label in columns
    ]

    def same(a, b):
        return (a.task_type, a.dataset_type, a.dataset_name, a.dataset_split, a.metric_type, a.metric_name) == (
            b.task_type, b.dataset_type, b.dataset_name, b.dataset_split, b.metric_type, b.metric_name)

    kept = [old for old in (card.data.eval_results or []) if not any(same(old, n) for n in new)]
    card.data.eval_results = kept + new
    card.data.model_name = card.data.model_name or Path(folder).resolve().name
    heading = f"### {dataset_name}: {task_name.lower()} ({first.split} split)"
    table = results_table(results, first_label="**this model**")
    note = comparison_summary(results) + "\n\n" if len(results) > 1 else ""
    newline = "\r\n" if "\r\n" in card.text else "\n"  # keep the card's own line endings
    text = _replace_section(
        card.text.replace("\r\n", "\n"), heading,
        f"{table}\n\n{note}Inference tokens/s measured on {_device_note()}; entity metrics with seqeval "
        "(conlleval-compatible), classification metrics with scikit-learn.",
    )
    card.text = text.replace("\n", newline)
    card.save(readme)
    return validate_model_card(readme)


def validate_model_card(path: str | os.PathLike):
    """Offline check of a saved card: it re-loads strictly and its model-index parses back to eval results."""
    import yaml
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard import REGEX_YAML_BLOCK
    from huggingface_hub.repocard_data import model_index_to_eval_results

    card = ModelCard.load(path, ignore_metadata_errors=False)
    match = REGEX_YAML_BLOCK.search(Path(path).read_text(encoding="utf-8"))
    metadata = yaml.safe_load(match.group(2)) if match else {}
    if "model-index" in metadata:
        name, results = model_index_to_eval_results(metadata["model-index"])
        if name != card.data.model_name or len(results) != len(card.data.eval_results or []):
            raise ValueError(f"{path}: model-index does not round-trip; fix or remove it and re-run.")
    return card
