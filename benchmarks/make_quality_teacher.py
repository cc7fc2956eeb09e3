"""Score the pretrained real-text teacher against a unigram model, store it in float16 and write its asset card.

    python recipes/make_real_text_corpus.py --out /tmp/realtext
    python recipes/pretrain_medical_teacher.py --corpus /tmp/realtext --output_dir /tmp/realtext/teacher
    python benchmarks/make_quality_teacher.py --corpus /tmp/realtext --trained /tmp/realtext/teacher

Held-out text: valid.jsonl of the corpus (the last 300 MedQuAD answers and MTS-Dialog's ValidationSet), each text
truncated to 128 tokens, 15 % of its tokens masked with a fixed seed (`bench_quality.masked_batches`). The unigram
model is add-one smoothed token frequencies of train.jsonl. Writes --out (default benchmarks/assets/
medical-bert-teacher): float16 safetensors, tokenizer, scores.json and README.md (the card, every number from here).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from bench_quality import DEFAULT_TEACHER, masked_batches, score_masked_lm, score_unigram, unigram_log_probs
from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

FILL_MASK_EXAMPLES = ["high blood pressure can damage the [MASK] and kidneys.",
                      "the patient was started on [MASK] for her diabetes.",
                      "symptoms include fever, cough and shortness of [MASK].",
                      "this condition is inherited in an autosomal [MASK] pattern.",
                      "the patient denies chest pain or shortness of [MASK]."]


def read_texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in open(path, encoding="utf-8") if line.strip()]


def card(scores: dict, run: dict) -> str:
    """The asset card: what the model is, how it was made (from run.json), how well it does (from scores)."""
    a = run["args"]
    examples = "\n".join(f"| `{text}` | {', '.join(guesses)} |" for text, guesses in scores["examples"].items())
    epochs = run["train_steps"] * a["per_device_train_batch_size"] / run["train_blocks"]
    m, u = scores["model"], scores["unigram"]
    resumed = " (the last leg of a resumed run)" if run.get("resumed") else ""
    if run.get("last_logged_loss") is not None:
        loss = f"training loss ({a['mlm_probability'] * 100:g} % masking) {run['last_logged_loss']:.3f} at the last log"
    else:  # a run shorter than logging_steps logs no loss
        loss = f"mean training loss ({a['mlm_probability'] * 100:g} % masking) {run['mean_train_loss']:.3f}"
    return f"""---
language: en
license: cc-by-4.0
library_name: transformers
pipeline_tag: fill-mask
tags:
- bert
- fill-mask
- medical
- hf-distil-benchmark
---

# medical-bert-teacher (the teacher of hf-distil's quality benchmark)

A {a['num_hidden_layers']}-layer, {a['hidden_size']}-wide BERT masked-language model
({run['parameters'] / 1e6:.2f} M parameters, lowercase WordPiece vocabulary of {run['vocab_size']:,},
{a['block_size']} positions) pretrained **from scratch on a CPU** on real medical text: the consumer-health answers
of MedQuAD and the training split of MTS-Dialog's clinical-note sections. It exists so that
`benchmarks/bench_quality.py` has, offline, a teacher that has seen far more text than its students will. It is
small and briefly trained: **not a clinical model**; never use it on patients or their notes.

## Held-out quality

Fixed 15 % masking of {m['masked_tokens']:,} tokens in {scores['held_out_texts']} held-out texts (the last 300
MedQuAD answers and MTS-Dialog's ValidationSet, each cut to 128 tokens; MTS-Dialog's test sets were never read):

| | masked-token accuracy | perplexity |
| --- | ---: | ---: |
| this model | {m['masked_accuracy']:.3f} | {m['perplexity']:.1f} |
| unigram model of the training text (always guesses "{scores['unigram_top_token']}") \
| {u['masked_accuracy']:.3f} | {u['perplexity']:.1f} |

Fill-mask, top 3:

| input | guesses |
| --- | --- |
{examples}

## How it was made

```bash
python recipes/make_real_text_corpus.py --out /tmp/realtext
python recipes/pretrain_medical_teacher.py --corpus /tmp/realtext --output_dir /tmp/realtext/teacher \\
    --max_steps {a['max_steps']} --seed {a['seed']}
python benchmarks/make_quality_teacher.py --corpus /tmp/realtext --trained /tmp/realtext/teacher
```

{run['train_steps']:,} steps of {a['per_device_train_batch_size']} blocks of {a['block_size']} tokens
({run['train_blocks']:,} training blocks from {run['train_texts']:,} texts, {epochs:.1f} epochs),
{a['mlm_probability']:.0%} masking, learning rate {a['learning_rate']:g} with {a['warmup_ratio']:.0%} linear warmup
and linear decay, weight decay 0.01, sinusoidal start for the position embeddings, initialiser range
{a['initializer_range']:g}; {run['train_minutes']:.0f} minutes{resumed} on {run['threads']} shared CPU threads;
{loss}.
Weights stored in float16 (trained in float32; the scores above are of the float16 weights). The WordPiece trainer
is not deterministic, so a rerun gets a slightly different vocabulary and slightly different numbers.

## Data and licence

Trained on text under CC BY 4.0 and released under the same licence, with credit to:
- MedQuAD: Ben Abacha A. and Demner-Fushman D., "A question-entailment approach to question answering", BMC
  Bioinformatics 20, 511 (2019); answers from NIH sources (GARD, GHR, NIDDK, NINDS, NHLBI, CDC, CancerGov,
  MedlinePlus health topics).
- MTS-Dialog (training split of the note sections): Ben Abacha A., Yim W., Fan Y., Lin T., "An Empirical Study of
  Clinical Note Generation from Doctor-Patient Encounters", EACL 2023; derived from reports of www.mtsamples.com.
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True, help="Folder with train.jsonl and valid.jsonl.")
    parser.add_argument("--trained", type=Path, required=True, help="pretrain_medical_teacher.py's output_dir.")
    parser.add_argument("--out", type=Path, default=DEFAULT_TEACHER)
    args = parser.parse_args(argv)
    for path in (args.trained / "run.json", args.corpus / "train.jsonl", args.corpus / "valid.jsonl"):
        if not path.is_file():
            parser.error(f"{path} is missing: pass the corpus and the output_dir of pretrain_medical_teacher.py.")
    run = json.loads((args.trained / "run.json").read_text())
    # Scored as shipped: float16 weights, computed in float32.
    model = AutoModelForMaskedLM.from_pretrained(args.trained, dtype=torch.float32).half().float().eval()
    tokenizer = AutoTokenizer.from_pretrained(args.trained)
    held_out = read_texts(args.corpus / "valid.jsonl")
    batches = masked_batches(tokenizer, held_out)
    log_p = unigram_log_probs(tokenizer, read_texts(args.corpus / "train.jsonl"))
    fill = pipeline("fill-mask", model=model, tokenizer=tokenizer, top_k=3)
    scores = {"model": score_masked_lm(model, batches), "unigram": score_unigram(log_p, batches),
              "unigram_top_token": tokenizer.convert_ids_to_tokens(int(log_p.argmax())),
              "held_out_texts": len(held_out),
              "examples": {t: [p["token_str"].strip() for p in fill(t)] for t in FILL_MASK_EXAMPLES}}
    print(json.dumps(scores, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    tokenizer.backend_tokenizer.model.save(str(args.out))  # vocab.txt, for tools that build BERT tokenizers from it
    (args.out / "scores.json").write_text(json.dumps(scores, indent=1) + "\n")
    run_summary = {k: v for k, v in run.items() if k != "log_history"}
    (args.out / "pretraining.json").write_text(json.dumps(run_summary, indent=1) + "\n")
    (args.out / "README.md").write_text(card(scores, run), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
