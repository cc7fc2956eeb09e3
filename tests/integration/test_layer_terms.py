"""The attention, intermediate and relation terms: each equal to its formula, captured by hooks (never
output_attentions), the layer map validated, projections trained and checkpointed but never shipped."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from tiny import StopAt, args_for, batch_of, premasked_dataset, tiny_teacher
from transformers import BertForMaskedLM, BertTokenizerFast, pipeline

from hf_distil import DistillationArguments, DistillationTrainer, create_student
from hf_distil.errors import ArgumentError, ModelMismatchError
from hf_distil.layer_map import layer_pairs, parse_layer_map
from hf_distil.losses import map_mse_rows, masked_scaled_dot_scores, relation_kl_rows, scaled_dot_log_probs
from hf_distil.objective import select_rows
from hf_distil.signals import CaptureSpec, capture
from hf_distil.terms import active_terms

LAYER_ALPHAS = dict(alpha_kd=0.0, alpha_mlm=0.0, alpha_hidden=0.0)
# KD plus every layer term, for a 16-wide, 2-head student of the 32-wide, 2-head tiny teacher.
ALL_TERMS = dict(alpha_kd=1.0, alpha_mlm=0.0, alpha_hidden=0.0, alpha_attention=1.0, alpha_intermediate=1.0,
                 alpha_relation=1.0, relation_heads=2)


def narrow_student(teacher, layers=2, hidden=16, heads=2, seed=1):
    torch.manual_seed(seed)
    return create_student(teacher, layers, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_attention_heads=heads)


def terms_of(tmp_path, student, teacher, batch, **alphas):
    """The normalised term values of one micro-batch (per-batch means), as the trainer computes them."""
    a = args_for(tmp_path, **{**LAYER_ALPHAS, **alphas})
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=a)
    trainer.model.eval()
    with torch.no_grad():
        _, values, _ = trainer._distillation_loss(trainer.model, batch, training=False)
    return values, trainer


# ---- the pure functions, by hand ---------------------------------------------------------------------------------

def test_attention_losses_on_a_hand_computed_row():
    # one query row, one head, three keys of which the last is padding
    student = torch.tensor([[[0.5, 0.5, 0.0]]])
    teacher = torch.tensor([[[1.0, 0.0, 0.0]]])
    real = torch.tensor([2])
    # probs: ((0.5 - 1)² + (0.5 - 0)²) averaged over the 2 real keys
    assert torch.allclose(map_mse_rows(student, teacher, real), torch.tensor([0.25]))
    # kl: 1 · log(1 / 0.5)
    kl = relation_kl_rows(student.clamp(min=1e-30).log(), teacher.clamp(min=1e-30).log())
    assert torch.allclose(kl, torch.tensor([math.log(2)]))
    # two heads: the mean over heads
    both = map_mse_rows(torch.cat([student, teacher], 1), torch.cat([teacher, teacher], 1), real)
    assert torch.allclose(both, torch.tensor([0.125]))


def tinybert_attention_loss(student_q, student_k, teacher_q, teacher_k, attention_mask, heads):
    """TinyBERT's general_distill.py, transcribed: each model's attention scores as its modeling.py returns them
    (q·kᵀ/√d_h plus the extended mask, −10000 at padded keys), the scores ≤ −100 set to 0, then MSELoss (the mean
    over batch × heads × queries × keys)."""
    def scores(q, k):
        b, n, w = q.shape
        d = w // heads
        q = q.view(b, n, heads, d).permute(0, 2, 1, 3)
        k = k.view(b, n, heads, d).permute(0, 2, 1, 3)
        extended = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        return q @ k.transpose(-1, -2) / math.sqrt(d) + extended

    student_att, teacher_att = scores(student_q, student_k), scores(teacher_q, teacher_k)
    student_att = torch.where(student_att <= -1e2, torch.zeros_like(student_att), student_att)
    teacher_att = torch.where(teacher_att <= -1e2, torch.zeros_like(teacher_att), teacher_att)
    return torch.nn.MSELoss()(student_att, teacher_att)


def ours_scores_loss(student_q, student_k, teacher_q, teacher_k, attention_mask, heads):
    """attention_loss "scores" as hf_distil.terms.attention computes it, averaged over the non-padding query rows."""
    keys = attention_mask.bool()
    by_row = [masked_scaled_dot_scores(q, k, heads, keys).transpose(1, 2).reshape(-1, heads, keys.shape[1])
              for q, k in ((student_q, student_k), (teacher_q, teacher_k))]
    rows = map_mse_rows(*by_row, keys.sum(1, keepdim=True).expand(keys.shape).reshape(-1))
    return rows[keys.reshape(-1)].mean()


def test_attention_scores_loss_is_tinyberts_own_on_an_unpadded_batch_and_skips_padding_otherwise():
    torch.manual_seed(0)
    s_q, s_k, t_q, t_k = (torch.randn(3, 5, 8) * 2 for _ in range(4))
    unpadded = torch.ones(3, 5, dtype=torch.long)
    theirs = tinybert_attention_loss(s_q, s_k, t_q, t_k, unpadded, heads=2)
    assert theirs > 0.5  # the scores' scale: far from the probabilities' ~1e-2
    torch.testing.assert_close(ours_scores_loss(s_q, s_k, t_q, t_k, unpadded, 2), theirs, rtol=1e-6, atol=0)
    # With padding, the authors' mean also runs over the padded query rows and divides by the padded length; ours
    # is the same per-row value over the real rows and keys: each example alone is the authors' number.
    padded = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    real_rows = []
    for b, n in enumerate(padded.sum(1).tolist()):
        one = [x[b:b + 1, :n] for x in (s_q, s_k, t_q, t_k)]
        real_rows += [tinybert_attention_loss(*one, torch.ones(1, n), heads=2)] * n
    torch.testing.assert_close(ours_scores_loss(s_q, s_k, t_q, t_k, padded, 2), torch.stack(real_rows).mean())


def test_scaled_dot_probabilities_mask_padded_keys_and_never_nan():
    a = torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    probs = scaled_dot_log_probs(a, a, 2, mask).exp()
    assert torch.all(probs[0, :, :, 2] == 0)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 2, 3))
    # head h uses features [2h, 2h + 2): softmax(a_h a_hᵀ / √2) over the real keys
    h1 = a[0, :2, 2:4]
    assert torch.allclose(probs[0, 1, :2, :2], torch.softmax(h1 @ h1.T / math.sqrt(2), -1), atol=1e-6)
    assert torch.isfinite(relation_kl_rows(scaled_dot_log_probs(a, a, 2, mask)[1],
                                           scaled_dot_log_probs(a + 1, a + 1, 2, mask)[1])).all()


def test_captured_attention_equals_the_models_own_attention_probabilities():
    """Queries and keys caught by hooks under the default (sdpa) attention give eager attention's probabilities."""
    model = tiny_teacher(layers=3, dropout=0.0).eval()
    eager = copy.deepcopy(model)
    eager.config._attn_implementation = "eager"
    batch = batch_of(4)
    keys = batch["attention_mask"].bool()
    spec = CaptureSpec(qk=(0, 2))
    signals = capture(model, batch, torch.arange(3), spec)
    with torch.no_grad():
        reference = eager(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          output_attentions=True).attentions
    for layer, (q, k) in signals.qk.items():
        ours = scaled_dot_log_probs(q, k, signals.heads, keys).exp()
        rows = keys[:, None, :, None].expand_as(ours)  # real query rows (padding rows are never scored)
        assert torch.allclose(ours[rows], reference[layer][rows], atol=1e-6), layer


def test_capture_never_asks_for_output_attentions_or_all_hidden_states(monkeypatch):
    model = tiny_teacher(layers=3, dropout=0.0).eval()
    seen = {}
    original = model.forward

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    spec = CaptureSpec(hidden_states=(0, 2), qk=(1,), qkv=(2,))
    out = capture(model, batch_of(2), torch.arange(2), spec)
    assert not seen.get("output_attentions") and not seen.get("output_hidden_states")
    with torch.no_grad():
        reference = original(input_ids=batch_of(2)["input_ids"], attention_mask=batch_of(2)["attention_mask"],
                             output_hidden_states=True).hidden_states
    assert torch.allclose(out.hidden_states[0], reference[0]) and torch.allclose(out.hidden_states[2], reference[2])
    assert len(out.qkv[2]) == 3 and out.heads == 2


# ---- the terms, to their formulas --------------------------------------------------------------------------------

def _reference_states(model, batch, **kw):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True,
                     **kw)


@torch.no_grad()
def _qkv(model, layer, hidden):
    attention = model.bert.encoder.layer[layer].attention.self
    return attention.query(hidden), attention.key(hidden), attention.value(hidden)


@pytest.mark.parametrize("kind", ["scores", "probs", "kl"])
def test_attention_term_equals_its_formula_on_a_padded_batch(tmp_path, kind):
    teacher = tiny_teacher(layers=4, dropout=0.0)
    student = narrow_student(teacher)  # 16 wide, 2 heads like the teacher
    batch = batch_of(4, seed=3)
    assert (batch["attention_mask"] == 0).any()  # padding present
    values, trainer = terms_of(tmp_path, student, teacher, batch, alpha_attention=1.0, attention_loss=kind)
    assert trainer.layer_plan.layer_pairs == ((0, 1), (1, 3))
    s_hidden = _reference_states(student, batch).hidden_states
    t_hidden = _reference_states(teacher, batch).hidden_states
    mask = batch["attention_mask"].bool()
    total, rows = 0.0, 0
    for b in range(4):
        real = int(mask[b].sum())
        for i in range(real):
            rows += 1
            for s_layer, t_layer in ((0, 1), (1, 3)):
                for model, hidden, layer, key in ((student, s_hidden, s_layer, "s"), (teacher, t_hidden, t_layer, "t")):
                    q, k, _ = _qkv(model, layer, hidden[layer][b, :real])
                    heads = [q[i, h * (q.shape[1] // 2):(h + 1) * (q.shape[1] // 2)]
                             @ k[:, h * (q.shape[1] // 2):(h + 1) * (q.shape[1] // 2)].T
                             / math.sqrt(q.shape[1] // 2) for h in range(2)]
                    if kind != "scores":
                        heads = [torch.softmax(h, -1) for h in heads]
                    if key == "s":
                        s_probs = torch.stack(heads)
                    else:
                        t_probs = torch.stack(heads)
                if kind in ("scores", "probs"):
                    total += float(((s_probs - t_probs) ** 2).mean())  # mean over heads and the real keys
                else:
                    total += float((t_probs * (t_probs.log() - s_probs.log())).sum(-1).mean())
    assert math.isclose(float(values["attention"]), total / rows, rel_tol=1e-4)


def test_attention_probs_on_an_unpadded_batch_is_the_elementwise_mse_of_the_probabilities(tmp_path):
    teacher = tiny_teacher(layers=2, dropout=0.0)
    student = create_student(teacher, 1, [1])
    batch = batch_of(4, seed=3)
    batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
    values, _ = terms_of(tmp_path, student, teacher, batch, alpha_attention=1.0, layer_map="0:0",
                         attention_loss="probs")
    eager_s, eager_t = copy.deepcopy(student), copy.deepcopy(teacher)
    for m in (eager_s, eager_t):
        m.config._attn_implementation = "eager"
    s = _reference_states(eager_s.eval(), batch, output_attentions=True).attentions[0]
    t = _reference_states(eager_t.eval(), batch, output_attentions=True).attentions[0]
    assert math.isclose(float(values["attention"]), float(F.mse_loss(s, t)), rel_tol=1e-4)


def test_intermediate_term_goes_through_the_projection_and_skips_padding(tmp_path):
    teacher = tiny_teacher(layers=4, dropout=0.0)
    student = narrow_student(teacher)
    batch = batch_of(4, seed=5)
    values, trainer = terms_of(tmp_path, student, teacher, batch, alpha_intermediate=1.0)
    projections = trainer.model.distil_projections
    assert list(projections.keys()) == ["0", "1", "2"]  # hidden states 0↔0, 1↔2, 2↔4
    s_hidden = _reference_states(student, batch).hidden_states
    t_hidden = _reference_states(teacher, batch).hidden_states
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        expected = sum(F.mse_loss(projections[str(s)](s_hidden[s][mask]), t_hidden[t][mask], reduction="none")
                       .mean(-1).sum() for s, t in ((0, 0), (1, 2), (2, 4))) / mask.sum()
    assert math.isclose(float(values["intermediate"]), float(expected), rel_tol=1e-5)


def test_intermediate_cosine_for_equal_widths_needs_no_projection(tmp_path):
    teacher = tiny_teacher(layers=4, dropout=0.0)
    student = create_student(teacher, 2)
    batch = batch_of(4, seed=5)
    values, trainer = terms_of(tmp_path, student, teacher, batch, alpha_intermediate=1.0, intermediate_loss="cosine",
                               layer_map="1:3")
    assert not hasattr(trainer.model, "distil_projections")
    s_hidden = _reference_states(student, batch).hidden_states
    t_hidden = _reference_states(teacher, batch).hidden_states
    mask = batch["attention_mask"].bool()
    expected = sum((1 - F.cosine_similarity(s_hidden[s][mask], t_hidden[t][mask], dim=-1)).sum()
                   for s, t in ((0, 0), (2, 4))) / mask.sum()
    assert math.isclose(float(values["intermediate"]), float(expected), rel_tol=1e-5)


def test_relation_term_with_different_head_counts_and_widths(tmp_path):
    """MiniLM v2: a 16-wide 1-head student against a 32-wide 2-head teacher's layer 2, with 4 relation heads."""
    teacher = tiny_teacher(layers=4, dropout=0.0)
    student = narrow_student(teacher, layers=2, hidden=16, heads=1)  # one attention head; relation heads are 4
    batch = batch_of(4, seed=7)
    values, trainer = terms_of(tmp_path, student, teacher, batch, alpha_relation=1.0, relation_heads=4,
                               relation_teacher_layer=2)
    assert trainer.layer_plan.term_layers["relation"]["pair"] == (1, 2)
    s_hidden = _reference_states(student, batch).hidden_states
    t_hidden = _reference_states(teacher, batch).hidden_states
    mask = batch["attention_mask"].bool()
    total, rows = 0.0, int(mask.sum())
    for b in range(4):
        real = int(mask[b].sum())
        s_parts = _qkv(student, 1, s_hidden[1][b, :real])
        t_parts = _qkv(teacher, 2, t_hidden[2][b, :real])
        for s, t in zip(s_parts, t_parts):
            for r in range(4):
                sr = s[:, r * 4:(r + 1) * 4]  # 16 / 4 relation heads = 4 features each
                tr = t[:, r * 8:(r + 1) * 8]  # 32 / 4 = 8
                s_rel = torch.log_softmax(sr @ sr.T / 2.0, -1)
                t_rel = torch.log_softmax(tr @ tr.T / math.sqrt(8), -1)
                total += float((t_rel.exp() * (t_rel - s_rel)).sum()) / 4  # mean over relation heads
    assert math.isclose(float(values["relation"]), total / rows, rel_tol=1e-4)


def test_gradient_accumulation_equals_one_big_batch_with_the_layer_terms(tmp_path):
    data = premasked_dataset(8, seed=1)
    teacher = tiny_teacher(layers=4, dropout=0.0)
    student = narrow_student(teacher)
    alphas = dict(alpha_kd=1.0, alpha_mlm=1.0, alpha_hidden=0.0, alpha_attention=1.0, alpha_intermediate=1.0,
                  alpha_relation=1.0, relation_heads=2, optim="sgd", lr_scheduler_type="constant", max_steps=1,
                  learning_rate=0.5, logging_steps=1)

    def train(name, batch, accumulation):
        a = args_for(tmp_path, output_dir=str(tmp_path / name), per_device_train_batch_size=batch,
                     gradient_accumulation_steps=accumulation, **alphas)
        trainer = DistillationTrainer(model=copy.deepcopy(student), teacher_model=teacher, args=a,
                                      train_dataset=data)
        start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        trainer.train()
        return trainer, start

    (one, start), (acc, _) = train("one", 8, 1), train("acc", 4, 2)
    for (name, p1), p2 in zip(one.model.named_parameters(), acc.model.parameters()):
        assert torch.allclose(p1, p2, rtol=1e-5, atol=1e-7), name
    projection_names = [n for n, _ in one.model.named_parameters() if n.startswith("distil_projections.")]
    assert len(projection_names) == 6  # weight + bias of the projections of hidden states 0, 1, 2
    for name in projection_names:  # trained by the same optimizer as the student
        assert not torch.equal(one.model.state_dict()[name], start[name]), name
    log = one.state.log_history[0]
    assert {"attention_loss", "intermediate_loss", "relation_loss"} <= set(log)


# ---- layer map and compatibility ---------------------------------------------------------------------------------

def test_uniform_layer_map_is_tinyberts_and_hidden_states_count_the_embeddings(tmp_path):
    from hf_distil.layer_map import LayerPlan
    from hf_distil.terms import by_name

    plan = LayerPlan(layer_pairs("uniform", 4, 12))
    assert plan.layer_pairs == ((0, 2), (1, 5), (2, 8), (3, 11))
    assert [t for _, t in plan.hidden_pairs] == [0, 3, 6, 9, 12]
    assert layer_pairs("0:2,1:5,2:8,3:11", 4, 12) == plan.layer_pairs
    relation = by_name("relation")  # its own layers: the student's last and relation_teacher_layer
    assert relation.plan(args_for(tmp_path, relation_teacher_layer=-1), 4, 12) == {"pair": (3, 11)}
    assert relation.plan(args_for(tmp_path, relation_teacher_layer=5), 6, 12) == {"pair": (5, 5)}


@pytest.mark.parametrize("spec, depths, message", [
    ("0:2,4:11", (4, 12), r"layer_map 4:11: the student has layers 0..3 \(4 layers\)"),
    ("0:2,1:12", (4, 12), r"layer_map 1:12: the teacher has layers 0..11 \(12 layers\)"),
    ("uniform", (6, 4), "the student has 6 layers and the teacher 4"),
])
def test_layer_maps_out_of_range_name_the_layers(spec, depths, message):
    with pytest.raises(ModelMismatchError, match=message):
        layer_pairs(spec, *depths)


@pytest.mark.parametrize("spec, message", [
    ("0-2", r"'0-2' is not student:teacher"),
    ("0:2,0:3", r"maps student layer\(s\) \[0\] more than once"),
    ("0:-1", "negative layer"),
    ("", "names no layers"),
])
def test_malformed_layer_maps_are_one_line_argument_errors(tmp_path, spec, message):
    with pytest.raises(ArgumentError, match=message):
        args_for(tmp_path, layer_map=spec)


def test_layer_map_from_yaml_lists_and_mappings():
    assert parse_layer_map(["0:2", "1:5"]) == ((0, 2), (1, 5))
    assert parse_layer_map({1: 5, 0: 2}) == ((0, 2), (1, 5))


def test_new_terms_are_off_by_default(tmp_path):
    a = DistillationArguments(output_dir=str(tmp_path))
    assert (a.alpha_attention, a.alpha_intermediate, a.alpha_relation, a.layer_map) == (0.0, 0.0, 0.0, "uniform")


@pytest.mark.parametrize("alphas, student_kw, message", [
    (dict(alpha_attention=1.0), dict(heads=1), r"the student's layers have 1 attention head\(s\) and the teacher's 2"),
    (dict(alpha_intermediate=1.0, intermediate_loss="cosine"), {}, "intermediate_loss='cosine' needs equal widths"),
    (dict(alpha_relation=1.0, relation_heads=5), {}, r"relation_heads=5 does not divide the student's width 16 and "
                                                     r"the teacher's width 32"),
    (dict(alpha_relation=1.0, relation_teacher_layer=4), {}, r"relation_teacher_layer=4: the teacher has layers 0..3"),
    (dict(alpha_attention=1.0, layer_map="2:3"), {}, r"layer_map 2:3: the student has layers 0..1"),
])
def test_incompatible_layer_terms_fail_before_training(tmp_path, alphas, student_kw, message):
    teacher = tiny_teacher(layers=4)
    student = narrow_student(teacher, **student_kw)
    with pytest.raises(ModelMismatchError, match=message):
        DistillationTrainer(model=student, teacher_model=teacher, args=args_for(tmp_path, **{**LAYER_ALPHAS, **alphas}))


# ---- narrower students, projections in checkpoints, never shipped ----------------------------------------------

def test_narrower_student_is_randomly_initialised_and_recorded():
    teacher = tiny_teacher(layers=4)
    student = create_student(teacher, 2, hidden_size=16, intermediate_size=40, num_attention_heads=4)
    c = student.config
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads) == (2, 16, 40, 4)
    assert c.distil_init == "random" and c.distil_teacher_layers is None
    assert c.distil_teacher_shape["hidden_size"] == 32 and c.vocab_size == teacher.config.vocab_size
    assert type(student) is type(teacher) and all(p.dtype == torch.float32 for p in student.parameters())
    with pytest.raises(ModelMismatchError, match="hidden_size=16 is not divisible by num_attention_heads=3"):
        create_student(teacher, 2, hidden_size=16, num_attention_heads=3)
    with pytest.raises(ModelMismatchError, match="hidden_size=0: widths and head counts must be positive integers"):
        create_student(teacher, 2, hidden_size=0)
    # the same widths as the teacher: copied layers, as before
    assert create_student(teacher, 2, hidden_size=32).config.distil_init == "teacher_layers"


def test_projections_resume_bit_exact_and_stay_out_of_the_final_folder(tmp_path):
    teacher = tiny_teacher(layers=4, dropout=0.1)
    student = narrow_student(teacher)
    data = premasked_dataset(32, seed=2)
    alphas = ALL_TERMS

    def run(name, stop=None, resume=None):
        a = args_for(tmp_path, output_dir=str(tmp_path / name), max_steps=6, save_strategy="steps", save_steps=3,
                     **alphas)
        trainer = DistillationTrainer(model=copy.deepcopy(student), teacher_model=teacher, args=a,
                                      train_dataset=data)
        if stop:
            trainer.add_callback(StopAt(stop))
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run("full")
    run("cut", stop=3)
    checkpoint = tmp_path / "cut" / "checkpoint-3"
    with safe_open(str(checkpoint / "model.safetensors"), "pt") as f:
        assert "distil_projections.0.weight" in set(f.keys())  # resume needs them
    resumed = run("cut", resume=str(checkpoint))
    for (name, p1), p2 in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p1, p2), name

    full.save_model(str(tmp_path / "final"))
    with safe_open(str(tmp_path / "final" / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "distil_projections" in k]
    reloaded = BertForMaskedLM.from_pretrained(tmp_path / "final")
    own = {k: v for k, v in full.model.state_dict().items() if not k.startswith("distil_projections")}
    for name, value in reloaded.state_dict().items():
        assert torch.equal(value, own[name]), name
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(59)]))
    fill = pipeline("fill-mask", model=reloaded, tokenizer=BertTokenizerFast(vocab_file=str(vocab)))
    assert len(fill("w1 [MASK] w2")) == 5
    # the card counts the student alone and says how it was trained
    full.create_model_card()
    card = (tmp_path / "full" / "README.md").read_text()
    n_student = sum(p.numel() for p in reloaded.parameters())
    assert f"({n_student:,} in total)" in card
    assert "through learned linear projections" in card and "randomly initialised" in card
    assert "relation heads, student layer 1 against teacher layer 3" in card
    saved_args = json.loads((tmp_path / "full" / "checkpoint-6" / "distillation_args.json").read_text())
    assert saved_args["alpha_relation"] == 1.0 and saved_args["layer_map"] == "uniform"


def test_projections_are_seeded_and_in_the_optimizer(tmp_path):
    teacher = tiny_teacher(layers=4)
    first, second = (DistillationTrainer(model=narrow_student(teacher), teacher_model=teacher,
                                         args=args_for(tmp_path, alpha_intermediate=1.0, alpha_hidden=0.0))
                     for _ in range(2))
    assert torch.equal(first.model.distil_projections["1"].weight, second.model.distil_projections["1"].weight)
    assert "distil_projections.1.weight" in {n for g in first.create_optimizer().param_groups for p in g["params"]
                                             for n, q in first.model.named_parameters() if q is p}


def test_select_rows_unchanged_for_layer_terms_only(tmp_path):
    """Layer terms alone read no logits: the heads compute no rows in training."""
    a = args_for(tmp_path, alpha_kd=0.0, alpha_mlm=0.0, alpha_hidden=0.0, alpha_relation=1.0, relation_heads=2)
    terms = active_terms(a, has_teacher=True, evaluating=False)
    assert [t.name for t in terms] == ["relation"]
    assert select_rows(batch_of(2), a, terms, evaluating=False).positions.numel() == 0


# ---- faults and neighbours found in review ---------------------------------------------------------------------

def test_hub_pushes_after_each_save_carry_no_projections(tmp_path, monkeypatch):
    from hub_fake import go_online
    from huggingface_hub import HfApi
    from tiny import write_workspace

    from hf_distil.recipe import main

    write_workspace(tmp_path, n_texts=40)
    go_online(monkeypatch)
    pushed = []

    def upload_folder(self, repo_id, folder_path, run_as_future=False, **kwargs):
        with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
            pushed.append(sorted(k for k in f.keys() if "distil_projections" in k))
        from concurrent.futures import Future

        future = Future()
        future.set_result(None)
        return future if run_as_future else None

    import huggingface_hub

    monkeypatch.setattr(HfApi, "create_repo",
                        lambda self, repo_id, **kw: huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    code = main(["--teacher_model_name_or_path", str(tmp_path / "teacher"), "--train_file",
                 str(tmp_path / "corpus.jsonl"), "--line_by_line", "true", "--output_dir", str(tmp_path / "out"),
                 "--student_num_layers", "2", "--student_hidden_size", "16", "--student_intermediate_size", "32",
                 "--alpha_hidden", "0", "--alpha_intermediate", "1", "--max_steps", "2", "--save_steps", "1",
                 "--max_seq_length", "32", "--use_cpu", "true", "--report_to", "none", "--push_to_hub", "true",
                 "--hub_model_id", "me/tiny", "--hub_token", "hf_x"])
    assert code == 0 and len(pushed) >= 3  # after each of the two saves, and the final push
    assert pushed == [[]] * len(pushed)
    with safe_open(str(tmp_path / "out" / "checkpoint-2" / "model.safetensors"), "pt") as f:
        assert "distil_projections.0.weight" in set(f.keys())  # the checkpoint itself keeps them for resuming


def test_gradient_checkpointing_gives_the_same_gradients_and_reentrant_is_refused(tmp_path):
    teacher = tiny_teacher(layers=4, dropout=0.0)
    student = narrow_student(teacher)
    batch = batch_of(4, seed=3)
    alphas = ALL_TERMS

    def gradients(**kw):
        trainer = DistillationTrainer(model=copy.deepcopy(student), teacher_model=teacher,
                                      args=args_for(tmp_path, **alphas, **kw))
        model = trainer.model
        if kw.get("gradient_checkpointing"):
            model.gradient_checkpointing_enable(kw.get("gradient_checkpointing_kwargs"))
        model.train()
        trainer.compute_loss(model, batch).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(), gradients(gradient_checkpointing=True)
    assert plain.keys() == checkpointed.keys() and any(n.startswith("distil_projections") for n in plain)
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], rtol=1e-4, atol=1e-6), name
    with pytest.raises(ModelMismatchError, match="use_reentrant=True runs each layer's forward without gradients"):
        gradients(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True})


def test_model_init_and_peft_students_are_refused_with_the_layer_terms(tmp_path):
    teacher = tiny_teacher(layers=4)
    with pytest.raises(ArgumentError, match="model_init with alpha_relation > 0 is not supported"):
        DistillationTrainer(model_init=lambda: narrow_student(teacher), teacher_model=teacher,
                            args=args_for(tmp_path, alpha_hidden=0.0, alpha_relation=1.0, relation_heads=2))
    peft = pytest.importorskip("peft")
    adapted = peft.get_peft_model(narrow_student(teacher), peft.LoraConfig(target_modules=["query", "value"]))
    with pytest.raises(ArgumentError, match="trains projections beside the student"):
        DistillationTrainer(model=adapted, teacher_model=teacher,
                            args=args_for(tmp_path, alpha_hidden=0.0, alpha_intermediate=1.0))


def test_a_capture_that_fails_part_way_leaves_no_hook_behind():
    model = tiny_teacher(layers=2)
    with pytest.raises(IndexError):
        capture(model, batch_of(2), torch.arange(2), CaptureSpec(hidden_states=(0,), qk=(5,)))
    assert not model.bert.embeddings._forward_hooks and not model._forward_hooks


def test_unused_layer_settings_are_not_held_against_a_run(tmp_path):
    """A relation-only run needs no layer_map (a deeper student is fine); an attention-only run ignores the
    relation layer."""
    teacher = tiny_teacher(layers=2)
    deeper = narrow_student(teacher, layers=3)
    DistillationTrainer(model=deeper, teacher_model=teacher,
                        args=args_for(tmp_path, **LAYER_ALPHAS, alpha_relation=1.0, relation_heads=2))
    DistillationTrainer(model=narrow_student(teacher, layers=2), teacher_model=teacher,
                        args=args_for(tmp_path, **LAYER_ALPHAS, alpha_attention=1.0, relation_teacher_layer=7))


@pytest.mark.parametrize("spec", [191, "191", ["0:2", 65]])
def test_an_unquoted_yaml_layer_map_says_to_quote_it(tmp_path, spec):
    with pytest.raises(ArgumentError, match="quote the pairs"):
        args_for(tmp_path, layer_map=spec)


def test_a_half_precision_student_feeds_the_float32_projections(tmp_path):
    teacher = tiny_teacher(layers=4, dropout=0.0)
    student = narrow_student(teacher).to(torch.bfloat16)
    values, _ = terms_of(tmp_path, student, teacher, batch_of(2), alpha_intermediate=1.0)
    assert torch.isfinite(values["intermediate"])


def test_width_flags_with_an_existing_student_are_refused(tmp_path, capsys):
    from tiny import write_workspace

    from hf_distil.recipe import main

    write_workspace(tmp_path, n_texts=8)
    code = main(["--teacher_model_name_or_path", str(tmp_path / "teacher"), "--train_file",
                 str(tmp_path / "corpus.jsonl"), "--output_dir", str(tmp_path / "out"), "--student_model_name_or_path",
                 str(tmp_path / "teacher"), "--student_hidden_size", "16", "--use_cpu", "true"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "hf-distil: error: --student_hidden_size 16 shape(s) a student built from the teacher, but "
        "--student_model_name_or_path loads an existing one: drop one of them.")


def test_an_existing_student_of_another_depth_says_the_layer_flags_are_unused(tmp_path, caplog):
    from tiny import write_workspace

    from hf_distil.recipe import main

    write_workspace(tmp_path, n_texts=24)
    create_student(tiny_teacher(), 3, [0, 1, 3]).save_pretrained(tmp_path / "student")
    code = main(["--teacher_model_name_or_path", str(tmp_path / "teacher"), "--train_file",
                 str(tmp_path / "corpus.jsonl"), "--line_by_line", "true", "--output_dir", str(tmp_path / "out"),
                 "--student_model_name_or_path", str(tmp_path / "student"), "--max_steps", "1", "--use_cpu", "true",
                 "--report_to", "none", "--max_seq_length", "32"])
    assert code == 0
    assert "student_num_layers=6 and student_layers are not used: the student loaded from" in caplog.text
    assert "has 3 layers of its own" in caplog.text


def test_recomputing_the_maps_in_backward_gives_the_same_gradients(tmp_path, monkeypatch):
    """The attention and relation maps are recomputed in the backward pass (memory); the gradients stay the same."""
    import hf_distil.terms.attention as attention
    import hf_distil.terms.base as base
    import hf_distil.terms.relation as relation

    teacher = tiny_teacher(layers=4, dropout=0.0)
    student = narrow_student(teacher)
    batch = batch_of(4, seed=3)

    calls = []

    def counted(original):
        return lambda *a: calls.append(1) or original(*a)

    for module, name in ((attention, "masked_scaled_dot_scores"), (relation, "scaled_dot_log_probs")):
        monkeypatch.setattr(module, name, counted(getattr(module, name)))

    def gradients(recompute):
        monkeypatch.setattr(base, "RECOMPUTE_MAPS", recompute)
        trainer = DistillationTrainer(model=copy.deepcopy(student), teacher_model=teacher,
                                      args=args_for(tmp_path, **ALL_TERMS))
        trainer.model.train()
        calls.clear()
        trainer.compute_loss(trainer.model, batch).backward()
        return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}, len(calls)

    (kept, kept_calls), (recomputed, recomputed_calls) = gradients(False), gradients(True)
    # 2 attention pairs + 3 relations, 2 maps each; recomputing runs them all again in backward
    assert (kept_calls, recomputed_calls) == (10, 20)
    assert kept.keys() == recomputed.keys()
    for name in kept:
        assert torch.allclose(kept[name], recomputed[name], rtol=1e-5, atol=1e-7), name
