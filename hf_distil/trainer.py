"""`DistillationTrainer`: `Trainer` with a frozen teacher and the distillation objective of DESIGN.md.

Only the Trainer overrides live here, sectioned by concern; what they call lives in its own module: the teacher's
loading (hf_distil.teacher) and preparation per engine (hf_distil.engines), the checks before any compute
(hf_distil.preflight), the objective and its normalisation (hf_distil.objective over hf_distil.terms), what each
model exposes (hf_distil.signals), the non-finite watch (hf_distil.watch), checkpoints (hf_distil.checkpoints) and
the card (hf_distil.card).
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainerCallback
from transformers.trainer_utils import TrainOutput, get_last_checkpoint

from .arguments import DistillationArguments
from .card import CardFacts, write_card
from .checkpoints import ARGS_MARKER, disk_full_error, expected_save_bytes, latest_complete_checkpoint
from .engines import deepspeed_16bit, deepspeed_fp32_state_dict
from .errors import ArgumentError
from .families import MASKED_LM, TOKEN_CLASSIFICATION, model_task, unwrap
from .hub import NoPickleHubMixin, check_push_to_hub
from .layer_map import layer_terms, plan_layers_wanted
from .objective import Objective, capture_specs
from .preflight import KIND, check_compatibility, check_objective_of, check_student_precision
from .projections import projections_of, strip_projections_from_folder, without_projections
from .resume import check_same_run, check_same_student, finished_run_state
from .signals import capture
from .teacher import load_teacher
from .terms import names, registered, weight_of
from .watch import NonFiniteLossError, TermWatch, UpdateWindowCallback

logger = logging.getLogger("hf_distil")

__all__ = ["DistillationTrainer", "NonFiniteLossError", "check_compatibility", "load_teacher"]


class CollatorEpochCallback(TrainerCallback):
    """Tell a collator with an `epoch` field (ReproducibleMLMCollator) which epoch it is masking for."""

    def __init__(self, collator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int(state.epoch or 0)


class DistillationTrainer(NoPickleHubMixin, Trainer):
    """A drop-in `Trainer` that distils `teacher_model` into `model` (see DESIGN.md for the objective).

    The loss of each micro-batch is divided by the row counts of the whole accumulated (and, with
    `average_tokens_across_devices`, global) batch, so it is already scaled for gradient accumulation
    (hf_distil.objective.Objective).
    """

    loss_is_scaled_for_ga = Objective.loss_is_scaled_for_ga
    # Trainer's pickled training_args.bin is replaced by this JSON (tokens redacted); see NoPickleHubMixin.
    args_file_name = ARGS_MARKER
    # Apply the MLM heads only at the positions the loss needs (False: full logits, the reference path).
    sparse_heads = True

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
            weighted = [t.weight for t in registered() if t.needs_teacher and weight_of(args, t.name) > 0]
            raise ArgumentError(
                "No teacher: pass teacher_model=... or set teacher_model_name_or_path, "
                f"or set {' and '.join(f'{w}=0' for w in weighted)} to train the student alone."
            )
        if isinstance(teacher_model, str):
            teacher_model = load_teacher(teacher_model, args)
        layer_plan = None
        if model is not None:
            layer_plan = check_compatibility(model, teacher_model, args, kw.get("processing_class"))
            check_student_precision(model, args)
            for term in layer_terms(args):  # before Trainer places and wraps the model: optimizer, DDP, checkpoints
                term.prepare(model, teacher_model, args, layer_plan)
        if model is None and kw.get("model_init") is not None and plan_layers_wanted(args):
            raise ArgumentError(
                f"model_init with {' / '.join(t.weight for t in layer_terms(args))} > 0 is not supported (the "
                "layer map and projections are set up for the model passed in): pass model=... instead."
            )
        super().__init__(model, args, *trainer_args, **kw)
        # What the student predicts (hf_distil.families.model_task): which supervised term its objective has.
        self.student_task = model_task(self.model) if self.model is not None else MASKED_LM
        check_objective_of(self.student_task, args, has_teacher=teacher_model is not None)
        # The layers the layer terms compare (hf_distil.layer_map); None when none is weighted.
        self.layer_plan = layer_plan
        self.objective = Objective(args, self.student_task, teacher_model is not None, layer_plan)
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
        # Device-side bookkeeping of the loss terms (hf_distil.watch): non-finite values and the logged means.
        self.term_watch = TermWatch(args.nan_policy)
        self.add_callback(UpdateWindowCallback(self))
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
        teacher = prepare_teacher(teacher, self.accelerator, self.args.device)
        if self.args.torch_compile and isinstance(teacher, PreTrainedModel):  # not inside an engine's wrapper
            teacher = torch.compile(teacher, backend=self.args.torch_compile_backend or "inductor",
                                    mode=self.args.torch_compile_mode)
        return teacher

    def _run_teacher(self, inputs, positions, spec):
        """The teacher's signals for `spec` (see hf_distil.signals), without gradients and with dropout off."""
        if self.teacher.training:  # someone called .train() on it: dropout must stay off
            self.teacher.eval()
        with torch.no_grad():
            return capture(self.teacher, inputs, positions, spec, self.sparse_heads)

    def teacher_name(self) -> str | None:
        if self.args.teacher_model_name_or_path:
            return self.args.teacher_model_name_or_path
        name = getattr(unwrap(self.teacher).config, "_name_or_path", None) if self.teacher is not None else None
        return name or None

    # ---- training ----------------------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if resume_from_checkpoint:
            check_same_run(resume_from_checkpoint, self.args)
            checkpoint = (get_last_checkpoint(self.args.output_dir) if resume_from_checkpoint is True
                          else resume_from_checkpoint)
            if self.model is not None and checkpoint:
                check_same_student(checkpoint, self.model)
        finished = self._resume_of_a_finished_run(resume_from_checkpoint)
        if finished is not None:
            return finished
        try:
            output = super().train(resume_from_checkpoint, *args, **kwargs)
            self._raise_if_non_finite("at the end of training")
            return output
        finally:  # later compute_loss calls outside training must not reuse the last window's counts
            self.objective.close_window()

    def _resume_of_a_finished_run(self, checkpoint) -> TrainOutput | None:
        """Resuming from a checkpoint already at the run's last step loads it and trains nothing.

        transformers 5.24's Trainer trains one step past max_steps in that case (and writes checkpoint-N+1), so a
        run killed while writing its final folder would not resume to the uninterrupted run's weights.
        """
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return None
        found = finished_run_state(checkpoint, self.args)
        if found is None:
            return None
        checkpoint, state, last = found
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

    # ---- loss ----------------------------------------------------------------------------------------------------

    def _require_labels(self, inputs) -> None:
        if "labels" not in inputs:
            collator = ("DataCollatorForLanguageModeling(tokenizer, mlm=True)" if self.student_task in (MASKED_LM, None)
                        else "DataCollatorForTokenClassification(tokenizer)"
                        if self.student_task == TOKEN_CLASSIFICATION else "DataCollatorWithPadding(tokenizer)")
            raise ValueError(
                f"DistillationTrainer needs labels in each batch (the student is {KIND[self.student_task]}): use "
                f"{collator} as data_collator, on a dataset with a labels column."
            )

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Also count P, M and N over the whole accumulation window (and across ranks) for the loss denominators."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        for batch in batch_samples:
            self._require_labels(batch)
        self.objective.open_window(batch_samples, device, self.accelerator.gather, self.accelerator.num_processes)
        return batch_samples, num_items_in_batch

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Σ alpha_term · term over the weighted terms (hf_distil.terms); each term also kept for logging."""
        self._require_labels(inputs)
        training = model.training
        loss, terms, _ = self._distillation_loss(model, inputs, training, num_items_in_batch)
        if training and torch.is_grad_enabled():
            finite = self.term_watch.watch(terms)
            if self.args.nan_policy == "skip":  # the update is dropped anyway; keep Trainer's running loss finite
                loss = torch.where(finite, loss, torch.zeros_like(loss))
        return (loss, terms) if return_outputs else loss

    def _distillation_loss(self, model, inputs, training, num_items_in_batch=None, want_stats=False):
        """The objective on one micro-batch: (loss, {term: value}, eval sums or None); see Objective.loss."""
        return self.objective.loss(inputs, lambda rows, terms: self._forward_pair(model, inputs, rows, terms),
                                   training, num_items_in_batch, want_stats)

    def _forward_pair(self, model, inputs, rows, terms, dense: bool = False):
        """One forward of the student and, when a term needs it, one of the teacher: their signals for `terms`.
        `dense`: the student's heads run on every position, its full logits kept (Signals.all_logits)."""
        student_spec, teacher_spec = capture_specs(terms, self.layer_plan)
        student = capture(model, inputs, rows.positions, student_spec, self.sparse_heads and not dense,
                          projections_of(model))
        if teacher_spec is None:
            return student, None
        return student, self._run_teacher(inputs, rows.positions, teacher_spec)

    # ---- non-finite terms and logging ------------------------------------------------------------------------------

    def last_complete_checkpoint(self) -> str | None:
        return latest_complete_checkpoint(self.args.output_dir, resume_state=not self.args.save_only_model)

    def _raise_if_non_finite(self, where: str):
        self.term_watch.raise_if_non_finite(where, self.accelerator, self.args.world_size,
                                            self.last_complete_checkpoint)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add each weighted term's `{name}_loss` (means over the logging window, over all ranks) to train logs."""
        if "loss" in logs and self.state.global_step > 0:
            self._raise_if_non_finite("at the next log")
            weights = {name: self.objective.training_weight(name) for name in names()}
            logs.update(self.term_watch.log_means(weights, self.args.device, self.accelerator, self.args.world_size))
        super().log(logs, start_time)

    # ---- evaluation ----------------------------------------------------------------------------------------------

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Stream the distillation metrics; vocabulary-sized logits are only returned when `predict` asks."""
        if "labels" not in inputs:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        kept = {}

        def forward(rows, terms):  # one student forward: dense heads when the full logits are returned too
            student, teacher = self._forward_pair(model, inputs, rows, terms, dense=not prediction_loss_only)
            kept["logits"] = student.all_logits
            return student, teacher

        with torch.no_grad(), self.compute_loss_context_manager():
            loss, _, stats = self.objective.loss(inputs, forward, training=False, want_stats=True)
        if self.args.world_size > 1:
            stats = self.accelerator.gather_for_metrics(stats)
        self.objective.add_eval(stats)
        if prediction_loss_only:
            return loss.detach(), None, None
        return loss.detach(), kept["logits"], inputs["labels"]

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        self.objective.reset_eval()
        epoch = getattr(self.data_collator, "epoch", None)
        if epoch is not None:  # score every evaluation on the same masks, so before/after numbers compare
            self.data_collator.epoch = 0
        try:
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                             metric_key_prefix)
        finally:
            if epoch is not None:
                self.data_collator.epoch = epoch
        for key, value in (self.objective.eval_metrics() or {}).items():
            name = f"{metric_key_prefix}_{key}"
            if key == "loss" or name not in output.metrics:  # compute_metrics' own values (accuracy, ...) win
                output.metrics[name] = value
        return output

    # ---- saving --------------------------------------------------------------------------------------------------

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

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Under a 16-bit DeepSpeed engine the folder gets the float32 master weights (its module holds bf16/fp16
        copies): the float32 promise holds under every engine."""
        if not (self.is_deepspeed_enabled and deepspeed_16bit(self.model_wrapped)):
            return super().save_model(output_dir, _internal_call)
        state_dict = deepspeed_fp32_state_dict(self.model_wrapped)  # on every rank: the gathers are collective
        self._save(output_dir or self.args.output_dir, state_dict=state_dict)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

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

    # ---- the card ------------------------------------------------------------------------------------------------

    def create_model_card(self, language=None, license=None, tags=None, model_name=None, finetuned_from=None,
                          tasks=None, dataset_tags=None, dataset=None, dataset_args=None) -> None:
        """Write the distilled model's card (README.md) and loss plot into `output_dir`; `push_to_hub` uploads them.

        `language`, `license`, `tags` and `dataset`, where given, take precedence over `card_facts`.
        """
        if not self.is_world_process_zero():
            return
        per_device = self.state.train_batch_size or self.args.per_device_train_batch_size  # as trained
        write_card(self.args.output_dir, self.model, self.args, self.state,
                   teacher_name=finetuned_from or self.teacher_name(),
                   total_train_batch_size=per_device * self.args.world_size * self.args.gradient_accumulation_steps,
                   facts=self.card_facts.overridden_by(language=language, license=license, tags=tags,
                                                       dataset=dataset),
                   model_name=model_name, layer_plan=self.layer_plan, downstream=self.card_downstream)
