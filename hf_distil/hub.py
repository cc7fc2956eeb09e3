"""Hub pushes without pickles or tokens: a `Trainer` mixin and the checks `push_to_hub` needs before training.

Trainer writes its arguments as a pickle (`training_args.bin`, hub token included) beside every save and uploads it
with every push. Here the arguments are written as JSON with the token redacted, and uploads skip pickle files.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants as hub_constants
from huggingface_hub import errors as hub_errors
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, HubStrategy, SaveStrategy
from transformers.utils import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_SAFE_WEIGHTS_NAME,
    CONFIG_NAME,
    GENERATION_CONFIG_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
)
from transformers.utils.hub import PushInProgress, hf_api

from .checkpoints import OUTPUT_DIR_ID, output_dir_id, write_checksums
from .errors import HubError

PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt")
TRAINING_ARGS_PICKLE = "training_args.bin"


def check_push_to_hub(args) -> None:
    """With `push_to_hub`, fail now (on every rank) rather than at the first save, hours into training."""
    if not getattr(args, "push_to_hub", False):
        return
    if args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
        raise HubError(
            f"hub_strategy={HubStrategy(args.hub_strategy).value!r} would upload pickled optimizer/RNG state "
            "(optimizer.pt, rng_state.pth) with each checkpoint: use "
            "--hub_strategy every_save or end, and keep checkpoints local."
        )
    if hub_constants.is_offline_mode():
        raise HubError(
            "--push_to_hub needs the Hub, but HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: unset it, or drop "
            "--push_to_hub and upload the output folder later with `hf upload`."
        )
    if not (args.hub_token or huggingface_hub.get_token()):
        raise HubError(
            "--push_to_hub needs a Hugging Face token with write access and none was found: run `hf auth login`, "
            "or set HF_TOKEN, or pass --hub_token."
        )


def pickles_in(folder: str | os.PathLike) -> list[str]:
    """Pickle-format files a push of `folder` would upload (checkpoint-* and _* are never uploaded)."""
    root = Path(folder)
    if not root.is_dir():
        return []
    found = []
    for path in root.rglob("*"):
        parts = path.relative_to(root).parts
        if parts[0].startswith((f"{PREFIX_CHECKPOINT_DIR}-", "_")) or not path.is_file():
            continue
        if any(path.match(pattern) for pattern in PICKLE_PATTERNS):
            found.append(str(path.relative_to(root)))
    return sorted(found)


class NoPickleHubMixin:
    """Put before `Trainer` in the bases: arguments saved as JSON (token redacted), no pickle ever pushed.

    Checkpoints keep what resuming needs (optimizer.pt, rng_state.pth, …); Trainer never reads training_args.bin.
    """

    args_file_name = "training_args.json"

    def __init__(self, model=None, args=None, *trainer_args, **kwargs):
        check_push_to_hub(args)
        super().__init__(model, args, *trainer_args, **kwargs)

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Trainer's repository creation (before training), with an unreachable Hub or a rejected token as one line."""
        try:
            super().init_hf_repo(token, private)
        except (hub_errors.HTTPError, OSError) as err:  # httpx errors and HfHubHTTPError alike
            repo = self.args.hub_model_id or Path(self.args.output_dir).absolute().name
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise HubError(
                f"--push_to_hub could not create or reach the Hub repository {repo!r} ({reason}): check the network "
                "and that the token has write access (`hf auth whoami`), or drop --push_to_hub and upload the output "
                "folder later with `hf upload`."
            ) from err

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            self._write_args(output_dir or self.args.output_dir)

    def _save_checkpoint(self, model, trial):
        """Trainer's checkpoint, then its files' sizes and SHA-256 sums (hf_distil.checkpoints.CHECKSUMS), once every
        process has written its part: a file changed later is not resumed from."""
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        started = time.time()
        result = super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()
        if self.args.should_save and folder.is_dir():
            # A checkpoint of this step from before a resume (skipped, or another timeline) was written over: files
            # of it that this save did not write would stay beside the new ones and spoil them.
            for path in folder.rglob("*"):
                if (path.is_file() or path.is_symlink()) and path.lstat().st_mtime < started - 2:
                    path.unlink()
            write_checksums(folder)
        return result

    def _write_args(self, folder: str) -> None:
        record = json.loads(self.args.to_json_string())  # hub_token is redacted by to_dict
        # which folder wrote it, exactly, without publishing the path (hf_distil.checkpoints.made_here_by)
        record[OUTPUT_DIR_ID] = output_dir_id(self.args.output_dir)
        with open(os.path.join(folder, self.args_file_name), "w", encoding="utf-8") as f:
            f.write(json.dumps(record, indent=2, sort_keys=True) + "\n")
        pickled = os.path.join(folder, TRAINING_ARGS_PICKLE)
        if os.path.exists(pickled):
            os.remove(pickled)

    def _before_upload(self, folder: str) -> None:
        """A subclass's last word on the files copied from a checkpoint into `folder` before they are uploaded."""

    def push_to_hub(self, *args, **kwargs):
        """Trainer's push, refused (before anything is uploaded) when the folder holds a pickle."""
        if self.is_world_process_zero():
            found = pickles_in(self.args.output_dir)
            if found:
                raise HubError(
                    f"{self.args.output_dir} holds pickle files that push_to_hub would upload ({', '.join(found)}): "
                    "move them out of the output folder and push again."
                )
        return super().push_to_hub(*args, **kwargs)

    def push_output_folder(self, commit_message: str = "End of training", exclude_folders=()) -> None:
        """Upload output_dir as it stands (card included, not rewritten), minus the top-level `exclude_folders` (e.g.
        a control model's), pickles, checkpoints and `_*`; refused, before anything is uploaded, on a pickle."""
        if not self.is_world_process_zero():
            return
        found = [name for name in pickles_in(self.args.output_dir) if Path(name).parts[0] not in exclude_folders]
        if found:
            raise HubError(
                f"{self.args.output_dir} holds pickle files that push_to_hub would upload ({', '.join(found)}): "
                "move them out of the output folder and push again."
            )
        if self.hub_model_id is None:
            self.init_hf_repo(token=self.args.hub_token)
        self._finish_current_push()
        hf_api().upload_folder(
            repo_id=self.hub_model_id, folder_path=self.args.output_dir, commit_message=commit_message,
            token=self.args.hub_token, revision=self.args.hub_revision,
            ignore_patterns=["_*", f"{PREFIX_CHECKPOINT_DIR}-*", *PICKLE_PATTERNS,
                             *(f"{folder}/*" for folder in exclude_folders)],
        )

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Trainer's push after each save, without the training_args.bin it writes there and uploads."""
        args = self.args
        if not self.is_world_process_zero() or args.hub_strategy == HubStrategy.END:
            return
        if not args.hub_always_push and self.push_in_progress is not None and not self.push_in_progress.is_done():
            return
        check_push_to_hub(args)  # checkpoint strategies: refused, their checkpoints are pickles
        self.callback_handler.on_push_begin(args, self.state, self.control)
        output_dir = args.output_dir
        # Model files only, as Trainer does (optimizer/RNG state stay in the checkpoint).
        names = [CONFIG_NAME, GENERATION_CONFIG_NAME, SAFE_WEIGHTS_NAME, ADAPTER_CONFIG_NAME, ADAPTER_SAFE_WEIGHTS_NAME]
        index = os.path.join(checkpoint_folder, SAFE_WEIGHTS_INDEX_NAME)
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                names += [SAFE_WEIGHTS_INDEX_NAME, *set(json.load(f)["weight_map"].values())]
        for name in names:
            if os.path.isfile(os.path.join(checkpoint_folder, name)):
                shutil.copy(os.path.join(checkpoint_folder, name), os.path.join(output_dir, name))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        self._write_args(output_dir)
        self._before_upload(output_dir)
        if args.save_strategy == SaveStrategy.STEPS:
            message = f"Training in progress, step {self.state.global_step}"
        else:
            message = f"Training in progress, epoch {int(self.state.epoch)}"
        job = hf_api().upload_folder(
            repo_id=self.hub_model_id, folder_path=output_dir, commit_message=message, token=args.hub_token,
            run_as_future=True, ignore_patterns=["_*", f"{PREFIX_CHECKPOINT_DIR}-*", *PICKLE_PATTERNS],
            revision=args.hub_revision,
        )
        if self.push_in_progress is None or self.push_in_progress.is_done():
            self.push_in_progress = PushInProgress([job])
        else:
            self.push_in_progress.jobs.append(job)
