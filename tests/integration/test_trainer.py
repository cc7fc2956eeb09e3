"""DistillationTrainer: the objective to the formula, sparse = dense, accumulation, drop-in, lifecycle."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from tiny import StopAt, args_for, batch_of, premasked_dataset, text_dataset, tiny_teacher
from transformers import (
    DataCollatorForLanguageModeling,
    RobertaConfig,
    RobertaForMaskedLM,
    Trainer,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

from hf_distil import DistillationArguments, DistillationTrainer, create_student
from hf_distil.collator import ReproducibleMLMCollator
from hf_distil.errors import ArgumentError, ModelMismatchError


def pair(dropout=0.0, seed=0):
    teacher = tiny_teacher(seed=seed, dropout=dropout)
    return teacher, create_student(teacher, 2)


def hand_objective(student, teacher, batch, a):
    """The DESIGN.md objective written out densely, with per-batch means."""
    s_out = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    with torch.no_grad():
        t_out = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        output_hidden_states=True)
    labels, attention = batch["labels"], batch["attention_mask"].bool()
    masked = labels != -100
    P = masked if a.kd_positions == "masked" else attention
    T = a.temperature
    kd = F.kl_div(F.log_softmax(s_out.logits[P] / T, -1), F.softmax(t_out.logits[P] / T, -1),
                  reduction="batchmean") * T * T
    mlm = F.cross_entropy(s_out.logits[masked], labels[masked])
    hs, ht = s_out.hidden_states[-1][attention], t_out.hidden_states[-1][attention]
    hidden = (1 - F.cosine_similarity(hs, ht, dim=-1)).mean() if a.hidden_loss == "cosine" else F.mse_loss(hs, ht)
    return a.alpha_kd * kd + a.alpha_mlm * mlm + a.alpha_hidden * hidden, {"kd": kd, "mlm": mlm, "hidden": hidden}


@pytest.mark.parametrize("kd_positions", ["masked", "all"])
@pytest.mark.parametrize("hidden_loss", ["cosine", "mse"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_loss_equals_the_formula(tmp_path, kd_positions, hidden_loss, temperature):
    teacher, student = pair()
    a = args_for(tmp_path, kd_positions=kd_positions, hidden_loss=hidden_loss, temperature=temperature,
                 alpha_kd=5.0, alpha_mlm=2.0, alpha_hidden=1.0)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=a)
    batch = batch_of()
    student.eval()  # no dropout, per-batch means
    loss, terms = trainer.compute_loss(student, batch, return_outputs=True)
    expected, parts = hand_objective(student, teacher, batch, a)
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-6)
    for name in ("kd", "mlm", "hidden"):
        assert torch.allclose(terms[name], parts[name], rtol=1e-5, atol=1e-6), name
    assert parts["kd"] > 0 and parts["hidden"] > 0


def test_zero_weight_terms_are_not_computed_and_teacher_not_run(tmp_path):
    teacher, student = pair()
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    a = args_for(tmp_path, alpha_kd=0.0, alpha_hidden=0.0, alpha_mlm=1.0)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=a)
    student.eval()
    loss, terms = trainer.compute_loss(student, batch_of(), return_outputs=True)
    assert set(terms) == {"mlm"} and not calls
    a2 = args_for(tmp_path, alpha_kd=1.0, alpha_hidden=0.0, alpha_mlm=0.0)
    loss2, terms2 = DistillationTrainer(model=student, teacher_model=teacher, args=a2).compute_loss(
        student, batch_of(), return_outputs=True)
    assert set(terms2) == {"kd"} and calls and torch.allclose(loss2, terms2["kd"])


def _loss_and_grads(trainer, student, batch):
    student.zero_grad()
    loss = trainer.compute_loss(student, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("kd_positions", ["masked", "all"])
def test_sparse_heads_give_the_dense_loss_and_gradients(tmp_path, family, kd_positions):
    if family == "bert":
        teacher, student = pair()
    else:
        torch.manual_seed(0)
        teacher = RobertaForMaskedLM(RobertaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=4,
                                                   num_attention_heads=2, intermediate_size=64,
                                                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                                   pad_token_id=1))
        student = create_student(teacher, 2)
    args = args_for(tmp_path, kd_positions=kd_positions)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)
    batch = batch_of(6, seed=3)
    trainer.sparse_heads = True
    sparse_loss, sparse_grads = _loss_and_grads(trainer, student, batch)
    trainer.sparse_heads = False
    dense_loss, dense_grads = _loss_and_grads(trainer, student, batch)
    assert torch.allclose(sparse_loss, dense_loss, rtol=1e-5, atol=1e-6)
    assert sparse_grads.keys() == dense_grads.keys() and len(sparse_grads) > 10
    for name in dense_grads:
        assert torch.allclose(sparse_grads[name], dense_grads[name], rtol=1e-4, atol=1e-6), name


def test_sparse_head_really_skips_unselected_rows(tmp_path):
    teacher, student = pair()
    shapes = []
    student.cls.predictions.decoder.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args_for(tmp_path))
    batch = batch_of()
    trainer.compute_loss(student, batch)
    assert shapes == [(int((batch["labels"] != -100).sum()), 64)]


def test_unknown_architecture_falls_back_to_the_full_forward(tmp_path):
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    torch.manual_seed(0)
    cfg = DistilBertConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, hidden_dim=64, dropout=0.0,
                           attention_dropout=0.0, max_position_embeddings=64)
    teacher, student = DistilBertForMaskedLM(cfg), DistilBertForMaskedLM(cfg)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args_for(tmp_path))
    batch = {k: v for k, v in batch_of().items()}
    loss_sparse, _ = _loss_and_grads(trainer, student, batch)
    trainer.sparse_heads = False
    loss_dense, _ = _loss_and_grads(trainer, student, batch)
    assert torch.isfinite(loss_sparse) and torch.allclose(loss_sparse, loss_dense)


def _train(tmp_path, name, model, teacher, dataset, **kw):
    a = args_for(tmp_path / name, **kw)
    trainer = DistillationTrainer(model=model, teacher_model=teacher, args=a, train_dataset=dataset,
                                  data_collator=default_data_collator)
    trainer.train()
    return trainer


@pytest.mark.parametrize("kd_positions", ["masked", "all"])
def test_gradient_accumulation_equals_one_big_batch(tmp_path, kd_positions):
    data = premasked_dataset(8, seed=1)
    counts = [sum(1 for x in data[i]["labels"] if x != -100) for i in range(8)]
    assert sum(counts[:4]) != sum(counts[4:])  # micro-batches hold different numbers of masked tokens
    teacher, student = pair()
    one = _train(tmp_path, "one", copy.deepcopy(student), teacher, data, per_device_train_batch_size=8,
                 gradient_accumulation_steps=1, max_steps=1, kd_positions=kd_positions, optim="sgd",
                 lr_scheduler_type="constant")
    acc = _train(tmp_path, "acc", copy.deepcopy(student), teacher, data, per_device_train_batch_size=4,
                 gradient_accumulation_steps=2, max_steps=1, kd_positions=kd_positions, optim="sgd",
                 lr_scheduler_type="constant")
    moved = 0.0
    for (n, p1), p2, p0 in zip(one.model.named_parameters(), acc.model.parameters(), student.parameters()):
        assert torch.allclose(p1, p2, rtol=1e-5, atol=1e-7), n
        moved += float((p1 - p0).detach().abs().sum())
    assert moved > 1e-3
    assert math.isclose(one.state.log_history[0]["train_loss"], acc.state.log_history[0]["train_loss"], rel_tol=1e-5)
    # after train(), compute_loss on a batch (even in train mode) is its own per-batch mean again
    assert acc.objective.window_counts is None


def test_drop_in_equivalence_with_trainer(tmp_path, tokenizer):
    """Teacher terms weighted 0: same weights as the stock Trainer after several steps, dropout on."""
    data = text_dataset(tokenizer, 48)
    collator = DataCollatorForLanguageModeling(tokenizer)
    teacher = tiny_teacher(dropout=0.1, initializer_range=0.02)
    start = create_student(teacher, 2)
    common = dict(report_to=[], use_cpu=True, save_strategy="no", per_device_train_batch_size=8, max_steps=6,
                  learning_rate=1e-3, seed=7, disable_tqdm=True, logging_steps=2)
    set_seed(7)
    ours = DistillationTrainer(model=copy.deepcopy(start), teacher_model=teacher,
                               args=DistillationArguments(output_dir=str(tmp_path / "a"), alpha_kd=0.0,
                                                          alpha_hidden=0.0, alpha_mlm=1.0, **common),
                               train_dataset=data, data_collator=collator, processing_class=tokenizer)
    ours.train()
    set_seed(7)
    stock = Trainer(model=copy.deepcopy(start), args=TrainingArguments(output_dir=str(tmp_path / "b"), **common),
                    train_dataset=data, data_collator=collator, processing_class=tokenizer)
    stock.train()
    for (n, p1), p2, _ in zip(ours.model.named_parameters(), stock.model.parameters(), start.parameters()):
        if n.endswith("key.bias"):
            continue  # its gradient is 0 in exact arithmetic (softmax shift); AdamW magnifies float noise there
        assert torch.allclose(p1, p2, rtol=1e-4, atol=1e-6), n
    assert not torch.equal(ours.model.bert.encoder.layer[0].output.dense.weight,
                           start.bert.encoder.layer[0].output.dense.weight)
    ours_losses = [h["loss"] for h in ours.state.log_history if "loss" in h]
    stock_losses = [h["loss"] for h in stock.state.log_history if "loss" in h]
    assert ours_losses == pytest.approx(stock_losses, rel=1e-4)


def test_terms_are_logged_and_combine_to_the_loss(tmp_path, tokenizer):
    data = text_dataset(tokenizer, 32)
    teacher, student = pair(dropout=0.1)
    a = args_for(tmp_path, max_steps=4, logging_steps=2, per_device_train_batch_size=8)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=a, train_dataset=data,
                                  data_collator=DataCollatorForLanguageModeling(tokenizer), processing_class=tokenizer)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for h in logs:
        combined = 5.0 * h["kd_loss"] + 2.0 * h["mlm_loss"] + 1.0 * h["hidden_loss"]
        assert math.isclose(h["loss"], combined, rel_tol=1e-4)
        assert h["kd_loss"] > 0 and h["mlm_loss"] > 0 and h["hidden_loss"] > 0


def test_teacher_frozen_in_eval_mode_and_never_saved(tmp_path, tokenizer):
    data = text_dataset(tokenizer, 32)
    teacher, student = pair(dropout=0.1)
    before = {n: p.clone() for n, p in teacher.named_parameters()}
    a = args_for(tmp_path, max_steps=4, save_strategy="steps", save_steps=2, per_device_train_batch_size=8)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=a, train_dataset=data,
                                  data_collator=DataCollatorForLanguageModeling(tokenizer), processing_class=tokenizer)
    trainer.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(p, before[n]) for n, p in teacher.named_parameters())
    optimizer_params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not optimizer_params & {id(p) for p in teacher.parameters()}
    trainer.save_model(str(tmp_path / "final"))
    student_keys = set(student.state_dict())
    for folder in (tmp_path / "out" / "checkpoint-2", tmp_path / "out" / "checkpoint-4", tmp_path / "final"):
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            keys = set(f.keys())
        assert keys <= student_keys and not any(k.startswith("bert.encoder.layer.2") for k in keys)
        config = json.loads((folder / "config.json").read_text())
        assert config["num_hidden_layers"] == 2 and config["distil_teacher_layers"] == [1, 3]


def test_teacher_dropout_stays_off_even_if_switched_on(tmp_path):
    teacher, student = pair(dropout=0.5)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args_for(tmp_path))
    teacher.train()
    student.eval()
    batch = batch_of()
    first = trainer.compute_loss(student, batch)
    second = trainer.compute_loss(student, batch)
    assert torch.equal(first, second) and not teacher.training


def test_resume_from_checkpoint_reaches_the_same_weights(tmp_path, tokenizer):
    """Masks seeded per batch (ReproducibleMLMCollator) + Trainer's RNG restore: an exact continuation."""
    data = text_dataset(tokenizer, 48)
    collator = ReproducibleMLMCollator(tokenizer, seed=1)
    teacher, student = pair(dropout=0.1)

    def run(name, max_steps, resume=None, output=None):
        a = args_for(tmp_path, output_dir=str(output or tmp_path / name), max_steps=6, save_strategy="steps",
                     save_steps=3, per_device_train_batch_size=8)
        trainer = DistillationTrainer(model=copy.deepcopy(student), teacher_model=teacher, args=a,
                                      train_dataset=data, data_collator=collator, processing_class=tokenizer)
        if max_steps < 6:
            trainer.add_callback(StopAt(max_steps))
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run("full", 6)
    run("cut", 3)
    resumed = run("cut", 6, resume=str(tmp_path / "cut" / "checkpoint-3"))
    for (n, p1), p2 in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p1, p2), n


def test_evaluation_streams_the_metrics(tmp_path):
    teacher, student = pair()
    data = premasked_dataset(12, seed=5)
    a = args_for(tmp_path, per_device_eval_batch_size=5)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=a, eval_dataset=data,
                                  data_collator=default_data_collator)
    metrics = trainer.evaluate()
    full = default_data_collator([data[i] for i in range(12)])
    student.eval()
    with torch.no_grad():
        _, parts = hand_objective(student, teacher, full, a)
        s_logits = student(input_ids=full["input_ids"], attention_mask=full["attention_mask"]).logits
        t_logits = teacher(input_ids=full["input_ids"], attention_mask=full["attention_mask"]).logits
    masked = full["labels"] != -100
    accuracy = float((s_logits.argmax(-1)[masked] == full["labels"][masked]).float().mean())
    agreement = float((s_logits.argmax(-1)[masked] == t_logits.argmax(-1)[masked]).float().mean())
    assert metrics["eval_kd_loss"] == pytest.approx(float(parts["kd"]), rel=1e-4)
    assert metrics["eval_mlm_loss"] == pytest.approx(float(parts["mlm"]), rel=1e-4)
    assert metrics["eval_hidden_loss"] == pytest.approx(float(parts["hidden"]), rel=1e-4)
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_mlm_loss"]), rel=1e-6)
    assert metrics["eval_accuracy"] == pytest.approx(accuracy)
    assert metrics["eval_teacher_agreement"] == pytest.approx(agreement)
    assert metrics["eval_loss"] == pytest.approx(5 * metrics["eval_kd_loss"] + 2 * metrics["eval_mlm_loss"]
                                                 + metrics["eval_hidden_loss"], rel=1e-6)
    # a student identical to its teacher agrees everywhere and has no KL
    clone = create_student(teacher, 4, [0, 1, 2, 3])
    same = DistillationTrainer(model=clone, teacher_model=teacher, args=a, eval_dataset=data,
                               data_collator=default_data_collator).evaluate()
    assert same["eval_teacher_agreement"] == 1.0 and same["eval_kd_loss"] < 1e-5
    assert metrics["eval_kd_loss"] > 1e-2 and metrics["eval_teacher_agreement"] < 1.0
    # predict still returns the student's logits
    out = trainer.predict(data.select(range(3)))
    assert out.predictions.shape == (3, 16, 64) and "test_kd_loss" in out.metrics


def test_vocabulary_and_width_mismatches_fail_before_training(tmp_path, tokenizer):
    teacher = tiny_teacher()
    other = tiny_teacher(vocab=80)
    with pytest.raises(ValueError, match=r"Teacher vocabulary \(64\) and student vocabulary \(80\)"):
        DistillationTrainer(model=other, teacher_model=teacher, args=args_for(tmp_path))
    narrow = tiny_teacher(hidden=16, layers=2)
    with pytest.raises(ValueError, match="hidden size is 32 and the student's 16"):
        DistillationTrainer(model=narrow, teacher_model=teacher, args=args_for(tmp_path))
    DistillationTrainer(model=narrow, teacher_model=teacher, args=args_for(tmp_path, alpha_hidden=0.0))
    odd = tiny_teacher(vocab=70)
    with pytest.raises(ValueError, match="tokenizer has 64 tokens but the student's vocabulary has 70"):
        DistillationTrainer(model=create_student(odd, 2), teacher_model=odd, args=args_for(tmp_path),
                            processing_class=tokenizer)
    padded = tiny_teacher(vocab=72)  # embeddings padded to a multiple of 8 beyond the tokenizer: allowed
    DistillationTrainer(model=create_student(padded, 2), teacher_model=padded, args=args_for(tmp_path),
                        processing_class=tokenizer)


def test_teacher_from_a_path_and_clear_errors(tmp_path):
    teacher = tiny_teacher()
    teacher.save_pretrained(tmp_path / "teacher")
    student = create_student(teacher, 2)
    a = args_for(tmp_path, teacher_model_name_or_path=str(tmp_path / "teacher"), teacher_dtype="bfloat16")
    trainer = DistillationTrainer(model=student, args=a)
    assert trainer.teacher.dtype == torch.bfloat16 and not trainer.teacher.training
    assert not any(p.requires_grad for p in trainer.teacher.parameters())
    assert torch.isfinite(trainer.compute_loss(student, batch_of()))
    with pytest.raises(FileNotFoundError, match="no/such/teacher"):
        DistillationTrainer(model=student, args=args_for(tmp_path, teacher_model_name_or_path="no/such/teacher"))
    with pytest.raises(ValueError, match="No teacher"):
        DistillationTrainer(model=student, args=args_for(tmp_path))
    with pytest.raises(TypeError, match="DistillationArguments"):
        DistillationTrainer(model=student, teacher_model=teacher, args=TrainingArguments(output_dir="x"))


def test_saved_folder_is_hub_ready_and_runs_fill_mask(tmp_path, tokenizer):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    data = text_dataset(tokenizer, 32)
    teacher, student = pair(dropout=0.1)
    a = args_for(tmp_path, max_steps=4, logging_steps=2, per_device_train_batch_size=8, eval_strategy="steps",
                 eval_steps=2, hub_token="hf_FAKEtoken123")
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=a, train_dataset=data,
                                  eval_dataset=data, data_collator=ReproducibleMLMCollator(tokenizer, seed=0),
                                  processing_class=tokenizer)
    trainer.train()
    trainer.save_model()
    trainer.create_model_card()
    out = tmp_path / "out"
    saved = json.loads((out / "distillation_args.json").read_text())
    assert saved["alpha_kd"] == 5.0 and saved["temperature"] == 2.0
    for name in ("README.md", "distillation_args.json", "config.json"):
        assert "hf_FAKEtoken123" not in (out / name).read_text()
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "fill-mask"
    assert "layers 1, 3" in card.text and (out / "loss_terms.png").exists()
    last_eval = [h for h in trainer.state.log_history if "eval_accuracy" in h][-1]
    assert f"| {round(last_eval['eval_perplexity'], 4)} |" in card.text
    model = AutoModelForMaskedLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == 2 and not (out / "pytorch_model.bin").exists()
    fill = pipeline("fill-mask", model=model, tokenizer=tok, top_k=3)
    guesses = fill("w1 w2 [MASK] w4")
    assert len(guesses) == 3 and all(g["token_str"].startswith("w") or g["token_str"].startswith("[")
                                     for g in guesses)


def test_half_precision_teacher_keeps_the_kl_in_float32(tmp_path):
    teacher, student = pair()
    batch = batch_of(6, seed=2)
    student.eval()
    exact = DistillationTrainer(model=student, teacher_model=copy.deepcopy(teacher),
                                args=args_for(tmp_path, alpha_mlm=0.0, alpha_hidden=0.0))
    half = DistillationTrainer(model=student, teacher_model=copy.deepcopy(teacher),
                               args=args_for(tmp_path, alpha_mlm=0.0, alpha_hidden=0.0, teacher_dtype="bfloat16"))
    assert half.teacher.dtype == torch.bfloat16
    _, terms = half.compute_loss(student, batch, return_outputs=True)
    _, reference = exact.compute_loss(student, batch, return_outputs=True)
    assert terms["kd"].dtype == torch.float32
    assert torch.allclose(terms["kd"], reference["kd"], rtol=5e-2)


def test_student_of_a_half_precision_teacher_is_float32():
    teacher = tiny_teacher().to(torch.bfloat16)
    student = create_student(teacher, 2)
    assert {p.dtype for p in student.parameters()} == {torch.float32}
    assert torch.equal(student.bert.encoder.layer[0].output.dense.weight,
                       teacher.bert.encoder.layer[1].output.dense.weight.float())


def test_half_precision_student_is_refused_under_mixed_precision(tmp_path, caplog):
    teacher, student = pair()
    student.to(torch.bfloat16)
    with pytest.raises(ModelMismatchError, match="float32 master weights") as err:
        DistillationTrainer(model=student, teacher_model=teacher, args=args_for(tmp_path, bf16=True))
    assert "create_student" in str(err.value)
    with caplog.at_level("WARNING", logger="hf_distil"):  # pure bf16 without --bf16: allowed, but said
        DistillationTrainer(model=student, teacher_model=teacher, args=args_for(tmp_path))
    assert "without float32 master" in caplog.text


def test_nan_skip_is_refused_under_deepspeed(tmp_path):
    with pytest.raises(ArgumentError, match="nan_policy='skip'"):
        args_for(tmp_path, nan_policy="skip", deepspeed={"zero_optimization": {"stage": 2}})


def test_card_reports_the_metrics_and_batch_of_what_was_saved(tmp_path):
    teacher, student = pair()
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args_for(tmp_path))
    trainer.state.global_step, trainer.state.train_batch_size = 4, 2  # e.g. auto_find_batch_size halved it
    trainer.state.log_history = [{"step": 2, "eval_loss": 1.2345, "eval_accuracy": 0.5}]
    trainer.create_model_card()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "1.2345" not in card  # an evaluation of step 2 says nothing of the weights of step 4
    assert "2 per device × 1 device(s) × 1 accumulation step(s) = 2 in total" in card
    trainer.state.log_history.append({"step": 4, "eval_loss": 0.9876, "eval_accuracy": 0.625})
    trainer.create_model_card()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "0.9876" in card and "1.2345" not in card


def test_a_teacher_load_bug_keeps_its_own_error(monkeypatch):
    """Only "no masked-LM class for this config" becomes the one-line teacher error; another ValueError is a bug."""
    from transformers import AutoModelForMaskedLM

    from hf_distil.trainer import load_teacher

    def broken(*args, **kwargs):
        raise ValueError("something deep inside went wrong")

    monkeypatch.setattr(AutoModelForMaskedLM, "from_pretrained", broken)
    with pytest.raises(ValueError) as err:
        load_teacher("some/teacher", DistillationArguments(output_dir="unused", report_to=[], use_cpu=True))
    assert type(err.value) is ValueError and "deep inside" in str(err.value)


def test_resume_warns_only_about_weights_that_are_really_missing(tmp_path, monkeypatch):
    """A checkpoint holds no tied weights (the MLM decoder is the word embeddings): transformers' resume warned that
    they were missing; they are tied again, and only other missing keys reach the warning."""
    from torch.nn.modules.module import _IncompatibleKeys
    from transformers import Trainer

    teacher, student = pair()
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args_for(tmp_path, max_steps=1))
    seen = []
    monkeypatch.setattr(Trainer, "_issue_warnings_after_load", lambda self, result: seen.append(result))
    decoder = student.cls.predictions.decoder
    decoder.weight = torch.nn.Parameter(torch.zeros_like(decoder.weight))  # untied, as a bare state dict leaves it
    tied = ["cls.predictions.decoder.weight", "cls.predictions.decoder.bias"]
    trainer._issue_warnings_after_load(_IncompatibleKeys(tied + ["bert.pooler.dense.weight"], []))
    assert seen[0].missing_keys == ["bert.pooler.dense.weight"] and seen[0].unexpected_keys == []
    assert student.cls.predictions.decoder.weight is student.bert.embeddings.word_embeddings.weight  # tied again


def test_training_without_labels_in_the_batches_names_the_collator_to_use(tmp_path):
    """An API user with a collator that makes no labels: one message naming the MLM collator, not KeyError."""
    from datasets import Dataset
    from tiny import args_for, tiny_teacher

    teacher = tiny_teacher()
    data = Dataset.from_dict({"input_ids": [[2, 5, 6, 7, 3]] * 8, "attention_mask": [[1] * 5] * 8})
    trainer = DistillationTrainer(model=create_student(teacher, 2), teacher_model=teacher,
                                  args=args_for(tmp_path, max_steps=1), train_dataset=data,
                                  data_collator=default_data_collator)
    with pytest.raises(ValueError, match=r"needs labels in each batch .*DataCollatorForLanguageModeling"):
        trainer.train()
