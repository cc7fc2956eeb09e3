"""What to fine-tune on which data and how (`FinetuneArguments`), and what one run measured (`FinetuneResult`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

TASKS = ("auto", "ner", "classification")
# --compare_with's word for "the same student, fine-tuned without the teacher" (with --distil_from).
PLAIN = "plain"


@dataclass
class FinetuneArguments:
    """What to fine-tune on which data, LoRA settings, and the comparison / card options.

    Parsed by ``HfArgumentParser`` beside ``transformers.TrainingArguments`` (CLI flags, JSON or YAML).
    """

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Masked-LM checkpoint to fine-tune (folder or Hub id), e.g. a distilled student. With "
                  "--distil_from: the student to distil into (optional; default: half the teacher's layers, copied "
                  "from it with its head)."},
    )
    train_file: str | None = field(
        default=None,
        metadata={"help": "Training data (required): CoNLL (.conll/.bio/.iob/.txt) or jsonl for NER; csv/tsv/json/"
                  "jsonl for classification."},
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "Evaluation data (required), same format as train_file."})
    distil_from: str | None = field(
        default=None,
        metadata={"help": "Task distillation: a teacher fine-tuned on this task (a *ForTokenClassification or "
                  "*ForSequenceClassification folder or Hub id) whose predictions the student learns on the task "
                  "data, beside the gold labels (--alpha_kd, --temperature, --alpha_task, ...: the distillation flags "
                  "of hf-distil). Nothing is fine-tuned plainly unless --compare_with plain."},
    )
    student_num_layers: int | None = field(
        default=None,
        metadata={"help": "With --distil_from and no --model_name_or_path: layers of the student copied from the "
                  "teacher (default: half of the teacher's, at least 1)."},
    )
    student_layers: str = field(
        default="every_other",
        metadata={"help": "With --distil_from and no --model_name_or_path: the teacher layers the student copies: "
                  "every_other, distilbert, or comma-separated indices, e.g. 0,3,6,9."},
    )
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
                  "comparison.md / comparison.json to OUTPUT_DIR. With --distil_from, 'plain' fine-tunes the same "
                  "student (same initialisation, data, steps and seed) without the teacher, as the control."},
    )
    update_card: str | None = field(
        default=None,
        metadata={"help": "Folder whose README.md model card gets a 'Downstream evaluation' table and "
                  "model-index results (usually the distilled model's folder). When --model_name_or_path is a local "
                  "folder too, it must be that same folder or hold the same model.safetensors (a copy); a Hub id "
                  "with a local --update_card folder is allowed."},
    )
    speed_batches: int = field(
        default=20, metadata={"help": "Number of evaluation batches timed to measure inference tokens/s."}
    )
    speed_min_seconds: float = field(
        default=1.0, metadata={"help": "Repeat the timed batches until at least this many seconds have passed."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Allow writing into a non-empty output_dir. Files an earlier run_finetune did not write "
                  "there (a model, a config, a card), and the models being fine-tuned or compared, are never "
                  "overwritten."},
    )

    def __post_init__(self):
        for name in ("train_file", "validation_file"):
            if not getattr(self, name):
                raise ValueError(f"--{name} is required: pass the path of the task's {name.split('_')[0]} data.")
        if self.compare_with == PLAIN and not self.distil_from:
            raise ValueError(f"--compare_with {PLAIN} fine-tunes the student of --distil_from without its teacher: "
                             "add --distil_from TEACHER, or pass a checkpoint to --compare_with.")
        if self.distil_from and self.use_lora:
            raise ValueError("--use_lora with --distil_from: task distillation trains all of the student's weights; "
                             "drop --use_lora.")
        if self.student_num_layers is not None and self.student_num_layers < 1:
            raise ValueError(f"student_num_layers must be at least 1, got {self.student_num_layers}.")
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
        """The JSON-ready fields; a speed not measured (NaN, under ZeRO-3) is null."""
        skip = ("model", "merged_model")
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}
        if out["tokens_per_second"] != out["tokens_per_second"]:
            out["tokens_per_second"] = None
        return out

