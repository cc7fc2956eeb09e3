"""The shipped seed config, run as shipped (its own `bf16: true`) on a Bio_ClinicalBERT-shaped teacher, on CPU.

Only paths, step counts, the batch size and `use_cpu` (CI has no GPU) are overridden. CPU autocast makes
`bf16: true` real here: the student must keep float32 master weights (parameters, AdamW state, saved weights)
while only the teacher is bfloat16.
"""

import json
import os

import pytest
import torch
from safetensors import safe_open
from tiny import ROOT as REPO_ROOT
from tiny import bio_clinical_bert_shaped, noteevents_csv
from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

from hf_distil.recipe import main
from hf_distil.trainer import DistillationTrainer

ROOT = str(REPO_ROOT)
CONFIG = os.path.join(ROOT, "recipes", "configs", "distil_clinical_bert.yaml")


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seed")
    teacher = bio_clinical_bert_shaped(folder)
    corpus = noteevents_csv(folder / "NOTEEVENTS.csv")
    seen = {}
    original = DistillationTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        if model.training:
            seen.setdefault("student", set()).update(p.dtype for p in model.parameters())
            seen.setdefault("teacher", set()).update(p.dtype for p in self.teacher.parameters())
            query = self.model.bert.encoder.layer[0].attention.self.query  # its output dtype shows the autocast
            handle = query.register_forward_hook(lambda m, a, out: seen.setdefault("matmul", set()).add(out.dtype))
            try:
                return original(self, model, inputs, *args, **kwargs)
            finally:
                handle.remove()
        return original(self, model, inputs, *args, **kwargs)

    DistillationTrainer.compute_loss = spy
    try:
        code = main([CONFIG, "--teacher_model_name_or_path", str(teacher), "--train_file", str(corpus),
                     "--output_dir", str(folder / "out"), "--max_steps", "1", "--save_steps", "1",
                     "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2",
                     "--max_eval_samples", "2", "--use_cpu", "true"])  # no GPU here: CPU autocast
    finally:
        DistillationTrainer.compute_loss = original
    assert code == 0
    return folder / "out", seen


def test_seed_config_trains_float32_master_weights_under_bf16_autocast(seed_run):
    out, seen = seed_run
    assert seen["student"] == {torch.float32}
    assert seen["teacher"] == {torch.bfloat16}
    assert seen["matmul"] == {torch.bfloat16}  # the student's forward ran under bf16 autocast
    optimizer = torch.load(out / "checkpoint-1" / "optimizer.pt", map_location="cpu", weights_only=True)
    moments = [t for state in optimizer["state"].values() for k, t in state.items() if k.startswith("exp_avg")]
    assert moments and {t.dtype for t in moments} == {torch.float32}


def test_seed_config_saves_a_float32_hub_ready_folder_with_the_seed_card(seed_run):
    out, _ = seed_run
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
    config = json.loads((out / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "float32"
    model = AutoModelForMaskedLM.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) == 65_813_572
    assert model.config.distil_teacher_layers == [1, 3, 5, 7, 9, 11]
    fill = pipeline("fill-mask", model=model, tokenizer=AutoTokenizer.from_pretrained(out), top_k=3)
    assert len(fill("patient admitted with [MASK] pain")) == 3
    card = (out / "README.md").read_text()
    for fact in ("65.8 million", "28996", "layers 1, 3, 5, 7, 9, 11", "bf16 mixed precision", "bfloat16",
                 "MIMIC-III", "PhysioNet"):
        assert fact in card, fact
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))
