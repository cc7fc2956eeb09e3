"""End-to-end recipe runs offline on a tiny teacher, and every user error as one line before training."""

import json
import os

import pytest
import yaml
from hub_fake import files_containing, go_online, pickles, record_uploads, tree_containing
from tiny import ROOT, free_port, write_recipe_config, write_workspace
from transformers import AutoModelForMaskedLM, AutoTokenizer, BertTokenizerFast, pipeline

from hf_distil import build, recipe
from hf_distil import config as hf_config
from hf_distil.checkpoints import latest_complete_checkpoint
from hf_distil.recipe import main, parse_arguments

FIXTURES = str(ROOT / "tests" / "fixtures")


@pytest.fixture
def workspace(tmp_path):
    """A saved tiny teacher with its tokenizer, a jsonl corpus, and a base config."""
    write_workspace(tmp_path)
    write_recipe_config(tmp_path, per_device_eval_batch_size=16, max_steps=6, logging_steps=2, eval_strategy="steps",
                        eval_steps=3, save_strategy="steps", save_steps=3, learning_rate=1e-3, seed=3)
    return tmp_path


def test_end_to_end_writes_a_hub_ready_folder(workspace, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_FAKEenvToken999")
    code = main([str(workspace / "config.yaml"), "--hub_token", "hf_FAKEcliToken777"])
    assert code == 0
    out = workspace / "out"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "distillation_args.json", "all_results.json", "README.md", "loss_terms.png"):
        assert (out / name).exists(), name
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))
    results = json.loads((out / "all_results.json").read_text())
    for key in ("eval_loss", "eval_kd_loss", "eval_mlm_loss", "eval_hidden_loss", "eval_perplexity",
                "eval_accuracy", "eval_teacher_agreement", "init_teacher_agreement", "train_loss"):
        assert key in results, key
    model = AutoModelForMaskedLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 2 and model.config.distil_teacher_layers == [1, 3]
    fill = pipeline("fill-mask", model=model, tokenizer=AutoTokenizer.from_pretrained(out), top_k=2)
    assert len(fill("w1 w2 [MASK] w3")) == 2
    card = (out / "README.md").read_text()
    assert "corpus.jsonl" in card and "every other layer" in card
    corpus_line = (workspace / "corpus.jsonl").read_text().splitlines()[0]
    assert json.loads(corpus_line)["text"] not in card
    printed = capsys.readouterr()
    assert "hf-distil summary" in printed.out and "teacher agreement" in printed.out
    for path in out.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert b"hf_FAKEcliToken777" not in blob and b"hf_FAKEenvToken999" not in blob, path
    assert "hf_FAKEcliToken777" not in printed.out + printed.err


def test_flags_override_the_config_and_unknown_keys_fail(workspace):
    model_args, data_args, train_args, run_args = parse_arguments(
        [str(workspace / "config.yaml"), "--temperature", "3", "--student_layers", "0,3"])
    assert train_args.temperature == 3.0 and model_args.student_layers == "0,3"
    assert train_args.teacher_model_name_or_path == str(workspace / "teacher")
    assert data_args.max_seq_length == 32 and train_args.max_steps == 6
    bad = yaml.safe_load((workspace / "config.yaml").read_text())
    bad["alpha_kl"] = 1.0
    (workspace / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(recipe.RecipeError, match="Unknown key 'alpha_kl'.*Did you mean 'alpha_kd'"):
        parse_arguments([str(workspace / "bad.yaml")])
    with pytest.raises(recipe.RecipeError, match="Unknown flag '--temprature'.*--temperature"):
        parse_arguments([str(workspace / "config.yaml"), "--temprature", "3"])
    # every spelling HfArgumentParser accepts: dashes, --no_ booleans
    _, _, dashed, run_args = parse_arguments([str(workspace / "config.yaml"), "--per-device-train-batch-size", "2",
                                              "--no_evaluate_before_training"])
    assert dashed.per_device_train_batch_size == 2 and run_args.evaluate_before_training is False


def test_yaml_lists_and_booleans(workspace):
    config = yaml.safe_load((workspace / "config.yaml").read_text())
    config.update(student_layers=[0, 3], card_language=["en", "fr"], resume_from_checkpoint=True)
    (workspace / "lists.yaml").write_text(yaml.safe_dump(config))
    model_args, _, train_args, run_args = parse_arguments([str(workspace / "lists.yaml")])
    assert build.parse_layers(model_args.student_layers) == [0, 3]
    assert hf_config.codes(run_args.card_language) == ["en", "fr"]
    assert recipe.resolve_resume(train_args, run_args) is None  # True means auto; nothing to resume yet


def _error_of(capsys, argv):
    code = main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if "hf-distil: error:" in line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("hf-distil: error:"), lines
    return lines[0]


def test_user_errors_are_one_line_before_training(workspace, capsys):
    cfg = str(workspace / "config.yaml")
    assert "No output_dir" in _error_of(capsys, ["--teacher_model_name_or_path", "x"])
    err = _error_of(capsys, [cfg, "--train_file", str(workspace / "missing.txt")])
    assert "missing.txt" in err
    err = _error_of(capsys, [cfg, "--teacher_model_name_or_path", str(workspace / "nowhere")])
    assert "nowhere" in err and "could not be loaded" in err
    err = _error_of(capsys, [cfg, "--text_column", "body"])
    assert "body" in err and "text" in err  # names the missing column and the columns found
    (workspace / "empty.txt").write_text("\n\n")
    err = _error_of(capsys, [cfg, "--train_file", str(workspace / "empty.txt")])
    assert "empty" in err.lower()
    err = _error_of(capsys, [cfg, "--student_layers", "0,9"])
    assert "out of range" in err
    err = _error_of(capsys, [cfg, "--student_num_layers", "6"])
    assert "--student_num_layers 6 (the default) is deeper than the teacher" in err
    err = _error_of(capsys, [cfg, "--student_num_layers", "7"])
    assert "--student_num_layers 7 is deeper than the teacher (4 layers): pass --student_num_layers 4 or fewer." in err
    other = BertTokenizerFast(vocab=str(workspace / "vocab.txt"))
    other.add_tokens(["extra1", "extra2", "extra3"])
    other.save_pretrained(workspace / "other_tok")
    err = _error_of(capsys, [cfg, "--tokenizer_name", str(workspace / "other_tok")])
    assert "67 tokens" in err and "64" in err
    assert not (workspace / "out").exists()  # nothing trained, nothing written


def test_non_empty_output_dir_needs_resume_or_overwrite(workspace, capsys):
    (workspace / "out").mkdir()
    (workspace / "out" / "notes.txt").write_text("keep me")
    err = _error_of(capsys, [str(workspace / "config.yaml")])
    assert "not empty" in err and "--overwrite_output_dir" in err and "resume_from_checkpoint auto" in err
    (workspace / "out" / "checkpoint-500").mkdir()  # a previous run's: must not mix with the new one's
    assert main([str(workspace / "config.yaml"), "--overwrite_output_dir", "true", "--max_steps", "2",
                 "--save_steps", "2"]) == 0
    assert sorted(p.name for p in (workspace / "out").glob("checkpoint-*")) == ["checkpoint-2"]


def test_latest_complete_checkpoint_skips_half_written_ones(tmp_path):
    import torch
    from safetensors.torch import save_file

    for step, complete in ((3, True), (6, True), (9, False), (12, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        save_file({"w": torch.ones(2)}, str(folder / "model.safetensors"))
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
            torch.save({"step": step}, folder / name)
        if complete:
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        elif step == 12:
            (folder / "trainer_state.json").write_text('{"global_st')  # killed mid-write
    (tmp_path / "checkpoint-abc").mkdir()
    assert latest_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-6")
    assert latest_complete_checkpoint(str(tmp_path / "none")) is None


def test_noteevents_corpus_end_to_end(workspace):
    noteevents = os.path.join(FIXTURES, "noteevents_sample.csv")
    if not os.path.exists(noteevents):
        pytest.skip("NOTEEVENTS fixture absent")
    code = main([str(workspace / "config.yaml"), "--train_file", noteevents, "--max_steps", "2",
                 "--eval_strategy", "no", "--save_strategy", "no", "--validation_split_percentage", "20"])
    assert code == 0
    card = (workspace / "out" / "README.md").read_text()
    assert "MIMIC-III" in card and "PhysioNet" in card


def test_push_to_hub_is_private_by_default(workspace, monkeypatch):
    seen = {}

    def fake_init_repo(self, token=None, private=None):
        seen["private"] = self.args.hub_private_repo
        self.hub_model_id = "me/distilled"

    def fake_push(self, *args, **kwargs):
        seen["pushed"] = True
        self.create_model_card()

    monkeypatch.setattr(recipe.DistillationTrainer, "init_hf_repo", fake_init_repo)
    monkeypatch.setattr(recipe.DistillationTrainer, "push_to_hub", fake_push)
    go_online(monkeypatch)  # push_to_hub is refused offline or without a token
    base = [str(workspace / "config.yaml"), "--push_to_hub", "true", "--hub_model_id", "me/distilled",
            "--max_steps", "2", "--save_strategy", "no"]
    assert main(base) == 0
    assert seen == {"private": True, "pushed": True}
    assert main(base + ["--hub_private_repo", "false", "--overwrite_output_dir", "true"]) == 0
    assert seen["private"] is False


def test_no_validation_split_trains_without_evaluation_and_writes_the_full_folder(workspace, capsys, caplog):
    """--validation_split_percentage 0 with a config asking eval_strategy steps: evaluation off with a warning."""
    code = main([str(workspace / "config.yaml"), "--validation_split_percentage", "0", "--max_steps", "2",
                 "--save_strategy", "no"])
    assert code == 0
    out = workspace / "out"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "README.md", "all_results.json"):
        assert (out / name).exists(), name
    results = json.loads((out / "all_results.json").read_text())
    assert "train_loss" in results and not any(key.startswith(("eval_", "init_")) for key in results)
    assert "No evaluation metrics were recorded" in (out / "README.md").read_text()
    assert "evaluation is off (eval_strategy was steps)" in caplog.text
    assert "(no validation data: nothing evaluated)" in capsys.readouterr().out
    err = _error_of(capsys, [str(workspace / "config.yaml"), "--validation_split_percentage", "0",
                             "--load_best_model_at_end", "true", "--output_dir", str(workspace / "best")])
    assert "No validation data, but --load_best_model_at_end needs evaluation: pass --validation_file" in err


def test_a_card_trained_on_noteevents_gets_no_open_licence_unless_one_is_given(workspace, capsys):
    """MIMIC-III's agreement decides how a model trained on it may be shared: the card says license: other (its
    data-use section says why) unless --card_license sets one; other corpora keep apache-2.0."""
    from huggingface_hub import ModelCard
    from tiny import noteevents_csv

    notes = noteevents_csv(workspace / "NOTEEVENTS.csv", n=60)
    base = [str(workspace / "config.yaml"), "--train_file", str(notes), "--max_steps", "1", "--save_strategy", "no",
            "--eval_strategy", "no", "--evaluate_before_training", "false"]
    assert main(base + ["--output_dir", str(workspace / "mimic")]) == 0
    card = ModelCard.load(workspace / "mimic" / "README.md")
    assert card.data.license == "other" and "PhysioNet Credentialed Health Data Use Agreement" in card.text
    assert main(base + ["--output_dir", str(workspace / "mit"), "--card_license", "mit"]) == 0
    assert ModelCard.load(workspace / "mit" / "README.md").data.license == "mit"
    assert main([str(workspace / "config.yaml"), "--max_steps", "1", "--save_strategy", "no", "--eval_strategy", "no",
                 "--evaluate_before_training", "false", "--output_dir", str(workspace / "open")]) == 0
    assert ModelCard.load(workspace / "open" / "README.md").data.license == "apache-2.0"


def test_card_recognises_noteevents_as_saved_anywhere_it_is_used(tmp_path):
    """BOM + upper-case .CSV in a nested folder, or NOTEEVENTS given only as validation_file: the data-use note."""
    from hf_distil.data import DataArguments

    fixture = open(os.path.join(FIXTURES, "noteevents_sample.csv"), "rb").read()
    (tmp_path / "mimic" / "v1.4").mkdir(parents=True)
    (tmp_path / "mimic" / "v1.4" / "NOTEEVENTS.CSV").write_bytes(b"\xef\xbb\xbf" + fixture)
    (tmp_path / "other.txt").write_text("plain text\n")
    for kwargs in ({"train_file": str(tmp_path / "mimic")},
                   {"train_file": str(tmp_path / "other.txt"), "validation_file": str(tmp_path / "mimic")}):
        name, ids, note = recipe.describe_dataset(DataArguments(**kwargs))
        assert name == "MIMIC-III clinical notes (NOTEEVENTS)" and ids is None and note == recipe.MIMIC_DATA_USE_NOTE
    assert recipe.describe_dataset(DataArguments(train_file=str(tmp_path / "other.txt"))) == ("other.txt", None, None)


def test_broken_config_files_name_the_file_and_line(workspace, capsys):
    bad_yaml = workspace / "bad.yaml"
    bad_yaml.write_text("output_dir: out\nmax_steps: 2\nlearning_rate: [1e-3\nseed: 3\n")
    err = _error_of(capsys, [str(bad_yaml)])
    assert f"{bad_yaml}:4:" in err and "invalid YAML" in err
    bad_json = workspace / "bad.json"
    bad_json.write_text('{\n  "output_dir": "out",\n  "max_steps": 2,\n}\n')
    err = _error_of(capsys, [str(bad_json)])
    assert f"{bad_json}:4:" in err and "invalid JSON" in err
    (workspace / "typed.yaml").write_text(yaml.safe_dump({"output_dir": "out", "temperature": "hot"}))
    assert "temperature='hot' in the config is not a number" in _error_of(capsys, [str(workspace / "typed.yaml")])


@pytest.mark.parametrize("flag, value, words", [
    ("--per_device_train_batch_size", "0", "per_device_train_batch_size=0 must be a positive integer"),
    ("--per_device_eval_batch_size", "-2", "per_device_eval_batch_size=-2 must be a positive integer"),
    ("--gradient_accumulation_steps", "0", "gradient_accumulation_steps=0 must be a positive integer"),
    ("--max_train_samples", "0", "--max_train_samples must be >= 1"),
    ("--alpha_kd", "inf", "alpha_kd=inf must be a finite number >= 0"),
    ("--alpha_hidden", "nan", "alpha_hidden=nan must be a finite number >= 0"),
    ("--temperature", "inf", "temperature=inf must be a finite number > 0"),
    ("--card_license", "Apache 2", "card_license='Apache 2' is not a Hub licence id"),
    ("--card_language", "en,English", "card_language 'English' is not an ISO 639 code"),
    # TrainingArguments' own multi-line check, as one line too
    ("--save_strategy epoch --load_best_model_at_end", "true", "match, except when --save_strategy="),
])
def test_bad_numbers_and_names_are_one_line_before_anything_loads(workspace, capsys, monkeypatch, flag, value, words):
    monkeypatch.setattr(build, "load_teacher", lambda *a, **k: pytest.fail("the teacher must not be loaded"))
    err = _error_of(capsys, [str(workspace / "config.yaml"), *flag.split(), value])
    assert words in err, err
    assert not (workspace / "out").exists()


def test_teacher_folder_problems_are_one_line(workspace, capsys):
    import shutil

    cfg = str(workspace / "config.yaml")
    no_config = workspace / "no_config"
    shutil.copytree(workspace / "teacher", no_config)
    (no_config / "config.json").unlink()
    err = _error_of(capsys, [cfg, "--teacher_model_name_or_path", str(no_config)])
    assert "has no config.json" in err and str(no_config) in err

    resized = workspace / "resized"
    shutil.copytree(workspace / "teacher", resized)
    config = json.loads((resized / "config.json").read_text())
    (resized / "config.json").write_text(json.dumps({**config, "vocab_size": 80}))
    err = _error_of(capsys, [cfg, "--teacher_model_name_or_path", str(resized)])
    assert "vocab_size=80" in err and "has 64 rows" in err

    remote = workspace / "remote"
    shutil.copytree(workspace / "teacher", remote)
    (remote / "config.json").write_text(json.dumps({**config, "model_type": "xbert", "auto_map": {
        "AutoConfig": "configuration_x.XConfig", "AutoModelForMaskedLM": "modeling_x.XForMaskedLM"}}))
    (remote / "configuration_x.py").write_text(
        "from transformers import BertConfig\n\nclass XConfig(BertConfig):\n    model_type = 'xbert'\n")
    (remote / "modeling_x.py").write_text(
        "from transformers import BertForMaskedLM\n\nclass XForMaskedLM(BertForMaskedLM):\n    pass\n")
    err = _error_of(capsys, [cfg, "--teacher_model_name_or_path", str(remote)])  # no prompt on stdin, no hang
    assert "--trust_remote_code true" in err and str(remote) in err
    assert not (workspace / "out").exists()


def test_push_to_hub_offline_or_without_token_fails_before_loading(workspace, capsys, monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(build, "load_teacher", lambda *a, **k: pytest.fail("the teacher must not be loaded"))
    push = [str(workspace / "config.yaml"), "--push_to_hub", "true", "--hub_model_id", "me/distilled"]
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert "HF_HUB_OFFLINE" in _error_of(capsys, push)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    err = _error_of(capsys, push)
    assert "needs a Hugging Face token" in err and "hf auth login" in err and "--hub_token" in err
    err = _error_of(capsys, push + ["--hub_token", "hf_x", "--hub_strategy", "checkpoint"])
    assert "hub_strategy='checkpoint'" in err and "optimizer.pt" in err
    assert not (workspace / "out").exists()


def test_a_bug_keeps_its_traceback(workspace, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("an internal bug, not the user's")

    monkeypatch.setattr(recipe, "load_raw_corpus", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        main([str(workspace / "config.yaml")])


def test_recipe_push_uploads_no_pickle_and_no_token(workspace, monkeypatch):
    token = "hf_FAKEcliToken777"
    go_online(monkeypatch, token="hf_FAKEenvToken999")
    uploads = record_uploads(monkeypatch)
    code = main([str(workspace / "config.yaml"), "--push_to_hub", "true", "--hub_model_id", "me/distilled",
                 "--hub_token", token, "--max_steps", "4", "--save_steps", "2", "--eval_strategy", "no"])
    assert code == 0
    assert uploads["repos"] == [{"repo_id": "me/distilled", "private": True}]
    assert uploads["commits"] >= 3  # two checkpoint saves (hub_strategy every_save) and the final push
    assert {"model.safetensors", "config.json", "README.md", "distillation_args.json"} <= set(uploads["files"])
    assert pickles(uploads["files"]) == []
    assert files_containing(uploads["files"], token) == [] and files_containing(uploads["files"], "hf_FAKEenv") == []
    out = workspace / "out"
    assert (out / "checkpoint-2" / "optimizer.pt").exists()  # checkpoints still resume…
    assert tree_containing(out, token) == [] and not list(out.rglob("training_args.bin"))  # …without the token


def test_under_torchrun_every_rank_stops_on_a_user_error(workspace):
    import subprocess
    import sys

    root = str(ROOT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
         os.path.join(root, "recipes", "run_distil.py"), str(workspace / "config.yaml"),
         "--per_device_train_batch_size", "0"],
        cwd=workspace, env=env, capture_output=True, text=True, timeout=120)  # a hung rank would time out
    lines = [line for line in done.stderr.splitlines() if line.startswith("hf-distil: error:")]
    assert done.returncode != 0 and len(lines) == 2, done.stderr[-3000:]  # one line from each rank
    assert "per_device_train_batch_size=0 must be a positive integer" in lines[0]
    # torchrun prints its own ChildFailedError traceback; none may come from our code
    assert "hf_distil/" not in done.stderr and "ArgumentError" not in done.stderr and not (workspace / "out").exists()


def test_a_tokenizer_that_does_not_fit_is_refused_before_the_corpus_is_tokenised(workspace, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the corpus was tokenised before the tokenizer was checked")

    monkeypatch.setattr(recipe, "tokenize_corpus", never)
    other = BertTokenizerFast(vocab=str(workspace / "vocab.txt"))
    other.add_tokens(["extra1", "extra2", "extra3"])
    other.save_pretrained(workspace / "other_tok")
    err = _error_of(capsys, [str(workspace / "config.yaml"), "--tokenizer_name", str(workspace / "other_tok")])
    assert "67 tokens" in err and "64" in err


@pytest.mark.parametrize("flags, words", [
    (["--learning_rate", "abc"], "--learning_rate/--learning-rate: invalid float value: 'abc'"),
    (["--student_layers", "-1,0"], "--student_layers=VALUE"),
    (["--hidden_loss"], "expected one argument"),
])
def test_argparse_mistakes_are_one_line_without_the_usage_screen(workspace, capsys, flags, words):
    # argparse used to print a 130-line usage screen before its error and exit through SystemExit.
    err = _error_of(capsys, [str(workspace / "config.yaml"), *flags])
    assert words in err, err
    assert "usage:" not in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--num_train_epochs", "0"], ["--num_train_epochs", "-1"],
                                   ["--num_train_epochs", "inf"]])
def test_a_run_with_nothing_to_train_is_refused(workspace, capsys, monkeypatch, flags):
    # num_train_epochs 0 (and max_steps unset) trained 0 steps and saved the untrained student as "Hub-ready", exit 0.
    monkeypatch.setattr(build, "load_teacher", lambda *a, **k: pytest.fail("the teacher must not be loaded"))
    err = _error_of(capsys, [str(workspace / "config.yaml"), "--max_steps", "-1", *flags])
    assert "nothing to train" in err and "--max_steps" in err, err
    assert not (workspace / "out").exists()


def test_configs_saved_with_a_byte_order_mark_or_latin1_bytes(workspace, capsys, monkeypatch):
    # A JSON config with a BOM (Windows Notepad) was refused while the same YAML was accepted; a latin-1 byte in a
    # config comment ended in a UnicodeDecodeError traceback.
    monkeypatch.setattr(build, "load_teacher", lambda *a, **k: pytest.fail("the teacher must not be loaded"))
    config = yaml.safe_load((workspace / "config.yaml").read_text())
    (workspace / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(config).encode())
    (workspace / "bom.yaml").write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(config).encode())
    for name in ("bom.json", "bom.yaml"):
        assert parse_arguments([str(workspace / name)])[2].learning_rate == 1e-3
    (workspace / "latin.yaml").write_bytes(b"seed: 3\n# r\xe9sum\xe9\n" + yaml.safe_dump(config).encode())
    err = _error_of(capsys, [str(workspace / "latin.yaml")])
    assert "latin.yaml is not UTF-8: line 2 has byte 0xe9" in err and "iconv" in err, err


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_is_shown_without_a_config(capsys, flag):
    # `hf-distil --help` answered "No output_dir: …" with exit 2 instead of the help.
    with pytest.raises(SystemExit) as done:
        main([flag])
    assert done.value.code == 0
    out = capsys.readouterr()
    assert "usage: hf-distil" in out.out and "--teacher_model_name_or_path" in out.out and "error" not in out.err


@pytest.mark.parametrize("error", ["nan", "disk"])
def test_an_error_during_training_starts_its_own_line_after_the_progress_bar(workspace, capsys, monkeypatch, error):
    # tqdm leaves its bar without a newline: "… 2.83s/it]hf-distil: error: Non-finite loss term …".
    import errno
    import sys

    from hf_distil.checkpoints import DiskFullError
    from hf_distil.trainer import NonFiniteLossError

    def training(*args):
        sys.stderr.write(" 50%|█████     | 6/12 [00:17<00:16,  2.83s/it]")
        raise NonFiniteLossError("Non-finite loss term") if error == "nan" else DiskFullError(errno.ENOSPC, "No space")

    monkeypatch.setattr(recipe, "run", training)
    main([str(workspace / "config.yaml")])
    lines = capsys.readouterr().err.splitlines()
    assert [line for line in lines if "hf-distil: error:" in line][0].startswith("hf-distil: error:"), lines



def test_utf16_config_and_train_file_get_the_utf16_iconv(workspace, capsys, monkeypatch):
    # A config or --train_file saved as "Unicode" by Windows (UTF-16 with a byte-order mark) was told
    # `iconv -f latin1 …`, which turns it into mojibake with NUL bytes.
    monkeypatch.setattr(build, "load_teacher", lambda *a, **k: pytest.fail("the teacher must not be loaded"))
    config = yaml.safe_load((workspace / "config.yaml").read_text())
    for name, encoding in (("u16.yaml", "utf-16"), ("u16be.json", "utf-16-be"), ("u32.yaml", "utf-32")):
        text = json.dumps(config) if name.endswith(".json") else yaml.safe_dump(config)
        (workspace / name).write_bytes((("\ufeff" if encoding.endswith("-be") else "") + text).encode(encoding))
        err = _error_of(capsys, [str(workspace / name)])
        expected = encoding[:6]
        assert f"{workspace / name} is {expected.upper()} (it starts with a byte-order mark), not UTF-8" in err, err
        stem, ext = os.path.splitext(name)
        assert f"iconv -f {expected} -t utf-8 {workspace / name} > {workspace / stem}.utf8{ext}" in err, err
        assert "latin1" not in err, err
    monkeypatch.undo()  # the corpus is read after the teacher is loaded
    (workspace / "u16.txt").write_bytes("first note\nsecond note\n".encode("utf-16"))
    err = _error_of(capsys, [str(workspace / "config.yaml"), "--train_file", str(workspace / "u16.txt")])
    assert f"iconv -f utf-16 -t utf-8 {workspace / 'u16.txt'} > {workspace / 'u16.utf8.txt'}" in err, err


def test_overwrite_output_dir_never_replaces_files_no_earlier_run_wrote(workspace, capsys):
    # The shipped quickstart sets overwrite_output_dir: true, so `--output_dir .` in a project replaced its README.md
    # and config.json with the student's card and config.
    out = workspace / "out"
    out.mkdir()
    (out / "README.md").write_text("# my project\n")
    (out / "config.json").write_text('{"mine": true}')
    args = [str(workspace / "config.yaml"), "--overwrite_output_dir", "true", "--max_steps", "2", "--save_steps", "2"]
    err = _error_of(capsys, args)
    assert "README.md, config.json" in err and "no earlier hf-distil run wrote" in err, err
    assert (out / "README.md").read_text() == "# my project\n" and not (out / "model.safetensors").exists()
    (out / "README.md").unlink()
    (out / "config.json").unlink()
    (out / "notes.txt").write_text("keep me")  # a file the run does not write: still allowed, as before
    assert main(args) == 0 and main(args) == 0  # and a folder an earlier run wrote may be overwritten again
    assert (out / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_output_dir_is_one_line_before_anything_loads(workspace, capsys, monkeypatch, value):
    # --output_dir "" loaded the teacher, tokenised the corpus, then died in Trainer with FileNotFoundError: ''.
    monkeypatch.setattr(build, "load_teacher", lambda *a, **k: pytest.fail("the teacher must not be loaded"))
    assert "output_dir is empty" in _error_of(capsys, [str(workspace / "config.yaml"), "--output_dir", value])


def test_a_narrower_random_student_may_be_deeper_than_the_teacher(tmp_path):
    from tiny import write_recipe_config, write_workspace

    from hf_distil.recipe import main

    write_workspace(tmp_path)  # a 4-layer teacher
    config = write_recipe_config(tmp_path, max_steps=1, student_num_layers=6, student_hidden_size=16, alpha_hidden=0.0,
                                 evaluate_before_training=False)
    assert main([str(config)]) == 0
    assert AutoModelForMaskedLM.from_pretrained(tmp_path / "out").config.num_hidden_layers == 6


def test_yaml_gotchas_are_said_before_anything_loads(workspace, capsys, monkeypatch):
    """A key set twice, an unquoted yes/no where a word belongs, a config after the flags: one line each (PyYAML
    keeps the last key silently and reads `no` as false). `eval_strategy: no` means "no", as written."""
    monkeypatch.setattr(build, "load_teacher", lambda *a, **k: pytest.fail("the teacher must not be loaded"))
    base = (workspace / "config.yaml").read_text()
    (workspace / "twice.yaml").write_text(base + "learning_rate: 0.001\nlearning_rate: 0.002\n")
    err = _error_of(capsys, [str(workspace / "twice.yaml")])
    assert "'learning_rate' is set twice (also on line" in err and "keep one" in err
    (workspace / "twice.json").write_text('{"output_dir": "o", "seed": 1, "seed": 2}')
    assert "'seed' set twice" in _error_of(capsys, [str(workspace / "twice.json")])
    (workspace / "yes.yaml").write_text(base + "lr_scheduler_type: on\n")
    err = _error_of(capsys, [str(workspace / "yes.yaml")])
    assert "lr_scheduler_type: true in the config" in err and "quote the value" in err
    (workspace / "no.yaml").write_text(base.replace("eval_strategy: steps", "eval_strategy: no"))
    _, _, training_args, _ = parse_arguments([str(workspace / "no.yaml")])
    assert str(training_args.eval_strategy.value) == "no"
    err = _error_of(capsys, ["--max_steps", "3", str(workspace / "config.yaml")])
    assert "config.yaml comes after the flags: the config file goes first" in err


def test_no_arguments_print_the_usage_and_version_the_version(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: hf-distil CONFIG.yaml [--flag value ...]") and "quickstart.yaml" in err
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("hf-distil ")


def test_all_results_record_the_epochs_trained_not_the_evaluation_before(workspace):
    assert main([str(workspace / "config.yaml"), "--max_steps", "4", "--save_strategy", "no"]) == 0
    results = json.loads((workspace / "out" / "all_results.json").read_text())
    trained = json.loads((workspace / "out" / "trainer_state.json").read_text())["epoch"]
    assert "init_loss" in results and results["epoch"] == trained > 0


def test_resuming_with_other_settings_is_refused_in_one_line(workspace, capsys, monkeypatch):
    """A resume continues the run its checkpoint belongs to: another learning rate, temperature or a longer
    max_steps (which would re-warm a finished schedule) would run under the old optimizer and schedule while the
    card states the new values; refused before loading anything, saying how to start over."""
    cfg = str(workspace / "config.yaml")
    assert main([cfg, "--max_steps", "3", "--save_steps", "3", "--eval_strategy", "no"]) == 0
    with monkeypatch.context() as m:
        m.setattr(build, "load_teacher", lambda *a, **k: pytest.fail("the teacher must not be loaded"))
        err = _error_of(capsys, [cfg, "--max_steps", "3", "--save_steps", "3", "--eval_strategy", "no",
                                 "--resume_from_checkpoint", "auto", "--learning_rate", "0.002", "--temperature",
                                 "1.0"])
    assert "with other settings than it was trained with (learning_rate 0.001 → 0.002, temperature 2.0 → 1.0)" in err
    assert "--overwrite_output_dir true" in err
    err = _error_of(capsys, [cfg, "--max_steps", "6", "--save_steps", "3", "--eval_strategy", "no",
                             "--resume_from_checkpoint", "auto"])
    assert "max_steps 3 → 6" in err
    # the same settings resume (here: a finished run, loaded and not trained on)
    assert main([cfg, "--max_steps", "3", "--save_steps", "3", "--eval_strategy", "no",
                 "--resume_from_checkpoint", "auto"]) == 0


def test_resuming_with_another_student_shape_is_one_line(workspace, capsys):
    cfg = str(workspace / "config.yaml")
    assert main([cfg, "--max_steps", "3", "--save_steps", "3", "--eval_strategy", "no"]) == 0
    err = _error_of(capsys, [cfg, "--max_steps", "3", "--save_steps", "3", "--eval_strategy", "no",
                             "--resume_from_checkpoint", "auto", "--student_num_layers", "1"])
    assert "whose student has another shape than this one (num_hidden_layers 2 → 1)" in err and "start over" in err
