"""Non-finite losses and out-of-memory on the first step: clear stops, skips counted, checkpoints intact."""

import os

import pytest
import torch
from transformers import default_data_collator

from hf_distil import DistillationArguments, DistillationTrainer, create_student
from hf_distil.trainer import NonFiniteLossError
from tiny import premasked_dataset, tiny_teacher


def _trainer(tmp_path, **kw):
    teacher = tiny_teacher(dropout=0.0)
    student = create_student(teacher, 2)
    args = DistillationArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, max_steps=6,
                                 per_device_train_batch_size=4, save_strategy="steps", save_steps=2,
                                 logging_steps=1, disable_tqdm=True, learning_rate=1e-3, **kw)
    return DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=premasked_dataset(24),
                               data_collator=default_data_collator), student


def _poison_at(trainer, step):
    """Make the student's hidden states NaN from optimizer step `step` (1-based) on."""
    layer = trainer.model.bert.encoder.layer[0]

    def hook(module, args, output):
        if trainer.state.global_step + 1 >= step and trainer.model.training:
            return (output[0] * float("nan"),) + tuple(output[1:]) if isinstance(output, tuple) else output * float("nan")
        return output

    layer.register_forward_hook(hook)


def test_nan_stops_naming_term_and_step_and_keeps_checkpoints(tmp_path):
    trainer, _ = _trainer(tmp_path)
    _poison_at(trainer, 5)
    with pytest.raises(NonFiniteLossError) as err:
        trainer.train()
    message = str(err.value)
    assert "step 5" in message and "kd_loss=nan" in message and "checkpoint-4" in message
    assert "--nan_policy skip" in message
    saved = sorted(p for p in os.listdir(tmp_path / "out") if p.startswith("checkpoint-"))
    assert saved == ["checkpoint-2", "checkpoint-4"]
    state = (tmp_path / "out" / "checkpoint-4" / "model.safetensors").read_bytes()
    from safetensors.torch import load

    assert all(torch.isfinite(v).all() for v in load(state).values())


def test_nan_skip_counts_skips_and_leaves_weights_finite(tmp_path):
    trainer, _ = _trainer(tmp_path, nan_policy="skip")
    _poison_at(trainer, 5)
    trainer.train()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    logged = [h.get("nan_skipped", 0) for h in trainer.state.log_history if "loss" in h]
    assert logged[:4] == [0, 0, 0, 0] and logged[-1] == 2  # steps 5 and 6 skipped


def test_out_of_memory_on_first_step_suggests_a_batch_that_keeps_the_total(tmp_path, monkeypatch):
    trainer, _ = _trainer(tmp_path, gradient_accumulation_steps=3)

    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer, "compute_loss", boom)
    with pytest.raises(torch.OutOfMemoryError) as err:
        trainer.train()
    message = str(err.value)
    assert "per_device_train_batch_size=4 × gradient_accumulation_steps=3 × 1 device(s) = 12" in message
    assert "--per_device_train_batch_size 2 --gradient_accumulation_steps 6" in message
