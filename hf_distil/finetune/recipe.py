"""The fine-tuning recipe behind `hf-distil-finetune` and `recipes/run_finetune.py`: check the arguments, then
fine-tune plainly (hf_distil.finetune.run) or distil a fine-tuned teacher on the task (hf_distil.finetune.distil)."""

from __future__ import annotations

import os

from ..errors import ArgumentError
from ..hub import check_push_to_hub
from .arguments import PLAIN, FinetuneArguments, FinetuneResult
from .distil import distil_task
from .errors import FinetuneFileNotFoundError
from .run import check_finetune_output_dir, check_no_distillation_flags, check_update_card, run_plain


def run_finetune(args: FinetuneArguments, training_args) -> list[FinetuneResult]:
    """The whole recipe: fine-tune, optionally the comparison model too, write the table, update the card.

    With push_to_hub the repository is private unless hub_private_repo says otherwise; only the first model is pushed.
    """
    check_push_to_hub(training_args)
    if not args.model_name_or_path and not args.distil_from:
        raise ArgumentError("--model_name_or_path is required (the checkpoint to fine-tune), or --distil_from "
                            "TEACHER to distil a fine-tuned teacher into a smaller student.")
    for flag, path in (("model_name_or_path", args.model_name_or_path), ("compare_with", args.compare_with),
                       ("distil_from", args.distil_from)):
        if path and path != PLAIN and not os.path.isdir(path):
            check_hub_reference(flag, path)
        if path and os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
            if os.path.isfile(os.path.join(path, "adapter_config.json")):
                raise FinetuneFileNotFoundError(
                    f"--{flag} {path} holds a LoRA adapter, not a whole model: pass the merged model "
                    "(run_finetune.py --use_lora --merge_lora writes it to OUTPUT_DIR/merged)."
                )
            raise FinetuneFileNotFoundError(
                f"--{flag} {path} has no config.json: pass the folder that save_pretrained wrote."
            )
    if training_args.push_to_hub and training_args.hub_private_repo is None:
        training_args.hub_private_repo = True
    check_update_card(args)
    if not args.distil_from:
        check_no_distillation_flags(args, training_args)
    if args.distil_from:
        return distil_task(args, training_args, check_finetune_output_dir)
    return run_plain(args, training_args)


def check_hub_reference(flag: str, name: str) -> None:
    """A model named by something that is no local folder is taken for a Hub id: said here, before any training,
    when it cannot be one (a path: absolute, relative, a file) or cannot be reached (offline and not cached), not
    when the --compare_with model loads after the main one has trained."""
    looks_local = (os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or os.path.exists(name)
                   or "\\" in name)
    if looks_local:
        what = "is a file, not a model folder" if os.path.isfile(name) else "no such folder"
        raise FinetuneFileNotFoundError(
            f"--{flag} {name}: {what}. Pass the folder that save_pretrained wrote, or a Hub id (org/name)."
        )
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(name, "config.json"), str):
        raise FinetuneFileNotFoundError(
            f"--{flag} {name}: HF_HUB_OFFLINE is set and this Hub id is not in the local cache: download it "
            "first (`hf download " + name + "`), or pass a local folder."
        )

