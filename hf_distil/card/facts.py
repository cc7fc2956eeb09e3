"""What the model card cannot learn from the model, the arguments or the run: the facts the caller supplies.

The recipe fills them from what its data loader resolved and hands them to `DistillationTrainer(card_facts=...)`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

DEFAULT_LICENSE = "apache-2.0"
DEFAULT_LANGUAGE = "en"


@dataclass(frozen=True)
class CardFacts:
    """The corpus, its terms of use, and the card's licence, language(s) and extra tags.

    Only names go in, never text of the corpus: `dataset_name` is shown in the card (a local path is cut to its last
    component), `dataset_ids` are Hub dataset ids for the front matter, `data_use_note` becomes the "Data use" section,
    `training_examples` says what one training example was (e.g. "whole notes packed into blocks of up to 8,192
    tokens"), after the data loader capped the length at what the model accepts. `license` unset: the licence follows
    the data (`card_license`).
    """

    dataset_name: str | None = None
    dataset_ids: list[str] | None = None
    data_use_note: str | None = None
    license: str | None = None
    language: list[str] | str = DEFAULT_LANGUAGE
    extra_tags: list[str] | None = None
    training_examples: str | None = None

    def overridden_by(self, *, language=None, license=None, tags=None, dataset=None) -> CardFacts:
        """These facts with the arguments of `Trainer.create_model_card` taking precedence where given.

        `dataset` (an id or a list of ids) replaces the ids and, when no dataset name is known, names the dataset.
        """
        dataset_ids = [dataset] if isinstance(dataset, str) else dataset
        extra_tags = [tags] if isinstance(tags, str) else list(tags or self.extra_tags or [])
        return dataclasses.replace(
            self,
            dataset_name=self.dataset_name or (dataset_ids[0] if dataset_ids else None),
            dataset_ids=dataset_ids or self.dataset_ids,
            license=license or self.license,
            language=language or self.language or DEFAULT_LANGUAGE,
            extra_tags=extra_tags or None,
        )

    @property
    def card_license(self) -> str:
        """The licence the card states: the one given, else "other" for a corpus with a data-use note (MIMIC-III: a
        model trained on it may only be shared as its agreement permits, so no open licence is implied), else
        apache-2.0."""
        if self.license:
            return self.license
        return "other" if self.data_use_note else DEFAULT_LICENSE
