"""Which student layer learns from which teacher layer: `layer_map`, resolved once for a student/teacher pair.

Layers count from 0. `layer_map="uniform"` pairs student layer i with teacher layer (i + 1) · L_t // L_s − 1
(TinyBERT's mapping: for 4 → 12 layers, 0:2, 1:5, 2:8, 3:11); an explicit map such as "0:2,1:5,2:8,3:11" names
student:teacher pairs (any subset of the student's layers, each once).

The attention term compares the attention maps of each pair. The intermediate term compares hidden states, where
hidden state 0 is the embedding output and hidden state i + 1 the output of layer i: so the pairs (0, 0) and
(s + 1, t + 1) for each layer pair (s, t) — for 4 → 12 layers, teacher hidden states 0, 3, 6, 9, 12. The relation
term (MiniLM v2) pairs the student's last layer with `relation_teacher_layer` (−1: the teacher's last).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from .errors import ArgumentError, ModelMismatchError
from .heads import (
    GLOBAL,
    attention_is_plain,
    attention_kinds,
    embedding_module,
    encoder_layers,
    family_of,
    known_families,
    self_attention,
    unwrap,
)

UNIFORM = "uniform"


def parse_layer_map(spec) -> str | tuple[tuple[int, int], ...]:
    """"uniform", or the explicit (student, teacher) pairs of "s:t,s:t" (or a YAML list / mapping of them)."""
    if isinstance(spec, (list, tuple)) and any(isinstance(item, int) for item in spec):
        raise ArgumentError(
            f"layer_map={spec!r} holds a number where a student:teacher pair belongs (YAML reads an unquoted 3:11 as "
            "191): quote the pairs, e.g. layer_map: \"0:2,1:5,2:8,3:11\"."
        )
    if isinstance(spec, dict):
        items = [f"{s}:{t}" for s, t in spec.items()]
    elif isinstance(spec, (list, tuple)):
        items = [str(item) for item in spec]
    else:
        text = str(spec).strip()
        if text == UNIFORM:
            return UNIFORM
        if text.isdigit():
            raise ArgumentError(
                f"layer_map={spec!r} is a number where student:teacher pairs belong (YAML reads an unquoted 3:11 as "
                "191): quote the pairs, e.g. layer_map: \"0:2,1:5,2:8,3:11\"."
            )
        items = [item for item in text.split(",") if item.strip()]
    pairs = []
    for item in items:
        parts = item.split(":")
        try:
            student, teacher = (int(p) for p in parts)
        except ValueError:
            raise ArgumentError(
                f"layer_map={spec!r}: {item.strip()!r} is not student:teacher; use 'uniform' or pairs of layer "
                "indices counted from 0, e.g. '0:2,1:5,2:8,3:11'."
            ) from None
        if student < 0 or teacher < 0:
            raise ArgumentError(f"layer_map={spec!r}: {item.strip()!r} has a negative layer; layers count from 0.")
        pairs.append((student, teacher))
    if not pairs:
        raise ArgumentError(f"layer_map={spec!r} names no layers; use 'uniform' or e.g. '0:2,1:5,2:8,3:11'.")
    students = [s for s, _ in pairs]
    repeated = sorted({s for s in students if students.count(s) > 1})
    if repeated:
        raise ArgumentError(f"layer_map={spec!r} maps student layer(s) {repeated} more than once; name each once.")
    return tuple(sorted(pairs))


def canonical_layer_map(spec) -> str:
    """The one string form of a layer map (what the arguments keep and the card shows)."""
    parsed = parse_layer_map(spec)
    return parsed if parsed == UNIFORM else ",".join(f"{s}:{t}" for s, t in parsed)


@dataclass(frozen=True)
class LayerPlan:
    """The layers each side exposes to the terms, resolved for one student and one teacher."""

    layer_pairs: tuple[tuple[int, int], ...]  # (student layer, teacher layer): attention maps
    relation_pair: tuple[int, int] | None  # (student's last layer, the teacher's relation layer); None: not used

    @property
    def hidden_pairs(self) -> tuple[tuple[int, int], ...]:
        """(student hidden state, teacher hidden state): the embedding outputs, then each mapped layer's output."""
        return ((0, 0),) + tuple((s + 1, t + 1) for s, t in self.layer_pairs)


def resolve_layer_plan(spec, relation_teacher_layer: int, student_layers: int, teacher_layers: int,
                       pairs_used: bool = True, relation_used: bool = True) -> LayerPlan:
    """The pairs of `layer_map` and of the relation term for these depths; layers out of range name themselves.

    A part no active term uses (`pairs_used`: the attention / intermediate terms; `relation_used`) is not checked and
    comes back empty / None."""
    pairs = _layer_pairs(spec, student_layers, teacher_layers) if pairs_used else ()
    if not relation_used:
        return LayerPlan(pairs, None)
    relation = relation_teacher_layer if relation_teacher_layer >= 0 else teacher_layers + relation_teacher_layer
    if not 0 <= relation < teacher_layers:
        raise ModelMismatchError(
            f"relation_teacher_layer={relation_teacher_layer}: the teacher has layers 0..{teacher_layers - 1} "
            "(−1 is its last)."
        )
    return LayerPlan(pairs, (student_layers - 1, relation))


def _layer_pairs(spec, student_layers: int, teacher_layers: int) -> tuple[tuple[int, int], ...]:
    parsed = parse_layer_map(spec)
    if parsed == UNIFORM:
        if student_layers > teacher_layers:
            raise ModelMismatchError(
                f"layer_map='uniform' maps each student layer to a deeper teacher layer, but the student has "
                f"{student_layers} layers and the teacher {teacher_layers}: give an explicit layer_map."
            )
        pairs = tuple((i, (i + 1) * teacher_layers // student_layers - 1) for i in range(student_layers))
    else:
        pairs = parsed
        bad_student = [f"{s}:{t}" for s, t in pairs if s >= student_layers]
        if bad_student:
            raise ModelMismatchError(
                f"layer_map {', '.join(bad_student)}: the student has layers 0..{student_layers - 1} "
                f"({student_layers} layers)."
            )
        bad_teacher = [f"{s}:{t}" for s, t in pairs if t >= teacher_layers]
        if bad_teacher:
            raise ModelMismatchError(
                f"layer_map {', '.join(bad_teacher)}: the teacher has layers 0..{teacher_layers - 1} "
                f"({teacher_layers} layers)."
            )
    return pairs


def _layer_count(model, side: str) -> int:
    layers = encoder_layers(model)
    if layers is None:
        raise ModelMismatchError(
            f"The {side} ({type(unwrap(model)).__name__}) keeps its layers where hf_distil does not know them "
            f"(it knows {known_families()}), so the attention, intermediate and relation terms cannot read them: set "
            "alpha_attention, alpha_intermediate and alpha_relation to 0."
        )
    return len(layers)


def _check_attention_kinds(plan: LayerPlan, s_cfg, t_cfg) -> None:
    """Global and local (sliding-window) attention layers spread their attention over different keys: comparing the
    maps of a local layer with a global one would push the student towards keys it cannot see."""
    s_kinds, t_kinds = attention_kinds(s_cfg), attention_kinds(t_cfg)
    if s_kinds is None and t_kinds is None:
        return
    # A family without local layers attends globally in every layer.
    s_kinds = s_kinds or [GLOBAL] * s_cfg.num_hidden_layers
    t_kinds = t_kinds or [GLOBAL] * t_cfg.num_hidden_layers
    mixed = [f"{s}:{t} ({s_kinds[s]}↔{t_kinds[t]})" for s, t in plan.layer_pairs if s_kinds[s] != t_kinds[t]]
    if mixed:
        copied = getattr(s_cfg, "distil_teacher_layers", None)
        if copied and len(copied) == len(s_kinds) and all(s_kinds[i] == t_kinds[t] for i, t in enumerate(copied)):
            hint = f', e.g. the layers the student was copied from: layer_map "{_pairs_text(enumerate(copied))}"'
        else:
            nearest = _nearest_same_kind(s_kinds, t_kinds)
            hint = f', e.g. layer_map "{_pairs_text(enumerate(nearest))}"' if nearest else ""
        raise ModelMismatchError(
            f"layer_map pairs attention layers of different kinds ({', '.join(mixed)}): the attention term compares "
            f"global with global and local with local layers; give a layer_map of same-kind pairs{hint}."
        )


def _pairs_text(pairs) -> str:
    return ",".join(f"{s}:{t}" for s, t in pairs)


def _nearest_same_kind(s_kinds: list[str], t_kinds: list[str]) -> list[int] | None:
    """For each student layer, the teacher layer of its kind nearest to its uniform partner (the deeper on a tie);
    None when the teacher has no layer of some student layer's kind."""
    chosen = []
    for i, kind in enumerate(s_kinds):
        target = (i + 1) * len(t_kinds) // len(s_kinds) - 1
        same = [t for t, other in enumerate(t_kinds) if other == kind]
        if not same:
            return None
        chosen.append(min(same, key=lambda t: (abs(t - target), -t)))
    return chosen


def plan_layers_wanted(args) -> bool:
    """Whether any term that compares layers (attention, intermediate, relation) is on."""
    return args.alpha_attention > 0 or args.alpha_intermediate > 0 or args.alpha_relation > 0


def plan_layers(student, teacher, args) -> LayerPlan | None:
    """The layer plan of a run whose attention / intermediate / relation terms are on (None when all are off), after
    checking that each term can compare these two models: one line naming the problem and the fix otherwise."""
    if not plan_layers_wanted(args):
        return None
    plan = resolve_layer_plan(args.layer_map, args.relation_teacher_layer, _layer_count(student, "student"),
                              _layer_count(teacher, "teacher"),
                              pairs_used=args.alpha_attention > 0 or args.alpha_intermediate > 0,
                              relation_used=args.alpha_relation > 0)
    s_cfg, t_cfg = unwrap(student).config, unwrap(teacher).config
    reentrant = (args.gradient_checkpointing_kwargs or {}).get("use_reentrant", False)
    if args.gradient_checkpointing and reentrant:
        raise ModelMismatchError(
            "gradient_checkpointing with use_reentrant=True runs each layer's forward without gradients, so the "
            "attention / intermediate / relation terms would capture tensors that cannot train the student: drop "
            "use_reentrant from gradient_checkpointing_kwargs (the default is use_reentrant=False)."
        )
    needs_attention = {"student": [s for s, _ in plan.layer_pairs] if args.alpha_attention > 0 else [],
                       "teacher": [t for _, t in plan.layer_pairs] if args.alpha_attention > 0 else []}
    if plan.relation_pair is not None:
        needs_attention["student"].append(plan.relation_pair[0])
        needs_attention["teacher"].append(plan.relation_pair[1])
    for model, side in ((student, "student"), (teacher, "teacher")):
        missing = sorted({i for i in needs_attention[side] if self_attention(model, i) is None})
        if missing:
            raise ModelMismatchError(
                f"The {side}'s layer(s) {missing} have no self-attention query/key/value projections where hf_distil "
                "looks for them: set alpha_attention and alpha_relation to 0."
            )
        if args.alpha_attention > 0 and not attention_is_plain(model):
            family = family_of(model)
            raise ModelMismatchError(
                f"The {side} ({family.name}, model_type {getattr(unwrap(model).config, 'model_type', None)!r}) "
                f"{family.not_plain}, so the attention term cannot compare its attention maps: set alpha_attention "
                "to 0 and use alpha_relation (MiniLM v2) or alpha_intermediate."
            )
    if args.alpha_attention > 0:
        _check_attention_kinds(plan, s_cfg, t_cfg)
    if args.alpha_intermediate > 0:
        for model, cfg, side in ((student, s_cfg, "student"), (teacher, t_cfg, "teacher")):
            module = embedding_module(model)
            # Narrower embeddings count only when a projection to the layers' width is what hf_distil hooks (ELECTRA)
            embedding = getattr(cfg, "embedding_size", None) or cfg.hidden_size
            if module is None or (embedding != cfg.hidden_size and not isinstance(module, nn.Linear)):
                raise ModelMismatchError(
                    f"The intermediate term compares the embedding outputs (hidden state 0), but the {side}'s are "
                    f"{embedding} wide, not its hidden size {cfg.hidden_size}, or not where hf_distil looks: set "
                    "alpha_intermediate to 0 for this model."
                )
    if args.alpha_attention > 0 and s_cfg.num_attention_heads != t_cfg.num_attention_heads:
        raise ModelMismatchError(
            f"alpha_attention > 0 compares attention maps head by head, but the student's layers have "
            f"{s_cfg.num_attention_heads} attention head(s) and the teacher's {t_cfg.num_attention_heads}: build the "
            f"student with num_attention_heads={t_cfg.num_attention_heads}, or use alpha_relation (MiniLM v2), which "
            "frees the head count."
        )
    if args.alpha_intermediate > 0 and args.intermediate_loss == "cosine" and s_cfg.hidden_size != t_cfg.hidden_size:
        raise ModelMismatchError(
            f"intermediate_loss='cosine' needs equal widths, but the student is {s_cfg.hidden_size} wide and the "
            f"teacher {t_cfg.hidden_size}: use intermediate_loss='mse' (through a learned projection)."
        )
    if args.alpha_relation > 0:
        bad = [f"the {side}'s width {width}" for side, width in (("student", s_cfg.hidden_size),
                                                                  ("teacher", t_cfg.hidden_size))
               if width % args.relation_heads]
        if bad:
            common = math.gcd(s_cfg.hidden_size, t_cfg.hidden_size)
            examples = [d for d in (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64) if common % d == 0][-3:]
            raise ModelMismatchError(
                f"relation_heads={args.relation_heads} does not divide {' and '.join(bad)}: choose a divisor of "
                f"{common}, e.g. {', '.join(map(str, examples))}."
            )
    return plan
