"""The `hf-distil-finetune` command (and `recipes/run_finetune.py`): `CONFIG.yaml [--flag value ...]` or flags alone.

A mistake the user can fix is one line on stderr (`hf-distil-finetune: error: …`, exit 2) before any training.
"""

from __future__ import annotations

import sys

from .arguments import DistillationArguments
from .config import USER_ERRORS, parse_config_and_flags, usage_or_version
from .finetune import FinetuneArguments, FinetuneResult, run_finetune

PROG = "hf-distil-finetune"


def parse_args(argv: list[str] | None = None) -> tuple[FinetuneArguments, DistillationArguments]:
    """A YAML / JSON config and/or flags (flags override the config): FinetuneArguments + DistillationArguments
    (TrainingArguments and the distillation objective's flags, which only --distil_from uses)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return parse_config_and_flags((FinetuneArguments, DistillationArguments), argv, PROG)


def main(argv: list[str] | None = None) -> list[FinetuneResult]:
    """Parse, fine-tune, print one line per model; a user error exits with status 2 after one line on stderr."""
    argv = sys.argv[1:] if argv is None else list(argv)
    said = usage_or_version(argv, PROG, "--model_name_or_path MODEL --train_file train.conll --validation_file "
                                        "dev.conll --output_dir out/ner")
    if said is not None:
        raise SystemExit(said)
    try:
        finetune_args, training_args = parse_args(argv)
        results = run_finetune(finetune_args, training_args)
    except USER_ERRORS as err:
        print(f"{PROG}: error: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}",
              file=sys.stderr)
        raise SystemExit(2) from None
    for result in results:
        scores = ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items() if k in ("f1", "accuracy", "macro_f1"))
        speed = (f"{result.tokens_per_second:,.0f} tokens/s" if result.tokens_per_second == result.tokens_per_second
                 else "inference speed not measured (ZeRO-3)")
        print(f"{result.name}: {scores}, {result.parameters:,d} parameters, {speed}")
    return results


def console() -> None:
    """Entry point of the installed command."""
    main()


if __name__ == "__main__":
    console()
