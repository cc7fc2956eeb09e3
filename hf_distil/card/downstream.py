"""Downstream fine-tuning results as Markdown: the results table and summary shared by `comparison.md` and a model
card, and the patch that adds them (with `model-index` eval results) to a saved card's "Downstream evaluation".

Results are duck-typed `hf_distil.finetune.FinetuneResult`s; this module does not import the fine-tuning package.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch

from .validate import validate_saved_card

# Per fine-tuning task: (Hub task type, task name, [(metric key, label)] with the main metric first).
TASK_INFO = {
    "ner": ("token-classification", "Named-entity recognition",
            [("f1", "entity F1"), ("precision", "precision"), ("recall", "recall")]),
    "classification": ("text-classification", "Text classification",
                       [("accuracy", "accuracy"), ("macro_f1", "macro-F1")]),
}
SECTION = "## Downstream evaluation"


def _fmt_int(n: int) -> str:
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n:,d}"


def results_table(results: list, first_label: str | None = None) -> str:
    """Markdown table: the task metrics, parameters, trainable parameters and inference tokens/s per model."""
    columns = TASK_INFO[results[0].task][2]
    header = ["model", *(label for _, label in columns), "parameters", "trained parameters", "inference tokens/s"]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for i, r in enumerate(results):
        name = first_label if (i == 0 and first_label) else f"`{r.name}`"
        if r.lora:
            name += f" (LoRA r={r.lora['r']})"
        speed = f"{r.tokens_per_second:,.0f}" if math.isfinite(r.tokens_per_second) else "not measured (ZeRO-3)"
        cells = [name, *(f"{r.metrics.get(key, float('nan')):.4f}" for key, _ in columns),
                 _fmt_int(r.parameters), _fmt_int(r.trainable_parameters), speed]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_summary(results: list) -> str:
    """One sentence: the first model's main metric, size and speed relative to the second."""
    first, second = results[0], results[1]
    key, label = TASK_INFO[first.task][2][0]
    if second.metrics.get(key):
        quality = f"reaches {100 * first.metrics[key] / second.metrics[key]:.1f} % of `{second.name}`'s {label}"
    else:
        quality = f"scores {label} {first.metrics[key]:.4f} against {second.metrics[key]:.4f} for `{second.name}`"
    speed = first.tokens_per_second / second.tokens_per_second
    return (f"`{first.name}` {quality} with {first.parameters / second.parameters:.2f}x the parameters"
            + (f" and {speed:.2f}x the inference speed." if math.isfinite(speed) else "."))


def device_note() -> str:
    """The machine the inference speed was measured on, in words."""
    if torch.cuda.is_available():
        return f"GPU ({torch.cuda.get_device_name(0)})"
    return f"CPU ({torch.get_num_threads()} threads)"


FINETUNE_INTRO = ("Fine-tuned on downstream tasks with `recipes/run_finetune.py` (hf-distil); "
                  "metrics on the split named in each heading.")


def replace_section(text: str, heading: str, body: str, intro: str = FINETUNE_INTRO) -> str:
    """Replace (or append) the '### heading' block inside the '## Downstream evaluation' section; `intro` opens a
    new section."""
    block = f"{heading}\n\n{body.strip()}\n"
    match = re.search(rf"^{re.escape(SECTION)}[ \t]*$", text, flags=re.M)
    if match is None:
        return text.rstrip("\n") + f"\n\n{SECTION}\n\n{intro}\n\n{block}"
    end_match = re.compile(r"^#{1,2} ", flags=re.M).search(text, match.end())
    end = end_match.start() if end_match else len(text)
    section = text[match.end():end]
    sub = re.search(rf"^{re.escape(heading)}[ \t]*$", section, flags=re.M)
    if sub:
        next_sub = re.compile(r"^### ", flags=re.M).search(section, sub.end())
        stop = next_sub.start() if next_sub else len(section)
        section = section[:sub.start()] + block + ("\n" if next_sub else "") + section[stop:]
    else:
        section = section.rstrip("\n") + f"\n\n{block}"
    tail = text[end:]
    return text[:match.end()] + section + ("\n" + tail if tail else "")


def update_model_card(folder: str | os.PathLike, results: list, dataset_name: str, intro: str = FINETUNE_INTRO,
                      summary: str | None = None):
    """Add the first result to ``folder/README.md``: ``model-index`` eval results and a table row.

    Results for the same task, dataset, split and metric are replaced, others kept; the other
    results (e.g. the teacher) appear in the table for context. `intro` opens a new "Downstream evaluation"
    section; `summary` replaces the sentence under the table. Returns the re-loaded, validated card.
    """
    from huggingface_hub import EvalResult, ModelCard

    readme = Path(folder) / "README.md"
    if not readme.is_file():
        # Imported here: the fine-tuning package imports this module, so a top-level import would be circular.
        from ..finetune.errors import FinetuneFileNotFoundError

        raise FinetuneFileNotFoundError(
            f"{readme} does not exist; --update_card takes the folder of a saved model that has a model card."
        )
    card = ModelCard.load(readme)
    first = results[0]
    task_type, task_name, columns = TASK_INFO[first.task]
    dataset_type = re.sub(r"[^A-Za-z0-9_.\-]+", "-", dataset_name).strip("-").lower() or "dataset"
    new = [
        EvalResult(
            task_type=task_type, task_name=task_name, dataset_type=dataset_type, dataset_name=dataset_name,
            dataset_split=first.split, metric_type="f1" if key.endswith("f1") else key,
            metric_name=label if first.task == "classification" else f"{label} (seqeval)",
            metric_value=round(float(first.metrics[key]), 4),
            metric_args={"average": "macro"} if key == "macro_f1" else None,
        )
        for key, label in columns
    ]

    def same(a, b):
        return (a.task_type, a.dataset_type, a.dataset_name, a.dataset_split, a.metric_type, a.metric_name) == (
            b.task_type, b.dataset_type, b.dataset_name, b.dataset_split, b.metric_type, b.metric_name)

    kept = [old for old in (card.data.eval_results or []) if not any(same(old, n) for n in new)]
    card.data.eval_results = kept + new
    card.data.model_name = card.data.model_name or Path(folder).resolve().name
    heading = f"### {dataset_name}: {task_name.lower()} ({first.split} split)"
    table = results_table(results, first_label="**this model**")
    note = (summary or comparison_summary(results)) + "\n\n" if len(results) > 1 else ""
    newline = "\r\n" if "\r\n" in card.text else "\n"  # keep the card's own line endings
    text = replace_section(
        card.text.replace("\r\n", "\n"), heading,
        f"{table}\n\n{note}Inference tokens/s measured on {device_note()}; entity metrics with seqeval "
        "(conlleval-compatible), classification metrics with scikit-learn.", intro,
    )
    card.text = text.replace("\n", newline)
    card.save(readme)
    return validate_saved_card(readme)
