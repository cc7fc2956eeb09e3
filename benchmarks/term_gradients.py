"""Each loss term's size and gradient norm in TinyBERT-style distillation, the three attention forms side by side.

At the quality benchmark's teacher and a 3 × 64 student (bench_quality's TinyBERT-style row: a fresh random init, or
--student FOLDER, e.g. one that bench_quality trained), on real clinical text (MTS-Dialog TrainingSet sections packed
into 128-token blocks, 15 % masked with a fixed seed), with the objective of recipes/configs/tiny_clinical_bert.yaml
(attention + intermediate + KD at T 1, each weight 1): for attention_loss scores (TinyBERT's own), probs and kl,
every term's value and the norm of its gradient with respect to the student's trainable weights (projections
included), averaged over the batches. A term whose gradient is a thousandth of KD's teaches nothing at that weight.

    python benchmarks/term_gradients.py --json benchmarks/results/term_gradients.json
    python benchmarks/term_gradients.py --smoke        # two small batches
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import DEFAULT_DATA, DEFAULT_TEACHER, NARROW, TINYBERT_OBJECTIVE  # noqa: E402

ATTENTION_FORMS = ("scores", "probs", "kl")


def clinical_blocks(tokenizer, data: Path, count: int, batch_size: int, seed: int = 0) -> list[dict]:
    """`count` batches of 128-token blocks ([CLS] 126 tokens [SEP]) of MTS-Dialog TrainingSet text, masked."""
    from transformers import DataCollatorForLanguageModeling

    rows = [json.loads(line) for line in open(data / "mts_sections.jsonl", encoding="utf-8") if line.strip()]
    texts = [row["text"] for row in rows if row["split"] == "TrainingSet"]
    ids = [i for row in tokenizer(texts, add_special_tokens=False)["input_ids"] for i in row]
    blocks = [[tokenizer.cls_token_id, *ids[i:i + 126], tokenizer.sep_token_id]
              for i in range(0, len(ids) - 126, 126)][:count * batch_size]
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=seed)
    return [collator([{"input_ids": b} for b in blocks[i:i + batch_size]])
            for i in range(0, len(blocks), batch_size)][:count]


def term_gradients(student, teacher, batches: list[dict], attention_loss: str, output_dir: str) -> dict:
    """{term: {value, grad_norm}} averaged over `batches`, for the TinyBERT objective with this attention form."""
    from hf_distil import DistillationArguments, DistillationTrainer
    from hf_distil.terms import weight_of

    args = DistillationArguments(output_dir=output_dir, report_to="none", use_cpu=True, alpha_mlm=0.0,
                                 alpha_hidden=0.0, **{**TINYBERT_OBJECTIVE, "attention_loss": attention_loss})
    trainer = DistillationTrainer(model=copy.deepcopy(student), teacher_model=teacher, args=args)
    model = trainer.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    found: dict[str, dict[str, list[float]]] = {}
    for batch in batches:
        _, values, _ = trainer._distillation_loss(model, batch, training=False)
        for name, value in values.items():
            grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
            norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))
            entry = found.setdefault(name, {"value": [], "grad_norm": []})
            entry["value"].append(float(value.detach()))
            entry["grad_norm"].append(float(norm))
    weights = {name: weight_of(args, name) for name in found}
    return {name: {"value": statistics.fmean(e["value"]), "grad_norm": statistics.fmean(e["grad_norm"]),
                   "weight": weights[name]} for name, e in found.items()}


def markdown(report: dict) -> str:
    lines = ["| attention_loss | term | value | ‖∇‖ | weight | weight · ‖∇‖ / KD's |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for form, terms in report["forms"].items():
        kd = terms["kd"]["grad_norm"] * terms["kd"]["weight"]
        for name, t in terms.items():
            lines.append(f"| {form} | {name} | {t['value']:.4g} | {t['grad_norm']:.3g} | {t['weight']:g} "
                         f"| {t['weight'] * t['grad_norm'] / kd:.3g} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER)
    parser.add_argument("--student", type=Path, help="A trained 3 × 64 student (default: a fresh random init).")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--smoke", action="store_true", help="Two batches of 4 blocks.")
    parser.add_argument("--json", type=Path, help="Write the results here (and a .md beside it).")
    args = parser.parse_args(argv)
    if not (args.data / "mts_sections.jsonl").is_file():
        parser.error(f"--data {args.data} has no mts_sections.jsonl: pass the folder that holds the shared text.")
    if args.smoke:
        args.batches, args.batch_size = 2, 4
    import tempfile

    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from hf_distil import create_student

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    teacher = AutoModelForMaskedLM.from_pretrained(args.teacher, dtype=torch.float32)
    if args.student:
        student = AutoModelForMaskedLM.from_pretrained(args.student, dtype=torch.float32)
    else:
        student = create_student(teacher, 3, **NARROW)
    batches = clinical_blocks(tokenizer, args.data, args.batches, args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        forms = {form: term_gradients(student, teacher, batches, form, tmp) for form in ATTENTION_FORMS}
    report = {"teacher": str(args.teacher), "student": str(args.student) if args.student else "random init (seed 0)",
              "batches": len(batches), "batch_size": args.batch_size, "objective": TINYBERT_OBJECTIVE, "forms": forms}
    text = markdown(report)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        args.json.with_suffix(".md").write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
