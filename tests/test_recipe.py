"""End-to-end recipe runs offline on a tiny teacher, and every user error as one line before training."""

import json
import os

import pytest
import yaml
from transformers import AutoModelForMaskedLM, AutoTokenizer, BertTokenizerFast, pipeline

from hf_distil import recipe
from hf_distil.recipe import latest_complete_checkpoint, main, parse_arguments
from tiny import write_workspace

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture
def workspace(tmp_path):
    """A saved tiny teacher with its tokenizer, a jsonl corpus, and a base config."""
    write_workspace(tmp_path)
    config = {
        "teacher_model_name_or_path": str(tmp_path / "teacher"), "student_num_layers": 2,
        "train_file": str(tmp_path / "corpus.jsonl"), "validation_split_percentage": 20, "max_seq_length": 32,
        "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16, "max_steps": 6, "logging_steps": 2,
        "eval_strategy": "steps", "eval_steps": 3, "save_strategy": "steps", "save_steps": 3, "learning_rate": 1e-3,
        "output_dir": str(tmp_path / "out"), "report_to": "none", "use_cpu": True, "disable_tqdm": True,
        "dataloader_num_workers": 0, "seed": 3,
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
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
    assert recipe.parse_layers(model_args.student_layers) == [0, 3]
    assert recipe._codes(run_args.card_language) == ["en", "fr"]
    assert recipe.resolve_resume(train_args, run_args) is None  # True means auto; nothing to resume yet


def _error_of(capsys, argv):
    code = main(argv)
    lines = [l for l in capsys.readouterr().err.splitlines() if "hf-distil: error:" in l]
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
    assert "deeper than the teacher" in err
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
    for step, complete in ((3, True), (6, True), (9, False), (12, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x")
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
    base = [str(workspace / "config.yaml"), "--push_to_hub", "true", "--hub_model_id", "me/distilled",
            "--max_steps", "2", "--save_strategy", "no"]
    assert main(base) == 0
    assert seen == {"private": True, "pushed": True}
    assert main(base + ["--hub_private_repo", "false", "--overwrite_output_dir", "true"]) == 0
    assert seen["private"] is False
