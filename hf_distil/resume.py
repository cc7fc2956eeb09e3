"""What a run resumes from: `resume_from_checkpoint` (a folder, or auto) checked to be complete, the output folder's
policy (never the teacher's or the student's folder, another model, or a non-empty folder unasked), and a finished
run that is loaded rather than trained one step further."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .checkpoints import (
    ARGS_MARKER,
    check_output_dir,
    latest_complete_checkpoint,
    list_checkpoints,
    made_here_by,
    remove_checkpoints,
    require_complete_checkpoint,
)
from .errors import RecipeError

logger = logging.getLogger("hf_distil")


# Files a run writes at the top of output_dir: --overwrite_output_dir replaces them only in a folder a run wrote.
RUN_OUTPUT_FILES = ("README.md", "config.json", "generation_config.json", "model.safetensors",
                    "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "vocab.txt", "all_results.json", "train_results.json",
                    "eval_results.json", "trainer_state.json", "training_args.json", ARGS_MARKER)


def resolve_resume(training_args, run_args, model_args=None) -> str | None:
    """What to resume from (a checkpoint complete enough for an exact resume), and a refusal to clobber output_dir:
    never the teacher's or student's folder or another model, and a non-empty one only when asked to."""
    resume = training_args.resume_from_checkpoint
    out = training_args.output_dir
    resume_state = not training_args.save_only_model  # save_only_model checkpoints hold no optimizer by design
    sources = {"--teacher_model_name_or_path": training_args.teacher_model_name_or_path,
               "--student_model_name_or_path": model_args.student_model_name_or_path if model_args else None}
    check_output_dir(out, sources, marker=ARGS_MARKER)
    auto = resume is True or resume in ("auto", "latest", "True", "true")
    if auto:
        found = latest_complete_checkpoint(out, resume_state)
        if found is None and list_checkpoints(out):  # never start over on top of them, even with overwrite
            raise RecipeError(
                f"resume_from_checkpoint=auto: no checkpoint in {out!r} is complete enough to resume exactly (the "
                "warnings above name what each lacks): to start over, drop --resume_from_checkpoint and pass "
                "--overwrite_output_dir true (it deletes them), or choose another output_dir."
            )
        if found is None:
            logger.info("resume_from_checkpoint=auto: no complete checkpoint in %s, starting fresh.", out)
        else:
            logger.info("resume_from_checkpoint=auto: resuming from %s", found)
        resume = found
    elif resume and not os.path.isdir(resume):
        raise RecipeError(f"resume_from_checkpoint={resume!r} is not a folder: pass a checkpoint-N folder or 'auto'.")
    elif resume:
        require_complete_checkpoint(resume, resume_state)
    if resume is None and os.path.isdir(out) and any(Path(out).iterdir()):
        if not run_args.overwrite_output_dir:
            raise RecipeError(
                f"output_dir {out!r} is not empty: pass --resume_from_checkpoint auto to continue it, "
                "--overwrite_output_dir true to write over it, or choose another output_dir."
            )
        theirs = [] if made_here_by(out, ARGS_MARKER) else [n for n in RUN_OUTPUT_FILES if (Path(out) / n).exists()]
        if theirs:
            raise RecipeError(
                f"output_dir {out!r} holds {', '.join(theirs)} that no earlier hf-distil run wrote there (no "
                f"{ARGS_MARKER} naming this output_dir); --overwrite_output_dir would replace them: choose a new or "
                "empty output_dir, or move those files away first."
            )
        remove_checkpoints(out, training_args.process_index, "overwrite_output_dir")
    return resume


def finished_run_state(checkpoint, args):
    """(checkpoint path, its TrainerState, the last step) when resuming from `checkpoint` (True: the last in
    output_dir) would start at or past the run's last step: max_steps, or the same epoch-based run (same epochs and
    batch size); None when there is something left to train or nothing to resume."""
    from transformers import TrainerState
    from transformers.trainer_utils import get_last_checkpoint

    if checkpoint is True:
        checkpoint = get_last_checkpoint(args.output_dir)
    if not isinstance(checkpoint, (str, os.PathLike)):
        return None
    state_file = os.path.join(checkpoint, "trainer_state.json")
    if not os.path.isfile(state_file):
        return None
    state = TrainerState.load_from_json(state_file)
    if args.max_steps > 0:
        last = args.max_steps
    elif state.num_train_epochs == args.num_train_epochs and \
            state.train_batch_size == args.per_device_train_batch_size * max(1, args.n_gpu):
        last = state.max_steps  # the same epoch-based run; more epochs or another batch size: train on
    else:
        return None
    if not last or state.global_step < last:
        return None
    return checkpoint, state, last


# What defines a run's trajectory besides the objective's own fields (each term's Term.fields): resuming with other
# values would continue an optimizer and a schedule made for another run, while the card states the new values.
RUN_FIELDS = ("learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "weight_decay", "optim",
              "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "per_device_train_batch_size",
              "gradient_accumulation_steps", "max_steps", "seed", "data_seed", "teacher_dtype", "bf16", "fp16")


def changed_settings(checkpoint, args) -> list[str]:
    """`name old → new` for each setting of the run that differs from the one `checkpoint` was trained with (read from
    its saved arguments; none for a checkpoint without them)."""
    import json

    from .terms import registered

    saved_file = os.path.join(checkpoint, ARGS_MARKER)
    if not os.path.isfile(saved_file):
        return []
    with open(saved_file, encoding="utf-8") as f:
        saved = json.load(f)
    now = json.loads(args.to_json_string())
    fields = list(RUN_FIELDS) + [f for term in registered() for f in term.fields]
    if now.get("max_steps", -1) <= 0:
        fields.append("num_train_epochs")
    return [f"{name} {saved[name]!r} → {now[name]!r}" for name in dict.fromkeys(fields)
            if name in saved and name in now and saved[name] != now[name]]


def check_same_run(checkpoint, args) -> None:
    """Resuming continues the run a checkpoint belongs to: other settings (a longer max_steps included, which would
    re-warm a finished schedule) are refused in one line that says how to start over."""
    if checkpoint is True:
        from transformers.trainer_utils import get_last_checkpoint

        checkpoint = get_last_checkpoint(args.output_dir)
    if not isinstance(checkpoint, (str, os.PathLike)):
        return
    changes = changed_settings(checkpoint, args)
    if changes:
        raise RecipeError(
            f"Resuming {checkpoint} with other settings than it was trained with ({', '.join(changes)}): its optimizer "
            "and schedule belong to that run, and the card would describe a run that did not happen. Resume with the "
            "settings it was trained with, or start over (--overwrite_output_dir true, or another output_dir)."
        )


SHAPE_FIELDS = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                "vocab_size")


def check_same_student(checkpoint, model) -> None:
    """The checkpoint's student has this model's shape (config.json), else one line: loading its weights and
    optimizer into another shape fails deep in torch."""
    import json

    from .families import unwrap

    path = os.path.join(checkpoint, "config.json") if isinstance(checkpoint, (str, os.PathLike)) else None
    if path is None or not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    config = unwrap(model).config
    changes = [f"{name} {saved[name]!r} → {getattr(config, name)!r}" for name in SHAPE_FIELDS
               if name in saved and getattr(config, name, saved[name]) != saved[name]]
    if changes:
        raise RecipeError(
            f"Resuming {checkpoint}, whose student has another shape than this one ({', '.join(changes)}): its "
            "weights and optimizer cannot continue this model. Give the student flags it was trained with "
            "(--student_num_layers, …), or start over (--overwrite_output_dir true, or another output_dir)."
        )
