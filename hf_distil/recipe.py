"""The distillation recipe behind `recipes/run_distil.py` and the `hf-distil` command.

config (YAML/JSON) + CLI flags → teacher, tokenizer, student → corpus → DistillationTrainer → Hub-ready folder.
Every mistake a user can make is reported in one line before any model is trained.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForMaskedLM, AutoTokenizer, HfArgumentParser, TrainerCallback, set_seed
from transformers.trainer_utils import IntervalStrategy

from .arguments import DistillationArguments
from .card import DEFAULT_LICENSE, LANGUAGE_RE, LICENSE_RE, CardFacts
from .checkpoints import (
    ARGS_MARKER,
    DiskFullError,
    check_output_dir,
    expected_save_bytes,
    latest_complete_checkpoint,
    list_checkpoints,
    made_here_by,
    probe_output_dir,
    remove_checkpoints,
    require_complete_checkpoint,
)
from .data import (
    DataArguments,
    DataError,
    effective_max_seq_length,
    load_raw_corpus,
    make_collator,
    noteevents_inputs,
    tokenize_corpus,
)
from .data.utf8 import bom_encoding
from .errors import DistillationConfigError
from .heads import MASKED_LM, encoder_layers, model_task
from .hub import check_push_to_hub
from .student import create_student
from .trainer import DistillationTrainer, NonFiniteLossError, check_compatibility, load_teacher

logger = logging.getLogger("hf_distil")

MIMIC_DATA_USE_NOTE = (
    "MIMIC-III is available only to credentialed PhysioNet users under the PhysioNet Credentialed Health Data Use "
    "Agreement. Models trained on it may only be shared in ways that agreement permits: check it before publishing, "
    "keep the repository private unless you are sure, and never share the notes themselves."
)


class EvaluateAtTrainBegin(TrainerCallback):
    """The "before" evaluation under DeepSpeed, run once train() has built the student's engine: an evaluate()
    before train() makes transformers build an engine without optimizer, and train() then has none to step."""

    def __init__(self, trainer):
        self.trainer, self.metrics = trainer, {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.metrics = self.trainer.evaluate(metric_key_prefix="init")


class RecipeError(DistillationConfigError):
    """A user-fixable problem with the configuration, reported as one line."""


# What `main` reports as one line (exit 2); anything else is a bug and keeps its traceback.
USER_ERRORS = (DistillationConfigError, DataError)
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
# Files a run writes at the top of output_dir: --overwrite_output_dir replaces them only in a folder a run wrote.
RUN_OUTPUT_FILES = ("README.md", "config.json", "generation_config.json", "model.safetensors",
                    "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "vocab.txt", "all_results.json", "train_results.json",
                    "eval_results.json", "trainer_state.json", "training_args.json", ARGS_MARKER)


@dataclass
class ModelArguments:
    """Which student, which tokenizer (the teacher is `teacher_model_name_or_path` of DistillationArguments)."""

    student_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Start from this existing student instead of initialising one from the teacher."},
    )
    student_num_layers: int = field(default=6, metadata={"help": "Layers of the student built from the teacher."})
    student_layers: str = field(
        default="every_other",
        metadata={"help": "Teacher layers that initialise the student: every_other (1,3,5,…), distilbert "
                  "(0,2,4,7,9,11) or comma-separated indices, e.g. 0,3,6,9."},
    )
    student_hidden_size: int | None = field(
        default=None,
        metadata={"help": "Width of a narrower student (e.g. 312): a width, FFN size or head count other than the "
                  "teacher's builds a randomly initialised student (TinyBERT); default: the teacher's."},
    )
    student_intermediate_size: int | None = field(
        default=None, metadata={"help": "Feed-forward size of a narrower student (e.g. 1200); default: the teacher's."}
    )
    student_num_attention_heads: int | None = field(
        default=None, metadata={"help": "Attention heads of a narrower student (e.g. 12); default: the teacher's."}
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={"help": "Attention kernel of teacher and student: sdpa, eager, flash_attention_2, flash_attention_3, "
                  "flex_attention, or auto (flash_attention_2 where a CUDA GPU, the flash-attn package and bf16/fp16 "
                  "are there and the model supports it: attention over the real tokens only, unpadded; the model's "
                  "default otherwise). Default: transformers' choice for the model (sdpa where supported)."},
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
        default=False,
        metadata={"help": "Allow writing into a non-empty output_dir that holds no checkpoint to resume."},
    )
    evaluate_before_training: bool = field(
        default=True,
        metadata={"help": "Evaluate the freshly initialised student first, to show what distillation gained."},
    )
    card_license: str = field(default=DEFAULT_LICENSE, metadata={"help": "License in the model card's front matter."})
    card_language: str = field(default="en", metadata={"help": "Language code(s), comma-separated, for the card."})


ARGUMENT_CLASSES = (ModelArguments, DataArguments, DistillationArguments, RunArguments)


def _field_names() -> set[str]:
    return {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls) if f.init}


def _read_config(path: str, known: set[str] | None = None, prog: str = "hf-distil") -> dict:
    """The config's mapping; a syntax error names the file and line, an unknown key the closest known one."""
    if not os.path.isfile(path):
        raise RecipeError(f"Config file {path!r} not found: pass the path of a .yaml or .json config.")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark (Windows Notepad) is dropped, for JSON as for YAML
    except UnicodeDecodeError as err:
        encoding = bom_encoding(data)
        if encoding:  # "Unicode" from Windows Notepad or PowerShell: latin1 would be the wrong source encoding
            stem, ext = os.path.splitext(path)  # the converted copy keeps .yaml / .json, which picks the parser
            raise RecipeError(
                f"{path} is {encoding.upper()} (it starts with a byte-order mark), not UTF-8; re-encode it, e.g. "
                f"iconv -f {encoding} -t utf-8 {path} > {stem}.utf8{ext}"
            ) from None
        line = data[:err.start].count(b"\n") + 1
        raise RecipeError(
            f"{path} is not UTF-8: line {line} has byte 0x{data[err.start]:02x}; re-encode it, e.g. "
            f"iconv -f latin1 -t utf-8 {path} > {path}.utf8 (-f cp1252 for Windows files)."
        ) from None
    try:
        values = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except json.JSONDecodeError as err:
        raise RecipeError(f"{path}:{err.lineno}:{err.colno}: invalid JSON ({err.msg}); fix the config.") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError(f"{where}: invalid YAML ({problem}); fix the config.") from err
    if not isinstance(values, dict):
        raise RecipeError(f"Config {path!r} must be a mapping of argument names to values.")
    known = _field_names() if known is None else known
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else f" See `{prog} --help` for the accepted names."
            raise RecipeError(f"Unknown key {key!r} in {path}.{hint}")
    return values


def parse_config_and_flags(classes, argv: list[str], prog: str = "hf-distil", required: tuple[str, ...] = ()):
    """`CONFIG.yaml [--flag value ...]` or flags alone, for any `HfArgumentParser` dataclasses; flags override the
    config. Mistakes in either raise RecipeError (or the dataclasses' own error types)."""
    argv = list(argv)
    parser = HfArgumentParser(classes, prog=prog)

    def refuse(message: str):  # argparse's own mistakes (a bad value, a missing one): one line, no usage screen
        flag = message.split(":", 1)[0].removeprefix("argument ").split("/", 1)[0]
        hint = (f" (a value starting with '-' is written {flag}=VALUE)"
                if "expected one argument" in message else "")
        raise RecipeError(f"{message}{hint}; see `{prog} --help`.")

    parser.error = refuse
    known = {f.name for cls in classes for f in dataclasses.fields(cls) if f.init}
    config = {}
    if argv and not argv[0].startswith("-") and argv[0].endswith(CONFIG_SUFFIXES):
        config_path, argv = argv[0], argv[1:]
        config = _read_config(config_path, known, prog)
    flags = {option for action in parser._actions for option in action.option_strings}
    unknown = [a for a in argv if a.startswith("--") and a.split("=", 1)[0] not in flags]
    if unknown:
        key = unknown[0][2:].split("=", 1)[0].replace("-", "_")
        close = difflib.get_close_matches(key, sorted(known), n=1)
        raise RecipeError(f"Unknown flag {unknown[0]!r}." + (f" Did you mean '--{close[0]}'?" if close else ""))
    for name in required if not {"-h", "--help"} & set(argv) else ():  # --help needs no config
        if name not in config and not any(a.split("=", 1)[0] == f"--{name}" for a in argv):
            raise RecipeError(f"No {name}: set {name} in the config or pass --{name}.")
    for action in parser._actions:
        if action.dest in config:
            action.required = False  # given by the config
            value = config[action.dest]
            if isinstance(value, str) and action.type in (int, float):  # YAML reads 1e-3 as a string
                try:
                    config[action.dest] = action.type(value)
                except ValueError:
                    kind = "an integer" if action.type is int else "a number"
                    raise RecipeError(f"{action.dest}={value!r} in the config is not {kind}.") from None
    parser.set_defaults(**config)
    try:
        return tuple(parser.parse_args_into_dataclasses(args=argv))
    except USER_ERRORS:
        raise
    except ValueError as err:  # a dataclass's own validation (TrainingArguments.__post_init__) of the user's values
        raise RecipeError(" ".join(line.strip() for line in str(err).strip().splitlines())) from err


def parse_arguments(argv: list[str] | None = None):
    """`CONFIG.yaml [--flag value ...]` or flags alone; flags override the config. Returns the four dataclasses."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parsed = parse_config_and_flags(ARGUMENT_CLASSES, argv, "hf-distil", required=("output_dir",))
    if not str(parsed[2].output_dir or "").strip():
        raise RecipeError("output_dir is empty: pass --output_dir PATH, e.g. --output_dir out/distilled.")
    _check_training_length(parsed[2])
    _check_card_arguments(parsed[3])
    return parsed


def _check_training_length(training_args: DistillationArguments) -> None:
    """A run that would take no step (num_train_epochs 0 and no max_steps) would save the untrained student."""
    epochs = training_args.num_train_epochs
    if training_args.max_steps <= 0 and not (math.isfinite(epochs) and epochs > 0):
        raise RecipeError(
            f"num_train_epochs={epochs!r} with max_steps={training_args.max_steps!r}: nothing to train (or no end); "
            "pass --num_train_epochs above 0 or --max_steps above 0."
        )


def _check_card_arguments(run_args: RunArguments) -> None:
    """The card's licence and languages, checked now rather than when the card is written after training."""
    if not LICENSE_RE.match(str(run_args.card_license)):
        raise RecipeError(
            f"card_license={run_args.card_license!r} is not a Hub licence id: use one such as apache-2.0, mit, other."
        )
    for code in _codes(run_args.card_language):
        if not LANGUAGE_RE.match(code):
            raise RecipeError(f"card_language {code!r} is not an ISO 639 code: use e.g. en, or en,fr for several.")


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


def resolve_resume(training_args: DistillationArguments, run_args: RunArguments,
                   model_args: ModelArguments | None = None) -> str | None:
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


ATTENTION_KERNELS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


def resolve_attn_implementation(requested: str | None, training_args: DistillationArguments) -> str | None:
    """The attention kernel to load the models with: `auto` → flash_attention_2 where it can run (a CUDA GPU, the
    flash-attn package, half-precision autocast), else sdpa; a named kernel as given (checked); None: the model's
    default."""
    if requested is None:
        return None
    if requested == "auto":
        import importlib.util

        usable = (torch.cuda.is_available() and not training_args.use_cpu
                  and importlib.util.find_spec("flash_attn") is not None and (training_args.bf16 or training_args.fp16))
        logger.info("attn_implementation auto: %s", "flash_attention_2" if usable else "the model's default (sdpa "
                    "where it supports it)")
        return "flash_attention_2" if usable else None
    if requested not in ATTENTION_KERNELS:
        raise RecipeError(f"--attn_implementation {requested!r} is not one of auto, {', '.join(ATTENTION_KERNELS)}.")
    if (requested.startswith("flash_attention") or requested == "flex_attention") and (
            training_args.use_cpu or not torch.cuda.is_available()):  # flex attention has no backward on a CPU
        raise RecipeError(f"--attn_implementation {requested} needs a CUDA GPU; use sdpa (or auto) on this machine.")
    return requested


def build_models(model_args: ModelArguments, training_args: DistillationArguments):
    """(teacher, student, tokenizer), checked for compatibility by the trainer afterwards."""
    name = training_args.teacher_model_name_or_path
    if name is None:
        raise RecipeError(
            "No teacher: set teacher_model_name_or_path in the config or pass --teacher_model_name_or_path."
        )
    widths = {flag: getattr(model_args, flag) for flag in ("student_hidden_size", "student_intermediate_size",
                                                           "student_num_attention_heads")}
    if model_args.student_model_name_or_path and any(v is not None for v in widths.values()):
        given = ", ".join(f"--{flag} {value}" for flag, value in widths.items() if value is not None)
        raise RecipeError(
            f"{given} shape(s) a student built from the teacher, but --student_model_name_or_path loads an existing "
            "one: drop one of them."
        )
    common = {"trust_remote_code": model_args.trust_remote_code, "cache_dir": model_args.cache_dir}
    attention = resolve_attn_implementation(model_args.attn_implementation, training_args)
    models = {**common, **({"attn_implementation": attention} if attention else {})}
    # A student copied from the teacher starts from its float32 weights; the trainer then casts the teacher alone.
    dtype = training_args.teacher_torch_dtype if model_args.student_model_name_or_path else torch.float32
    try:
        teacher = load_teacher(name, training_args, dtype=dtype, **models)
    except ValueError as err:
        if not attention or "does not support" not in str(err):
            raise
        if model_args.attn_implementation != "auto":
            first = str(err).split(". ")[0].splitlines()[0]
            raise RecipeError(f"--attn_implementation {attention}: {first}; use eager or leave it unset (the model's "
                              "default).") from err
        logger.info("attn_implementation auto: %s not supported by this model; using its default", attention)
        models.pop("attn_implementation")
        teacher = load_teacher(name, training_args, dtype=dtype, **models)
    if model_task(teacher) not in (MASKED_LM, None):
        raise RecipeError(
            f"Teacher {name!r} is a fine-tuned {type(teacher).__name__}, not a masked LM: this recipe distils masked "
            f"LMs on a corpus; distil a fine-tuned teacher on its task data with run_finetune.py --distil_from {name}."
        )
    tokenizer_name = model_args.tokenizer_name or name
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name, **common)
    except (OSError, ValueError) as err:
        raise RecipeError(
            f"Tokenizer {tokenizer_name!r} could not be loaded ({str(err).splitlines()[0]}): pass --tokenizer_name."
        ) from err
    if model_args.student_model_name_or_path:
        try:
            student = AutoModelForMaskedLM.from_pretrained(model_args.student_model_name_or_path, dtype=torch.float32,
                                                           **models)
        except OSError as err:
            raise RecipeError(
                f"Student {model_args.student_model_name_or_path!r} could not be loaded ({str(err).splitlines()[0]}): "
                "pass a folder holding config.json and weights, or drop --student_model_name_or_path."
            ) from err
        student.config.distil_init = "checkpoint"  # the card says where it started, not how that one was made
        start = Path(model_args.student_model_name_or_path)
        student.config.distil_start_checkpoint = start.resolve().name if start.is_dir() else str(start)
        student.config.distil_teacher_layers = None
        layers = getattr(student.config, "num_hidden_layers", None)
        if layers is not None and layers != model_args.student_num_layers:
            logger.warning("student_num_layers=%d and student_layers are not used: the student loaded from %s has %d "
                           "layers of its own.", model_args.student_num_layers,
                           model_args.student_model_name_or_path, layers)
    else:
        depth = len(encoder_layers(teacher) or ())
        narrower = any(value is not None for value in widths.values())  # random init: any depth
        if depth and model_args.student_num_layers > depth and not narrower:
            raise RecipeError(f"--student_num_layers {model_args.student_num_layers} is deeper than the teacher "
                              f"({depth} layers): pass --student_num_layers {depth} or fewer (the default is 6).")
        set_seed(training_args.seed)  # a narrower student is randomly initialised: the same seed, the same student
        student = create_student(teacher, model_args.student_num_layers, parse_layers(model_args.student_layers),
                                 hidden_size=model_args.student_hidden_size,
                                 intermediate_size=model_args.student_intermediate_size,
                                 num_attention_heads=model_args.student_num_attention_heads)
    return teacher, student, tokenizer


def describe_dataset(data_args: DataArguments) -> tuple[str | None, list[str] | None, str | None]:
    """(name shown on the card, Hub dataset ids, data-use note) — never any text of the corpus."""
    if noteevents_inputs(data_args):  # train or validation, recognised by header at any depth
        return "MIMIC-III clinical notes (NOTEEVENTS)", None, MIMIC_DATA_USE_NOTE
    if data_args.dataset_name:
        return data_args.dataset_name, [data_args.dataset_name], None
    source = data_args.train_file or data_args.dataset_path
    return (Path(source).name if source else None), None, None


def card_facts(data_args: DataArguments, run_args: RunArguments, max_seq_length: int | None = None) -> CardFacts:
    """What the card says about this run's data and terms: the corpus as the data loader resolves it, the length of
    its training examples (`max_seq_length` as used, after any cap), and the card options."""
    dataset_name, dataset_ids, note = describe_dataset(data_args)
    examples = None
    if max_seq_length:
        examples = (f"one line per example, truncated at {max_seq_length:,} tokens" if data_args.line_by_line else
                    f"whole notes packed into blocks of up to {max_seq_length:,} tokens" if data_args.pack_notes else
                    f"blocks of {max_seq_length:,} tokens of concatenated text")
    return CardFacts(dataset_name=dataset_name, dataset_ids=dataset_ids, data_use_note=note,
                     license=run_args.card_license, language=_codes(run_args.card_language),
                     training_examples=examples)


def run(model_args: ModelArguments, data_args: DataArguments, training_args: DistillationArguments,
        run_args: RunArguments) -> dict:
    """Distil, evaluate, save the student, tokenizer, arguments, results and card; returns the final metrics."""
    check_push_to_hub(training_args)  # offline or no token: say so before anything is loaded
    resume = resolve_resume(training_args, run_args, model_args)
    teacher, student, tokenizer = build_models(model_args, training_args)
    check_compatibility(student, teacher, training_args, tokenizer)  # before hours of tokenising a corpus
    if training_args.should_save:  # an unwritable or too small output_dir fails now, not at the first save
        probe_output_dir(training_args.output_dir, expected_save_bytes(
            student, checkpoint=training_args.save_strategy != "no", optimizer=not training_args.save_only_model))
    max_len = effective_max_seq_length(data_args.max_seq_length, tokenizer, teacher.config)
    with training_args.main_process_first(desc="reading and tokenising the corpus"):  # rank 0 fills the cache
        raw = load_raw_corpus(data_args, cache_dir=model_args.cache_dir, seed=training_args.seed)
        tokenized = tokenize_corpus(raw, tokenizer, data_args, max_len, cache_dir=model_args.cache_dir)
    train_ds, eval_ds = tokenized["train"], tokenized.get("validation")
    if eval_ds is None or len(eval_ds) == 0:  # --validation_split_percentage 0
        eval_ds = None
        _without_evaluation(training_args)
    collator = make_collator(tokenizer, data_args, seed=training_args.seed)
    if training_args.push_to_hub and training_args.hub_private_repo is None:
        training_args.hub_private_repo = True  # clinical data: private unless asked otherwise

    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=training_args, train_dataset=train_ds, eval_dataset=eval_ds,
        processing_class=tokenizer, data_collator=collator, card_facts=card_facts(data_args, run_args, max_len),
    )

    before = {}
    evaluate_first = None
    if eval_ds is not None and run_args.evaluate_before_training and resume is None:
        if trainer.is_deepspeed_enabled:
            evaluate_first = EvaluateAtTrainBegin(trainer)
            trainer.add_callback(evaluate_first)
        else:
            before = trainer.evaluate(metric_key_prefix="init")
    train_result = trainer.train(resume_from_checkpoint=resume)
    if evaluate_first is not None:
        before = evaluate_first.metrics
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


def _without_evaluation(training_args: DistillationArguments) -> None:
    """No validation data: refuse when the run needs eval metrics, else turn periodic evaluation off with a warning.

    Asking for no validation (--validation_split_percentage 0) is explicit, while eval_strategy usually comes from a
    shared config: making the user also pass --eval_strategy no would only repeat what they said.
    """
    scheduler = str(getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type))
    needs = [flag for flag, on in (
        ("--load_best_model_at_end", training_args.load_best_model_at_end),
        ("--save_strategy best", str(getattr(training_args.save_strategy, "value", "")) == "best"),
        (f"--lr_scheduler_type {scheduler}", scheduler in ("reduce_lr_on_plateau", "greedy")),
    ) if on]
    if needs:
        raise RecipeError(f"No validation data, but {needs[0]} needs evaluation: pass --validation_file or a "
                          "--validation_split_percentage above 0.")
    strategy = str(getattr(training_args.eval_strategy, "value", training_args.eval_strategy))
    if strategy != "no" or training_args.eval_on_start:
        logger.warning("No validation examples (validation_split_percentage or max_eval_samples 0): evaluation is "
                       "off (eval_strategy was %s); the card will have no evaluation results.", strategy)
    training_args.eval_strategy = IntervalStrategy.NO
    training_args.eval_on_start = False
    training_args.do_eval = False


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
    if len(lines) == 3:
        lines[2] = "(no validation data: nothing evaluated)"
    lines.append(f"Hub-ready model folder: {output_dir}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        run(*parse_arguments(argv))
    except USER_ERRORS as err:
        lead = "\n" if isinstance(err, DiskFullError) else ""  # raised under the progress bar, which ends no line
        print(f"{lead}hf-distil: error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:  # a stop during training, already explained in one line
        print(f"\nhf-distil: error: {err}", file=sys.stderr)
        return 1
    return 0
