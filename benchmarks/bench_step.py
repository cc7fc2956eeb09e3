"""Cost of one distillation training step: DistillationTrainer vs the seed's approach vs the floor, side by side.

Each round starts one fresh process per contender (so each peak memory is its own); once all are set up they take
turns, one optimizer step each (ours, seed, floor, seed, floor, ours, ...), so a swing in the load of a shared
machine hits them alike. Figures are medians over all timed steps of all rounds.

Contenders:
  ours        DistillationTrainer with the seed's settings (T=2, alpha 5/2/1, cosine, KL at the masked positions), its
              batches prepared as the recipe's collator prepares them (each example's masked positions, no all-ones
              attention_mask: hf_distil.collator.add_row_positions), so the step syncs nothing with the host
  seed        the seed's approach (benchmarks/seed_style.py: teacher inside the trained module, full logits for
              both models, masked_select on expanded masks, all hidden states) trained by the stock Trainer
  floor       the stock Trainer training the student alone on masked LM, plus a teacher inference forward on
              the same batch: the two parts any distillation step pays for, done naively
Levers, each `ours` with one change (not run unless named in --contenders):
  ours_dense         full-vocabulary heads (DistillationTrainer's dense reference path): what sparse heads save
  ours_bf16_teacher  teacher weights in bfloat16 (the KL stays float32)
  ours_compiled      `torch_compile: true` (the student and the teacher compiled whole, --compile_backend)
  ours_attention     + the attention-map term (MSE, every student layer against its uniform-map teacher layer)
  ours_intermediate  + the intermediate hidden-state term (MSE, the embedding output and every mapped layer)
  ours_relation      + the MiniLM v2 relation term (student's last layer against the teacher's, --heads relation
                     heads); each term lever is also reported against `ours` (the cost of that term alone)

Before timing, the loss of `ours` is asserted equal to the seed-style loss on the same batch and weights.
Default sizes are the real ones: a teacher of Bio_ClinicalBERT's shape (random weights), a 6-layer student
from create_student, sequence 128, batch 16.

Long sequences (`--lengths`): the same comparison at each sequence length, with the tokens per step held at
`--batch_tokens` (batch = batch_tokens // length), so that what grows with the length is attention and what the
objective keeps per position; `--family modernbert` gives a teacher of ModernBERT-base's shape (22 layers, global
attention every third layer, a ±64-token local window, vocabulary 50,368), `--gradient_checkpointing` checkpoints
every contender's student, as the long-context recipe does.

    python benchmarks/bench_step.py --json out/bench_step.json
    python benchmarks/bench_step.py --family modernbert --lengths 512,1024,2048,4096,8192 --batch_tokens 16384 \
        --gradient_checkpointing --bf16 --json out/bench_step_long.json   # a GPU
    python benchmarks/bench_step.py --profile --contenders ours,seed,floor   # where the time goes
    python benchmarks/bench_step.py --teacher_layers 2 --hidden 32 --vocab 100 --steps 2 --rounds 1   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FAMILIES = ("bert", "modernbert")
CONTENDERS = ("ours", "seed", "floor", "ours_dense", "ours_bf16_teacher", "ours_compiled", "ours_attention",
              "ours_intermediate", "ours_relation")
# The layer-term levers: the seed's objective plus one more term, weight 1.
TERM_LEVERS = {"ours_attention": dict(alpha_attention=1.0), "ours_intermediate": dict(alpha_intermediate=1.0),
               "ours_relation": dict(alpha_relation=1.0)}
TEACHER_DTYPES = ("auto", "float32", "bfloat16", "float16")
# The step's floating-point work is counted by `step_flops` (documented there); MFU is that over the peak.
# Dense bf16 tensor-core peaks (TFLOP/s) of the GPUs the device tool lends; --peak_tflops for any other.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
# MIMIC-III NOTEEVENTS as the seed distilled it: about 1 B WordPiece tokens (issue 24's estimate: 6 h for 3 epochs at
# 1,070 sequences of 128 a second); the seed's three epochs of it.
SEED_EPOCH_TOKENS, SEED_EPOCHS = 1.0e9, 3
# The seed's objective: temperature and the weights of KL, student masked-LM loss and cosine alignment.
SEED_SETTINGS = dict(temperature=2.0, alpha_kd=5.0, alpha_mlm=2.0, alpha_hidden=1.0, hidden_loss="cosine",
                     kd_positions="masked")
TARGETS = {"time_vs_seed": 1 / 1.3, "memory_vs_seed": 0.75, "time_vs_floor": 0.9}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("sizes (defaults: Bio_ClinicalBERT's architecture, or ModernBERT-base's)")
    g.add_argument("--family", default="bert", choices=FAMILIES,
                   help="bert: Bio_ClinicalBERT's shape; modernbert: ModernBERT-base's (sizes not given on the "
                        "command line follow the family)")
    g.add_argument("--batch", type=int, default=16)
    g.add_argument("--seq", type=int, default=128, help="sequence length (every position is a real token)")
    g.add_argument("--lengths", default=None,
                   help="comma-separated sequence lengths to sweep (overrides --seq and --batch: see --batch_tokens)")
    g.add_argument("--batch_tokens", type=int, default=16384,
                   help="with --lengths: tokens per step at every length (batch = batch_tokens // length, at least 1)")
    g.add_argument("--vocab", type=int, default=None, help="default 28996 (bert) / 50368 (modernbert)")
    g.add_argument("--hidden", type=int, default=768)
    g.add_argument("--heads", type=int, default=None, help="attention heads; default hidden / 64 (at least 1)")
    g.add_argument("--intermediate", type=int, default=None,
                   help="feed-forward width; default 4 × hidden (bert) / 1.5 × hidden (modernbert)")
    g.add_argument("--teacher_layers", type=int, default=None, help="default 12 (bert) / 22 (modernbert)")
    g.add_argument("--gradient_checkpointing", action="store_true",
                   help="checkpoint the student's layers (every contender), as the long-context recipe does")
    g.add_argument("--attn_implementation", default="sdpa", choices=("sdpa", "eager", "flash_attention_2"),
                   help="attention kernel of both models (every contender)")
    g.add_argument("--student_layers", type=int, default=None, help="default teacher_layers // 2 (every other)")
    g.add_argument("--mask_prob", type=float, default=0.15, help="share of positions masked (labels != -100)")
    g = p.add_argument_group("run")
    g.add_argument("--steps", type=int, default=3, help="timed optimizer steps per run")
    g.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps before them")
    g.add_argument("--rounds", type=int, default=2, help="runs per contender, alternating contenders")
    g.add_argument("--contenders", default="ours,seed,floor", help=f"comma-separated, from {', '.join(CONTENDERS)}")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    g.add_argument("--threads", type=int, default=None, help="torch threads for every contender; default: all cores")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--bf16", action="store_true", help="student in bfloat16 mixed precision (all contenders)")
    g.add_argument("--teacher_dtype", default="auto", choices=TEACHER_DTYPES,
                   help="teacher weights dtype of ours, its levers and floor (seed: the teacher stays as built); "
                        "auto = bfloat16 with --bf16, else float32")
    g.add_argument("--compile_backend", default="inductor",
                   help="torch_compile_backend of ours_compiled (no other contender compiles)")
    g.add_argument("--peak_tflops", type=float, default=None,
                   help="the device's peak FLOP/s (TFLOP/s) for MFU; default: the dense bf16 peak of a known GPU "
                   f"({', '.join(PEAK_BF16_TFLOPS)}) under --bf16, else no MFU")
    g.add_argument("--profile", action="store_true",
                   help="profile the first timed step of each run with torch.profiler and print the top operators")
    g.add_argument("--skip_check", action="store_true", help="skip the ours = seed-style loss assertion")
    g.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    modern = a.family == "modernbert"
    a.vocab = a.vocab or (50368 if modern else 28996)
    a.teacher_layers = a.teacher_layers or (22 if modern else 12)
    a.heads = a.heads or max(1, a.hidden // 64)
    a.intermediate = a.intermediate or (a.hidden * 3 // 2 if modern else 4 * a.hidden)
    try:
        a.lengths = [int(n) for n in a.lengths.split(",") if n.strip()] if a.lengths else None
    except ValueError:
        p.error(f"--lengths {a.lengths!r}: give comma-separated integers, e.g. 512,1024,2048.")
    if a.lengths is not None and (not a.lengths or min(a.lengths) < 3 or a.batch_tokens < 1):
        p.error("--lengths needs lengths >= 3 and --batch_tokens >= 1.")
    a.student_layers = a.student_layers or max(1, a.teacher_layers // 2)
    a.threads = a.threads or os.cpu_count() or 1
    names = [n.strip() for n in a.contenders.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown or not names:
        p.error(f"--contenders {a.contenders!r}: unknown {unknown}; choose from {', '.join(CONTENDERS)}.")
    a.contenders = list(dict.fromkeys(names))
    if a.hidden % a.heads:
        p.error(f"--hidden {a.hidden} is not divisible by --heads {a.heads}; pick heads that divide it.")
    if 2 * a.student_layers > a.teacher_layers:
        p.error(f"--student_layers {a.student_layers} needs a teacher of at least {2 * a.student_layers} layers "
                f"(every other layer); raise --teacher_layers or lower --student_layers.")
    if not 0 < a.mask_prob <= 1:
        p.error(f"--mask_prob {a.mask_prob} must be in (0, 1].")
    if a.vocab < 6 or a.seq < 3 or a.batch < 1 or a.steps < 1 or a.warmup < 0 or a.rounds < 1:
        p.error("need --vocab >= 6, --seq >= 3, --batch >= 1, --steps >= 1, --warmup >= 0, --rounds >= 1.")
    return a


# ---- one contender, in a fresh process -------------------------------------------------------------------------


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch here; use --device cpu.")
    return name


def build_models(a):
    """A random-weight teacher of the requested shape and family, and its every-other-layer student."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, ModernBertConfig, ModernBertForMaskedLM

    from hf_distil import create_student

    positions = max(512, a.seq)
    if a.family == "modernbert":
        config = ModernBertConfig(vocab_size=a.vocab, hidden_size=a.hidden, num_hidden_layers=a.teacher_layers,
                                  num_attention_heads=a.heads, intermediate_size=a.intermediate,
                                  max_position_embeddings=max(8192, positions), local_attention=128,
                                  global_attn_every_n_layers=3, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                                  cls_token_id=2, sep_token_id=3)
        model_class = ModernBertForMaskedLM
    else:
        config = BertConfig(vocab_size=a.vocab, hidden_size=a.hidden, num_hidden_layers=a.teacher_layers,
                            num_attention_heads=a.heads, intermediate_size=a.intermediate,
                            max_position_embeddings=positions)
        model_class = BertForMaskedLM
    torch.manual_seed(a.seed)
    teacher = model_class._from_config(config, attn_implementation=a.attn_implementation)
    student = create_student(teacher, a.student_layers, "every_other")
    if a.gradient_checkpointing:
        student.gradient_checkpointing_enable({"use_reentrant": False})
    return teacher, student


def make_examples(a, n: int) -> list[dict]:
    """`n` fixed pre-masked rows of `a.seq` real tokens, ~`mask_prob` of them masked (at least one per row)."""
    import torch

    cls, sep, mask = (101, 102, 103) if a.vocab > 103 else (2, 3, 4)
    g = torch.Generator().manual_seed(a.seed)
    ids = torch.randint(5, a.vocab, (n, a.seq), generator=g)
    ids[:, 0], ids[:, -1] = cls, sep
    picked = torch.rand(n, a.seq, generator=g) < a.mask_prob
    picked[:, 0] = picked[:, -1] = False
    picked[picked.sum(1) == 0, 1] = True
    labels = torch.where(picked, ids, torch.full_like(ids, -100))
    ids = torch.where(picked, torch.full_like(ids, mask), ids)
    ones = torch.ones(a.seq, dtype=torch.long)
    return [{"input_ids": ids[i], "attention_mask": ones, "labels": labels[i]} for i in range(n)]


def training_args(a, cls, device: str, output_dir: str, **extra):
    return cls(output_dir=output_dir, per_device_train_batch_size=a.batch, max_steps=a.warmup + a.steps,
               learning_rate=5e-5, report_to=[], save_strategy="no", eval_strategy="no", logging_strategy="no",
               disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False, use_cpu=device == "cpu",
               seed=a.seed, bf16=a.bf16, **extra)


def teacher_dtype(a):
    """The teacher weights dtype that --teacher_dtype (and --bf16) ask for."""
    import torch

    if a.teacher_dtype == "auto":
        return torch.bfloat16 if a.bf16 else torch.float32
    return getattr(torch, a.teacher_dtype)


def ours_collator(features):
    """The batch as the recipe's ReproducibleMLMCollator(positions_bucket=8) hands it to the step."""
    from transformers import default_data_collator

    from hf_distil.collator import add_row_positions

    return add_row_positions(default_data_collator(features), 8)


def step_flops(a) -> float:
    """Floating-point operations of one `ours` step, counted by formula (multiply-add = 2):

    per encoder layer and token, 2 · (4 d² + 2 d I) for the projections and the feed-forward (3 d I for a GLU, as
    ModernBERT's) plus 4 · L · d for attention (QKᵀ and AV over L keys); per masked row, 2 · (d² + d V) for the
    masked-LM head's transform and decoder (the heads run on those rows only). The teacher runs forward (×1), the
    student forward and backward (×3). Embeddings, norms, softmax and the loss terms are left out (< 2 %)."""
    d, i, length, v = a.hidden, a.intermediate, a.seq, a.vocab
    ffn = 3 * d * i if a.family == "modernbert" else 2 * d * i
    per_layer_token = 2 * (4 * d * d + ffn) + 4 * length * d
    head_per_row = 2 * (d * d + d * v)
    tokens = a.batch * length
    rows = tokens * a.mask_prob

    def forward(layers):
        return layers * per_layer_token * tokens + head_per_row * rows

    return forward(a.teacher_layers) + 3 * forward(a.student_layers)


def peak_tflops(a, device: str) -> float | None:
    if a.peak_tflops:
        return a.peak_tflops
    if device != "cuda" or not a.bf16:
        return None
    import torch

    name = torch.cuda.get_device_name()
    return next((peak for gpu, peak in PEAK_BF16_TFLOPS.items() if gpu in name), None)


def build_trainer(name: str, a, teacher, student, examples, device: str, output_dir: str):
    """The stock or distillation `Trainer` that `name` stands for, ready to `train()`."""
    import torch
    from transformers import Trainer, TrainingArguments, default_data_collator

    from hf_distil import DistillationArguments, DistillationTrainer

    common = dict(train_dataset=examples, data_collator=default_data_collator)
    if name.startswith("ours"):
        dtype = "bfloat16" if name == "ours_bf16_teacher" else a.teacher_dtype
        term = {**TERM_LEVERS.get(name, {}), **({"relation_heads": a.heads} if name == "ours_relation" else {})}
        compiled = dict(torch_compile=True, torch_compile_backend=a.compile_backend) if name == "ours_compiled" else {}
        args = training_args(a, DistillationArguments, device, output_dir, teacher_dtype=dtype, **SEED_SETTINGS,
                             **term, **compiled)
        trainer_cls = DistillationTrainer if name != "ours_dense" else type(
            "DenseDistillationTrainer", (DistillationTrainer,), {"sparse_heads": False})
        return trainer_cls(model=student, args=args, teacher_model=teacher,
                           **{**common, "data_collator": ours_collator})
    if name == "seed":
        from seed_style import SeedStyleDistiller

        s = SEED_SETTINGS
        wrapper = SeedStyleDistiller(student, teacher, s["temperature"], s["alpha_kd"], s["alpha_mlm"],
                                     s["alpha_hidden"])
        return Trainer(model=wrapper, args=training_args(a, TrainingArguments, device, output_dir), **common)
    if name == "floor":
        teacher.requires_grad_(False).eval().to(device=device, dtype=teacher_dtype(a))

        class FloorTrainer(Trainer):
            """Stock masked-LM training of the student, plus a discarded teacher inference forward on the batch."""

            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                with torch.no_grad():
                    teacher(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        return FloorTrainer(model=student, args=training_args(a, TrainingArguments, device, output_dir), **common)
    raise ValueError(f"unknown contender {name!r}")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _profile_summary(prof, vocab: int, cuda: bool, top: int = 15) -> dict:
    """Top operators by self time (on a GPU: by GPU time, with the GPU's busy time and the kernel launches of the
    step, which say whether the CPU's launching or the GPU's work bounds it), and the share of the step spent in
    operators touching vocabulary-sized tensors."""
    time_of = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(time_of(e) for e in events) or 1.0
    vocab_time = 0.0
    for e in events:
        shapes = [s for s in (e.input_shapes or []) if isinstance(s, (list, tuple))]
        dims = [d for s in shapes for d in s if isinstance(d, int)]
        if vocab in dims and "adam" not in e.key.lower():
            vocab_time += time_of(e)
    by_name = prof.key_averages()
    table = by_name.table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=top)
    summary = {"vocab_sized_ops_share": vocab_time / total, "table": table}
    if cuda:
        summary["gpu_busy_ms"] = total / 1000
        summary["kernel_launches"] = sum(e.count for e in by_name if e.key in ("cudaLaunchKernel", "cuLaunchKernel",
                                                                               "cudaLaunchKernelExC"))
        summary["host_syncs"] = sum(e.count for e in by_name if e.key in ("cudaStreamSynchronize",
                                                                           "cudaDeviceSynchronize"))
        summary["cpu_table"] = by_name.table(sort_by="self_cpu_time_total", row_limit=top)
    return summary


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_worker(a) -> dict:
    """Train `a.worker` for warmup + steps optimizer steps, one step per "go" line on stdin (the parent's turn-taking).

    Each step is timed from its begin (after the go) to its end: forward, backward, clipping, optimizer; the batch
    is fetched before. Step ends are announced on stdout as `@@done`.
    """
    import torch
    from transformers import TrainerCallback

    torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    teacher, student = build_models(a)
    examples = make_examples(a, a.batch * (a.warmup + a.steps))
    wall: list[float] = []
    cpu: list[float] = []
    profiled: dict = {}

    class TurnTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            print("@@ready", flush=True)
            if sys.stdin.readline().strip() != "go":
                raise SystemExit("bench_step worker: the parent went away")
            if a.profile and state.global_step == a.warmup:
                profiled["prof"] = torch.profiler.profile(record_shapes=True)
                profiled["prof"].__enter__()
            sync()
            self.start = (time.perf_counter(), _cpu_seconds())

        def on_step_end(self, args, state, control, **kw):
            sync()
            wall.append(time.perf_counter() - self.start[0])
            cpu.append(_cpu_seconds() - self.start[1])
            if "prof" in profiled and "done" not in profiled:
                profiled["prof"].__exit__(None, None, None)
                profiled["done"] = True
            print(f"@@done {wall[-1]:.6f}", flush=True)

    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(a.worker, a, teacher, student, examples, device, out)
        trainer.add_callback(TurnTimer())
        if hasattr(trainer, "_distillation_loss"):
            compute = trainer._distillation_loss

            def remembering(*args, **kwargs):
                loss, terms, stats = compute(*args, **kwargs)
                trainer._last_terms = tuple(terms)
                return loss, terms, stats

            trainer._distillation_loss = remembering
        setup_rss = _rss_mib()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
    result = {
        "contender": a.worker,
        "step_times_s": wall[a.warmup:],
        "step_cpu_s": cpu[a.warmup:],
        "warmup_times_s": wall[: a.warmup],
        "peak_rss_mib": _rss_mib(),
        "setup_rss_mib": setup_rss,
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
        "device": device,
        # The loss terms this contender's last step computed (the distillation trainers' only).
        "terms": sorted(getattr(trainer, "_last_terms", ())),
    }
    if "prof" in profiled:
        result["profile"] = _profile_summary(profiled["prof"], a.vocab, device == "cuda")
    return result


# ---- the loss check -------------------------------------------------------------------------------------------


def check_same_loss(a) -> dict:
    """ours' loss and terms vs the seed-style loss on the first batch, same weights, dropout off.

    Asserts float32 equality, and that ours gives the same loss on the batch as `ours_collator` prepares it.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(a.threads)
    try:
        return _check_same_loss(a)
    finally:
        torch.set_num_threads(threads)


def _check_same_loss(a) -> dict:
    import torch
    from seed_style import SeedStyleDistiller
    from transformers import default_data_collator

    from hf_distil import DistillationArguments, DistillationTrainer

    device = resolve_device(a.device)
    teacher, student = build_models(a)
    batch = {k: v.to(device) for k, v in default_data_collator(make_examples(a, a.batch)).items()}
    with tempfile.TemporaryDirectory() as out:
        args = DistillationArguments(output_dir=out, report_to=[], use_cpu=device == "cpu", teacher_dtype="float32",
                                     **SEED_SETTINGS)
        trainer = DistillationTrainer(model=student, args=args, teacher_model=teacher)
        s = SEED_SETTINGS
        wrapper = SeedStyleDistiller(trainer.model, trainer.teacher, s["temperature"], s["alpha_kd"], s["alpha_mlm"],
                                     s["alpha_hidden"]).eval()
        prepared = {k: v.to(device) for k, v in ours_collator(make_examples(a, a.batch)).items()}
        with torch.no_grad():
            ours, ours_terms = trainer.compute_loss(trainer.model, batch, return_outputs=True)
            seed = wrapper(**batch)
            from_positions = trainer.compute_loss(trainer.model, prepared)
        torch.testing.assert_close(from_positions, ours, rtol=1e-6, atol=1e-6,
                                   msg=lambda m: f"ours on prepared batches differs from ours on plain ones: {m}")
        report = {"ours_loss": ours.item(), "seed_loss": seed["loss"].item(),
                  "terms": {k: [ours_terms[k].item(), seed[k].item()] for k in ours_terms}}
        torch.testing.assert_close(ours, seed["loss"], rtol=1e-5, atol=1e-5,
                                   msg=lambda m: f"ours and seed-style losses differ on the same batch: {m}")
        for k in ours_terms:
            torch.testing.assert_close(ours_terms[k], seed[k], rtol=1e-5, atol=1e-5,
                                       msg=lambda m, k=k: f"{k} term differs between ours and seed-style: {m}")
        report["rel_diff"] = abs(report["ours_loss"] - report["seed_loss"]) / abs(report["seed_loss"])
        lows = {teacher_dtype(a)} | ({torch.bfloat16} if "ours_bf16_teacher" in a.contenders else set())
        for low in sorted(lows - {torch.float32}, key=str):  # how much a low-precision teacher moves the float32 KL
            trainer.teacher.to(low)
            with torch.no_grad():
                _, low_terms = trainer.compute_loss(trainer.model, batch, return_outputs=True)
            report[f"kd_rel_change_teacher_{str(low).split('.')[-1]}"] = \
                abs(low_terms["kd"].item() - ours_terms["kd"].item()) / ours_terms["kd"].item()
    return report


# ---- orchestration -------------------------------------------------------------------------------------------


class Worker:
    """One contender in a fresh interpreter; it runs a training step each time it is given the turn."""

    def __init__(self, name: str, argv: list[str], threads: int, tmp: str):
        self.name = name
        self.result_path = os.path.join(tmp, f"{name}.json")
        self.log = open(os.path.join(tmp, f"{name}.log"), "w+", encoding="utf-8")
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", name, "--result", self.result_path]
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, bufsize=1)

    def _expect(self, tag: str) -> str:
        for line in self.proc.stdout:
            if line.startswith(tag):
                return line
        self.proc.wait()
        self.log.seek(0)
        raise SystemExit(f"contender {self.name!r} failed (exit {self.proc.returncode}):\n{self.log.read()[-4000:]}")

    def ready(self):
        self._expect("@@ready")

    def step(self):
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        self._expect("@@done")

    def finish(self) -> dict:
        self.proc.stdout.read()
        if self.proc.wait() != 0 or not os.path.exists(self.result_path):
            self._expect("@@never")
        self.log.close()
        with open(self.result_path, encoding="utf-8") as f:
            return json.load(f)


def run_round(a, argv: list[str]) -> dict[str, dict]:
    """One fresh process per contender, all set up, then taking turns step by step (rotating who goes first)."""
    with tempfile.TemporaryDirectory() as tmp:
        workers = [Worker(name, argv, a.threads, tmp) for name in a.contenders]
        try:
            for w in workers:
                w.ready()
            for step in range(a.warmup + a.steps):
                k = step % len(workers)
                for w in workers[k:] + workers[:k]:
                    if step:
                        w.ready()
                    w.step()
            return {w.name: w.finish() for w in workers}
        finally:
            for w in workers:
                if w.proc.poll() is None:
                    w.proc.kill()


def summarize(a, runs: dict[str, list[dict]], device: str = "cpu") -> dict:
    tokens = a.batch * a.seq
    flops, peak = step_flops(a), peak_tflops(a, device)
    summary = {}
    for name, results in runs.items():
        times = [t for r in results for t in r["step_times_s"]]
        rss = [r["peak_rss_mib"] for r in results]
        cuda = [r["cuda_peak_mib"] for r in results if r["cuda_peak_mib"] is not None]
        median = statistics.median(times)
        summary[name] = {
            "median_step_s": median,
            "min_step_s": min(times),
            "max_step_s": max(times),
            "round_medians_s": [statistics.median(r["step_times_s"]) for r in results],
            "median_step_cpu_s": statistics.median(t for r in results for t in r["step_cpu_s"]),
            "tokens_per_s": tokens / median,
            "sequences_per_s": a.batch / median,
            "tflops_per_s": flops / median / 1e12,  # ours' work (step_flops) over this contender's time
            "mfu": flops / median / 1e12 / peak if peak else None,
            "seed_hours": SEED_EPOCHS * SEED_EPOCH_TOKENS / (tokens / median) / 3600,
            "peak_rss_mib": statistics.median(rss),
            "peak_rss_mib_rounds": rss,
            "setup_rss_mib": statistics.median(r["setup_rss_mib"] for r in results),
            "cuda_peak_mib": statistics.median(cuda) if cuda else None,
        }
    return summary


def ratios(summary: dict, runs: dict[str, list[dict]]) -> dict:
    """Each contender over seed and floor: ratio of median step times (wall and CPU), of peak memory, and the median
    of the per-step ratios of steps taken in turn (same round, same step), which cancels slow swings in machine load."""
    memory = "cuda_peak_mib" if next(iter(summary.values()))["cuda_peak_mib"] is not None else "peak_rss_mib"
    out = {}
    for name in summary:
        bases = ("seed", "floor", "ours") if name in TERM_LEVERS else ("seed", "floor")
        for base in bases:
            if base in summary and name != base and not (name == "floor" and base == "seed"):
                paired = [mine / theirs for ours_run, base_run in zip(runs[name], runs[base])
                          for mine, theirs in zip(ours_run["step_times_s"], base_run["step_times_s"])]
                out[f"{name}/{base}"] = {
                    "time": summary[name]["median_step_s"] / summary[base]["median_step_s"],
                    "time_paired": statistics.median(paired),
                    "cpu_time": summary[name]["median_step_cpu_s"] / summary[base]["median_step_cpu_s"],
                    "memory": summary[name][memory] / summary[base][memory],
                }
    return out


def print_report(a, check, summary, rat, device):
    mem = "GPU max allocated" if device == "cuda" else "peak RSS"
    w = max(11, *(len(n) for n in summary))
    print(f"\n{'contender':<{w}} {'median s/step':>13} {'min-max':>13} {'CPU s/step':>10} {'tokens/s':>9} "
          f"{'seq/s':>7} {'TFLOP/s':>8} {'MFU':>6} {mem + ' MiB':>16}  round medians")
    for name, s in summary.items():
        m = s["cuda_peak_mib"] if device == "cuda" else s["peak_rss_mib"]
        rounds = " ".join(f"{x:.2f}" for x in s["round_medians_s"])
        mfu = f"{100 * s['mfu']:5.1f}%" if s.get("mfu") is not None else "     -"
        print(f"{name:<{w}} {s['median_step_s']:>13.3f} {s['min_step_s']:>6.2f}-{s['max_step_s']:<6.2f} "
              f"{s['median_step_cpu_s']:>10.2f} {s['tokens_per_s']:>9.0f} {s['sequences_per_s']:>7.1f} "
              f"{s['tflops_per_s']:>8.3f} {mfu} {m:>16.0f}  {rounds}")
    print(f"(TFLOP/s and MFU: the {step_flops(a) / 1e9:.1f} GFLOP of one step by bench_step.step_flops, over each "
          "contender's median time; the seed's three epochs at ours' rate: "
          f"{summary['ours']['seed_hours']:.1f} h)" if "ours" in summary else "")
    print()
    for key, r in rat.items():
        print(f"{key:<{w + 6}} time {r['time']:.3f}× (paired steps {r['time_paired']:.3f}×)   "
              f"CPU time {r['cpu_time']:.3f}×   memory {r['memory']:.3f}×")
    if "ours/seed" in rat:
        r = rat["ours/seed"]
        print(f"\nours vs seed: {1 / r['time']:.2f}× faster (target ≥ 1.30), memory {r['memory']:.2f}× (target ≤ 0.75)")
    if "ours/floor" in rat:
        print(f"ours vs floor: time {rat['ours/floor']['time']:.2f}× (target ≤ 0.90)")
    for name in TERM_LEVERS:
        if f"{name}/ours" in rat:
            r = rat[f"{name}/ours"]
            print(f"{name} vs ours: time {r['time']:.3f}× (paired steps {r['time_paired']:.3f}×), "
                  f"memory {r['memory']:.3f}×")
    if check:
        print(f"loss check: ours {check['ours_loss']:.6f} = seed-style {check['seed_loss']:.6f} "
              f"(relative difference {check['rel_diff']:.1e})")
        for key in (k for k in check if k.startswith("kd_rel_change")):
            print(f"{key}: {check[key]:.1e} (KL with the low-precision teacher vs the float32 one, same batch)")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    sys.path.insert(0, str(HERE))  # seed_style
    if a.worker:
        result = run_worker(a)
        with open(a.result, "w", encoding="utf-8") as f:
            json.dump(result, f)
        return result

    device = resolve_device(a.device)
    if a.lengths:
        return sweep_lengths(a, argv, device)
    report = bench(a, argv, device)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"wrote {a.json}")
    return report


def bench(a, argv: list[str], device: str) -> dict:
    """The loss check, the rounds of every contender at one size, the report printed and returned."""
    import torch

    print(f"bench_step: {a.family} teacher {a.teacher_layers}×{a.hidden} (vocab {a.vocab}), student "
          f"{a.student_layers} layers, batch {a.batch} × seq {a.seq}, {a.warmup}+{a.steps} steps × {a.rounds} rounds, "
          f"device {device}, {a.threads} threads, torch {torch.__version__}"
          + (", gradient checkpointing" if a.gradient_checkpointing else ""), flush=True)
    check = None if a.skip_check else check_same_loss(a)
    if a.profile:
        print("profiling: step times and peak memory below include the profiler's overhead", flush=True)
    if check:
        print(f"loss check passed: ours {check['ours_loss']:.6f}, seed-style {check['seed_loss']:.6f}", flush=True)
    runs: dict[str, list[dict]] = {name: [] for name in a.contenders}
    for r in range(a.rounds):
        for name, result in run_round(a, argv).items():
            runs[name].append(result)
            print(f"round {r + 1} {name:<17} median {statistics.median(result['step_times_s']):.3f} s/step "
                  f"(CPU {statistics.median(result['step_cpu_s']):.3f} s), peak RSS {result['peak_rss_mib']:.0f} MiB",
                  flush=True)
            if "profile" in result:
                prof = result["profile"]
                gpu = (f"; GPU busy {prof['gpu_busy_ms']:.1f} ms of the step, {prof['kernel_launches']} kernel "
                       f"launches, {prof['host_syncs']} host syncs" if "gpu_busy_ms" in prof else "")
                print(f"--- profile of one {name} step (vocabulary-sized ops: "
                      f"{100 * prof['vocab_sized_ops_share']:.1f} % of self time{gpu})\n{prof['table']}"
                      + (f"\n{prof['cpu_table']}" if "cpu_table" in prof else ""), flush=True)
    summary = summarize(a, runs, device)
    rat = ratios(summary, runs)
    print_report(a, check, summary, rat, device)
    return {
        "config": {k: v for k, v in vars(a).items() if k not in ("worker", "result", "json")},
        "device": device, "torch": torch.__version__, "cpu_count": os.cpu_count(),
        "loss_check": check, "contenders": summary, "ratios": rat, "targets": TARGETS,
        "runs": {n: [{k: v for k, v in r.items() if k != "profile"} for r in rs] for n, rs in runs.items()},
    }


def sweep_lengths(a, argv: list[str], device: str) -> dict:
    """`bench` at each of --lengths with batch_tokens // length rows per step; a table of step time and memory
    against the length for each contender, and ours over seed and floor."""
    reports = []
    for length in a.lengths:
        batch = max(1, a.batch_tokens // length)
        sub_argv = [*argv, "--lengths", "", "--seq", str(length), "--batch", str(batch), "--json", ""]
        reports.append(bench(parse_args(sub_argv), sub_argv, device))
    memory = "GPU max allocated" if device == "cuda" else "peak RSS"
    print(f"\nstep time (s) and {memory} (MiB) against the sequence length, {a.batch_tokens} tokens per step "
          f"({a.family}{', gradient checkpointing' if a.gradient_checkpointing else ''}, device {device})")
    names = list(reports[0]["contenders"])
    header = "length batch " + " ".join(f"{n + ' s':>12} {n + ' MiB':>12}" for n in names)
    ratio_keys = [k for k in ("ours/seed", "ours/floor") if k in reports[0]["ratios"]]
    print(header + "".join(f" {k + ' time':>16} {k + ' mem':>15}" for k in ratio_keys))
    rows = []
    for length, report in zip(a.lengths, reports):
        c, r = report["contenders"], report["ratios"]
        mem = "cuda_peak_mib" if device == "cuda" else "peak_rss_mib"
        print(f"{length:>6} {report['config']['batch']:>5} "
              + " ".join(f"{c[n]['median_step_s']:>12.3f} {c[n][mem]:>12.0f}" for n in names)
              + "".join(f" {r[k]['time']:>15.3f}× {r[k]['memory']:>14.3f}×" for k in ratio_keys))
        rows.append({"seq": length, "batch": report["config"]["batch"],
                     **{n: {"median_step_s": c[n]["median_step_s"], "memory_mib": c[n][mem]} for n in names},
                     **{k: r[k] for k in ratio_keys}})
    report = {"sweep": rows, "memory_measure": memory, "family": a.family, "batch_tokens": a.batch_tokens,
              "gradient_checkpointing": a.gradient_checkpointing, "device": device, "reports": reports}
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"wrote {a.json}")
    return report


if __name__ == "__main__":
    main()
