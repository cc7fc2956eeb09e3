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

from ..heads import (
    GLOBAL,
    MASKED_LM,
    SEQUENCE_CLASSIFICATION,
    TOKEN_CLASSIFICATION,
    attention_kinds,
    config_value,
    model_task,
    task_of_classes,
    unwrap,
)
from ..parameters import ADAPTER_PARAMETER_NAMES, count_parameters
from ..projections import ATTRIBUTE as PROJECTIONS
from .facts import CardFacts
from .plot import LOSS_TERMS, TERM_LABELS, plot_loss_terms
from .validate import is_dataset_id, is_hub_id, validate_model_card

logger = logging.getLogger("hf_distil.card")

TEMPLATE_NAME = "distilled_model_card.md"
BASE_TAGS = ["distillation", "knowledge-distillation", "fill-mask", "clinical", "biomedical"]
# Per student task (hf_distil.heads.model_task): the Hub pipeline tag and task name, and what the KL term compared.
PIPELINES = {
    MASKED_LM: ("fill-mask", "Masked Language Modeling", "masked-LM output distributions"),
    TOKEN_CLASSIFICATION: ("token-classification", "Token Classification", "label distributions per token"),
    SEQUENCE_CLASSIFICATION: ("text-classification", "Text Classification", "label distributions per example"),
}
DISTILLATION_FIELDS = ("temperature", "alpha_kd", "alpha_mlm", "alpha_task", "alpha_hidden", "hidden_loss",
                       "kd_positions",
                       "alpha_attention", "attention_loss", "alpha_intermediate", "intermediate_loss",
                       "alpha_relation", "relation_teacher_layer", "relation_heads", "layer_map",
                       "teacher_dtype", "teacher_model_name_or_path")
STRATEGY_NAMES = {
    "every_other": "every other layer",
    "distilbert": "DistilBERT's choice",
    "custom": "a custom selection",
}
# Display name per metric (keys without the "eval_" prefix), in table order.
METRIC_NAMES = {
    "loss": "Validation loss (weighted total)",
    "kd_loss": "KD loss (KL × T²)",
    "mlm_loss": "MLM loss",
    "task_loss": "Task loss (cross-entropy on the gold labels)",
    "hidden_loss": "Hidden-state alignment loss",
    "attention_loss": "Attention-map loss",
    "intermediate_loss": "Intermediate hidden-state loss",
    "relation_loss": "Self-attention relation loss",
    "perplexity": "Perplexity (exp of MLM loss)",
    "accuracy": "Masked-token accuracy",
    "teacher_agreement": "Top-1 agreement with the teacher",
    "f1": "Entity F1", "precision": "Entity precision", "recall": "Entity recall", "macro_f1": "Macro-F1",
}
# A task student's accuracy is over its labelled tokens or its examples, not masked tokens.
TASK_METRIC_NAMES = {TOKEN_CLASSIFICATION: {"accuracy": "Accuracy (labelled tokens)"},
                     SEQUENCE_CLASSIFICATION: {"accuracy": "Accuracy"}}
SKIPPED_METRICS = {"runtime", "samples_per_second", "steps_per_second", "epoch", "step", "total_flos",
                   "model_preparation_time"}


def _local_name(name: str) -> str:
    """Last component of a local path, so the card does not expose this machine's file layout."""
    return os.path.basename(os.path.normpath(name)) or name


def _weight(x) -> str:
    return str(float(x))


def _count(x) -> str:
    """A count of epochs etc.: 3.0 -> '3', 2.4999 -> '2.5'."""
    return f"{round(float(x), 2):g}"


def _ratio(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.2f}".rstrip("0").rstrip(".")


def _round_metric(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "item"):
        return value
    value = value.item() if hasattr(value, "item") else value
    return value if isinstance(value, int) else round(float(value), 4)


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + (", and " if len(items) > 2 else " and ") + items[-1]


def _adapter(model) -> tuple[str | None, int]:
    """(description of the peft adapter on `model`, its trainable parameter count), or (None, 0) without one."""
    if not (hasattr(model, "peft_config") and hasattr(model, "get_base_model")):
        return None, 0
    active = getattr(model, "active_adapters", None) or list(model.peft_config)
    config = model.peft_config[active[0]]
    kind = getattr(config.peft_type, "value", str(config.peft_type))
    if kind == "LORA":
        targets = config.target_modules
        targets = ", ".join(sorted(targets)) if isinstance(targets, (set, list, tuple)) else str(targets)
        description = f"LoRA adapter (rank {config.r}, alpha {config.lora_alpha}, on {targets})"
    else:
        description = f"{kind} adapter"
    trainable, _ = model.get_nb_trainable_parameters()
    return description, trainable


def _ffn_size(config):
    for name in ("intermediate_size", "hidden_dim", "ffn_dim"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    return None


def _architecture(config, n_params: int) -> str:
    hidden, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    embedding = getattr(config, "embedding_size", None) or hidden
    if embedding == hidden:
        text = f"In this model, the size of the hidden dimension and the embedding layer are both set to {hidden}."
    else:
        text = f"In this model, the hidden dimension is {hidden} and the embedding size is {embedding}."
    text += f" The vocabulary size is {vocab}. The number of transformer layers is {layers}"
    heads = getattr(config, "num_attention_heads", None)
    if heads:
        text += f", each with {heads} attention heads"
    ffn = _ffn_size(config)
    if ffn:
        text += f", and the expansion rate of the feed-forward layer is {_ratio(ffn / hidden)} ({ffn} units)"
    millions = n_params / 1e6
    size = f"{millions:.1f}" if millions >= 1 else f"{millions:.3g}"
    return text + f". Overall this model has around {size} million parameters ({n_params:,} in total)."


def _initialisation(config, teacher: str) -> str:
    layers = getattr(config, "distil_teacher_layers", None)
    strategy = getattr(config, "distil_layer_strategy", None)
    if getattr(config, "distil_init", None) == "random":
        shape = getattr(config, "distil_teacher_shape", None) or {}
        differs = ", ".join(f"{name.replace('_', ' ')} {config_value(config, name)} (teacher {shape[name]})"
                            for name in ("hidden_size", "intermediate_size", "num_attention_heads")
                            if name in shape and shape[name] != config_value(config, name))
        return (
            f"The student is narrower than {teacher} ({differs}), so no teacher weights fit it: it was randomly"
            " initialised (the teacher's architecture family and vocabulary, no copied weights) and learned from"
            " the teacher only through the training loss, as in TinyBERT's general distillation."
            f"{_attention_kinds_text(config)}"
        )
    if getattr(config, "distil_init", None) == "checkpoint":
        start = getattr(config, "distil_start_checkpoint", None)
        classifier = task_of_classes(getattr(config, "architectures", None)) not in (MASKED_LM, None)
        head = (" with a new classification head for the teacher's labels;" if classifier else ",")
        return (
            f"The student started from the existing checkpoint `{start}` (for example a general-distilled student),"
            f"{head} no weights were copied from {teacher}.{_attention_kinds_text(config, copied=False)}"
        )
    if not layers:
        return (
            "The student's config does not record which teacher layers initialised it (for example, it was"
            " started from an existing checkpoint rather than built from the teacher), so this card cannot say."
        )
    how = f" ({STRATEGY_NAMES.get(strategy, strategy)})" if strategy else ""
    classifier = task_of_classes(getattr(config, "architectures", None)) not in (MASKED_LM, None)
    head = "classification head (and labels)" if classifier else "masked-LM head"
    return (
        f"The student was initialised from {teacher}: its {len(layers)} transformer layers were copied from"
        f" the teacher's layers {', '.join(str(i) for i in layers)}{how}, counting from 0, and the embeddings"
        f" and {head} were copied whole.{_attention_kinds_text(config, layers)}"
    )


def _attention_kinds_text(config, teacher_layers=None, copied: bool = True) -> str:
    """For a family whose layers attend globally or within a local window (ModernBERT): which kind each student
    layer has (and which teacher layer it came from, when copied); empty for the others."""
    kinds = attention_kinds(config)
    if kinds is None:
        return ""
    window = getattr(config, "sliding_window", None)
    local = f"local, a window of ±{window} tokens" if window else "local"
    layers = [f"{i} ← teacher layer {teacher_layers[i]} ({'global' if kind == GLOBAL else local})"
              if teacher_layers else f"{i} ({'global' if kind == GLOBAL else local})" for i, kind in enumerate(kinds)]
    if not teacher_layers:
        return (" Its layers attend globally (over the whole sequence) or locally (within a window), following the"
                f" teacher's pattern{'' if copied else ' as the checkpoint has it'}: layer {'; '.join(layers)}.")
    text = (" Each layer keeps the attention kind it was trained with (global attention over the whole sequence,"
            f" or local attention within a window): student layer {'; '.join(layers)}.")
    if teacher_layers[0] != 0:
        text += (" The first layer of this architecture has no attention pre-norm, so student layer 0 was copied"
                 f" from teacher layer {teacher_layers[0]} without that norm's weights.")
    if 0 in teacher_layers[1:]:
        text += (f" Student layer {teacher_layers.index(0)} was copied from teacher layer 0, which has no attention"
                 " pre-norm: that norm started from its initialisation (weights 1).")
    return text


def _layer_map_text(args, plan) -> str:
    pairs = ", ".join(f"{s}→{t}" for s, t in plan.layer_pairs)
    how = "uniform, TinyBERT's mapping" if args.layer_map == "uniform" else "given explicitly"
    return f"{args.layer_map!r} ({how}: student layer → teacher layer {pairs})"


def _layer_terms(args, plan, projected: bool) -> list[tuple[str, str]]:
    """(description, formula part) of each active layer term, with the layers it compares."""
    if plan is None:
        return []
    out = []
    if args.alpha_attention > 0:
        kind = {"scores": "mean squared error of the scaled attention scores before the softmax (masked keys at 0,"
                          " TinyBERT's form)",
                "probs": "mean squared error of the attention probabilities",
                "kl": "KL divergence between the attention distributions"}[args.attention_loss]
        layers = ", ".join(f"{s}↔{t}" for s, t in plan.layer_pairs)
        out.append((f"the {kind}, head by head, of student↔teacher layers {layers} (weight "
                    f"{_weight(args.alpha_attention)})", f"{_weight(args.alpha_attention)} · attention"))
    if args.alpha_intermediate > 0:
        kind = "mean squared error" if args.intermediate_loss == "mse" else "cosine distance"
        states = ", ".join(f"{s}↔{t}" for s, t in plan.hidden_pairs)
        through = (" through learned linear projections from the student's width to the teacher's, one per hidden"
                   " state (trained with the student, not part of this model)" if projected else "")
        out.append((f"the {kind} of student↔teacher hidden states {states} (0 is the embedding output, i the"
                    f" output of layer i − 1){through} (weight {_weight(args.alpha_intermediate)})",
                    f"{_weight(args.alpha_intermediate)} · intermediate"))
    if args.alpha_relation > 0:
        s, t = plan.relation_pair
        out.append((f"MiniLM v2 self-attention relation distillation: the KL divergence between the teacher's and"
                    f" the student's query-query, key-key and value-value relations with {args.relation_heads}"
                    f" relation heads, student layer {s} against teacher layer {t} (weight"
                    f" {_weight(args.alpha_relation)})", f"{_weight(args.alpha_relation)} · relation"))
    return out


_KD_ROWS = {
    (MASKED_LM, "masked"): "on masked positions", (MASKED_LM, "all"): "on all non-padding positions",
    (TOKEN_CLASSIFICATION, "masked"): "on the labelled tokens (first sub-token of each word)",
    (TOKEN_CLASSIFICATION, "all"): "on all non-padding tokens",
    (SEQUENCE_CLASSIFICATION, "masked"): "on each labelled example",
    (SEQUENCE_CLASSIFICATION, "all"): "on each example",
}


def _procedure(args, plan=None, projected: bool = False, task: str | None = MASKED_LM) -> str:
    terms, formula = [], []
    task = task if task in PIPELINES else MASKED_LM
    if args.alpha_kd > 0:
        terms.append(
            f"KL divergence between the teacher's and student's {PIPELINES[task][2]} at temperature"
            f" {_weight(args.temperature)} {_KD_ROWS[task, args.kd_positions]} (weight {_weight(args.alpha_kd)})"
        )
        formula.append(f"{_weight(args.alpha_kd)} · T² · KL")
    if task == MASKED_LM and args.alpha_mlm > 0:
        terms.append(f"the student's masked-LM loss (weight {_weight(args.alpha_mlm)})")
        formula.append(f"{_weight(args.alpha_mlm)} · MLM")
    task_weight = 1.0 if args.alpha_task is None else args.alpha_task
    if task != MASKED_LM and task_weight > 0:
        terms.append(f"the student's cross-entropy on the gold labels (weight {_weight(task_weight)})")
        formula.append(f"{_weight(task_weight)} · CE")
    if args.alpha_hidden > 0:
        kind = "cosine alignment" if args.hidden_loss == "cosine" else "mean-squared-error alignment"
        terms.append(f"a {kind} of the last hidden states (weight {_weight(args.alpha_hidden)})")
        formula.append(f"{_weight(args.alpha_hidden)} · hidden")
    for term, formula_name in _layer_terms(args, plan, projected):
        terms.append(term)
        formula.append(formula_name)
    lead = "a weighted sum of " if len(terms) > 1 else ""
    text = f"The training loss is {lead}{_join(terms)}: loss = {' + '.join(formula)}."
    if plan is not None and plan.layer_pairs:
        text += f" Layers count from 0; the layer map was {_layer_map_text(args, plan)}."
    if task != MASKED_LM and task_weight == 0:
        text += (" The gold labels were not part of the loss (alpha_task = 0): the student learned the task from the"
                 " teacher's label distributions alone.")
    if task == MASKED_LM and args.alpha_kd == 0 and args.alpha_mlm == 0:
        text += (" No term trained the masked-LM head (alpha_kd = alpha_mlm = 0), so its fill-mask predictions are not"
                 " meaningful: use this model as an encoder to fine-tune.")
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
    names = {**METRIC_NAMES, **TASK_METRIC_NAMES.get(task, {})}
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
    return [rows[k] for k in METRIC_NAMES if k in rows] + rest


def _last_training_log(log_history: list[dict] | None) -> str | None:
    entries = [e for e in (log_history or []) if "loss" in e and "step" in e]
    if not entries:
        return None
    last = entries[-1]
    parts = [f"{TERM_LABELS[t]} {_round_metric(last[t])}" for t in LOSS_TERMS if t in last]
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
    pipeline, task_name, _ = PIPELINES[task]
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
    missing = [f for f in DISTILLATION_FIELDS if not hasattr(args, f)]
    if missing:
        raise TypeError(f"build_model_card needs DistillationArguments; args lacks {', '.join(missing)}.")
    facts = dataclasses.replace(facts or CardFacts(), **fact_fields)
    base = unwrap(model)
    task = model_task(base) if model_task(base) in PIPELINES else MASKED_LM
    adapter, adapter_params = _adapter(model)
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
        license=facts.license,
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
        initialisation=_initialisation(base.config, teacher_display),
        architecture=_architecture(base.config, n_params),
        metric_rows=_metrics_rows(metrics, task),
        last_training_log=_last_training_log(log_history),
        plot_file=plot_file,
        hyperparameters=_hyperparameters(args, total_train_batch_size, world_size),
        teacher=teacher_display,
        data_use_note=facts.data_use_note,
        task_model=None if task == MASKED_LM else _task_model_text(base.config, task),
    )
    validate_model_card(card)
    return card
