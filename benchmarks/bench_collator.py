"""Collation throughput: ReproducibleMLMCollator (ours) vs the stock DataCollatorForLanguageModeling, side by side.

Both collate the same batches of 48 examples of at most 128 tokens (MedQuAD answers from ../shared/data, tokenised
with the shipped recipes/assets/tiny-clinical-bert tokenizer; synthetic ids where either is missing), with
mlm_probability 0.15 and pad_to_multiple_of 8, in two input shapes:
  no_column    input_ids, token_type_ids, attention_mask: what Trainer hands the collator with remove_unused_columns
  with_column  the same plus the stored special_tokens_mask column from tokenisation
Each repeat times one pass over all batches per contender, contenders taking turns (who goes first alternates), so
a swing in the load of a shared machine hits both. Reported: examples/s per contender (median over repeats), the
ratio ours / stock of those medians and the median of the per-repeat ratios. One torch thread by default, as in a
DataLoader worker. Before timing, ours is checked to mask the same batch the same way twice.

    python benchmarks/bench_collator.py --json out/bench_collator.json
    python benchmarks/bench_collator.py --smoke
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FILE = REPO.parent / "shared" / "data" / "medquad_answers.txt"
DEFAULT_TOKENIZER = REPO / "recipes" / "assets" / "tiny-clinical-bert"
SHAPES = ("no_column", "with_column")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--file", default=str(DEFAULT_FILE), help="text, one example per line (synthetic ids if absent)")
    p.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER), help="a saved tokenizer (synthetic if absent)")
    p.add_argument("--batch", type=int, default=48)
    p.add_argument("--seq", type=int, default=128, help="longest example, in tokens")
    p.add_argument("--batches", type=int, default=40, help="batches per timed pass")
    p.add_argument("--repeats", type=int, default=11, help="timed passes per contender and input shape")
    p.add_argument("--threads", type=int, default=1, help="torch threads (a DataLoader worker uses 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="2 batches of 8, 2 repeats: checks the script, not speed")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    a = p.parse_args(argv)
    if a.smoke:
        a.batch, a.batches, a.repeats = 8, 2, 2
    return a


def load_tokenizer(path: str):
    """The saved tokenizer at `path`, or (absent) a WordPiece one over made-up words, and where it came from."""
    from transformers import AutoTokenizer, BertTokenizerFast

    if Path(path, "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(path), path
    folder = Path(tempfile.mkdtemp(prefix="bench_collator_"))
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(3995)]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    return BertTokenizerFast(vocab=str(folder / "vocab.txt")), "synthetic (4,000 made-up words)"


def make_examples(a, tokenizer) -> tuple[list[dict], str]:
    """`batch × batches` tokenised examples with their special_tokens_mask column, and where the text came from."""
    n = a.batch * a.batches
    if Path(a.file).exists():
        with open(a.file, encoding="utf-8") as f:
            lines = [line for line in itertools.islice(f, 4 * n) if line.strip()][:n]
        source = a.file
    else:
        rng = random.Random(a.seed)
        lines = [" ".join(f"w{rng.randrange(3995)}" for _ in range(rng.randint(20, 2 * a.seq))) for _ in range(n)]
        source = "synthetic ids"
    lines = (lines * (n // max(len(lines), 1) + 1))[:n]
    enc = tokenizer(lines, truncation=True, max_length=a.seq, return_special_tokens_mask=True)
    return [{k: enc[k][i] for k in enc} for i in range(n)], source


def measure(a, tokenizer, examples) -> dict:
    """Examples/s of each contender per repeat and input shape, contenders taking turns."""
    import torch
    from transformers import DataCollatorForLanguageModeling

    from hf_distil.collator import ReproducibleMLMCollator

    contenders = {
        "stock": DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, pad_to_multiple_of=8),
        "ours": ReproducibleMLMCollator(tokenizer, mlm_probability=0.15, pad_to_multiple_of=8, seed=a.seed),
    }
    inputs = {"with_column": examples,
              "no_column": [{k: v for k, v in e.items() if k != "special_tokens_mask"} for e in examples]}
    batches = {shape: [rows[i: i + a.batch] for i in range(0, len(rows), a.batch)] for shape, rows in inputs.items()}
    first = {s: contenders["ours"](batches[s][0]) for s in SHAPES}
    again = {s: contenders["ours"](batches[s][0]) for s in SHAPES}
    for s in SHAPES:
        assert all(torch.equal(first[s][k], again[s][k]) for k in first[s]), "ours masked one batch two ways"
        assert torch.equal(first[s]["labels"], first["no_column"]["labels"]), "the stored column changed the masks"
    masked_share = {}
    for name, collator in contenders.items():
        torch.manual_seed(a.seed)
        out = [collator(b) for b in batches["no_column"]]
        real = sum(int(o["attention_mask"].sum()) for o in out)
        masked_share[name] = sum(int((o["labels"] != -100).sum()) for o in out) / real
    rates = {s: {name: [] for name in contenders} for s in SHAPES}
    for r in range(a.repeats):
        for s in SHAPES:
            order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
            for name in order:
                collator = contenders[name]
                start = time.perf_counter()
                for b in batches[s]:
                    collator(b)
                rates[s][name].append(a.batch * len(batches[s]) / (time.perf_counter() - start))
    return {"rates": rates, "masked_share": masked_share}


def summarize(rates: dict) -> dict:
    out = {}
    for s, by_name in rates.items():
        ours, stock = statistics.median(by_name["ours"]), statistics.median(by_name["stock"])
        paired = statistics.median(o / b for o, b in zip(by_name["ours"], by_name["stock"]))
        out[s] = {"ours_examples_per_s": ours, "stock_examples_per_s": stock, "ratio": ours / stock,
                  "ratio_paired": paired}
    return out


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    import torch

    torch.set_num_threads(a.threads)
    tokenizer, tokenizer_source = load_tokenizer(a.tokenizer)
    examples, text_source = make_examples(a, tokenizer)
    lengths = [len(e["input_ids"]) for e in examples]
    print(f"bench_collator: {a.batches} batches of {a.batch} (tokens per example: median "
          f"{statistics.median(lengths):.0f}, max {max(lengths)}), {a.repeats} repeats, {a.threads} thread(s); "
          f"text: {text_source}; tokenizer: {tokenizer_source}", flush=True)
    measured = measure(a, tokenizer, examples)
    summary = summarize(measured["rates"])
    for s, fig in summary.items():
        print(f"{s:<12} ours {fig['ours_examples_per_s']:>9,.0f} examples/s   "
              f"stock {fig['stock_examples_per_s']:>9,.0f} examples/s   "
              f"ours / stock {fig['ratio']:.2f} (paired {fig['ratio_paired']:.2f})")
    print("masked share of real tokens: " + ", ".join(f"{k} {v:.3f}" for k, v in measured["masked_share"].items()))
    report = {
        "config": {k: v for k, v in vars(a).items() if k != "json"}, "text": text_source,
        "tokenizer": tokenizer_source, "torch": torch.__version__, "cpu_count": os.cpu_count(),
        "examples": len(examples), "masked_share": measured["masked_share"], "summary": summary,
        "rates": measured["rates"],
    }
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"wrote {a.json}")
    return report


if __name__ == "__main__":
    main()
