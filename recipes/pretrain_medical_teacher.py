"""Pretrain the quality benchmark's teacher: a 6-layer BERT masked-LM on real medical text, on a CPU.

The text is what `recipes/make_real_text_corpus.py` builds from ../shared/data (MedQuAD answers and the
*training* sections of MTS-Dialog, weighted; their test sets are never read). From scratch, a lowercase WordPiece
vocabulary is trained on it; with `--init_from` a trained model (and its tokenizer) is continued instead. Then
`BertForMaskedLM` with the stock `Trainer`, computing the masked-LM loss only at the masked rows (the prediction head
over the vocabulary is most of a narrow model's cost). Every `eval_steps` the held-out clinical text
(valid_clinical.jsonl, `clinical_mask_seeds` fixed maskings of 15 %) and the held-out MedQuAD answers are scored
as the benchmark scores them; the weights with the best clinical perplexity are kept in `best/` and are the result.
Checkpoints every `save_steps`, so an interrupted run resumes (`--resume true`).

    python recipes/make_real_text_corpus.py --out /tmp/realtext
    python recipes/pretrain_medical_teacher.py --corpus /tmp/realtext --output_dir /tmp/realtext/teacher
    python benchmarks/make_quality_teacher.py --corpus /tmp/realtext --trained /tmp/realtext/teacher
"""

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from datasets import load_dataset
from pretrain_teacher import group_into_blocks, init_sinusoidal_positions_, train_tokenizer
from transformers import (
    BertConfig,
    BertForMaskedLM,
    DataCollatorForLanguageModeling,
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from mlm_scores import masked_batches, score_masked_lm  # noqa: E402  (the benchmark's own scoring)


@dataclass
class MedicalTeacherArguments:
    """The corpus, the model's shape and the training budget (defaults: the shipped quality teacher)."""

    corpus: str = field(metadata={"help": "Folder with train.jsonl and valid.jsonl from make_real_text_corpus.py."})
    output_dir: str = field(metadata={"help": "Where the float32 model, tokenizer, checkpoints/ and run.json go."})
    vocab_size: int = 8000
    block_size: int = 128
    num_hidden_layers: int = 6
    hidden_size: int = 128
    num_attention_heads: int = 2
    intermediate_size: int = 512
    initializer_range: float = 0.05
    max_steps: int = 4000
    learning_rate: float = 5e-4
    warmup_ratio: float = 0.05
    per_device_train_batch_size: int = 64
    mlm_probability: float = 0.3
    save_steps: int = 500
    eval_steps: int = 500
    logging_steps: int = 50
    seed: int = 42
    resume: bool = field(default=False, metadata={"help": "Continue from the last checkpoint in output_dir."})
    init_from: str | None = field(default=None, metadata={
        "help": "A trained BertForMaskedLM folder to continue (its weights and tokenizer; the shape flags are not "
        "used), instead of a new vocabulary and a random init."})
    lr_scheduler_type: str = "linear"
    hidden_dropout_prob: float = 0.1
    clinical_mask_seeds: int = field(default=5, metadata={
        "help": "Fixed maskings of the held-out clinical text averaged in its curve (it is small: ~4.5k tokens)."})


class HeldOutCurve(TrainerCallback):
    """Every eval_steps: perplexity of the held-out clinical and MedQuAD text under fixed masks (the benchmark's
    scoring), appended to the log history; the weights with the best clinical perplexity are saved to `best/`."""

    def __init__(self, tokenizer, corpus: Path, output: Path, mask_seeds: int):
        def texts(name):
            return [json.loads(line)["text"] for line in open(corpus / name, encoding="utf-8") if line.strip()]

        clinical = texts("valid_clinical.jsonl")
        general = [t for t in texts("valid.jsonl") if t not in set(clinical)]
        self.sets = {"clinical": [b for seed in range(mask_seeds) for b in masked_batches(tokenizer, clinical, seed)],
                     "medquad": masked_batches(tokenizer, general)}
        self.best_dir = output / "best"
        self.record = output / "best.json"
        self.best = json.loads(self.record.read_text()) if self.record.exists() else None

    def score(self, model, step: int) -> dict:
        was_training = model.training
        scores = {name: score_masked_lm(model, batches) for name, batches in self.sets.items()}
        model.train(was_training)
        entry = {"step": step, **{f"{name}_perplexity": s["perplexity"] for name, s in scores.items()},
                 **{f"{name}_masked_accuracy": s["masked_accuracy"] for name, s in scores.items()}}
        if self.best is None or entry["clinical_perplexity"] < self.best["clinical_perplexity"]:
            self.best = entry
            model.save_pretrained(self.best_dir)
            self.record.write_text(json.dumps(entry, indent=1) + "\n")
        print(f"held-out step {step}: clinical perplexity {entry['clinical_perplexity']:.1f}, MedQuAD "
              f"{entry['medquad_perplexity']:.1f} (best clinical {self.best['clinical_perplexity']:.1f} at step "
              f"{self.best['step']})", flush=True)
        return entry

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % args.eval_steps == 0 or state.global_step == state.max_steps:
            state.log_history.append({"held_out": self.score(model, state.global_step)})


class SparseMaskedLMTrainer(Trainer):
    """`Trainer` whose loss runs the prediction head only at the masked rows (the same loss, a cheaper step)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        hidden = model.bert(**inputs).last_hidden_state
        rows = labels != -100
        loss = torch.nn.functional.cross_entropy(model.cls(hidden[rows]).float(), labels[rows], reduction="sum")
        loss = loss / (num_items_in_batch if num_items_in_batch is not None else rows.sum())
        return (loss, {"loss": loss}) if return_outputs else loss


def main(argv=None):
    (args,) = HfArgumentParser(MedicalTeacherArguments).parse_args_into_dataclasses(argv)
    set_seed(args.seed)
    output = Path(args.output_dir)
    corpus = Path(args.corpus)
    for name in ("train.jsonl", "valid.jsonl", "valid_clinical.jsonl"):
        if not (corpus / name).is_file():
            raise SystemExit(f"pretrain_medical_teacher.py: error: --corpus {corpus} has no {name}: build it with "
                             f"python recipes/make_real_text_corpus.py --out {corpus}")
    raw = load_dataset("json", data_files={"train": str(corpus / "train.jsonl")})
    from transformers import AutoTokenizer

    if args.init_from:
        tokenizer = AutoTokenizer.from_pretrained(args.init_from)
        output.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(output)
        tokenizer.backend_tokenizer.model.save(str(output))
        record = output / "init_record.json"  # how the starting weights were made (an asset folder's record)
        if not record.exists() and (Path(args.init_from) / "pretraining.json").exists():
            record.write_text(json.dumps({name: json.loads((Path(args.init_from) / f"{name}.json").read_text())
                                          for name in ("pretraining", "scores")
                                          if (Path(args.init_from) / f"{name}.json").exists()}, indent=1) + "\n")
    elif args.resume and (output / "tokenizer.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(output)
    else:
        tokenizer = train_tokenizer(raw["train"]["text"], args.vocab_size, args.block_size)
        output.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(output)
        tokenizer.backend_tokenizer.model.save(str(output))
    train_blocks = group_into_blocks(raw["train"], tokenizer, args.block_size)
    if args.init_from:  # trained in float32 whatever the folder's dtype
        model = BertForMaskedLM.from_pretrained(args.init_from, dtype=torch.float32,
                                                hidden_dropout_prob=args.hidden_dropout_prob)
        for name in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size"):
            setattr(args, name, getattr(model.config, name))
    else:
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=args.hidden_size,
                            num_hidden_layers=args.num_hidden_layers, num_attention_heads=args.num_attention_heads,
                            intermediate_size=args.intermediate_size, max_position_embeddings=args.block_size,
                            initializer_range=args.initializer_range, pad_token_id=tokenizer.pad_token_id,
                            hidden_dropout_prob=args.hidden_dropout_prob)
        model = BertForMaskedLM(config)
        init_sinusoidal_positions_(model)
    training_args = TrainingArguments(
        output_dir=str(output / "checkpoints"), max_steps=args.max_steps, learning_rate=args.learning_rate,
        per_device_train_batch_size=args.per_device_train_batch_size, warmup_steps=args.warmup_ratio,
        weight_decay=0.01, lr_scheduler_type=args.lr_scheduler_type, logging_steps=args.logging_steps,
        save_strategy="steps", save_steps=args.save_steps, save_total_limit=2, eval_strategy="no",
        eval_steps=args.eval_steps, per_device_eval_batch_size=64, prediction_loss_only=True, report_to="none",
        seed=args.seed, disable_tqdm=True, logging_nan_inf_filter=False)
    curve = HeldOutCurve(tokenizer, corpus, output, args.clinical_mask_seeds)
    trainer = SparseMaskedLMTrainer(
        model=model, args=training_args, train_dataset=train_blocks, callbacks=[curve],
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=args.mlm_probability))
    start = time.perf_counter()
    start_scores = None if args.resume else curve.score(model, 0)  # where it starts (scratch or --init_from)
    state = trainer.train(resume_from_checkpoint=True if args.resume else None)
    minutes = (time.perf_counter() - start) / 60
    # The result is the held-out clinical best (early stopping on the validation sections, never the test sets).
    BertForMaskedLM.from_pretrained(curve.best_dir, dtype=torch.float32).save_pretrained(output)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    run = dict(args=asdict(args), train_steps=state.global_step, train_minutes=round(minutes, 1),
               resumed=bool(args.resume), last_logged_loss=losses[-1] if losses else None,
               mean_train_loss=state.training_loss, parameters=model.num_parameters(),
               vocab_size=len(tokenizer), train_texts=len(raw["train"]), train_blocks=len(train_blocks),
               threads=torch.get_num_threads(), init_from=args.init_from, held_out_start=start_scores, best=curve.best,
               mix=json.loads((corpus / "mix.json").read_text()) if (corpus / "mix.json").exists() else None,
               log_history=trainer.state.log_history)
    (output / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    print(f"trained {state.global_step} steps in {minutes:.1f} minutes; saved {output}")


if __name__ == "__main__":
    main()
