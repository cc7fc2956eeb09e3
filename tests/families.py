"""A tiny masked-LM config of each encoder family hf_distil knows (hf_distil.families.FAMILIES), sharing tests/tiny.py's
64-token vocabulary: [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4."""

import torch
import transformers as T

# Special-token ids of the tiny vocabulary, for the families whose defaults point elsewhere.
_IDS = dict(pad_token_id=0, bos_token_id=2, eos_token_id=3)


def _bert_like(config_class, dropout, **kw):
    return config_class(vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=80, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout, initializer_range=0.3, **kw)


def family_config(family: str, dropout: float = 0.0, layers: int = 4):
    """The tiny config of `family` (a key of FAMILY_CONFIGS) with `layers` layers."""
    if family == "bert":
        config = _bert_like(T.BertConfig, dropout, pad_token_id=0)
    elif family == "roberta":  # position ids start after padding_idx: the positions table is 2 longer
        config = _bert_like(T.RobertaConfig, dropout, **_IDS)
    elif family == "deberta-v2":  # DeBERTa-v3's attention: relative positions, content→position and back
        config = _bert_like(T.DebertaV2Config, dropout, pad_token_id=0, relative_attention=True,
                            pos_att_type=["p2c", "c2p"], position_buckets=16, max_relative_positions=-1,
                            position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True)
    elif family == "deberta-v2-absolute":  # DeBERTa-v2 without relative attention: softmax(q·k/√d) is its attention
        config = _bert_like(T.DebertaV2Config, dropout, pad_token_id=0, relative_attention=False, pos_att_type=[],
                            position_biased_input=True)
    elif family == "electra":  # the generator: embeddings narrower than the layers, projected up
        config = _bert_like(T.ElectraConfig, dropout, pad_token_id=0, embedding_size=16)
    elif family == "distilbert":
        config = T.DistilBertConfig(vocab_size=64, dim=32, n_layers=4, n_heads=2, hidden_dim=64,
                                    max_position_embeddings=80, dropout=dropout, attention_dropout=dropout,
                                    pad_token_id=0, initializer_range=0.3)
    elif family == "modernbert":  # a local window of ±4 tokens, so short test sequences see it bite
        config = T.ModernBertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                    intermediate_size=48, max_position_embeddings=80, local_attention=8,
                                    global_attn_every_n_layers=3, cls_token_id=2, sep_token_id=3,
                                    embedding_dropout=dropout, attention_dropout=dropout, mlp_dropout=dropout,
                                    initializer_range=0.3, **_IDS)
    else:
        raise KeyError(family)
    config.num_hidden_layers = layers
    if family == "modernbert":
        config.layer_types = ["full_attention" if i % 3 == 0 else "sliding_attention" for i in range(layers)]
    return config


FAMILY_CONFIGS = ("bert", "roberta", "deberta-v2", "electra", "distilbert", "modernbert")
# Families without token type ids: their tokenizers do not produce them (the pipeline passes what it gets).
NO_TOKEN_TYPES = ("distilbert", "modernbert", "roberta")


def family_teacher(family: str, seed: int = 0, dropout: float = 0.0, layers: int = 4):
    torch.manual_seed(seed)
    return T.AutoModelForMaskedLM.from_config(family_config(family, dropout, layers))


def family_tokenizer(folder, family: str):
    """tests/tiny.py's WordPiece tokenizer over the 64-token vocabulary, with the inputs `family` takes."""
    from tiny import VOCAB

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = T.BertTokenizerFast(vocab=str(folder / "vocab.txt"))
    if family in NO_TOKEN_TYPES:
        tokenizer.model_input_names = ["input_ids", "attention_mask"]
    return tokenizer
