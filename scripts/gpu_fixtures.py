"""Fixtures for scripts/gpu_checks.sh: random-weight teachers of the real shapes with tokenizers, and corpora.

    python scripts/gpu_fixtures.py FOLDER

FOLDER/seed:  a Bio_ClinicalBERT-shaped teacher (12 × 768, vocabulary 28,996) and a NOTEEVENTS.csv
FOLDER/long:  a ModernBERT-base-shaped teacher (22 × 768, global attention every third layer, ±64-token local window,
              8,192 positions; the tests' 64-token vocabulary) and notes.jsonl of whole notes up to ~9,000 tokens
"""

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
from families import family_tokenizer  # noqa: E402
from tiny import bio_clinical_bert_shaped, noteevents_csv  # noqa: E402
from transformers import ModernBertConfig, ModernBertForMaskedLM  # noqa: E402


def long_context_teacher(folder: Path) -> Path:
    config = ModernBertConfig(vocab_size=64, hidden_size=768, num_hidden_layers=22, num_attention_heads=12,
                              intermediate_size=1152, max_position_embeddings=8192, local_attention=128,
                              global_attn_every_n_layers=3, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                              cls_token_id=2, sep_token_id=3)
    torch.manual_seed(0)
    ModernBertForMaskedLM(config).save_pretrained(folder)
    tokenizer = family_tokenizer(folder, "modernbert")
    tokenizer.model_max_length = 8192
    tokenizer.save_pretrained(folder)
    return folder


def main(folder: str) -> None:
    out = Path(folder)
    (out / "seed").mkdir(parents=True, exist_ok=True)
    bio_clinical_bert_shaped(out / "seed")
    noteevents_csv(out / "seed" / "NOTEEVENTS.csv", n=2000)
    (out / "long").mkdir(parents=True, exist_ok=True)
    long_context_teacher(out / "long" / "teacher")
    rng = random.Random(0)
    with open(out / "long" / "notes.jsonl", "w") as f:
        for _ in range(400):
            words = rng.choice([600, 1500, 3000, 4500, 6000, 9000])
            f.write(json.dumps({"text": " ".join(f"w{rng.randrange(59)}" for _ in range(words))}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
