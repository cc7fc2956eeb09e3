"""Fine-tuning metrics: the metric modules shipped in hf_distil/metrics/ (loaded offline) and `compute_metrics`."""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent.parent / "metrics"


def load_metric(name: str):
    """A metric module shipped in hf_distil/metrics/<name>/<name>.py, loaded by path (works offline)."""
    import evaluate

    path = METRICS_DIR / name / f"{name}.py"
    if not path.is_file():
        available = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"no shipped metric {name!r}; available: {', '.join(available)}.")
    return evaluate.load(str(path), keep_in_memory=True)


def argmax_logits(logits, labels):
    """`preprocess_logits_for_metrics`: keep only the predicted class ids, not the logits, across evaluation."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def build_compute_metrics(task: str, label_list: list[str]):
    """``compute_metrics`` for ``Trainer``: entity P/R/F1 (NER) or accuracy + macro-F1 (classification).

    Expects predictions already reduced to class ids (see ``preprocess_logits_for_metrics``).
    """
    metric = load_metric("seqeval_entities" if task == "ner" else "classification")

    def compute_metrics(prediction) -> dict[str, float]:
        preds, labels = prediction.predictions, prediction.label_ids
        if isinstance(preds, tuple):
            preds = preds[0]
        if task != "ner":
            return metric.compute(predictions=preds.reshape(-1).tolist(), references=labels.reshape(-1).tolist())
        predictions, references = [], []
        for pred_row, label_row in zip(preds, labels):
            keep = label_row != -100
            predictions.append([label_list[i] for i in pred_row[keep]])
            references.append([label_list[i] for i in label_row[keep]])
        return metric.compute(predictions=predictions, references=references)

    return compute_metrics

