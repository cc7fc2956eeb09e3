"""Tiny models, a tiny tokenizer and pre-masked data shared by the tests."""

import csv
import json
import random
from pathlib import Path

import torch
from datasets import Dataset
from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

ROOT = Path(__file__).resolve().parents[1]  # the repository
WORDS = [f"w{i}" for i in range(59)]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS  # 64 tokens


def bert_config(layers=4, hidden=32, vocab=64, dropout=0.1, **kw):
    return BertConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=64, hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout, initializer_range=kw.pop("initializer_range", 0.3), **kw,
    )


def tiny_teacher(seed=0, **kw):
    torch.manual_seed(seed)
    return BertForMaskedLM(bert_config(**kw))


def random_texts(n, seed=0, min_len=4, max_len=20):
    g = torch.Generator().manual_seed(seed)
    texts = []
    for _ in range(n):
        length = int(torch.randint(min_len, max_len, (1,), generator=g))
        texts.append(" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (length,), generator=g)))
    return texts


def text_dataset(tokenizer, n=64, seed=0):
    texts = random_texts(n, seed)
    return Dataset.from_dict({"text": texts}).map(
        lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"]
    )


def premasked_dataset(n=16, length=16, seed=0, vocab=64):
    """Fixed-length examples with padding and labels already drawn, so batch splits do not change the masks."""
    g = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for i in range(n):
        real = int(torch.randint(6, length + 1, (1,), generator=g))
        ids = torch.randint(5, vocab, (length,), generator=g)
        ids[0], ids[real - 1] = 2, 3
        ids[real:] = 0
        attention = (torch.arange(length) < real).long()
        labels = torch.full((length,), -100)
        n_masked = 1 + (i * 7) % max(1, real - 3)  # deliberately uneven masked counts
        picks = torch.randperm(real - 2, generator=g)[:n_masked] + 1
        labels[picks] = ids[picks]
        ids = ids.clone()
        ids[picks] = 4
        rows["input_ids"].append(ids.tolist())
        rows["attention_mask"].append(attention.tolist())
        rows["labels"].append(labels.tolist())
    return Dataset.from_dict(rows)


def args_for(tmp_path, **kw):
    """DistillationArguments for a quick CPU run into tmp_path/out (no saving, no evaluation unless overridden)."""
    from hf_distil import DistillationArguments

    base = dict(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, save_strategy="no",
                eval_strategy="no", per_device_train_batch_size=4, learning_rate=1e-3, seed=0,
                disable_tqdm=True, dataloader_num_workers=0)
    return DistillationArguments(**{**base, **kw})


def batch_of(n=4, seed=0):
    """A default-collated batch of `n` pre-masked examples."""
    from transformers import default_data_collator

    return default_data_collator([premasked_dataset(n, seed=seed)[i] for i in range(n)])


def write_recipe_config(folder, **overrides):
    """folder/config.yaml for the recipe on write_workspace's teacher and corpus, with `overrides` on top."""
    import yaml

    config = {
        "teacher_model_name_or_path": str(folder / "teacher"), "student_num_layers": 2,
        "train_file": str(folder / "corpus.jsonl"), "validation_split_percentage": 20, "max_seq_length": 32,
        "per_device_train_batch_size": 8, "output_dir": str(folder / "out"), "report_to": "none", "use_cpu": True,
        "disable_tqdm": True, "dataloader_num_workers": 0, **overrides,
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder / "config.yaml"


def write_workspace(folder, n_texts=120, seed=1, min_len=10, max_len=40, dropout=0.1):
    """A saved tiny teacher with its tokenizer (folder/teacher) and a jsonl corpus (folder/corpus.jsonl)."""
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"))
    tiny_teacher(dropout=dropout).save_pretrained(folder / "teacher")
    tokenizer.save_pretrained(folder / "teacher")
    with open(folder / "corpus.jsonl", "w") as f:
        for text in random_texts(n_texts, seed=seed, min_len=min_len, max_len=max_len):
            f.write(json.dumps({"text": text}) + "\n")
    return folder


class StopAt:
    """A Trainer callback that ends training after `step` optimizer steps (an 'interruption' to resume from)."""

    def __init__(self, step):
        self.step = step

    def __getattr__(self, name):
        if name.startswith("on_"):
            return lambda args, state, control, **kw: self._maybe_stop(state, control)
        raise AttributeError(name)

    def _maybe_stop(self, state, control):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


def free_port() -> str:
    """A TCP port nobody listens on now, for torchrun's rendezvous (a fixed port collides with parallel runs)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


# ---- a Bio_ClinicalBERT-shaped teacher and a NOTEEVENTS-shaped corpus, for the shipped configs run as shipped ----

CLINICAL_WORDS = (
    "patient admitted with chest pain shortness of breath history hypertension diabetes denies fever cough "
    "exam lungs clear heart regular rate rhythm plan continue aspirin metoprolol monitor labs follow up "
    "discharged home stable condition nursing note alert oriented vital signs within normal limits"
).split()
NOTEEVENTS_HEADER = ["ROW_ID", "SUBJECT_ID", "HADM_ID", "CHARTDATE", "CHARTTIME", "STORETIME", "CATEGORY",
                     "DESCRIPTION", "CGID", "ISERROR", "TEXT"]


def bio_clinical_bert_shaped(folder):
    """12 × 768, vocabulary 28996 (random weights) with a cased WordPiece tokenizer of the same size."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + CLINICAL_WORDS + [f"[unused{i}]" for i in range(28996 - len(specials) - len(CLINICAL_WORDS))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=False)
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=28996)).save_pretrained(folder / "teacher")
    tokenizer.save_pretrained(folder / "teacher")
    return folder / "teacher"


def noteevents_csv(path, n=80, seed=0):
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_NONNUMERIC)
        writer.writerow(NOTEEVENTS_HEADER)
        for i in range(n):
            text = ". ".join(" ".join(rng.choice(CLINICAL_WORDS) for _ in range(12)) for _ in range(20))
            writer.writerow([i + 1, 9000 + i, 190000 + i, "2150-03-02", "", "", "Nursing", "Note", "", "", text])
    return path


FINETUNE_FIXTURES = ROOT / "tests" / "fixtures" / "finetune"


def save_fixture_mlm(folder, hidden=32, layers=2, dropout=0.1, seed=0):
    """A tiny BertForMaskedLM + a tokenizer whose vocab has the fine-tuning fixtures' short words (long ones ->
    wordpieces), saved into `folder`."""
    import re
    from pathlib import Path

    folder = Path(folder)
    words = set()
    for path in FINETUNE_FIXTURES.iterdir():
        words |= set(re.findall(r"[a-z0-9]+|[^\sa-z0-9]", path.read_text(encoding="utf-8").lower()))
    chars = sorted({c for w in words for c in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(w for w in words if len(w) <= 9), *chars]
    vocab += [f"##{c}" for c in chars]
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"))
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=64, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    torch.manual_seed(seed)
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
