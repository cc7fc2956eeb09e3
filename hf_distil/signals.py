"""What each model exposes to the loss terms, captured in ONE forward per model.

A loss term reads *signals* (the logits at the selected rows, the last hidden state, hidden states of mapped layers,
the attention queries/keys of mapped layers, the queries/keys/values of one layer), not model outputs. `capture`
calls the model as usual, so the forward hooks of DDP / DeepSpeed / FSDP still fire, and takes what a `CaptureSpec`
asks for with forward hooks on its modules (found by hf_distil.families): no second forward, and no
`output_attentions=True`, which would force eager attention in every layer. Attention distributions are computed by
the terms from the captured queries and keys of the mapped layers only.

The MLM head (hidden → vocabulary) is the largest matrix product of a BERT step and its logits the largest tensors,
yet only the ~15 % masked positions need them: a forward pre-hook on the head gathers the selected rows first, so the
model returns logits of shape (rows, vocab). Architectures whose head we do not know fall back to the full forward
and select the rows afterwards (the reference the sparse path must match); so does nn.DataParallel, whose replicas
would share the hook's captures and see only their slice of the batch.

Learned projections (student width → teacher width, hf_distil.projections) are applied inside the student's
forward, in the hook that captures the hidden state, so that DDP, DeepSpeed and FSDP see them as part of the model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.utils import ModelOutput

from .collator import ROW_POSITIONS
from .families import encoder_layers, find_mlm_head, hidden_state_module, self_attention, unwrap

# The signals a term may read (Term.student_reads / Term.teacher_reads name fields of `Signals`); the last three are
# read at layers (hf_distil.terms.Reads).
SIGNALS = ("logits", "last_hidden_state", "hidden_states", "qk", "qkv")
LAYERED = ("hidden_states", "qk", "qkv")


@dataclass
class OutputWithProjections(ModelOutput):
    """The student's output inside `capture` when it has learned projections: what `capture` reads, plus the
    projected hidden states, so that DDP finds the projections' parameters among those the step used. (A ModelOutput
    subclass: DDP rebuilds outputs through their pytree registration, which takes declared fields only.)"""

    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    projected_hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass(frozen=True)
class CaptureSpec:
    """What to capture from one model's forward; the logits at the selected rows always come back."""

    last_hidden_state: bool = False
    hidden_states: tuple[int, ...] = ()  # hidden-state indices: 0 the embedding output, i + 1 the output of layer i
    qk: tuple[int, ...] = ()  # layers whose self-attention queries and keys are captured
    qkv: tuple[int, ...] = ()  # layers whose queries, keys and values are captured

    @classmethod
    def reading(cls, reads: Iterable) -> CaptureSpec:
        """The spec that captures every signal (at every layer) that one of `reads` (hf_distil.terms.Reads, one per
        term in use) names: the union."""
        names, layers = set(), {name: set() for name in LAYERED}
        for read in reads:
            names.update(read.signals)
            for name, indices in read.layers.items():
                layers[name].update(indices)
        unknown = names.difference(SIGNALS)
        if unknown:
            raise ValueError(f"Unknown signal(s) {sorted(unknown)}; hf_distil.signals captures {list(SIGNALS)}.")
        return cls(last_hidden_state="last_hidden_state" in names,
                   **{name: tuple(sorted(layers[name])) for name in LAYERED if name in names})

    @property
    def needs_layers(self) -> bool:
        return bool(self.hidden_states or self.qk or self.qkv)


@dataclass
class Signals:
    """What one forward of one model exposed to the loss terms."""

    logits: torch.Tensor  # (rows, classes): logits at the selected positions only (vocabulary or task labels)
    last_hidden_state: torch.Tensor | None = None  # (batch, length, hidden) when the spec asks for it
    # (batch, length, width) per spec.hidden_states index (the student's through its projection)
    hidden_states: dict[int, torch.Tensor] = field(default_factory=dict)
    # (queries, keys), each (batch, length, heads · head size), per spec.qk layer
    qk: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    # (queries, keys, values), each (batch, length, width), per spec.qkv layer
    qkv: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    heads: int = 0  # the attention head count of those layers
    # Per spec.qk / spec.qkv layer, its window (keys within ±window of each query) or None (all keys).
    windows: dict[int, int | None] = field(default_factory=dict)
    # the model's own logits output (every position), when the heads ran dense (capture(..., sparse=False))
    all_logits: torch.Tensor | None = None


# batch keys the models are not called with: the targets, the stored special-token flags, the collator's row positions
NOT_MODEL_INPUTS = ("labels", "special_tokens_mask", ROW_POSITIONS)


def _model_inputs(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k not in NOT_MODEL_INPUTS}


def _output_tensor(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _layer_hooks(model: nn.Module, spec: CaptureSpec, captured: dict, projections, hooks: list) -> None:
    """Register (into `hooks`, which the caller removes, also when this raises part-way) forward hooks that put the
    spec's hidden states (projected where `projections` has an entry) and q/k/v outputs into `captured`, keyed
    ("state", i) / ("q" | "k" | "v", layer)."""
    layers = encoder_layers(model)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: hf_distil.families does not know where its encoder layers are.")

    # The hooks only keep references: any computation on what they capture (projections, rotations) happens after
    # the layers ran, so that gradient checkpointing recomputes the same operations the forward saved tensors for.
    def keep(key):
        def hook(module, args, output):
            captured[key] = _output_tensor(output)
        return hook

    projected = []
    for index in spec.hidden_states:
        module = hidden_state_module(model, index)
        hooks.append(module.register_forward_hook(keep(("state", index))))
        if projections is not None and str(index) in projections:
            projected.append(index)
    if projected:
        # Inside the student's forward (DDP, DeepSpeed and FSDP see the projections as part of the model), once its
        # layers ran. DDP (find_unused_parameters) looks for the parameters a step uses in the model's outputs: the
        # projections are reached only through what the hooks captured, so the output carries those tensors too.
        def project_and_expose(module, args, output):
            for index in projected:
                project = projections[str(index)]
                # The projections are float32; a half-precision student outside autocast feeds them its own dtype.
                captured[("state", index)] = project(captured[("state", index)].to(project.weight.dtype))
            return OutputWithProjections(logits=output.logits, hidden_states=output.get("hidden_states"),
                                         projected_hidden_states=tuple(captured[("state", i)] for i in projected))

        hooks.append(unwrap(model).register_forward_hook(project_and_expose))
    for layer in sorted(set(spec.qk) | set(spec.qkv)):
        attention = self_attention(model, layer)
        if attention is None:
            raise ValueError(f"{type(model).__name__}: hf_distil.families does not know layer {layer}'s "
                             "self-attention.")
        captured["heads"] = attention.num_heads
        captured[("window", layer)] = attention.window
        _qkv_hooks(attention, layer, "qkv" if layer in spec.qkv else "qk", captured, hooks)


def _qkv_hooks(attention, layer: int, parts: str, captured: dict, hooks: list) -> None:
    """Hooks that keep layer `layer`'s query / key / value projections' outputs named in `parts` in `captured` as
    ("q" | "k" | "v", layer), or one fused [q | k | v] output as ("qkv", layer), and where the family rotates queries
    and keys (ModernBERT) the (cos, sin) its attention receives as ("rotary", layer): `_qkv` splits and rotates them."""
    if len(attention.projections) == 3:
        def keep(part):
            def hook(module, args, output):
                # The first call is the token states; DeBERTa's attention then projects its relative-position
                # embeddings with the same modules (share_att_key), which must not replace them.
                captured.setdefault((part, layer), _output_tensor(output))
            return hook

        for part, module in zip("qkv", attention.projections):
            if part in parts:
                hooks.append(module.register_forward_hook(keep(part)))
    else:
        def keep_fused(module, args, output):
            captured[("qkv", layer)] = _output_tensor(output)
        hooks.append(attention.projections[0].register_forward_hook(keep_fused))
    if attention.rotary:
        def keep_rotary(module, args, kwargs):
            captured[("rotary", layer)] = kwargs["position_embeddings"]
        hooks.append(attention.module.register_forward_pre_hook(keep_rotary, with_kwargs=True))


def _qkv(captured: dict, layer: int, heads: int, parts: str) -> tuple[torch.Tensor, ...]:
    """Layer `layer`'s captured queries / keys / values (`parts`), each (batch, length, heads · head size): split from
    a fused projection, and queries and keys rotated where the layer rotates them, so that softmax(q·k/√d) is the
    layer's attention. Done once per layer: the result replaces what the hooks kept."""
    if ("qkv", layer) in captured:
        for part, tensor in zip("qkv", captured.pop(("qkv", layer)).chunk(3, dim=-1)):
            captured[(part, layer)] = tensor
    if ("rotary", layer) in captured:
        cos, sin = captured.pop(("rotary", layer))
        for part in "qk":
            captured[(part, layer)] = rotary(captured[(part, layer)], cos, sin, heads)
    return tuple(captured[(part, layer)] for part in parts)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int) -> torch.Tensor:
    """RoPE as transformers applies it (rotate-half convention, in float32): x (batch, length, heads · size), cos
    and sin (batch or 1, length, size); returns x's shape and dtype."""
    batch, length, width = x.shape
    heads_x = x.float().reshape(batch, length, heads, width // heads)
    cos, sin = cos.float()[:, :, None, :], sin.float()[:, :, None, :]
    half = heads_x.shape[-1] // 2
    rotated = torch.cat((-heads_x[..., half:], heads_x[..., :half]), dim=-1)
    return (heads_x * cos + rotated * sin).reshape(batch, length, width).to(x.dtype)


def _signals(logits: torch.Tensor, spec: CaptureSpec, captured: dict) -> Signals:
    return Signals(
        logits,
        captured.get("last_hidden_state"),
        hidden_states={i: captured[("state", i)] for i in spec.hidden_states},
        qk={i: _qkv(captured, i, captured["heads"], "qk") for i in spec.qk},
        qkv={i: _qkv(captured, i, captured["heads"], "qkv") for i in spec.qkv},
        heads=captured.get("heads", 0),
        windows={i: captured[("window", i)] for i in (*spec.qk, *spec.qkv)},
    )


def capture(model: nn.Module, inputs: dict, positions: torch.Tensor, spec: CaptureSpec,
            sparse: bool = True, projections: nn.ModuleDict | None = None) -> Signals:
    """Forward `model` once on `inputs`; the logits at `positions` and what `spec` asks for.

    positions:   (rows,) long, flat indices into batch × length (the rows whose logits the terms read; a sequence
                 classifier's rows are its examples, each at its first position: hf_distil.objective.label_grid)
    projections: the student's learned projections, by hidden-state index as a string (hf_distil.projections)
    With `sparse=False`, for nn.DataParallel, or for an unknown architecture, the full logits are computed and the
    rows selected afterwards.
    """
    sparse = sparse and not isinstance(model, nn.DataParallel)
    head = find_mlm_head(model) if sparse else None
    captured: dict = {}
    hooks: list = []
    try:
        if spec.needs_layers:
            _layer_hooks(model, spec, captured, projections, hooks)
        if head is None:
            out = model(**_model_inputs(inputs), output_hidden_states=spec.last_hidden_state, return_dict=True)
            if out.logits.dim() == 2:  # a sequence classifier: one row per example, at the example's first position
                logits = out.logits.index_select(0, positions // inputs["input_ids"].shape[1])
            else:
                logits = out.logits.reshape(-1, out.logits.shape[-1]).index_select(0, positions)
            if spec.last_hidden_state:
                captured["last_hidden_state"] = out.hidden_states[-1]
            signals = _signals(logits, spec, captured)
            signals.all_logits = out.logits
            return signals

        def gather_rows(module, args, kwargs):
            hidden = args[0]
            if spec.last_hidden_state:
                captured["last_hidden_state"] = hidden
            rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
            return (rows, *args[1:]), kwargs

        hooks.append(head.register_forward_pre_hook(gather_rows, with_kwargs=True))
        out = model(**_model_inputs(inputs), return_dict=True)
        return _signals(out.logits, spec, captured)
    finally:
        for hook in hooks:
            hook.remove()
