"""Checkpoints and output folders: which checkpoint a run can resume bit-exactly, and which folders it may write.

Used by `DistillationTrainer` (NaN stop, disk-full saves), the distillation recipe and `run_finetune.py`, so that no
run resumes from half a checkpoint, writes over a model it did not make, or finds out at the first save hours in that
its output folder cannot hold a checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

from .errors import DistillationConfigError

logger = logging.getLogger("hf_distil")

# Weights a Trainer checkpoint may hold; with config.json or adapter_config.json beside them, any of WEIGHT_FILES
# makes a folder hold a model.
CHECKPOINT_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
                      "pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.bin")
WEIGHT_FILES = CHECKPOINT_WEIGHTS + ("tf_model.h5", "flax_model.msgpack")
# Optimizer, scheduler and RNG files besides the weights and trainer_state.json: AdamW state is two tensors per weight.
_SMALL_FILES_BYTES = 16 * 2**20
# Written by every distillation run beside its model (DistillationTrainer.args_file_name): the folder is ours.
ARGS_MARKER = "distillation_args.json"


class OutputFolderError(DistillationConfigError):
    """output_dir may not or cannot be written: it holds a model this run did not make, or is unwritable or full."""


class CheckpointError(DistillationConfigError):
    """A checkpoint named for resuming is incomplete or corrupt."""


class DiskFullError(OSError, OutputFolderError):
    """Saving a checkpoint ran out of disk space (or quota): an OSError (errno ENOSPC) whose one-line message names
    the last complete checkpoint; an OutputFolderError too, so the recipes print it as a user error."""

    def __str__(self):
        return self.strerror


# ---- checkpoint completeness ---------------------------------------------------------------------------------------

# Written into each checkpoint once it is saved (NoPickleHubMixin._save_checkpoint): every file's size and SHA-256,
# so that a file changed afterwards (a bad disk, a copy cut short, a stray write) is found before it is resumed.
CHECKSUMS = "checksums.json"


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(folder: str | os.PathLike) -> None:
    """Record the size and SHA-256 of every file under `folder` in its CHECKSUMS (written whole, then renamed)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink() and p.name != CHECKSUMS
                   and not p.name.startswith(f"{CHECKSUMS}."))
    record = {p.relative_to(folder).as_posix(): [p.stat().st_size, _sha256(p)] for p in files}
    partial = folder / f"{CHECKSUMS}.partial"
    partial.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(partial, folder / CHECKSUMS)


def _checksum_problems(folder: Path) -> tuple[list[str], list[str]]:
    """(missing, changed) files against the folder's CHECKSUMS; nothing when it has none (older checkpoints)."""
    path = folder / CHECKSUMS
    if not path.is_file():
        # older checkpoints have none; one without it beside checkpoints that have it was not finished, or lost it
        others = [p for p in folder.parent.glob(f"checkpoint-*/{CHECKSUMS}") if p.parent != folder]
        return ([CHECKSUMS] if others else []), []
    try:
        record = json.loads(path.read_text())
        entries = [(name, int(size), str(digest)) for name, (size, digest) in record.items()]
    except (OSError, ValueError, TypeError, AttributeError, OverflowError):
        return [], [CHECKSUMS]
    missing, changed = [], []
    for name, size, digest in entries:
        file = folder / name
        if not file.is_file():
            missing.append(name)
        elif file.stat().st_size != size or _sha256(file) != digest:
            changed.append(name)
    return missing, changed



def _safetensors_ok(path: Path) -> bool:
    """The header parses and its offsets match the file size (safetensors checks that on open; no tensor is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
        return True
    except Exception:  # safetensors raises its own error types for a bad header or a short file
        return False


def _torch_zip_ok(path: Path) -> bool:
    """torch.save writes a zip archive: a truncated file loses the central directory at its end."""
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def _weights(folder: Path) -> list[Path]:
    """The weight files a checkpoint holds (shards listed by an index included)."""
    found = []
    for name in CHECKPOINT_WEIGHTS:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            try:
                shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError):
                return [path]  # reported as unreadable by the caller
            found += [folder / shard for shard in shards]
        else:
            found.append(path)
    return found


def checkpoint_problems(checkpoint: str | os.PathLike, resume_state: bool = True) -> list[str]:
    """What keeps `checkpoint` from a bit-exact resume, e.g. ["missing optimizer.pt", "model.safetensors is truncated
    or corrupt"].

    Needs a parsing trainer_state.json, weights, and (with `resume_state`) the optimizer, scheduler and RNG state in
    whichever layout wrote them: plain Trainer files, DeepSpeed's `latest` + `global_step*/`, or FSDP's
    `pytorch_model_fsdp*` + `optimizer*`. Pass resume_state=False for checkpoints saved with save_only_model.
    Files are checked cheaply (safetensors headers, zip directories of .pt files), never loaded, and against the
    sizes and SHA-256 sums the save recorded in CHECKSUMS (a file changed afterwards, e.g. bytes overwritten in the
    middle, which leaves headers and zip directories intact).
    """
    folder = Path(checkpoint)
    missing, broken = [], []
    state = folder / "trainer_state.json"
    if not state.is_file():  # only regular files are read: a symlink to a device could be endless
        missing.append(state.name)
    else:
        try:
            loaded = json.loads(state.read_text())
        except (OSError, ValueError):
            loaded = None
        # JSON that parses but is no TrainerState (`[]`, `null`, a string step) makes Trainer's resume crash.
        if not isinstance(loaded, dict) or ("global_step" in loaded and type(loaded["global_step"]) is not int):
            broken.append(state.name)

    to_check = []  # .pt-style files present, checked for truncation below
    ds_tag = folder / "latest"
    if ds_tag.is_file() or any(p.is_dir() for p in folder.glob("global_step*")):  # DeepSpeed
        tag = ds_tag.read_text().strip() if ds_tag.is_file() else None
        if tag is None:
            missing.append("latest")
        elif not (folder / tag).is_dir():
            missing.append(f"{tag}/")
        else:
            states = folder / tag
            model_states = sorted(p for p in states.glob("*model_states.pt") if p.is_file())
            optim_states = sorted(p for p in states.glob("*optim_states.pt") if p.is_file())
            if not model_states:
                missing.append(f"{tag}/*model_states.pt")
            if resume_state and not optim_states:
                missing.append(f"{tag}/*optim_states.pt")
            to_check += model_states + optim_states
        needs_scheduler = False  # a DeepSpeed scheduler lives inside its own states
    elif any(folder.glob("pytorch_model_fsdp*")):  # FSDP: full .bin file or a sharded folder
        if resume_state and not ((folder / "optimizer.bin").is_file() or any(folder.glob("optimizer_*"))):
            missing.append("optimizer.bin (or optimizer_0/)")
        needs_scheduler = True
    else:
        weights = _weights(folder)
        if not weights:
            missing.append("model.safetensors")
        for path in weights:
            if not path.is_file():
                missing.append(path.name)
            elif path.suffix == ".safetensors" and not _safetensors_ok(path):
                broken.append(path.name)
            elif path.suffix == ".json":
                broken.append(path.name)
        if resume_state and not ((folder / "optimizer.pt").is_file() or (folder / "optimizer.bin").is_file()):
            missing.append("optimizer.pt")
        needs_scheduler = True
    if resume_state:
        if needs_scheduler and not (folder / "scheduler.pt").is_file():
            missing.append("scheduler.pt")
        if not ((folder / "rng_state.pth").is_file() or any(folder.glob("rng_state_*.pth"))):
            missing.append("rng_state.pth")
    if folder.is_dir():
        to_check += [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix in (".pt", ".pth", ".bin")]
    broken += [p.relative_to(folder).as_posix() for p in to_check if not _torch_zip_ok(p)]
    gone, changed = _checksum_problems(folder)
    missing += [name for name in gone if name not in missing]
    problems = [f"missing {', '.join(missing)}"] if missing else []
    problems += [f"{name} is truncated or corrupt" for name in broken]
    problems += [f"{CHECKSUMS} is unreadable" if name == CHECKSUMS else
                 f"{name} changed since it was saved (its {CHECKSUMS} entry differs)" for name in changed
                 if name not in broken]
    return problems


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """`checkpoint-N` folders of output_dir, newest (highest N) first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(p.name.split("-", 1)[1]), p) for p in folder.glob("checkpoint-*")
             if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return [p for _, p in sorted(found, reverse=True)]


def latest_complete_checkpoint(output_dir: str | os.PathLike, resume_state: bool = True) -> str | None:
    """Newest `checkpoint-N` of output_dir that `checkpoint_problems` finds nothing wrong with; each newer one that
    is skipped (killed mid-save, files deleted or truncated) gets a warning naming what it lacks."""
    for path in list_checkpoints(output_dir):
        problems = checkpoint_problems(path, resume_state)
        if not problems:
            return str(path)
        logger.warning("Skipping incomplete checkpoint %s (%s).", path, "; ".join(problems))
    return None


def require_complete_checkpoint(checkpoint: str | os.PathLike, resume_state: bool = True) -> None:
    """Raise CheckpointError (one line, naming the missing or corrupt files) unless `checkpoint` can be resumed."""
    problems = checkpoint_problems(checkpoint, resume_state)
    if problems:
        raise CheckpointError(
            f"Checkpoint {str(checkpoint)!r} cannot be resumed exactly: {'; '.join(problems)}. Pass an earlier "
            "checkpoint-N, or --resume_from_checkpoint auto to take the newest complete one."
        )


# ---- output folders ------------------------------------------------------------------------------------------------


def barrier() -> None:
    """Wait for every process of a distributed run (nothing to wait for in one process)."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def remove_checkpoints(folder: str | os.PathLike, process_index: int, why: str) -> None:
    """Remove the `checkpoint-N` folders of `folder` (rank 0, once every rank has looked at it): old checkpoints
    would mix with a new run's (resume auto, save_total_limit rotation). Each removal is logged with `why`."""
    barrier()  # every rank has looked at the folder before rank 0 changes it
    if process_index == 0:
        for old in Path(folder).glob("checkpoint-*"):
            logger.warning("%s: removing the previous run's %s", why, old)
            shutil.rmtree(old, ignore_errors=True)
    barrier()



def model_files(folder: str | os.PathLike) -> list[str]:
    """Names of the config and weight files that make `folder` hold a model; [] when it holds none."""
    folder = Path(folder)
    configs = [n for n in ("config.json", "adapter_config.json") if (folder / n).is_file()]
    weights = [n for n in WEIGHT_FILES if (folder / n).is_file()]
    weights += sorted(p.name for p in folder.glob("*.gguf"))
    return configs + weights if configs and weights else []


# The key of a run's args record that names its output_dir exactly: a hash of its real path (not the path itself,
# which the record would publish when pushed), so a copy of the folder elsewhere is not taken for the run's own.
OUTPUT_DIR_ID = "output_dir_id"


def output_dir_id(output_dir: str | os.PathLike) -> str:
    import hashlib

    real = os.path.realpath(os.path.expanduser(str(output_dir)))
    return hashlib.sha256(real.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _same_output_dir(recorded: str, folder: Path) -> bool:
    """Whether an output_dir recorded by an earlier run (absolute, or relative to wherever it ran) names `folder`."""
    recorded_path = Path(os.path.normpath(os.path.expanduser(recorded)))
    if recorded_path.is_absolute():
        return Path(os.path.realpath(recorded_path)) == folder
    if Path(os.path.realpath(recorded_path)) == folder:  # from here, through any symlink the run was given
        return True
    parts = recorded_path.parts
    return parts != () and folder.parts[-len(parts):] == parts


def made_here_by(folder: str | os.PathLike, marker: str) -> bool:
    """Whether `folder` was written by an earlier run of ours for this same output_dir: it, or one of its checkpoint-N
    (a run killed during its final save has no marker at the top yet), holds our `marker` JSON
    (distillation_args.json / finetune_args.json) whose output_dir is this folder."""
    real = Path(os.path.realpath(folder))
    for holder in [real, *list_checkpoints(real)]:
        if not (holder / marker).is_file():
            continue
        try:
            record = json.loads((holder / marker).read_text())
            recorded, made_in = record.get("output_dir"), record.get(OUTPUT_DIR_ID)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(made_in, str):  # written by a run that recorded exactly where (a copy elsewhere is not ours)
            if made_in == output_dir_id(real):
                return True
        elif isinstance(recorded, str) and _same_output_dir(recorded, real):  # older records: the path as given
            return True
    return False


def check_output_dir(output_dir: str, sources: dict[str, str | None], marker: str) -> None:
    """Refuse (OutputFolderError) an output_dir that would overwrite a model this run did not make, even with
    overwrite_output_dir: the folder of a model the run reads (`sources`: flag name → path), a folder whose
    checkpoint-N holds one (overwriting removes them), or any folder holding a model without our `marker`.
    Paths are resolved (symlinks, ./, trailing slashes) before they are compared."""
    out = Path(os.path.realpath(os.path.expanduser(output_dir)))
    for flag, source in sources.items():
        if not source or not os.path.isdir(os.path.expanduser(source)):
            continue  # a Hub id or nothing: no local folder to protect
        src = Path(os.path.realpath(os.path.expanduser(source)))
        inside_checkpoint = src.parent == out and src.name.startswith("checkpoint-")
        if src == out:
            raise OutputFolderError(
                f"output_dir {output_dir!r} is the folder of the model given as {flag} ({source!r}); writing there "
                "would replace that model, even with --overwrite_output_dir: choose another output_dir."
            )
        if inside_checkpoint:
            raise OutputFolderError(
                f"output_dir {output_dir!r} holds {src.name}, the model given as {flag} ({source!r}); a run there "
                "would delete it (--overwrite_output_dir, save_total_limit): choose another output_dir."
            )
    if out.is_dir():
        found = model_files(out)
        if found and not made_here_by(out, marker):
            raise OutputFolderError(
                f"output_dir {output_dir!r} holds a model ({', '.join(found)}) that no earlier hf-distil run wrote "
                f"there (no {marker} naming this output_dir), so it is not overwritten even with "
                "--overwrite_output_dir: choose another output_dir, or move that model away first."
            )


# ---- room to save --------------------------------------------------------------------------------------------------


def _size(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def expected_save_bytes(model, checkpoint: bool = True, optimizer: bool = True) -> int:
    """Bytes the run writes at most at once: the final model, plus (when it saves checkpoints) one checkpoint of
    weights + AdamW state (two tensors per trainable weight) + small files (scheduler, RNG, tokenizer, state)."""
    params = list(model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    # A PEFT model saves only its adapters; any other model saves every weight.
    weights = trainable if getattr(model, "peft_config", None) else sum(p.numel() * p.element_size() for p in params)
    total = weights + _SMALL_FILES_BYTES
    if checkpoint:
        total += weights + (2 * trainable if optimizer else 0) + _SMALL_FILES_BYTES
    return total


def probe_output_dir(output_dir: str, needed_bytes: int) -> None:
    """Before training: create output_dir, write and delete a small file there, and check the disk has
    `needed_bytes` free; raise OutputFolderError naming the problem otherwise. Folders it created are removed again,
    so a refused run leaves nothing behind."""
    out = Path(os.path.abspath(os.path.expanduser(output_dir)))
    created = []
    for existing in [out, *out.parents]:  # the filesystem root always exists
        if existing.exists():
            break
        created.append(existing)
    if not existing.is_dir():
        where = "is a file" if existing == out else f"lies under {str(existing)!r}, which is a file"
        raise OutputFolderError(f"output_dir {output_dir!r} {where}, not a folder: choose a folder for the model.")
    probe = out / f".hf-distil-write-test-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
        free = shutil.disk_usage(out).free
    except OSError as err:
        raise OutputFolderError(
            f"output_dir {output_dir!r} cannot be written ({err.strerror or err}): choose a folder you can write to."
        ) from err
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break
    if free < needed_bytes:
        raise OutputFolderError(
            f"output_dir {output_dir!r} has {_size(free)} free, but this run needs about {_size(needed_bytes)} "
            "(a checkpoint holds the student's weights and twice that in AdamW state, and the final model is saved "
            "beside it): free some disk space or choose an output_dir on a larger disk."
        )


def disk_full_error(err: BaseException, output_dir: str, step: int, needed_bytes: int) -> DiskFullError | None:
    """A DiskFullError for an error raised while saving checkpoint-`step`, or None when the disk was not the cause.

    OSError carries ENOSPC / EDQUOT and safetensors says "No space left on device"; torch.save's stream writer
    (inline_container.cc) raises a bare RuntimeError, which counts as a full disk only when the disk now has less room
    than a checkpoint needs. Any other error is not relabelled.
    """
    codes = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
    full = (isinstance(err, OSError) and err.errno in codes) or "No space left on device" in str(err)
    torch_writer = ("PytorchStreamWriter", "inline_container", "file write failed")
    if not full and isinstance(err, RuntimeError) and any(s in str(err) for s in torch_writer):
        try:
            full = shutil.disk_usage(output_dir).free < needed_bytes
        except OSError:
            return None
    if not full:
        return None
    last = latest_complete_checkpoint(output_dir)
    return DiskFullError(
        errno.ENOSPC,
        f"No space left on the disk of {output_dir!r} while saving checkpoint-{step} (about {_size(needed_bytes)} "
        f"needed; checkpoint-{step} is incomplete). Last complete checkpoint: {last or 'none yet'}. Free some space "
        "(or lower --save_total_limit) and rerun with --resume_from_checkpoint auto.",
    )
