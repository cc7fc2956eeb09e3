"""Pretrain the quickstart's toy teacher: a 4-layer BERT masked-LM on the synthetic sample notes.

Trains a lowercase WordPiece tokenizer on the train notes, pretrains `BertForMaskedLM` with the
stock `Trainer` and `DataCollatorForLanguageModeling` on 128-token blocks, scores held-out
masked-token accuracy and perplexity (with a fixed masking seed) against a unigram baseline, and
saves model, tokenizer and a model card to recipes/assets/tiny-clinical-bert/. CPU, ~15 minutes.

    python recipes/make_sample_corpus.py     # the corpus it trains on (committed)
    python recipes/pretrain_teacher.py       # -> recipes/assets/tiny-clinical-bert/
"""

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from datasets import load_dataset
from huggingface_hub import ModelCard
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertTokenizerFast,
    DataCollatorForLanguageModeling,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    pipeline,
    set_seed,
)

RECIPES = Path(__file__).resolve().parent
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
FILL_MASK_EXAMPLES = ["metoprolol tartrate 25 mg po [MASK].", "IMPRESSION: No acute cardiopulmonary [MASK].",
                      "BP 120/80 mmHg, HR 72, [MASK] 16, SpO2 98% on RA"]


@dataclass
class PretrainArguments:
    """What the script trains on, the model's shape and the training budget."""

    train_file: str = field(default=str(RECIPES / "data" / "sample_notes.jsonl"))
    validation_file: str = field(default=str(RECIPES / "data" / "sample_notes_validation.jsonl"))
    output_dir: str = field(default=str(RECIPES / "assets" / "tiny-clinical-bert"))
    vocab_size: int = field(default=4000, metadata={"help": "WordPiece vocabulary size (an upper bound)."})
    block_size: int = field(default=128, metadata={"help": "Tokens per training block = max positions."})
    num_hidden_layers: int = 4
    hidden_size: int = 128
    num_attention_heads: int = 2
    intermediate_size: int = 512
    initializer_range: float = field(default=0.05, metadata={"help": "Init std; BERT's 0.02 suits 768 wide."})
    num_train_epochs: float = 12.0
    learning_rate: float = 1e-3
    per_device_train_batch_size: int = 32
    mlm_probability: float = field(
        default=0.3, metadata={"help": "Masking rate for training; the held-out scoring masks 0.15."}
    )
    warmup_steps: float = field(default=0.06, metadata={"help": "Warmup steps, or a fraction of all steps if < 1."})
    logging_steps: int = 50
    eval_steps: int = 250
    sinusoidal_positions: bool = field(
        default=True, metadata={"help": "Start the position embeddings as sinusoids scaled like the token embeddings."})
    seed: int = 42
    eval_mask_seed: int = field(default=0, metadata={"help": "Seed of the fixed masking used for scoring."})


def train_tokenizer(texts, vocab_size, model_max_length):
    """A lowercase BERT WordPiece tokenizer trained on `texts`, wrapped as `BertTokenizerFast`."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return BertTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, do_lower_case=True)


def init_sinusoidal_positions_(model):
    """Overwrite the random position embeddings with sinusoids of the same scale as the token embeddings."""
    weight = model.get_input_embeddings().weight
    positions = model.bert.embeddings.position_embeddings.weight
    n, d = positions.shape
    angles = torch.arange(n)[:, None] / 10000 ** (torch.arange(0, d, 2) / d)
    table = torch.stack([angles.sin(), angles.cos()], dim=-1).view(n, d)
    with torch.no_grad():
        positions.copy_(table * weight.std() / table.std())


def group_into_blocks(dataset, tokenizer, block_size):
    """Tokenize every note (with [CLS]/[SEP]), concatenate them and cut into full blocks of block_size."""

    def tokenize(batch):
        return tokenizer(batch["text"], return_attention_mask=False, return_token_type_ids=False, verbose=False)

    def chunk(batch):
        ids = [i for seq in batch["input_ids"] for i in seq]
        ids = ids[: len(ids) // block_size * block_size]
        return {"input_ids": [ids[i: i + block_size] for i in range(0, len(ids), block_size)]}

    tokens = dataset.map(tokenize, batched=True, remove_columns=dataset.column_names)
    return tokens.map(chunk, batched=True, batch_size=1000)


def most_frequent_token(blocks, tokenizer):
    """The unigram baseline's single guess: the commonest non-special token in `blocks`."""
    counts = torch.bincount(torch.tensor(blocks["input_ids"]).flatten(), minlength=len(tokenizer))
    counts[tokenizer.all_special_ids] = 0
    return int(counts.argmax())


@torch.no_grad()
def score_masked_lm(model, tokenizer, blocks, baseline_token, seed, batch_size=64):
    """Masked-token accuracy, perplexity and the unigram baseline's accuracy under a fixed masking."""
    collator = DataCollatorForLanguageModeling(tokenizer, seed=seed)
    model.eval()
    correct = baseline = count = 0
    nll = 0.0
    for start in range(0, len(blocks), batch_size):
        batch = collator([{"input_ids": ids} for ids in blocks[start: start + batch_size]["input_ids"]])
        batch = {k: v.to(model.device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"]).logits
        masked = batch["labels"] != -100
        labels = batch["labels"][masked]
        nll += torch.nn.functional.cross_entropy(logits[masked].float(), labels, reduction="sum").item()
        correct += (logits[masked].argmax(-1) == labels).sum().item()
        baseline += (labels == baseline_token).sum().item()
        count += labels.numel()
    return {"accuracy": correct / count, "perplexity": math.exp(nll / count),
            "unigram_accuracy": baseline / count, "masked_tokens": count}


def fill_mask_examples(model, tokenizer):
    """Top-3 fill-mask guesses for a few sentences, for the card."""
    fill = pipeline("fill-mask", model=model, tokenizer=tokenizer, top_k=3)
    return {text: [p["token_str"] for p in fill(text)] for text in FILL_MASK_EXAMPLES}


def write_outputs(model, tokenizer, output_dir, report):
    """Save model (safetensors), tokenizer (tokenizer.json plus vocab.txt and special_tokens_map.json) and card."""
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    tokenizer.backend_tokenizer.model.save(str(output_dir))  # vocab.txt, for tools that build BERT tokenizers from it
    (output_dir / "special_tokens_map.json").write_text(json.dumps(tokenizer.special_tokens_map, indent=2) + "\n")
    model_card(report).save(output_dir / "README.md")


def model_card(report):
    """A short card: what the model is, how it was made, how well it does, and what it is not."""
    a, r = report["args"], report["results"]
    examples = "\n".join(f"| `{text}` | {', '.join(guesses)} |" for text, guesses in report["examples"].items())
    sinusoidal = ", sinusoidal start for the position embeddings" if a["sinusoidal_positions"] else ""
    return ModelCard(f"""---
language: en
license: apache-2.0
library_name: transformers
pipeline_tag: fill-mask
tags: [bert, fill-mask, toy, synthetic-data, hf-distil-quickstart]
---

# tiny-clinical-bert (toy teacher for the hf-distil quickstart)

A {a['num_hidden_layers']}-layer, {a['hidden_size']}-wide BERT masked-language model
({report['parameters'] / 1e6:.2f} M parameters, vocabulary {report['vocab_size']}, {a['block_size']} positions)
with a lowercase WordPiece tokenizer, pretrained from scratch on **synthetic** clinical-style notes
written by `recipes/make_sample_corpus.py` ({report['train_notes']} train notes, {report['train_blocks']}
blocks of {a['block_size']} tokens). It exists so that `recipes/run_distil.py recipes/configs/quickstart.yaml`
has a teacher that runs offline in minutes on a CPU.

**It is a toy, not a clinical model.** It has never seen a real note and knows nothing beyond the
templates of the sample corpus. Do not use it for anything but trying out hf-distil.

## How it was made

```bash
python recipes/make_sample_corpus.py
python recipes/pretrain_teacher.py --seed {a['seed']}
```

`BertForMaskedLM`, intermediate size {a['intermediate_size']}, {a['num_attention_heads']} attention heads,
initialiser range {a['initializer_range']:g}{sinusoidal},
trained with `transformers.Trainer` and `DataCollatorForLanguageModeling` ({a['mlm_probability']:.0%} masking) for
{a['num_train_epochs']:g} epochs ({report['train_steps']} steps, batch {a['per_device_train_batch_size']},
learning rate {a['learning_rate']:g}, seed {a['seed']}) in {report['train_minutes']:.1f} minutes on
{report['device']}. The WordPiece trainer of `tokenizers` is not deterministic
([huggingface/tokenizers#1794](https://github.com/huggingface/tokenizers/issues/1794)), so a rerun
gets a slightly different vocabulary and slightly different numbers; the corpus itself regenerates
byte for byte.

## Held-out results

On the {report['validation_blocks']} validation blocks ({r['masked_tokens']} masked tokens, masking seed
{a['eval_mask_seed']}):

| metric | value |
| --- | --- |
| masked-token accuracy | {r['accuracy']:.3f} |
| perplexity | {r['perplexity']:.2f} |
| unigram baseline accuracy (always "{report['baseline_token']}") | {r['unigram_accuracy']:.3f} |

| input | top-3 guesses |
| --- | --- |
{examples}
""")


def main(argv=None):
    (args,) = HfArgumentParser(PretrainArguments).parse_args_into_dataclasses(argv)
    set_seed(args.seed)
    raw = load_dataset("json", data_files={"train": args.train_file, "validation": args.validation_file})
    tokenizer = train_tokenizer(raw["train"]["text"], args.vocab_size, args.block_size)
    train_blocks = group_into_blocks(raw["train"], tokenizer, args.block_size)
    validation_blocks = group_into_blocks(raw["validation"], tokenizer, args.block_size)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=args.hidden_size,
                        num_hidden_layers=args.num_hidden_layers, num_attention_heads=args.num_attention_heads,
                        intermediate_size=args.intermediate_size, max_position_embeddings=args.block_size,
                        initializer_range=args.initializer_range,
                        pad_token_id=tokenizer.pad_token_id)
    model = BertForMaskedLM(config)
    if args.sinusoidal_positions:
        init_sinusoidal_positions_(model)
    baseline_token = most_frequent_token(train_blocks, tokenizer)
    with tempfile.TemporaryDirectory() as scratch:
        training_args = TrainingArguments(
            output_dir=scratch, num_train_epochs=args.num_train_epochs, learning_rate=args.learning_rate,
            per_device_train_batch_size=args.per_device_train_batch_size, warmup_steps=args.warmup_steps,
            weight_decay=0.01, lr_scheduler_type="linear", logging_steps=args.logging_steps, save_strategy="no",
            eval_strategy="steps", eval_steps=args.eval_steps, per_device_eval_batch_size=64, report_to="none",
            seed=args.seed)
        trainer = Trainer(model=model, args=training_args, train_dataset=train_blocks, eval_dataset=validation_blocks,
                          data_collator=DataCollatorForLanguageModeling(tokenizer,
                                                                        mlm_probability=args.mlm_probability))
        start = time.perf_counter()
        state = trainer.train()
        minutes = (time.perf_counter() - start) / 60
    print(f"training took {minutes:.1f} minutes ({state.global_step} steps, "
          f"final train loss {state.training_loss:.3f})")
    results = score_masked_lm(model, tokenizer, validation_blocks, baseline_token, args.eval_mask_seed)
    print(f"held-out masked accuracy {results['accuracy']:.3f} (unigram baseline {results['unigram_accuracy']:.3f}), "
          f"perplexity {results['perplexity']:.2f} on {results['masked_tokens']} masked tokens")
    model.cpu()
    report = dict(args=asdict(args), results=results, examples=fill_mask_examples(model, tokenizer),
                  parameters=model.num_parameters(), vocab_size=len(tokenizer), train_notes=len(raw["train"]),
                  train_blocks=len(train_blocks), validation_blocks=len(validation_blocks),
                  train_steps=state.global_step, train_minutes=minutes,
                  device=torch.cuda.get_device_name() if torch.cuda.is_available() else
                  f"CPU ({torch.get_num_threads()} threads)",
                  baseline_token=tokenizer.convert_ids_to_tokens(baseline_token))
    for text, guesses in report["examples"].items():
        print(f"  {text!r} -> {guesses}")
    write_outputs(model, tokenizer, args.output_dir, report)
    size = sum(p.stat().st_size for p in Path(args.output_dir).iterdir()) / 1e6
    print(f"saved {args.output_dir} ({size:.1f} MB)")


if __name__ == "__main__":
    main()
