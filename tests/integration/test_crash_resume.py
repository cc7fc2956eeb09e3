"""SIGKILL the recipe after a checkpoint, resume with `--resume_from_checkpoint auto`, land on the same weights."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny import ROOT, write_workspace

SCRIPT = os.path.join(str(ROOT), "recipes", "run_distil.py")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def test_killed_run_resumes_to_the_uninterrupted_weights(tmp_path):
    write_workspace(tmp_path, n_texts=200, seed=4)
    config = {
        "teacher_model_name_or_path": str(tmp_path / "teacher"), "student_num_layers": 2, "line_by_line": True,
        "train_file": str(tmp_path / "corpus.jsonl"), "validation_split_percentage": 5, "max_seq_length": 48,
        "per_device_train_batch_size": 8, "max_steps": 16, "save_strategy": "steps", "save_steps": 2,
        "logging_steps": 2, "learning_rate": 1e-3, "eval_strategy": "no", "report_to": "none", "use_cpu": True,
        "disable_tqdm": True, "dataloader_num_workers": 0, "seed": 5, "evaluate_before_training": False,
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cfg = str(tmp_path / "config.yaml")

    subprocess.run([sys.executable, SCRIPT, cfg, "--output_dir", str(tmp_path / "full")], env=ENV, check=True,
                   capture_output=True, timeout=600)

    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, SCRIPT, cfg, "--output_dir", str(cut)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (cut / "checkpoint-4" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "model.safetensors").exists()  # it really died mid-training
    # the newest saved checkpoint lost its optimizer state: resuming from it would silently restart AdamW and the
    # schedule, so auto must fall back to the checkpoint before it
    saved = [p for p in cut.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    newest = max(saved, key=lambda p: int(p.name.split("-")[1]))
    (newest / "optimizer.pt").unlink()
    # a checkpoint half-written at the moment of a kill: weights but no trainer_state.json
    (cut / "checkpoint-14").mkdir()
    (cut / "checkpoint-14" / "model.safetensors").write_bytes(b"partial")

    done = subprocess.run([sys.executable, SCRIPT, cfg, "--output_dir", str(cut), "--resume_from_checkpoint",
                           "auto"], env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Skipping incomplete checkpoint" in done.stderr and "checkpoint-14" in done.stderr
    assert f"{newest} (missing optimizer.pt)" in done.stderr

    full = load_file(tmp_path / "full" / "model.safetensors")
    resumed = load_file(cut / "model.safetensors")
    for name in full:
        assert torch.equal(full[name], resumed[name]), name
    state = json.loads((cut / "trainer_state.json").read_text())
    assert state["global_step"] == 16


def test_resuming_from_the_last_step_trains_nothing_more(tmp_path):
    """A run killed while writing its final folder resumes from checkpoint-<max_steps> to exactly its weights
    (transformers' own resume would train one step more and write checkpoint-<max_steps + 1>)."""
    from safetensors.torch import load_file
    from tiny import premasked_dataset, tiny_teacher
    from transformers import default_data_collator

    from hf_distil import DistillationArguments, DistillationTrainer, create_student

    def trainer():
        teacher = tiny_teacher(dropout=0.0)
        args = DistillationArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, max_steps=4,
                                     per_device_train_batch_size=4, save_strategy="steps", save_steps=2,
                                     disable_tqdm=True, learning_rate=1e-3)
        return DistillationTrainer(model=create_student(teacher, 2), teacher_model=teacher, args=args,
                                   train_dataset=premasked_dataset(24), data_collator=default_data_collator)

    trainer().train()
    resumed = trainer()
    output = resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-4"))
    assert output.global_step == resumed.state.global_step == 4
    assert not (tmp_path / "out" / "checkpoint-5").exists()
    saved = load_file(tmp_path / "out" / "checkpoint-4" / "model.safetensors")
    state = resumed.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())


def test_resuming_a_finished_epoch_run_loads_it_and_more_epochs_are_refused(tmp_path):
    """Extending a finished run would re-warm its schedule from the checkpoint's optimizer while the card states the
    new length as if it had run throughout (issue 23): refused in one line; the same run resumes (nothing left)."""
    from tiny import premasked_dataset, tiny_teacher
    from transformers import default_data_collator

    from hf_distil import DistillationArguments, DistillationTrainer, create_student
    from hf_distil.errors import DistillationConfigError

    def trainer(epochs):
        teacher = tiny_teacher(dropout=0.0)
        args = DistillationArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True,
                                     num_train_epochs=epochs, per_device_train_batch_size=8, save_strategy="epoch",
                                     disable_tqdm=True, learning_rate=1e-3)
        return DistillationTrainer(model=create_student(teacher, 2), teacher_model=teacher, args=args,
                                   train_dataset=premasked_dataset(16), data_collator=default_data_collator)

    trainer(1).train()
    same = trainer(1)
    assert same.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2")).global_step == 2
    more = trainer(2)
    with pytest.raises(DistillationConfigError, match=r"num_train_epochs 1 → 2.*start over"):
        more.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
