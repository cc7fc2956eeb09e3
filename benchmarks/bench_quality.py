"""Quality benchmark: does a half-depth distilled student keep its teacher's skill, and does the teacher make it
better than the same student trained without it? On real text and a real task, offline.

The teacher is `benchmarks/assets/medical-bert-teacher`: a 6-layer BERT pretrained here on real medical text
(recipes/pretrain_medical_teacher.py; its card has the commands, the curve and the data licences). Every student has
3 layers (the teacher's width, or half of it for the narrow rows) and the same budget (steps, batch, learning-rate
schedule); each is trained through the recipe's own code (`hf_distil.recipe.main`) on the teacher's pretraining mix,
with several distillation seeds (data order, masks, dropout and any random init). Then the teacher and every
student are

- fine-tuned (all weights, `hf_distil.finetune`) on MTS-Dialog section-header classification (20 classes; TrainingSet
  to train, ValidationSet to pick the epoch, both Final_200_TestSets, 400 sections, to report), each distilled
  student with its own seed (the teacher with the same seeds): accuracy and macro-F1, mean ± standard deviation over
  the runs, the student/teacher retention ratio, and paired per-seed differences against each row's control;
- scored as masked LMs on the MTS test texts under one fixed masking (same positions for every model): masked-token
  accuracy, perplexity and top-1 agreement with the teacher, beside an add-one unigram model of the training text;
- timed side by side (inference tokens/s of the fine-tuned classifiers on the same test batches, interleaved rounds).

Parts (`--part`; each writes OUT/parts/PART.json and all are merged into OUT/quality.{json,md,png}):
  main    the teacher, the half-depth student distilled with the seed's objective and DistilBERT's ablation of it
          (without KD, without the cosine term, without MLM, MLM alone, from a random init), the untrained init,
          and the seed objective with its KL at temperature 1
  narrow  3 × 64 students from a random init: TinyBERT-style (attention scores + projected hidden states + KD),
          MiniLM-style (relations), and their masked-LM-only control
  curve   the MTS-test perplexity of distilled and MLM-only students at several budgets (budget_curve.png), and
          both fine-tuned with every seed at the largest budget
  task    per seed: the teacher fine-tuned on the sections, distilled on them into a half-depth student
          (`run_finetune.py recipes/configs/task_distil.yaml --distil_from`), beside the same student fine-tuned
          without the teacher (OUT/task_distillation.{json,md})
  all     every part in turn
`--students` splits main, narrow or curve into runs of a few rows; the rows saved before in OUT/parts stay beside the
new ones. Runs of different rows may share one OUT side by side (on 2 cores, two one-thread runs finish sooner than
one two-thread run): the teacher's part is made once, and each part is joined with the rows the other run wrote,
under a lock (POSIX; on Windows give each run its own OUT).

../shared/data holds the text (never committed; see its README for the licences).

    python benchmarks/bench_quality.py --part main --out out/quality     # 2 CPU cores: see benchmarks/README.md
    python benchmarks/bench_quality.py --smoke --out /tmp/q              # every part at toy sizes
    python benchmarks/bench_quality.py --device cuda --out out/q          # bigger budgets on a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import filecmp
import hashlib
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

try:
    import fcntl
except ImportError:  # Windows: no lock, one run per OUT
    fcntl = None

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_report  # noqa: E402
from mlm_scores import (  # noqa: E402,F401  (re-exported: make_quality_teacher and the tests score through here)
    masked_batches,
    masked_lm_predictions,
    score_masked_lm,
    score_unigram,
    unigram_log_probs,
)
from quality_report import TASK_INITS, TASK_ROLES, TEACHER_ROLE  # noqa: E402,F401  (TASK_ROLES: the rows)

DEFAULT_TEACHER = ROOT / "benchmarks" / "assets" / "medical-bert-teacher"
DEFAULT_DATA = ROOT.parent / "shared" / "data"
MTS_SPLITS = {"train": ("TrainingSet",), "validation": ("ValidationSet",),
              "test": ("Final_200_TestSet_1", "Final_200_TestSet_2")}
PARTS = ("main", "narrow", "curve", "task")


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
    seeds: int  # distillation seeds per student; each distilled student is fine-tuned with its own seed
    task_teacher_epochs: int  # fine-tuning epochs of the task-distillation teacher (trained to its best)
    curve_steps: tuple[int, ...]  # the budgets of the budget curve (seed 0)


SIZES = {
    "smoke": Sizes(student_layers=3, distil_steps=4, distil_batch=8, learning_rate=5e-4, max_train_texts=300,
                   max_eval_blocks=16, finetune_epochs=1, finetune_lr=1e-4, finetune_train_rows=60,
                   finetune_eval_rows=40, seeds=2, task_teacher_epochs=1, curve_steps=(2, 4)),
    "cpu": Sizes(student_layers=3, distil_steps=600, distil_batch=64, learning_rate=5e-4, max_train_texts=None,
                 max_eval_blocks=None, finetune_epochs=6, finetune_lr=5e-4, finetune_train_rows=None,
                 finetune_eval_rows=None, seeds=3, task_teacher_epochs=18, curve_steps=(150, 300, 600, 1200, 2400)),
    "cuda": Sizes(student_layers=3, distil_steps=6000, distil_batch=128, learning_rate=5e-4, max_train_texts=None,
                  max_eval_blocks=None, finetune_epochs=10, finetune_lr=5e-4, finetune_train_rows=None,
                  finetune_eval_rows=None, seeds=5, task_teacher_epochs=30, curve_steps=(1500, 3000, 6000, 12000)),
}

# The seed's objective (../shared/seed-model-card.md, recipes/configs/distil_clinical_bert.yaml): T 2, KL 5, MLM 2,
# hidden-state cosine 1, the KL at the masked positions.
SEED_OBJECTIVE = {"temperature": 2.0, "alpha_kd": 5.0, "alpha_mlm": 2.0, "alpha_hidden": 1.0, "hidden_loss": "cosine",
                  "kd_positions": "masked"}
MLM_ONLY = {"alpha_mlm": 2.0}


@dataclass(frozen=True)
class Student:
    """One row of the table: how the student starts and what it is trained on (same budget for all)."""

    name: str
    # "teacher": every other teacher layer (create_student); "random": a fresh model of the same shape, or, with
    # `widths`, a narrower one (create_student's random init)
    init: str
    objective: dict
    part: str = "main"
    trained: bool = True
    note: str = ""
    widths: dict | None = None  # hidden_size / intermediate_size / num_attention_heads of a narrower student

    @property
    def slug(self) -> str:
        return self.name.replace(" ", "-")


# Narrower students: half the teacher's width, its heads (so attention maps compare head by head).
NARROW = {"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 2}
# TinyClinicalBERT's recipe (recipes/configs/tiny_clinical_bert.yaml): TinyBERT's attention-score MSE over the uniform
# layer map, hidden-state MSE through learned projections, soft cross-entropy at T 1 on the masked positions, no MLM.
TINYBERT_OBJECTIVE = {"alpha_attention": 1.0, "attention_loss": "scores", "alpha_intermediate": 1.0, "alpha_kd": 1.0,
                      "temperature": 1.0}
# MiniLM v2 (recipes/configs/minilm_clinical.yaml): the self-attention relations of the teacher's last layer alone.
MINILM_OBJECTIVE = {"alpha_relation": 1.0, "relation_heads": 4}


STUDENTS = (
    Student("distilled", "teacher", SEED_OBJECTIVE,
            note="seed objective (KD 5, MLM 2, cosine 1), every-other-layer init"),
    # DistilBERT's ablation (Sanh et al. 2019, Table 4): each term of the seed objective removed in turn, MLM alone,
    # and the whole objective from a random init.
    Student("without KD", "teacher", {**SEED_OBJECTIVE, "alpha_kd": 0.0},
            note="the seed objective without the KL term"),
    Student("without cosine", "teacher", {**SEED_OBJECTIVE, "alpha_hidden": 0.0},
            note="the seed objective without the hidden-state cosine term"),
    Student("without MLM", "teacher", {**SEED_OBJECTIVE, "alpha_mlm": 0.0},
            note="the seed objective without the masked-LM term"),
    Student("mlm-only", "teacher", MLM_ONLY,
            note="same init and budget, the seed's masked-LM term alone (no teacher signal)"),
    Student("random-init distilled", "random", SEED_OBJECTIVE, note="seed objective from a random init"),
    Student("init only", "teacher", {}, trained=False, note="every-other-layer init, not trained (reference)"),
    # Not in DistilBERT's table: the ablation puts the distilled student's worse perplexity on the KL term (without
    # KD it is back to MLM-only's); this row asks whether it is the temperature, the KL fitted at T 1 instead of 2.
    Student("distilled at T 1", "teacher", {**SEED_OBJECTIVE, "temperature": 1.0},
            note="the seed objective with the KL at temperature 1 (the seed's is 2)"),
    Student("TinyBERT-style", "random", TINYBERT_OBJECTIVE, part="narrow", widths=NARROW,
            note="3 × 64 from random init: attention scores + projected hidden states + KD at T 1 "
            "(TinyClinicalBERT's)"),
    Student("MiniLM-style", "random", MINILM_OBJECTIVE, part="narrow", widths=NARROW,
            note="3 × 64 from random init: Q-Q/K-K/V-V relations of the teacher's last layer alone (MiniLM v2)"),
    Student("narrow mlm-only", "random", MLM_ONLY, part="narrow", widths=NARROW,
            note="3 × 64 from random init, the masked-LM term alone: the narrow students' control"),
)
BY_NAME = {student.name: student for student in STUDENTS}
# Paired per-seed comparisons (method, control): the distilled student against the same student without a teacher,
# the ablation rows against the full objective, the narrow methods against their control.
COMPARISONS = {
    "main": (("distilled", "mlm-only"),
             *((name, "distilled") for name in ("without KD", "without cosine", "without MLM", "mlm-only",
                                                 "random-init distilled", "distilled at T 1")),
             ("distilled at T 1", "mlm-only")),
    "narrow": (("TinyBERT-style", "narrow mlm-only"), ("MiniLM-style", "narrow mlm-only")),
}
# The budget curve's students (seed 0 at each of Sizes.curve_steps).
CURVE_STUDENTS = ("distilled", "mlm-only")


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
        write_in_place(paths[split], "".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n"
                                             for r in rows))
    return paths


def put_in_place(made: Path, path: Path) -> None:
    """Move the file `made` to `path` in one step, or drop it where `path` already holds the same bytes: another run
    in the same OUT reading `path` meanwhile sees the whole old file or the whole new one, never half of either."""
    if path.is_file() and filecmp.cmp(made, path, shallow=False):
        made.unlink()
    else:
        os.replace(made, path)


def write_in_place(path: Path, text: str) -> None:
    """`text` into `path` through a file beside it (put_in_place); nothing half-written is left if this fails."""
    made = path.with_name(f".{path.name}-{os.getpid()}-{os.urandom(4).hex()}")  # not mkstemp: its files are 0600
    try:
        with open(made, "x", encoding="utf-8") as f:
            f.write(text)
        put_in_place(made, path)
    finally:
        made.unlink(missing_ok=True)


def build_corpus(data: Path, out: Path, max_texts: int | None) -> Path:
    """The teacher's pretraining text (make_real_text_corpus.py), optionally cut to its first max_texts rows; made
    beside OUT/corpus and put in place file by file (a run beside this one may be reading it)."""
    import make_real_text_corpus

    out.mkdir(parents=True, exist_ok=True)
    made = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        make_real_text_corpus.main(["--data", str(data), "--out", str(made)])
        if max_texts:
            lines = (made / "train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
            (made / "train.jsonl").write_text("".join(lines[:max_texts]), encoding="utf-8")
        for path in sorted(made.iterdir()):
            put_in_place(path, out / path.name)
    finally:
        shutil.rmtree(made, ignore_errors=True)
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
                   seed: int = 0, steps: int | None = None) -> dict:
    """Train one student through the recipe (hf_distil.recipe.main) with one seed (its data order, masks, dropout
    and random init) for `steps` (default sizes.distil_steps); returns its final metrics and wall time."""
    from hf_distil import recipe

    if not student.trained:
        start = time.perf_counter()
        untrained_student(teacher_dir, sizes.student_layers, folder)
        return {"minutes": (time.perf_counter() - start) / 60}
    steps = steps or sizes.distil_steps
    objective = {"alpha_kd": 0.0, "alpha_mlm": 0.0, "alpha_hidden": 0.0, **student.objective}
    widths = {f"student_{name}": value for name, value in (student.widths or {}).items()}
    flags = {
        "teacher_model_name_or_path": teacher_dir, "train_file": corpus / "train.jsonl",
        "validation_file": corpus / "valid.jsonl", "output_dir": folder, "overwrite_output_dir": "true",
        "student_num_layers": sizes.student_layers, "student_layers": "every_other", "max_seq_length": 128,
        "mlm_probability": 0.15, **objective, **widths,
        "max_steps": steps, "per_device_train_batch_size": sizes.distil_batch,
        "per_device_eval_batch_size": 64, "learning_rate": sizes.learning_rate, "lr_scheduler_type": "linear",
        "warmup_steps": 0.05, "weight_decay": 1e-4, "seed": seed, "data_seed": seed,
        "logging_steps": max(steps // 20, 1), "eval_strategy": "no", "save_strategy": "no",
        "report_to": "none", "dataloader_num_workers": 0,
        "max_eval_samples": sizes.max_eval_blocks, "logging_nan_inf_filter": "false",
        "disable_tqdm": "true", "use_cpu": str(device == "cpu").lower(),
    }
    if student.init == "random" and not student.widths:  # a narrower student is randomly initialised by the recipe
        flags["student_model_name_or_path"] = random_student(teacher_dir, sizes.student_layers, seed,
                                                             folder.parent / f"{folder.name}-start")
    argv = [item for key, value in flags.items() if value is not None for item in (f"--{key}", str(value))]
    record = {"student": student.name, "flags": {key: str(value) for key, value in flags.items() if value is not None}}
    done = finished_run(folder, record)
    if done:
        return done
    (folder / RUN_RECORD).unlink(missing_ok=True)  # a run that does not finish leaves no record behind
    start = time.perf_counter()
    code = recipe.main(argv)
    if code != 0:
        raise BenchmarkInputError(f"distilling {student.name!r} failed (exit code {code}): see the hf-distil error "
                                  "above.")
    metrics = json.loads((folder / "all_results.json").read_text())
    result = {"minutes": (time.perf_counter() - start) / 60, "recipe_metrics": metrics}
    (folder / RUN_RECORD).write_text(json.dumps({**record, "result": result}, indent=1) + "\n", encoding="utf-8")
    return result


# Written into a student's folder after its distillation finished: what it was run with and what it gave. A later
# run of the benchmark (another session, the next --students run, the budget curve) reuses that student instead of
# training it again when every flag is the same, so a part killed halfway loses only the run it was in.
RUN_RECORD = "bench_run.json"


def finished_run(folder: Path, record: dict) -> dict | None:
    """The saved result of `folder`'s distillation if it finished with exactly `record`'s flags, else None."""
    try:
        saved = json.loads((folder / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return None
    if {k: saved.get(k) for k in record} != record or not (folder / "model.safetensors").is_file():
        return None
    print(f"[bench_quality] reusing {folder}: it finished with these flags before ({RUN_RECORD})", flush=True)
    return {**saved["result"], "reused": True}


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
        run = {"seed": seed, "teacher_targets": teacher_targets(folder / "teacher", mts_files)}
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
    report["summary"] = quality_report.summarise_task(report)
    return report


def teacher_targets(teacher_dir: Path, mts_files: dict[str, Path], max_length: int = 128) -> dict:
    """What a fine-tuned teacher's soft labels hold beyond the gold ones, per split: how often its top class is the
    gold label, its mean top probability, the mean probability mass off the gold label and the mean entropy (nats),
    at temperature 1. On the split it was fine-tuned on, the distillation's transfer set, targets near one-hot on the
    gold label carry little that the labels do not."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    model = AutoModelForSequenceClassification.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    targets = {}
    for split in ("train", "test"):
        rows = [json.loads(line) for line in open(mts_files[split], encoding="utf-8") if line.strip()]
        gold = torch.tensor([model.config.label2id[row["label"]] for row in rows])
        probs = []
        with torch.no_grad():
            for i in range(0, len(rows), 64):
                batch = tokenizer([row["text"] for row in rows[i:i + 64]], truncation=True, max_length=max_length,
                                  padding=True, return_tensors="pt")
                probs.append(model(**batch).logits.float().softmax(-1))
        p = torch.cat(probs)
        targets[split] = {
            "rows": len(rows), "agrees_with_gold": (p.argmax(-1) == gold).float().mean().item(),
            "mean_top_probability": p.max(-1).values.mean().item(),
            "mass_off_gold": (1 - p[torch.arange(len(rows)), gold]).mean().item(),
            "entropy_nats": -(p * p.clamp_min(1e-12).log()).sum(-1).mean().item()}
    return targets


# ---------------------------------------------------------------- the parts


@dataclass
class Bench:
    """What every part shares: the arguments, the budget, the text, the task and the fixed-mask test batches."""

    args: argparse.Namespace
    sizes: Sizes
    corpus: Path
    mts_files: dict
    mts_task: tuple
    test_batches: list
    teacher_top1: torch.Tensor
    started: float

    @classmethod
    def prepare(cls, args: argparse.Namespace, sizes: Sizes) -> Bench:
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        out = args.out
        out.mkdir(parents=True, exist_ok=True)
        corpus = build_corpus(args.data, out / "corpus", sizes.max_train_texts)
        mts = read_mts(args.data)
        mts_files = write_mts_files(mts, out / "mts", sizes.finetune_train_rows, sizes.finetune_eval_rows)
        tokenizer = AutoTokenizer.from_pretrained(args.teacher)
        batches = masked_batches(tokenizer, [row["text"] for row in mts["test"]])
        teacher = AutoModelForMaskedLM.from_pretrained(args.teacher, dtype=torch.float32)
        return cls(args, sizes, corpus, mts_files, load_mts_task(mts_files), batches,
                   masked_lm_predictions(teacher, batches)[2], time.perf_counter())

    @property
    def teacher_sha256(self) -> str:
        return weights_sha256(self.args.teacher)

    def phase(self, text: str) -> None:
        print(f"[bench_quality {(time.perf_counter() - self.started) / 60:5.1f} min] {text}", flush=True)

    def lm_scores(self, folder: Path, against_teacher: bool = True) -> dict:
        from transformers import AutoModelForMaskedLM

        model = AutoModelForMaskedLM.from_pretrained(folder, dtype=torch.float32)
        return score_masked_lm(model, self.test_batches, self.teacher_top1 if against_teacher else None)

    def finetuned(self, model_dir: Path, name: str, seed: int) -> dict:
        self.phase(f"fine-tuning {name!r}, seed {seed}")
        folder = self.args.out / "finetune" / name.replace(" ", "-") / f"seed{seed}"
        result = finetune(model_dir, name, seed, self.mts_task, folder, self.sizes, self.args.device)
        return {"parameters": result.parameters, **{k: result.metrics[k] for k in quality_report.TASK_METRICS}}

    def write_part(self, name: str, report: dict) -> None:
        """OUT/parts/NAME.json, written beside and put in place in one step (never seen half-written)."""
        report["minutes"] = (time.perf_counter() - self.started) / 60
        report["smoke"] = self.args.smoke
        (self.args.out / "parts").mkdir(exist_ok=True)
        write_in_place(self.args.out / "parts" / f"{name}.json", json.dumps(report, indent=1) + "\n")

    @contextlib.contextmanager
    def parts_locked(self):
        """Held from reading a saved part to writing the joined one, and while merging: two runs in one OUT (two
        --students runs side by side) each join the other's rows instead of the last writer dropping them."""
        (self.args.out / "parts").mkdir(parents=True, exist_ok=True)
        with open(self.args.out / "parts" / ".lock", "w") as lock:
            if fcntl:
                fcntl.flock(lock, fcntl.LOCK_EX)
            yield


def weights_sha256(folder: Path) -> str:
    """One SHA-256 over a model folder's weight files (sorted by name): the teacher's identity wherever it lies."""
    digest = hashlib.sha256()
    for path in sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin")]):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def same_run(saved: dict, bench: Bench) -> bool:
    """Whether a saved part was made with this teacher (its weights: the part may come from another checkout or
    machine; older parts name its path) and these sizes, so that its rows can stand beside the ones run now."""
    teacher = (saved.get("teacher_sha256") == bench.teacher_sha256 if saved.get("teacher_sha256")
               else saved.get("teacher") == str(bench.args.teacher))
    return teacher and saved.get("sizes") == as_json(asdict(bench.sizes))


def as_json(value):
    """`value` as it reads back from JSON (tuples become lists), to compare with what a part saved."""
    return json.loads(json.dumps(value))


def teacher_part(bench: Bench) -> dict:
    """The teacher's row (fine-tuned with every seed), the unigram and text-only references; once per OUT."""
    try:
        saved = json.loads((bench.args.out / "parts" / "teacher.json").read_text())
    except (OSError, ValueError):  # not made yet, or cut off while written: made (again) here
        saved = None
    if saved and same_run(saved, bench):
        return saved
    lm = bench.lm_scores(bench.args.teacher, against_teacher=False)
    runs = []
    for seed in range(bench.sizes.seeds):
        result = bench.finetuned(bench.args.teacher, "teacher", seed)
        parameters = result.pop("parameters")
        runs.append({"seed": seed, **result, **lm})
    train_texts = [json.loads(line)["text"] for line in open(bench.corpus / "train.jsonl", encoding="utf-8")]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bench.args.teacher)
    report = {
        "teacher": str(bench.args.teacher), "teacher_sha256": bench.teacher_sha256, "sizes": asdict(bench.sizes),
        "device": bench.args.device,
        "threads": torch.get_num_threads(),
        "model": {"note": "the teacher itself", "parameters": parameters, "runs": runs, "masked_lm": lm},
        "unigram": score_unigram(unigram_log_probs(tokenizer, train_texts), bench.test_batches),
        "reference_classifiers": reference_classifiers(bench.mts_files),
        "data": {"pretraining_texts": len(train_texts),
                 "mix": json.loads((bench.corpus / "mix.json").read_text()),
                 **{f"mts_{split}": sum(1 for _ in open(p, encoding="utf-8")) for split, p in bench.mts_files.items()}},
    }
    bench.write_part("teacher", report)
    return report


def joinable_part(bench: Bench, part: str) -> dict | None:
    """The part saved in OUT/parts before, when this run names --students (its other rows stay beside the ones run
    now) and it was made with this teacher and budget; one that cannot be joined is said before the compute and moved
    to OUT/replaced_parts/, never overwritten with the new rows alone."""
    earlier = bench.args.out / "parts" / f"{part}.json"
    if not bench.args.students or not earlier.exists():
        return None
    try:
        saved = json.loads(earlier.read_text())
    except ValueError:  # cut off while written, or edited by hand
        saved, why = None, "is not valid JSON and"
    else:
        why = ("was made with another teacher or budget, or by an older bench_quality that did not record them: its "
               f"rows ({', '.join(saved.get('models') or saved.get('students') or {})})")
        if same_run(saved, bench):
            return saved
    stamp = bench.args.out / "replaced_parts" / f"{part}-{time.strftime('%Y%m%d-%H%M%S')}"
    stamp.parent.mkdir(exist_ok=True)
    kept = next(path for n in itertools.count(1)  # two moves within one second keep both
                if not (path := stamp.with_name(stamp.name + (f"-{n}" if n > 1 else "") + ".json")).exists())
    earlier.replace(kept)
    print(f"[bench_quality] {earlier} {why} cannot be joined with this run's; moved to {kept}.", flush=True)
    return None


def run_history(saved: dict | None, rows, bench: Bench) -> list[dict]:
    """Which run made which rows of a part: the saved part's history (or the note written by hand on a part joined
    before this was recorded), then this run's rows, date, threads and minutes."""
    history = (saved.get("runs_history") or ([{"note": saved["runs_note"]}] if saved.get("runs_note") else [])
               if saved else [])
    return [*history, {"rows": list(rows), "date": time.strftime("%Y-%m-%d %H:%M"), "device": bench.args.device,
                       "threads": torch.get_num_threads(),
                       "minutes": round((time.perf_counter() - bench.started) / 60, 1)}]


def students_part(bench: Bench, part: str) -> dict:
    """Every student of `part`, distilled with each seed, scored and fine-tuned with that seed; the paired
    comparisons; inference speed of one fine-tuned model per row beside the teacher's, timed in one run."""
    with bench.parts_locked():  # a run beside this one in the same OUT waits for the teacher's part, then reuses it
        teacher = teacher_part(bench)
        joinable_part(bench, part)  # one that cannot be joined is said (and moved aside) before the compute
    sizes, out = bench.sizes, bench.args.out
    models = {}
    chosen = bench.args.students
    for student in (s for s in STUDENTS if s.part == part and (not chosen or s.name in chosen)):
        runs = []
        for seed in range(sizes.seeds if student.trained else 1):
            folder = out / "students" / student.slug / f"seed{seed}"
            bench.phase(f"student {student.name!r}, seed {seed}")
            runs.append({"seed": seed, "distillation": distil_student(student, bench.args.teacher, bench.corpus, folder,
                                                                      sizes, bench.args.device, seed=seed),
                         **bench.lm_scores(folder)})
        if not student.trained:  # one untrained model, fine-tuned with each seed
            runs = [{**runs[0], "seed": seed} for seed in range(sizes.seeds)]
        for run in runs:
            folder = out / "students" / student.slug / f"seed{run['seed'] if student.trained else 0}"
            result = bench.finetuned(folder, student.name, run["seed"])
            parameters = result.pop("parameters")
            run.update(result)
        models[student.name] = {"note": student.note, "objective": student.objective, "init": student.init,
                                "widths": student.widths, "parameters": parameters, "runs": runs,
                                "distillation_runs": sizes.seeds if student.trained else 0}
    bench.phase("inference speed, side by side")
    with bench.parts_locked():
        if not (out / "finetune" / "teacher" / "seed0" / "config.json").is_file():  # its part came from elsewhere
            bench.finetuned(bench.args.teacher, "teacher", 0)  # the classifier the rows' speeds are measured against
    dirs = {"teacher": out / "finetune" / "teacher" / "seed0",
            **{name: out / "finetune" / name.replace(" ", "-") / "seed0" for name in models}}
    speeds = inference_speed(dirs, bench.mts_task, bench.args.device,
                             **({"rounds": 1, "min_seconds": 0.1} if bench.args.smoke else {}))
    for name, model in models.items():
        model["tokens_per_second"] = speeds[name]
        model["speedup"] = speeds[name] / speeds["teacher"]
    with bench.parts_locked():
        saved = joinable_part(bench, part)  # read again: a run beside this one may have joined its rows since
        history = run_history(saved, models, bench)
        if saved:  # rows of this part run before (other --students) stay, the ones run now replace theirs
            joined = {**saved["models"], **models}
            models = {**{name: joined[name] for name in BY_NAME if name in joined}, **joined}  # the table's order
            speeds = {**saved.get("speeds", {}), **speeds}
        rows = quality_report.summarise_models({**models, "teacher": teacher["model"]})
        pairs = [pair for pair in COMPARISONS[part] if all(name in models for name in pair)]
        report = {"models": models, "teacher_tokens_per_second": speeds["teacher"], "speeds": speeds,
                  "teacher": str(bench.args.teacher), "teacher_sha256": bench.teacher_sha256, "sizes": asdict(sizes),
                  "comparisons": quality_report.compare(models, rows, pairs),
                  "comparisons_run": [list(pair) for pair in pairs], "runs_history": history}
        bench.write_part(part, report)
    return report


def curve_part(bench: Bench) -> dict:
    """MTS-test perplexity (and masked accuracy, teacher agreement) of the CURVE_STUDENTS at each budget, seed 0,
    each run with its own full schedule; the main part's seed-0 runs are reused at its budget. At the largest budget
    each student is also fine-tuned with every seed: whether the downstream gap holds when the students train longer
    (one distillation seed, so the spread there is the fine-tuning's alone)."""
    sizes, out = bench.sizes, bench.args.out
    with bench.parts_locked():
        joinable_part(bench, "curve")  # one that cannot be joined is said (and moved aside) before the compute
    students, downstream = {}, {}
    for name in (n for n in CURVE_STUDENTS if not bench.args.students or n in bench.args.students):
        student = BY_NAME[name]
        points = []
        for steps in sizes.curve_steps:
            folder = out / "curve" / student.slug / f"steps{steps}"
            reused = out / "students" / student.slug / "seed0"
            if steps == sizes.distil_steps and (reused / "all_results.json").exists():
                folder, minutes = reused, None
            else:
                bench.phase(f"budget curve: {name!r}, {steps} steps")
                minutes = distil_student(student, bench.args.teacher, bench.corpus, folder, sizes, bench.args.device,
                                         seed=0, steps=steps)["minutes"]
            points.append({"steps": steps, "minutes": minutes, **bench.lm_scores(folder)})
        students[name] = points
        finetuned = (bench.finetuned(folder, f"{name} at {steps} steps", seed) for seed in range(sizes.seeds))
        downstream[name] = [{"seed": seed, **{k: v for k, v in result.items() if k != "parameters"}}
                            for seed, result in enumerate(finetuned)]
    teacher_perplexity = bench.lm_scores(bench.args.teacher, against_teacher=False)["perplexity"]
    with bench.parts_locked():
        saved = joinable_part(bench, "curve")  # read again: a run beside this one may have joined its points since
        history = run_history(saved, students, bench)
        if saved:  # the other students' points, run before (another --students run), stay
            students = {name: students.get(name) or saved["students"][name] for name in CURVE_STUDENTS
                        if name in students or name in saved["students"]}
            earlier = saved.get("downstream", {}).get("students", {})  # absent from a curve saved before it was run
            downstream = {name: downstream.get(name) or earlier[name] for name in CURVE_STUDENTS
                          if name in downstream or name in earlier}
        report = {"steps": list(sizes.curve_steps), "batch": sizes.distil_batch, "students": students,
                  "downstream": {"steps": sizes.curve_steps[-1], "students": downstream},
                  "teacher_perplexity": teacher_perplexity, "teacher": str(bench.args.teacher),
                  "teacher_sha256": bench.teacher_sha256, "sizes": asdict(sizes), "runs_history": history}
        bench.write_part("curve", report)
    return report


def task_part(bench: Bench) -> dict:
    report = task_distillation(bench.args.teacher, bench.mts_files, bench.mts_task, bench.args.out, bench.sizes,
                               bench.args.device, bench.phase)
    report.update({"device": bench.args.device, "threads": torch.get_num_threads(),
                   "teacher": str(bench.args.teacher), "teacher_sha256": bench.teacher_sha256})
    bench.write_part("task", report)
    (bench.args.out / "task_distillation.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (bench.args.out / "task_distillation.md").write_text(quality_report.task_markdown(report) + "\n",
                                                          encoding="utf-8")
    return report


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
    parser.add_argument("--smoke", action="store_true", help="Every part at toy sizes (a few minutes).")
    parser.add_argument("--seeds", type=positive_int,
                        help="Distillation (and fine-tuning) seeds per student (default: 3 on CPU, 5 on a GPU, "
                        "2 smoke).")
    parser.add_argument("--part", choices=("all", *PARTS), default="all",
                        help="Which rows to run (see the module docstring); every part's results in OUT/parts/ are "
                        "merged into OUT/quality.json after each.")
    parser.add_argument("--students", type=lambda text: [n.strip() for n in text.split(",") if n.strip()],
                        help="Only these rows of the main, narrow or curve part, comma-separated (e.g. "
                        "'distilled,mlm-only'), so that a part splits into runs that each fit a machine's limit; rows "
                        "of the part run before with the same teacher and sizes stay in its results, the comparisons "
                        "span them all.")
    args = parser.parse_args(argv)
    unknown = [name for name in args.students or () if name not in BY_NAME]
    if unknown:
        parser.error(f"--students {', '.join(unknown)}: no such row; the rows are {', '.join(BY_NAME)}.")
    rows_of = {part: [s.name for s in STUDENTS if s.part == part] for part in PARTS}
    rows_of.update(curve=list(CURVE_STUDENTS), task=[])
    parts = PARTS if args.part == "all" else (args.part,)
    if args.students:  # only the parts that hold a named row run
        elsewhere = [name for name in args.students if not any(name in rows_of[part] for part in parts)]
        if elsewhere:
            rows = ", ".join(rows_of[args.part]) or "fixed (--students names rows of main, narrow or curve)"
            parser.error(f"--students {', '.join(elsewhere)}: not a row of --part {args.part}; its rows are {rows}.")
        parts = [part for part in parts if any(name in rows_of[part] for name in args.students)]
    for name in ("medquad_answers.txt", "mts_sections.jsonl"):
        if not (args.data / name).is_file():
            parser.error(f"--data {args.data} has no {name}: pass the folder that holds the shared real text.")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file: pass a folder for the models and results (made if missing).")
    if not (args.teacher / "config.json").is_file():
        parser.error(f"--teacher {args.teacher} holds no model (config.json): pass the teacher's folder.")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no GPU here: drop --device.")
    sizes = SIZES["smoke" if args.smoke else args.device]
    if args.seeds is not None:
        sizes = dataclasses.replace(sizes, seeds=args.seeds)
    try:
        bench = Bench.prepare(args, sizes)
        run = {"main": lambda: students_part(bench, "main"), "narrow": lambda: students_part(bench, "narrow"),
               "curve": lambda: curve_part(bench), "task": lambda: task_part(bench)}
        for part in parts:
            run[part]()
    except BenchmarkInputError as err:
        parser.exit(2, f"bench_quality: error: {err}\n")
    with bench.parts_locked():
        report = quality_report.merge(args.out)
        print((args.out / "quality.md").read_text())
    print(f"{(time.perf_counter() - bench.started) / 60:.1f} minutes; results in {args.out}/quality.json, quality.md")
    return report


if __name__ == "__main__":
    main()
