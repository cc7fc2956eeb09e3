"""Task distillation end to end: a teacher fine-tuned on NER or classification distilled into a smaller student on
the task's own data (`run_finetune.py --distil_from TEACHER`).

teacher folder + task files → checks (task, labels, tokenizer, output folder) → student (half the teacher's layers
copied with its head, or a given checkpoint with the teacher's labels) → `DistillationTrainer` (KL to the teacher's
label distributions + the student's cross-entropy on the gold labels + any other term asked for) → a Hub-ready
folder with its card → the teacher scored on the same split, and optionally the same student fine-tuned without
the teacher (`--compare_with plain`) → `comparison.md` / `comparison.json`, the card's downstream table.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from ..card.downstream import TASK_INFO, comparison_summary, device_note, results_table, update_model_card
from ..card.facts import CardFacts
from ..checkpoints import barrier, made_here_by
from ..errors import ArgumentError, ModelMismatchError
from ..families import SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION, model_task
from ..parameters import count_parameters
from .arguments import PLAIN, FinetuneArguments, FinetuneResult
from .errors import FinetuneDataError, FinetuneFileNotFoundError
from .metrics import argmax_logits, build_compute_metrics
from .readers import default_dataset_name, load_splits
from .run import FINETUNE_MARKER, FinetuneTrainer, display_name, finetune_model
from .speed import measure_inference_speed
from .tokenisation import preprocess

logger = logging.getLogger("hf_distil.finetune")

# The fine-tuning task (hf_distil.finetune.readers) of each kind of teacher (hf_distil.families.model_task).
TEACHER_TASKS = {TOKEN_CLASSIFICATION: "ner", SEQUENCE_CLASSIFICATION: "classification"}


def load_task_teacher(path: str, training_args, dtype=None):
    """The fine-tuned teacher of --distil_from, as its task class; anything else is one line naming the fix."""
    from ..errors import TeacherNotFoundError
    from ..teacher import load_teacher

    kwargs = {} if dtype is None else {"dtype": dtype}
    try:
        teacher = load_teacher(path, training_args, **kwargs)
    except TeacherNotFoundError as err:  # its advice is about masked LMs: say what --distil_from needs
        reason = str(err).split(" could not be loaded ", 1)[-1].split("): pass", 1)[0].lstrip("(")
        raise TeacherNotFoundError(
            f"--distil_from {path} could not be loaded ({reason}): pass the folder run_finetune.py wrote for the "
            "fine-tuned teacher (config.json and weights), or a Hub id reachable from here (offline: cached)."
        ) from None
    if model_task(teacher) not in TEACHER_TASKS:
        raise ModelMismatchError(
            f"--distil_from {path} is {type(teacher).__name__}, not a model fine-tuned for token or sequence "
            "classification: fine-tune it on the task first (run_finetune.py --model_name_or_path "
            f"{path} ...), then distil that; a masked-LM teacher is distilled with run_distil.py."
        )
    return teacher


def teacher_label_list(teacher, task: str, data_labels: list, files: dict[str, str]) -> list:
    """The teacher's labels in its own order (as the data spells them): every label of the data must be one of them.

    A CSV may give classes as 0/1 where the teacher's config says "0"/"1": labels compare as text.
    """
    config = teacher.config
    labels = [config.id2label[i] for i in sorted(config.id2label)]
    by_text = {str(label): label for label in data_labels}
    unknown = sorted(set(by_text) - {str(label) for label in labels})
    if unknown:
        shown = ", ".join(map(repr, unknown[:10])) + (f" and {len(unknown) - 10} more" * (len(unknown) > 10))
        raise FinetuneDataError(
            f"{files['train']} (and the other task files) use labels the teacher does not know: {shown}; the "
            f"teacher's labels are {[str(label) for label in labels]}: distil on data labelled like the teacher's "
            f"({'--tags_column' if task == 'ner' else '--label_column'} may name another column)."
        )
    return [by_text.get(str(label), label) for label in labels]


# Any of these in a folder means it holds a tokenizer (transformers 5 builds a bare default one from a folder without).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model")


def has_tokenizer(path: str) -> bool:
    """A Hub id is assumed to have one (loading it says otherwise); a folder must hold tokenizer files."""
    return not os.path.isdir(path) or any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES)


def load_tokenizer(path: str):
    """The teacher's tokenizer, or one line saying it is missing."""
    from transformers import AutoTokenizer

    if has_tokenizer(path):
        try:
            return AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as err:
            reason = f" ({str(err).strip().splitlines()[0]})"
    else:
        reason = f" (none of {', '.join(TOKENIZER_FILES)})"
    raise FinetuneFileNotFoundError(
        f"--distil_from {path} has no usable tokenizer{reason}: save the fine-tuned teacher's tokenizer beside it "
        "(tokenizer.save_pretrained(folder))."
    )


def check_same_tokenizer(student_path: str, teacher_tokenizer) -> None:
    """A given student must read the teacher's token ids: the same vocabulary, token for token (a student folder
    without tokenizer files reads the teacher's)."""
    from transformers import AutoTokenizer

    if not has_tokenizer(student_path):
        return
    student_tokenizer = AutoTokenizer.from_pretrained(student_path)
    if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        raise ModelMismatchError(
            f"The tokenizer of --model_name_or_path {student_path} ({len(student_tokenizer)} tokens) is not the one of "
            f"--distil_from ({len(teacher_tokenizer)} tokens): student and teacher must read the same "
            "token ids; distil into a student made from this teacher's family (or drop --model_name_or_path)."
        )


def build_student(args: FinetuneArguments, teacher, task: str, label_list: list):
    """The student: a given checkpoint with a head for the teacher's labels, or the teacher's layers copied."""
    from ..student import create_student
    from .model import build_model

    if args.model_name_or_path:
        student = build_model(args.model_name_or_path, task, label_list, args)
        # What the card says about the init: this checkpoint and a new head, no layers copied from this teacher.
        student.config.distil_init = "checkpoint"
        student.config.distil_start_checkpoint = display_name(args.model_name_or_path)
        student.config.distil_teacher_layers = student.config.distil_layer_strategy = None
        return student
    depth = teacher.config.num_hidden_layers
    layers = args.student_layers
    if layers not in ("every_other", "distilbert"):
        try:
            layers = [int(i) for i in str(layers).split(",") if i.strip()]
        except ValueError:
            raise ArgumentError(f"student_layers={args.student_layers!r}: use every_other, distilbert or "
                                "comma-separated teacher layer indices, e.g. 0,3,6,9.") from None
    num_layers = args.student_num_layers or (len(layers) if isinstance(layers, list) else max(1, depth // 2))
    if layers == "every_other" and 2 * num_layers > depth:
        layers = [round(i * (depth - 1) / max(num_layers - 1, 1)) for i in range(num_layers)] if num_layers > 1 \
            else [depth - 1]
    try:
        return create_student(teacher, num_layers, layers)
    except ModelMismatchError as err:  # its message names create_student's arguments: say which flags they are
        raise ModelMismatchError(f"--student_num_layers {num_layers} / --student_layers {args.student_layers}: "
                                 f"{err}") from None


def check_task(teacher, task: str, path: str, train_file: str) -> None:
    expected = TEACHER_TASKS[model_task(teacher)]
    if task != expected:
        data = "NER (token tags)" if task == "ner" else "classification (one label per text)"
        raise FinetuneDataError(
            f"--distil_from {path} is a {type(teacher).__name__} ({expected}) but {train_file} is {data} data: "
            f"distil on the data of the teacher's own task, or pass --task {expected} if the files were misread."
        )


def evaluate_model(model, data, collator, task: str, label_list: list, training_args, batch_size: int) -> dict:
    """The task metrics of a model that is not trained here (the teacher), on `data`, like Trainer's evaluation."""

    eval_args = dataclasses.replace(training_args, report_to=[], push_to_hub=False, save_strategy="no",
                                    eval_strategy="no", load_best_model_at_end=False,
                                    per_device_eval_batch_size=batch_size)
    trainer = FinetuneTrainer(model=model, args=eval_args, data_collator=collator,
                              compute_metrics=build_compute_metrics(task, label_list),
                              preprocess_logits_for_metrics=argmax_logits)
    metrics = trainer.evaluate(data, metric_key_prefix="eval")
    return {k.removeprefix("eval_"): v for k, v in metrics.items() if k.startswith("eval_")}


def distil_task(args: FinetuneArguments, training_args, check_output) -> list[FinetuneResult]:
    """The whole task-distillation recipe (see the module docstring); returns [distilled student, teacher, plain
    student (with --compare_with plain) or the --compare_with checkpoint]. `check_output(args, training_args)`
    refuses an output folder this run must not write (hf_distil.finetune.run.check_finetune_output_dir)."""
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding, set_seed

    from ..arguments import DistillationArguments
    from ..trainer import DistillationTrainer

    if not isinstance(training_args, DistillationArguments):
        raise TypeError("distil_task needs DistillationArguments (hf_distil.DistillationArguments) as training_args.")
    if training_args.teacher_model_name_or_path:
        raise ArgumentError(
            f"--teacher_model_name_or_path {training_args.teacher_model_name_or_path} with --distil_from "
            f"{args.distil_from}: the teacher of task distillation is --distil_from; drop the other."
        )
    check_output(args, training_args)
    stale = Path(training_args.output_dir) / "compare_with"  # an earlier run's control: never shown as this run's
    barrier()  # every rank has checked the folder before rank 0 changes it
    if training_args.process_index == 0 and made_here_by(str(stale), FINETUNE_MARKER):
        shutil.rmtree(stale)
    barrier()
    raw, task, data_labels = load_splits(args)
    files = {"train": args.train_file, "validation": args.validation_file}
    # float32, so that the student (and the plain control) copy its float32 weights; the trainer then casts the
    # teacher alone to teacher_dtype (bf16 under --bf16), as the masked-LM recipe does
    teacher = load_task_teacher(args.distil_from, training_args, dtype=torch.float32)
    check_task(teacher, task, args.distil_from, args.train_file)
    label_list = teacher_label_list(teacher, task, data_labels, files)
    tokenizer = load_tokenizer(args.distil_from)
    if args.model_name_or_path:
        check_same_tokenizer(args.model_name_or_path, tokenizer)
    data = preprocess(raw, tokenizer, task, label_list, args.max_seq_length)
    dataset_name = args.dataset_name or default_dataset_name(args.train_file)

    set_seed(training_args.seed)  # a new head (given student) is initialised from the run's seed
    student = build_student(args, teacher, task, label_list)
    plain_init = copy.deepcopy(student) if args.compare_with == PLAIN else None
    collator = (DataCollatorForTokenClassification(tokenizer) if task == "ner" else DataCollatorWithPadding(tokenizer))
    eval_split = "test" if "test" in data else "validation"
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=training_args, data_collator=collator,
        train_dataset=data["train"], eval_dataset=data["validation"], processing_class=tokenizer,
        compute_metrics=build_compute_metrics(task, label_list), preprocess_logits_for_metrics=argmax_logits,
        card_facts=CardFacts(dataset_name=dataset_name),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = trainer.evaluate()  # the validation split: the card's training results (eval_ metrics)
    trainer.save_metrics("validation", metrics)
    if eval_split == "test":
        metrics = trainer.evaluate(data["test"], metric_key_prefix="test")
        trainer.save_metrics("test", metrics)
    trainer.save_model(_internal_call=True)  # Trainer would push the folder here; the push waits for the card below
    trainer.save_state()  # trainer_state.json: the logged loss terms of every step
    if trainer.is_world_process_zero():
        marker = {"output_dir": str(training_args.output_dir), **dataclasses.asdict(args)}
        (Path(training_args.output_dir) / FINETUNE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    prefix = f"{'test' if eval_split == 'test' else 'eval'}_"
    student_model = trainer.model
    speed_args = dict(batch_size=training_args.per_device_eval_batch_size, max_batches=args.speed_batches,
                      min_seconds=args.speed_min_seconds)
    distilled = FinetuneResult(
        name=Path(training_args.output_dir).resolve().name, model_name_or_path=str(training_args.output_dir),
        task=task, split=eval_split, metrics={k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)},
        parameters=count_parameters(student_model, exclude=("distil_projections.",))[1],
        trainable_parameters=count_parameters(student_model, exclude=("distil_projections.",))[0],
        tokens_per_second=measure_inference_speed(student_model, data[eval_split], collator, **speed_args),
        output_dir=str(training_args.output_dir),
    )
    # The teacher on the same split, in float32 like the students (the trainer may hold it in bfloat16).
    teacher = load_task_teacher(args.distil_from, training_args, dtype=torch.float32).to(student_model.device)
    teacher_metrics = evaluate_model(teacher, data[eval_split], collator, task, label_list, training_args,
                                     training_args.per_device_eval_batch_size)
    teacher_result = FinetuneResult(
        name=display_name(args.distil_from), model_name_or_path=str(args.distil_from), task=task, split=eval_split,
        metrics=teacher_metrics, parameters=count_parameters(teacher)[1], trainable_parameters=0,
        tokens_per_second=measure_inference_speed(teacher, data[eval_split], collator, **speed_args),
        output_dir=str(args.distil_from),
    )
    del teacher
    results = [distilled, teacher_result]
    if args.compare_with:
        compare_dir = str(Path(training_args.output_dir) / "compare_with")
        # The control starts over (an earlier run's was removed above): the checkpoint to resume is the student's.
        compare_args = dataclasses.replace(training_args, output_dir=compare_dir, push_to_hub=False,
                                           resume_from_checkpoint=None)
        if args.compare_with == PLAIN:
            plain = finetune_model(args.distil_from, raw, task, label_list, args, compare_args, model=plain_init,
                                   name=PLAIN_NAME)
            plain.model_name_or_path = compare_dir
        else:
            plain = finetune_model(args.compare_with, raw, task, label_list, args, compare_args)
        plain.model = plain.merged_model = None
        results.append(plain)
    downstream = {"results": results, "dataset_name": dataset_name, "summary": distillation_summary(results),
                  "intro": CARD_INTRO}
    trainer.card_downstream = downstream
    trainer.create_model_card()  # the distillation card, with the table of this model, the teacher and the control
    if training_args.process_index == 0:
        write_distillation_comparison(results, training_args.output_dir, dataset_name)
        if args.update_card:
            update_model_card(args.update_card, **downstream)
    if training_args.push_to_hub:
        trainer.push_output_folder(exclude_folders=("compare_with",))
    return results


# How comparison.md and the card name the control of --compare_with plain.
PLAIN_NAME = "same student, plain fine-tuning"
CARD_INTRO = ("Measured by `recipes/run_finetune.py --distil_from` (hf-distil) on the split named in the heading: "
              "this model, the teacher it was distilled from (as given: evaluated, not trained in this run, so its "
              "trained parameters are 0) and, where present, the same student fine-tuned without the teacher on the "
              "same data, steps and seed.")


def distillation_summary(results: list[FinetuneResult]) -> str:
    """The sentences under the table: the share of the teacher's main metric kept, and the gain over the control."""
    text = comparison_summary(results[:2])
    if len(results) > 2:
        key, label = TASK_INFO[results[0].task][2][0]
        if results[0].task == "classification":
            key, label = "macro_f1", "macro-F1"
        gain = results[0].metrics[key] - results[2].metrics[key]
        how = "same student, data and budget, no teacher" if results[2].name == PLAIN_NAME else "fine-tuned plainly"
        text += (f" Against `{results[2].name}` ({how}): {label} "
                 f"{results[0].metrics[key]:.4f} vs {results[2].metrics[key]:.4f} ({gain:+.4f}), one run each; "
                 "bench_quality.py's task-distillation rows measure the spread over seeds.")
    return text


def write_distillation_comparison(results: list[FinetuneResult], output_dir, dataset_name: str) -> Path:
    out = Path(output_dir)
    first = results[0]
    text = (
        f"# Task distillation: {dataset_name} ({TASK_INFO[first.task][1].lower()}, {first.split} split)\n\n"
        f"{results_table(results)}\n\n{distillation_summary(results)}\n\n"
        f"`{first.name}`: distilled from `{results[1].name}` on the task data. `{results[1].name}`: the teacher as "
        "given (evaluated, not trained here; trained parameters 0). Inference tokens/s: non-padding tokens per second "
        f"on the {first.split} inputs, measured on this machine ({device_note()}), same batches for every model.\n"
    )
    (out / "comparison.md").write_text(text, encoding="utf-8")
    payload = {"dataset": dataset_name, "device": device_note(), "kind": "task distillation",
               "results": [r.to_dict() for r in results]}
    (out / "comparison.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return out / "comparison.md"


__all__ = ["TEACHER_TASKS", "build_student", "check_same_tokenizer", "distil_task", "distillation_summary",
           "evaluate_model", "load_task_teacher", "teacher_label_list", "write_distillation_comparison"]
