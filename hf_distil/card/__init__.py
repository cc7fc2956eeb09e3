"""Model cards: render the distilled student's card, patch a card with downstream results, and check both offline.

- `facts`: what the caller tells the card (`CardFacts`: corpus name and ids, data-use note, licence, language, tags)
- `render`: the distilled student's card from the model, the arguments and the run (`build_model_card`)
- `plot`: the loss-terms PNG the card links to
- `downstream`: fine-tuning results as Markdown, and the "Downstream evaluation" patch of a saved card
- `validate`: offline metadata checks of a rendered and of a patched card
"""

from .downstream import comparison_summary, device_note, results_table, update_model_card
from .facts import DEFAULT_LANGUAGE, DEFAULT_LICENSE, CardFacts
from .plot import loss_keys, plot_loss_terms
from .render import (
    BASE_TAGS,
    DISTILLATION_FIELDS,
    SKIPPED_METRICS,
    TEMPLATE_NAME,
    build_model_card,
    metric_names,
)
from .student import STRATEGY_NAMES
from .validate import LANGUAGE_RE, LICENSE_RE, validate_model_card, validate_saved_card
from .write import write_card

__all__ = [
    "BASE_TAGS", "DEFAULT_LANGUAGE", "DEFAULT_LICENSE", "DISTILLATION_FIELDS", "LANGUAGE_RE", "LICENSE_RE",
    "SKIPPED_METRICS", "STRATEGY_NAMES", "TEMPLATE_NAME", "CardFacts", "build_model_card", "comparison_summary",
    "device_note", "loss_keys", "metric_names", "plot_loss_terms", "results_table", "update_model_card",
    "validate_model_card", "validate_saved_card", "write_card",
]
