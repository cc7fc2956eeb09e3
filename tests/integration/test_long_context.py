"""The shipped long-context config (recipes/configs/long_context_modernbert.yaml), run as shipped on CPU from a local
ModernBERT-shaped teacher: 22 layers with global attention every third layer and a ±64-token local window, 8,192
positions, a tiny width. Only paths, step counts, the per-device batch sizes and `use_cpu` are overridden."""

import json
import os
import random

import pytest
import torch
from families import family_config, family_tokenizer
from tiny import ROOT as REPO_ROOT
from transformers import AutoModelForMaskedLM, pipeline

from hf_distil.families import GLOBAL, LOCAL, attention_kinds
from hf_distil.recipe import main
from hf_distil.trainer import DistillationTrainer

ROOT = str(REPO_ROOT)
CONFIG = os.path.join(ROOT, "recipes", "configs", "long_context_modernbert.yaml")
NOTE_WORDS = [3000, 700, 5200, 9500, 400, 2600, 6100, 1500, 300, 4000]  # one longer than a block


def modernbert_shaped_teacher(folder):
    config = family_config("modernbert", layers=22)
    config.max_position_embeddings, config.local_attention = 8192, 128
    config.layer_types = ["full_attention" if i % 3 == 0 else "sliding_attention" for i in range(22)]
    torch.manual_seed(0)
    AutoModelForMaskedLM.from_config(config).save_pretrained(folder)
    tokenizer = family_tokenizer(folder, "modernbert")
    tokenizer.model_max_length = 8192
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long")
    teacher = modernbert_shaped_teacher(folder / "teacher")
    rng = random.Random(0)
    with open(folder / "notes.jsonl", "w") as f:
        for words in NOTE_WORDS:
            f.write(json.dumps({"text": " ".join(f"w{rng.randrange(59)}" for _ in range(words))}) + "\n")
    seen = {"lengths": set()}
    original = DistillationTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        if model.training:
            seen["lengths"].add(inputs["input_ids"].shape[1])
            seen["blocks"] = [len(ids) for ids in self.train_dataset["input_ids"]]
            seen["checkpointing"] = model.is_gradient_checkpointing
            seen["attention"] = (model.config._attn_implementation, self.teacher.config._attn_implementation)
        return original(self, model, inputs, *args, **kwargs)

    DistillationTrainer.compute_loss = spy
    try:
        code = main([CONFIG, "--teacher_model_name_or_path", str(teacher), "--train_file", str(folder / "notes.jsonl"),
                     "--output_dir", str(folder / "out"), "--max_steps", "1", "--save_steps", "1",
                     "--eval_steps", "1", "--per_device_train_batch_size", "1", "--per_device_eval_batch_size", "1",
                     "--max_eval_samples", "1", "--gradient_accumulation_steps", "2", "--use_cpu", "true"])
    finally:
        DistillationTrainer.compute_loss = original
    assert code == 0
    return folder / "out", seen


def test_long_context_config_trains_on_whole_notes_with_checkpointing(long_run):
    out, seen = long_run
    assert seen["checkpointing"] is True and seen["attention"] == ("sdpa", "sdpa")  # auto on a CPU
    # whole notes per block, as long as the notes they hold: the 9,500-word note is cut at 8,192 tokens
    assert max(seen["blocks"]) == 8192 and min(seen["blocks"]) < 1000 and len(seen["blocks"]) >= 6
    assert seen["lengths"] <= {-(-n // 8) * 8 for n in seen["blocks"]}  # padded per batch only (to a multiple of 8)


def test_long_context_student_keeps_each_layers_attention_kind(long_run):
    out, _ = long_run
    student = AutoModelForMaskedLM.from_pretrained(out)
    assert student.config.num_hidden_layers == 11 and student.config.distil_teacher_layers == list(range(1, 22, 2))
    kinds = attention_kinds(student.config)
    assert [i for i, kind in enumerate(kinds) if kind == GLOBAL] == [1, 4, 7, 10] and kinds[0] == LOCAL
    card = (out / "README.md").read_text()
    assert "student layer 0 ← teacher layer 1 (local, a window of ±64 tokens); 1 ← teacher layer 3 (global)" in card
    guesses = pipeline("fill-mask", model=str(out), top_k=2)("w1 w2 [MASK] w4")
    assert len(guesses) == 2
