"""Before any compute: can this student, this teacher, this tokenizer and these arguments be distilled together?
Each problem is one line that names it and the fix (hf_distil.errors); each weighted term checks its own part
(Term.check), and the layer terms get their plan here (hf_distil.layer_map).
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

from .arguments import DistillationArguments
from .errors import ArgumentError, ModelMismatchError
from .families import MASKED_LM, SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION, model_task, unwrap
from .layer_map import layer_terms, plan_layers
from .terms import applies_to, registered, weight_of

logger = logging.getLogger("hf_distil")


def check_compatibility(student: nn.Module, teacher: nn.Module | None, args: DistillationArguments, tokenizer=None):
    """Fail before any compute when teacher, student and tokenizer cannot be distilled together; returns the layer
    plan of the attention / intermediate / relation terms (hf_distil.layer_map), None when they are off."""
    s_cfg = unwrap(student).config
    if tokenizer is not None and hasattr(tokenizer, "__len__"):
        padded = s_cfg.vocab_size % 8 == 0 and 0 < s_cfg.vocab_size - len(tokenizer) < 128
        if len(tokenizer) != s_cfg.vocab_size and not padded:
            raise ModelMismatchError(
                f"The tokenizer has {len(tokenizer)} tokens but the student's vocabulary has {s_cfg.vocab_size}: "
                "use the tokenizer that belongs to the teacher (tokenizer_name / processing_class)."
            )
    if teacher is None:
        return None
    t_cfg = unwrap(teacher).config
    if t_cfg.vocab_size != s_cfg.vocab_size:
        raise ModelMismatchError(
            f"Teacher vocabulary ({t_cfg.vocab_size}) and student vocabulary ({s_cfg.vocab_size}) differ: "
            "distillation compares distributions over the same tokens; build the student with create_student(teacher)."
        )
    check_task_heads(student, teacher)
    with_layers = layer_terms(args)
    for term in registered():  # each weighted term that reads no layers checks the two models (the rest: below)
        if hasattr(args, term.weight) and weight_of(args, term.name) > 0 and term not in with_layers:
            term.check(student, teacher, args, None)
    plan = plan_layers(student, teacher, args)
    if plan is not None and args.n_gpu > 1:
        raise ArgumentError(
            f"The attention / intermediate / relation terms capture layers with hooks, which nn.DataParallel's "
            f"replicas would share ({args.n_gpu} GPUs in one process): launch one process per GPU with torchrun or "
            "accelerate launch."
        )
    return plan


KIND = {MASKED_LM: "a masked LM", TOKEN_CLASSIFICATION: "a token classifier",
         SEQUENCE_CLASSIFICATION: "a sequence classifier", None: "a model of no known head"}


def check_task_heads(student: nn.Module, teacher: nn.Module) -> None:
    """Student and teacher must predict the same thing: both masked LMs, or both classifiers of the same kind over the
    same labels in the same order (`id2label`), single-label (a softmax over the labels, as the KL term assumes)."""
    s_task, t_task = model_task(student), model_task(teacher)
    s_name, t_name = type(unwrap(student)).__name__, type(unwrap(teacher)).__name__
    if s_task != t_task and MASKED_LM in (s_task, t_task) and None in (s_task, t_task):
        return  # a masked LM beside a model class we do not know: the checks of the masked-LM path apply
    if s_task != t_task:
        fix = ("build the student with create_student(teacher) (it copies the head and the labels)"
               if t_task != MASKED_LM else "distil a masked-LM student from a masked-LM teacher, then fine-tune it")
        raise ModelMismatchError(
            f"The student is {KIND[s_task]} ({s_name}) but the teacher is {KIND[t_task]} ({t_name}): the KL term "
            f"compares the predictions of two models of the same head; {fix}."
        )
    if s_task not in (TOKEN_CLASSIFICATION, SEQUENCE_CLASSIFICATION):
        return
    s_cfg, t_cfg = unwrap(student).config, unwrap(teacher).config
    for name, config in (("student", s_cfg), ("teacher", t_cfg)):
        kind = getattr(config, "problem_type", None)
        if kind is None and config.num_labels == 1:  # transformers' own rule: one label is regression
            kind = "regression (num_labels=1)"
        if kind not in (None, "single_label_classification"):
            raise ModelMismatchError(
                f"The {name} ({type(config).__name__}) has problem_type {kind!r}: task distillation covers "
                "single-label classification (a softmax over the labels), not regression or multi-label."
            )
    s_labels = [s_cfg.id2label[i] for i in sorted(s_cfg.id2label)]
    t_labels = [t_cfg.id2label[i] for i in sorted(t_cfg.id2label)]
    if s_labels != t_labels:
        how = ("the same labels in another order" if sorted(map(str, s_labels)) == sorted(map(str, t_labels))
               else "other labels")
        raise ModelMismatchError(
            f"The student's labels {s_labels} and the teacher's {t_labels} differ ({how}): the KL term compares "
            "the two models label by label; build the student with create_student(teacher) (it copies the head and "
            "id2label), or give it the teacher's id2label in the teacher's order."
        )


def check_student_precision(student: nn.Module, args: DistillationArguments):
    """Mixed precision (--bf16/--fp16) needs float32 master weights: a half-precision student is refused up front."""
    half = sorted({str(p.dtype).removeprefix("torch.") for p in unwrap(student).parameters()
                   if p.requires_grad and p.dtype in (torch.float16, torch.bfloat16)})
    if not half:
        return
    if args.bf16 or args.fp16:
        raise ModelMismatchError(
            f"The student's trainable weights are {'/'.join(half)}, but --{'bf16' if args.bf16 else 'fp16'} means "
            "mixed precision with float32 master weights: build the student with create_student(teacher) (float32) "
            "or pass student.float(); only the teacher is cast (teacher_dtype)."
        )
    logger.warning("The student's trainable weights are %s: the optimizer updates them without float32 master "
                   "weights. Use a float32 student with --bf16 for mixed precision.", "/".join(half))


def check_objective_of(student_task: str | None, args: DistillationArguments, has_teacher: bool) -> None:
    """The weights that apply to this student must train something; a supervised weight that does not apply to it
    (a masked LM's own loss for a task student, a task student's for a masked LM) is said once, not silently
    ignored."""
    terms = [term for term in registered() if hasattr(args, term.weight)]
    weighted = [term for term in terms if applies_to(term, student_task) and weight_of(args, term.name) > 0
                and (has_teacher or not term.needs_teacher)]
    if not weighted:
        fields = ", ".join(term.weight for term in terms if applies_to(term, student_task))
        raise ArgumentError(f"{fields} are all 0 (or need a teacher) for {KIND[student_task]} student: nothing to "
                            "train; set at least one of them > 0.")
    # The student's own (supervised: no teacher) term that applies to it, and those of other students that were set.
    own = [term for term in terms if not term.needs_teacher and applies_to(term, student_task)]
    defaults = {f.name: f.default for f in dataclasses.fields(DistillationArguments)}
    for term in terms:
        value = getattr(args, term.weight)
        if term.needs_teacher or applies_to(term, student_task) or value == defaults.get(term.weight, value):
            continue
        whose = ("whose own loss on the gold labels" if student_task in (TOKEN_CLASSIFICATION, SEQUENCE_CLASSIFICATION)
                 else "whose own loss")
        instead = ", ".join(f"{t.weight} (now {weight_of(args, t.name):g})" for t in own)
        logger.warning("%s=%g is not used: the student is %s, %s is weighted by %s.", term.weight, value,
                       KIND[student_task] if student_task is not None else KIND[MASKED_LM], whose, instead)
