"""Prepare the frozen teacher for inference on whatever engine `Trainer` runs the student on.

DDP / single device: the plain model on this rank's device (never wrapped: it has no gradients to sync).
DeepSpeed: an inference engine (ZeRO-3 keeps the teacher sharded, other stages hold it whole, stage 0).
FSDP 1 / 2: wrapped by the same FSDP plugin as the student, so a large teacher is sharded too.
The prepared teacher is never registered with the accelerator, so no checkpoint ever holds it.
"""

from __future__ import annotations

import copy
import os

from accelerate.utils import DistributedType
from torch import nn


def teacher_engine(accelerator) -> str:
    """Which preparation the teacher gets: "deepspeed", "fsdp2", "fsdp1" or "device"."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return "deepspeed"
    if accelerator.distributed_type == DistributedType.FSDP:
        return "fsdp2" if getattr(accelerator, "is_fsdp2", False) else "fsdp1"
    return "device"


def deepspeed_on_cpu() -> bool:
    """Whether DeepSpeed runs on its CPU accelerator (DS_ACCELERATOR=cpu, or no GPU found)."""
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name() == "cpu"


def align_cpu_deepspeed_state(state) -> bool:
    """Take rank and world size from the process group DeepSpeed started, when accelerate saw none.

    On DeepSpeed's CPU accelerator accelerate finds no backend, reports one process and rank 0 on every rank, and
    `train_batch_size` ("auto") is filled for one process: "train_batch_size is not equal to ... 32 != 32 * 1 * 2".
    """
    import torch.distributed as dist

    if state.distributed_type != DistributedType.DEEPSPEED or state.backend is not None:
        return False
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return False
    state.backend = dist.get_backend()
    state.num_processes = dist.get_world_size()
    state.process_index = dist.get_rank()
    state.local_process_index = int(os.environ.get("LOCAL_RANK", state.process_index))
    return True


def deepspeed_inference_config(train_config: dict, hidden_size: int | None, dtype=None) -> dict:
    """The student's DeepSpeed config turned into one for a frozen model: no optimizer, no scheduler;
    ZeRO-3 stays (the teacher is sharded), any other stage becomes 0 (the teacher is replicated). Its bf16 / fp16
    blocks follow `dtype` (the teacher's teacher_dtype), not the student's: the engine casts the model to the 16-bit
    type its config enables, so `--bf16 --teacher_dtype float32` would otherwise run a bfloat16 teacher."""
    import torch

    config = copy.deepcopy(train_config)
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    if dtype is not None:
        for block, half in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            config[block] = {**(config.get(block) or {}), "enabled": dtype == half}
            if dtype != half:
                config[block] = {"enabled": False}
    zero = config.setdefault("zero_optimization", {})
    if zero.get("stage", 0) == 3:
        if hidden_size:
            for key, value in (
                ("reduce_bucket_size", hidden_size * hidden_size),
                ("stage3_param_persistence_threshold", 10 * hidden_size),
                ("stage3_prefetch_bucket_size", int(0.9 * hidden_size * hidden_size)),
            ):
                if zero.get(key, "auto") == "auto":
                    zero[key] = value
        zero.pop("offload_optimizer", None)
    else:
        config["zero_optimization"] = {"stage": 0}
    return config


def _prepare_deepspeed(teacher: nn.Module, accelerator) -> nn.Module:
    import deepspeed

    train_config = accelerator.state.deepspeed_plugin.deepspeed_config
    config = deepspeed_inference_config(train_config, getattr(teacher.config, "hidden_size", None),
                                        next(teacher.parameters()).dtype)
    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    engine.eval()
    return engine


def teacher_fsdp_plugin(plugin, teacher: nn.Module):
    """A copy of the student's FSDP plugin whose auto-wrap policy is built for the teacher's own layer classes.

    `set_auto_wrap_policy` fixes the plugin's policy to the classes of the first model it sees: called on the shared
    plugin with the teacher it would leave a DistilBERT student of a BERT teacher unwrapped (FSDP1) or make FSDP2
    raise "Could not find the transformer layer class". The shared plugin stays as the user configured it.
    """
    from accelerate.utils.dataclasses import get_module_class_from_name

    own = copy.copy(plugin)
    names = plugin.transformer_cls_names_to_wrap
    if names is not None:
        found = [name for name in names if get_module_class_from_name(teacher, name) is not None]
        if not found:  # the configured classes are the student's: wrap the teacher per encoder layer
            found = list(getattr(teacher, "_no_split_modules", None) or []) or _encoder_layer_class(teacher)
        own.transformer_cls_names_to_wrap = found
    return own


def _encoder_layer_class(model: nn.Module) -> list[str]:
    base = getattr(model, getattr(model, "base_model_prefix", ""), model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    return [type(layers[0]).__name__] if isinstance(layers, nn.ModuleList) and len(layers) else []


def _prepare_fsdp1(teacher: nn.Module, accelerator) -> nn.Module:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    plugin = teacher_fsdp_plugin(accelerator.state.fsdp_plugin, teacher)
    plugin.set_auto_wrap_policy(teacher)
    wrapped = FSDP(
        teacher,
        sharding_strategy=plugin.sharding_strategy,
        cpu_offload=plugin.cpu_offload,
        auto_wrap_policy=plugin.auto_wrap_policy,
        mixed_precision=plugin.mixed_precision_policy,
        sync_module_states=plugin.sync_module_states,
        backward_prefetch=plugin.backward_prefetch,
        forward_prefetch=plugin.forward_prefetch,
        use_orig_params=plugin.use_orig_params,
        limit_all_gathers=plugin.limit_all_gathers,
        device_id=accelerator.device,
    )
    wrapped.eval()
    return wrapped


def _prepare_fsdp2(teacher: nn.Module, accelerator) -> nn.Module:
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    state = accelerator.state
    shared = state.fsdp_plugin
    state.fsdp_plugin = teacher_fsdp_plugin(shared, teacher)  # fsdp2_prepare_model reads the plugin from the state
    try:
        prepared = fsdp2_prepare_model(accelerator, teacher)
    finally:
        state.fsdp_plugin = shared
    prepared.eval()
    return prepared


def prepare_teacher(teacher: nn.Module, accelerator, device) -> nn.Module:
    """The teacher, frozen and in eval mode, ready for inference beside the student on `accelerator`."""
    engine = teacher_engine(accelerator)
    if engine == "deepspeed":
        return _prepare_deepspeed(teacher, accelerator)
    if engine == "fsdp1":
        return _prepare_fsdp1(teacher, accelerator)
    if engine == "fsdp2":
        return _prepare_fsdp2(teacher, accelerator)
    return teacher.to(device)


def deepspeed_16bit(engine) -> bool:
    """Whether `engine` (Trainer's model_wrapped) is a DeepSpeed engine whose module weights are 16-bit."""
    enabled = [getattr(engine, name, None) for name in ("bfloat16_enabled", "fp16_enabled")]
    return any(callable(check) and check() for check in enabled)


def deepspeed_fp32_state_dict(engine) -> dict:
    """The student's float32 weights under a 16-bit DeepSpeed engine: its module holds bf16/fp16 copies, the float32
    master weights live in the optimizer (partitioned under ZeRO). Collective: every rank must call it."""
    import deepspeed
    import torch
    from deepspeed.utils import safe_get_full_fp32_param

    state = {}
    for name, param in engine.module.named_parameters():
        full = safe_get_full_fp32_param(param)
        if full is None:  # not trained (no master copy): its own values, gathered under ZeRO-3
            with deepspeed.zero.GatheredParameters([param]):
                full = param.detach().float().clone()
        state[name] = full.detach().cpu()
    persistent = set(engine.module.state_dict())  # non-persistent buffers (position ids) are not saved
    for name, buffer in engine.module.named_buffers():
        if name in persistent:
            state[name] = (buffer.float() if torch.is_floating_point(buffer) else buffer).detach().cpu()
    return state
