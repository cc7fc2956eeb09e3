import torch

from hf_distil.collator import ReproducibleMLMCollator


def test_masks_depend_on_seed_and_batch_only(tokenizer):
    examples = [tokenizer(" ".join(f"w{i}" for i in range(40))), tokenizer("w3 w4 w5 w6 w7 w8")]
    collator = ReproducibleMLMCollator(tokenizer, seed=3, pad_to_multiple_of=8)
    first = collator(examples)
    torch.manual_seed(123)
    torch.rand(100)  # the global RNG moves; masks must not
    second = collator(examples)
    assert torch.equal(first["input_ids"], second["input_ids"]) and torch.equal(first["labels"], second["labels"])
    assert first["input_ids"].shape[1] % 8 == 0
    masked = first["labels"] != -100
    assert 1 <= int(masked.sum()) <= 20
    # masked positions carry the original ids as labels; special tokens and padding are never masked
    assert not masked[:, 0].any() and not masked[first["attention_mask"] == 0].any()
    other = ReproducibleMLMCollator(tokenizer, seed=4)(examples)
    assert not torch.equal(other["labels"], first["labels"])
    rate = sum(int((ReproducibleMLMCollator(tokenizer, seed=s)(examples)["labels"] != -100).sum())
               for s in range(50)) / (50 * 46)
    assert 0.11 < rate < 0.19  # mlm_probability 0.15 over the 46 maskable tokens
