"""Non-finite losses and out-of-memory on the first step: clear stops, skips counted, checkpoints intact."""

import os
import sys

import pytest
import torch
from tiny import premasked_dataset, tiny_teacher
from transformers import TrainerCallback, default_data_collator

import hf_distil
from hf_distil import DistillationArguments, DistillationTrainer, create_student
from hf_distil.trainer import NonFiniteLossError


def _trainer(tmp_path, **kw):
    teacher = tiny_teacher(dropout=0.0)
    student = create_student(teacher, 2)
    settings = dict(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, max_steps=6,
                    per_device_train_batch_size=4, save_strategy="steps", save_steps=2, logging_steps=1,
                    disable_tqdm=True, learning_rate=1e-3)
    args = DistillationArguments(**{**settings, **kw})
    return DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=premasked_dataset(24),
                               data_collator=default_data_collator), student


def _nan(output):
    """A layer's output (a tensor or a tuple led by one) turned to NaN."""
    if isinstance(output, tuple):
        return (output[0] * float("nan"),) + tuple(output[1:])
    return output * float("nan")


def _poison_at(trainer, step):
    """Make the student's hidden states NaN from optimizer step `step` (1-based) on."""
    layer = trainer.model.bert.encoder.layer[0]

    def hook(module, args, output):
        return _nan(output) if trainer.state.global_step + 1 >= step and trainer.model.training else output

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


def _poison_micro_batch(trainer, index):
    """Make the student's hidden states NaN in training micro-batch number `index` (0-based) only."""
    layer = trainer.model.bert.encoder.layer[0]
    calls = {"n": -1}

    def hook(module, args, output):
        if not trainer.model.training:
            return output
        calls["n"] += 1
        return _nan(output) if calls["n"] == index else output

    layer.register_forward_hook(hook)


def test_nan_skip_drops_the_whole_update_of_its_window(tmp_path):
    """With accumulation, the good micro-batch of a window that met a NaN adds nothing either (no half-counted rows):
    the weights and the AdamW state after that step are those of the step before."""
    trainer, student = _trainer(tmp_path, nan_policy="skip", gradient_accumulation_steps=2, max_steps=3,
                                save_strategy="no")
    _poison_micro_batch(trainer, 3)  # the second micro-batch of step 2
    snapshots = []

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps = {int(s["step"]) for s in trainer.optimizer.state_dict()["state"].values()}
            snapshots.append(({k: v.clone() for k, v in student.state_dict().items()}, steps))

    trainer.add_callback(Snapshot())
    trainer.train()
    (after_1, steps_1), (after_2, steps_2), (after_3, steps_3) = snapshots
    assert all(torch.equal(after_1[k], after_2[k]) for k in after_1)
    assert steps_1 == steps_2 == {1} and steps_3 == {2}
    assert any(not torch.equal(after_2[k], after_3[k]) for k in after_2)
    assert all(torch.isfinite(v).all() for v in after_3.values())
    assert [h["nan_skipped"] for h in trainer.state.log_history if "nan_skipped" in h][-1] == 1


def test_nan_stop_without_a_log_refuses_to_write_the_next_checkpoint(tmp_path):
    trainer, _ = _trainer(tmp_path, logging_steps=100)
    _poison_at(trainer, 3)
    with pytest.raises(NonFiniteLossError) as err:
        trainer.train()
    assert "step 3" in str(err.value) and "before saving a checkpoint" in str(err.value)
    assert "checkpoint-2" in str(err.value)
    assert sorted(p for p in os.listdir(tmp_path / "out") if p.startswith("checkpoint-")) == ["checkpoint-2"]


class _SyncCounter:
    """Counts host reads of tensor values (item/bool/float/int/tolist) and nonzero calls made by hf_distil's code."""

    NAMES = ("item", "__bool__", "__float__", "__int__", "tolist", "nonzero")

    def __init__(self, monkeypatch):
        self.counts = dict.fromkeys(self.NAMES, 0)
        package = os.path.dirname(os.path.abspath(hf_distil.__file__))
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _name=name, _original=original, **kwargs):
                caller = sys._getframe(1).f_code.co_filename
                if os.path.abspath(caller).startswith(package):
                    self.counts[_name] += 1
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)

    def reads(self):
        return sum(v for k, v in self.counts.items() if k != "nonzero")


@pytest.mark.parametrize("steps", [2, 4])
def test_a_training_step_reads_nothing_back_from_the_device(tmp_path, monkeypatch, steps):
    """No host-device sync per step from our code: the only one is the nonzero that picks the rows of the sparse
    heads (once per micro-batch); the stop check reads the flags only at the end (no log, no save in this run)."""
    trainer, _ = _trainer(tmp_path, gradient_accumulation_steps=2, max_steps=steps, save_strategy="no",
                          logging_steps=100, logging_nan_inf_filter=False)
    counter = _SyncCounter(monkeypatch)
    trainer.train()
    assert counter.counts["nonzero"] == 2 * steps
    assert counter.reads() == 1  # the end-of-training non-finite check, whatever the number of steps


def test_nan_skip_stops_a_run_that_skips_update_after_update(tmp_path):
    """Skipping is for a rare bad batch; a diverging run must not skip to the end and call the result a model."""
    trainer, _ = _trainer(tmp_path, nan_policy="skip", max_steps=12)
    trainer.term_watch.max_consecutive_skips = 3
    _poison_at(trainer, 5)
    with pytest.raises(NonFiniteLossError) as err:
        trainer.train()
    assert "skipped 3 updates in a row (steps 5-7)" in str(err.value)
    assert "checkpoint-6" in str(err.value)  # skipped updates leave the weights as they were: still a good one
    saved = sorted(p for p in os.listdir(tmp_path / "out") if p.startswith("checkpoint-"))
    assert saved == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
