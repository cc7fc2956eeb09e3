"""Score the pretrained real-text teacher against a unigram model, store it in float16 and write its asset card.

    python recipes/make_real_text_corpus.py --out /tmp/realtext
    python recipes/pretrain_medical_teacher.py --corpus /tmp/realtext --output_dir /tmp/realtext/teacher
    python benchmarks/make_quality_teacher.py --corpus /tmp/realtext --trained /tmp/realtext/teacher

Held-out text: valid.jsonl of the corpus (the last 300 MedQuAD answers and MTS-Dialog's ValidationSet), each text
truncated to 128 tokens, 15 % of its tokens masked with a fixed seed (`mlm_scores.masked_batches`), scored whole and
by source. The unigram model is add-one smoothed token frequencies of train.jsonl. Writes --out (default
benchmarks/assets/medical-bert-teacher): float16 safetensors, tokenizer, scores.json, pretraining.json (the run and
its held-out curve) and README.md (the card, every number from here).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from bench_quality import DEFAULT_TEACHER
from mlm_scores import masked_batches, score_masked_lm, score_unigram, unigram_log_probs
from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

FILL_MASK_EXAMPLES = ["high blood pressure can damage the [MASK] and kidneys.",
                      "the patient was started on [MASK] for her diabetes.",
                      "symptoms include fever, cough and shortness of [MASK].",
                      "this condition is inherited in an autosomal [MASK] pattern.",
                      "the patient denies chest pain or shortness of [MASK]."]


def read_texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in open(path, encoding="utf-8") if line.strip()]


def held_out_curve(run: dict) -> list[dict]:
    """The run's held-out entries (its start and every eval_steps), in step order."""
    entries = [run["held_out_start"]] if run.get("held_out_start") else []
    entries += [e["held_out"] for e in run.get("log_history", []) if "held_out" in e]
    return sorted({e["step"]: e for e in entries}.values(), key=lambda e: e["step"])


def curve_table(curve: list[dict], rows: int = 12) -> str:
    """Every k-th held-out entry (about `rows` of them, the best and the last always) as a markdown table."""
    if not curve:
        return ""
    best = min(curve, key=lambda e: e["clinical_perplexity"])
    k = max(1, len(curve) // rows)
    shown = [e for i, e in enumerate(curve) if i % k == 0 or e is best or e is curve[-1]]
    lines = ["| step | held-out clinical perplexity | held-out MedQuAD perplexity |", "| ---: | ---: | ---: |"]
    lines += [f"| {e['step']:,}{' (kept)' if e is best else ''} | {e['clinical_perplexity']:.1f} "
              f"| {e['medquad_perplexity']:.1f} |" for e in shown]
    return "\n".join(lines)


def curve_lead(curve: list[dict]) -> str:
    if not curve:
        return ""
    return ("During pretraining (the clinical perplexity averages several fixed maskings of the ValidationSet, so it "
            "differs a little from the single masking above):\n\n")


def origin_text(run: dict, init: dict | None) -> str:
    """How the weights started: from scratch, or continued from an earlier run (its own record)."""
    if not run.get("init_from"):
        return (f"From scratch: a lowercase WordPiece vocabulary trained on the corpus, then {run['train_steps']:,} "
                "steps")
    if not init:
        return f"Continued from the weights in `{run['init_from']}` for {run['train_steps']:,} steps"
    first = init["pretraining"]
    fa = first["args"]
    previous = init.get("scores", {}).get("model", {})
    was = f" (held-out perplexity {previous['perplexity']:.1f})" if previous else ""
    return (f"In two legs. First, from scratch on the corpus without weighting (MTS-Dialog ~2 % of it): a lowercase "
            f"WordPiece vocabulary, then {first['train_steps']:,} steps of {fa['per_device_train_batch_size']} blocks "
            f"at learning rate {fa['learning_rate']:g}, {first['train_minutes']:.0f} minutes: the benchmark's earlier "
            f"teacher{was}. Then, continued from those weights and that vocabulary, {run['train_steps']:,} steps "
            "(`--init_from`)")


def init_flags(run: dict, init: dict | None) -> str:
    return "--init_from FOLDER_OF_THE_EARLIER_TEACHER " if run.get("init_from") else ""


def card(scores: dict, run: dict, init: dict | None = None) -> str:
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
    curve = held_out_curve(run)
    best = run.get("best")
    mix = run.get("mix") or {}
    mix_text = (f" The MTS-Dialog training sections are repeated {mix['clinical_repeats']} times (each time in a new "
                f"order) so that they are {mix['clinical_word_share']:.0%} of the training words, and the file is "
                "shuffled: MedQuAD alone is 98 % of the raw words and templated." if mix.get("clinical_repeats", 1) > 1
                else "")
    stop = (f" The held-out clinical perplexity (MTS-Dialog's ValidationSet, {a.get('clinical_mask_seeds', 1)} fixed "
            f"maskings) was measured every {a['eval_steps']} steps; the weights kept are those of its best, step "
            f"{best['step']:,} of {run['train_steps']:,}." if best else "")
    late = [e for e in curve if e["step"] >= run["train_steps"] - 1000]
    if best and len(late) > 1:
        stop += (f" Over the last {late[-1]['step'] - late[0]['step']:,} steps it moved from "
                 f"{late[0]['clinical_perplexity']:.1f} to {late[-1]['clinical_perplexity']:.1f}, with the learning "
                 "rate decaying to 0.")
    by_source = "".join(f"| {label} | {scores[key]['masked_accuracy']:.3f} | {scores[key]['perplexity']:.1f} |\n"
                        for key, label in (("clinical", "  clinical: MTS-Dialog ValidationSet"),
                                           ("medquad", "  MedQuAD: the last 300 answers")) if key in scores)
    previous = (init or {}).get("scores", {}).get("model")
    previous_row = (f"| the earlier teacher this one continues | {previous['masked_accuracy']:.3f} "
                    f"| {previous['perplexity']:.1f} |\n" if previous else "")
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
small: **not a clinical model**; never use it on patients or their notes.

## Held-out quality

Fixed 15 % masking of {m['masked_tokens']:,} tokens in {scores['held_out_texts']} held-out texts (the last 300
MedQuAD answers and MTS-Dialog's ValidationSet, each cut to 128 tokens; MTS-Dialog's test sets were never read):

| | masked-token accuracy | perplexity |
| --- | ---: | ---: |
| this model | {m['masked_accuracy']:.3f} | {m['perplexity']:.1f} |
{by_source}{previous_row}| unigram model of the training text (always guesses "{scores['unigram_top_token']}") \
| {u['masked_accuracy']:.3f} | {u['perplexity']:.1f} |

{curve_lead(curve)}{curve_table(curve)}

Fill-mask, top 3:

| input | guesses |
| --- | --- |
{examples}

## How it was made

```bash
python recipes/make_real_text_corpus.py --out /tmp/realtext
python recipes/pretrain_medical_teacher.py --corpus /tmp/realtext --output_dir /tmp/realtext/teacher \\
    {init_flags(run, init)}--max_steps {a['max_steps']} --learning_rate {a['learning_rate']:g} \\
    --warmup_ratio {a['warmup_ratio']:g} --seed {a['seed']}
python benchmarks/make_quality_teacher.py --corpus /tmp/realtext --trained /tmp/realtext/teacher
```

{origin_text(run, init)} of {a['per_device_train_batch_size']} blocks of {a['block_size']} tokens
({run['train_blocks']:,} training blocks from {run['train_texts']:,} texts, {epochs:.1f} epochs),
{a['mlm_probability']:.0%} masking, learning rate {a['learning_rate']:g} with {a['warmup_ratio']:.0%} warmup
and {a.get('lr_scheduler_type', 'linear')} decay, weight decay 0.01, dropout {a.get('hidden_dropout_prob', 0.1):g};
{run['train_minutes']:.0f} minutes{resumed} on {run['threads']} shared CPU threads, float32; {loss}.{mix_text}{stop}
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
    clinical_path = args.corpus / "valid_clinical.jsonl"
    by_source = {}
    if clinical_path.is_file():  # the held-out text by source: the clinical sections and the MedQuAD answers
        clinical = read_texts(clinical_path)
        by_source = {"clinical": score_masked_lm(model, masked_batches(tokenizer, clinical)),
                     "medquad": score_masked_lm(model, masked_batches(
                         tokenizer, [t for t in held_out if t not in set(clinical)]))}
    scores = {"model": score_masked_lm(model, batches), **by_source, "unigram": score_unigram(log_p, batches),
              "unigram_top_token": tokenizer.convert_ids_to_tokens(int(log_p.argmax())),
              "held_out_texts": len(held_out),
              "examples": {t: [p["token_str"].strip() for p in fill(t)] for t in FILL_MASK_EXAMPLES}}
    print(json.dumps(scores, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    tokenizer.backend_tokenizer.model.save(str(args.out))  # vocab.txt, for tools that build BERT tokenizers from it
    (args.out / "scores.json").write_text(json.dumps(scores, indent=1) + "\n")
    init_path = args.trained / "init_record.json"
    init = json.loads(init_path.read_text()) if init_path.exists() else None
    run_summary = {k: v for k, v in run.items() if k != "log_history"}
    run_summary["held_out_curve"] = held_out_curve(run)
    if init:
        run_summary["init_record"] = init
    (args.out / "pretraining.json").write_text(json.dumps(run_summary, indent=1) + "\n")
    (args.out / "README.md").write_text(card(scores, run, init), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
