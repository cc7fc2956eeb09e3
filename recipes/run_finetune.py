"""Fine-tune a (distilled) masked-LM on NER or classification, optionally with LoRA, and compare it with
its teacher. Thin wrapper: the logic lives in ``hf_distil.finetune``.

    python recipes/run_finetune.py config.yaml            # or config.json
    python recipes/run_finetune.py --model_name_or_path out/student \\
        --train_file tests/fixtures/finetune/ner_train.conll \\
        --validation_file tests/fixtures/finetune/ner_validation.conll \\
        --output_dir out/ner --num_train_epochs 3 --use_lora --compare_with emilyalsentzer/Bio_ClinicalBERT

Flags: every ``FinetuneArguments`` field (``--help``) plus every ``transformers.TrainingArguments`` field.
"""

from __future__ import annotations

import sys

from transformers import HfArgumentParser, TrainingArguments

from hf_distil.finetune import FinetuneArguments, run_finetune


def parse_args(argv: list[str] | None = None) -> tuple[FinetuneArguments, TrainingArguments]:
    """CLI flags, or a single YAML / JSON config file."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = HfArgumentParser((FinetuneArguments, TrainingArguments))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(argv[0])
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(argv[0])
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv: list[str] | None = None):
    finetune_args, training_args = parse_args(argv)
    results = run_finetune(finetune_args, training_args)
    for result in results:
        scores = ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items() if k in ("f1", "accuracy", "macro_f1"))
        print(f"{result.name}: {scores}, {result.parameters:,d} parameters, {result.tokens_per_second:,.0f} tokens/s")
    return results


if __name__ == "__main__":
    main()
