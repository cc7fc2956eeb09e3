"""Issue 24: `torch_compile: true` compiles the student (Trainer) and the teacher (DistillationTrainer); the capture
hooks and the sparse heads' row-gathering pre-hook trace without a graph break, and a compiled run trains like the
eager one. CI compiles with AOTAutograd's eager backend (the graph capture and autograd of inductor, without its C++
code generation); inductor itself runs where a C++ compiler is found."""

import shutil

import pytest
import torch
from datasets import Dataset
from tiny import args_for, random_texts, tiny_teacher

from hf_distil import DistillationTrainer, create_student
from hf_distil.collator import ReproducibleMLMCollator

OBJECTIVES = {
    "seed": dict(alpha_kd=5.0, alpha_mlm=2.0, alpha_hidden=1.0, hidden_loss="cosine", temperature=2.0),
    "tinybert": dict(alpha_kd=1.0, alpha_mlm=0.0, alpha_hidden=0.0, alpha_attention=1.0, attention_loss="scores",
                     alpha_intermediate=1.0, temperature=1.0),
    "minilm": dict(alpha_kd=0.0, alpha_mlm=0.0, alpha_hidden=0.0, alpha_relation=1.0, relation_heads=2),
}


def _blocks(tokenizer, length=24):
    ids = [i for t in random_texts(120, seed=3, min_len=10, max_len=30) for i in tokenizer(t)["input_ids"]]
    return Dataset.from_dict({"input_ids": [ids[k * length:(k + 1) * length] for k in range(len(ids) // length)]})


def _train(tokenizer, tmp_path, objective, **compile_args):
    torch.manual_seed(0)
    teacher = tiny_teacher(layers=4, dropout=0.0)
    student = create_student(teacher, 2)
    collator = ReproducibleMLMCollator(tokenizer, seed=1, pad_to_multiple_of=8, positions_bucket=8)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, data_collator=collator, train_dataset=_blocks(tokenizer),
        # plain SGD: the weights move by the gradients themselves (Adam would magnify float noise in near-zero ones)
        args=args_for(tmp_path / ("compiled" if compile_args else "eager"), max_steps=4, logging_steps=1,
                      optim="sgd", learning_rate=0.05, **OBJECTIVES[objective], **compile_args))
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return trainer, losses, [p.detach().clone() for p in trainer.model.parameters()]


def _check(tokenizer, tmp_path, objective, backend):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    _, eager_losses, eager_weights = _train(tokenizer, tmp_path, objective)
    trainer, losses, weights = _train(tokenizer, tmp_path, objective, torch_compile=True,
                                      torch_compile_backend=backend)
    assert isinstance(trainer.teacher, torch._dynamo.eval_frame.OptimizedModule)
    assert isinstance(trainer.model_wrapped, torch._dynamo.eval_frame.OptimizedModule)
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] <= 4  # student and teacher, and a recompile each at most
    torch.testing.assert_close(losses, eager_losses, rtol=1e-4, atol=1e-5)
    for a, b in zip(weights, eager_weights):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_a_compiled_run_has_no_graph_break_and_trains_like_the_eager_one(tokenizer, tmp_path, objective):
    _check(tokenizer, tmp_path, objective, "aot_eager")


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler")
def test_inductor_compiles_the_seed_objective_without_a_graph_break(tokenizer, tmp_path):
    _check(tokenizer, tmp_path, "seed", "inductor")


def test_the_recipe_with_torch_compile_saves_resumes_and_writes_a_loadable_folder(tmp_path):
    """What a user runs: `--torch_compile true` on the recipe; the checkpoint and the final folder hold the plain
    model (no `_orig_mod.` prefixes, no teacher), a resumed compiled run finishes, and the folder fills masks."""
    from tiny import write_recipe_config, write_workspace
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    from hf_distil.recipe import main

    write_workspace(tmp_path)
    write_recipe_config(tmp_path, per_device_eval_batch_size=16, max_steps=4, logging_steps=2, eval_strategy="steps",
                        eval_steps=2, save_strategy="steps", save_steps=2, learning_rate=1e-3, seed=3)
    compiled = ["--torch_compile", "true", "--torch_compile_backend", "aot_eager"]
    assert main([str(tmp_path / "config.yaml"), *compiled]) == 0
    out = tmp_path / "out"
    from safetensors import safe_open

    with safe_open(str(out / "checkpoint-2" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any("_orig_mod" in k or k.startswith("teacher") for k in keys)
    assert main([str(tmp_path / "config.yaml"), *compiled, "--resume_from_checkpoint",
                 str(out / "checkpoint-2")]) == 0
    model = AutoModelForMaskedLM.from_pretrained(out)
    fill = pipeline("fill-mask", model=model, tokenizer=AutoTokenizer.from_pretrained(out), top_k=2)
    assert len(fill("w1 w2 [MASK] w3")) == 2


def test_an_unknown_compile_backend_or_mode_is_one_line_before_anything_loads(tmp_path, capsys, monkeypatch):
    from tiny import write_recipe_config, write_workspace

    from hf_distil import build
    from hf_distil.recipe import main

    monkeypatch.setattr(build, "load_teacher", lambda *a, **k: pytest.fail("the teacher must not be loaded"))
    write_workspace(tmp_path)
    write_recipe_config(tmp_path, max_steps=1)
    for flag, value, said in (("--torch_compile_backend", "bogus_backend", "is not a torch.compile backend"),
                              ("--torch_compile_mode", "fastest", "is not a torch.compile mode")):
        assert main([str(tmp_path / "config.yaml"), "--torch_compile", "true", flag, value]) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert len(lines) == 1 and said in lines[0] and value in lines[0], lines
