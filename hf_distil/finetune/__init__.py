"""Downstream evaluation: fine-tune a masked-LM checkpoint (a distilled student or its teacher) on NER or
(sentence-pair) classification, optionally with LoRA, and compare two models on metric, size and inference speed;
results can be added to a model card.

Used by ``recipes/run_finetune.py`` and ``hf-distil-finetune``; every step is a function so it can be reused from
Python, and every name is importable from ``hf_distil.finetune``:

- `arguments`: `FinetuneArguments` (what to run) and `FinetuneResult` (what one run measured)
- `errors`: the user-fixable errors
- `readers`: data files -> splits, the task they imply, their labels
- `tokenisation`: splits -> model inputs with aligned labels
- `model`: the classification model on a masked-LM checkpoint, LoRA
- `metrics`: the shipped metrics and `compute_metrics`
- `speed`: inference tokens/s
- `run`: one or two models end to end, and `comparison.md` / `comparison.json`
- `distil`: task distillation (`--distil_from`): a fine-tuned teacher into a smaller student on the task data

The card patch (`update_model_card`) lives in `hf_distil.card.downstream`.
"""

from ..card.downstream import comparison_summary, results_table, update_model_card
from ..card.validate import validate_saved_card as validate_model_card  # this module's name for the saved-card check
from ..parameters import count_parameters
from .arguments import PLAIN, TASKS, FinetuneArguments, FinetuneResult
from .distil import distil_task, load_task_teacher, teacher_label_list
from .errors import FinetuneDataError, FinetuneFileNotFoundError
from .metrics import METRICS_DIR, build_compute_metrics, load_metric
from .model import apply_lora, build_model, default_lora_target_modules, head_module_names
from .readers import (
    CONLL_SUFFIXES,
    JSON_SUFFIXES,
    TABLE_SUFFIXES,
    build_label_list,
    default_dataset_name,
    infer_task,
    load_classification_split,
    load_ner_split,
    load_splits,
    read_conll,
)
from .recipe import run_finetune
from .run import (
    FINETUNE_MARKER,
    FinetuneTrainer,
    check_finetune_output_dir,
    check_update_card,
    display_name,
    finetune_model,
    run_plain,
    write_comparison,
)
from .speed import measure_inference_speed
from .tokenisation import preprocess, tokenize_and_align_labels, tokenize_classification

__all__ = [
    "CONLL_SUFFIXES", "FINETUNE_MARKER", "JSON_SUFFIXES", "METRICS_DIR", "PLAIN", "TABLE_SUFFIXES", "TASKS",
    "FinetuneArguments", "FinetuneDataError", "FinetuneFileNotFoundError", "FinetuneResult", "FinetuneTrainer",
    "apply_lora", "build_compute_metrics", "build_label_list", "build_model", "check_finetune_output_dir",
    "check_update_card", "comparison_summary", "count_parameters", "default_dataset_name",
    "default_lora_target_modules", "display_name", "distil_task", "finetune_model", "head_module_names", "infer_task",
    "load_classification_split", "load_metric", "load_ner_split", "load_splits", "load_task_teacher",
    "measure_inference_speed", "preprocess", "read_conll", "results_table", "run_finetune", "run_plain",
    "teacher_label_list", "tokenize_and_align_labels", "tokenize_classification", "update_model_card",
    "validate_model_card", "write_comparison",
]
