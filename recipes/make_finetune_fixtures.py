"""Write the small synthetic fine-tuning fixtures under tests/fixtures/finetune/.

Deterministic (fixed seeds), so re-running it reproduces the committed files byte for byte:

    python recipes/make_finetune_fixtures.py [--out tests/fixtures/finetune]

- ``ner_{train,validation}.conll`` (+ ``ner_validation.jsonl``, the same sentences as jsonl):
  clinical sentences with i2b2-2010-style PROBLEM / TREATMENT / TEST concepts in BIO tags.
- ``assertion_{train,validation}.csv``: sentence classification (``text``, ``label``) into
  the assertion status of a problem: present / absent / possible.
- ``nli_{train,validation}.jsonl``: MedNLI-style sentence pairs (``premise``, ``hypothesis``,
  ``label``): entailment / contradiction / neutral.

Every sentence is made up from templates; none comes from a real record.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
from pathlib import Path

PROBLEMS = [
    "chest pain", "shortness of breath", "pneumonia", "type 2 diabetes", "hypertension",
    "atrial fibrillation", "acute kidney injury", "fever", "cough", "urinary tract infection",
    "congestive heart failure", "nausea", "headache", "anemia", "sepsis", "abdominal pain",
    "pleural effusion", "hyperkalemia", "deep vein thrombosis", "confusion",
]
TREATMENTS = [
    "aspirin", "metformin", "lisinopril", "insulin", "intravenous fluids", "ceftriaxone",
    "vancomycin", "heparin", "furosemide", "packed red blood cells", "physical therapy",
    "metoprolol", "supplemental oxygen", "acetaminophen", "warfarin", "albuterol nebulizers",
]
TESTS = [
    "chest x-ray", "ekg", "ct scan of the head", "blood culture", "complete blood count",
    "echocardiogram", "urinalysis", "troponin", "basic metabolic panel", "hemoglobin a1c",
    "mri of the brain", "lactate", "abdominal ultrasound", "urine culture",
]

# Slots: {PROBLEM}, {TREATMENT}, {TEST}. Tokens are space-separated; punctuation is its own token.
NER_TEMPLATES = [
    "The patient was admitted with {PROBLEM} .",
    "She was started on {TREATMENT} for {PROBLEM} .",
    "He was given {TREATMENT} and {TREATMENT} .",
    "A {TEST} showed {PROBLEM} .",
    "The {TEST} was negative for {PROBLEM} .",
    "We obtained a {TEST} to evaluate {PROBLEM} .",
    "Her {PROBLEM} improved after {TREATMENT} .",
    "He denies {PROBLEM} or {PROBLEM} .",
    "{TREATMENT} was held because of {PROBLEM} .",
    "Repeat {TEST} was unremarkable .",
    "Continue {TREATMENT} at home .",
    "She reports {PROBLEM} since yesterday .",
    "A {TEST} and a {TEST} were ordered .",
    "Follow up in clinic in two weeks .",
    "The patient was discharged home in stable condition .",
]

ASSERTION_TEMPLATES = {
    "present": [
        "The patient has {P} .", "She reports {P} .", "He was admitted with {P} .",
        "Exam is consistent with {P} .", "He complains of {P} today .",
    ],
    "absent": [
        "The patient denies {P} .", "No evidence of {P} .", "There is no {P} .",
        "She has no history of {P} .", "{P} was ruled out .",
    ],
    "possible": [
        "Cannot rule out {P} .", "Possible {P} .", "This may represent {P} .",
        "Concern for {P} .", "Symptoms are suggestive of {P} .",
    ],
}

NLI_PREMISES = [
    "The patient was given {T} for {P} .",
    "She was admitted with {P} and treated with {T} .",
    "He received {T} in the emergency department for {P} .",
]
NLI_HYPOTHESES = {
    "entailment": ["The patient has {P} .", "The patient received {T} .", "The patient was treated ."],
    "contradiction": [
        "The patient has no {P} .", "The patient did not receive any treatment .",
        "The patient is healthy .",
    ],
    "neutral": [
        "The patient has a family history of {Q} .", "The patient will be discharged tomorrow .",
        "The patient is allergic to {U} .",
    ],
}


def _capitalise(tokens: list[str]) -> list[str]:
    return [tokens[0][:1].upper() + tokens[0][1:], *tokens[1:]] if tokens else tokens


AN_WORDS = {"ekg", "echocardiogram", "mri", "abdominal"}  # take "an", not "a"


def _fix_articles(tokens: list[str]) -> list[str]:
    return [
        "an" if t.lower() == "a" and i + 1 < len(tokens) and tokens[i + 1].lower() in AN_WORDS else t
        for i, t in enumerate(tokens)
    ]


def ner_sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    """One templated sentence as (tokens, BIO tags)."""
    pools = {"PROBLEM": PROBLEMS, "TREATMENT": TREATMENTS, "TEST": TESTS}
    tokens: list[str] = []
    tags: list[str] = []
    for piece in rng.choice(NER_TEMPLATES).split():
        slot = piece.strip("{}")
        if piece.startswith("{") and slot in pools:
            words = rng.choice(pools[slot]).split()
            tokens += words
            tags += [f"B-{slot}"] + [f"I-{slot}"] * (len(words) - 1)
        else:
            tokens.append(piece)
            tags.append("O")
    return _capitalise(_fix_articles(tokens)), tags


def assertion_example(rng: random.Random) -> dict[str, str]:
    label = rng.choice(sorted(ASSERTION_TEMPLATES))
    text = rng.choice(ASSERTION_TEMPLATES[label]).format(P=rng.choice(PROBLEMS))
    return {"text": " ".join(_capitalise(text.split())), "label": label}


def nli_example(rng: random.Random) -> dict[str, str]:
    problem, other = rng.sample(PROBLEMS, 2)
    treatment, unrelated = rng.sample(TREATMENTS, 2)
    label = rng.choice(sorted(NLI_HYPOTHESES))
    fill = {"P": problem, "T": treatment, "Q": other, "U": unrelated}
    premise = rng.choice(NLI_PREMISES).format(**fill)
    hypothesis = rng.choice(NLI_HYPOTHESES[label]).format(**fill)
    return {"premise": premise, "hypothesis": hypothesis, "label": label}


def conll_text(sentences: list[tuple[list[str], list[str]]]) -> str:
    return "\n\n".join("\n".join(f"{t} {g}" for t, g in zip(*s)) for s in sentences) + "\n"


def jsonl_text(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


SIZES = {"train": 100, "validation": 40}
CLS_SIZES = {"train": 90, "validation": 30}


def build_fixtures() -> dict[str, str]:
    """File name -> content for every fixture (each split drawn from its own seeded stream)."""
    files: dict[str, str] = {}
    for offset, split in enumerate(SIZES):
        rng = random.Random(1000 + offset)
        sentences = [ner_sentence(rng) for _ in range(SIZES[split])]
        files[f"ner_{split}.conll"] = conll_text(sentences)
        if split == "validation":
            files["ner_validation.jsonl"] = jsonl_text([{"tokens": t, "tags": g} for t, g in sentences])
    for offset, split in enumerate(CLS_SIZES):
        rng = random.Random(2000 + offset)
        files[f"assertion_{split}.csv"] = csv_text([assertion_example(rng) for _ in range(CLS_SIZES[split])])
        rng = random.Random(3000 + offset)
        files[f"nli_{split}.jsonl"] = jsonl_text([nli_example(rng) for _ in range(CLS_SIZES[split])])
    return files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "finetune"
    parser.add_argument("--out", type=Path, default=default_out, help="folder to write the fixtures to")
    out = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    for name, content in build_fixtures().items():
        (out / name).write_text(content, encoding="utf-8", newline="\n")
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
