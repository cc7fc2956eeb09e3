"""The distillation recipe behind `recipes/run_distil.py` and the `hf-distil` command: the flow of one run.

config (YAML/JSON) + CLI flags (hf_distil.config) → output folder and resume (hf_distil.checkpoints) → teacher,
tokenizer, student (hf_distil.build) → corpus (hf_distil.data) → DistillationTrainer → Hub-ready folder.
Every mistake a user can make is reported in one line before any model is trained.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import IntervalStrategy

from .arguments import DistillationArguments
from .build import build_models
from .card import CardFacts
from .checkpoints import DiskFullError, expected_save_bytes, probe_output_dir
from .config import USER_ERRORS, ModelArguments, RunArguments, codes, parse_arguments, usage_or_version
from .data import (
    DataArguments,
    effective_max_seq_length,
    load_raw_corpus,
    make_collator,
    noteevents_inputs,
    tokenize_corpus,
)
from .errors import RecipeError
from .hub import check_push_to_hub
from .preflight import check_compatibility
from .resume import check_same_run, check_same_student, resolve_resume
from .terms import card_ordered
from .trainer import DistillationTrainer
from .watch import NonFiniteLossError

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
                     license=run_args.card_license, language=codes(run_args.card_language),
                     training_examples=examples)


def run(model_args: ModelArguments, data_args: DataArguments, training_args: DistillationArguments,
        run_args: RunArguments) -> dict:
    """Distil, evaluate, save the student, tokenizer, arguments, results and card; returns the final metrics."""
    check_push_to_hub(training_args)  # offline or no token: say so before anything is loaded
    resume = resolve_resume(training_args, run_args, model_args)
    if resume:
        check_same_run(resume, training_args)  # before anything loads (the trainer checks again, for API users)
    teacher, student, tokenizer = build_models(model_args, training_args)
    if resume:
        check_same_student(resume, student)
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
    metrics.update({k: v for k, v in before.items() if k != "epoch"})  # the run's epoch, not the one before it
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


def summary(metrics: dict, output_dir: str) -> str:
    """A short before/after table for the terminal."""
    rows = [("teacher agreement", "teacher_agreement"), ("masked-token accuracy", "accuracy"),
            ("perplexity", "perplexity")]
    # the terms scored against the teacher in every evaluation, as the card names them (the KD loss is T²·KL)
    rows += [(term.metric_name, f"{term.name}_loss") for term in card_ordered()
             if term.always_evaluated and term.needs_teacher]
    width = max(24, *(len(label) + 2 for label, _ in rows))
    lines = ["", "hf-distil summary", f"{'metric':<{width}}{'before':>12}{'after':>12}"]
    for label, key in rows:
        if f"eval_{key}" in metrics:
            before = metrics.get(f"init_{key}")
            b = f"{before:>12.4f}" if before is not None else f"{'-':>12}"
            lines.append(f"{label:<{width}}{b}{metrics[f'eval_{key}']:>12.4f}")
    if len(lines) == 3:
        lines[2] = "(no validation data: nothing evaluated)"
    lines.append(f"Hub-ready model folder: {output_dir}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    said = usage_or_version(argv, "hf-distil", "recipes/configs/quickstart.yaml")
    if said is not None:
        return said
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
