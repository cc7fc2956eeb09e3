"""Render the Hub-ready model card of a distilled student from `model_card/distilled_model_card.md`.

Every number in the card is read from the student, its config, the arguments and the run's metrics; what those
cannot tell (the corpus's name, its terms of use, licence, language) comes in as `CardFacts`. No text of the training
corpus goes in.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from importlib.resources import files

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..families import (
    MASKED_LM,
    SEQUENCE_CLASSIFICATION,
    TOKEN_CLASSIFICATION,
    model_task,
    unwrap,
)
from ..parameters import ADAPTER_PARAMETER_NAMES, count_parameters
from ..projections import ATTRIBUTE as PROJECTIONS
from ..terms import CardContext, card_ordered, registered, weight_of
from .facts import CardFacts
from .plot import loss_keys, plot_loss_terms, term_labels
from .student import adapter_of, architecture_text, initialisation_text
from .validate import is_dataset_id, is_hub_id, validate_model_card

logger = logging.getLogger("hf_distil.card")

TEMPLATE_NAME = "distilled_model_card.md"
BASE_TAGS = ["distillation", "knowledge-distillation", "fill-mask", "clinical", "biomedical"]
# Per student task (hf_distil.families.model_task): the Hub pipeline tag and task name.
PIPELINES = {
    MASKED_LM: ("fill-mask", "Masked Language Modeling"),
    TOKEN_CLASSIFICATION: ("token-classification", "Token Classification"),
    SEQUENCE_CLASSIFICATION: ("text-classification", "Text Classification"),
}
# The arguments the card reads besides every term's own (Term.fields).
DISTILLATION_FIELDS = ("teacher_dtype", "teacher_model_name_or_path")
# Display name per metric other than the terms' (keys without the "eval_" prefix), in table order.
OTHER_METRIC_NAMES = {
    "perplexity": "Perplexity (exp of MLM loss)",
    "accuracy": "Masked-token accuracy",
    "teacher_agreement": "Top-1 agreement with the teacher",
    "f1": "Entity F1", "precision": "Entity precision", "recall": "Entity recall", "macro_f1": "Macro-F1",
}


def metric_names() -> dict[str, str]:
    """Display name per metric, in table order: the total, each term's loss (hf_distil.terms), the rest."""
    return {"loss": "Validation loss (weighted total)",
            **{f"{term.name}_loss": term.metric_name for term in card_ordered()}, **OTHER_METRIC_NAMES}
# A task student's accuracy is over its labelled tokens or its examples, not masked tokens.
TASK_METRIC_NAMES = {TOKEN_CLASSIFICATION: {"accuracy": "Accuracy (labelled tokens)"},
                     SEQUENCE_CLASSIFICATION: {"accuracy": "Accuracy"}}
SKIPPED_METRICS = {"runtime", "samples_per_second", "steps_per_second", "epoch", "step", "total_flos",
                   "model_preparation_time"}


def _local_name(name: str) -> str:
    """Last component of a local path, so the card does not expose this machine's file layout."""
    return os.path.basename(os.path.normpath(name)) or name


def _count(x) -> str:
    """A count of epochs etc.: 3.0 -> '3', 2.4999 -> '2.5'."""
    return f"{round(float(x), 2):g}"


def _round_metric(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "item"):
        return value
    value = value.item() if hasattr(value, "item") else value
    return value if isinstance(value, int) else round(float(value), 4)


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + (", and " if len(items) > 2 else " and ") + items[-1]


def _layer_map_text(args, plan) -> str:
    pairs = ", ".join(f"{s}→{t}" for s, t in plan.layer_pairs)
    how = "uniform, TinyBERT's mapping" if args.layer_map == "uniform" else "given explicitly"
    return f"{args.layer_map!r} ({how}: student layer → teacher layer {pairs})"


def _procedure(args, plan=None, projected: bool = False, task: str | None = MASKED_LM) -> str:
    """The training loss in words and as a formula, each weighted term saying what it compared (hf_distil.terms)."""
    task = task if task in PIPELINES else MASKED_LM
    context = CardContext(task=task, plan=plan, projected=projected)
    weighted = [term for term in card_ordered() if hasattr(args, term.weight) and weight_of(args, term.name) > 0]
    described = [d for d in (term.describe(args, context) for term in weighted) if d is not None]
    lead = "a weighted sum of " if len(described) > 1 else ""
    text = (f"The training loss is {lead}{_join([words for words, _ in described])}: "
            f"loss = {' + '.join(formula for _, formula in described)}.")
    if plan is not None and plan.layer_pairs:
        text += f" Layers count from 0; the layer map was {_layer_map_text(args, plan)}."
    text += "".join(term.note(args, context) for term in card_ordered() if hasattr(args, term.weight))
    head_terms = [term for term in card_ordered() if term.trains_mlm_head and hasattr(args, term.weight)]
    if task == MASKED_LM and not any(term in weighted for term in head_terms):
        text += (f" No term trained the masked-LM head ({' = '.join(t.weight for t in head_terms)} = 0), so its"
                 " fill-mask predictions are not meaningful: use this model as an encoder to fine-tune.")
    if args.needs_teacher:
        text += f" The teacher was frozen, kept in evaluation mode (no dropout) and run in {_teacher_dtype(args)}."
    return text


def _teacher_dtype(args) -> str:
    """The dtype the trainer cast the teacher to (`DistillationArguments.teacher_torch_dtype`, the one resolver)."""
    return str(args.teacher_torch_dtype).removeprefix("torch.")


def _hyperparameters(args, total_batch: int, world_size: int) -> list[tuple[str, str]]:
    scheduler = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    warmup = float(args.warmup_steps or 0) or float(getattr(args, "warmup_ratio", 0) or 0)
    warmup_text = f"{warmup:g} of the training steps" if 0 < warmup < 1 else f"{int(warmup)} steps"
    if args.max_steps and args.max_steps > 0:
        length = ("training steps", str(args.max_steps))
    else:
        length = ("epochs", _count(args.num_train_epochs))
    accumulation = args.gradient_accumulation_steps
    # The per-device batch that ran (total ÷ devices ÷ accumulation), not only the one asked for.
    per_device = total_batch // (world_size * accumulation) if total_batch else args.per_device_train_batch_size
    precision = "bf16 mixed precision" if args.bf16 else "fp16 mixed precision" if args.fp16 else "fp32"
    return [
        ("learning rate", f"{args.learning_rate:g}"),
        ("scheduler", str(scheduler)),
        ("warmup", warmup_text),
        ("weight decay", f"{args.weight_decay:g}"),
        ("optimizer", str(getattr(args.optim, "value", args.optim))),
        length,
        (
            "batch size",
            f"{per_device} per device × {world_size} device(s) × {accumulation} accumulation step(s)"
            f" = {total_batch} in total",
        ),
        ("seed", str(args.seed)),
        ("precision", precision),
        ("teacher dtype", _teacher_dtype(args)),
    ]


def _metrics_rows(metrics: dict | None, task: str = MASKED_LM) -> list[tuple[str, object]]:
    rows, rest = {}, []
    ordered = metric_names()
    names = {**ordered, **TASK_METRIC_NAMES.get(task, {})}
    for key, value in (metrics or {}).items():
        short = key.removeprefix("eval_")
        if short in SKIPPED_METRICS or "memory" in short or "flos" in short:
            continue
        if short in names:
            rows[short] = (names[short], _round_metric(value))
        elif task == TOKEN_CLASSIFICATION and re.fullmatch(r".+_(precision|recall|f1|number)", short):
            entity, measure = short.rsplit("_", 1)  # seqeval's per-entity-type scores, e.g. TEST_f1
            rest.append((f"Entity type {entity}: {'count' if measure == 'number' else measure}", _round_metric(value)))
        else:
            rest.append((short.replace("_", " ").capitalize(), _round_metric(value)))
    return [rows[k] for k in ordered if k in rows] + rest


def _last_training_log(log_history: list[dict] | None) -> str | None:
    entries = [e for e in (log_history or []) if "loss" in e and "step" in e]
    if not entries:
        return None
    last = entries[-1]
    labels = term_labels()
    parts = [f"{labels[t]} {_round_metric(last[t])}" for t in loss_keys() if t in last]
    return f"At the last logged training step ({last['step']}) the losses were: {', '.join(parts)}."


# The metrics of the front matter's model-index, per student task: (key, metric type, name).
INDEX_METRICS = {
    MASKED_LM: (("eval_perplexity", "perplexity", "Perplexity"),
                ("eval_accuracy", "accuracy", "Masked-token accuracy")),
    TOKEN_CLASSIFICATION: (("eval_f1", "f1", "Entity F1"), ("eval_precision", "precision", "Entity precision"),
                           ("eval_recall", "recall", "Entity recall")),
    SEQUENCE_CLASSIFICATION: (("eval_accuracy", "accuracy", "Accuracy"), ("eval_macro_f1", "f1", "Macro-F1")),
}


def _eval_results(metrics: dict | None, dataset_type: str, dataset_name: str,
                  task: str = MASKED_LM) -> list[EvalResult]:
    results = []
    pipeline, task_name = PIPELINES[task]
    for key, metric_type, pretty in INDEX_METRICS[task]:
        value = (metrics or {}).get(key)
        if value is not None and math.isfinite(float(value)):
            results.append(EvalResult(
                task_type=pipeline, task_name=task_name,
                dataset_type=dataset_type, dataset_name=dataset_name,
                metric_type=metric_type, metric_name=pretty, metric_value=_round_metric(value),
            ))
    return results


def _task_model_text(config, task: str) -> str:
    """The intended-use lead of a task student: what it predicts, over which labels."""
    labels = [str(config.id2label[i]) for i in sorted(config.id2label)]
    what = "a label for each token (word)" if task == TOKEN_CLASSIFICATION else "one label for each text"
    return (f"This is a compact {PIPELINES[task][1].lower()} model: it predicts {what}, one of {len(labels)} labels"
            f" ({', '.join(f'`{label}`' for label in labels)}), distilled from a teacher fine-tuned on the same task,"
            " for the same task where a smaller, faster model is needed.")


def _teacher(name: str | None) -> tuple[str, str | None]:
    """(how the card names the teacher, front-matter base_model): links and base_model only for Hub ids."""
    if name is None:
        return "an unrecorded teacher", None
    if is_hub_id(name):
        return f"the [{name}](https://huggingface.co/{name}) model", name
    return f"the local model `{_local_name(name)}`", None


def _dataset(name: str | None, ids: list[str] | None) -> tuple[str | None, str, list[str]]:
    """(display name, phrase for the description, valid Hub dataset ids for the front matter)."""
    valid = [d for d in ids or [] if is_dataset_id(d)]
    if len(valid) < len(ids or []):
        logger.warning("Model card: dropped dataset ids that are not Hub ids: %s", sorted(set(ids) - set(valid)))
    if name and os.path.exists(name):
        name = _local_name(name)
    if name and "/" in name and is_dataset_id(name):
        return name, f"the [{name}](https://huggingface.co/datasets/{name}) dataset", valid
    if name:
        return name, f"the {name} dataset", valid
    if valid:
        return None, _join([f"[{d}](https://huggingface.co/datasets/{d})" for d in valid]), valid
    return None, "an unrecorded corpus", valid


def _default_model_name(args) -> str:
    if args.hub_model_id:
        return args.hub_model_id.split("/")[-1]
    return _local_name(args.output_dir or "") or "distilled-model"


def _run_length(args, epochs_completed: float | None) -> str:
    if epochs_completed is None and args.max_steps and args.max_steps > 0:
        return f"{args.max_steps} optimisation steps"
    epochs = _count(args.num_train_epochs if epochs_completed is None else epochs_completed)
    return f"{epochs} epoch{'' if epochs == '1' else 's'}"


def build_model_card(
    model,
    args,
    *,
    teacher_name: str | None,
    total_train_batch_size: int | None,
    world_size: int = 1,
    facts: CardFacts | None = None,
    metrics: dict | None = None,
    log_history: list[dict] | None = None,
    epochs_completed: float | None = None,
    plot_path: str | None = None,
    model_name: str | None = None,
    layer_plan=None,
    index_metrics: bool = True,
    metrics_lead: str | None = None,
    **fact_fields,
) -> ModelCard:
    """Build the student's card (front matter + body) from the model, the arguments and the run's results.

    `facts` says what the run cannot (see `CardFacts`); single facts may also be given as keywords
    (`dataset_name=...`, `license=...`), which take precedence over `facts`.
    `plot_path` should lie in the folder the card is saved to: the card links the image by file name.
    `layer_plan` (hf_distil.layer_map.LayerPlan) names the layers the attention / intermediate / relation terms
    compared, when any is on. `index_metrics=False` leaves the front matter's model-index to a downstream table
    (hf_distil.card.downstream) that records the same metrics with their split.
    """
    wanted = (*DISTILLATION_FIELDS, *(f for term in registered() if hasattr(args, term.weight) for f in term.fields))
    missing = [f for f in dict.fromkeys(wanted) if not hasattr(args, f)]
    if missing:
        raise TypeError(f"build_model_card needs DistillationArguments; args lacks {', '.join(missing)}.")
    facts = dataclasses.replace(facts or CardFacts(), **fact_fields)
    base = unwrap(model)
    task = model_task(base) if model_task(base) in PIPELINES else MASKED_LM
    adapter, adapter_params = adapter_of(model)
    teacher_display, base_model = _teacher(teacher_name if teacher_name is not None
                                           else args.teacher_model_name_or_path)
    dataset_name, dataset_display, dataset_ids = _dataset(facts.dataset_name, facts.dataset_ids)
    model_name = model_name or _default_model_name(args)
    if total_train_batch_size is None:
        total_train_batch_size = args.per_device_train_batch_size * world_size * args.gradient_accumulation_steps

    description = (
        f"{model_name} is a distilled version of {teacher_display}, distilled for"
        f" {_run_length(args, epochs_completed)} using a total batch size of {total_train_batch_size}"
        f" on {dataset_display}{f', as {facts.training_examples}' if facts.training_examples else ''}."
    )
    if adapter:
        description += (
            f" The weights in this repository are a {adapter} ({adapter_params:,} trainable parameters) on the"
            " student described below; load them with `peft`."
        )

    plot_file = None
    if plot_path and log_history and plot_loss_terms(log_history, plot_path):
        plot_file = os.path.basename(plot_path)

    slug = re.sub(r"[^a-z0-9]+", "-", (dataset_name or "").lower()).strip("-")
    dataset_type = dataset_ids[0] if dataset_ids else slug or "custom"
    eval_results = _eval_results(metrics, dataset_type, dataset_name or dataset_type, task) if index_metrics else []
    adapter_tags = ["peft", "lora"] if adapter and adapter.startswith("LoRA") else []
    base_tags = [PIPELINES[task][0] if tag == "fill-mask" else tag for tag in BASE_TAGS]
    tags = list(dict.fromkeys(base_tags + adapter_tags + list(facts.extra_tags or [])))
    card_data = ModelCardData(
        library_name="peft" if adapter else "transformers",
        pipeline_tag=PIPELINES[task][0],
        base_model=base_model,
        tags=tags,
        language=facts.language,
        license=facts.card_license,
        datasets=dataset_ids or None,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )
    # The student's own weights only: an adapter's injected matrices are counted in the description.
    # The learned projections of the intermediate term are not part of the saved model either.
    excluded = (*(ADAPTER_PARAMETER_NAMES if adapter else ()), f"{PROJECTIONS}.")
    _, n_params = count_parameters(base, exclude=excluded)
    template = files("hf_distil.model_card").joinpath(TEMPLATE_NAME).read_text(encoding="utf-8")
    card = ModelCard.from_template(
        card_data,
        template_str=template,
        title=model_name,
        description=description,
        procedure=_procedure(args, layer_plan, projected=getattr(base, PROJECTIONS, None) is not None, task=task),
        initialisation=initialisation_text(base.config, teacher_display),
        architecture=architecture_text(base.config, n_params),
        metric_rows=_metrics_rows(metrics, task),
        metrics_lead=metrics_lead or "Evaluation metrics at the end of training, on the evaluation split:",
        last_training_log=_last_training_log(log_history),
        plot_file=plot_file,
        hyperparameters=_hyperparameters(args, total_train_batch_size, world_size),
        teacher=teacher_display,
        data_use_note=facts.data_use_note,
        task_model=None if task == MASKED_LM else _task_model_text(base.config, task),
    )
    validate_model_card(card)
    return card
