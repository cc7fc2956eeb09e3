"""Render a Hub-ready model card for a distilled student from `model_card/distilled_model_card.md`.

Every number in the card is read from the student, its config, the arguments and the run's
metrics; nothing about the training corpus except its name goes in.
"""

from __future__ import annotations

import logging
import math
import os
import re
from importlib.resources import files

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

logger = logging.getLogger(__name__)

TEMPLATE_NAME = "distilled_model_card.md"
BASE_TAGS = ["distillation", "knowledge-distillation", "fill-mask", "clinical", "biomedical"]
DISTILLATION_FIELDS = ("temperature", "alpha_kd", "alpha_mlm", "alpha_hidden", "hidden_loss", "kd_positions",
                       "teacher_dtype", "teacher_model_name_or_path")
LOSS_TERMS = ("loss", "kd_loss", "mlm_loss", "hidden_loss")
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
    "hidden_loss": "Hidden-state alignment loss",
    "perplexity": "Perplexity (exp of MLM loss)",
    "accuracy": "Masked-token accuracy",
    "teacher_agreement": "Top-1 agreement with the teacher",
}
SKIPPED_METRICS = {"runtime", "samples_per_second", "steps_per_second", "epoch", "step", "total_flos",
                   "model_preparation_time"}
LANGUAGE_RE = re.compile(r"^([a-z]{2,3}(-[A-Za-z0-9]{2,8})*|code|multilingual)$")
LICENSE_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")


def _is_dataset_id(name: str | None) -> bool:
    """A Hub dataset id (`name` or `owner/name`), not a local file or folder."""
    if not name or os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _is_hub_id(name: str | None) -> bool:
    """`owner/name` that the Hub would accept and that is not a folder on this machine."""
    return bool(name) and name.count("/") == 1 and _is_dataset_id(name)


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


def _unwrap_peft(model):
    """Return (base transformers model, adapter description or None, adapter parameter count)."""
    if not (hasattr(model, "peft_config") and hasattr(model, "get_base_model")):
        return model, None, 0
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
    return model.get_base_model(), description, trainable


def _base_parameter_count(model, is_peft: bool) -> int:
    """Unique parameters of the transformers model, leaving out injected adapter weights."""
    if not is_peft and hasattr(model, "num_parameters"):
        return model.num_parameters()
    skip = ("lora_", "modules_to_save.")
    return sum(p.numel() for n, p in model.named_parameters() if not any(s in n for s in skip))


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
    if not layers:
        return (
            "The student's config does not record which teacher layers initialised it (for example, it was"
            " started from an existing checkpoint rather than built from the teacher), so this card cannot say."
        )
    how = f" ({STRATEGY_NAMES.get(strategy, strategy)})" if strategy else ""
    return (
        f"The student was initialised from {teacher}: its {len(layers)} transformer layers were copied from"
        f" the teacher's layers {', '.join(str(i) for i in layers)}{how}, counting from 0, and the embeddings"
        " and masked-LM head were copied whole."
    )


def _procedure(args) -> str:
    terms, formula = [], []
    if args.alpha_kd > 0:
        where = "on masked positions" if args.kd_positions == "masked" else "on all non-padding positions"
        terms.append(
            "KL divergence between the teacher's and student's masked-LM output distributions at temperature"
            f" {_weight(args.temperature)} {where} (weight {_weight(args.alpha_kd)})"
        )
        formula.append(f"{_weight(args.alpha_kd)} · T² · KL")
    if args.alpha_mlm > 0:
        terms.append(f"the student's masked-LM loss (weight {_weight(args.alpha_mlm)})")
        formula.append(f"{_weight(args.alpha_mlm)} · MLM")
    if args.alpha_hidden > 0:
        kind = "cosine alignment" if args.hidden_loss == "cosine" else "mean-squared-error alignment"
        terms.append(f"a {kind} of the last hidden states (weight {_weight(args.alpha_hidden)})")
        formula.append(f"{_weight(args.alpha_hidden)} · hidden")
    lead = "a weighted sum of " if len(terms) > 1 else ""
    text = f"The training loss is {lead}{_join(terms)}: loss = {' + '.join(formula)}."
    if args.alpha_kd > 0 or args.alpha_hidden > 0:
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


def _metrics_rows(metrics: dict | None) -> list[tuple[str, object]]:
    rows, rest = {}, []
    for key, value in (metrics or {}).items():
        short = key.removeprefix("eval_")
        if short in SKIPPED_METRICS or "memory" in short or "flos" in short:
            continue
        if short in METRIC_NAMES:
            rows[short] = (METRIC_NAMES[short], _round_metric(value))
        else:
            rest.append((short.replace("_", " ").capitalize(), _round_metric(value)))
    return [rows[k] for k in METRIC_NAMES if k in rows] + rest


def _last_training_log(log_history: list[dict] | None) -> str | None:
    entries = [e for e in (log_history or []) if "loss" in e and "step" in e]
    if not entries:
        return None
    last = entries[-1]
    labels = {"loss": "total", "kd_loss": "KD", "mlm_loss": "MLM", "hidden_loss": "hidden"}
    parts = [f"{labels[t]} {_round_metric(last[t])}" for t in LOSS_TERMS if t in last]
    return f"At the last logged training step ({last['step']}) the losses were: {', '.join(parts)}."


def plot_loss_terms(log_history: list[dict], path: str) -> bool:
    """Save a PNG of the logged training loss terms (and eval loss) against the step; True when written."""
    series = {
        term: [(e["step"], float(e[term])) for e in log_history if term in e and "step" in e]
        for term in LOSS_TERMS
    }
    if not any(series.values()):
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)  # Agg without touching pyplot's global backend
    ax = fig.add_subplot()
    labels = {"loss": "total (weighted)", "kd_loss": "KD", "mlm_loss": "MLM", "hidden_loss": "hidden"}
    series["eval_loss"] = [(e["step"], float(e["eval_loss"])) for e in log_history if "eval_loss" in e and "step" in e]
    for term, points in series.items():
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, "o" if term == "eval_loss" else "-", label=labels.get(term, "eval total"))
    # The weighted total dwarfs the single terms: a log axis keeps all of them readable.
    if all(v > 0 for points in series.values() for _, v in points):
        ax.set_yscale("log")
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("loss (terms unweighted)")
    ax.set_title("Distillation loss terms")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png")
    return True


def _eval_results(metrics: dict | None, dataset_type: str, dataset_name: str) -> list[EvalResult]:
    results = []
    for key, metric_type, pretty in (("eval_perplexity", "perplexity", "Perplexity"),
                                     ("eval_accuracy", "accuracy", "Masked-token accuracy")):
        value = (metrics or {}).get(key)
        if value is not None and math.isfinite(float(value)):
            results.append(EvalResult(
                task_type="fill-mask", task_name="Masked Language Modeling",
                dataset_type=dataset_type, dataset_name=dataset_name,
                metric_type=metric_type, metric_name=pretty, metric_value=_round_metric(value),
            ))
    return results


def validate_model_card(card: ModelCard) -> None:
    """Offline check of the card's metadata, as close to the Hub's as can be done without the network.

    Re-parses the rendered text strictly with huggingface_hub's own parser (which rebuilds
    `model-index` into `EvalResult`s and rejects a malformed one), checks that the metadata survives
    the round trip unchanged, and checks ids, language codes and licence shape.
    `RepoCard.validate` posts to the Hub's /api/validate-yaml, so it needs the network.
    """
    data = ModelCard(str(card), ignore_metadata_errors=False).data
    if data.to_dict() != card.data.to_dict():
        raise ValueError("the card's metadata changes when written and read back; check the values passed in.")
    for name in ([data.base_model] if isinstance(data.base_model, str) else data.base_model or []):
        if not _is_hub_id(name):
            raise ValueError(f"base_model {name!r} is not a Hub model id (owner/name); leave it unset if local.")
    for name in [data.datasets] if isinstance(data.datasets, str) else data.datasets or []:
        if not _is_dataset_id(name):
            raise ValueError(f"datasets entry {name!r} is not a Hub dataset id; pass only Hub ids in dataset_ids.")
    for code in [data.language] if isinstance(data.language, str) else data.language or []:
        if not LANGUAGE_RE.match(code):
            raise ValueError(f"language {code!r} is not an ISO 639 code (e.g. 'en'); fix the language argument.")
    if data.license and not LICENSE_RE.match(data.license):
        raise ValueError(f"license {data.license!r} is not a Hub licence id (e.g. 'apache-2.0'); fix the license.")


def _teacher(name: str | None) -> tuple[str, str | None]:
    """(how the card names the teacher, front-matter base_model): links and base_model only for Hub ids."""
    if name is None:
        return "an unrecorded teacher", None
    if _is_hub_id(name):
        return f"the [{name}](https://huggingface.co/{name}) model", name
    return f"the local model `{_local_name(name)}`", None


def _dataset(name: str | None, ids: list[str] | None) -> tuple[str | None, str, list[str]]:
    """(display name, phrase for the description, valid Hub dataset ids for the front matter)."""
    valid = [d for d in ids or [] if _is_dataset_id(d)]
    if len(valid) < len(ids or []):
        logger.warning("Model card: dropped dataset ids that are not Hub ids: %s", sorted(set(ids) - set(valid)))
    if name and os.path.exists(name):
        name = _local_name(name)
    if name and "/" in name and _is_dataset_id(name):
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
    dataset_name: str | None = None,
    dataset_ids: list[str] | None = None,
    metrics: dict | None = None,
    log_history: list[dict] | None = None,
    epochs_completed: float | None = None,
    license: str = "apache-2.0",
    language: list[str] | str = "en",
    extra_tags: list[str] | None = None,
    data_use_note: str | None = None,
    plot_path: str | None = None,
    model_name: str | None = None,
) -> ModelCard:
    """Build the student's card (front matter + body) from the model, the arguments and the run's results.

    `plot_path` should lie in the folder the card is saved to: the card links the image by file name.
    """
    missing = [f for f in DISTILLATION_FIELDS if not hasattr(args, f)]
    if missing:
        raise TypeError(f"build_model_card needs DistillationArguments; args lacks {', '.join(missing)}.")
    base, adapter, adapter_params = _unwrap_peft(model)
    teacher_display, base_model = _teacher(teacher_name if teacher_name is not None
                                           else args.teacher_model_name_or_path)
    dataset_name, dataset_display, dataset_ids = _dataset(dataset_name, dataset_ids)
    model_name = model_name or _default_model_name(args)
    if total_train_batch_size is None:
        total_train_batch_size = args.per_device_train_batch_size * world_size * args.gradient_accumulation_steps

    description = (
        f"{model_name} is a distilled version of {teacher_display}, distilled for"
        f" {_run_length(args, epochs_completed)} using a total batch size of {total_train_batch_size}"
        f" on {dataset_display}."
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
    eval_results = _eval_results(metrics, dataset_type, dataset_name or dataset_type)
    adapter_tags = ["peft", "lora"] if adapter and adapter.startswith("LoRA") else []
    tags = list(dict.fromkeys(BASE_TAGS + adapter_tags + list(extra_tags or [])))
    card_data = ModelCardData(
        library_name="peft" if adapter else "transformers",
        pipeline_tag="fill-mask",
        base_model=base_model,
        tags=tags,
        language=language,
        license=license,
        datasets=dataset_ids or None,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )
    template = files("hf_distil.model_card").joinpath(TEMPLATE_NAME).read_text(encoding="utf-8")
    card = ModelCard.from_template(
        card_data,
        template_str=template,
        title=model_name,
        description=description,
        procedure=_procedure(args),
        initialisation=_initialisation(base.config, teacher_display),
        architecture=_architecture(base.config, _base_parameter_count(base, adapter is not None)),
        metric_rows=_metrics_rows(metrics),
        last_training_log=_last_training_log(log_history),
        plot_file=plot_file,
        hyperparameters=_hyperparameters(args, total_train_batch_size, world_size),
        teacher=teacher_display,
        data_use_note=data_use_note,
    )
    validate_model_card(card)
    return card
