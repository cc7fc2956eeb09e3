"""Accuracy and macro-F1 for (sentence or sentence-pair) classification, shipped for offline use.

Load it by path: ``evaluate.load(".../classification/classification.py")``.
"""

import datasets
import evaluate
from sklearn.metrics import accuracy_score, f1_score

_DESCRIPTION = "Accuracy and macro-averaged F1 of integer class predictions (scikit-learn)."
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted class ids.
    references: list of gold class ids.
    labels: the class ids to average F1 over; default: those present in references or predictions.
Returns:
    accuracy: fraction of predictions equal to the reference.
    macro_f1: unweighted mean of the per-class F1 (a class never predicted scores 0).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Classification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, labels=None):
        return {
            "accuracy": float(accuracy_score(references, predictions)),
            "macro_f1": float(f1_score(references, predictions, labels=labels, average="macro", zero_division=0)),
        }
