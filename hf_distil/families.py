"""Where the parts a loss term reads live inside a transformers model, per architecture family: ONE table.

hf_distil.signals hooks these modules to capture what the terms need in one forward, and hf_distil.student copies
layers by the same table; this module only finds them, looking through the wrappers that training adds (DDP,
DeepSpeed, FSDP-1, peft): the MLM head, the embedding module (its output is hidden state 0), the encoder layers
(layer i's output is hidden state i + 1) and, inside a layer, the query / key / value projections of its
self-attention with their head count, and what else shapes its attention (rotary positions, a local window).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn


@dataclass(frozen=True)
class Family:
    """Where one architecture family keeps its parts. Paths are attribute paths; a tuple lists alternatives, the
    first that exists wins."""

    name: str  # as the card and the error messages say it
    layers: str  # the ModuleList of encoder layers, from the base model (`model.<base_model_prefix>`)
    embeddings: tuple[str, ...]  # from the base model: the module whose output enters layer 0 (hidden state 0)
    head: tuple[str, ...]  # from the masked-LM model: the first module the last hidden state enters (logits after)
    attention: str  # from one layer: its self-attention module
    qkv: tuple[str, ...]  # in that module: the query, key, value projections; or one fused projection (q | k | v)
    heads_attribute: str | None = "num_attention_heads"  # the attention module's head count; None: the config's
    # Config names where the family departs from BERT's (`intermediate_size` ...).
    config_names: dict = field(default_factory=dict)
    # Each layer's attention kind is `config.layer_types[i]` ("full_attention" / "sliding_attention" over
    # ±config.sliding_window positions) (ModernBERT).
    layer_types: bool = False
    # Queries and keys are rotated by the `position_embeddings` (cos, sin) the attention module receives (RoPE).
    rotary: bool = False
    # Parameter names (inside a layer) that layer 0 does not have, so a copy into or out of position 0 drops /
    # leaves them (ModernBERT's layer 0 has no attention pre-norm: the embeddings' norm precedes it).
    not_in_first_layer: tuple[str, ...] = ()
    # Whether softmax(q·k/√d) over the unpadded keys is the layer's attention, given the config (None: always), and
    # what to say when it is not: DeBERTa adds relative-position terms to the scores when `relative_attention` is on.
    plain_attention: object = None  # callable(config) -> bool
    not_plain: str = ""

    def attention_is_plain(self, config) -> bool:
        return self.plain_attention is None or bool(self.plain_attention(config))


_BERT = Family("BERT", layers="encoder.layer", embeddings=("embeddings",), head=("cls",), attention="attention.self",
               qkv=("query", "key", "value"))
_ROBERTA = Family("RoBERTa", layers="encoder.layer", embeddings=("embeddings",), head=("lm_head",),
                  attention="attention.self", qkv=("query", "key", "value"))
FAMILIES = {
    "bert": _BERT,
    "roberta": _ROBERTA,
    "xlm-roberta": _ROBERTA,
    "camembert": _ROBERTA,
    "deberta-v2": Family("DeBERTa-v2/v3", layers="encoder.layer", embeddings=("embeddings",),
                         head=("cls", "lm_predictions"), attention="attention.self",
                         qkv=("query_proj", "key_proj", "value_proj"),
                         # pos_att_type also divides the scores by √(d · (1 + its entries)), relative or not
                         plain_attention=lambda config: not (getattr(config, "relative_attention", False)
                                                             or getattr(config, "pos_att_type", None)),
                         not_plain="adds relative-position terms to its attention scores (or scales them by its "
                                   "pos_att_type)"),
    # With embedding_size < hidden_size, ELECTRA projects the embeddings up before layer 0.
    "electra": Family("ELECTRA", layers="encoder.layer", embeddings=("embeddings_project", "embeddings"),
                      head=("generator_predictions",), attention="attention.self", qkv=("query", "key", "value")),
    "distilbert": Family("DistilBERT", layers="transformer.layer", embeddings=("embeddings",),
                         head=("vocab_transform",), attention="attention", qkv=("q_lin", "k_lin", "v_lin"),
                         heads_attribute="n_heads", config_names={"intermediate_size": "hidden_dim"}),
    "modernbert": Family("ModernBERT", layers="layers", embeddings=("embeddings",), head=("head",),
                         attention="attn", qkv=("Wqkv",), heads_attribute=None, layer_types=True, rotary=True,
                         not_in_first_layer=("attn_norm.",)),
}
# A model_type not in the table with a BERT-style layout (`<base>.encoder.layer`, q/k/v in `attention.self`), e.g.
# roberta-prelayernorm or data2vec-text: its parts are found, but whether its attention is softmax(q·k/√d) is not
# known (ConvBERT and BigBird have the layout and other attention), so the attention term is refused for it.
_BERT_LIKE = Family("BERT-like", layers="encoder.layer", embeddings=("embeddings",), head=("cls", "lm_head"),
                    attention="attention.self", qkv=("query", "key", "value"), plain_attention=lambda config: False,
                    not_plain="is not in hf_distil's family table, so whether softmax(q·k/√d) is its attention is not "
                              "known")


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP / DeepSpeed / FSDP-1 wrappers, torch.compile's and peft's PeftModel."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "get_base_model") and callable(model.get_base_model):
            inner = model.get_base_model()
            if inner is model:
                return model
            model = inner
        else:
            return model


def _attribute_path(root, path: str):
    for part in path.split("."):
        root = getattr(root, part, None)
        if root is None:
            return None
    return root


def _base(model: nn.Module) -> nn.Module:
    inner = unwrap(model)
    return getattr(inner, getattr(inner, "base_model_prefix", ""), None) or inner


def family_of(model: nn.Module) -> Family | None:
    """The model's family: by `config.model_type`, else BERT-like when it has BERT's layout; None otherwise."""
    inner = unwrap(model)
    family = FAMILIES.get(getattr(getattr(inner, "config", None), "model_type", None))
    if family is not None:
        return family
    return _BERT_LIKE if isinstance(_attribute_path(_base(inner), _BERT_LIKE.layers), nn.ModuleList) else None


def known_families() -> str:
    names = list(dict.fromkeys(f.name for f in FAMILIES.values()))
    return ", ".join(names[:-1]) + " and " + names[-1]


def config_value(config, name: str):
    """A config setting by its BERT name (`intermediate_size`), in the family's own spelling where it differs."""
    family = FAMILIES.get(getattr(config, "model_type", None))
    return getattr(config, family.config_names.get(name, name) if family else name, None)


def set_config_value(config, name: str, value) -> None:
    family = FAMILIES.get(getattr(config, "model_type", None))
    setattr(config, family.config_names.get(name, name) if family else name, value)


# What a model's head predicts, from its transformers class name (`BertForTokenClassification` → ...): a masked LM
# predicts a token per position, a token classifier a label per token, a sequence classifier a label per example.
MASKED_LM = "masked-lm"
TOKEN_CLASSIFICATION = "token-classification"
SEQUENCE_CLASSIFICATION = "sequence-classification"
TASK_HEADS = {"ForMaskedLM": MASKED_LM, "ForTokenClassification": TOKEN_CLASSIFICATION,
              "ForSequenceClassification": SEQUENCE_CLASSIFICATION}


def task_of_classes(names) -> str | None:
    """The task the first of these transformers class names (e.g. a config's `architectures`) predicts, from its
    suffix; None when none names one."""
    return next((task for name in names or () for suffix, task in TASK_HEADS.items()
                 if isinstance(name, str) and name.endswith(suffix)), None)


def model_task(model: nn.Module) -> str | None:
    """MASKED_LM, TOKEN_CLASSIFICATION or SEQUENCE_CLASSIFICATION, from the class of the model inside any wrapper;
    None for any other class (a bare encoder, a causal LM, ...)."""
    return task_of_classes([type(unwrap(model)).__name__])


def find_mlm_head(model: nn.Module) -> nn.Module | None:
    """The first module of the masked-LM head (what maps the last hidden state, row by row, towards vocabulary
    logits), or None when unknown (and for a task model, whose classifier is small enough to apply everywhere)."""
    inner = unwrap(model)
    family = family_of(inner)
    if model_task(inner) not in (MASKED_LM, None) or family is None:
        return None
    return next((h for h in (getattr(inner, name, None) for name in family.head) if isinstance(h, nn.Module)), None)


def encoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The model's list of transformer layers (per its family), or None when unknown."""
    family = family_of(model)
    layers = _attribute_path(_base(model), family.layers) if family else None
    return layers if isinstance(layers, nn.ModuleList) else None


def layer_prefix(model: nn.Module) -> str | None:
    """The state-dict prefix of the layer list (`bert.encoder.layer.`), or None when unknown."""
    family = family_of(model)
    if family is None:
        return None
    inner = unwrap(model)
    prefix = getattr(inner, "base_model_prefix", "")
    return f"{prefix}.{family.layers}." if prefix and hasattr(inner, prefix) else f"{family.layers}."


def embedding_module(model: nn.Module) -> nn.Module | None:
    """The module whose output is hidden state 0 (what enters layer 0), or None when unknown."""
    family = family_of(model)
    base = _base(model)
    modules = [_attribute_path(base, path) for path in (family.embeddings if family else ())]
    return next((m for m in modules if isinstance(m, nn.Module)), None)


def hidden_state_module(model: nn.Module, index: int) -> nn.Module | None:
    """The module whose output is hidden state `index` (0: what enters layer 0; i: what layer i - 1 passes on):
    DeBERTa-v2 with conv_kernel_size > 0 passes layer 0's output through its encoder's ConvLayer first."""
    if index == 0:
        return embedding_module(model)
    if index == 1:
        conv = getattr(getattr(_base(model), "encoder", None), "conv", None)
        if isinstance(conv, nn.Module) and family_of(model) is FAMILIES["deberta-v2"]:
            return conv
    layers = encoder_layers(model)
    return layers[index - 1] if layers is not None else None


LOCAL = "local"
GLOBAL = "global"


def attention_kinds(config) -> list[str] | None:
    """Per layer, GLOBAL or LOCAL (a sliding window) attention, for a family whose layers differ; None otherwise."""
    family = FAMILIES.get(getattr(config, "model_type", None))
    types = getattr(config, "layer_types", None) if family is not None and family.layer_types else None
    return [LOCAL if kind == "sliding_attention" else GLOBAL for kind in types] if types else None


@dataclass(frozen=True)
class SelfAttention:
    """The self-attention of one layer: its query/key/value projections, Linear(hidden → heads · head size) each,
    or one fused projection whose output is [q | k | v]; its head count; whether queries and keys are rotated by
    the `position_embeddings` (cos, sin) the attention module receives; and its window (keys within ±window of the
    query; None: all keys)."""

    module: nn.Module
    projections: tuple[nn.Module, ...]
    num_heads: int
    rotary: bool = False
    window: int | None = None


def self_attention(model: nn.Module, layer: int) -> SelfAttention | None:
    """Layer `layer`'s self-attention parts, or None when unknown."""
    family, layers = family_of(model), encoder_layers(model)
    if family is None or layers is None:
        return None
    module = _attribute_path(layers[layer], family.attention)
    if module is None:
        return None
    parts = tuple(getattr(module, name, None) for name in family.qkv)
    config = unwrap(model).config
    heads = getattr(module if family.heads_attribute else config, family.heads_attribute or "num_attention_heads",
                    None)
    if not all(isinstance(p, nn.Module) for p in parts) or not isinstance(heads, int):
        return None
    kinds = attention_kinds(config)
    window = config.sliding_window if kinds and kinds[layer] == LOCAL else None
    return SelfAttention(module, parts, heads, rotary=family.rotary, window=window)


def attention_is_plain(model: nn.Module) -> bool:
    """Whether the family's attention scores are q·k/√d (after rotation, within the window) and nothing else."""
    family = family_of(model)
    return family is not None and family.attention_is_plain(unwrap(model).config)
