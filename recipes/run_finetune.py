"""Fine-tune a (distilled) masked-LM on NER or classification, optionally with LoRA, and compare it with
its teacher. Thin wrapper: the logic lives in ``hf_distil.finetune``.

    python recipes/run_finetune.py config.yaml            # or config.json
    python recipes/run_finetune.py --model_name_or_path out/student \\
        --train_file tests/fixtures/finetune/ner_train.conll \\
        --validation_file tests/fixtures/finetune/ner_validation.conll \\
        --output_dir out/ner --num_train_epochs 3 --use_lora --compare_with emilyalsentzer/Bio_ClinicalBERT

Flags: every ``FinetuneArguments`` field (``--help``) plus every ``transformers.TrainingArguments`` field; after a
config file they override its values. The same command is installed as ``hf-distil-finetune``.
"""

from __future__ import annotations

from hf_distil.finetune_cli import console, main, parse_args  # noqa: F401  (parse_args/main: importable helpers)

if __name__ == "__main__":
    console()
