"""Which preparation the teacher gets on which engine (CPU CI cannot run DeepSpeed/FSDP themselves)."""

import json
import os
from types import SimpleNamespace

import pytest
import torch
import yaml
from accelerate.utils import DistributedType
from tiny import ROOT, tiny_teacher

from hf_distil import engines

CONFIGS = os.path.join(str(ROOT), "recipes", "configs")


def fake_accelerator(kind, fsdp2=False):
    return SimpleNamespace(distributed_type=kind, is_fsdp2=fsdp2, device="cpu")


@pytest.mark.parametrize(
    "kind, fsdp2, expected",
    [
        (DistributedType.NO, False, "device"),
        (DistributedType.MULTI_GPU, False, "device"),   # DDP: the teacher is never wrapped
        (DistributedType.MULTI_CPU, False, "device"),
        (DistributedType.DEEPSPEED, False, "deepspeed"),
        (DistributedType.FSDP, False, "fsdp1"),
        (DistributedType.FSDP, True, "fsdp2"),
    ],
)
def test_engine_choice(kind, fsdp2, expected):
    assert engines.teacher_engine(fake_accelerator(kind, fsdp2)) == expected


@pytest.mark.parametrize("kind, fsdp2, branch", [(DistributedType.DEEPSPEED, False, "_prepare_deepspeed"),
                                                  (DistributedType.FSDP, False, "_prepare_fsdp1"),
                                                  (DistributedType.FSDP, True, "_prepare_fsdp2")])
def test_prepare_teacher_dispatches(monkeypatch, kind, fsdp2, branch):
    calls = []
    for name in ("_prepare_deepspeed", "_prepare_fsdp1", "_prepare_fsdp2"):
        monkeypatch.setattr(engines, name, lambda model, acc, name=name: calls.append(name) or model)
    teacher = tiny_teacher()
    assert engines.prepare_teacher(teacher, fake_accelerator(kind, fsdp2), "cpu") is teacher
    assert calls == [branch]


def test_ddp_teacher_is_only_moved():
    teacher = tiny_teacher()
    assert engines.prepare_teacher(teacher, fake_accelerator(DistributedType.MULTI_CPU), "cpu") is teacher


def test_zero3_config_keeps_sharding_and_drops_optimizer():
    with open(os.path.join(CONFIGS, "ds_zero3.json")) as f:
        train = json.load(f)
    train["optimizer"] = {"type": "AdamW", "params": {"lr": 5e-4}}
    train["scheduler"] = {"type": "WarmupLR"}
    train["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
    config = engines.deepspeed_inference_config(train, hidden_size=768)
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and "optimizer" not in config and "scheduler" not in config
    assert "offload_optimizer" not in zero
    assert zero["reduce_bucket_size"] == 768 * 768 and zero["stage3_param_persistence_threshold"] == 7680
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 768 * 768)
    assert train["zero_optimization"]["reduce_bucket_size"] == "auto"  # the student's config is untouched


def test_zero2_config_replicates_the_teacher():
    with open(os.path.join(CONFIGS, "ds_zero2.json")) as f:
        train = json.load(f)
    config = engines.deepspeed_inference_config(train, hidden_size=768)
    assert config["zero_optimization"] == {"stage": 0}
    assert config["bf16"] == train["bf16"]


def test_shipped_accelerate_configs_name_their_engines():
    for name, engine in (("accelerate_fsdp2.yaml", "FSDP"), ("accelerate_fsdp1.yaml", "FSDP"),
                         ("accelerate_deepspeed_zero3.yaml", "DEEPSPEED")):
        with open(os.path.join(CONFIGS, name)) as f:
            config = yaml.safe_load(f)
        assert config["distributed_type"] == engine
    assert os.path.exists(os.path.join(CONFIGS, "ds_zero3.json"))


def _distilbert_student():
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    return DistilBertForMaskedLM(DistilBertConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                                  max_position_embeddings=64))


def _fsdp_accelerator(version):
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(fsdp_version=version, auto_wrap_policy="transformer_based_wrap",
                                            transformer_cls_names_to_wrap=["TransformerBlock"])
    return SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=version == 2, device="cpu",
                           state=SimpleNamespace(fsdp_plugin=plugin))


def test_fsdp1_teacher_policy_wraps_its_own_layers_and_leaves_the_students(monkeypatch):
    """A BERT teacher of a DistilBERT student: the teacher is wrapped per BERT layer, the student per
    TransformerBlock."""
    import torch.distributed.fsdp as fsdp
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    seen = {}

    class FakeFSDP(torch.nn.Module):
        def __init__(self, module, auto_wrap_policy=None, **kw):
            super().__init__()
            seen["policy"] = auto_wrap_policy

    monkeypatch.setattr(fsdp, "FullyShardedDataParallel", FakeFSDP)
    accelerator = _fsdp_accelerator(1)
    teacher, student = tiny_teacher(), _distilbert_student()
    engines.prepare_teacher(teacher, accelerator, "cpu")
    # the teacher's own _no_split_modules, since the configured TransformerBlock is the student's class
    assert {c.__name__ for c in seen["policy"].keywords["transformer_layer_cls"]} == {"BertEmbeddings", "BertLayer"}
    plugin = accelerator.state.fsdp_plugin
    assert plugin.auto_wrap_policy is transformer_auto_wrap_policy  # untouched: accelerate builds the student's
    plugin.set_auto_wrap_policy(student)
    assert {c.__name__ for c in plugin.auto_wrap_policy.keywords["transformer_layer_cls"]} == {"TransformerBlock"}


def test_fsdp2_teacher_policy_does_not_leak_into_the_students(monkeypatch):
    from accelerate.utils import fsdp_utils

    seen = {}

    def fake_prepare(accelerator, model):
        plugin = accelerator.state.fsdp_plugin
        plugin.set_auto_wrap_policy(model)  # what fsdp2_prepare_model does first
        policy = fsdp_utils.fsdp2_prepare_auto_wrap_policy(plugin, model)
        seen["wrapped"] = sorted({type(m).__name__ for m in model.modules() if policy(m)})
        return model

    monkeypatch.setattr(fsdp_utils, "fsdp2_prepare_model", fake_prepare)
    accelerator = _fsdp_accelerator(2)
    teacher, student = tiny_teacher(), _distilbert_student()
    engines.prepare_teacher(teacher, accelerator, "cpu")
    assert seen["wrapped"] == ["BertEmbeddings", "BertLayer"]
    plugin = accelerator.state.fsdp_plugin
    assert plugin.transformer_cls_names_to_wrap == ["TransformerBlock"]
    fake_prepare(accelerator, student)  # raised "Could not find the transformer layer class" before the fix
    assert seen["wrapped"] == ["TransformerBlock"]


def test_teacher_keeps_configured_classes_it_has():
    accelerator = _fsdp_accelerator(1)
    accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap = ["BertLayer"]
    own = engines.teacher_fsdp_plugin(accelerator.state.fsdp_plugin, tiny_teacher())
    assert own.transformer_cls_names_to_wrap == ["BertLayer"] and own is not accelerator.state.fsdp_plugin


def test_the_teacher_engine_config_takes_the_teachers_dtype_not_the_students():
    """`--bf16 --teacher_dtype float32` under DeepSpeed: the engine casts its model to the 16-bit type its config
    enables, so the teacher's config enables the teacher's own type (issue 23)."""
    import torch

    train = {"bf16": {"enabled": True}, "fp16": {"enabled": False}, "zero_optimization": {"stage": 2}}
    for dtype, bf16, fp16 in ((torch.float32, False, False), (torch.bfloat16, True, False),
                              (torch.float16, False, True)):
        config = engines.deepspeed_inference_config(train, hidden_size=32, dtype=dtype)
        assert (config["bf16"]["enabled"], config["fp16"]["enabled"]) == (bf16, fp16), dtype
    assert train["bf16"] == {"enabled": True}


ENGINE_DTYPE = r'''
import os, sys, json, torch
os.environ.update(DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1",
                  LOCAL_RANK="0")
import deepspeed
sys.path.insert(0, sys.argv[2])
from tiny import tiny_teacher
from hf_distil import engines
deepspeed.init_distributed(dist_backend="gloo")
found = {}
for dtype in ("float32", "bfloat16"):
    teacher = tiny_teacher().to(getattr(torch, dtype)).requires_grad_(False)
    train = {"train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": True}, "zero_optimization": {"stage": 2}}
    config = engines.deepspeed_inference_config(train, 32, next(teacher.parameters()).dtype)
    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    found[dtype] = str(next(engine.module.parameters()).dtype)
print(json.dumps(found))
'''


def test_a_deepspeed_engine_on_cpu_keeps_a_float32_teacher_float32(tmp_path):
    import subprocess
    import sys

    pytest.importorskip("deepspeed")
    from tiny import ROOT, free_port

    script = tmp_path / "engine_dtype.py"
    script.write_text(ENGINE_DTYPE)
    done = subprocess.run([sys.executable, str(script), free_port(), str(ROOT / "tests")], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"float32": "torch.float32",
                                                                 "bfloat16": "torch.bfloat16"}
