"""`DistillationArguments`: `TrainingArguments` plus the distillation objective's knobs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

from transformers import TrainingArguments

from .errors import ArgumentError
from .layer_map import canonical_layer_map
from .terms import registered, weight_of

TEACHER_DTYPES = ("auto", "float32", "bfloat16", "float16")
NAN_POLICIES = ("stop", "skip")


def _choice_error(name: str, value, allowed) -> ArgumentError:
    return ArgumentError(f"{name}={value!r} is not supported; choose one of {', '.join(map(repr, allowed))}.")


@dataclass
class DistillationArguments(TrainingArguments):
    """Everything `Trainer` takes, plus the teacher and the weights of the loss terms (the registry hf_distil.terms).

    loss = alpha_kd · T² · KL(teacher ‖ student) + alpha_mlm · CE(student, labels) + alpha_hidden · align(h_s, h_t)
           + alpha_attention · attention + alpha_intermediate · intermediate + alpha_relation · relation
    The last three are off (0) by default; they compare layers paired by `layer_map` (hf_distil.layer_map).
    A task student (token or sequence classification, distilled from a teacher fine-tuned on the same labels) has
    alpha_task · CE(student, gold labels) in place of the masked-LM term, and the KL over its labels.
    """

    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Teacher masked LM: a local folder or a Hub id. Used when no teacher model is passed."},
    )
    teacher_dtype: str = field(
        default="auto",
        metadata={
            "help": "Teacher weights dtype: auto (bfloat16/float16 when --bf16/--fp16, else float32), "
            "float32, bfloat16 or float16. Only the teacher is cast: the student keeps float32 weights and "
            "--bf16/--fp16 autocast its forward. The KL is always computed in float32."
        },
    )
    temperature: float = field(
        default=2.0, metadata={"help": "Softmax temperature T of the KL term (> 0); the term is scaled by T²."}
    )
    alpha_kd: float = field(
        default=5.0, metadata={"help": "Weight of the KL term between teacher and student MLM distributions (>= 0)."}
    )
    alpha_mlm: float = field(
        default=2.0, metadata={"help": "Weight of a masked-LM student's own masked-LM loss (>= 0); a task student's "
                               "own loss is alpha_task."})
    alpha_task: float | None = field(
        default=None,
        metadata={"help": "Weight of a task student's (*ForTokenClassification / *ForSequenceClassification) own "
                  "cross-entropy on the gold labels (>= 0; unset: 1.0). A masked-LM student's is alpha_mlm."},
    )
    alpha_hidden: float = field(
        default=1.0, metadata={"help": "Weight of the last-hidden-state alignment loss (>= 0)."}
    )
    hidden_loss: str = field(
        default="cosine", metadata={"help": "Hidden-state alignment: cosine (mean 1 - cos) or mse."}
    )
    kd_positions: str = field(
        default="masked",
        metadata={"help": "Positions of the KL term: masked (label != -100) or all (every non-padding token)."},
    )
    layer_map: str = field(
        default="uniform",
        metadata={"help": "Student:teacher layer pairs of the attention and intermediate terms, counted from 0: "
                  "uniform (student layer i ↔ teacher layer (i+1)·L_t/L_s − 1, TinyBERT's) or e.g. 0:2,1:5,2:8,3:11."},
    )
    alpha_attention: float = field(
        default=0.0,
        metadata={"help": "Weight of the attention-map term over the layer_map pairs (>= 0; 0 = off). Needs equal "
                  "head counts in the paired layers."},
    )
    attention_loss: str = field(
        default="scores",
        metadata={"help": "Attention-map loss: scores = MSE of the scaled pre-softmax scores q·kᵀ/√d with masked keys "
                  "at 0 (TinyBERT's code), probs = MSE of the attention probabilities, kl = KL(teacher ‖ student) "
                  "of the probabilities."},
    )
    alpha_intermediate: float = field(
        default=0.0,
        metadata={"help": "Weight of the intermediate hidden-state term (>= 0; 0 = off): the embedding outputs and the "
                  "output of each layer_map pair, through a learned linear projection when the widths differ."},
    )
    intermediate_loss: str = field(
        default="mse", metadata={"help": "Intermediate hidden-state loss: mse, or cosine (equal widths only)."}
    )
    alpha_relation: float = field(
        default=0.0,
        metadata={"help": "Weight of the MiniLM v2 self-attention relation term (>= 0; 0 = off): Q-Q, K-K and V-V "
                  "relation KL between the student's last layer and relation_teacher_layer."},
    )
    relation_teacher_layer: int = field(
        default=-1, metadata={"help": "Teacher layer of the relation term, counted from 0 (-1: its last layer)."}
    )
    relation_heads: int = field(
        default=12,
        metadata={"help": "Relation heads of the relation term; must divide the widths of both the student and the "
                  "teacher (their own head counts may differ)."},
    )

    nan_policy: str = field(
        default="stop",
        metadata={
            "help": "A NaN/inf loss term: stop (checked on the device, raised at the next log or save, naming the term "
            "and step; no checkpoint is saved after it) "
            "or skip (the optimizer update whose window met it is dropped on every rank; the step counter and the "
            "learning-rate schedule still advance; skips are counted in the logs as nan_skipped; 10 skips in a row "
            "stop the run)."
        },
    )

    def __post_init__(self):
        check_compile_settings(self.torch_compile_backend, self.torch_compile_mode)
        if self.nan_policy == "skip" and self.deepspeed:
            raise ArgumentError(
                "nan_policy='skip' cannot drop an update under DeepSpeed (its engine owns the optimizer step): use "
                "nan_policy='stop', or DeepSpeed's own fp16 loss scaling, which skips overflowing steps."
            )
        if self.deepspeed and self.use_cpu:
            from .engines import deepspeed_on_cpu

            if not deepspeed_on_cpu():
                raise ValueError(
                    "use_cpu=True with --deepspeed: accelerate would train without DeepSpeed on models partitioned by "
                    "ZeRO-3; drop use_cpu, or set DS_ACCELERATOR=cpu to run DeepSpeed on CPU."
                )
            self.use_cpu = False  # DeepSpeed's CPU accelerator already places everything on CPU
            self._deepspeed_cpu = True
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                example = 1 if name == "gradient_accumulation_steps" else 8
                raise ArgumentError(f"{name}={value!r} must be a positive integer (e.g. --{name} {example}).")
        super().__post_init__()
        terms = [term for term in registered() if hasattr(self, term.weight)]
        weights = [term.weight for term in terms]
        for term in terms:
            value = getattr(self, term.weight)
            if value is None and term.default_weight is not None:  # unset: the term's default, where it applies
                continue
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ArgumentError(f"{term.weight}={value!r} must be a finite number >= 0 (0 switches the term off).")
        if not any((getattr(self, name) or 0) > 0 for name in weights):
            unset = [t.weight for t in terms if getattr(self, t.weight) is None]
            unset = (f" ({', '.join(unset)}, unset here, counts only once it is given)" if unset else "")
            raise ArgumentError(
                f"{', '.join(weights)} are all 0{unset}: nothing to train; set at least one of them > 0."
            )
        self.layer_map = canonical_layer_map(self.layer_map)
        for term in terms:
            term.validate(self)
        if self.teacher_dtype not in TEACHER_DTYPES:
            raise _choice_error("teacher_dtype", self.teacher_dtype, TEACHER_DTYPES)
        if self.nan_policy not in NAN_POLICIES:
            raise _choice_error("nan_policy", self.nan_policy, NAN_POLICIES)

    @property
    def teacher_torch_dtype(self):
        """The one resolution of `teacher_dtype`: "auto" is the autocast dtype (bfloat16 / float16), else float32."""
        import torch

        if self.teacher_dtype == "auto":
            return torch.bfloat16 if self.bf16 else torch.float16 if self.fp16 else torch.float32
        return getattr(torch, self.teacher_dtype)

    def _validate_args(self):
        """TrainingArguments' checks; on DeepSpeed's CPU accelerator its bf16 check sees the CPU run it is (without
        use_cpu, it would refuse bf16 for want of a GPU)."""
        on_cpu = getattr(self, "_deepspeed_cpu", False)
        self.use_cpu = self.use_cpu or on_cpu
        try:
            super()._validate_args()
        finally:
            if on_cpu:
                self.use_cpu = False

    @cached_property
    def _setup_devices(self):
        device = super()._setup_devices
        if self.deepspeed:
            from .engines import align_cpu_deepspeed_state

            align_cpu_deepspeed_state(self.distributed_state)
        return device

    @property
    def needs_teacher(self) -> bool:
        """Whether any weighted loss term reads the teacher (when not, training never runs it); the term registry
        knows which do."""
        return any(term.needs_teacher and weight_of(self, term.name) > 0 for term in registered()
                   if hasattr(self, term.weight))


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_compile_settings(backend: str | None, mode: str | None) -> None:
    """A torch_compile backend or mode torch.compile does not know is one line here, not a traceback once the data
    is tokenised and the models loaded (an unknown mode was ignored with a warning)."""
    from accelerate.utils import DynamoBackend

    known = [b.value.lower() for b in DynamoBackend if b.value != "NO"]
    if backend is not None and backend.lower() not in known:
        raise ArgumentError(f"torch_compile_backend={backend!r} is not a torch.compile backend; choose one of "
                            f"{', '.join(known)} (inductor is the default).")
    if mode is not None and mode not in COMPILE_MODES:
        raise ArgumentError(f"torch_compile_mode={mode!r} is not a torch.compile mode; choose one of "
                            f"{', '.join(COMPILE_MODES)}.")

