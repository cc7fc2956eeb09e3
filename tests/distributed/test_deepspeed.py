"""The recipe under DeepSpeed ZeRO-3 on CPU: torchrun with 2 processes, DS_ACCELERATOR=cpu, gloo.

The teacher is loaded under `zero.Init` (sharded: every rank holds an empty slice), the student is copied from the
gathered teacher layers, the first loss equals a plain single-process run on the same global batch, and the folder
at the end holds float32 weights that `from_pretrained` loads.
"""

import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny import ROOT as REPO_ROOT
from tiny import free_port, write_workspace
from transformers import AutoModelForMaskedLM

pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install -e '.[dev]' installs it)")

ROOT = str(REPO_ROOT)

# Wraps the recipe's build_models to record, on each rank, how the teacher is held and what the student copied.
DRIVER = r'''
import json, sys
import deepspeed, torch, torch.distributed as dist
from hf_distil import recipe

build = recipe.build_models

def observed(model_args, training_args):
    teacher, student, tokenizer = build(model_args, training_args)
    params = list(teacher.parameters())
    sharded = [hasattr(p, "ds_id") and p.ds_numel > 0 and p.numel() == 0 for p in params]
    with deepspeed.zero.GatheredParameters(params):
        full = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    chosen, prefix, mismatched = student.config.distil_teacher_layers, "bert.encoder.layer.", []
    for name, value in student.state_dict().items():
        source = name
        if name.startswith(prefix):
            index, rest = name[len(prefix):].split(".", 1)
            source = f"{prefix}{chosen[int(index)]}.{rest}"
        if not torch.equal(value, full[source]):
            mismatched.append(name)
    with open(f"{training_args.output_dir}.rank{training_args.process_index}.json", "w") as f:
        json.dump({"sharded": sum(sharded), "params": len(params), "mismatched": mismatched, "chosen": chosen,
                   "world_size": training_args.world_size, "student_dtype": str(student.dtype)}, f)
    return teacher, student, tokenizer

recipe.build_models = observed
code = recipe.main(sys.argv[1:])
if dist.is_initialized():
    dist.destroy_process_group()  # else the ranks abort at interpreter shutdown
sys.exit(code)
'''


def _run(cmd, cwd, **env_extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": ROOT, **env_extra}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and "Signal 6 (SIGABRT) received" in done.stderr:
        # Once in a full CI run (not reproduced in 8 + 6 reruns, also under load) a rank of this CPU-only DeepSpeed
        # run died by SIGABRT in native code with no Python error; a failure of ours raises a Python exception.
        # Retry such a crash once, and say so.
        warnings.warn("a DeepSpeed rank died by SIGABRT; retrying once. " + " | ".join(_why(done.stderr)[-8:]),
                      stacklevel=2)
        shutil.rmtree(cmd[cmd.index("--output_dir") + 1], ignore_errors=True)  # the crashed run's partial folder
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:  # the lines that say why first: a long traceback tail would hide them
        pytest.fail(f"exit code {done.returncode}\n" + "\n".join(_why(done.stderr)[-40:]) + "\n--- stderr tail ---\n"
                    + done.stderr[-6000:], pytrace=False)
    return done


def _why(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if any(word in line for word in ("Error", "error:", "what()", "terminate", "Signal", "Abort"))]


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("zero3")
    write_workspace(work, n_texts=64, seed=2, min_len=8, dropout=0.0)  # no dropout: ranks draw other masks
    config = {
        "teacher_model_name_or_path": str(work / "teacher"), "student_num_layers": 2, "student_layers": "0,3",
        "line_by_line": True, "train_file": str(work / "corpus.jsonl"), "validation_split_percentage": 10,
        "max_seq_length": 48, "max_steps": 2, "logging_steps": 1, "learning_rate": 0.05, "optim": "sgd",
        "eval_strategy": "no", "save_strategy": "no", "report_to": "none", "use_cpu": True, "disable_tqdm": True,
        "dataloader_num_workers": 0, "seed": 11, "per_device_eval_batch_size": 4,
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    (work / "driver.py").write_text(DRIVER)
    script = os.path.join(ROOT, "recipes", "run_distil.py")
    plain = _run([sys.executable, script, str(work / "config.yaml"), "--output_dir", str(work / "plain"),
                  "--per_device_train_batch_size", "8"], cwd=work)
    zero3 = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
                  str(work / "driver.py"), str(work / "config.yaml"), "--output_dir", str(work / "zero3"),
                  "--per_device_train_batch_size", "4",
                  "--deepspeed", os.path.join(ROOT, "recipes", "configs", "ds_zero3.json")],
                 cwd=work, DS_ACCELERATOR="cpu")
    return work, plain, zero3


def test_zero3_teacher_is_sharded_and_student_copies_the_chosen_layers(zero3_run):
    work, _, _ = zero3_run
    for rank in (0, 1):
        seen = json.loads((work / f"zero3.rank{rank}.json").read_text())
        assert seen["world_size"] == 2  # not 1: the batch-size check of DeepSpeed passed for the right reason
        assert seen["params"] > 0 and seen["sharded"] == seen["params"]
        assert seen["mismatched"] == [] and seen["chosen"] == [0, 3]
        assert seen["student_dtype"] == "torch.float32"


def test_zero3_first_loss_equals_a_plain_run_on_the_same_batch(zero3_run):
    work, _, zero3 = zero3_run
    logs = {}
    for name in ("plain", "zero3"):
        state = json.loads((work / name / "trainer_state.json").read_text())
        logs[name] = [h for h in state["log_history"] if "loss" in h]
    assert len(logs["plain"]) == len(logs["zero3"]) == 2
    for key in ("loss", "kd_loss", "mlm_loss", "hidden_loss"):
        assert logs["zero3"][0][key] == pytest.approx(logs["plain"][0][key], rel=1e-4), key
    results = json.loads((work / "zero3" / "all_results.json").read_text())
    assert results["init_loss"] > 0 and results["eval_loss"] > 0  # evaluated before and after training
    assert zero3.stdout.count("hf-distil summary") == 1


def test_zero3_saves_a_float32_hub_folder(zero3_run):
    work, _, _ = zero3_run
    weights = load_file(work / "zero3" / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}
    assert all(t.numel() > 0 for t in weights.values())
    student = AutoModelForMaskedLM.from_pretrained(work / "zero3")
    assert student.config.num_hidden_layers == 2 and student.config.distil_teacher_layers == [0, 3]
    teacher = AutoModelForMaskedLM.from_pretrained(work / "teacher")
    start = teacher.bert.encoder.layer[3].output.dense.weight
    trained = student.bert.encoder.layer[1].output.dense.weight
    assert trained.shape == start.shape and not torch.allclose(trained, start)  # two SGD steps moved it


LAYER_TERMS = ["--student_hidden_size", "16", "--student_intermediate_size", "32", "--alpha_hidden", "0",
               "--alpha_attention", "1", "--alpha_intermediate", "1", "--alpha_relation", "1", "--relation_heads", "2"]


@pytest.fixture(scope="module")
def zero3_layer_run(tmp_path_factory):
    """A narrower, randomly initialised student with the attention, intermediate (projected) and relation terms."""
    work = tmp_path_factory.mktemp("zero3_layers")
    write_workspace(work, n_texts=64, seed=2, min_len=8, dropout=0.0)
    config = {
        "teacher_model_name_or_path": str(work / "teacher"), "student_num_layers": 2, "line_by_line": True,
        "train_file": str(work / "corpus.jsonl"), "validation_split_percentage": 10, "max_seq_length": 48,
        "max_steps": 2, "logging_steps": 1, "learning_rate": 0.05, "optim": "sgd", "eval_strategy": "no",
        "save_strategy": "no", "report_to": "none", "use_cpu": True, "disable_tqdm": True,
        "dataloader_num_workers": 0, "seed": 11, "per_device_eval_batch_size": 4, "evaluate_before_training": False,
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    script = os.path.join(ROOT, "recipes", "run_distil.py")
    _run([sys.executable, script, str(work / "config.yaml"), "--output_dir", str(work / "plain"),
          "--per_device_train_batch_size", "8", *LAYER_TERMS], cwd=work)
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
          script, str(work / "config.yaml"), "--output_dir", str(work / "zero3"), "--per_device_train_batch_size", "4",
          "--deepspeed", os.path.join(ROOT, "recipes", "configs", "ds_zero3.json"), *LAYER_TERMS],
         cwd=work, DS_ACCELERATOR="cpu")
    return work


def test_zero3_with_the_layer_terms_and_projections(zero3_layer_run):
    work = zero3_layer_run
    logs = {name: [h for h in json.loads((work / name / "trainer_state.json").read_text())["log_history"]
                   if "loss" in h] for name in ("plain", "zero3")}
    for key in ("loss", "attention_loss", "intermediate_loss", "relation_loss"):
        assert logs["zero3"][0][key] == pytest.approx(logs["plain"][0][key], rel=1e-4), key
    weights = load_file(work / "zero3" / "model.safetensors")
    assert not [name for name in weights if "distil_projections" in name]
    assert {t.dtype for t in weights.values()} == {torch.float32} and all(t.numel() > 0 for t in weights.values())
    assert AutoModelForMaskedLM.from_pretrained(work / "zero3").config.hidden_size == 16


@pytest.fixture(scope="module")
def zero3_task_run(tmp_path_factory):
    """Task distillation (run_finetune.py --distil_from, --compare_with plain) under ZeRO-3 on 2 CPU ranks, and the
    same command in one plain process with the same global batch."""
    from tiny import FINETUNE_FIXTURES, save_fixture_mlm

    from hf_distil.finetune_cli import main as finetune_main

    work = tmp_path_factory.mktemp("zero3_task")
    files = ["--train_file", str(FINETUNE_FIXTURES / "ner_train.conll"),
             "--validation_file", str(FINETUNE_FIXTURES / "ner_validation.conll")]
    common = ["--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--use_cpu", "true",
              "--speed_batches", "1", "--speed_min_seconds", "0", "--seed", "5", "--dataloader_num_workers", "0"]
    mlm = save_fixture_mlm(work / "mlm", hidden=32, layers=4, dropout=0.0)
    finetune_main(["--model_name_or_path", str(mlm), *files, "--output_dir", str(work / "teacher"),
                   "--num_train_epochs", "2", "--learning_rate", "3e-3", "--per_device_train_batch_size", "8", *common])
    distil = [os.path.join(ROOT, "recipes", "run_finetune.py"), *files, "--distil_from", str(work / "teacher"),
              "--max_steps", "2", "--logging_steps", "1", "--learning_rate", "0.05", "--optim", "sgd",
              "--compare_with", "plain", *common]
    _run([sys.executable, *distil, "--output_dir", str(work / "plain"), "--per_device_train_batch_size", "8"],
         cwd=work)
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
          *distil, "--output_dir", str(work / "zero3"), "--per_device_train_batch_size", "4",
          "--deepspeed", os.path.join(ROOT, "recipes", "configs", "ds_zero3.json")], cwd=work, DS_ACCELERATOR="cpu")
    return work


def test_zero3_task_distillation_matches_one_process_and_reports_full_sizes(zero3_task_run):
    from transformers import AutoModelForTokenClassification

    work = zero3_task_run
    logs = {name: [h for h in json.loads((work / name / "trainer_state.json").read_text())["log_history"]
                   if "loss" in h] for name in ("plain", "zero3")}
    for key in ("kd_loss", "hidden_loss"):  # the first step: the same batch, the same weights
        assert logs["zero3"][0][key] == pytest.approx(logs["plain"][0][key], rel=1e-4), key
    model = AutoModelForTokenClassification.from_pretrained(work / "zero3")
    size = sum(p.numel() for p in model.parameters())
    saved = json.loads((work / "zero3" / "comparison.json").read_text())["results"]
    assert [r["parameters"] for r in saved] == [size, saved[1]["parameters"], size] and saved[1]["parameters"] > size
    assert all(r["tokens_per_second"] is None for r in saved)  # not timed on sharded weights
    assert "not measured (ZeRO-3)" in (work / "zero3" / "comparison.md").read_text()


@pytest.mark.parametrize("stage", ["ds_zero2.json", "ds_zero3.json"])
def test_bf16_under_deepspeed_saves_the_float32_master_weights(tmp_path, stage):
    """`--bf16` under DeepSpeed: the engine's module holds bfloat16 copies of the student, the float32 masters live
    in the optimizer; the Hub folder gets the masters (issue 23), with a float32 teacher (`--teacher_dtype`)."""
    write_workspace(tmp_path, n_texts=48, seed=2, min_len=8, dropout=0.0)
    config = {
        "teacher_model_name_or_path": str(tmp_path / "teacher"), "student_num_layers": 2, "line_by_line": True,
        "train_file": str(tmp_path / "corpus.jsonl"), "validation_split_percentage": 10, "max_seq_length": 48,
        "max_steps": 1, "learning_rate": 1e-4, "eval_strategy": "no", "save_strategy": "no", "report_to": "none",
        "use_cpu": True, "disable_tqdm": True, "dataloader_num_workers": 0, "seed": 11, "bf16": True,
        "teacher_dtype": "float32", "evaluate_before_training": False, "per_device_train_batch_size": 4,
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
          os.path.join(ROOT, "recipes", "run_distil.py"), str(tmp_path / "config.yaml"), "--output_dir",
          str(tmp_path / "out"), "--deepspeed", os.path.join(ROOT, "recipes", "configs", stage)],
         cwd=tmp_path, DS_ACCELERATOR="cpu")
    weights = load_file(tmp_path / "out" / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}
    # float32 masters (copied from the float32 teacher, one small step taken) are not all bfloat16-representable;
    # weights saved from the engine's bfloat16 module would be
    matrix = weights["bert.encoder.layer.0.attention.self.query.weight"]
    assert not torch.equal(matrix, matrix.bfloat16().float())
