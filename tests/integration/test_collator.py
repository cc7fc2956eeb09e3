import copy

import pytest
import torch
from tiny import VOCAB, random_texts, text_dataset, tiny_teacher
from transformers import DataCollatorForLanguageModeling, TrainerCallback

from hf_distil import DistillationArguments, DistillationTrainer, create_student
from hf_distil.collator import ReproducibleMLMCollator, _mix, _signed, mix64


def _examples(tokenizer):
    return [tokenizer(" ".join(f"w{i}" for i in range(40))), tokenizer("w3 w4 w5 w6 w7 w8"),
            tokenizer(" ".join(f"w{i % 7}" for i in range(25)))]


def _many(tokenizer, n=2000, seed=0):
    return [tokenizer(t) for t in random_texts(n, seed=seed, min_len=4, max_len=40)]


def test_vectorised_hash_matches_the_unsigned_reference():
    # splitmix64(seed 0)'s first output; values with the top bit set catch arithmetic (sign-copying) right shifts
    assert mix64(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF
    values = [0, 1, 0x9E3779B97F4A7C15, 2**63 - 1, 2**63, 2**64 - 1, *(mix64(i) for i in range(200))]
    mixed = _mix(torch.tensor([_signed(v) for v in values]))
    assert [v % 2**64 for v in mixed.tolist()] == [mix64(v) for v in values]


def test_masks_depend_on_seed_epoch_and_example_only(tokenizer):
    examples = _examples(tokenizer)
    collator = ReproducibleMLMCollator(tokenizer, seed=3, pad_to_multiple_of=8)
    first = collator(examples)
    torch.manual_seed(123)
    torch.rand(100)  # the global RNG moves; masks must not
    second = collator(examples)
    assert torch.equal(first["input_ids"], second["input_ids"]) and torch.equal(first["labels"], second["labels"])
    assert first["input_ids"].shape[1] % 8 == 0
    masked = first["labels"] != -100
    assert int(masked.sum()) >= 3
    assert not masked[:, 0].any() and not masked[first["attention_mask"] == 0].any()
    # the same example masked alone or in another batch gets the same mask
    alone = collator([examples[2]])
    n = alone["labels"].shape[1]
    assert torch.equal(alone["labels"][0], first["labels"][2, :n])
    assert (first["labels"][2, n:] == -100).all()
    # labels hold the original ids where masked
    original = torch.tensor(examples[0]["input_ids"])
    n = len(original)
    assert torch.equal(first["labels"][0, :n][masked[0, :n]], original[masked[0, :n]])
    # another seed or another epoch: other masks (dynamic masking across epochs)
    assert not torch.equal(ReproducibleMLMCollator(tokenizer, seed=4)(examples)["labels"], first["labels"])
    assert not torch.equal(ReproducibleMLMCollator(tokenizer, seed=3, epoch=1)(examples)["labels"][:, :48],
                           first["labels"])


def test_masking_rate_and_80_10_10_mix_over_many_examples(tokenizer):
    examples = _many(tokenizer)
    batch = ReproducibleMLMCollator(tokenizer, seed=0)(examples)
    maskable = (batch["attention_mask"] == 1).sum() - 2 * len(examples)  # [CLS] and [SEP] never masked
    m = batch["labels"] != -100
    inputs, labels = batch["input_ids"][m], batch["labels"][m]
    assert maskable > 40_000
    assert abs(m.sum() / maskable - 0.15) < 0.005  # mlm_probability; ±3 sd, and a fixed seed cannot flake
    as_mask = (inputs == tokenizer.mask_token_id).float().mean()
    kept = (inputs == labels).float().mean()
    # a random token is the [MASK] id or the original one with probability 1/64 each (tiny vocabulary)
    assert abs(as_mask - (0.8 + 0.1 / 64)) < 0.02
    assert abs(kept - (0.1 + 0.1 / 64)) < 0.015
    assert abs(1 - as_mask - kept - 0.1 * 62 / 64) < 0.015


def test_random_replacements_are_uniform_over_the_vocabulary(tokenizer):
    examples = _many(tokenizer, n=3000)
    collator = ReproducibleMLMCollator(tokenizer, seed=5, mlm_probability=1.0, mask_replace_prob=0.0,
                                       random_replace_prob=1.0)
    batch = collator(examples)
    m = batch["labels"] != -100
    counts = torch.bincount(batch["input_ids"][m], minlength=len(tokenizer))
    assert len(counts) == len(tokenizer) == len(VOCAB)
    mean = counts.float().mean()
    assert mean > 900 and (counts - mean).abs().max() < 0.15 * mean  # every id, specials too (like the stock one)
    changed = (batch["input_ids"][m] != batch["labels"][m]).float().mean()
    assert abs(changed - 63 / 64) < 0.01


def test_masks_change_with_epoch_but_keep_the_rate(tokenizer):
    examples = _many(tokenizer, n=400)
    e0 = ReproducibleMLMCollator(tokenizer, seed=1, epoch=0)(examples)["labels"] != -100
    e1 = ReproducibleMLMCollator(tokenizer, seed=1, epoch=1)(examples)["labels"] != -100
    assert abs(e0.sum() / e1.sum() - 1) < 0.05
    # independent draws: a position masked in epoch 0 is masked again in epoch 1 about 15 % of the time
    assert abs((e0 & e1).sum() / e0.sum() - 0.15) < 0.03
    assert sum(not torch.equal(a, b) for a, b in zip(e0, e1)) > 0.9 * len(examples)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_same_ids_same_masks_whatever_the_batch_and_padding(tokenizer, padding_side):
    tokenizer.padding_side = padding_side
    examples = _many(tokenizer, n=40, seed=3)
    alone = [ReproducibleMLMCollator(tokenizer, seed=7)([e]) for e in examples]
    reference = [(a["input_ids"][0], a["labels"][0]) for a in alone]
    for multiple, order in ((None, range(40)), (16, reversed(range(40)))):
        order = list(order)
        batch = ReproducibleMLMCollator(tokenizer, seed=7, pad_to_multiple_of=multiple)([examples[i] for i in order])
        for row, i in enumerate(order):
            own = batch["attention_mask"][row] == 1
            assert torch.equal(batch["input_ids"][row][own], reference[i][0])
            assert torch.equal(batch["labels"][row][own], reference[i][1])
            assert (batch["labels"][row][~own] == -100).all()
    # padding stored in the example (attention 0) does not change its masks either
    stored = {k: v + [tokenizer.pad_token_id if k == "input_ids" else 0] * 5 for k, v in examples[0].items()}
    if padding_side == "left":
        stored = {k: v[-5:] + v[:-5] for k, v in stored.items()}
    padded = ReproducibleMLMCollator(tokenizer, seed=7)([stored])
    own = padded["attention_mask"][0] == 1
    assert torch.equal(padded["labels"][0][own], reference[0][1])
    # one token changed: another mask (two independent masks of ~25 tokens coincide well under 1 % of the time)
    differ = 0
    for e in examples:
        ids = list(e["input_ids"])
        ids[1] = 5 + (ids[1] - 4) % 59
        a = ReproducibleMLMCollator(tokenizer, seed=7)([e])["labels"][0, 2:]
        b = ReproducibleMLMCollator(tokenizer, seed=7)([{**e, "input_ids": ids}])["labels"][0, 2:]
        differ += not torch.equal(a != -100, b != -100)
    assert differ >= 38


def test_unk_is_masked_other_special_tokens_never_with_or_without_the_stored_column(tokenizer):
    text = "w1 zz w2 [MASK] w3 [SEP] qq w4 [CLS] [UNK] w5"  # zz, qq: out of vocabulary, so [UNK]
    encoded = tokenizer(text, return_special_tokens_mask=True)
    ids = torch.tensor(encoded["input_ids"])
    unk = ids == tokenizer.unk_token_id
    assert int(unk.sum()) == 3
    # what each source says: the stored column flags only the added [CLS]/[SEP]; get_special_tokens_mask every
    # special id, [UNK] included
    assert encoded["special_tokens_mask"] == [1] + [0] * (len(ids) - 2) + [1]
    assert torch.equal(torch.tensor(tokenizer.get_special_tokens_mask(ids.tolist(), already_has_special_tokens=True))
                       .bool(), torch.isin(ids, torch.tensor(tokenizer.all_special_ids)))
    collator = ReproducibleMLMCollator(tokenizer, seed=0, mlm_probability=1.0)
    without = collator([{k: v for k, v in encoded.items() if k != "special_tokens_mask"}])
    with_column = collator([dict(encoded)])
    for batch in (without, with_column):
        masked = batch["labels"][0] != -100
        expected = ~torch.isin(ids, torch.tensor([0, 2, 3, 4]))  # all but [PAD], [CLS], [SEP], [MASK]
        assert torch.equal(masked, expected) and masked[unk].all()
        assert torch.equal(batch["labels"][0][masked], ids[masked])
    assert torch.equal(without["input_ids"], with_column["input_ids"])
    # a position the stored column flags is never masked, whatever its token
    flagged = dict(encoded, special_tokens_mask=[1, 1] + encoded["special_tokens_mask"][2:])
    assert collator([flagged])["labels"][0, 1] == -100 and without["labels"][0, 1] != -100


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("columns", [("input_ids",), ("input_ids", "attention_mask"),
                                     ("input_ids", "token_type_ids", "attention_mask", "special_tokens_mask")])
def test_fast_padding_equals_tokenizer_pad(tokenizer, padding_side, columns):
    tokenizer.padding_side = padding_side
    examples = [{k: v for k, v in tokenizer(t, return_special_tokens_mask=True).items() if k in columns}
                for t in random_texts(7, seed=2)]
    for multiple in (None, 8, 64):
        collator = ReproducibleMLMCollator(tokenizer, pad_to_multiple_of=multiple)
        ours = collator._pad(examples)
        stock = tokenizer.pad(copy.deepcopy(examples), return_tensors="pt", pad_to_multiple_of=multiple)
        assert ours.keys() == stock.keys()
        for key in stock:
            assert torch.equal(ours[key], stock[key]), key
    # columns it does not pad, or tensors: tokenizer.pad does it, with the same masks
    as_tensors = [{k: torch.tensor(v) for k, v in e.items()} for e in examples]
    assert collator._pad(as_tensors) is None and collator._pad([{**e, "idx": 0} for e in examples]) is None
    assert torch.equal(collator(as_tensors)["labels"], collator(examples)["labels"])
    # bare lists of ids
    ids_only = collator([e["input_ids"] for e in examples])
    assert torch.equal(ids_only["labels"], collator(examples)["labels"])


def test_without_seed_or_mlm_it_is_the_stock_collator(tokenizer):
    examples = _examples(tokenizer)
    for kw in ({"seed": None}, {"mlm": False}):
        torch.manual_seed(0)
        ours = ReproducibleMLMCollator(tokenizer, pad_to_multiple_of=8, **kw)(examples)
        torch.manual_seed(0)
        stock = DataCollatorForLanguageModeling(tokenizer, pad_to_multiple_of=8, mlm=kw.get("mlm", True))(examples)
        assert ours.keys() == stock.keys()
        for key in stock:
            assert torch.equal(ours[key], stock[key]), (kw, key)
    with pytest.raises(ValueError, match="whole-word"):
        ReproducibleMLMCollator(tokenizer, whole_word_mask=True)


class _Batches(TrainerCallback):
    """Holds the epoch the trainer is in and the (epoch, ids, labels) of every example trained on."""

    def __init__(self):
        self.seen = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.epoch = int(state.epoch or 0)


class _Recording(DistillationTrainer):
    def compute_loss(self, model, inputs, *args, **kwargs):
        own = inputs["attention_mask"].bool()
        self.recorder.seen += [(self.recorder.epoch, ids[keep], labels[keep]) for ids, labels, keep
                               in zip(inputs["input_ids"], inputs["labels"], own)]
        return super().compute_loss(model, inputs, *args, **kwargs)


def test_dataloader_workers_mask_per_epoch_like_the_main_process(tmp_path, tokenizer):
    """Non-persistent workers copy the collator when each epoch's iterator starts: after CollatorEpochCallback."""
    data = text_dataset(tokenizer, 16)
    teacher = tiny_teacher(dropout=0.0)
    student = create_student(teacher, 2)

    def masks(num_workers):
        args = DistillationArguments(output_dir=str(tmp_path / str(num_workers)), report_to=[], use_cpu=True,
                                     save_strategy="no", eval_strategy="no", per_device_train_batch_size=8,
                                     num_train_epochs=2, seed=0, disable_tqdm=True,
                                     dataloader_num_workers=num_workers, dataloader_persistent_workers=False)
        recorder = _Batches()
        trainer = _Recording(model=copy.deepcopy(student), teacher_model=teacher, args=args, train_dataset=data,
                             data_collator=ReproducibleMLMCollator(tokenizer, seed=4), processing_class=tokenizer,
                             callbacks=[recorder])
        trainer.recorder = recorder
        trainer.train()
        # (epoch, the example's original ids) -> its labels, whatever batch and padding it came in
        return {(epoch, tuple(torch.where(labels != -100, labels, ids).tolist())): labels
                for epoch, ids, labels in recorder.seen}

    in_workers, in_main = masks(1), masks(0)
    assert len(in_workers) == 32 and in_workers.keys() == in_main.keys()
    assert all(torch.equal(in_workers[k], in_main[k]) for k in in_main)
    # epoch 1's masks are the collator's at epoch=1, not epoch 0's again
    changed = 0
    for (epoch, row), labels in in_workers.items():
        if epoch == 1:
            alone = ReproducibleMLMCollator(tokenizer, seed=4, epoch=1)([list(row)])["labels"][0]
            assert torch.equal(labels, alone)
            changed += not torch.equal(labels, in_workers[0, row])
    assert changed >= 14
