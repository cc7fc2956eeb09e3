"""Quality benchmark: does a half-depth distilled student keep its teacher's skill, on real text and a real task?

The teacher is `benchmarks/assets/medical-bert-teacher`: a 6-layer BERT pretrained from scratch on real medical text
(recipes/pretrain_medical_teacher.py; its card has the command, the numbers and the data licences). Every student has
3 layers (the teacher's width 128, or 64 for the narrow TinyBERT-style / MiniLM-style rows and their MLM-only control)
and the same budget (steps, batch, learning-rate schedule, data order, seed); each is trained through the recipe's
own code (`hf_distil.recipe.main`) on the teacher's pretraining text. Then the teacher and every student are

- fine-tuned (all weights, `hf_distil.finetune`) on MTS-Dialog section-header classification (20 classes; TrainingSet
  to train, ValidationSet to pick the epoch, both Final_200_TestSets, 400 sections, to report), with several seeds:
  accuracy and macro-F1, mean ± standard deviation, and the student/teacher retention ratio;
- scored as masked LMs on the MTS test texts under one fixed masking (same positions for every model): masked-token
  accuracy, perplexity and top-1 agreement with the teacher, beside an add-one unigram model of the training text;
- timed side by side (inference tokens/s of the fine-tuned classifiers on the same test batches, interleaved rounds);
- and, for task distillation, per seed: the teacher fine-tuned on the sections, distilled on them into a half-depth
  student (`run_finetune.py recipes/configs/task_distil.yaml --distil_from`), beside the same student fine-tuned
  without the teacher.

Writes OUT/quality.json (every number, every seed), OUT/quality.md (the table), OUT/quality.png (bars with
error bars) and OUT/task_distillation.{json,md}. ../shared/data holds the text (never committed; see its README for
the licences).

    python benchmarks/bench_quality.py --out out/quality              # 2 CPU cores: about 55 minutes
    python benchmarks/bench_quality.py --smoke --out /tmp/q           # the whole pipeline at toy sizes
    python benchmarks/bench_quality.py --part task --out out/q        # the task-distillation rows alone
    python benchmarks/bench_quality.py --device cuda --out out/q      # bigger budgets on a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
DEFAULT_TEACHER = ROOT / "benchmarks" / "assets" / "medical-bert-teacher"
DEFAULT_DATA = ROOT.parent / "shared" / "data"
MTS_SPLITS = {"train": ("TrainingSet",), "validation": ("ValidationSet",),
              "test": ("Final_200_TestSet_1", "Final_200_TestSet_2")}


@dataclass(frozen=True)
class Sizes:
    """The budget of one benchmark run (every student gets the same distillation budget)."""

    student_layers: int
    distil_steps: int
    distil_batch: int
    learning_rate: float
    max_train_texts: int | None  # pretraining texts the students see (None: all)
    max_eval_blocks: int | None  # validation blocks of the recipe's own evaluation (None: all)
    finetune_epochs: int
    finetune_lr: float
    finetune_train_rows: int | None  # MTS TrainingSet rows (None: all)
    finetune_eval_rows: int | None  # MTS validation and test rows (None: all)
    seeds: int
    task_teacher_epochs: int  # fine-tuning epochs of the task-distillation teacher (trained to its best)


SIZES = {
    "smoke": Sizes(student_layers=3, distil_steps=4, distil_batch=8, learning_rate=5e-4, max_train_texts=300,
                   max_eval_blocks=16, finetune_epochs=1, finetune_lr=1e-4, finetune_train_rows=60,
                   finetune_eval_rows=40, seeds=2, task_teacher_epochs=1),
    "cpu": Sizes(student_layers=3, distil_steps=600, distil_batch=64, learning_rate=5e-4, max_train_texts=None,
                 max_eval_blocks=None, finetune_epochs=6, finetune_lr=5e-4, finetune_train_rows=None,
                 finetune_eval_rows=None, seeds=3, task_teacher_epochs=18),
    "cuda": Sizes(student_layers=3, distil_steps=6000, distil_batch=128, learning_rate=5e-4, max_train_texts=None,
                  max_eval_blocks=None, finetune_epochs=10, finetune_lr=5e-4, finetune_train_rows=None,
                  finetune_eval_rows=None, seeds=5, task_teacher_epochs=30),
}

# The seed's objective (../shared/seed-model-card.md, recipes/configs/distil_clinical_bert.yaml): T 2, KL 5, MLM 2,
# hidden-state cosine 1, the KL at the masked positions.
SEED_OBJECTIVE = {"temperature": 2.0, "alpha_kd": 5.0, "alpha_mlm": 2.0, "alpha_hidden": 1.0, "hidden_loss": "cosine",
                  "kd_positions": "masked"}


@dataclass(frozen=True)
class Student:
    """One row of the table: how the student starts and what it is trained on (same budget for all)."""

    name: str
    # "teacher": every other teacher layer (create_student); "random": a fresh model of the same shape, or, with
    # `widths`, a narrower one (create_student's random init)
    init: str
    objective: dict
    trained: bool = True
    note: str = ""
    widths: dict | None = None  # hidden_size / intermediate_size / num_attention_heads of a narrower student


# Narrower students: half the teacher's width (128 → 64), its 2 heads (so attention maps compare head by head).
NARROW = {"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 2}
# TinyClinicalBERT's recipe (recipes/configs/tiny_clinical_bert.yaml): attention-map MSE over the uniform layer map,
# hidden-state MSE through learned projections, soft cross-entropy at T 1 on the masked positions, no MLM term.
TINYBERT_OBJECTIVE = {"alpha_attention": 1.0, "alpha_intermediate": 1.0, "alpha_kd": 1.0, "temperature": 1.0}
# MiniLM v2 (recipes/configs/minilm_clinical.yaml): the self-attention relations of the teacher's last layer alone.
MINILM_OBJECTIVE = {"alpha_relation": 1.0, "relation_heads": 4}


STUDENTS = (
    Student("distilled", "teacher", SEED_OBJECTIVE, note="seed objective, every-other-layer init"),
    Student("mlm-only", "teacher", {"alpha_kd": 0.0, "alpha_mlm": 2.0, "alpha_hidden": 0.0},
            note="same init and budget, the seed's masked-LM term alone (no teacher signal)"),
    Student("random-init distilled", "random", SEED_OBJECTIVE, note="seed objective from a random init"),
    Student("init only", "teacher", {}, trained=False, note="every-other-layer init, not trained (reference)"),
    Student("TinyBERT-style", "random", TINYBERT_OBJECTIVE, widths=NARROW,
            note="3 × 64 from random init: attention + projected hidden states + KD at T 1 (TinyClinicalBERT's)"),
    Student("MiniLM-style", "random", MINILM_OBJECTIVE, widths=NARROW,
            note="3 × 64 from random init: Q-Q/K-K/V-V relations of the teacher's last layer alone (MiniLM v2)"),
    Student("narrow mlm-only", "random", {"alpha_mlm": 2.0}, widths=NARROW,
            note="3 × 64 from random init, the masked-LM term alone: the narrow students' control"),
)
# Paired per-seed comparisons of the summary: (method, its control with the same shape, init and budget).
COMPARISONS = (("distilled", "mlm-only"), ("TinyBERT-style", "narrow mlm-only"), ("MiniLM-style", "narrow mlm-only"))


# ---------------------------------------------------------------- data


class BenchmarkInputError(ValueError):
    """Input the benchmark cannot use; main() prints it as one line."""



def read_mts(data: Path) -> dict[str, list[dict]]:
    """MTS-Dialog sections by benchmark split: {"train"|"validation"|"test": [{"text", "label", "split"}]}."""
    path = data / "mts_sections.jsonl"
    rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    missing = [key for key in ("split", "section_header", "text") if any(key not in r for r in rows)]
    if missing:
        raise BenchmarkInputError(f"{path}: rows without {', '.join(missing)}; expected MTS-Dialog sections "
                                  "(split, section_header, text).")
    splits = {split: [{"text": r["text"], "label": r["section_header"], "split": r["split"]}
                      for r in rows if r["split"] in names]
              for split, names in MTS_SPLITS.items()}
    empty = [" or ".join(MTS_SPLITS[split]) for split, split_rows in splits.items() if not split_rows]
    if empty:
        raise BenchmarkInputError(f"{path} has no rows of split {', '.join(empty)}.")
    return splits


def write_mts_files(mts: dict[str, list[dict]], folder: Path, train_rows: int | None,
                    eval_rows: int | None) -> dict[str, Path]:
    """jsonl files for hf_distil.finetune (text, label). Cut (smoke runs): the training rows to train_rows, taken in
    turn from each label so that every label is still trained on; the evaluation rows to those labels."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    trained = None
    for split, rows in mts.items():
        if split == "train" and train_rows:
            by_label = {}
            for row in rows:
                by_label.setdefault(row["label"], []).append(row)
            in_turn = [row for group in itertools.zip_longest(*by_label.values()) for row in group if row]
            rows = in_turn[:train_rows]
            trained = {row["label"] for row in rows}
        elif split != "train" and eval_rows:
            rows = [row for row in rows if trained is None or row["label"] in trained][:eval_rows]
        paths[split] = folder / f"{split}.jsonl"
        with open(paths[split], "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in rows)
    return paths


def build_corpus(data: Path, out: Path, max_texts: int | None) -> Path:
    """The teacher's pretraining text (make_real_text_corpus.py), optionally cut to its first max_texts rows."""
    import make_real_text_corpus

    make_real_text_corpus.main(["--data", str(data), "--out", str(out)])
    if max_texts:
        lines = (out / "train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        (out / "train.jsonl").write_text("".join(lines[:max_texts]), encoding="utf-8")
    return out


# ---------------------------------------------------------------- students


def random_student(teacher_dir: Path, num_layers: int, seed: int, folder: Path) -> Path:
    """A freshly initialised masked LM of the student's shape (the teacher's config, fewer layers), saved."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    config = AutoConfig.from_pretrained(teacher_dir)
    config.num_hidden_layers = num_layers
    torch.manual_seed(seed)
    AutoModelForMaskedLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    return folder


def untrained_student(teacher_dir: Path, num_layers: int, folder: Path) -> Path:
    """`create_student` of the teacher (every other layer), saved with the teacher's tokenizer, not trained."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from hf_distil import create_student

    teacher = AutoModelForMaskedLM.from_pretrained(teacher_dir, dtype=torch.float32)
    create_student(teacher, num_layers).save_pretrained(folder)
    AutoTokenizer.from_pretrained(teacher_dir).save_pretrained(folder)
    return folder


def distil_student(student: Student, teacher_dir: Path, corpus: Path, folder: Path, sizes: Sizes, device: str,
                   seed: int = 42) -> dict:
    """Train one student through the recipe (hf_distil.recipe.main); returns its final metrics and wall time."""
    from hf_distil import recipe

    if not student.trained:
        start = time.perf_counter()
        untrained_student(teacher_dir, sizes.student_layers, folder)
        return {"minutes": (time.perf_counter() - start) / 60}
    objective = {"alpha_kd": 0.0, "alpha_mlm": 0.0, "alpha_hidden": 0.0, **student.objective}
    widths = {f"student_{name}": value for name, value in (student.widths or {}).items()}
    flags = {
        "teacher_model_name_or_path": teacher_dir, "train_file": corpus / "train.jsonl",
        "validation_file": corpus / "valid.jsonl", "output_dir": folder, "overwrite_output_dir": "true",
        "student_num_layers": sizes.student_layers, "student_layers": "every_other", "max_seq_length": 128,
        "mlm_probability": 0.15, **objective, **widths,
        "max_steps": sizes.distil_steps, "per_device_train_batch_size": sizes.distil_batch,
        "per_device_eval_batch_size": 64, "learning_rate": sizes.learning_rate, "lr_scheduler_type": "linear",
        "warmup_steps": 0.05, "weight_decay": 1e-4, "seed": seed, "data_seed": seed,
        "logging_steps": max(sizes.distil_steps // 20, 1), "eval_strategy": "no", "save_strategy": "no",
        "report_to": "none", "dataloader_num_workers": 0,
        "max_eval_samples": sizes.max_eval_blocks, "logging_nan_inf_filter": "false",
        "disable_tqdm": "true", "use_cpu": str(device == "cpu").lower(),
    }
    if student.init == "random" and not student.widths:  # a narrower student is randomly initialised by the recipe
        flags["student_model_name_or_path"] = random_student(teacher_dir, sizes.student_layers, seed,
                                                             folder.parent / f"{folder.name}-start")
    argv = [item for key, value in flags.items() if value is not None for item in (f"--{key}", str(value))]
    start = time.perf_counter()
    code = recipe.main(argv)
    if code != 0:
        raise BenchmarkInputError(f"distilling {student.name!r} failed (exit code {code}): see the hf-distil error "
                                  "above.")
    metrics = json.loads((folder / "all_results.json").read_text())
    return {"minutes": (time.perf_counter() - start) / 60, "recipe_metrics": metrics}


# ---------------------------------------------------------------- masked-LM scoring


def masked_batches(tokenizer, texts: list[str], seed: int = 0, rate: float = 0.15, batch_size: int = 64,
                   max_length: int = 128) -> list[dict]:
    """Fixed-mask evaluation batches: `rate` of the tokens of each text (at least one) become [MASK]; special tokens,
    [UNK] included, and padding never do."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start:start + batch_size], truncation=True, max_length=max_length, padding=True,
                        return_special_tokens_mask=True, return_tensors="pt")
        special = torch.isin(enc["input_ids"], torch.tensor(tokenizer.all_special_ids))  # [UNK] included
        maskable = (enc.pop("special_tokens_mask") == 0) & (enc["attention_mask"] == 1) & ~special
        scores = torch.rand(maskable.shape, generator=generator).masked_fill(~maskable, 2.0)
        chosen = (scores < rate) & maskable
        first = scores.argmin(dim=1)  # every text with a maskable token gets at least one mask
        chosen[torch.arange(len(first)), first] |= maskable[torch.arange(len(first)), first]
        labels = enc["input_ids"].masked_fill(~chosen, -100)
        enc["input_ids"] = enc["input_ids"].masked_fill(chosen, tokenizer.mask_token_id)
        batches.append({**enc, "labels": labels})
    return batches


@torch.no_grad()
def masked_lm_predictions(model, batches: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log-probabilities at the masked positions, their labels, top-1 ids) of a masked LM on fixed batches."""
    model.eval()
    device = next(model.parameters()).device
    log_probs, labels = [], []
    for batch in batches:
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits.float().cpu()
        rows = batch["labels"] != -100
        log_probs.append(torch.log_softmax(logits[rows], dim=-1))
        labels.append(batch["labels"][rows])
    log_probs, labels = torch.cat(log_probs), torch.cat(labels)
    return log_probs, labels, log_probs.argmax(-1)


def score_masked_lm(model, batches: list[dict], teacher_top1: torch.Tensor | None = None) -> dict:
    """Masked-token accuracy, perplexity and (given the teacher's top-1) teacher agreement on fixed batches."""
    log_probs, labels, top1 = masked_lm_predictions(model, batches)
    nll = -log_probs.gather(1, labels[:, None]).mean().item()
    scores = {"masked_accuracy": (top1 == labels).float().mean().item(), "perplexity": math.exp(nll),
              "masked_tokens": int(labels.numel())}
    if teacher_top1 is not None:
        scores["teacher_agreement"] = (top1 == teacher_top1).float().mean().item()
    return scores


def unigram_log_probs(tokenizer, texts: list[str]) -> torch.Tensor:
    """Add-one smoothed unigram log-probabilities of the tokens of `texts` (special tokens get no count)."""
    counts = torch.zeros(len(tokenizer), dtype=torch.float64)
    for start in range(0, len(texts), 1000):
        for ids in tokenizer(texts[start:start + 1000], add_special_tokens=False)["input_ids"]:
            counts += torch.bincount(torch.tensor(ids, dtype=torch.long), minlength=len(tokenizer)).double()
    counts[tokenizer.all_special_ids] = 0
    return torch.log((counts + 1) / (counts + 1).sum())


def score_unigram(log_p: torch.Tensor, batches: list[dict]) -> dict:
    """The unigram baseline on the same masked positions: accuracy of its one guess, and its perplexity."""
    labels = torch.cat([b["labels"][b["labels"] != -100] for b in batches])
    return {"masked_accuracy": (labels == log_p.argmax()).float().mean().item(),
            "perplexity": math.exp(-log_p[labels].mean().item()), "masked_tokens": int(labels.numel())}


# ---------------------------------------------------------------- downstream


def load_mts_task(mts_files: dict[str, Path]):
    """(FinetuneArguments without a model, raw splits, task, label list): read once, through hf_distil.finetune."""
    from hf_distil.finetune.arguments import FinetuneArguments
    from hf_distil.finetune.readers import load_splits

    args = FinetuneArguments(model_name_or_path="", train_file=str(mts_files["train"]),
                             validation_file=str(mts_files["validation"]), test_file=str(mts_files["test"]),
                             task="classification", max_seq_length=128, speed_batches=1, speed_min_seconds=0.0)
    return (args, *load_splits(args))


def finetune(model_dir: Path, name: str, seed: int, mts_task, folder: Path, sizes: Sizes, device: str,
             epochs: int | None = None):
    """Fine-tune one model on MTS-Dialog sections with one seed (sizes.finetune_epochs, or `epochs`); the epoch with
    the best validation macro-F1 is scored on the test sets. Returns hf_distil.finetune's FinetuneResult."""
    from transformers import TrainingArguments, set_seed

    from hf_distil.finetune.model import build_model
    from hf_distil.finetune.run import finetune_model

    args, raw, task, label_list = mts_task
    args = dataclasses.replace(args, model_name_or_path=str(model_dir))
    training_args = TrainingArguments(
        output_dir=str(folder), num_train_epochs=epochs or sizes.finetune_epochs, learning_rate=sizes.finetune_lr,
        per_device_train_batch_size=32, per_device_eval_batch_size=64, warmup_steps=0.1, weight_decay=0.01,
        eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True, metric_for_best_model="macro_f1",
        greater_is_better=True, save_total_limit=1, save_only_model=True, logging_strategy="epoch", seed=seed,
        report_to="none", disable_tqdm=True, use_cpu=device == "cpu", dataloader_num_workers=0,
        train_sampling_strategy="group_by_length")  # batches of similar lengths: far less padding, same examples
    set_seed(seed)  # the new classification head's initialisation
    model = build_model(str(model_dir), task, label_list, args)  # float32, whatever the checkpoint's dtype
    result = finetune_model(str(model_dir), raw, task, label_list, args, training_args, model=model)
    for checkpoint in folder.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    result.name = name
    return result


def reference_classifiers(mts_files: dict[str, Path]) -> dict:
    """What needs no encoder at all, on the same test rows: the majority class, and TF-IDF word uni/bigrams with
    logistic regression (scikit-learn). A pretrained encoder that does not beat the second has taught little."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from hf_distil.finetune.metrics import load_metric

    def read(split):
        rows = [json.loads(line) for line in open(mts_files[split], encoding="utf-8")]
        return [r["text"] for r in rows], [r["label"] for r in rows]

    (train_x, train_y), (test_x, test_y) = read("train"), read("test")
    labels = sorted(set(train_y))
    majority = max(labels, key=train_y.count)
    vectoriser = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    classifier = LogisticRegression(max_iter=2000, C=10.0).fit(vectoriser.fit_transform(train_x), train_y)
    predictions = {"majority class": [majority] * len(test_y),
                   "tf-idf + logistic regression": list(classifier.predict(vectoriser.transform(test_x)))}
    metric = load_metric("classification")  # the one the fine-tuned encoders are scored with
    ids = {label: i for i, label in enumerate(labels)}
    return {name: metric.compute(predictions=[ids[p] for p in pred], references=[ids[y] for y in test_y])
            for name, pred in predictions.items()}


def inference_speed(model_dirs: dict[str, Path], mts_task, device: str, rounds: int = 3,
                    min_seconds: float = 1.0) -> dict:
    """Tokens/s of each fine-tuned classifier on the same test batches, timed in interleaved rounds (median)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from hf_distil.finetune.speed import measure_inference_speed
    from hf_distil.finetune.tokenisation import preprocess

    _, raw, task, label_list = mts_task
    first = next(iter(model_dirs.values()))
    tokenizer = AutoTokenizer.from_pretrained(first)
    test = preprocess(raw, tokenizer, task, label_list, 128)["test"]
    models = {name: AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).to(device)
              for name, path in model_dirs.items()}
    timings = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            timings[name].append(measure_inference_speed(model, test, DataCollatorWithPadding(tokenizer),
                                                         batch_size=64, max_batches=10, min_seconds=min_seconds))
    return {name: statistics.median(values) for name, values in timings.items()}


# ---------------------------------------------------------------- task distillation

TASK_DISTIL_CONFIG = ROOT / "recipes" / "configs" / "task_distil.yaml"
TEACHER_ROLE = "fine-tuned teacher"
# The two student initialisations, each distilled and plainly fine-tuned: the pretrained teacher's layers
# (DistilBERT's: a general half-depth encoder, which learns the task here) and the fine-tuned teacher's layers and
# head (the student starts from the task already).
TASK_INITS = ("pretrained layers", "fine-tuned layers")
TASK_ROLES = (TEACHER_ROLE, *(f"{kind}, {init}" for init in TASK_INITS for kind in ("task-distilled", "plain")))


def task_distillation(teacher_dir: Path, mts_files: dict[str, Path], mts_task, out: Path, sizes: Sizes,
                      device: str, phase=print) -> dict:
    """Per seed: the teacher fine-tuned on MTS sections to its best validation epoch (sizes.task_teacher_epochs),
    then, for each student initialisation of TASK_INITS, `run_finetune.py recipes/configs/task_distil.yaml
    --distil_from` that teacher with the shipped objective and `--compare_with plain`: the 3-layer student distilled,
    and the same student fine-tuned without the teacher, with the fine-tuning budget of the rows above. Test-set
    metrics of all of them."""
    from hf_distil.finetune_cli import main as finetune_main

    pretrained_layers = untrained_student(teacher_dir, sizes.student_layers, out / "task" / "pretrained-layers")
    runs = []
    for seed in range(sizes.seeds):
        folder = out / "task" / f"seed{seed}"
        phase(f"task distillation, seed {seed}: fine-tuning the teacher ({sizes.task_teacher_epochs} epochs)")
        finetune(teacher_dir, TEACHER_ROLE, seed, mts_task, folder / "teacher", sizes, device,
                 epochs=sizes.task_teacher_epochs)
        run = {"seed": seed}
        for init in TASK_INITS:
            phase(f"task distillation, seed {seed}: {init}, distilled and plain")
            student_dir = folder / init.replace(" ", "-")
            flags = {
                "distil_from": folder / "teacher", "train_file": mts_files["train"],
                "validation_file": mts_files["validation"], "test_file": mts_files["test"], "task": "classification",
                "output_dir": student_dir, "overwrite_output_dir": "true", "compare_with": "plain",
                "student_num_layers": sizes.student_layers, "num_train_epochs": sizes.finetune_epochs,
                "learning_rate": sizes.finetune_lr, "metric_for_best_model": "macro_f1", "greater_is_better": "true",
                "train_sampling_strategy": "group_by_length", "logging_strategy": "epoch", "seed": seed,
                "speed_batches": 1, "speed_min_seconds": 0, "dataloader_num_workers": 0, "disable_tqdm": "true",
                "use_cpu": str(device == "cpu").lower(),
                **({"model_name_or_path": pretrained_layers} if init == "pretrained layers" else {}),
            }
            argv = [str(TASK_DISTIL_CONFIG)] + [item for key, value in flags.items()
                                                 for item in (f"--{key}", str(value))]
            distilled, teacher, plain = finetune_main(argv)
            for path in student_dir.rglob("checkpoint-*"):
                shutil.rmtree(path, ignore_errors=True)
            for role, result in ((TEACHER_ROLE, teacher), (f"task-distilled, {init}", distilled),
                                 (f"plain, {init}", plain)):
                run[role] = {"accuracy": result.metrics["accuracy"], "macro_f1": result.metrics["macro_f1"],
                             "parameters": result.parameters}
        runs.append(run)
    import yaml

    config = yaml.safe_load(TASK_DISTIL_CONFIG.read_text())
    objective = {k: config[k] for k in ("temperature", "alpha_kd", "alpha_task", "alpha_hidden", "kd_positions")}
    report = {"runs": runs, "objective": objective, "seeds": sizes.seeds, "student_layers": sizes.student_layers,
              "epochs": sizes.finetune_epochs, "teacher_epochs": sizes.task_teacher_epochs,
              "learning_rate": sizes.finetune_lr}
    report["summary"] = summarise_task(report)
    return report


def summarise_task(report: dict) -> dict:
    """Mean ± sd per role, each student's share of the teacher, and per init the paired distilled − plain gap."""
    runs = report["runs"]
    rows = {}
    for role in TASK_ROLES:
        row = {"parameters": runs[0][role]["parameters"]}
        for metric in ("accuracy", "macro_f1"):
            row[metric], row[f"{metric}_std"] = mean_std([run[role][metric] for run in runs])
        rows[role] = row
    teacher = rows[TEACHER_ROLE]
    for row in rows.values():
        for metric in ("accuracy", "macro_f1"):
            row[f"{metric}_retention"] = row[metric] / teacher[metric] if teacher[metric] else float("nan")
    gaps = {}
    for init in TASK_INITS:
        distilled, plain = f"task-distilled, {init}", f"plain, {init}"
        gaps[init] = {}
        for metric in ("accuracy", "macro_f1"):
            diffs = [run[distilled][metric] - run[plain][metric] for run in runs]
            gaps[init][metric] = paired_gap(diffs, max(rows[distilled][f"{metric}_std"], rows[plain][f"{metric}_std"]))
    return {"rows": rows, "gaps": gaps}


def task_markdown(report: dict) -> str:
    summary = report["summary"]
    lines = ["| model | params | test accuracy | test macro-F1 | macro-F1 kept |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for role, r in summary["rows"].items():
        lines.append(f"| {role} | {r['parameters'] / 1e6:.2f} M | {r['accuracy']:.3f} ± {r['accuracy_std']:.3f} "
                     f"| {r['macro_f1']:.3f} ± {r['macro_f1_std']:.3f} | {r['macro_f1_retention']:.1%} |")
    objective = ", ".join(f"{k} {v}" for k, v in report["objective"].items())
    lines.append("")
    lines.append(f"± is one standard deviation over {report['seeds']} seeds. Each seed fine-tunes its own teacher "
                 f"({report['teacher_epochs']} epochs, the best validation epoch kept), then trains "
                 f"{report['student_layers']}-layer students from two initialisations, each distilled from that "
                 "teacher (`run_finetune.py recipes/configs/task_distil.yaml --distil_from`) and, as its control, "
                 f"fine-tuned without it (`--compare_with plain`): {report['epochs']} epochs at learning rate "
                 f"{report['learning_rate']:g} for both, the epoch with the best validation macro-F1 kept. "
                 "Pretrained layers: every other layer of the pretrained (not fine-tuned) teacher, a new head. "
                 "Fine-tuned layers: every other layer of the fine-tuned teacher, and its head. Objective "
                 f"(recipes/configs/task_distil.yaml): {objective}.")
    for init, gaps in summary["gaps"].items():
        for metric, gap in gaps.items():
            verdict = "more" if gap["beats_spread"] else "not more"
            lines.append(f"- {init}: task-distilled − plain, {metric.replace('_', '-')}: {gap['mean']:+.3f} ± "
                         f"{gap['standard_error']:.3f} (standard error of the paired per-seed differences), "
                         f"{verdict} than the largest seed-to-seed sd ({gap['largest_seed_sd']:.3f}).")
    return "\n".join(lines)


def write_task_report(report: dict, out: Path) -> str:
    (out / "task_distillation.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    text = task_markdown(report)
    (out / "task_distillation.md").write_text(text + "\n", encoding="utf-8")
    return text


# ---------------------------------------------------------------- summary


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired_gap(diffs: list[float], spread: float) -> dict:
    """A method − control comparison from its per-seed differences, against the larger of the two seed spreads."""
    mean, sd = mean_std(diffs)
    return {"paired_differences": diffs, "mean": mean, "sd": sd, "standard_error": sd / math.sqrt(len(diffs)),
            "largest_seed_sd": spread, "beats_spread": mean > spread}


def summarise(report: dict) -> dict:
    """Per model: mean ± std over seeds, retention against the teacher; the distilled − mlm-only gap."""
    rows = {}
    for name, model in report["models"].items():
        row = {"parameters": model["parameters"], **model["masked_lm"]}
        for metric in ("accuracy", "macro_f1"):
            row[metric], row[f"{metric}_std"] = mean_std([run[metric] for run in model["finetune"]])
        row["tokens_per_second"] = model.get("tokens_per_second")
        rows[name] = row
    teacher = rows["teacher"]
    for row in rows.values():
        for metric in ("accuracy", "macro_f1"):
            row[f"{metric}_retention"] = row[metric] / teacher[metric] if teacher[metric] else float("nan")
        if row["tokens_per_second"] and teacher["tokens_per_second"]:
            row["speedup"] = row["tokens_per_second"] / teacher["tokens_per_second"]
    comparisons = {}
    for method, control in COMPARISONS:
        if method not in rows or control not in rows:
            continue
        # The fine-tuning seeds are shared: compare seed by seed.
        runs = {name: {r["seed"]: r for r in report["models"][name]["finetune"]} for name in (method, control)}
        gaps = {}
        for metric in ("accuracy", "macro_f1"):
            diffs = [runs[method][seed][metric] - runs[control][seed][metric] for seed in runs[method]]
            gaps[metric] = paired_gap(diffs, max(rows[method][f"{metric}_std"], rows[control][f"{metric}_std"]))
        comparisons[f"{method} − {control}"] = gaps
    return {"rows": rows, "distilled_minus_mlm_only": comparisons.get("distilled − mlm-only", {}),
            "comparisons": comparisons}


def markdown_table(report: dict) -> str:
    rows = report["summary"]["rows"]
    lines = ["| model | params | test accuracy | test macro-F1 | F1 kept | MTS-test perplexity | masked acc. "
             "| teacher agreement | tokens/s (× teacher) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in rows.items():
        agreement = f"{r['teacher_agreement']:.3f}" if "teacher_agreement" in r else "—"
        speed = (f"{r['tokens_per_second']:,.0f} ({r.get('speedup', 1.0):.2f}×)" if r["tokens_per_second"] else "—")
        lines.append(f"| {name} | {r['parameters'] / 1e6:.2f} M | {r['accuracy']:.3f} ± {r['accuracy_std']:.3f} "
                     f"| {r['macro_f1']:.3f} ± {r['macro_f1_std']:.3f} | {r['macro_f1_retention']:.1%} "
                     f"| {r['perplexity']:.1f} | {r['masked_accuracy']:.3f} | {agreement} | {speed} |")
    for name, r in report["reference_classifiers"].items():
        lines.append(f"| {name} (reference) | — | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | — | — | — | — | — |")
    unigram = report["unigram"]
    lines.append(f"| unigram (reference) | — | — | — | — | {unigram['perplexity']:.1f} "
                 f"| {unigram['masked_accuracy']:.3f} | — | — |")
    return "\n".join(lines)


def markdown_notes(report: dict) -> str:
    """How to read the table: what ± means, and the paired distilled − mlm-only difference."""
    lines = [f"± is one standard deviation over {report['seeds']} fine-tuning seeds; each student was distilled once "
             f"({report['sizes']['distil_steps']} steps of {report['sizes']['distil_batch']} blocks of 128 tokens). "
             "F1 kept: mean macro-F1 over the teacher's. Perplexity, masked accuracy and teacher agreement: the MTS "
             "test texts, 15 % of their tokens masked at fixed positions."]
    for pair, gaps in report["summary"]["comparisons"].items():
        for metric, gap in gaps.items():
            verdict = "more" if gap["beats_spread"] else "not more"
            lines.append(f"- {pair}, {metric.replace('_', '-')}: {gap['mean']:+.3f} ± "
                         f"{gap['standard_error']:.3f} (standard error of the paired per-seed differences), {verdict} "
                         f"than the largest seed-to-seed sd ({gap['largest_seed_sd']:.3f}).")
    if "MiniLM-style" in report["summary"]["rows"]:
        lines.append("The MiniLM-style student is trained on relations alone, so its masked-LM head is untrained: "
                     "its perplexity, masked accuracy and agreement say nothing; its fine-tuning scores do.")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Bars of test accuracy and macro-F1 per model, error bars one standard deviation over seeds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = report["summary"]["rows"]
    names = list(rows)
    fig = Figure(figsize=(11, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.38
    for offset, metric in ((-width / 2, "accuracy"), (width / 2, "macro_f1")):
        ax.bar([i + offset for i in range(len(names))], [rows[n][metric] for n in names], width,
               yerr=[rows[n][f"{metric}_std"] for n in names], capsize=4, label=metric.replace("_", "-"))
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel(f"MTS-Dialog test ({report['seeds']} seeds, mean ± sd)")
    ax.set_title("Section-header classification after fine-tuning")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


# ---------------------------------------------------------------- main


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder for every model and the results.")
    parser.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="Folder with medquad_answers.txt and mts_sections.jsonl (default ../shared/data).")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--smoke", action="store_true", help="The whole pipeline at toy sizes (a few minutes).")
    parser.add_argument("--seeds", type=positive_int,
                        help="Fine-tuning seeds (default: 3 on CPU, 5 on a GPU, 2 smoke).")
    parser.add_argument("--part", choices=("all", "task"), default="all",
                        help="task: only the task-distillation rows (fine-tuned teacher → task-distilled and plain "
                        "fine-tuned students), written to OUT/task_distillation.{json,md}.")
    args = parser.parse_args(argv)
    for name in ("medquad_answers.txt", "mts_sections.jsonl"):
        if not (args.data / name).is_file():
            parser.error(f"--data {args.data} has no {name}: pass the folder that holds the shared real text.")
    if not (args.teacher / "config.json").is_file():
        parser.error(f"--teacher {args.teacher} holds no model (config.json): pass the teacher's folder.")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no GPU here: drop --device.")
    sizes = SIZES["smoke" if args.smoke else args.device]
    if args.seeds is not None:
        sizes = Sizes(**{**asdict(sizes), "seeds": args.seeds})
    try:
        return run_task_only(args, sizes) if args.part == "task" else run(args, sizes)
    except BenchmarkInputError as err:
        parser.exit(2, f"bench_quality: error: {err}\n")


def run_task_only(args: argparse.Namespace, sizes: Sizes) -> dict:
    """The task-distillation rows alone (see `task_distillation`)."""
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def phase(text):
        print(f"[bench_quality {(time.perf_counter() - started) / 60:5.1f} min] {text}", flush=True)

    mts_files = write_mts_files(read_mts(args.data), args.out / "mts", sizes.finetune_train_rows,
                                sizes.finetune_eval_rows)
    report = task_distillation(args.teacher, mts_files, load_mts_task(mts_files), args.out, sizes, args.device, phase)
    report.update({"device": args.device, "smoke": args.smoke, "threads": torch.get_num_threads(),
                   "teacher": str(args.teacher), "minutes": (time.perf_counter() - started) / 60})
    print(write_task_report(report, args.out))
    print(f"{report['minutes']:.1f} minutes; results in {args.out}/task_distillation.json, task_distillation.md")
    return report


def run(args: argparse.Namespace, sizes: Sizes) -> dict:
    """The whole benchmark (see the module docstring); returns the report written to OUT/quality.json."""
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def phase(text):
        print(f"[bench_quality {(time.perf_counter() - started) / 60:5.1f} min] {text}", flush=True)

    corpus = build_corpus(args.data, out / "corpus", sizes.max_train_texts)
    mts = read_mts(args.data)
    mts_files = write_mts_files(mts, out / "mts", sizes.finetune_train_rows, sizes.finetune_eval_rows)
    mts_task = load_mts_task(mts_files)
    models = {"teacher": {"dir": args.teacher, "note": "the teacher itself"}}
    for student in STUDENTS:
        folder = out / "students" / student.name.replace(" ", "-")
        phase(f"student {student.name!r}")
        run = distil_student(student, args.teacher, corpus, folder, sizes, args.device)
        models[student.name] = {"dir": folder, "note": student.note, "distillation": run,
                                "objective": student.objective, "init": student.init}

    from transformers import AutoModelForMaskedLM, AutoTokenizer

    phase("masked-LM scores on the MTS test texts")
    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    test_texts = [row["text"] for row in mts["test"]]
    batches = masked_batches(tokenizer, test_texts)
    teacher = AutoModelForMaskedLM.from_pretrained(args.teacher, dtype=torch.float32)
    teacher_top1 = masked_lm_predictions(teacher, batches)[2]
    train_texts = [json.loads(line)["text"] for line in open(corpus / "train.jsonl", encoding="utf-8")]
    unigram = score_unigram(unigram_log_probs(tokenizer, train_texts), batches)
    for name, model in models.items():
        lm = AutoModelForMaskedLM.from_pretrained(model["dir"], dtype=torch.float32)
        model["masked_lm"] = score_masked_lm(lm, batches, None if name == "teacher" else teacher_top1)
        runs = []
        for seed in range(sizes.seeds):
            phase(f"fine-tuning {name!r}, seed {seed}")
            result = finetune(model["dir"], name, seed, mts_task,
                              out / "finetune" / name.replace(" ", "-") / f"seed{seed}", sizes, args.device)
            runs.append({"seed": seed, **{k: result.metrics[k] for k in ("accuracy", "macro_f1")}})
            model["parameters"] = result.parameters
        model["finetune"] = runs
    task_report = task_distillation(args.teacher, mts_files, mts_task, out, sizes, args.device, phase)
    write_task_report(task_report, out)
    phase("inference speed, side by side")
    speeds = inference_speed({name: out / "finetune" / name.replace(" ", "-") / "seed0" for name in models},
                             mts_task, args.device, **({"rounds": 1, "min_seconds": 0.1} if args.smoke else {}))
    for name, tokens_per_second in speeds.items():
        models[name]["tokens_per_second"] = tokens_per_second

    report = {
        "sizes": asdict(sizes), "seeds": sizes.seeds, "device": args.device, "smoke": args.smoke,
        "threads": torch.get_num_threads(), "teacher": str(args.teacher),
        "data": {"pretraining_texts": len(train_texts),
                 **{f"mts_{split}": sum(1 for _ in open(path, encoding="utf-8")) for split, path in mts_files.items()}},
        "distillation_runs_per_student": 1,
        "unigram": unigram, "reference_classifiers": reference_classifiers(mts_files),
        "task_distillation": task_report,
        "models": {name: {k: (str(v) if isinstance(v, Path) else v) for k, v in m.items()}
                   for name, m in models.items()},
    }
    report["summary"] = summarise(report)
    report["minutes"] = (time.perf_counter() - started) / 60
    (out / "quality.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    text = (markdown_table(report) + "\n\n" + markdown_notes(report) + "\n\n## Task distillation\n\n"
            + task_markdown(task_report))
    (out / "quality.md").write_text(text + "\n", encoding="utf-8")
    plot(report, out / "quality.png")
    print(text)
    print(f"{report['minutes']:.1f} minutes; results in {out}/quality.json, quality.md, quality.png")
    return report


if __name__ == "__main__":
    main()
