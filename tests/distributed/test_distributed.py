"""torchrun with 2 CPU processes (gloo) trains the same student as 1 process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny import ROOT as REPO_ROOT
from tiny import free_port, tiny_teacher, write_workspace

ROOT = str(REPO_ROOT)


def _run(cmd, cwd, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           **(env_extra or {})}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _one_and_two_processes(work, *extra):
    """The recipe run once with 1 process × batch 8 (work/one) and once with 2 processes × batch 4 (work/two)."""
    # no dropout: ranks draw different dropout masks than one process
    write_workspace(work, n_texts=96, seed=2, min_len=8, dropout=0.0)
    config = {
        "teacher_model_name_or_path": str(work / "teacher"), "student_num_layers": 2, "line_by_line": True,
        "train_file": str(work / "corpus.jsonl"), "validation_split_percentage": 10, "max_seq_length": 48,
        "max_steps": 5, "logging_steps": 1, "learning_rate": 0.05, "optim": "sgd",  # SGD: update ∝ gradient
        "eval_strategy": "no", "save_strategy": "no", "report_to": "none", "use_cpu": True, "disable_tqdm": True,
        "dataloader_num_workers": 0, "seed": 11, "evaluate_before_training": False,
        "per_device_eval_batch_size": 4,  # 10 validation texts over 2 ranks: the last batch is padded
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    script = os.path.join(ROOT, "recipes", "run_distil.py")
    single = _run([sys.executable, script, str(work / "config.yaml"), "--output_dir", str(work / "one"),
                   "--per_device_train_batch_size", "8", *extra], cwd=work)
    multi = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
                  script, str(work / "config.yaml"), "--output_dir", str(work / "two"),
                  "--per_device_train_batch_size", "4", "--ddp_backend", "gloo", *extra], cwd=work)
    return work, single, multi


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    return _one_and_two_processes(tmp_path_factory.mktemp("ddp"))


@pytest.fixture(scope="module")
def two_runs_layer_terms(tmp_path_factory):
    """A narrower, randomly initialised student with the attention, intermediate (through projections) and
    relation terms on; the last checkpoint holds the projections too."""
    return _one_and_two_processes(
        tmp_path_factory.mktemp("ddp_layers"), "--student_hidden_size", "16", "--student_intermediate_size", "32",
        "--alpha_hidden", "0", "--alpha_attention", "1", "--alpha_intermediate", "1", "--alpha_relation", "1",
        "--relation_heads", "2", "--save_strategy", "steps", "--save_steps", "5")


def test_two_processes_equal_one_with_the_same_global_batch(two_runs):
    work, _, _ = two_runs
    one = load_file(work / "one" / "model.safetensors")
    two = load_file(work / "two" / "model.safetensors")
    start = tiny_teacher(dropout=0.0)
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], rtol=1e-4, atol=1e-6), name
    assert not torch.allclose(one["bert.encoder.layer.0.output.dense.weight"],
                              start.bert.encoder.layer[1].output.dense.weight)


def test_logged_losses_are_global_means_and_only_rank0_writes(two_runs):
    work, _, multi = two_runs
    logs = {}
    for name in ("one", "two"):
        state = json.loads((work / name / "trainer_state.json").read_text())
        logs[name] = [h for h in state["log_history"] if "loss" in h]
    assert len(logs["one"]) == len(logs["two"]) == 5
    for a, b in zip(logs["one"], logs["two"]):
        for key in ("loss", "kd_loss", "mlm_loss", "hidden_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key
    assert multi.stdout.count("hf-distil summary") == 1


def test_distributed_evaluation_drops_the_padding_duplicates(two_runs):
    work, _, _ = two_runs
    one = json.loads((work / "one" / "all_results.json").read_text())
    two = json.loads((work / "two" / "all_results.json").read_text())
    for key in ("eval_loss", "eval_kd_loss", "eval_mlm_loss", "eval_hidden_loss", "eval_accuracy",
                "eval_teacher_agreement"):
        assert one[key] == pytest.approx(two[key], rel=1e-4), key


def test_two_processes_equal_one_with_the_layer_terms_and_their_projections(two_runs_layer_terms):
    work, _, _ = two_runs_layer_terms
    one = load_file(work / "one" / "checkpoint-5" / "model.safetensors")
    two = load_file(work / "two" / "checkpoint-5" / "model.safetensors")
    assert one.keys() == two.keys()
    projections = [name for name in one if name.startswith("distil_projections.")]
    assert len(projections) == 6  # hidden states 0, 1, 2 of the 2-layer student: weight and bias each
    for name in one:
        assert torch.allclose(one[name], two[name], rtol=1e-4, atol=1e-6), name
    final = load_file(work / "two" / "model.safetensors")
    assert not [name for name in final if "distil_projections" in name]
    logs = {name: [h for h in json.loads((work / name / "trainer_state.json").read_text())["log_history"]
                   if "loss" in h] for name in ("one", "two")}
    for a, b in zip(logs["one"], logs["two"], strict=True):
        for key in ("kd_loss", "mlm_loss", "attention_loss", "intermediate_loss", "relation_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key


@pytest.fixture(scope="module")
def two_runs_task(tmp_path_factory):
    """Task distillation (run_finetune.py --distil_from) of a NER teacher, 1 process × 8 and 2 processes × 4."""
    from tiny import FINETUNE_FIXTURES, save_fixture_mlm

    from hf_distil.finetune_cli import main as finetune_main

    work = tmp_path_factory.mktemp("ddp_task")
    files = ["--train_file", str(FINETUNE_FIXTURES / "ner_train.conll"),
             "--validation_file", str(FINETUNE_FIXTURES / "ner_validation.conll")]
    common = ["--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--use_cpu", "true",
              "--speed_batches", "1", "--speed_min_seconds", "0", "--seed", "3", "--dataloader_num_workers", "0"]
    mlm = save_fixture_mlm(work / "mlm", hidden=32, layers=4, dropout=0.0)  # no dropout: ranks draw other masks
    finetune_main(["--model_name_or_path", str(mlm), *files, "--output_dir", str(work / "teacher"),
                   "--num_train_epochs", "3", "--learning_rate", "3e-3", "--per_device_train_batch_size", "8", *common])
    distil = [*files, "--distil_from", str(work / "teacher"), "--max_steps", "5", "--logging_steps", "1",
              "--optim", "sgd", "--learning_rate", "0.05", "--alpha_kd", "2", "--alpha_hidden", "1",
              "--per_device_eval_batch_size", "6", *common]  # 40 validation sentences over 2 ranks: padded
    script = os.path.join(ROOT, "recipes", "run_finetune.py")
    _run([sys.executable, script, *distil, "--output_dir", str(work / "one"), "--per_device_train_batch_size", "8"],
         cwd=work)
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
          script, *distil, "--output_dir", str(work / "two"), "--per_device_train_batch_size", "4",
          "--ddp_backend", "gloo"], cwd=work)
    return work


def test_two_processes_equal_one_in_task_distillation(two_runs_task):
    work = two_runs_task
    one, two = (load_file(work / name / "model.safetensors") for name in ("one", "two"))
    assert one.keys() == two.keys() and "classifier.weight" in one
    for name in one:
        assert torch.allclose(one[name], two[name], rtol=1e-4, atol=1e-6), name
    logs = {name: [h for h in json.loads((work / name / "trainer_state.json").read_text())["log_history"]
                   if "loss" in h] for name in ("one", "two")}
    assert len(logs["one"]) == 5
    for a, b in zip(logs["one"], logs["two"], strict=True):
        for key in ("kd_loss", "task_loss", "hidden_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key
    results = {name: json.loads((work / name / "validation_results.json").read_text()) for name in ("one", "two")}
    for key in ("eval_kd_loss", "eval_task_loss", "eval_teacher_agreement", "eval_f1"):
        assert results["one"][key] == pytest.approx(results["two"][key], rel=1e-4), key
    assert (work / "two" / "comparison.md").read_text().count("| `teacher` |") == 1
