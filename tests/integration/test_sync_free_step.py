"""Issue 24: a training micro-batch the host never waits for. The collator prepares each example's masked positions
(and drops an all-ones attention_mask) on the CPU side, so hf-distil's step runs no data-dependent-shape operator
and reads nothing back to the host; counted with a dispatch mode, which sees every aten call."""

import pytest
import torch
from tiny import args_for, random_texts, tiny_teacher
from torch.utils._python_dispatch import TorchDispatchMode

from hf_distil import DistillationTrainer, create_student
from hf_distil.collator import ROW_POSITIONS, ReproducibleMLMCollator

# operators whose output shape depends on tensor values, or that copy a value to the host
SYNCING = {"nonzero", "masked_select", "_local_scalar_dense", "item", "unique", "_unique2", "unique_consecutive",
           "unique_dim", "nonzero_static_fallback", "repeat_interleave", "is_nonzero", "equal", "_assert_async"}


class CountSyncs(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        boolean_index = name == "index" and any(
            t is not None and t.dtype == torch.bool for t in (args[1] if len(args) > 1 else ()))
        if name in SYNCING or boolean_index:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def _collator(tokenizer, bucket=8):
    return ReproducibleMLMCollator(tokenizer, seed=1, pad_to_multiple_of=8, positions_bucket=bucket)


def _padded(tokenizer, n=6):
    return [tokenizer(t) for t in random_texts(n, seed=2, min_len=4, max_len=30)]


def _packed(tokenizer, n=6, length=24):
    """Blocks of one length, as the recipe packs them: no padding."""
    ids = [tokenizer(t)["input_ids"] for t in random_texts(40, seed=3, min_len=10, max_len=30)]
    flat = [i for row in ids for i in row]
    return [{"input_ids": flat[k * length:(k + 1) * length], "attention_mask": [1] * length} for k in range(n)]


def test_row_positions_are_each_examples_masked_positions_in_order_padded_to_the_bucket(tokenizer):
    batch = _collator(tokenizer, bucket=4)(_padded(tokenizer))
    masked = batch["labels"] != -100
    positions = batch[ROW_POSITIONS]
    assert positions.shape[0] == masked.shape[0] and positions.shape[1] % 4 == 0
    assert positions.shape[1] - 4 < int(masked.sum(1).max()) <= positions.shape[1]
    for row, local in zip(masked, positions):
        assert local[local >= 0].tolist() == row.nonzero().squeeze(1).tolist()
        assert (local[int(row.sum()):] == -1).all()
    assert "attention_mask" in batch  # padded: the mask is needed
    packed = _collator(tokenizer)(_packed(tokenizer))
    assert "attention_mask" not in packed and packed["input_ids"].shape == (6, 24)
    plain = ReproducibleMLMCollator(tokenizer, seed=1, pad_to_multiple_of=8)(_packed(tokenizer))
    assert ROW_POSITIONS not in plain and "attention_mask" in plain  # off unless asked: Trainer's models get no key
    assert torch.equal(plain["labels"], packed["labels"]) and torch.equal(plain["input_ids"], packed["input_ids"])


OBJECTIVES = {
    "seed": dict(alpha_kd=5.0, alpha_mlm=2.0, alpha_hidden=1.0, hidden_loss="cosine", temperature=2.0),
    "kd on every position": dict(alpha_kd=1.0, alpha_mlm=1.0, alpha_hidden=0.0, kd_positions="all"),
    "tinybert": dict(alpha_kd=1.0, alpha_mlm=0.0, alpha_hidden=0.0, alpha_attention=1.0, attention_loss="scores",
                     alpha_intermediate=1.0, temperature=1.0),
    "minilm": dict(alpha_kd=0.0, alpha_mlm=0.0, alpha_hidden=0.0, alpha_relation=1.0, relation_heads=2),
}


def _trainer(tmp_path, objective):
    teacher = tiny_teacher(layers=4, dropout=0.0)
    student = create_student(teacher, 2)
    return DistillationTrainer(model=student, teacher_model=teacher, args=args_for(tmp_path, **OBJECTIVES[objective]))


def _loss_and_grads(trainer, batch):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]


@pytest.mark.parametrize("objective", list(OBJECTIVES))
@pytest.mark.parametrize("batches", ["packed", "padded"])
def test_the_step_from_row_positions_equals_the_step_that_finds_the_rows_itself(tokenizer, tmp_path, objective,
                                                                                 batches):
    trainer = _trainer(tmp_path, objective)
    examples = (_packed if batches == "packed" else _padded)(tokenizer)
    fast = _collator(tokenizer)(examples)
    slow = ReproducibleMLMCollator(tokenizer, seed=1, pad_to_multiple_of=8)(examples)
    loss_fast, grads_fast = _loss_and_grads(trainer, fast)
    loss_slow, grads_slow = _loss_and_grads(trainer, slow)
    torch.testing.assert_close(loss_fast, loss_slow, rtol=1e-6, atol=1e-7)
    assert len(grads_fast) == len(grads_slow)
    for a, b in zip(grads_fast, grads_slow):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_a_training_micro_batch_of_packed_blocks_neither_syncs_nor_sizes_anything_by_its_values(tokenizer, tmp_path,
                                                                                                objective):
    trainer = _trainer(tmp_path, objective)
    trainer.model.train()
    batch = _collator(tokenizer)(_packed(tokenizer))
    with CountSyncs() as counter:
        loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
    assert counter.seen == []


def test_on_padded_batches_the_only_syncs_left_are_the_models_own(tokenizer, tmp_path):
    """transformers reads a padding mask back to decide whether it masks anything: that is all, in the step."""
    trainer = _trainer(tmp_path, "seed")
    trainer.model.train()
    batch = _collator(tokenizer)(_padded(tokenizer))
    model_inputs = {k: v for k, v in batch.items() if k not in ("labels", "special_tokens_mask", ROW_POSITIONS)}
    with CountSyncs() as models_alone:
        trainer.model(**model_inputs)
        with torch.no_grad():
            trainer.teacher(**model_inputs)
    with CountSyncs() as step:
        trainer.compute_loss(trainer.model, dict(batch)).backward()
    assert sorted(step.seen) == sorted(models_alone.seen)
    # the stock collator's batch (no row positions): one `nonzero` more, ours
    stock = {k: v for k, v in batch.items() if k != ROW_POSITIONS}
    with CountSyncs() as without:
        trainer.compute_loss(trainer.model, stock).backward()
    assert sorted(without.seen) == sorted(models_alone.seen + ["nonzero"])
