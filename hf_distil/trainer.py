"""`DistillationTrainer`: `Trainer` with a frozen teacher and the distillation objective of DESIGN.md."""

from __future__ import annotations

import logging
import os

import torch
from torch import nn
from transformers import AutoModelForMaskedLM, PreTrainedModel, Trainer, TrainerCallback

from .arguments import DistillationArguments
from .heads import forward_selected, unwrap
from .losses import hidden_loss_rows, kd_loss_rows, mlm_loss_rows

logger = logging.getLogger("hf_distil")

TERMS = ("kd", "mlm", "hidden")
# Row counts that normalise the terms: KL positions P, masked positions M, non-padding positions N.
_P, _M, _N = 0, 1, 2
# Streamed evaluation sums: the three term sums, the three counts, correct top-1, teacher-agreeing top-1.
_EVAL_FIELDS = ("kd", "mlm", "hidden", "P", "M", "N", "correct", "agree")


def _dtype_for(args: DistillationArguments, current: torch.dtype) -> torch.dtype:
    if args.teacher_dtype == "auto":
        return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else current
    return getattr(torch, args.teacher_dtype)


def load_teacher(name_or_path: str, args: DistillationArguments, **kwargs) -> PreTrainedModel:
    """Load a masked-LM teacher from a local folder or the Hub, with a one-line error when that fails."""
    dtype = _dtype_for(args, torch.float32)
    try:
        return AutoModelForMaskedLM.from_pretrained(name_or_path, dtype=dtype, **kwargs)
    except (OSError, EnvironmentError) as err:
        where = "a local folder" if os.path.isdir(name_or_path) else "a local path or a Hub id reachable from here"
        raise FileNotFoundError(
            f"Teacher {name_or_path!r} could not be loaded ({type(err).__name__}: {str(err).splitlines()[0]}): "
            f"pass {where} holding config.json and weights of a masked LM (offline: HF_HUB_OFFLINE=1 needs it cached)."
        ) from err
    except ValueError as err:
        raise ValueError(
            f"Teacher {name_or_path!r} is not a masked-language model ({str(err).splitlines()[0]}); the KL term needs "
            "an AutoModelForMaskedLM checkpoint (e.g. a BERT or RoBERTa *ForMaskedLM)."
        ) from err


def check_compatibility(student: nn.Module, teacher: nn.Module | None, args: DistillationArguments, tokenizer=None):
    """Fail before any compute when teacher, student and tokenizer cannot be distilled together."""
    s_cfg = unwrap(student).config
    if tokenizer is not None and hasattr(tokenizer, "__len__"):
        padded = s_cfg.vocab_size % 8 == 0 and 0 < s_cfg.vocab_size - len(tokenizer) < 128
        if len(tokenizer) != s_cfg.vocab_size and not padded:
            raise ValueError(
                f"The tokenizer has {len(tokenizer)} tokens but the student's vocabulary has {s_cfg.vocab_size}: "
                "use the tokenizer that belongs to the teacher (tokenizer_name / processing_class)."
            )
    if teacher is None:
        return
    t_cfg = unwrap(teacher).config
    if t_cfg.vocab_size != s_cfg.vocab_size:
        raise ValueError(
            f"Teacher vocabulary ({t_cfg.vocab_size}) and student vocabulary ({s_cfg.vocab_size}) differ: "
            "distillation compares distributions over the same tokens; build the student with create_student(teacher)."
        )
    if args.alpha_kd > 0 and unwrap(teacher).get_output_embeddings() is None:
        raise ValueError(
            f"The teacher ({type(unwrap(teacher)).__name__}) has no masked-LM head, so the KL term cannot be computed: "
            "load it with AutoModelForMaskedLM, or set alpha_kd=0."
        )
    if args.alpha_hidden > 0 and t_cfg.hidden_size != s_cfg.hidden_size:
        raise ValueError(
            f"alpha_hidden > 0 aligns last hidden states, but the teacher's hidden size is {t_cfg.hidden_size} and the "
            f"student's {s_cfg.hidden_size}: set alpha_hidden=0 or use a student of the same width."
        )


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf during training (nan_policy="stop")."""


class CollatorEpochCallback(TrainerCallback):
    """Tell a collator with an `epoch` field (ReproducibleMLMCollator) which epoch it is masking for."""

    def __init__(self, collator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int(state.epoch or 0)


class DistillationTrainer(Trainer):
    """A drop-in `Trainer` that distils `teacher_model` into `model` (see DESIGN.md for the objective).

    The loss of each micro-batch is divided by the row counts of the whole accumulated (and, with
    `average_tokens_across_devices`, global) batch, so it is already scaled for gradient accumulation.
    """

    loss_is_scaled_for_ga = True
    # Apply the MLM heads only at the positions the loss needs (False: full logits, the reference path).
    sparse_heads = True

    def __init__(self, model=None, args: DistillationArguments | None = None, *trainer_args, teacher_model=None, **kw):
        if args is None:
            args = DistillationArguments(output_dir="trainer_output")
        if not isinstance(args, DistillationArguments):
            raise TypeError(
                f"DistillationTrainer needs DistillationArguments, got {type(args).__name__}: build them with "
                "DistillationArguments(...) (it takes every TrainingArguments field)."
            )
        if teacher_model is None:
            teacher_model = args.teacher_model_name_or_path
        if teacher_model is None and args.needs_teacher:
            raise ValueError(
                "No teacher: pass teacher_model=... or set teacher_model_name_or_path, "
                "or set alpha_kd=0 and alpha_hidden=0 to train the student alone."
            )
        if isinstance(teacher_model, str):
            teacher_model = load_teacher(teacher_model, args)
        if model is not None:
            check_compatibility(model, teacher_model, args, kw.get("processing_class"))

        super().__init__(model, args, *trainer_args, **kw)
        if hasattr(self.data_collator, "epoch"):
            self.add_callback(CollatorEpochCallback(self.data_collator))
            if args.dataloader_num_workers > 0 and args.dataloader_persistent_workers:
                logger.warning(
                    "dataloader_persistent_workers keeps each worker's copy of the collator, so masks repeat every "
                    "epoch (static masking); turn persistent workers off for fresh masks per epoch."
                )
        self.teacher = self._prepare_teacher(teacher_model) if teacher_model is not None else None
        self._accumulated_counts: torch.Tensor | None = None
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_steps = 0
        self._last_term_step = -1
        self._eval_sums: torch.Tensor | None = None
        # What the card cannot learn from the model or the arguments; the recipe fills it in.
        self.card_info: dict = {"dataset_name": None, "dataset_ids": None, "data_use_note": None,
                                "license": "apache-2.0", "language": "en", "tags": None}

    # ---- teacher lifecycle -------------------------------------------------------------------------------------

    def _prepare_teacher(self, teacher: nn.Module) -> nn.Module:
        """Freeze, set eval mode, cast and place the teacher; engines prepare it for inference."""
        from .engines import prepare_teacher

        teacher.requires_grad_(False)
        teacher.eval()
        dtype = _dtype_for(self.args, next(teacher.parameters()).dtype)
        teacher.to(dtype=dtype)
        return prepare_teacher(teacher, self.accelerator, self.args.device)

    def _run_teacher(self, inputs, positions, need_hidden):
        if self.teacher.training:  # someone called .train() on it: dropout must stay off
            self.teacher.eval()
        with torch.no_grad():
            return forward_selected(self.teacher, inputs, positions, need_hidden, self.sparse_heads)

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:  # later compute_loss calls outside training must not reuse the last window's counts
            self._accumulated_counts = None

    # ---- loss ----------------------------------------------------------------------------------------------------

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Also count P, M and N over the whole accumulation window (and across ranks) for the loss denominators."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        counts = torch.zeros(3, dtype=torch.long, device=device)
        for batch in batch_samples:
            counts += self._row_counts(batch).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            counts = self.accelerator.gather(counts.unsqueeze(0)).sum(0)
        self._accumulated_counts = counts
        return batch_samples, num_items_in_batch

    def _masks(self, inputs):
        labels = inputs["labels"]
        masked = labels != -100
        attention = inputs.get("attention_mask")
        non_pad = attention.bool() if attention is not None else torch.ones_like(masked)
        kd_rows = masked if self.args.kd_positions == "masked" else (non_pad | masked)
        return masked, non_pad, kd_rows

    def _row_counts(self, inputs) -> torch.Tensor:
        masked, non_pad, kd_rows = self._masks(inputs)
        return torch.stack([kd_rows.sum(), masked.sum(), non_pad.sum()])

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """alpha_kd·kd + alpha_mlm·mlm + alpha_hidden·hidden; each term also kept for logging."""
        if "labels" not in inputs:
            raise ValueError(
                "DistillationTrainer needs masked-LM labels in each batch: use "
                "DataCollatorForLanguageModeling(tokenizer, mlm=True) as data_collator."
            )
        training = model.training
        loss, terms, _ = self._distillation_loss(model, inputs, training, num_items_in_batch)
        if training:
            if not bool(torch.isfinite(torch.stack([v.detach() for v in terms.values()])).all()):
                loss = self._non_finite(model, terms)
            else:
                self._record_terms(terms)
        return (loss, terms) if return_outputs else loss

    def _non_finite(self, model, terms) -> torch.Tensor:
        """Stop with the term and step named, or (nan_policy="skip") return a zero loss that still reaches every
        trainable parameter, so DDP ranks stay in step and the micro-batch adds nothing to the update."""
        bad = ", ".join(f"{k}_loss={float(v):g}" for k, v in terms.items() if not torch.isfinite(v.detach()))
        step = self.state.global_step + 1
        if self.args.nan_policy == "stop":
            from .recipe import latest_complete_checkpoint

            last = latest_complete_checkpoint(self.args.output_dir)
            raise NonFiniteLossError(
                f"Non-finite loss term ({bad}) at step {step}; training stopped, nothing was saved after it "
                f"(last good checkpoint: {last or 'none yet'}). Lower the learning rate, use bf16 rather than fp16, "
                "check the data, or pass --nan_policy skip."
            )
        logger.warning("Skipping a micro-batch at step %d: %s", step, bad)
        self._nan_skipped = getattr(self, "_nan_skipped", 0) + 1
        return sum((p * 0.0).sum() for p in model.parameters() if p.requires_grad)

    def _distillation_loss(self, model, inputs, training, num_items_in_batch=None, want_stats=False):
        """The objective on one micro-batch: (loss, {term: value}, eval sums or None)."""
        args = self.args
        masked, non_pad, kd_rows = self._masks(inputs)
        # Rows needing logits: training asks only what a weighted term reads; evaluation always scores the student.
        if args.alpha_kd > 0 or want_stats:
            rows = kd_rows
        elif args.alpha_mlm > 0:
            rows = masked
        else:
            rows = torch.zeros_like(masked)
        positions = rows.reshape(-1).nonzero().squeeze(1)
        need_hidden = args.alpha_hidden > 0
        run_teacher = self.teacher is not None and args.needs_teacher

        # nn.DataParallel replicas share the hook dict and see only their slice: use the full forward there.
        sparse = self.sparse_heads and not isinstance(model, nn.DataParallel)
        student = forward_selected(model, inputs, positions, need_hidden, sparse)
        teacher = self._run_teacher(inputs, positions, need_hidden) if run_teacher else None

        row_labels = inputs["labels"].reshape(-1).index_select(0, positions)
        per_row = {}  # term -> (values per row, flat position of each row)
        if teacher is not None and (args.alpha_kd > 0 or want_stats):
            per_row["kd"] = (kd_loss_rows(student.logits, teacher.logits, args.temperature), positions)
        if args.alpha_mlm > 0 or want_stats:
            per_row["mlm"] = (mlm_loss_rows(student.logits, row_labels), positions)
        if need_hidden:
            hidden_rows = non_pad.reshape(-1).nonzero().squeeze(1)
            per_row["hidden"] = (hidden_loss_rows(
                student.last_hidden_state[non_pad], teacher.last_hidden_state[non_pad], args.hidden_loss
            ), hidden_rows)
        sums = {name: values.sum() for name, (values, _) in per_row.items()}

        local = torch.stack([kd_rows.sum(), masked.sum(), non_pad.sum()])
        counts, scale = local, 1.0
        if training and self._accumulated_counts is not None:
            counts = self._accumulated_counts
            if args.average_tokens_across_devices and args.world_size > 1:
                # DDP averages gradients over ranks; the global-count denominator wants their sum.
                scale = float(self.accelerator.num_processes)
        elif num_items_in_batch is not None:
            counts = local.clone()
            counts[_M] = num_items_in_batch
            if args.kd_positions == "masked":
                counts[_P] = num_items_in_batch
        denominators = {"kd": counts[_P], "mlm": counts[_M], "hidden": counts[_N]}
        alphas = {"kd": args.alpha_kd, "mlm": args.alpha_mlm, "hidden": args.alpha_hidden}

        terms = {name: value / denominators[name].clamp(min=1) * scale for name, value in sums.items()}
        loss = sum(alphas[name] * terms[name] for name in terms if alphas[name] > 0)
        if not torch.is_tensor(loss):  # no weighted term produced a value (cannot happen with valid arguments)
            raise RuntimeError("No loss term was computed; check alpha_kd / alpha_mlm / alpha_hidden.")

        stats = None
        if want_stats:  # per example, so DDP evaluation can drop the duplicates that pad its last batch
            batch_size, length = masked.shape
            stats = torch.zeros(batch_size, len(_EVAL_FIELDS), dtype=torch.float64, device=masked.device)
            for i, name in enumerate(TERMS):
                if name in per_row:
                    values, flat = per_row[name]
                    stats[:, i].index_add_(0, flat // length, values.detach().double())
            for i, mask in zip((3, 4, 5), (kd_rows, masked, non_pad)):
                stats[:, i] = mask.sum(1).double()
            example = positions // length
            is_masked = (row_labels != -100).double()
            top1 = student.logits.argmax(-1)
            stats[:, 6].index_add_(0, example, (top1 == row_labels).double() * is_masked)
            if teacher is not None:
                stats[:, 7].index_add_(0, example, (top1 == teacher.logits.argmax(-1)).double() * is_masked)
        return loss, terms, stats

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

    def _record_terms(self, terms: dict[str, torch.Tensor]):
        if self.state.global_step != self._last_term_step:
            self._last_term_step = self.state.global_step
            self._term_steps += 1
        for name, value in terms.items():
            self._term_sums[name] = self._term_sums.get(name, 0.0) + value.detach().double()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add `kd_loss`, `mlm_loss`, `hidden_loss` (means over the logging window, over all ranks) to train logs.

        Every rank gathers the same fixed vector, even one that skipped all its micro-batches (nan_policy=skip),
        so the collective never mismatches.
        """
        if "loss" in logs and self.state.global_step > 0 and self.model.training is not None:
            names = [n for n in TERMS if self._term_weight(n) > 0]
            local = [float(self._term_sums.get(n, 0.0)) for n in names] + [float(self._term_steps)]
            values = torch.tensor(local, dtype=torch.float64, device=self.args.device)
            if self.args.world_size > 1:
                gathered = self.accelerator.gather(values.unsqueeze(0))
                values = torch.cat([gathered[:, :-1].mean(0), gathered[:, -1:].max(0).values])
            steps = float(values[-1])
            if steps > 0:
                for name, value in zip(names, values[:-1].tolist()):
                    logs[f"{name}_loss"] = value / steps
            self._term_sums, self._term_steps = {}, 0
            if getattr(self, "_nan_skipped", 0):
                logs["nan_skipped"] = self._nan_skipped
        super().log(logs, start_time)

    def _term_weight(self, name: str) -> float:
        """The weight of a term that training computes (teacher terms need a teacher)."""
        if name != "mlm" and self.teacher is None:
            return 0.0
        return {"kd": self.args.alpha_kd, "mlm": self.args.alpha_mlm, "hidden": self.args.alpha_hidden}[name]

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
            output.metrics.update({f"{metric_key_prefix}_{k}": v for k, v in self._eval_metrics(sums).items()})
            self._eval_sums = None
        return output

    def _eval_metrics(self, sums: torch.Tensor) -> dict[str, float]:
        """Token-weighted means over the whole evaluation set."""
        s = dict(zip(_EVAL_FIELDS, sums.tolist()))
        args = self.args
        has_teacher = self.teacher is not None and args.needs_teacher
        metrics = {"mlm_loss": s["mlm"] / max(s["M"], 1)}
        if has_teacher:
            metrics["kd_loss"] = s["kd"] / max(s["P"], 1)
        if args.alpha_hidden > 0:
            metrics["hidden_loss"] = s["hidden"] / max(s["N"], 1)
        alphas = {"kd_loss": args.alpha_kd, "mlm_loss": args.alpha_mlm, "hidden_loss": args.alpha_hidden}
        metrics["loss"] = sum(alphas[k] * v for k, v in metrics.items() if k in alphas)
        metrics["perplexity"] = float(torch.exp(torch.tensor(min(metrics["mlm_loss"], 80.0))))
        metrics["accuracy"] = s["correct"] / max(s["M"], 1)
        if has_teacher:
            metrics["teacher_agreement"] = s["agree"] / max(s["M"], 1)
        return metrics

    # ---- output --------------------------------------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the student (never the teacher) and the arguments as readable JSON (tokens redacted).

        Trainer's pickled `training_args.bin` is replaced by `distillation_args.json`: nothing reads it back, and a
        Hub-ready folder should hold no pickles.
        """
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            folder = output_dir or self.args.output_dir
            with open(os.path.join(folder, "distillation_args.json"), "w", encoding="utf-8") as f:
                f.write(self.args.to_json_string())
            pickled = os.path.join(folder, "training_args.bin")
            if os.path.exists(pickled):
                os.remove(pickled)

    def teacher_name(self) -> str | None:
        if self.args.teacher_model_name_or_path:
            return self.args.teacher_model_name_or_path
        name = getattr(unwrap(self.teacher).config, "_name_or_path", None) if self.teacher is not None else None
        return name or None

    def create_model_card(self, language=None, license=None, tags=None, model_name=None, finetuned_from=None,
                          tasks=None, dataset_tags=None, dataset=None, dataset_args=None) -> None:
        """Write the distilled model's card (README.md) and loss plot into `output_dir`; `push_to_hub` uploads them."""
        from .card import build_model_card

        if not self.is_world_process_zero():
            return
        info = self.card_info
        metrics = {}
        for entry in self.state.log_history:  # the latest value of each eval metric
            metrics.update({k: v for k, v in entry.items() if k.startswith("eval_")})
        extra_tags = [tags] if isinstance(tags, str) else list(tags or info.get("tags") or [])
        dataset_ids = [dataset] if isinstance(dataset, str) else dataset
        args = self.args
        os.makedirs(args.output_dir, exist_ok=True)
        card = build_model_card(
            self.model,
            args,
            teacher_name=finetuned_from or self.teacher_name(),
            total_train_batch_size=args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps,
            world_size=args.world_size,
            dataset_name=info.get("dataset_name") or (dataset_ids[0] if dataset_ids else None),
            dataset_ids=dataset_ids or info.get("dataset_ids"),
            metrics=metrics or None,
            log_history=self.state.log_history,
            epochs_completed=self.state.epoch,
            license=license or info.get("license") or "apache-2.0",
            language=language or info.get("language") or "en",
            extra_tags=extra_tags or None,
            data_use_note=info.get("data_use_note"),
            plot_path=os.path.join(args.output_dir, "loss_terms.png"),
            model_name=model_name,
        )
        card.save(os.path.join(args.output_dir, "README.md"))
