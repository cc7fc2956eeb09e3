"""`DistillationTrainer`: `Trainer` with a frozen teacher and the distillation objective of DESIGN.md."""

from __future__ import annotations

import json
import logging
import os

import torch
from torch import nn
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainerState,
)
from transformers.trainer_utils import TrainOutput, get_last_checkpoint

from .arguments import DistillationArguments
from .card import CardFacts, build_model_card
from .card.downstream import update_model_card
from .checkpoints import ARGS_MARKER, disk_full_error, expected_save_bytes, latest_complete_checkpoint
from .errors import ArgumentError, ModelMismatchError, TeacherLoadError, TeacherNotFoundError
from .heads import MASKED_LM, SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION, model_task, task_of_classes, unwrap
from .hub import NoPickleHubMixin, check_push_to_hub
from .layer_map import plan_layers, plan_layers_wanted
from .objective import (
    BY_NAME,
    ROW_SETS,
    TERM_NAMES,
    active_terms,
    applies_to,
    capture_specs,
    eval_metrics,
    eval_stats,
    normalise,
    per_row_losses,
    row_counts_of,
    row_sets,
    select_rows,
    weigh,
    weight_of,
)
from .projections import attach_projections, projections_of, strip_projections_from_folder, without_projections
from .signals import capture

logger = logging.getLogger("hf_distil")


def load_teacher(name_or_path: str, args: DistillationArguments, **kwargs) -> PreTrainedModel:
    """Load a teacher from a local folder or the Hub: a masked LM, or, when its config.json names a token- or
    sequence-classification architecture (a fine-tuned model), that task model. What a user can fix raises
    TeacherLoadError (one line).

    Remote code runs only with trust_remote_code=True passed in: transformers would otherwise prompt on stdin.
    """
    kwargs.setdefault("trust_remote_code", False)
    if os.path.isdir(name_or_path):
        task = _check_teacher_folder(name_or_path)
    else:
        task = _hub_teacher_task(name_or_path, kwargs)
    auto = _TASK_AUTO_CLASSES.get(task, AutoModelForMaskedLM)
    kwargs.setdefault("dtype", args.teacher_torch_dtype)
    try:
        return auto.from_pretrained(name_or_path, **kwargs)
    except OSError as err:
        where = "a local folder" if os.path.isdir(name_or_path) else "a local path or a Hub id reachable from here"
        kind = "a masked LM" if auto is AutoModelForMaskedLM else "a fine-tuned classifier"
        raise TeacherNotFoundError(
            f"Teacher {name_or_path!r} could not be loaded ({type(err).__name__}: {_first_line(err)}): "
            f"pass {where} holding config.json and weights of {kind} (offline: HF_HUB_OFFLINE=1 needs it cached)."
        ) from err
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise TeacherLoadError(
                f"Teacher {name_or_path!r} needs code from its repository to load (auto_map in its config.json): "
                "pass --trust_remote_code true if you trust that code, or use a teacher that transformers supports."
            ) from err
        if "Unrecognized configuration class" not in str(err) and "AutoModelForMaskedLM" not in str(err):
            raise  # not the "no masked-LM class for this config" case: a bug keeps its traceback
        raise TeacherLoadError(
            f"Teacher {name_or_path!r} is not a masked-language model ({_first_line(err)}); the KL term needs "
            "an AutoModelForMaskedLM checkpoint (e.g. a BERT or RoBERTa *ForMaskedLM)."
        ) from err
    except RuntimeError as err:
        if "size mismatch" not in str(err) and "ignore_mismatched_sizes" not in str(err):
            raise
        raise TeacherLoadError(
            f"Teacher {name_or_path!r}: its config.json and its weights disagree in shape (see the load report "
            "above): restore the config.json that belongs to these weights."
        ) from err


_TASK_AUTO_CLASSES = {TOKEN_CLASSIFICATION: AutoModelForTokenClassification,
                      SEQUENCE_CLASSIFICATION: AutoModelForSequenceClassification}


def _hub_teacher_task(name: str, kwargs: dict) -> str | None:
    """The task a Hub teacher's config names (as `_check_teacher_folder` for a folder); None when unknown or the
    config cannot be read (from_pretrained then reports why)."""
    from transformers import AutoConfig

    options = {k: kwargs[k] for k in ("trust_remote_code", "cache_dir", "revision", "token") if k in kwargs}
    try:
        return task_of_classes(AutoConfig.from_pretrained(name, **options).architectures)
    except (OSError, ValueError):
        return None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0]


_EMBEDDING_SUFFIXES = ("word_embeddings.weight", "embed_tokens.weight", "tok_embeddings.weight")


def _check_teacher_folder(folder: str) -> str | None:
    """A local teacher needs config.json, and its vocab_size must match the weights' embedding rows; returns the task
    its config's `architectures` names (hf_distil.heads.task_of_classes), None when they name none.

    transformers would fail on the mismatch with a size report but no sizes in the error (see `load_teacher`).
    """
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise TeacherNotFoundError(
            f"Teacher folder {folder!r} has no config.json: pass the folder that save_pretrained wrote "
            "(config.json and model.safetensors), or a Hub id."
        )
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except json.JSONDecodeError as err:
        raise TeacherLoadError(f"{config_path} is not valid JSON (line {err.lineno}: {err.msg}): repair it.") from err
    vocab_size = config.get("vocab_size") if isinstance(config, dict) else None
    rows = _embedding_rows(folder)
    if rows is not None and isinstance(vocab_size, int) and rows[1] != vocab_size:
        raise ModelMismatchError(
            f"Teacher {folder!r}: config.json has vocab_size={vocab_size} but the weights' {rows[0]} has {rows[1]} "
            f"rows: the config belongs to another checkpoint; restore the matching config.json "
            f"(vocab_size={rows[1]})."
        )
    architectures = config.get("architectures") if isinstance(config, dict) else None
    return task_of_classes(architectures if isinstance(architectures, list) else None)


def _embedding_rows(folder: str) -> tuple[str, int] | None:
    """(name, rows) of the input embedding in a folder's safetensors weights, read from the file headers only."""
    from safetensors import safe_open

    index_path = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index_path):
        with open(index_path, encoding="utf-8") as f:
            files = dict.fromkeys(json.load(f).get("weight_map", {}).values())
    else:
        files = ["model.safetensors"]
    for name in files:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        try:
            with safe_open(path, framework="pt") as weights:
                for key in weights.keys():
                    if key.endswith(_EMBEDDING_SUFFIXES):
                        return key, int(weights.get_slice(key).get_shape()[0])
        except Exception:  # unreadable weights: from_pretrained reports them itself
            return None
    return None


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
    if args.alpha_kd > 0 and model_task(student) in (MASKED_LM, None) and \
            unwrap(teacher).get_output_embeddings() is None:
        raise ModelMismatchError(
            f"The teacher ({type(unwrap(teacher)).__name__}) has no masked-LM head, so the KL term cannot be computed: "
            "load it with AutoModelForMaskedLM, or set alpha_kd=0."
        )
    if args.alpha_hidden > 0 and t_cfg.hidden_size != s_cfg.hidden_size:
        raise ModelMismatchError(
            f"alpha_hidden > 0 aligns last hidden states, but the teacher's hidden size is {t_cfg.hidden_size} and the "
            f"student's {s_cfg.hidden_size}: set alpha_hidden=0 (alpha_intermediate projects between widths) or use a "
            "student of the same width."
        )
    plan = plan_layers(student, teacher, args)
    if plan is not None and args.n_gpu > 1:
        raise ArgumentError(
            f"The attention / intermediate / relation terms capture layers with hooks, which nn.DataParallel's "
            f"replicas would share ({args.n_gpu} GPUs in one process): launch one process per GPU with torchrun or "
            "accelerate launch."
        )
    return plan


_KIND = {MASKED_LM: "a masked LM", TOKEN_CLASSIFICATION: "a token classifier",
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
            f"The student is {_KIND[s_task]} ({s_name}) but the teacher is {_KIND[t_task]} ({t_name}): the KL term "
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
    (alpha_mlm for a task student, alpha_task for a masked LM) is said once, not silently ignored."""
    from .objective import TERMS, applies_to

    weighted = [term for term in TERMS if applies_to(term, student_task) and weight_of(args, term.name) > 0
                and (has_teacher or not term.needs_teacher)]
    if not weighted:
        names = ", ".join(term.weight for term in TERMS if applies_to(term, student_task))
        raise ArgumentError(f"{names} are all 0 (or need a teacher) for {_KIND[student_task]} student: nothing to "
                            "train; set at least one of them > 0.")
    default_mlm = DistillationArguments.__dataclass_fields__["alpha_mlm"].default
    if student_task in (TOKEN_CLASSIFICATION, SEQUENCE_CLASSIFICATION) and args.alpha_mlm != default_mlm:
        logger.warning("alpha_mlm=%g is not used: the student is %s, whose own loss on the gold labels is weighted by "
                       "alpha_task (now %g).", args.alpha_mlm, _KIND[student_task], weight_of(args, "task"))
    if student_task in (MASKED_LM, None) and args.alpha_task is not None:
        logger.warning("alpha_task=%g is not used: the student is a masked LM, whose own loss is weighted by "
                       "alpha_mlm (now %g).", args.alpha_task, args.alpha_mlm)


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf during training (nan_policy="stop")."""


class CollatorEpochCallback(TrainerCallback):
    """Tell a collator with an `epoch` field (ReproducibleMLMCollator) which epoch it is masking for."""

    def __init__(self, collator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int(state.epoch or 0)


class _UpdateWindowCallback(TrainerCallback):
    """Closes the window of loss terms of each optimizer update (see DistillationTrainer._watch_terms)."""

    def __init__(self, trainer: DistillationTrainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._decide_update()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._close_window()


class DistillationTrainer(NoPickleHubMixin, Trainer):
    """A drop-in `Trainer` that distils `teacher_model` into `model` (see DESIGN.md for the objective).

    The loss of each micro-batch is divided by the row counts of the whole accumulated (and, with
    `average_tokens_across_devices`, global) batch, so it is already scaled for gradient accumulation.
    """

    loss_is_scaled_for_ga = True
    # Trainer's pickled training_args.bin is replaced by this JSON (tokens redacted); see NoPickleHubMixin.
    args_file_name = ARGS_MARKER
    # Apply the MLM heads only at the positions the loss needs (False: full logits, the reference path).
    sparse_heads = True
    # nan_policy="skip": this many skipped updates in a row mean a diverging run, not a rare bad batch: stop.
    max_consecutive_skips = 10

    def __init__(self, model=None, args: DistillationArguments | None = None, *trainer_args, teacher_model=None,
                 card_facts: CardFacts | None = None, **kw):
        if args is None:
            args = DistillationArguments(output_dir="trainer_output")
        if not isinstance(args, DistillationArguments):
            raise TypeError(
                f"DistillationTrainer needs DistillationArguments, got {type(args).__name__}: build them with "
                "DistillationArguments(...) (it takes every TrainingArguments field)."
            )
        check_push_to_hub(args)  # before the teacher is loaded
        if teacher_model is None:
            teacher_model = args.teacher_model_name_or_path
        if teacher_model is None and args.needs_teacher:
            raise ArgumentError(
                "No teacher: pass teacher_model=... or set teacher_model_name_or_path, "
                "or set alpha_kd=0 and alpha_hidden=0 to train the student alone."
            )
        if isinstance(teacher_model, str):
            teacher_model = load_teacher(teacher_model, args)
        layer_plan = None
        if model is not None:
            layer_plan = check_compatibility(model, teacher_model, args, kw.get("processing_class"))
            check_student_precision(model, args)
            if layer_plan is not None and args.alpha_intermediate > 0:
                s_width, t_width = unwrap(model).config.hidden_size, unwrap(teacher_model).config.hidden_size
                if s_width != t_width:  # before Trainer places and wraps the model: optimizer, DDP, checkpoints
                    if unwrap(model) is not model:
                        raise ArgumentError(
                            f"alpha_intermediate between widths {s_width} and {t_width} trains projections beside "
                            f"the student, which a {type(model).__name__} (e.g. peft) would not save in its "
                            "checkpoints: distil a plain student, or set alpha_intermediate=0."
                        )
                    attach_projections(model, layer_plan, s_width, t_width, args.seed)

        if model is None and kw.get("model_init") is not None and plan_layers_wanted(args):
            raise ArgumentError(
                "model_init with alpha_attention / alpha_intermediate / alpha_relation > 0 is not supported (the "
                "layer map and projections are set up for the model passed in): pass model=... instead."
            )
        super().__init__(model, args, *trainer_args, **kw)
        # What the student predicts (hf_distil.heads.model_task): which supervised term its objective has.
        self.student_task = model_task(self.model) if self.model is not None else MASKED_LM
        check_objective_of(self.student_task, args, has_teacher=teacher_model is not None)
        # The layers the attention / intermediate / relation terms compare (hf_distil.layer_map); None when all off.
        self.layer_plan = layer_plan
        self._saving_checkpoint = False
        if hasattr(self.data_collator, "epoch"):
            self.add_callback(CollatorEpochCallback(self.data_collator))
            if args.dataloader_num_workers > 0 and args.dataloader_persistent_workers:
                logger.warning(
                    "dataloader_persistent_workers keeps each worker's copy of the collator, so masks repeat every "
                    "epoch (static masking); turn persistent workers off for fresh masks per epoch."
                )
        if args.nan_policy == "skip" and self.is_deepspeed_enabled:  # also when `accelerate launch` chose DeepSpeed
            raise ArgumentError(
                "nan_policy='skip' cannot drop an update under DeepSpeed (its engine owns the optimizer step): use "
                "nan_policy='stop', or DeepSpeed's own fp16 loss scaling, which skips overflowing steps."
            )
        self.teacher = self._prepare_teacher(teacher_model) if teacher_model is not None else None
        self._accumulated_counts: torch.Tensor | None = None
        # Device-side bookkeeping of the loss terms (see _watch_terms); created on the first training micro-batch.
        self._window_sums = self._window_bad = self._window_values = None
        self._term_sums = self._bad_terms = self._bad_values = self._bad_step = None
        self._term_steps, self._nan_skipped, self._skips_in_a_row, self._skip_update = 0, 0, 0, False
        self.add_callback(_UpdateWindowCallback(self))
        self._eval_sums: torch.Tensor | None = None
        # What the card cannot learn from the model or the arguments; the recipe passes what its data loader resolved.
        self.card_facts = card_facts if card_facts is not None else CardFacts()
        # Downstream results to add to the card: the keyword arguments of hf_distil.card.downstream's
        # update_model_card but the folder (results, dataset_name, ...); task distillation sets them once measured.
        self.card_downstream: dict | None = None

    # ---- teacher lifecycle -------------------------------------------------------------------------------------

    def _prepare_teacher(self, teacher: nn.Module) -> nn.Module:
        """Freeze, set eval mode, cast and place the teacher; engines prepare it for inference."""
        from .engines import prepare_teacher

        teacher.requires_grad_(False)
        teacher.eval()
        teacher.to(dtype=self.args.teacher_torch_dtype)
        return prepare_teacher(teacher, self.accelerator, self.args.device)

    def _run_teacher(self, inputs, positions, spec):
        """The teacher's signals for `spec` (see hf_distil.signals), without gradients and with dropout off."""
        if self.teacher.training:  # someone called .train() on it: dropout must stay off
            self.teacher.eval()
        with torch.no_grad():
            return capture(self.teacher, inputs, positions, spec, self.sparse_heads)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        finished = self._resume_of_a_finished_run(resume_from_checkpoint)
        if finished is not None:
            return finished
        try:
            output = super().train(resume_from_checkpoint, *args, **kwargs)
            self._raise_if_non_finite("at the end of training")
            return output
        finally:  # later compute_loss calls outside training must not reuse the last window's counts
            self._accumulated_counts = None

    def _resume_of_a_finished_run(self, checkpoint) -> TrainOutput | None:
        """Resuming from a checkpoint already at the run's last step loads it and trains nothing.

        transformers 5.24's Trainer trains one step past max_steps in that case (and writes checkpoint-N+1), so a
        run killed while writing its final folder would not resume to the uninterrupted run's weights.
        """
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
        if not isinstance(checkpoint, (str, os.PathLike)) or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return None
        state_file = os.path.join(checkpoint, "trainer_state.json")
        if not os.path.isfile(state_file):
            return None
        state = TrainerState.load_from_json(state_file)
        if self.args.max_steps > 0:
            last = self.args.max_steps
        elif state.num_train_epochs == self.args.num_train_epochs and \
                state.train_batch_size == self.args.per_device_train_batch_size * max(1, self.args.n_gpu):
            last = state.max_steps  # the same epoch-based run; more epochs or another batch size: train on
        else:
            return None
        if not last or state.global_step < last:
            return None
        logger.info("%s is at the run's last step (%d): loading it, nothing left to train.", checkpoint, last)
        self._load_from_checkpoint(checkpoint)
        self.state = state
        losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
        return TrainOutput(state.global_step, sum(losses) / len(losses) if losses else float("nan"), {})

    def _set_signature_columns_if_needed(self):
        """Keep the stored `special_tokens_mask` column for the collator (Trainer would drop it as unused)."""
        super()._set_signature_columns_if_needed()
        if "special_tokens_mask" not in self._signature_columns:
            self._signature_columns.append("special_tokens_mask")

    # ---- loss ----------------------------------------------------------------------------------------------------

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Also count P, M and N over the whole accumulation window (and across ranks) for the loss denominators."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        counts = torch.zeros(len(ROW_SETS), dtype=torch.long, device=device)
        for batch in batch_samples:
            counts += self._row_counts(batch).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            counts = self.accelerator.gather(counts.unsqueeze(0)).sum(0)
        self._accumulated_counts = counts
        return batch_samples, num_items_in_batch

    def _row_counts(self, inputs) -> torch.Tensor:
        """(3,) long: the sizes of the row sets P, M, N of a batch (see hf_distil.objective)."""
        return row_counts_of(row_sets(inputs, self.args.kd_positions))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Σ alpha_term · term over the weighted terms (hf_distil.objective.TERMS); each term also kept for logging."""
        if "labels" not in inputs:
            collator = ("DataCollatorForLanguageModeling(tokenizer, mlm=True)" if self.student_task in (MASKED_LM, None)
                        else "DataCollatorForTokenClassification(tokenizer)"
                        if self.student_task == TOKEN_CLASSIFICATION else "DataCollatorWithPadding(tokenizer)")
            raise ValueError(
                f"DistillationTrainer needs labels in each batch (the student is {_KIND[self.student_task]}): use "
                f"{collator} as data_collator, on a dataset with a labels column."
            )
        training = model.training
        loss, terms, _ = self._distillation_loss(model, inputs, training, num_items_in_batch)
        if training and torch.is_grad_enabled():
            finite = self._watch_terms(terms)
            if self.args.nan_policy == "skip":  # the update is dropped anyway; keep Trainer's running loss finite
                loss = torch.where(finite, loss, torch.zeros_like(loss))
        return (loss, terms) if return_outputs else loss

    # ---- non-finite terms, decided on the device ---------------------------------------------------------------
    # Each micro-batch only updates device tensors (no host sync in the step). The window of one optimizer update is
    # closed by `_UpdateWindowCallback`: nan_policy="skip" reads one flag there (reduced over ranks) and drops the
    # whole update; "stop" is checked where Trainer syncs anyway (logging) and before any checkpoint is written.

    def _reset_window(self, device):
        n = len(TERM_NAMES)
        self._window_sums = torch.zeros(n, dtype=torch.float64, device=device)
        self._window_bad = torch.zeros(n, dtype=torch.bool, device=device)
        self._window_values = torch.zeros(n, dtype=torch.float64, device=device)

    def _watch_terms(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """Add this micro-batch's terms to the open window; returns a device bool: all terms finite."""
        device = next(iter(terms.values())).device
        if self._window_sums is None or self._window_sums.device != device:
            self._reset_window(device)
            self._term_sums = torch.zeros_like(self._window_sums)
            self._bad_terms = torch.zeros_like(self._window_bad)
            self._bad_values = torch.zeros_like(self._window_values)
            self._bad_step = torch.full((), -1, dtype=torch.long, device=device)
        zero = torch.zeros((), dtype=torch.float64, device=device)
        values = torch.stack([terms[n].detach().double() if n in terms else zero for n in TERM_NAMES])
        finite = torch.isfinite(values)
        newly = ~finite & ~self._window_bad
        self._window_values = torch.where(newly, values, self._window_values)
        self._window_bad |= ~finite
        self._window_sums += torch.where(finite, values, zero)
        return finite.all()

    def _decide_update(self):
        """nan_policy=skip: drop the coming update on every rank when any rank met a non-finite term in its window.

        Gradients set to None are skipped by torch optimizers (no step, no state change); under fp16 loss scaling
        the grad scaler skips such a step by itself.
        """
        if self.args.nan_policy != "skip" or self._window_bad is None:
            self._skip_update = False
            return
        bad = self._window_bad.any().float().reshape(1)
        if self.args.world_size > 1:
            bad = self.accelerator.gather(bad).max().reshape(1)
        self._skip_update = bool(bad.item())  # the one host read per update, only with nan_policy=skip
        if self._skip_update and self.accelerator.scaler is None:
            for group in self.optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None

    def _close_window(self):
        """After the optimizer step: count the window in the logged means, or remember what was non-finite."""
        if self._window_sums is None:
            return
        step = self.state.global_step + 1  # Trainer advances global_step after this callback
        scaler_applied = self.accelerator.scaler is not None and not self.accelerator.optimizer_step_was_skipped
        if self._skip_update and scaler_applied:
            raise NonFiniteLossError(
                f"nan_policy=skip: a loss term was NaN/inf at step {step} but the fp16 grad scaler applied the update "
                "anyway; training stopped. Use bf16, lower the learning rate, or pass --nan_policy stop."
            )
        if self._skip_update:
            self._nan_skipped += 1
            self._skips_in_a_row += 1
            logger.warning("nan_policy=skip: skipped the update of step %d (a loss term was NaN/inf).", step)
            if self._skips_in_a_row >= self.max_consecutive_skips:
                last = latest_complete_checkpoint(self.args.output_dir, resume_state=not self.args.save_only_model)
                raise NonFiniteLossError(
                    f"nan_policy=skip skipped {self._skips_in_a_row} updates in a row (steps "
                    f"{step - self._skips_in_a_row + 1}-{step}): the run diverges, it does not just meet a rare bad "
                    f"batch; training stopped and nothing was saved after it (last complete checkpoint: "
                    f"{last or 'none yet'}). Lower the learning rate, use bf16 rather than fp16, or check the data."
                )
        else:
            self._skips_in_a_row = 0
            self._term_sums += self._window_sums
            self._term_steps += 1
            newly = self._window_bad & ~self._bad_terms
            self._bad_values = torch.where(newly, self._window_values, self._bad_values)
            first = (self._bad_step < 0) & self._window_bad.any()
            self._bad_step = torch.where(first, torch.full_like(self._bad_step, step), self._bad_step)
            self._bad_terms |= self._window_bad
        self._skip_update = False
        self._reset_window(self._window_sums.device)

    def _raise_if_non_finite(self, where: str):
        """nan_policy=stop: raise on every rank once any rank applied an update with a non-finite term."""
        if self._bad_terms is None:
            return
        flags = torch.cat([self._bad_terms.double(), self._bad_values, self._bad_step.double().reshape(1)])
        rows = self.accelerator.gather(flags.unsqueeze(0)) if self.args.world_size > 1 else flags.unsqueeze(0)
        n = len(TERM_NAMES)
        for row in rows.tolist():
            if any(row[:n]):
                bad = ", ".join(f"{name}_loss={value:g}"
                                for name, flag, value in zip(TERM_NAMES, row[:n], row[n:2 * n]) if flag)
                last = latest_complete_checkpoint(self.args.output_dir, resume_state=not self.args.save_only_model)
                raise NonFiniteLossError(
                    f"Non-finite loss term ({bad}) at step {int(row[-1])}; training stopped {where}, and no checkpoint "
                    f"was saved after it (last complete checkpoint: {last or 'none yet'}). Lower the learning rate, "
                    "use bf16 rather than fp16, check the data, or pass --nan_policy skip."
                )

    def _issue_warnings_after_load(self, load_result) -> None:
        """A checkpoint lacks the weights the model ties to others (the MLM decoder to the word embeddings) by design:
        tie them again, and warn only about keys that are really missing."""
        inner = unwrap(self.model)
        tied = set(getattr(inner, "all_tied_weights_keys", None) or {})
        missing = [key for key in load_result.missing_keys if key not in tied]
        if len(missing) != len(load_result.missing_keys):
            inner.tie_weights()
        super()._issue_warnings_after_load(type(load_result)(missing, load_result.unexpected_keys))

    def _save_checkpoint(self, model, trial):
        """Never write a checkpoint whose weights went through a non-finite update; a full disk is said in words,
        with the last complete checkpoint named (torch.save reports it as a bare RuntimeError)."""
        self._raise_if_non_finite("before saving a checkpoint")
        self._saving_checkpoint = True
        try:
            return super()._save_checkpoint(model, trial)
        except Exception as err:
            full = disk_full_error(err, self.args.output_dir, self.state.global_step, expected_save_bytes(self.model))
            if full is None:
                raise
            raise full from err
        finally:
            self._saving_checkpoint = False

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Checkpoints keep the learned projections (resume needs them); every other save holds the student alone."""
        if not self._saving_checkpoint and projections_of(self.model) is not None:
            if state_dict is None:
                state_dict = self.model.state_dict()
            state_dict = without_projections(state_dict)
        super()._save(output_dir, state_dict)

    def _before_upload(self, folder: str) -> None:
        """Pushes after each save copy the checkpoint's weights into output_dir: without the projections there too."""
        if projections_of(self.model) is not None:
            strip_projections_from_folder(folder)

    def _distillation_loss(self, model, inputs, training, num_items_in_batch=None, want_stats=False):
        """The objective on one micro-batch: (loss, {term: value}, eval sums or None).

        select rows → forward pair → per-term sums → normalise → weight (hf_distil.objective). Training computes the
        weighted terms; evaluation (`want_stats`) also the always-evaluated ones, so a run without teacher terms
        still reports its student against the teacher.
        """
        terms = active_terms(self.args, self.teacher is not None, evaluating=want_stats, student_task=self.student_task)
        rows = select_rows(inputs, self.args, terms, evaluating=want_stats)
        student, teacher = self._forward_pair(model, inputs, rows, terms)
        per_row = per_row_losses(terms, student, teacher, rows, self.args)
        counts, scale = self._denominators(rows, training, num_items_in_batch)
        values = normalise({name: r.values.sum() for name, r in per_row.items()}, counts, scale)
        loss = weigh(values, self.args)
        stats = eval_stats(per_row, rows, student, teacher) if want_stats else None
        return loss, values, stats

    def _forward_pair(self, model, inputs, rows, terms):
        """One forward of the student and, when a term needs it, one of the teacher: their signals for `terms`."""
        student_spec, teacher_spec = capture_specs(terms, self.layer_plan)
        student = capture(model, inputs, rows.positions, student_spec, self.sparse_heads, projections_of(model))
        if teacher_spec is None:
            return student, None
        return student, self._run_teacher(inputs, rows.positions, teacher_spec)

    def _denominators(self, rows, training, num_items_in_batch):
        """(row counts (3,) in ROW_SETS order, scale): the counts each term's sum is divided by.

        In training, those of the whole accumulation window (from get_batch_samples); with
        average_tokens_across_devices, global counts × num_processes, since DDP averages gradients over ranks and the
        global-count denominator wants their sum. Outside training, this micro-batch's, with M (and P when it is M)
        taken from `num_items_in_batch` when given.
        """
        args = self.args
        if training and self._accumulated_counts is not None:
            scale = 1.0
            if args.average_tokens_across_devices and args.world_size > 1:
                scale = float(self.accelerator.num_processes)
            return self._accumulated_counts, scale
        if num_items_in_batch is None:
            return rows.counts(), 1.0
        counts = rows.counts()
        counts[ROW_SETS.index("M")] = num_items_in_batch
        if args.kd_positions == "masked":
            counts[ROW_SETS.index("P")] = num_items_in_batch
        return counts, 1.0

    def training_step(self, model, inputs, num_items_in_batch=None):
        """Trainer's step, with an out-of-memory error on the first step turned into advice that keeps the batch."""
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        except torch.OutOfMemoryError as err:
            if self.state.global_step > 0 or self.args.auto_find_batch_size:  # accelerate parses the original
                raise
            a = self.args
            per_device, accumulation = a.per_device_train_batch_size, a.gradient_accumulation_steps
            total = per_device * accumulation * a.world_size
            raise torch.OutOfMemoryError(
                f"{str(err).splitlines()[0] if str(err) else 'Out of memory'} — on the first step with "
                f"per_device_train_batch_size={per_device} × "
                f"gradient_accumulation_steps={accumulation} × {a.world_size} device(s) = {total}. Keep the total "
                f"batch with --per_device_train_batch_size {max(1, per_device // 2)} --gradient_accumulation_steps "
                f"{accumulation * 2 if per_device > 1 else accumulation}, or save memory with --bf16 / "
                "--gradient_checkpointing / --teacher_dtype bfloat16."
            ) from err

    # ---- logging -------------------------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add each weighted term's `{name}_loss` (means over the logging window, over all ranks) to train logs.

        Every rank gathers the same fixed vector, even one that skipped all its micro-batches (nan_policy=skip),
        so the collective never mismatches.
        """
        if "loss" in logs and self.state.global_step > 0 and self.model.training is not None:
            self._raise_if_non_finite("at the next log")
            index = [i for i, n in enumerate(TERM_NAMES) if self._term_weight(n) > 0]
            sums = (self._term_sums if self._term_sums is not None
                    else torch.zeros(len(TERM_NAMES), dtype=torch.float64))
            values = torch.cat([sums.to(self.args.device)[index],
                                torch.tensor([float(self._term_steps)], dtype=torch.float64, device=self.args.device)])
            if self.args.world_size > 1:
                gathered = self.accelerator.gather(values.unsqueeze(0))
                values = torch.cat([gathered[:, :-1].mean(0), gathered[:, -1:].max(0).values])
            values = values.tolist()
            if values[-1] > 0:
                for i, value in zip(index, values[:-1]):
                    logs[f"{TERM_NAMES[i]}_loss"] = value / values[-1]
            if self._term_sums is not None:
                self._term_sums.zero_()
            self._term_steps = 0
            if self._nan_skipped:
                logs["nan_skipped"] = self._nan_skipped
        super().log(logs, start_time)

    def _term_weight(self, name: str) -> float:
        """The weight of a term that training computes (teacher terms need a teacher)."""
        term = BY_NAME[name]
        if (term.needs_teacher and self.teacher is None) or not applies_to(term, self.student_task):
            return 0.0
        return weight_of(self.args, name)

    # ---- evaluation ----------------------------------------------------------------------------------------------

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Stream the distillation metrics; vocabulary-sized logits are only returned when `predict` asks."""
        if "labels" not in inputs:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, _, stats = self._distillation_loss(model, inputs, training=False, want_stats=True)
        if self.args.world_size > 1:
            stats = self.accelerator.gather_for_metrics(stats)
        stats = stats.sum(0)
        self._eval_sums = stats if self._eval_sums is None else self._eval_sums + stats
        if prediction_loss_only:
            return loss.detach(), None, None
        with torch.no_grad(), self.compute_loss_context_manager():
            logits = model(**{k: v for k, v in inputs.items() if k not in ("labels", "special_tokens_mask")}).logits
        return loss.detach(), logits, inputs["labels"]

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        self._eval_sums = None
        epoch = getattr(self.data_collator, "epoch", None)
        if epoch is not None:  # score every evaluation on the same masks, so before/after numbers compare
            self.data_collator.epoch = 0
        try:
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                             metric_key_prefix)
        finally:
            if epoch is not None:
                self.data_collator.epoch = epoch
        if self._eval_sums is not None:
            sums = self._eval_sums
            for key, value in self._eval_metrics(sums).items():
                name = f"{metric_key_prefix}_{key}"
                if key == "loss" or name not in output.metrics:  # compute_metrics' own values (accuracy, ...) win
                    output.metrics[name] = value
            self._eval_sums = None
        return output

    def _eval_metrics(self, sums: torch.Tensor) -> dict[str, float]:
        """Token-weighted means over the whole evaluation set (see hf_distil.objective.eval_metrics)."""
        return eval_metrics(sums, self.args, self.teacher is not None, self.student_task)

    # ---- output --------------------------------------------------------------------------------------------------

    def teacher_name(self) -> str | None:
        if self.args.teacher_model_name_or_path:
            return self.args.teacher_model_name_or_path
        name = getattr(unwrap(self.teacher).config, "_name_or_path", None) if self.teacher is not None else None
        return name or None

    def _weights_step(self) -> int:
        """The optimizer step of the student's current weights (the best checkpoint's when it was loaded at the end)."""
        best = self.state.best_model_checkpoint
        if self.args.load_best_model_at_end and best and self.state.global_step > 0:
            suffix = os.path.basename(os.path.normpath(best)).rsplit("-", 1)[-1]
            if suffix.isdigit():
                return int(suffix)
        return self.state.global_step

    def _total_batch_that_ran(self) -> int:
        """Examples per optimizer update as trained (auto_find_batch_size may have lowered the per-device batch)."""
        per_device = self.state.train_batch_size or self.args.per_device_train_batch_size
        return per_device * self.args.world_size * self.args.gradient_accumulation_steps

    def create_model_card(self, language=None, license=None, tags=None, model_name=None, finetuned_from=None,
                          tasks=None, dataset_tags=None, dataset=None, dataset_args=None) -> None:
        """Write the distilled model's card (README.md) and loss plot into `output_dir`; `push_to_hub` uploads them.

        `language`, `license`, `tags` and `dataset`, where given, take precedence over `card_facts`.
        """
        if not self.is_world_process_zero():
            return
        metrics = {}
        for entry in self.state.log_history:  # evaluations of the weights being saved only
            if entry.get("step") == self._weights_step():
                metrics.update({k: v for k, v in entry.items() if k.startswith("eval_")})
        args = self.args
        os.makedirs(args.output_dir, exist_ok=True)
        card = build_model_card(
            self.model,
            args,
            teacher_name=finetuned_from or self.teacher_name(),
            total_train_batch_size=self._total_batch_that_ran(),
            world_size=args.world_size,
            facts=self.card_facts.overridden_by(language=language, license=license, tags=tags, dataset=dataset),
            metrics=metrics or None,
            log_history=self.state.log_history,
            epochs_completed=self.state.epoch,
            plot_path=os.path.join(args.output_dir, "loss_terms.png"),
            model_name=model_name,
            layer_plan=self.layer_plan,
            index_metrics=self.card_downstream is None,
        )
        card.save(os.path.join(args.output_dir, "README.md"))
        if self.card_downstream is not None:  # the downstream table a recipe measured (update_model_card's kwargs)
            update_model_card(args.output_dir, **self.card_downstream)
