"""Entity-level precision / recall / F1 for BIO-tagged sequences (seqeval), shipped for offline use.

Same numbers as the Hub's `seqeval` metric, but flat keys so `Trainer` can log them:
`precision`, `recall`, `f1` (micro over entities), `accuracy` (per token), and
`<TYPE>_precision`, `<TYPE>_recall`, `<TYPE>_f1`, `<TYPE>_number` for each entity type.
Load it by path: ``evaluate.load(".../seqeval_entities/seqeval_entities.py")``.
"""

import datasets
import evaluate
from seqeval.metrics import accuracy_score, classification_report

_DESCRIPTION = "Entity-level precision, recall and F1 of BIO-tagged sequences, computed with seqeval."
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of tag sequences (e.g. [["B-PROBLEM", "I-PROBLEM", "O"]]).
    references: list of gold tag sequences, same lengths as predictions.
    mode: None (default, conlleval-compatible: a stray I- tag opens an entity) or "strict".
    scheme: tagging scheme for mode="strict": "IOB2" (default), "IOE2", "IOBES", "BILOU".
    zero_division: value for a precision/recall whose denominator is 0 (default 0).
Returns:
    precision, recall, f1 (micro over entities), accuracy (per token), and per-type
    <TYPE>_precision, <TYPE>_recall, <TYPE>_f1, <TYPE>_number (gold entity count).
"""
_CITATION = """@misc{seqeval, title={seqeval: A Python framework for sequence labeling evaluation},
author={Hiroki Nakayama}, year={2018}, url={https://github.com/chakki-works/seqeval}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SeqevalEntities(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("string")),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions, references, mode=None, scheme=None, zero_division=0):
        strict = {}
        if mode == "strict":
            from seqeval import scheme as schemes

            strict = {"mode": "strict", "scheme": getattr(schemes, scheme or "IOB2")}
        report = classification_report(
            y_true=references, y_pred=predictions, output_dict=True, zero_division=zero_division, **strict
        )
        overall = report.pop("micro avg")
        for key in ("macro avg", "weighted avg"):
            report.pop(key, None)
        scores = {
            "precision": float(overall["precision"]),
            "recall": float(overall["recall"]),
            "f1": float(overall["f1-score"]),
            "accuracy": float(accuracy_score(y_true=references, y_pred=predictions)),
        }
        for entity_type, values in sorted(report.items()):
            scores[f"{entity_type}_precision"] = float(values["precision"])
            scores[f"{entity_type}_recall"] = float(values["recall"])
            scores[f"{entity_type}_f1"] = float(values["f1-score"])
            scores[f"{entity_type}_number"] = int(values["support"])
        return scores
