"""The distillation recipe behind `recipes/run_distil.py` and the `hf-distil` command.

config (YAML/JSON) + CLI flags → teacher, tokenizer, student → corpus → DistillationTrainer → Hub-ready folder.
Every mistake a user can make is reported in one line before any model is trained.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import AutoModelForMaskedLM, AutoTokenizer, HfArgumentParser

from .arguments import DistillationArguments
from .data import DataArguments, effective_max_seq_length, is_noteevents, load_raw_corpus, make_collator, \
    tokenize_corpus
from .student import create_student
from .trainer import DistillationTrainer, load_teacher

logger = logging.getLogger("hf_distil")

MIMIC_DATA_USE_NOTE = (
    "MIMIC-III is available only to credentialed PhysioNet users under the PhysioNet Credentialed Health Data Use "
    "Agreement. Models trained on it may only be shared in ways that agreement permits: check it before publishing, "
    "keep the repository private unless you are sure, and never share the notes themselves."
)


class RecipeError(ValueError):
    """A user-fixable problem with the configuration, reported as one line."""


@dataclass
class ModelArguments:
    """Which student, which tokenizer (the teacher is `teacher_model_name_or_path` of DistillationArguments)."""

    student_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Start from this existing student instead of initialising one from the teacher."}
    )
    student_num_layers: int = field(default=6, metadata={"help": "Layers of the student built from the teacher."})
    student_layers: str = field(
        default="every_other",
        metadata={"help": "Teacher layers that initialise the student: every_other (1,3,5,…), distilbert "
                  "(0,2,4,7,9,11) or comma-separated indices, e.g. 0,3,6,9."},
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, when not the teacher's own."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow code from the model repositories to run (teacher, student, tokenizer)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded models and datasets are cached."})


@dataclass
class RunArguments:
    """How this run treats its output folder and its card."""

    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow writing into a non-empty output_dir that holds no checkpoint to resume."}
    )
    evaluate_before_training: bool = field(
        default=True, metadata={"help": "Evaluate the freshly initialised student first, to show what distillation gained."}
    )
    card_license: str = field(default="apache-2.0", metadata={"help": "License in the model card's front matter."})
    card_language: str = field(default="en", metadata={"help": "Language code(s), comma-separated, for the card."})


ARGUMENT_CLASSES = (ModelArguments, DataArguments, DistillationArguments, RunArguments)


def _field_names() -> set[str]:
    return {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls) if f.init}


def _read_config(path: str) -> dict:
    if not os.path.isfile(path):
        raise RecipeError(f"Config file {path!r} not found: pass the path of a .yaml or .json config.")
    with open(path, encoding="utf-8") as f:
        values = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    if not isinstance(values, dict):
        raise RecipeError(f"Config {path!r} must be a mapping of argument names to values.")
    known = _field_names()
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else " See `hf-distil --help` for the accepted names."
            raise RecipeError(f"Unknown key {key!r} in {path}.{hint}")
    return values


def parse_arguments(argv: list[str] | None = None):
    """`CONFIG.yaml [--flag value ...]` or flags alone; flags override the config. Returns the four dataclasses."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    config = {}
    if argv and not argv[0].startswith("-") and argv[0].endswith((".yaml", ".yml", ".json")):
        config_path, argv = argv[0], argv[1:]
        config = _read_config(config_path)
    flags = {option for action in parser._actions for option in action.option_strings}
    unknown = [a for a in argv if a.startswith("--") and a.split("=", 1)[0] not in flags]
    if unknown:
        key = unknown[0][2:].split("=", 1)[0].replace("-", "_")
        close = difflib.get_close_matches(key, sorted(_field_names()), n=1)
        raise RecipeError(f"Unknown flag {unknown[0]!r}." + (f" Did you mean '--{close[0]}'?" if close else ""))
    parser.set_defaults(**config)
    if "output_dir" not in config and not any(a.split("=", 1)[0] == "--output_dir" for a in argv):
        raise RecipeError("No output_dir: set output_dir in the config or pass --output_dir DIR.")
    return tuple(parser.parse_args_into_dataclasses(args=argv))


def parse_layers(spec):
    """'every_other' / 'distilbert' / '1,3,5' / [1, 3, 5] (from YAML) → what create_student takes."""
    if isinstance(spec, (list, tuple)):
        spec = ",".join(str(i) for i in spec)
    spec = str(spec).strip()
    if spec in ("every_other", "distilbert"):
        return spec
    try:
        return [int(i) for i in spec.split(",") if i.strip()]
    except ValueError:
        raise RecipeError(
            f"student_layers={spec!r}: use every_other, distilbert or comma-separated teacher layer indices."
        ) from None


def latest_complete_checkpoint(output_dir: str) -> str | None:
    """Newest `checkpoint-N` whose trainer_state.json (written last by Trainer) is complete and parses.

    A checkpoint half-written when the process was killed has no (or a truncated) trainer_state.json and is skipped.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    candidates = []
    for path in folder.glob("checkpoint-*"):
        suffix = path.name.split("-", 1)[1]
        if path.is_dir() and suffix.isdigit():
            candidates.append((int(suffix), path))
    for _, path in sorted(candidates, reverse=True):
        state = path / "trainer_state.json"
        weights = any((path / name).exists() for name in ("model.safetensors", "model.safetensors.index.json",
                                                          "adapter_model.safetensors"))
        try:
            json.loads(state.read_text())
        except (OSError, ValueError):
            logger.warning("Skipping incomplete checkpoint %s (no readable trainer_state.json).", path)
            continue
        if weights:
            return str(path)
        logger.warning("Skipping incomplete checkpoint %s (no weights).", path)
    return None


def resolve_resume(training_args: DistillationArguments, run_args: RunArguments) -> str | None:
    """What to resume from, and a refusal to clobber a non-empty output_dir by accident."""
    resume = training_args.resume_from_checkpoint
    out = training_args.output_dir
    if resume is True or resume in ("auto", "latest", "True", "true"):
        found = latest_complete_checkpoint(out)
        if found is None:
            logger.info("resume_from_checkpoint=auto: no complete checkpoint in %s, starting fresh.", out)
        resume = found
    elif resume and not os.path.isdir(resume):
        raise RecipeError(f"resume_from_checkpoint={resume!r} is not a folder: pass a checkpoint-N folder or 'auto'.")
    if resume is None and os.path.isdir(out) and any(Path(out).iterdir()):
        if not run_args.overwrite_output_dir:
            raise RecipeError(
                f"output_dir {out!r} is not empty: pass --resume_from_checkpoint auto to continue it, "
                "--overwrite_output_dir true to write over it, or choose another output_dir."
            )
        if training_args.process_index == 0:
            # Old checkpoints would mix with the new run's (resume auto, save_total_limit rotation).
            for old in Path(out).glob("checkpoint-*"):
                logger.warning("overwrite_output_dir: removing the previous run's %s", old)
                shutil.rmtree(old, ignore_errors=True)
    return resume


def build_models(model_args: ModelArguments, training_args: DistillationArguments):
    """(teacher, student, tokenizer), checked for compatibility by the trainer afterwards."""
    name = training_args.teacher_model_name_or_path
    if name is None:
        raise RecipeError("No teacher: set teacher_model_name_or_path in the config or pass --teacher_model_name_or_path.")
    common = {"trust_remote_code": model_args.trust_remote_code, "cache_dir": model_args.cache_dir}
    teacher = load_teacher(name, training_args, **common)
    tokenizer_name = model_args.tokenizer_name or name
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name, **common)
    except (OSError, ValueError) as err:
        raise RecipeError(
            f"Tokenizer {tokenizer_name!r} could not be loaded ({str(err).splitlines()[0]}): pass --tokenizer_name."
        ) from err
    if model_args.student_model_name_or_path:
        student = AutoModelForMaskedLM.from_pretrained(model_args.student_model_name_or_path, **common)
    else:
        student = create_student(teacher, model_args.student_num_layers, parse_layers(model_args.student_layers))
    return teacher, student, tokenizer


def describe_dataset(data_args: DataArguments) -> tuple[str | None, list[str] | None, str | None]:
    """(name shown on the card, Hub dataset ids, data-use note) — never any text of the corpus."""
    path = data_args.train_file
    files = [os.path.join(path, f) for f in sorted(os.listdir(path))] if path and os.path.isdir(path) else [path]
    if path and any(os.path.isfile(f) and f.endswith((".csv", ".csv.gz")) and is_noteevents(f) for f in files):
        return "MIMIC-III clinical notes (NOTEEVENTS)", None, MIMIC_DATA_USE_NOTE
    if data_args.dataset_name:
        return data_args.dataset_name, [data_args.dataset_name], None
    source = data_args.train_file or data_args.dataset_path
    return (Path(source).name if source else None), None, None


def run(model_args: ModelArguments, data_args: DataArguments, training_args: DistillationArguments,
        run_args: RunArguments) -> dict:
    """Distil, evaluate, save the student, tokenizer, arguments, results and card; returns the final metrics."""
    resume = resolve_resume(training_args, run_args)
    teacher, student, tokenizer = build_models(model_args, training_args)
    max_len = effective_max_seq_length(data_args.max_seq_length, tokenizer, teacher.config)
    with training_args.main_process_first(desc="reading and tokenising the corpus"):  # rank 0 fills the cache
        raw = load_raw_corpus(data_args, cache_dir=model_args.cache_dir, seed=training_args.seed)
        tokenized = tokenize_corpus(raw, tokenizer, data_args, max_len)
    train_ds, eval_ds = tokenized["train"], tokenized.get("validation")
    collator = make_collator(tokenizer, data_args, seed=training_args.seed)
    if training_args.push_to_hub and training_args.hub_private_repo is None:
        training_args.hub_private_repo = True  # clinical data: private unless asked otherwise

    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=training_args, train_dataset=train_ds, eval_dataset=eval_ds,
        processing_class=tokenizer, data_collator=collator,
    )
    dataset_name, dataset_ids, note = describe_dataset(data_args)
    trainer.card_info.update(dataset_name=dataset_name, dataset_ids=dataset_ids, data_use_note=note,
                             license=run_args.card_license,
                             language=_codes(run_args.card_language))

    before = {}
    if eval_ds is not None and run_args.evaluate_before_training and resume is None:
        before = trainer.evaluate(metric_key_prefix="init")
    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    metrics = dict(train_result.metrics)
    if eval_ds is not None:
        metrics.update(trainer.evaluate())
    metrics.update(before)
    trainer.log_metrics("all", metrics)
    trainer.save_metrics("all", metrics)
    trainer.save_state()
    trainer.create_model_card()
    if training_args.push_to_hub:
        trainer.push_to_hub()
    if trainer.is_world_process_zero():
        print(summary(metrics, training_args.output_dir))
    return metrics


def _codes(value) -> list[str]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(c).strip() for c in items if str(c).strip()]


def summary(metrics: dict, output_dir: str) -> str:
    """A short before/after table for the terminal."""
    rows = [("teacher agreement", "teacher_agreement"), ("masked-token accuracy", "accuracy"),
            ("perplexity", "perplexity"), ("KL to teacher", "kd_loss")]
    lines = ["", "hf-distil summary", f"{'metric':<24}{'before':>12}{'after':>12}"]
    for label, key in rows:
        if f"eval_{key}" in metrics:
            before = metrics.get(f"init_{key}")
            b = f"{before:>12.4f}" if before is not None else f"{'-':>12}"
            lines.append(f"{label:<24}{b}{metrics[f'eval_{key}']:>12.4f}")
    lines.append(f"Hub-ready model folder: {output_dir}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        run(*parse_arguments(argv))
    except (RecipeError, FileNotFoundError, ValueError) as err:
        print(f"hf-distil: error: {err}", file=sys.stderr)
        return 2
    return 0
