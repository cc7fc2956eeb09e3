"""Never lose or overwrite a model: complete checkpoints only, protected output folders, a full disk found early."""

import errno
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tiny import premasked_dataset, tiny_teacher, write_recipe_config, write_workspace
from transformers import AutoModelForMaskedLM, TrainerCallback, default_data_collator

from hf_distil import DistillationArguments, DistillationTrainer, checkpoints, create_student
from hf_distil.checkpoints import (
    CheckpointError,
    DiskFullError,
    OutputFolderError,
    check_output_dir,
    checkpoint_problems,
    latest_complete_checkpoint,
)
from hf_distil.checkpoints import latest_complete_checkpoint as recipe_latest
from hf_distil.recipe import main
from hf_distil.trainer import NonFiniteLossError


def _checkpoint(folder: Path, step: int, skip=()) -> Path:
    """A plain-Trainer checkpoint-`step` with real (tiny) files, minus the names in `skip`."""
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    files = {
        "model.safetensors": lambda p: save_file({"w": torch.ones(4)}, str(p)),
        "optimizer.pt": lambda p: torch.save({"state": {0: torch.zeros(4)}}, p),
        "scheduler.pt": lambda p: torch.save({"last_epoch": step}, p),
        "rng_state.pth": lambda p: torch.save({"cpu": torch.random.get_rng_state()}, p),
        "trainer_state.json": lambda p: p.write_text(json.dumps({"global_step": step})),
    }
    for name, write in files.items():
        if name not in skip:
            write(path / name)
    return path


def _truncate(path: Path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


# ---- which checkpoint is complete ----------------------------------------------------------------------------------


@pytest.mark.parametrize("lost", ["optimizer.pt", "scheduler.pt", "rng_state.pth", "model.safetensors"])
def test_auto_resume_falls_back_past_a_checkpoint_missing_resume_state(tmp_path, caplog, lost):
    _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 4, skip={lost})
    with caplog.at_level(logging.WARNING, logger="hf_distil"):
        assert latest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert f"checkpoint-4 (missing {lost})" in caplog.text
    assert recipe_latest(str(tmp_path)) == str(tmp_path / "checkpoint-2")  # still importable from the recipe


def test_per_rank_rng_files_and_save_only_model_checkpoints_count_as_complete(tmp_path):
    ranked = _checkpoint(tmp_path, 2, skip={"rng_state.pth"})
    for rank in (0, 1):
        torch.save({"cpu": torch.random.get_rng_state()}, ranked / f"rng_state_{rank}.pth")
    assert checkpoint_problems(ranked) == []
    weights_only = _checkpoint(tmp_path, 4, skip={"optimizer.pt", "scheduler.pt", "rng_state.pth"})
    assert checkpoint_problems(weights_only) == ["missing optimizer.pt, scheduler.pt, rng_state.pth"]
    assert checkpoint_problems(weights_only, resume_state=False) == []


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "rng_state.pth"])
def test_truncated_files_are_named(tmp_path, name):
    path = _checkpoint(tmp_path, 2)
    _truncate(path / name)
    assert checkpoint_problems(path) == [f"{name} is truncated or corrupt"]
    assert latest_complete_checkpoint(tmp_path) is None


def test_truncated_trainer_state_and_sharded_weights(tmp_path):
    path = _checkpoint(tmp_path, 2, skip={"model.safetensors"})
    save_file({"a": torch.ones(3)}, str(path / "model-00001-of-00002.safetensors"))
    save_file({"b": torch.ones(3)}, str(path / "model-00002-of-00002.safetensors"))
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert checkpoint_problems(path) == []
    (path / "model-00002-of-00002.safetensors").unlink()
    (path / "trainer_state.json").write_text('{"global_st')  # killed mid-write
    assert checkpoint_problems(path) == ["missing model-00002-of-00002.safetensors",
                                         "trainer_state.json is truncated or corrupt"]


def test_deepspeed_and_fsdp_layouts_are_recognised(tmp_path):
    ds = tmp_path / "checkpoint-6"
    (ds / "global_step6").mkdir(parents=True)
    (ds / "latest").write_text("global_step6")
    (ds / "trainer_state.json").write_text("{}")
    torch.save({"module": {}}, ds / "global_step6" / "mp_rank_00_model_states.pt")
    torch.save({"optimizer_state_dict": {}}, ds / "global_step6" / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt")
    torch.save({}, ds / "rng_state_0.pth")
    assert checkpoint_problems(ds) == []  # no model.safetensors / optimizer.pt / scheduler.pt: DeepSpeed holds them
    _truncate(ds / "global_step6" / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt")
    assert checkpoint_problems(ds) == ["global_step6/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt is truncated "
                                       "or corrupt"]
    (ds / "latest").unlink()
    assert checkpoint_problems(ds)[0] == "missing latest"

    fsdp = tmp_path / "checkpoint-8"
    (fsdp / "pytorch_model_fsdp_0").mkdir(parents=True)
    (fsdp / "trainer_state.json").write_text("{}")
    torch.save({}, fsdp / "scheduler.pt")
    torch.save({}, fsdp / "rng_state_0.pth")
    assert checkpoint_problems(fsdp) == ["missing optimizer.bin (or optimizer_0/)"]
    (fsdp / "optimizer_0").mkdir()
    assert checkpoint_problems(fsdp) == []


# ---- the recipe: resume, output folders, room to save --------------------------------------------------------------


@pytest.fixture
def workspace(tmp_path):
    write_workspace(tmp_path)
    write_recipe_config(tmp_path, max_steps=2, save_strategy="no", eval_strategy="no", evaluate_before_training=False)
    return tmp_path


def _error_of(capsys, argv):
    code = main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if "hf-distil: error:" in line]
    assert code == 2 and len(lines) == 1, lines
    return lines[0]


def test_explicit_resume_from_an_incomplete_checkpoint_names_the_missing_files(workspace, capsys):
    out = workspace / "out"
    _checkpoint(out, 4, skip={"optimizer.pt", "rng_state.pth"})
    err = _error_of(capsys, [str(workspace / "config.yaml"), "--resume_from_checkpoint", str(out / "checkpoint-4")])
    assert "checkpoint-4" in err and "missing optimizer.pt, rng_state.pth" in err and "auto" in err
    _checkpoint(out, 6)
    _truncate(out / "checkpoint-6" / "model.safetensors")
    err = _error_of(capsys, [str(workspace / "config.yaml"), "--resume_from_checkpoint", str(out / "checkpoint-6")])
    assert "model.safetensors is truncated or corrupt" in err
    err = _error_of(capsys, [str(workspace / "config.yaml"), "--resume_from_checkpoint", "auto",
                             "--overwrite_output_dir", "true"])  # never starts over on top of them
    assert "no checkpoint in" in err and "complete enough to resume exactly" in err
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-4", "checkpoint-6"]
    with pytest.raises(CheckpointError):
        checkpoints.require_complete_checkpoint(out / "checkpoint-6")


def test_output_dir_on_the_teacher_is_refused_however_it_is_spelled(workspace, capsys, monkeypatch):
    teacher = workspace / "teacher"
    before = _digest(teacher)
    monkeypatch.chdir(workspace)
    (workspace / "link").symlink_to(teacher)
    for spelling in ("./teacher/", "teacher", str(workspace / "link"), "./sub/../teacher"):
        err = _error_of(capsys, [str(workspace / "config.yaml"), "--output_dir", spelling,
                                 "--overwrite_output_dir", "true"])
        assert "is the folder of the model given as --teacher_model_name_or_path" in err, spelling
    assert _digest(teacher) == before


def test_output_dir_on_the_student_source_or_a_foreign_model_is_refused(workspace, capsys):
    cfg = str(workspace / "config.yaml")
    student = create_student(AutoModelForMaskedLM.from_pretrained(workspace / "teacher"), 2)
    student.save_pretrained(workspace / "student")
    err = _error_of(capsys, [cfg, "--student_model_name_or_path", str(workspace / "student"), "--output_dir",
                             str(workspace / "student") + "/", "--overwrite_output_dir", "true"])
    assert "--student_model_name_or_path" in err
    # A model someone else made (here: a copy of the teacher), even with overwrite_output_dir.
    shutil.copytree(workspace / "teacher", workspace / "theirs")
    err = _error_of(capsys, [cfg, "--output_dir", str(workspace / "theirs"), "--overwrite_output_dir", "true"])
    assert "holds a model (config.json, model.safetensors)" in err and "distillation_args.json" in err
    # A teacher that is a checkpoint of the output_dir: overwriting would delete it before it is loaded.
    shutil.copytree(workspace / "teacher", workspace / "run" / "checkpoint-500")
    err = _error_of(capsys, [cfg, "--output_dir", str(workspace / "run"), "--overwrite_output_dir", "true",
                             "--teacher_model_name_or_path", str(workspace / "run" / "checkpoint-500")])
    assert "holds checkpoint-500, the model given as --teacher_model_name_or_path" in err
    assert (workspace / "run" / "checkpoint-500" / "model.safetensors").is_file()


def test_a_previous_run_of_this_output_dir_is_recognised_by_its_arguments_file(tmp_path, monkeypatch):
    out = tmp_path / "runs" / "quick"
    out.mkdir(parents=True)
    save_file({"w": torch.ones(2)}, str(out / "model.safetensors"))
    (out / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    for recorded in (str(out), "runs/quick", "./runs/quick/"):  # absolute, or relative to where it ran
        (out / "distillation_args.json").write_text(json.dumps({"output_dir": recorded}))
        check_output_dir(str(out), {}, marker="distillation_args.json")
    # The same files copied elsewhere are someone's model now: that copy is not overwritten.
    shutil.copytree(out, tmp_path / "copy")
    with pytest.raises(OutputFolderError, match="no distillation_args.json naming this output_dir"):
        check_output_dir(str(tmp_path / "copy"), {}, marker="distillation_args.json")


def test_unwritable_output_dir_is_found_before_training(workspace, capsys):
    (workspace / "a_file").write_text("not a folder")
    err = _error_of(capsys, [str(workspace / "config.yaml"), "--output_dir", str(workspace / "a_file" / "out")])
    assert "lies under" in err and "a_file', which is a file, not a folder: choose a folder" in err
    assert (workspace / "a_file").read_text() == "not a folder"
    err = _error_of(capsys, [str(workspace / "config.yaml"), "--output_dir", str(workspace / "a_file")])
    assert "a_file' is a file, not a folder: choose a folder" in err
    assert (workspace / "a_file").read_text() == "not a folder"


def test_a_disk_without_room_for_a_checkpoint_is_found_before_training(workspace, capsys, monkeypatch):
    out = workspace / "out" / "nested"
    real = shutil.disk_usage

    def small_disk(path):
        usage = real(path)
        return usage._replace(free=5_000_000) if str(path).startswith(str(workspace / "out")) else usage

    monkeypatch.setattr(checkpoints.shutil, "disk_usage", small_disk)
    err = _error_of(capsys, [str(workspace / "config.yaml"), "--output_dir", str(out), "--save_strategy", "steps",
                             "--save_steps", "1"])
    student = create_student(AutoModelForMaskedLM.from_pretrained(workspace / "teacher"), 2)
    weights = sum(p.numel() * 4 for p in student.parameters())
    needed = 4 * weights + 2 * 16 * 2**20  # final model + checkpoint (weights + 2x AdamW state) + small files
    assert f"has 5.0 MB free, but this run needs about {needed / 1e6:.1f} MB" in err
    assert not (workspace / "out").exists()  # the probe removed the folders it made


# ---- faults during training ----------------------------------------------------------------------------------------


def _trainer(tmp_path, **kw):
    teacher = tiny_teacher(dropout=0.0)
    args = DistillationArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, max_steps=6,
                                 per_device_train_batch_size=4, save_strategy="steps", save_steps=2,
                                 logging_steps=1, disable_tqdm=True, learning_rate=1e-3, **kw)
    return DistillationTrainer(model=create_student(teacher, 2), teacher_model=teacher, args=args,
                               train_dataset=premasked_dataset(24), data_collator=default_data_collator)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to produce a real ENOSPC")
def test_disk_full_during_a_save_says_so_and_names_the_last_complete_checkpoint(tmp_path):
    trainer = _trainer(tmp_path)
    (tmp_path / "out" / "checkpoint-4").mkdir(parents=True)
    # Every write to /dev/full fails with ENOSPC, as on a full disk.
    (tmp_path / "out" / "checkpoint-4" / "trainer_state.json").symlink_to("/dev/full")
    with pytest.raises(DiskFullError) as err:
        trainer.train()
    assert err.value.errno == errno.ENOSPC and isinstance(err.value, OSError)
    message = str(err.value)
    assert message.startswith("No space left on the disk of") and "while saving checkpoint-4" in message
    assert f"Last complete checkpoint: {tmp_path / 'out' / 'checkpoint-2'}." in message
    assert "--resume_from_checkpoint auto" in message


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to produce a real ENOSPC")
def test_torch_save_failing_on_a_full_disk_is_reported_but_other_errors_are_not_relabelled(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path)
    (tmp_path / "out" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "out" / "checkpoint-2" / "optimizer.pt").symlink_to("/dev/full")  # torch.save: bare RuntimeError
    with pytest.raises(RuntimeError) as plain:
        trainer.train()
    assert not isinstance(plain.value, DiskFullError)  # the disk has room: the original error stays

    trainer = _trainer(tmp_path)
    real = shutil.disk_usage
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: real(path)._replace(free=1000))
    with pytest.raises(DiskFullError, match="while saving checkpoint-2 .* Last complete checkpoint: none yet"):
        trainer.train()


class _TruncateOptimizerAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            _truncate(Path(args.output_dir) / f"checkpoint-{self.step}" / "optimizer.pt")


def test_nan_stop_names_the_last_checkpoint_that_is_really_complete(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.add_callback(_TruncateOptimizerAt(4))
    layer = trainer.model.bert.encoder.layer[0]

    def poison(module, args, output):
        if trainer.state.global_step + 1 >= 5 and trainer.model.training:
            return (output[0] * float("nan"), *output[1:]) if isinstance(output, tuple) else output * float("nan")
        return output

    layer.register_forward_hook(poison)
    with pytest.raises(NonFiniteLossError) as err:
        trainer.train()
    assert f"last complete checkpoint: {tmp_path / 'out' / 'checkpoint-2'})" in str(err.value)


@pytest.mark.parametrize("content", ["[1]", "null", '"4"', '{"global_step": "4"}', '{"global_step": null}'])
def test_trainer_state_that_parses_but_is_not_a_trainer_state_is_corrupt(tmp_path, content):
    # JSON that parses but is no TrainerState made transformers' resume crash with a TypeError traceback.
    _checkpoint(tmp_path, 2)
    path = _checkpoint(tmp_path, 4)
    (path / "trainer_state.json").write_text(content)
    assert checkpoint_problems(path) == ["trainer_state.json is truncated or corrupt"]
    assert latest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")


def test_a_run_killed_during_its_final_save_is_still_recognised_by_its_checkpoints(tmp_path):
    # kill -9 after config.json and model.safetensors but before distillation_args.json reached output_dir: the
    # folder was then refused as "a model no earlier hf-distil run wrote", even for --resume_from_checkpoint auto.
    out = tmp_path / "out"
    checkpoint = _checkpoint(out, 4)
    (out / "config.json").write_text("{}")
    save_file({"w": torch.ones(4)}, str(out / "model.safetensors"))
    (checkpoint / "distillation_args.json").write_text(json.dumps({"output_dir": str(out)}))
    check_output_dir(str(out), {}, marker="distillation_args.json")  # ours: no error
    (checkpoint / "distillation_args.json").write_text(json.dumps({"output_dir": str(tmp_path / "elsewhere")}))
    with pytest.raises(OutputFolderError, match="no earlier hf-distil run wrote"):
        check_output_dir(str(out), {}, marker="distillation_args.json")


def test_a_save_error_that_is_not_the_disk_is_never_called_a_full_disk(tmp_path):
    """Only ENOSPC / "No space left" / torch's stream writer failing on a small disk are a full disk; a callback or
    push bug raised during a save keeps its own error, however little room the disk has."""
    huge = 10**18  # more than any disk has free
    assert checkpoints.disk_full_error(RuntimeError("a callback bug"), str(tmp_path), 2, huge) is None
    assert checkpoints.disk_full_error(ValueError("cannot pickle"), str(tmp_path), 2, huge) is None
    writer = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    assert isinstance(checkpoints.disk_full_error(writer, str(tmp_path), 2, huge), DiskFullError)
    assert checkpoints.disk_full_error(writer, str(tmp_path), 2, 1) is None  # room left: not the disk


def test_an_output_dir_given_through_a_symlink_is_still_the_runs_own(tmp_path, monkeypatch):
    """Killed during its final save, a run whose output_dir was a relative symlink can resume or be overwritten."""
    import json

    from hf_distil.checkpoints import made_here_by

    real = tmp_path / "disk" / "run1"
    (real / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "out").symlink_to(real)
    (real / "checkpoint-2" / "distillation_args.json").write_text(json.dumps({"output_dir": "out"}))
    monkeypatch.chdir(tmp_path)
    assert made_here_by("out", "distillation_args.json")
    (real / "checkpoint-2" / "distillation_args.json").write_text(json.dumps({"output_dir": "elsewhere"}))
    assert not made_here_by("out", "distillation_args.json")


def test_a_checkpoint_changed_after_its_save_is_not_resumed_from(workspace, capsys, caplog):
    """Bytes overwritten in the middle of a saved file leave the safetensors header and the zip directory intact:
    the sizes and SHA-256 sums written at save time find it, by name, before it is resumed or called complete."""
    out = workspace / "out"
    assert main([str(workspace / "config.yaml"), "--max_steps", "4", "--save_strategy", "steps", "--save_steps",
                 "2"]) == 0
    record = json.loads((out / "checkpoint-4" / "checksums.json").read_text())
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json"} <= set(record)
    assert checkpoint_problems(out / "checkpoint-4") == []
    weights = out / "checkpoint-4" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    weights.write_bytes(bytes(data))
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:  # still opens: only the checksum tells
        assert f.keys()
    assert checkpoint_problems(out / "checkpoint-4") == [
        "model.safetensors changed since it was saved (its checksums.json entry differs)"]
    with caplog.at_level(logging.WARNING, logger="hf_distil"):
        assert latest_complete_checkpoint(out) == str(out / "checkpoint-2")
    assert "checkpoint-4 (model.safetensors changed since it was saved" in caplog.text
    err = _error_of(capsys, [str(workspace / "config.yaml"), "--max_steps", "4", "--save_strategy", "steps",
                             "--save_steps", "2", "--resume_from_checkpoint", str(out / "checkpoint-4")])
    assert "model.safetensors changed since it was saved" in err


def test_checksums_that_are_gone_unreadable_or_absurd_spoil_the_checkpoint_not_the_run(tmp_path):
    """Beside checkpoints that have checksums.json, one without it is not trusted; an unreadable one is said as such,
    a size of 1e999 too (it raised OverflowError)."""
    from hf_distil.checkpoints import write_checksums

    for step in (2, 4, 6):
        write_checksums(_checkpoint(tmp_path, step))
    (tmp_path / "checkpoint-6" / "checksums.json").unlink()
    assert checkpoint_problems(tmp_path / "checkpoint-6") == ["missing checksums.json"]
    (tmp_path / "checkpoint-4" / "checksums.json").write_text('{"model.safetensors": [1e999, "x"]}')
    assert checkpoint_problems(tmp_path / "checkpoint-4") == ["checksums.json is unreadable"]
    assert latest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    (tmp_path / "checkpoint-2" / "checksums.json").write_text("{not json")
    assert checkpoint_problems(tmp_path / "checkpoint-2") == ["checksums.json is unreadable"]
    lone = _checkpoint(tmp_path / "older", 2)  # a checkpoint of a version that wrote none: the header checks
    assert checkpoint_problems(lone) == []


def test_a_step_saved_again_after_a_resume_keeps_none_of_the_old_folders_files(workspace, caplog):
    """A stray file in a skipped checkpoint-N stayed beside the re-saved one and spoiled it for every later resume."""
    out = workspace / "out"
    run = [str(workspace / "config.yaml"), "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2"]
    assert main(run) == 0
    (out / "checkpoint-4" / "extra.bin").write_text("hello")
    os.utime(out / "checkpoint-4" / "extra.bin", (1e9, 1e9))  # left there long before this save
    (out / "model.safetensors").unlink()  # as if killed during the final save
    with caplog.at_level(logging.WARNING, logger="hf_distil"):
        assert main([*run, "--resume_from_checkpoint", "auto"]) == 0
    assert "Skipping incomplete checkpoint" in caplog.text and "extra.bin" in caplog.text
    assert not (out / "checkpoint-4" / "extra.bin").exists()
    assert checkpoint_problems(out / "checkpoint-4") == []


def test_a_copy_of_a_run_made_with_a_relative_output_dir_is_not_taken_for_ours(workspace, monkeypatch, capsys):
    """The record names the folder it was written for exactly (a hash of its real path): a copy of a model made with
    `--output_dir models/student` placed under another `.../models/student` is refused, not overwritten."""
    monkeypatch.chdir(workspace)
    assert main([str(workspace / "config.yaml"), "--output_dir", "models/student"]) == 0
    record = json.loads((workspace / "models" / "student" / "distillation_args.json").read_text())
    assert record["output_dir"] == "models/student" and len(record["output_dir_id"]) == 32  # a hash, not a path
    shutil.copytree(workspace / "models", workspace / "dl" / "models")
    before = (workspace / "dl" / "models" / "student" / "model.safetensors").read_bytes()
    err = _error_of(capsys, [str(workspace / "config.yaml"), "--output_dir", str(workspace / "dl" / "models" /
                                                                                  "student"),
                             "--overwrite_output_dir", "true"])
    assert "no earlier hf-distil run wrote there" in err
    assert (workspace / "dl" / "models" / "student" / "model.safetensors").read_bytes() == before
    assert main([str(workspace / "config.yaml"), "--output_dir", "models/student", "--overwrite_output_dir",
                 "true"]) == 0  # its own folder, however it is named
