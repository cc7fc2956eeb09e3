"""Fine-tuning end to end: one checkpoint with `Trainer` (train, evaluate, save, time), or two side by side written to
`comparison.md` / `comparison.json`, with the first model's results optionally added to a model card.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

from datasets import DatasetDict
from transformers import Trainer

from ..card.downstream import TASK_INFO, comparison_summary, device_note, results_table, update_model_card
from ..checkpoints import (
    ARGS_MARKER,
    OutputFolderError,
    check_output_dir,
    expected_save_bytes,
    latest_complete_checkpoint,
    list_checkpoints,
    made_here_by,
    probe_output_dir,
    remove_checkpoints,
    require_complete_checkpoint,
)
from ..errors import ArgumentError
from ..hub import NoPickleHubMixin
from ..parameters import count_parameters
from .arguments import FinetuneArguments, FinetuneResult
from .errors import FinetuneFileNotFoundError
from .metrics import argmax_logits, build_compute_metrics
from .model import build_model
from .readers import default_dataset_name, load_splits
from .speed import measure_inference_speed
from .tokenisation import preprocess

logger = logging.getLogger("hf_distil.finetune")

# Written beside each fine-tuned model: what made it, and the output_dir that may overwrite it.
FINETUNE_MARKER = "finetune_args.json"
# Files a fine-tuning run writes (or, for stale weight shards, deletes) at the top of its output_dir:
# --overwrite_output_dir replaces them only in a folder an earlier run of ours wrote.
FINETUNE_OUTPUT_FILES = ("README.md", "config.json", "generation_config.json", "model.safetensors",
                         "model.safetensors.index.json", "model-*-of-*.safetensors", "adapter_config.json",
                         "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
                         "special_tokens_map.json", "vocab.txt", "merges.txt", "all_results.json", "eval_results.json",
                         "validation_results.json", "test_results.json", "trainer_state.json", "training_args.json",
                         "comparison.md", "comparison.json", FINETUNE_MARKER)


def display_name(model_name_or_path: str) -> str:
    """Folder name for local checkpoints, the id for Hub models."""
    path = Path(model_name_or_path)
    return path.resolve().name if path.is_dir() else str(model_name_or_path)


class FinetuneTrainer(NoPickleHubMixin, Trainer):
    """`Trainer` whose saves and pushes hold no pickle and no Hub token (arguments as training_args.json)."""


def finetune_model(model_name_or_path: str, raw: DatasetDict, task: str, label_list: list[str],
                   args: FinetuneArguments, training_args, model=None, name: str | None = None) -> FinetuneResult:
    """Fine-tune one checkpoint with ``Trainer``, evaluate, save, and time inference.

    Writes to ``training_args.output_dir``: the model (or LoRA adapter + the labelled config),
    tokenizer, ``eval_results.json``; with ``merge_lora`` also ``merged/``. Pass ``model`` to use a
    model you built (e.g. with ``build_model``) instead of loading one (the tokenizer still comes from
    ``model_name_or_path``), and ``name`` to report it under another name than that path's.
    """
    name = name or display_name(model_name_or_path)
    from transformers import (
        AutoTokenizer,
        DataCollatorForTokenClassification,
        DataCollatorWithPadding,
        set_seed,
    )

    set_seed(training_args.seed)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
    except OSError as err:
        raise FinetuneFileNotFoundError(
            f"{model_name_or_path} could not be loaded ({str(err).strip().splitlines()[0]}): pass a folder with "
            "config.json, weights and tokenizer files, or a Hub id reachable from here."
        ) from err
    data = preprocess(raw, tokenizer, task, label_list, args.max_seq_length)
    if model is None:
        model = build_model(model_name_or_path, task, label_list, args)
    if training_args.should_save:  # an unwritable or too small output_dir fails now, not after training
        probe_output_dir(training_args.output_dir, expected_save_bytes(
            model, checkpoint=training_args.save_strategy != "no", optimizer=not training_args.save_only_model))
    trainable, total = count_parameters(model)
    print(f"{name}: trainable params: {trainable:,d} || all params: {total:,d} "
          f"|| trainable%: {100 * trainable / total:.4f}")

    collator = (DataCollatorForTokenClassification(tokenizer) if task == "ner"
                else DataCollatorWithPadding(tokenizer))
    eval_split = "test" if "test" in data else "validation"
    trainer = FinetuneTrainer(
        model=model, args=training_args, data_collator=collator,
        train_dataset=data["train"], eval_dataset=data["validation"], processing_class=tokenizer,
        compute_metrics=build_compute_metrics(task, label_list),
        preprocess_logits_for_metrics=argmax_logits,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = trainer.evaluate(data[eval_split], metric_key_prefix=eval_split)
    trainer.save_metrics(eval_split, metrics)
    trainer.save_model()
    if trainer.is_world_process_zero():
        marker = {"output_dir": str(training_args.output_dir), **dataclasses.asdict(args)}
        (Path(training_args.output_dir) / FINETUNE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")

    deployed = trainer.model
    merged = None
    lora = None
    if args.use_lora:
        # The adapter alone does not record the label names: save the labelled config beside it.
        deployed.get_base_model().config.save_pretrained(training_args.output_dir)
        merged = copy.deepcopy(deployed).merge_and_unload()
        deployed = merged
        lora = {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout,
                "target_modules": sorted(trainer.model.peft_config["default"].target_modules)}
        if args.merge_lora and trainer.is_world_process_zero():
            merged.save_pretrained(Path(training_args.output_dir) / "merged")
            tokenizer.save_pretrained(Path(training_args.output_dir) / "merged")

    speed = measure_inference_speed(
        deployed, data[eval_split], collator, batch_size=training_args.per_device_eval_batch_size,
        max_batches=args.speed_batches, min_seconds=args.speed_min_seconds,
    )
    prefix = f"{eval_split}_"
    return FinetuneResult(
        name=name, model_name_or_path=str(model_name_or_path), task=task,
        split=eval_split,
        metrics={k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)},
        parameters=count_parameters(deployed)[1], trainable_parameters=trainable,
        tokens_per_second=speed, output_dir=str(training_args.output_dir), lora=lora,
        model=trainer.model, merged_model=merged,
    )


def resolve_resume(training_args) -> bool:
    """`--resume_from_checkpoint auto` → the newest complete checkpoint of output_dir (none: a fresh start, said in
    the log; a run that finished there: refused); a given path must be a complete checkpoint. Whether this run
    continues a run of output_dir itself (its checkpoint lies there); training_args is updated."""
    resume = training_args.resume_from_checkpoint
    out = str(training_args.output_dir)
    resume_state = not training_args.save_only_model  # save_only_model checkpoints hold no optimizer by design
    if resume is True or resume in ("auto", "latest", "True", "true"):
        if made_here_by(out, FINETUNE_MARKER):
            raise OutputFolderError(
                f"resume_from_checkpoint=auto: the run in {out!r} finished ({FINETUNE_MARKER} is written at its end): "
                "nothing to resume; pass --overwrite_output_dir true to run it again, or choose another output_dir."
            )
        resume = latest_complete_checkpoint(out, resume_state)
        if resume is None and list_checkpoints(out):
            raise OutputFolderError(
                f"resume_from_checkpoint=auto: no checkpoint in {out!r} is complete enough to resume (the warnings "
                "above name what each lacks): drop --resume_from_checkpoint and pass --overwrite_output_dir true to "
                "start over, or choose another output_dir."
            )
        logger.info("resume_from_checkpoint=auto: %s", f"resuming from {resume}" if resume else
                    f"no checkpoint in {out}, starting fresh")
        training_args.resume_from_checkpoint = resume
    elif resume and not os.path.isdir(resume):
        raise OutputFolderError(f"resume_from_checkpoint={resume!r} is not a folder: pass a checkpoint-N folder or "
                                "'auto'.")
    elif resume:
        require_complete_checkpoint(resume, resume_state)
    return bool(resume) and Path(resume).resolve().parent == Path(out).resolve()


def check_finetune_output_dir(args: FinetuneArguments, training_args) -> None:
    """Raise OutputFolderError before any work when output_dir (or its compare_with/) is the folder of a model this
    run reads, holds a model an earlier run_finetune did not write, or is not empty without overwrite_output_dir."""
    sources = {"--model_name_or_path": args.model_name_or_path, "--compare_with": args.compare_with,
               "--update_card": args.update_card, "--distil_from": args.distil_from}
    out = str(training_args.output_dir)
    folders = [out] + ([os.path.join(out, "compare_with")] if args.compare_with else [])
    for folder in folders:
        check_output_dir(folder, sources, marker=FINETUNE_MARKER)
    resuming = resolve_resume(training_args)  # continuing the run of this very folder
    if os.path.isdir(out) and any(Path(out).iterdir()) and not args.overwrite_output_dir and not resuming:
        raise OutputFolderError(
            f"output_dir {out!r} is not empty: pass --resume_from_checkpoint auto to continue its run, "
            "--overwrite_output_dir true to write over it, or choose another output_dir."
        )
    # As in the distillation recipe: overwrite only over what an earlier run of ours wrote in this very folder,
    # never over files (weights in a layout model_files does not know, a config, a card) that no run of ours wrote.
    for folder in folders:
        if not os.path.isdir(folder) or made_here_by(folder, FINETUNE_MARKER) or made_here_by(folder, ARGS_MARKER):
            continue
        found = (p.name for pattern in FINETUNE_OUTPUT_FILES for p in sorted(Path(folder).glob(pattern)))
        theirs = list(dict.fromkeys(found))
        if theirs:
            raise OutputFolderError(
                f"output_dir {folder!r} holds {', '.join(theirs)} that no earlier hf-distil run wrote there (no "
                f"{FINETUNE_MARKER} naming this output_dir); --overwrite_output_dir would replace them: choose a new "
                "or empty output_dir, or move those files away first."
            )
    # Old checkpoints would mix with this run's (resume auto, save_total_limit rotation): a run written over loses
    # them, and a resumed run's --compare_with model, which starts over, loses its own.
    for folder in (folders if not resuming else folders[1:]):
        if os.path.isdir(folder) and (args.overwrite_output_dir or resuming):
            remove_checkpoints(folder, training_args.process_index,
                               "resume (the comparison starts over)" if resuming else "overwrite_output_dir")


def _weights_fingerprint(folder: str) -> tuple[int, str] | None:
    """(size, sha256 of the first and last MiB) of folder/model.safetensors, or None without one: equal for copies of
    the same weights, cheap for a model of any size."""
    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        return None
    size, digest = path.stat().st_size, hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(2**20))
        handle.seek(max(size - 2**20, 0))
        digest.update(handle.read(2**20))
    return size, digest.hexdigest()


def check_update_card(args: FinetuneArguments) -> None:
    """Raise ArgumentError before any work when --update_card is a local folder of another model than the local
    --model_name_or_path: the results would be written onto the wrong model's card. A folder holding a copy of the
    same weights is accepted, and so is any folder with a Hub id (the user may have downloaded that model there)."""
    model, card = args.model_name_or_path, args.update_card
    if card and args.distil_from:
        if not model or os.path.realpath(os.path.expanduser(card)) == os.path.realpath(args.distil_from):
            raise ArgumentError(
                f"--update_card {card!r} with --distil_from: the task-distilled student's own card in --output_dir "
                "records these results, and the teacher's card must not get them; --update_card takes the folder of "
                "the --model_name_or_path student it started from (e.g. a general-distilled student), or drop it."
            )
    if card:  # a typo must not wait until every model has trained
        local = os.path.expanduser(card)
        if (os.path.exists(local) or card.startswith((".", "/", "~"))) and \
                not os.path.isfile(os.path.join(local, "README.md")):
            raise ArgumentError(
                f"--update_card {card!r} is not a folder holding a model card (README.md): pass the distilled "
                "model's folder, or drop --update_card."
            )
    if not (model and card and os.path.isdir(os.path.expanduser(model)) and os.path.isdir(os.path.expanduser(card))):
        return
    model_real, card_real = (os.path.realpath(os.path.expanduser(p)) for p in (model, card))
    if model_real == card_real:
        return
    theirs = _weights_fingerprint(card_real)
    if theirs is not None and theirs == _weights_fingerprint(model_real):
        return
    raise ArgumentError(
        f"--update_card {card!r} is the folder of another model than --model_name_or_path {model!r} (its "
        "model.safetensors differs or is missing), so the results would go onto the wrong model's card: pass "
        f"--update_card {model}, or drop --update_card."
    )


def check_no_distillation_flags(args: FinetuneArguments, training_args) -> None:
    """Without --distil_from nothing is distilled: a distillation or student flag given anyway is a mistake to say,
    not to ignore."""
    from transformers import TrainingArguments

    from ..arguments import DistillationArguments

    given = []
    plain_fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    for f in dataclasses.fields(DistillationArguments):  # its own fields only (not those of another subclass)
        if f.name not in plain_fields and f.init and getattr(training_args, f.name, f.default) != f.default:
            given.append(f.name)
    for name in ("student_num_layers", "student_layers"):
        if getattr(args, name) != FinetuneArguments.__dataclass_fields__[name].default:
            given.append(name)
    if given:
        raise ArgumentError(
            f"{', '.join('--' + name for name in given)} {'applies' if len(given) == 1 else 'apply'} to task "
            "distillation only, and this run fine-tunes without a teacher: add --distil_from TEACHER, or drop them."
        )


def run_plain(args: FinetuneArguments, training_args) -> list[FinetuneResult]:
    """Plain fine-tuning (no teacher): the model, and the --compare_with model beside it; the comparison table and
    the --update_card patch. The arguments were checked by hf_distil.finetune.recipe.run_finetune."""
    check_finetune_output_dir(args, training_args)
    raw, task, label_list = load_splits(args)
    dataset_name = args.dataset_name or default_dataset_name(args.train_file)
    logger.info("task=%s, %d labels: %s", task, len(label_list), label_list)
    runs = [(args.model_name_or_path, training_args)]
    if args.compare_with:
        compare_dir = str(Path(training_args.output_dir) / "compare_with")
        runs.append((args.compare_with,  # the control starts over: the checkpoint to resume is the model's own
                     dataclasses.replace(training_args, output_dir=compare_dir, push_to_hub=False,
                                         resume_from_checkpoint=None)))
    results = []
    for path, run_args in runs:
        result = finetune_model(path, raw, task, label_list, args, run_args)
        result.model = result.merged_model = None  # free memory before the next model
        results.append(result)
    is_main = training_args.process_index == 0
    if args.compare_with and is_main:
        write_comparison(results, training_args.output_dir, dataset_name)
    if args.update_card and is_main:
        update_model_card(args.update_card, results, dataset_name)
    return results


def write_comparison(results: list[FinetuneResult], output_dir: str | os.PathLike, dataset_name: str) -> Path:
    """Write ``comparison.md`` and ``comparison.json`` to ``output_dir``; returns the markdown path."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    first = results[0]
    text = (
        f"# Fine-tuning comparison: {dataset_name} ({TASK_INFO[first.task][1].lower()}, {first.split} split)\n\n"
        f"{results_table(results)}\n\n{comparison_summary(results)}\n\n"
        f"Inference tokens/s: non-padding tokens per second on the {first.split} inputs, measured on this "
        f"machine ({device_note()}), same batches for every model.\n"
    )
    (out / "comparison.md").write_text(text, encoding="utf-8")
    payload = {"dataset": dataset_name, "device": device_note(), "results": [r.to_dict() for r in results]}
    (out / "comparison.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return out / "comparison.md"

