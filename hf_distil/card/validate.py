"""Offline checks of model cards: a rendered card's metadata, and a saved card after its results were patched.

`RepoCard.validate` posts to the Hub's /api/validate-yaml, so it needs the network; these need none.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from huggingface_hub import ModelCard
from huggingface_hub.utils import HFValidationError, validate_repo_id

LANGUAGE_RE = re.compile(r"^([a-z]{2,3}(-[A-Za-z0-9]{2,8})*|code|multilingual)$")
LICENSE_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")


def is_dataset_id(name: str | None) -> bool:
    """A Hub dataset id (`name` or `owner/name`), not a local file or folder."""
    if not name or os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def is_hub_id(name: str | None) -> bool:
    """`owner/name` that the Hub would accept and that is not a folder on this machine."""
    return bool(name) and name.count("/") == 1 and is_dataset_id(name)


def validate_model_card(card: ModelCard) -> None:
    """Offline check of the card's metadata, as close to the Hub's as can be done without the network.

    Re-parses the rendered text strictly with huggingface_hub's own parser (which rebuilds
    `model-index` into `EvalResult`s and rejects a malformed one), checks that the metadata survives
    the round trip unchanged, and checks ids, language codes and licence shape.
    """
    data = ModelCard(str(card), ignore_metadata_errors=False).data
    if data.to_dict() != card.data.to_dict():
        raise ValueError("the card's metadata changes when written and read back; check the values passed in.")
    for name in ([data.base_model] if isinstance(data.base_model, str) else data.base_model or []):
        if not is_hub_id(name):
            raise ValueError(f"base_model {name!r} is not a Hub model id (owner/name); leave it unset if local.")
    for name in [data.datasets] if isinstance(data.datasets, str) else data.datasets or []:
        if not is_dataset_id(name):
            raise ValueError(f"datasets entry {name!r} is not a Hub dataset id; pass only Hub ids in dataset_ids.")
    for code in [data.language] if isinstance(data.language, str) else data.language or []:
        if not LANGUAGE_RE.match(code):
            raise ValueError(f"language {code!r} is not an ISO 639 code (e.g. 'en'); fix the language argument.")
    if data.license and not LICENSE_RE.match(data.license):
        raise ValueError(f"license {data.license!r} is not a Hub licence id (e.g. 'apache-2.0'); fix the license.")


def validate_saved_card(path: str | os.PathLike) -> ModelCard:
    """Offline check of a saved card: it re-loads strictly and its model-index parses back to eval results.

    Lighter than `validate_model_card`: a card patched with downstream results may be anyone's card, so only what
    the patch wrote is checked. Returns the re-loaded card.
    """
    import yaml
    from huggingface_hub.repocard import REGEX_YAML_BLOCK
    from huggingface_hub.repocard_data import model_index_to_eval_results

    card = ModelCard.load(path, ignore_metadata_errors=False)
    match = REGEX_YAML_BLOCK.search(Path(path).read_text(encoding="utf-8"))
    metadata = yaml.safe_load(match.group(2)) if match else {}
    if "model-index" in metadata:
        name, results = model_index_to_eval_results(metadata["model-index"])
        if name != card.data.model_name or len(results) != len(card.data.eval_results or []):
            raise ValueError(f"{path}: model-index does not round-trip; fix or remove it and re-run.")
    return card
