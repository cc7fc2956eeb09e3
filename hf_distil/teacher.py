"""Loading and checking the teacher: a masked LM, or a fine-tuned token / sequence classifier, from a folder or the
Hub; what a user can fix is one line (hf_distil.errors). Freezing, casting and placing it is the trainer's
(DistillationTrainer._prepare_teacher, with hf_distil.engines per engine).
"""

from __future__ import annotations

import json
import os

from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PreTrainedModel,
)

from .errors import ModelMismatchError, TeacherLoadError, TeacherNotFoundError
from .families import SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION, task_of_classes


def load_teacher(name_or_path: str, args, **kwargs) -> PreTrainedModel:
    """Load a teacher from a local folder or the Hub: a masked LM, or, when its config.json names a token- or
    sequence-classification architecture (a fine-tuned model), that task model. What a user can fix raises
    TeacherLoadError (one line).

    Remote code runs only with trust_remote_code=True passed in: transformers would otherwise prompt on stdin.
    """
    kwargs.setdefault("trust_remote_code", False)
    if os.path.isdir(name_or_path):
        task = _check_teacher_folder(name_or_path)
    else:
        task = _hub_teacher_task(name_or_path, kwargs)
    auto = _TASK_AUTO_CLASSES.get(task, AutoModelForMaskedLM)
    kwargs.setdefault("dtype", args.teacher_torch_dtype)
    try:
        model, info = auto.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    except OSError as err:
        where = "a local folder" if os.path.isdir(name_or_path) else "a local path or a Hub id reachable from here"
        kind = "a masked LM" if auto is AutoModelForMaskedLM else "a fine-tuned classifier"
        raise TeacherNotFoundError(
            f"Teacher {name_or_path!r} could not be loaded ({type(err).__name__}: {_first_line(err)}): "
            f"pass {where} holding config.json and weights of {kind} (offline: HF_HUB_OFFLINE=1 needs it cached)."
        ) from err
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise TeacherLoadError(
                f"Teacher {name_or_path!r} needs code from its repository to load (auto_map in its config.json): "
                "pass --trust_remote_code true if you trust that code, or use a teacher that transformers supports."
            ) from err
        if "Unrecognized configuration class" not in str(err) and "AutoModelForMaskedLM" not in str(err):
            raise  # not the "no masked-LM class for this config" case: a bug keeps its traceback
        raise TeacherLoadError(
            f"Teacher {name_or_path!r} is not a masked-language model ({_first_line(err)}); the KL term needs "
            "an AutoModelForMaskedLM checkpoint (e.g. a BERT or RoBERTa *ForMaskedLM)."
        ) from err
    except RuntimeError as err:
        if "size mismatch" not in str(err) and "ignore_mismatched_sizes" not in str(err):
            raise
        raise TeacherLoadError(
            f"Teacher {name_or_path!r}: its config.json and its weights disagree in shape (see the load report "
            "above): restore the config.json that belongs to these weights."
        ) from err
    check_complete(model, info["missing_keys"], name_or_path)
    return model


def check_complete(model: PreTrainedModel, missing_keys, name: str) -> None:
    """A teacher whose checkpoint lacks weights of the class it loads as (a bare encoder or an ELECTRA discriminator
    loaded as a masked LM: no masked-LM head) would be distilled from randomly initialised parts: refused, naming
    them. Weights tied to others (the decoder to the word embeddings) are not missing."""
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    missing = [key for key in missing_keys if key not in tied]
    if not missing:
        return
    saved = getattr(model.config, "architectures", None) or ["a class its config.json does not name"]
    shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
    raise TeacherLoadError(
        f"Teacher {name!r} (saved as {'/'.join(saved)}) has no weights for part of the {type(model).__name__} it "
        f"loads as ({shown}): those would start at random and the student would learn from them. Pass a checkpoint "
        "with its prediction head: a *ForMaskedLM (a bare encoder or an ELECTRA discriminator has none), or, for task "
        "distillation, the fine-tuned *ForTokenClassification / *ForSequenceClassification folder."
    )


_TASK_AUTO_CLASSES = {TOKEN_CLASSIFICATION: AutoModelForTokenClassification,
                      SEQUENCE_CLASSIFICATION: AutoModelForSequenceClassification}


def _hub_teacher_task(name: str, kwargs: dict) -> str | None:
    """The task a Hub teacher's config names (as `_check_teacher_folder` for a folder); None when unknown or the
    config cannot be read (from_pretrained then reports why)."""
    from transformers import AutoConfig

    options = {k: kwargs[k] for k in ("trust_remote_code", "cache_dir", "revision", "token") if k in kwargs}
    try:
        return task_of_classes(AutoConfig.from_pretrained(name, **options).architectures)
    except (OSError, ValueError):
        return None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0]


_EMBEDDING_SUFFIXES = ("word_embeddings.weight", "embed_tokens.weight", "tok_embeddings.weight")


def _check_teacher_folder(folder: str) -> str | None:
    """A local teacher needs config.json, and its vocab_size must match the weights' embedding rows; returns the task
    its config's `architectures` names (hf_distil.families.task_of_classes), None when they name none.

    transformers would fail on the mismatch with a size report but no sizes in the error (see `load_teacher`).
    """
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise TeacherNotFoundError(
            f"Teacher folder {folder!r} has no config.json: pass the folder that save_pretrained wrote "
            "(config.json and model.safetensors), or a Hub id."
        )
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except json.JSONDecodeError as err:
        raise TeacherLoadError(f"{config_path} is not valid JSON (line {err.lineno}: {err.msg}): repair it.") from err
    vocab_size = config.get("vocab_size") if isinstance(config, dict) else None
    rows = _embedding_rows(folder)
    if rows is not None and isinstance(vocab_size, int) and rows[1] != vocab_size:
        raise ModelMismatchError(
            f"Teacher {folder!r}: config.json has vocab_size={vocab_size} but the weights' {rows[0]} has {rows[1]} "
            f"rows: the config belongs to another checkpoint; restore the matching config.json "
            f"(vocab_size={rows[1]})."
        )
    architectures = config.get("architectures") if isinstance(config, dict) else None
    return task_of_classes(architectures if isinstance(architectures, list) else None)


def _embedding_rows(folder: str) -> tuple[str, int] | None:
    """(name, rows) of the input embedding in a folder's safetensors weights, read from the file headers only."""
    from safetensors import safe_open

    index_path = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index_path):
        with open(index_path, encoding="utf-8") as f:
            files = dict.fromkeys(json.load(f).get("weight_map", {}).values())
    else:
        files = ["model.safetensors"]
    for name in files:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        try:
            with safe_open(path, framework="pt") as weights:
                for key in weights.keys():
                    if key.endswith(_EMBEDDING_SUFFIXES):
                        return key, int(weights.get_slice(key).get_shape()[0])
        except Exception:  # unreadable weights: from_pretrained reports them itself
            return None
    return None
