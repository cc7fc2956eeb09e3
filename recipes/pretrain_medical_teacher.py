"""Pretrain the quality benchmark's teacher: a 6-layer BERT masked-LM on real medical text, from scratch, on a CPU.

The text is what `recipes/make_real_text_corpus.py` builds from ../shared/data (MedQuAD answers and the
*training* sections of MTS-Dialog; their test sets are never read). A lowercase WordPiece vocabulary is trained on
it, then `BertForMaskedLM` with the stock `Trainer`, computing the masked-LM loss only at the masked rows (the
prediction head over the vocabulary is most of a narrow model's cost). Checkpoints every `save_steps`, so an
interrupted run resumes (`--resume true`). `score` (below) then measures the teacher against a unigram model.

    python recipes/make_real_text_corpus.py --out /tmp/realtext
    python recipes/pretrain_medical_teacher.py --corpus /tmp/realtext --output_dir /tmp/realtext/teacher
    python benchmarks/make_quality_teacher.py --corpus /tmp/realtext --trained /tmp/realtext/teacher
"""

import json
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
    TrainingArguments,
    set_seed,
)


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
    for name in ("train.jsonl", "valid.jsonl"):
        if not (corpus / name).is_file():
            raise SystemExit(f"pretrain_medical_teacher.py: error: --corpus {corpus} has no {name}: build it with "
                             f"python recipes/make_real_text_corpus.py --out {corpus}")
    raw = load_dataset("json", data_files={"train": str(corpus / "train.jsonl"),
                                           "validation": str(corpus / "valid.jsonl")})
    if args.resume and (output / "tokenizer.json").exists():
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(output)
    else:
        tokenizer = train_tokenizer(raw["train"]["text"], args.vocab_size, args.block_size)
        output.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(output)
        tokenizer.backend_tokenizer.model.save(str(output))
    train_blocks = group_into_blocks(raw["train"], tokenizer, args.block_size)
    validation_blocks = group_into_blocks(raw["validation"], tokenizer, args.block_size)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=args.hidden_size,
                        num_hidden_layers=args.num_hidden_layers, num_attention_heads=args.num_attention_heads,
                        intermediate_size=args.intermediate_size, max_position_embeddings=args.block_size,
                        initializer_range=args.initializer_range, pad_token_id=tokenizer.pad_token_id)
    model = BertForMaskedLM(config)
    init_sinusoidal_positions_(model)
    training_args = TrainingArguments(
        output_dir=str(output / "checkpoints"), max_steps=args.max_steps, learning_rate=args.learning_rate,
        per_device_train_batch_size=args.per_device_train_batch_size, warmup_steps=args.warmup_ratio,
        weight_decay=0.01, lr_scheduler_type="linear", logging_steps=args.logging_steps,
        save_strategy="steps", save_steps=args.save_steps, save_total_limit=2, eval_strategy="steps",
        eval_steps=args.eval_steps, per_device_eval_batch_size=64, prediction_loss_only=True, report_to="none",
        seed=args.seed, disable_tqdm=True, logging_nan_inf_filter=False)
    trainer = SparseMaskedLMTrainer(
        model=model, args=training_args, train_dataset=train_blocks, eval_dataset=validation_blocks,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=args.mlm_probability))
    start = time.perf_counter()
    state = trainer.train(resume_from_checkpoint=True if args.resume else None)
    minutes = (time.perf_counter() - start) / 60
    model.save_pretrained(output)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    run = dict(args=asdict(args), train_steps=state.global_step, train_minutes=round(minutes, 1),
               resumed=bool(args.resume), last_logged_loss=losses[-1] if losses else None,
               mean_train_loss=state.training_loss, parameters=model.num_parameters(),
               vocab_size=len(tokenizer), train_texts=len(raw["train"]), train_blocks=len(train_blocks),
               threads=torch.get_num_threads(), log_history=trainer.state.log_history)
    (output / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    print(f"trained {state.global_step} steps in {minutes:.1f} minutes; saved {output}")


if __name__ == "__main__":
    main()
