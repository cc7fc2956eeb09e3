"""Tokenising fine-tuning splits: words to sub-tokens with aligned NER labels, or (pairs of) texts with class ids."""

from __future__ import annotations

from datasets import DatasetDict


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

