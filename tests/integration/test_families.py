"""Every encoder family of hf_distil.families.FAMILIES, end to end: the table finds each part, create_student copies
the layers (ModernBERT keeps each copied layer's attention kind), the sparse head equals the dense path, the captured
attention equals the model's own, and create_student → DistillationTrainer → save → reload → fill-mask runs."""

import pytest
import torch
from families import FAMILY_CONFIGS, family_config, family_teacher, family_tokenizer
from tiny import args_for, batch_of, premasked_dataset
from transformers import AutoModelForMaskedLM, pipeline

from hf_distil import DistillationTrainer, create_student
from hf_distil.errors import ModelMismatchError
from hf_distil.families import (
    GLOBAL,
    LOCAL,
    attention_is_plain,
    attention_kinds,
    embedding_module,
    encoder_layers,
    family_of,
    find_mlm_head,
    self_attention,
)
from hf_distil.losses import scaled_dot_log_probs
from hf_distil.signals import CaptureSpec, capture

# The layer terms that apply to each family: DeBERTa-v3 adds relative-position scores to q·k, so its attention maps
# are not softmax(q·k/√d) and the attention term is refused (the relation and intermediate terms apply).
LAYER_TERMS = dict(alpha_intermediate=1.0, intermediate_loss="mse", alpha_relation=1.0, relation_heads=2)
ATTENTION = dict(alpha_attention=1.0)


def _terms(family):
    return {**LAYER_TERMS, **({} if family == "deberta-v2" else ATTENTION)}


def _inputs(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


@pytest.mark.parametrize("family", FAMILY_CONFIGS)
def test_the_table_finds_every_part(family):
    model = family_teacher(family)
    layers = encoder_layers(model)
    assert family_of(model) is not None and len(layers) == 4
    assert embedding_module(model) is not None and find_mlm_head(model) is not None
    for i in range(4):
        attention = self_attention(model, i)
        assert attention is not None and attention.num_heads == 2
    # hidden state 0 (what the embedding module returns) is what enters layer 0, at the layers' width
    seen = {}

    def keep_output(module, args, output):
        seen["embedding"] = output

    def keep_input(module, args, kwargs):
        seen["layer0"] = args[0] if args else kwargs["hidden_states"]

    embedding_module(model).register_forward_hook(keep_output)
    layers[0].register_forward_pre_hook(keep_input, with_kwargs=True)
    with torch.no_grad():
        model(**_inputs(batch_of(2)))
    assert seen["embedding"].shape[-1] == 32 and torch.equal(seen["embedding"], seen["layer0"])


@pytest.mark.parametrize("family", FAMILY_CONFIGS)
def test_create_student_copies_the_chosen_layers(family):
    teacher = family_teacher(family).eval()
    batch = _inputs(batch_of(4))
    whole = create_student(teacher, 4, [0, 1, 2, 3]).eval()
    with torch.no_grad():  # all layers copied: the teacher itself
        assert torch.equal(whole(**batch).logits, teacher(**batch).logits)
    student = create_student(teacher, 2, "every_other")
    assert student.config.distil_teacher_layers == [1, 3] and len(encoder_layers(student)) == 2
    for s_index, t_index in enumerate([1, 3]):
        s_params = dict(encoder_layers(student)[s_index].named_parameters())
        for name, value in encoder_layers(teacher)[t_index].named_parameters():
            if name in s_params:
                assert torch.equal(s_params[name], value), (s_index, name)
            else:  # only ModernBERT's layer 0 lacks a parameter (no attention pre-norm)
                assert family == "modernbert" and s_index == 0 and name.startswith("attn_norm."), name


def test_modernbert_student_layers_keep_their_attention_kind(tmp_path):
    teacher = family_teacher("modernbert", layers=6)
    assert attention_kinds(teacher.config) == [GLOBAL, LOCAL, LOCAL, GLOBAL, LOCAL, LOCAL]
    student = create_student(teacher, 3, [0, 3, 4])
    assert attention_kinds(student.config) == [GLOBAL, GLOBAL, LOCAL]
    assert [self_attention(student, i).window for i in range(3)] == [None, None, 4]
    # a student layer > 0 copied from teacher layer 0 (which has no attention pre-norm) gets a fresh one
    assert torch.equal(encoder_layers(student)[1].attn.Wqkv.weight, encoder_layers(teacher)[3].attn.Wqkv.weight)
    student.save_pretrained(tmp_path / "s")
    reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "s")
    assert attention_kinds(reloaded.config) == [GLOBAL, GLOBAL, LOCAL]
    # a narrower (random) student follows the family's own pattern
    narrow = create_student(teacher, 4, hidden_size=16)
    assert attention_kinds(narrow.config) == [GLOBAL, LOCAL, LOCAL, GLOBAL]


@pytest.mark.parametrize("family", FAMILY_CONFIGS)
def test_the_sparse_head_equals_the_dense_path(family):
    model = family_teacher(family, dropout=0.0).eval()
    batch = batch_of(4, seed=1)
    positions = (batch["labels"].reshape(-1) != -100).nonzero().squeeze(1)
    spec = CaptureSpec(last_hidden_state=True, hidden_states=(0, 2), qk=(1,), qkv=(3,))
    with torch.no_grad():
        sparse = capture(model, batch, positions, spec)
        dense = capture(model, batch, positions, spec, sparse=False)
    assert sparse.logits.shape == (len(positions), 64)
    torch.testing.assert_close(sparse.logits, dense.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sparse.last_hidden_state, dense.last_hidden_state, rtol=0, atol=0)
    # one (batch, length, width) tensor per signal: DeBERTa's projections of its position embeddings are not taken
    assert [tuple(t.shape) for t in (*sparse.hidden_states.values(), *sparse.qk[1], *sparse.qkv[3])] == [
        (4, 16, 32)] * 7
    full = model(**_inputs(batch)).logits.reshape(-1, 64)[positions]  # and both equal the model's own logits
    torch.testing.assert_close(sparse.logits, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "roberta", "deberta-v2-absolute", "electra", "distilbert", "modernbert"])
def test_captured_queries_and_keys_give_the_models_own_attention(family):
    """softmax(q·k/√d) from the captured projections (ModernBERT: rotated, and banded in its local layers) equals the
    attention probabilities the model itself computes (eager attention, output_attentions)."""
    config = family_config(family)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(config, attn_implementation="eager").eval()
    batch = batch_of(4, seed=2)
    positions = (batch["labels"].reshape(-1) != -100).nonzero().squeeze(1)
    with torch.no_grad():
        signals = capture(model, batch, positions, CaptureSpec(qk=(0, 1, 2, 3)))
        own = model(**_inputs(batch), output_attentions=True).attentions
    keys = batch["attention_mask"].bool()
    for layer, (q, k) in signals.qk.items():
        probs = scaled_dot_log_probs(q, k, signals.heads, keys, signals.windows[layer]).exp()
        real = keys[:, None, :, None] & keys[:, None, None, :]  # rows and columns of real tokens
        torch.testing.assert_close(probs * real, own[layer].float() * real, rtol=1e-4, atol=1e-5)
    if family == "modernbert":
        assert list(signals.windows.values()) == [None, 4, 4, None]


def test_relative_position_attention_refuses_the_attention_term(tmp_path):
    teacher = family_teacher("deberta-v2")
    with pytest.raises(ModelMismatchError, match="relative-position") as err:
        DistillationTrainer(model=create_student(teacher, 2), teacher_model=teacher,
                            args=args_for(tmp_path, max_steps=1, **ATTENTION), train_dataset=premasked_dataset(8))
    assert "alpha_relation" in str(err.value) and len(str(err.value).splitlines()) == 1


def test_attention_pairs_of_different_kinds_are_refused_with_a_map_that_works(tmp_path):
    teacher = family_teacher("modernbert", layers=6)  # global, local, local, global, local, local
    student = create_student(teacher, 3, [1, 3, 5])  # local, global, local
    args = args_for(tmp_path, max_steps=1, **ATTENTION)  # uniform: 0:1, 1:3, 2:5 … matches; 2 layers would not
    with pytest.raises(ModelMismatchError, match="different kinds") as err:
        DistillationTrainer(model=create_student(teacher, 2, [0, 1]), teacher_model=teacher,
                            args=args, train_dataset=premasked_dataset(8))
    assert 'layer_map "0:0,1:1"' in str(err.value)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=premasked_dataset(8))
    assert trainer.layer_plan.layer_pairs == ((0, 1), (1, 3), (2, 5))


@pytest.mark.parametrize("family", FAMILY_CONFIGS)
def test_every_family_end_to_end(tmp_path, family):
    """create_student → a few DistillationTrainer steps with every term that applies → save → reload → fill-mask,
    and the card says which teacher layers (and for ModernBERT which attention kind) each student layer has."""
    teacher = family_teacher(family, dropout=0.1)
    student = create_student(teacher, 2)
    before = [p.detach().clone() for p in student.parameters()]
    tokenizer = family_tokenizer(tmp_path / "tok", family)
    args = args_for(tmp_path, max_steps=3, logging_steps=1, alpha_hidden=1.0, **_terms(family))
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args,
                                  train_dataset=premasked_dataset(24, seed=3), processing_class=tokenizer)
    trainer.train()
    logged = {k for entry in trainer.state.log_history for k, v in entry.items() if k.endswith("_loss") and v > 0}
    expected = {"kd_loss", "mlm_loss", "hidden_loss", "intermediate_loss", "relation_loss"}
    assert expected | ({"attention_loss"} if "alpha_attention" in _terms(family) else set()) <= logged
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    trainer.save_model()
    trainer.create_model_card()
    out = tmp_path / "out"
    reloaded = AutoModelForMaskedLM.from_pretrained(out)
    assert type(reloaded) is type(teacher) and reloaded.config.num_hidden_layers == 2
    for name, value in reloaded.state_dict().items():
        torch.testing.assert_close(value, student.state_dict()[name], rtol=0, atol=0, msg=name)
    guesses = pipeline("fill-mask", model=str(out), top_k=3)("w1 w2 [MASK] w4")
    assert len(guesses) == 3 and all(g["sequence"] for g in guesses)
    card = (out / "README.md").read_text()
    assert "teacher's layers 1, 3" in card
    if family == "modernbert":
        assert "student layer 0 ← teacher layer 1 (local, a window of ±4 tokens); 1 ← teacher layer 3 (global)" in card
        assert "student layer 0 was copied from teacher layer 1 without that norm's weights" in card


@pytest.mark.parametrize("family, narrow", [("modernbert", False), ("distilbert", False), ("bert", True)])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients_with_layer_terms(tmp_path, family, narrow):
    """Long-context runs checkpoint the student's layers: the hooks still capture what the layer terms read, and the
    gradients equal those of the plain forward (a narrow student: through the learned projections too)."""
    teacher = family_teacher(family, dropout=0.0)
    batch = batch_of(4, seed=5)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(1)
        student = create_student(teacher, 2, hidden_size=16) if narrow else create_student(teacher, 2)
        args = args_for(tmp_path, max_steps=1, alpha_hidden=0.0 if narrow else 1.0,
                        gradient_checkpointing=checkpointing, **_terms(family))
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)
        if checkpointing:
            student.gradient_checkpointing_enable(args.gradient_checkpointing_kwargs)
        student.train()
        loss, values, _ = trainer._distillation_loss(student, batch, training=True)
        loss.backward()
        assert student.is_gradient_checkpointing == checkpointing and all(v > 0 for v in values.values())
        projected = [n for n, p in trainer.model.named_parameters() if "distil_projections" in n and p.grad is not None]
        assert bool(projected) == narrow
        grads.append([p.grad.clone() for p in trainer.model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-5, atol=1e-6)


def test_visible_key_counts_and_the_windowed_attention_mse_by_brute_force():
    from hf_distil.losses import map_mse_rows, masked_scaled_dot_scores, visible_key_counts

    keys = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    for window in (None, 0, 1, 2, 10):
        expected = torch.tensor([[sum(bool(keys[b, j]) and (window is None or abs(i - j) <= window)
                                      for j in range(7)) for i in range(7)] for b in range(2)])
        assert torch.equal(visible_key_counts(keys, window), expected), window
    # a local layer's MSE averages over the keys its window shows, not over every real key
    torch.manual_seed(0)
    q, k, q2, k2 = (torch.randn(2, 7, 4) for _ in range(4))
    s = scaled_dot_log_probs(q, k, 2, keys, 1)
    t = scaled_dot_log_probs(q2, k2, 2, keys, 1)
    rows = map_mse_rows(s.exp().transpose(1, 2).reshape(14, 2, 7), t.exp().transpose(1, 2).reshape(14, 2, 7),
                        visible_key_counts(keys, 1).reshape(-1))
    band = (torch.arange(7)[:, None] - torch.arange(7)[None, :]).abs() <= 1
    seen = keys[:, None, None, :] & band
    by_hand = ((s.exp() - t.exp()).square() * seen).sum(-1) / seen.sum(-1).clamp(min=1)  # (2, heads, 7)
    torch.testing.assert_close(rows, by_hand.mean(1).reshape(14))
    # the scores form: the same band, the scores outside it at 0 on both sides
    s, t = masked_scaled_dot_scores(q, k, 2, keys, 1), masked_scaled_dot_scores(q2, k2, 2, keys, 1)
    assert torch.all(s[~seen.expand_as(s)] == 0)
    rows = map_mse_rows(s.transpose(1, 2).reshape(14, 2, 7), t.transpose(1, 2).reshape(14, 2, 7),
                        visible_key_counts(keys, 1).reshape(-1))
    by_hand = ((s - t).square() * seen).sum(-1) / seen.sum(-1).clamp(min=1)
    torch.testing.assert_close(rows, by_hand.mean(1).reshape(14))


def test_model_types_outside_the_table_with_bert_layout():
    """roberta-prelayernorm is not in the table: its parts are found (head `lm_head` at the masked rows), and the
    attention term is refused because its attention is not known; a causal LM is no family at all."""
    from transformers import LlamaConfig, LlamaForCausalLM, RobertaPreLayerNormConfig, RobertaPreLayerNormForMaskedLM

    config = RobertaPreLayerNormConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=80, pad_token_id=0)
    model = RobertaPreLayerNormForMaskedLM(config)
    assert family_of(model).name == "BERT-like" and find_mlm_head(model) is model.lm_head
    assert not attention_is_plain(model) and self_attention(model, 1) is not None
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64))
    assert family_of(llama) is None and encoder_layers(llama) is None


def test_attention_kinds_of_a_family_without_local_layers_count_as_global(tmp_path):
    from hf_distil.terms.attention import check_attention_kinds

    modern = family_config("modernbert", layers=4)  # global, local, local, global
    bert = family_config("bert", layers=2)
    check_attention_kinds(((0, 0), (1, 3)), bert, modern)
    with pytest.raises(ModelMismatchError, match=r"0:1 \(global↔local\)"):
        check_attention_kinds(((0, 1), (1, 3)), bert, modern)


def test_narrow_students_follow_the_teachers_pattern_and_width_fields():
    from transformers import DebertaV2ForSequenceClassification

    from hf_distil.student import _repeat_pattern

    full, local = "full_attention", "sliding_attention"
    assert _repeat_pattern([full, local, local] * 2 + [full], 10) == [full, local, local] * 3 + [full]
    deep = create_student(family_teacher("modernbert", layers=4), 7, hidden_size=16)
    assert attention_kinds(deep.config) == [GLOBAL, LOCAL, LOCAL, GLOBAL, LOCAL, LOCAL, GLOBAL]
    config = family_config("deberta-v2")
    config.num_labels = 3
    classifier = DebertaV2ForSequenceClassification(config)
    narrow = create_student(classifier, 2, hidden_size=16)  # its pooler narrows with it
    assert narrow(**_inputs(batch_of(2))).logits.shape == (2, 3)


def test_recipe_attn_implementation_with_a_family_that_has_no_sdpa(tmp_path, capsys):
    """DeBERTa supports neither sdpa nor flash-attention: `auto` falls back to its default, a named kernel it lacks is
    one line naming the kernel."""
    import json

    from tiny import random_texts, write_recipe_config

    from hf_distil.recipe import main

    family_teacher("deberta-v2").save_pretrained(tmp_path / "teacher")
    family_tokenizer(tmp_path / "teacher", "deberta-v2").save_pretrained(tmp_path / "teacher")
    with open(tmp_path / "corpus.jsonl", "w") as f:
        f.writelines(json.dumps({"text": text}) + "\n" for text in random_texts(60, min_len=10, max_len=40))
    config = write_recipe_config(tmp_path, attn_implementation="auto", max_steps=1, alpha_relation=1.0,
                                 relation_heads=2)
    assert main([str(config)]) == 0
    assert AutoModelForMaskedLM.from_pretrained(tmp_path / "out").config.model_type == "deberta-v2"
    capsys.readouterr()
    assert main([str(config), "--attn_implementation", "sdpa", "--output_dir", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--attn_implementation sdpa" in err[0] and "does not support" in err[0], err


def test_a_narrow_modernbert_student_gets_a_same_kind_layer_map(tmp_path):
    teacher = family_teacher("modernbert", layers=6)  # global, local, local, global, local, local
    student = create_student(teacher, 3, hidden_size=16)  # global, local, local: uniform 0:1, 1:3, 2:5 mixes kinds
    args = args_for(tmp_path, max_steps=1, alpha_kd=1.0, alpha_hidden=0.0, **ATTENTION)
    with pytest.raises(ModelMismatchError, match='layer_map "0:0,1:4,2:5"'):
        DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=premasked_dataset(8))
    fixed = args_for(tmp_path, max_steps=1, alpha_kd=1.0, alpha_hidden=0.0, layer_map="0:0,1:4,2:5", **ATTENTION)
    DistillationTrainer(model=student, teacher_model=teacher, args=fixed, train_dataset=premasked_dataset(8)).train()


def test_recipe_cards_for_a_loaded_student_and_refuses_flex_attention_on_cpu(tmp_path, capsys):
    from tiny import write_recipe_config, write_workspace

    from hf_distil.recipe import main

    write_workspace(tmp_path)
    config = write_recipe_config(tmp_path, max_steps=1, evaluate_before_training=False)
    assert main([str(config), "--output_dir", str(tmp_path / "first")]) == 0
    assert main([str(config), "--student_model_name_or_path", str(tmp_path / "first")]) == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert "started from the existing checkpoint `first`" in card and "layers were copied from" not in card
    assert "as blocks of 32 tokens of concatenated text" in card
    capsys.readouterr()
    assert main([str(config), "--attn_implementation", "flex_attention", "--output_dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "flex_attention needs a CUDA GPU" in err[0], err


def test_card_says_where_modernbert_layers_lack_the_first_layers_norm():
    from hf_distil.card.student import initialisation_text as _initialisation

    teacher = family_teacher("modernbert", layers=6)
    card = _initialisation(create_student(teacher, 3, [3, 0, 4]).config, "T")
    assert "Student layer 1 was copied from teacher layer 0, which has no attention pre-norm" in card
    assert "student layer 0 was copied from teacher layer 3 without that norm's weights" in card
    narrow = _initialisation(create_student(teacher, 3, hidden_size=16).config, "T")
    assert "keeps the attention kind" not in narrow and "following the teacher's pattern: layer 0 (global)" in narrow


def test_a_layer_both_compared_and_related_is_rotated_once():
    model = family_teacher("modernbert").eval()
    batch = batch_of(2, seed=4)
    positions = (batch["labels"].reshape(-1) != -100).nonzero().squeeze(1)
    with torch.no_grad():
        alone = capture(model, batch, positions, CaptureSpec(qk=(1,)))
        both = capture(model, batch, positions, CaptureSpec(qk=(1,), qkv=(1,)))
    for a, b in zip(alone.qk[1], both.qk[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(both.qkv[1][0], both.qk[1][0], rtol=0, atol=0)


def test_deberta_hidden_state_one_is_after_its_conv_layer():
    """DeBERTa-v2 with conv_kernel_size > 0 passes layer 0's output through its encoder's ConvLayer: hidden state 1
    (what the hidden-state terms compare) is the conv's output, as the model's own hidden_states say."""
    config = family_config("deberta-v2-absolute")
    config.conv_kernel_size = 3
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(config).eval()
    batch = batch_of(4, seed=2)
    positions = (batch["labels"].reshape(-1) != -100).nonzero().squeeze(1)
    with torch.no_grad():
        signals = capture(model, batch, positions, CaptureSpec(hidden_states=(0, 1, 2)))
        own = model(**_inputs(batch), output_hidden_states=True).hidden_states
    for index in (0, 1, 2):
        torch.testing.assert_close(signals.hidden_states[index], own[index], rtol=0, atol=0)


def test_deberta_scores_scaled_by_pos_att_type_refuse_the_attention_term(tmp_path):
    """Without relative attention, pos_att_type still divides DeBERTa's scores by √(3d): not softmax(q·k/√d)."""
    from transformers import DebertaV2ForMaskedLM

    config = family_config("deberta-v2-absolute")
    config.pos_att_type = ["p2c", "c2p"]
    torch.manual_seed(0)
    teacher = DebertaV2ForMaskedLM(config)
    with pytest.raises(ModelMismatchError, match="pos_att_type"):
        DistillationTrainer(model=create_student(teacher, 2), teacher_model=teacher,
                            args=args_for(tmp_path, max_steps=1, **ATTENTION), train_dataset=premasked_dataset(8))
