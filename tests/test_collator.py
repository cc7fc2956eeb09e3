import torch

from hf_distil.collator import ReproducibleMLMCollator


def _examples(tokenizer):
    return [tokenizer(" ".join(f"w{i}" for i in range(40))), tokenizer("w3 w4 w5 w6 w7 w8"),
            tokenizer(" ".join(f"w{i % 7}" for i in range(25)))]


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
    assert torch.equal(first["labels"][0, : len(original)][masked[0, : len(original)]], original[masked[0, : len(original)]])
    # another seed or another epoch: other masks (dynamic masking across epochs)
    assert not torch.equal(ReproducibleMLMCollator(tokenizer, seed=4)(examples)["labels"], first["labels"])
    assert not torch.equal(ReproducibleMLMCollator(tokenizer, seed=3, epoch=1)(examples)["labels"][:, :48],
                           first["labels"])


def test_masking_rate_and_replacement_mix(tokenizer):
    examples = _examples(tokenizer)
    maskable = sum(len(e["input_ids"]) - 2 for e in examples)
    masked = replaced_by_mask = 0
    for seed in range(60):
        batch = ReproducibleMLMCollator(tokenizer, seed=seed)(examples)
        m = batch["labels"] != -100
        masked += int(m.sum())
        replaced_by_mask += int((batch["input_ids"][m] == tokenizer.mask_token_id).sum())
    assert 0.12 < masked / (60 * maskable) < 0.18       # mlm_probability 0.15
    assert 0.7 < replaced_by_mask / masked < 0.9         # 80 % [MASK], 10 % random, 10 % kept
