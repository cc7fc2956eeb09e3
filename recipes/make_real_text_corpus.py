"""Build the real-text pretraining corpus of the quality benchmark's teacher from ../shared/data (never committed).

train.jsonl: every distinct MedQuAD answer but the last 300, and the TrainingSet sections of MTS-Dialog repeated
(each repetition in a new order) until the clinical sections are `--clinical_share` of the words; the whole file
shuffled with a fixed seed, so that no stretch of it is one source. MedQuAD is 98 % of the raw words and templated:
without the weighting a model mostly learns MedQuAD's templates and little clinical text.
valid.jsonl: the last 300 MedQuAD answers plus the ValidationSet sections; valid_clinical.jsonl: the ValidationSet
sections alone (the held-out clinical curve). MTS-Dialog's two test sets are never used.

    python recipes/make_real_text_corpus.py --out /tmp/realtext
    python recipes/pretrain_medical_teacher.py --corpus /tmp/realtext --output_dir /tmp/realtext/teacher
"""

import argparse
import json
import random
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HELD_OUT_ANSWERS = 300


def words(texts: list[str]) -> int:
    return sum(len(text.split()) for text in texts)


def weighted_mix(general: list[str], clinical: list[str], share: float, seed: int) -> tuple[list[str], int]:
    """`general` once and `clinical` repeated (a new order each time) so that it is about `share` of the words,
    all shuffled; returns the texts and the number of repetitions (at least 1)."""
    rng = random.Random(seed)
    repeats = 1
    if 0 < share < 1:
        repeats = max(1, round(share * words(general) / ((1 - share) * words(clinical))))
    mixed = list(general)
    for _ in range(repeats):
        mixed += rng.sample(clinical, len(clinical))
    rng.shuffle(mixed)
    return mixed, repeats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder with medquad_answers.txt, mts_sections.jsonl")
    parser.add_argument("--out", type=Path, required=True, help="where train.jsonl and valid.jsonl are written")
    parser.add_argument("--clinical_share", type=float, default=1 / 3,
                        help="Fraction of the training words that are MTS-Dialog training sections (default 1/3; "
                        "0 = each section once).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the repetitions' order and the shuffle.")
    args = parser.parse_args(argv)
    if not 0 <= args.clinical_share < 1:
        parser.error(f"--clinical_share must be in [0, 1), got {args.clinical_share}")
    answers = [line.strip() for line in open(args.data / "medquad_answers.txt", encoding="utf-8") if line.strip()]
    sections = [json.loads(line) for line in open(args.data / "mts_sections.jsonl", encoding="utf-8")]
    clinical_train = [s["text"] for s in sections if s["split"] == "TrainingSet"]
    clinical_valid = [s["text"] for s in sections if s["split"] == "ValidationSet"]
    held_out = answers[-HELD_OUT_ANSWERS:]
    general = [a for a in dict.fromkeys(answers[:-HELD_OUT_ANSWERS]) if a not in set(held_out)]
    train, repeats = weighted_mix(general, clinical_train, args.clinical_share, args.seed)
    splits = {"train": train, "valid": held_out + clinical_valid, "valid_clinical": clinical_valid}
    args.out.mkdir(parents=True, exist_ok=True)
    for name, texts in splits.items():
        with open(args.out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": text}) + "\n" for text in texts)
        print(f"{args.out / name}.jsonl: {len(texts)} texts")
    mix = {"clinical_share": args.clinical_share, "clinical_repeats": repeats, "seed": args.seed,
           "medquad_answers": len(general), "mts_training_sections": len(clinical_train),
           "clinical_word_share": round(repeats * words(clinical_train) / words(train), 4)}
    (args.out / "mix.json").write_text(json.dumps(mix, indent=1) + "\n")
    print(f"MTS-Dialog training sections × {repeats}: {mix['clinical_word_share']:.1%} of the training words")


if __name__ == "__main__":
    main()
