"""The models of a distillation run, from its arguments: the teacher (a masked LM), its tokenizer, and the student
(an existing checkpoint, or one built from the teacher's layers, or a narrower random one)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, set_seed

from .arguments import DistillationArguments
from .config import ModelArguments
from .errors import RecipeError
from .families import MASKED_LM, config_value, encoder_layers, model_task
from .student import create_student
from .teacher import load_teacher

logger = logging.getLogger("hf_distil")


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
            default = " (the default)" if model_args.student_num_layers == ModelArguments.student_num_layers else ""
            raise RecipeError(f"--student_num_layers {model_args.student_num_layers}{default} is deeper than the "
                              f"teacher ({depth} layers): pass --student_num_layers {depth} or fewer.")
        set_seed(training_args.seed)  # a narrower student is randomly initialised: the same seed, the same student
        student = create_student(teacher, model_args.student_num_layers, parse_layers(model_args.student_layers),
                                 hidden_size=model_args.student_hidden_size,
                                 intermediate_size=model_args.student_intermediate_size,
                                 num_attention_heads=model_args.student_num_attention_heads)
        check_smaller(student, teacher)
    return teacher, student, tokenizer


def check_smaller(student, teacher) -> None:
    """A student built here wider or larger than its teacher (a "smaller student" config such as minilm_clinical.yaml's
    384 wide on a 128-wide teacher) is refused before compute: the card would call it narrower and faster."""
    widths = {name: (config_value(student.config, name), config_value(teacher.config, name))
              for name in ("hidden_size", "intermediate_size")}
    wider = [f"{name} {mine} > {theirs}" for name, (mine, theirs) in widths.items()
             if mine is not None and theirs is not None and mine > theirs]
    sizes = [sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # ZeRO-3: the full size
             for model in (student, teacher)]
    if wider or sizes[0] > sizes[1]:  # the teacher's own size (born-again distillation) is allowed
        raise RecipeError(
            f"The student would be larger than the teacher ({', '.join(wider) + '; ' if wider else ''}"
            f"{sizes[0]:,} parameters against {sizes[1]:,}): pass --student_hidden_size / "
            "--student_intermediate_size at most the teacher's and fewer --student_num_layers, or a larger teacher."
        )
