"""Which student layer learns from which teacher layer: `layer_map`, resolved once for a student/teacher pair.

Layers count from 0. `layer_map="uniform"` pairs student layer i with teacher layer (i + 1) · L_t // L_s − 1
(TinyBERT's mapping: for 4 → 12 layers, 0:2, 1:5, 2:8, 3:11); an explicit map such as "0:2,1:5,2:8,3:11" names
student:teacher pairs (any subset of the student's layers, each once).

A term that `uses_layer_map` compares the pairs (attention maps), or the hidden states they give (`hidden_pairs`:
hidden state 0 is the embedding output and hidden state i + 1 the output of layer i, so the pairs (0, 0) and
(s + 1, t + 1) for each layer pair (s, t) — for 4 → 12 layers, teacher hidden states 0, 3, 6, 9, 12). A term may
choose its own layers instead (`Term.plan`, kept in `LayerPlan.term_layers`). `plan_layers` resolves the plan of the
weighted layer terms once per student/teacher and runs their checks.
"""

from __future__ import annotations

from .errors import ArgumentError, ModelMismatchError
from .families import encoder_layers, known_families, unwrap
from .signals import LAYERED
from .terms import registered, weight_of
from .terms.base import LayerPlan

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


def layer_pairs(spec, student_layers: int, teacher_layers: int) -> tuple[tuple[int, int], ...]:
    """The (student, teacher) pairs of `layer_map` for these depths; layers out of range name themselves."""
    parsed = parse_layer_map(spec)
    if parsed == UNIFORM:
        if student_layers > teacher_layers:
            raise ModelMismatchError(
                f"layer_map='uniform' maps each student layer to a deeper teacher layer, but the student has "
                f"{student_layers} layers and the teacher {teacher_layers}: give an explicit layer_map."
            )
        return tuple((i, (i + 1) * teacher_layers // student_layers - 1) for i in range(student_layers))
    bad_student = [f"{s}:{t}" for s, t in parsed if s >= student_layers]
    if bad_student:
        raise ModelMismatchError(
            f"layer_map {', '.join(bad_student)}: the student has layers 0..{student_layers - 1} "
            f"({student_layers} layers)."
        )
    bad_teacher = [f"{s}:{t}" for s, t in parsed if t >= teacher_layers]
    if bad_teacher:
        raise ModelMismatchError(
            f"layer_map {', '.join(bad_teacher)}: the teacher has layers 0..{teacher_layers - 1} "
            f"({teacher_layers} layers)."
        )
    return parsed


def _layer_count(model, side: str, terms) -> int:
    layers = encoder_layers(model)
    if layers is None:
        weights = [t.weight for t in terms]
        raise ModelMismatchError(
            f"The {side} ({type(unwrap(model)).__name__}) keeps its layers where hf_distil does not know them "
            f"(it knows {known_families()}), so the {', '.join(t.name for t in terms)} term(s) cannot read them: "
            f"set {' and '.join(weights)} to 0."
        )
    return len(layers)


def reads_layers(term) -> bool:
    return any(name in LAYERED for name in (*term.student_reads, *term.teacher_reads))


def layer_terms(args) -> tuple:
    """The weighted terms that read layers (they need a LayerPlan)."""
    return tuple(t for t in registered() if reads_layers(t) and weight_of(args, t.name) > 0)


def plan_layers_wanted(args) -> bool:
    """Whether any weighted term compares layers."""
    return bool(layer_terms(args))


def plan_layers(student, teacher, args) -> LayerPlan | None:
    """The layer plan of a run whose layer terms are weighted (None when none is), after checking that each of them
    can compare these two models: one line naming the problem and the fix otherwise."""
    terms = layer_terms(args)
    if not terms:
        return None
    s_depth, t_depth = _layer_count(student, "student", terms), _layer_count(teacher, "teacher", terms)
    pairs = layer_pairs(args.layer_map, s_depth, t_depth) if any(t.uses_layer_map for t in terms) else ()
    plan = LayerPlan(pairs, {t.name: t.plan(args, s_depth, t_depth) for t in terms})
    reentrant = (args.gradient_checkpointing_kwargs or {}).get("use_reentrant", False)
    if args.gradient_checkpointing and reentrant:
        raise ModelMismatchError(
            "gradient_checkpointing with use_reentrant=True runs each layer's forward without gradients, so the "
            f"{', '.join(t.name for t in terms)} term(s) would capture tensors that cannot train the student: drop "
            "use_reentrant from gradient_checkpointing_kwargs (the default is use_reentrant=False)."
        )
    for term in terms:
        term.check(student, teacher, args, plan)
    return plan
