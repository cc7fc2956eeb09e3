"""Build the real-text pretraining corpus of the quality benchmark's teacher from ../shared/data (never committed).

train: every MedQuAD answer but the last 300, plus the TrainingSet sections of MTS-Dialog;
validation: the last 300 MedQuAD answers plus the ValidationSet sections. MTS-Dialog's two test sets are never used.
The benchmark's teacher is pretrained on it (see benchmarks/README.md, "Quality benchmark"):

    python recipes/make_real_text_corpus.py --out /tmp/realtext
    python recipes/pretrain_medical_teacher.py --corpus /tmp/realtext --output_dir /tmp/realtext/teacher
"""

import argparse
import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HELD_OUT_ANSWERS = 300


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder with medquad_answers.txt, mts_sections.jsonl")
    parser.add_argument("--out", type=Path, required=True, help="where train.jsonl and valid.jsonl are written")
    args = parser.parse_args(argv)
    answers = [line.strip() for line in open(args.data / "medquad_answers.txt", encoding="utf-8") if line.strip()]
    sections = [json.loads(line) for line in open(args.data / "mts_sections.jsonl", encoding="utf-8")]
    splits = {
        "train": answers[:-HELD_OUT_ANSWERS] + [s["text"] for s in sections if s["split"] == "TrainingSet"],
        "valid": answers[-HELD_OUT_ANSWERS:] + [s["text"] for s in sections if s["split"] == "ValidationSet"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, texts in splits.items():
        with open(args.out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": text}) + "\n" for text in texts)
        print(f"{args.out / name}.jsonl: {len(texts)} texts")


if __name__ == "__main__":
    main()
