"""The shipped TinyClinicalBERT and MiniLM configs, run as shipped (their own `bf16: true`) from a
Bio_ClinicalBERT-shaped local teacher on CPU: Hub-ready folders of the narrow student alone, whose cards describe the
method. Only paths, step counts, batch sizes and `use_cpu` (CI has no GPU) are overridden."""

import os

import pytest
import yaml
from safetensors import safe_open
from tiny import ROOT as REPO_ROOT
from tiny import bio_clinical_bert_shaped, noteevents_csv
from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

from hf_distil.recipe import main

ROOT = str(REPO_ROOT)
CONFIGS = os.path.join(ROOT, "recipes", "configs")


@pytest.fixture(scope="module")
def teacher_and_corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bio_clinical")
    return bio_clinical_bert_shaped(folder), noteevents_csv(folder / "NOTEEVENTS.csv", n=40)


def _run(config, teacher, corpus, out, *extra):
    return main([os.path.join(CONFIGS, config), "--teacher_model_name_or_path", str(teacher),
                 "--train_file", str(corpus), "--output_dir", str(out), "--max_steps", "2", "--save_steps", "1",
                 "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2",
                 "--max_eval_samples", "2", "--use_cpu", "true", *extra])


def _check_hub_ready(out, teacher, shape):
    model = AutoModelForMaskedLM.from_pretrained(out)
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads) == shape
    assert c.distil_init == "random"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert not [k for k in keys if "distil_projections" in k]
        assert {str(f.get_slice(k).get_dtype()) for k in keys} == {"F32"}  # float32 master weights under bf16
    fill = pipeline("fill-mask", model=model, tokenizer=AutoTokenizer.from_pretrained(out))
    assert len(fill("patient admitted with chest [MASK]")) == 5
    return (out / "README.md").read_text()


def test_tiny_clinical_bert_config_as_shipped(teacher_and_corpus, tmp_path):
    teacher, corpus = teacher_and_corpus
    config = yaml.safe_load(open(os.path.join(CONFIGS, "tiny_clinical_bert.yaml")))
    assert config["bf16"] is True and config["alpha_mlm"] == 0 and config["temperature"] == 1.0
    assert config["per_device_train_batch_size"] * 4 * config["gradient_accumulation_steps"] == 192  # 4 GPUs
    out = tmp_path / "tiny"
    assert _run("tiny_clinical_bert.yaml", teacher, corpus, out) == 0
    card = _check_hub_ready(out, teacher, (4, 312, 1200, 12))
    assert "student↔teacher layers 0↔2, 1↔5, 2↔8, 3↔11" in card  # attention maps
    assert "hidden states 0↔0, 1↔3, 2↔6, 3↔9, 4↔12" in card  # TinyClinicalBERT's teacher hidden states 0, 3, 6, 9, 12
    assert "through learned linear projections" in card and "randomly initialised" in card
    assert "temperature 1.0" in card and "MLM" not in card.split("## Initialisation")[0].split("loss =")[1]
    with safe_open(str(out / "checkpoint-1" / "model.safetensors"), "pt") as f:
        projection = f.get_slice("distil_projections.0.weight").get_shape()
    assert projection == [768, 312]  # student width → teacher width, kept for resuming


def test_minilm_config_as_shipped(teacher_and_corpus, tmp_path):
    teacher, corpus = teacher_and_corpus
    out = tmp_path / "minilm"
    assert _run("minilm_clinical.yaml", teacher, corpus, out) == 0
    card = _check_hub_ready(out, teacher, (6, 384, 1536, 6))
    assert "with 12 relation heads, student layer 5 against teacher layer 11" in card
    assert "fill-mask predictions are not meaningful" in card  # relation only: the MLM head was never trained


def test_a_wrong_layer_map_fails_in_one_line_before_the_corpus_is_read(teacher_and_corpus, tmp_path, capsys):
    teacher, corpus = teacher_and_corpus
    code = _run("tiny_clinical_bert.yaml", teacher, tmp_path / "missing.csv", tmp_path / "bad", "--layer_map",
                "0:2,1:5,2:8,3:12")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == ("hf-distil: error: layer_map 3:12: the teacher has layers 0..11 (12 layers).")


def test_a_smaller_student_config_on_a_smaller_teacher_is_refused_before_training(tmp_path, capsys):
    """minilm_clinical.yaml's 6 × 384 student on a 4 × 32 teacher would be wider and larger than it, and the card
    would call it narrower and faster: one line that says what to pass, before any training."""
    from tiny import noteevents_csv, write_workspace

    write_workspace(tmp_path)
    corpus = noteevents_csv(tmp_path / "NOTEEVENTS.csv", n=20)
    assert _run("minilm_clinical.yaml", tmp_path / "teacher", corpus, tmp_path / "out", "--student_num_layers",
                "2") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("hf-distil: error: The student would be larger than the teacher (hidden_size 384 > 32")
    assert "--student_hidden_size" in err and not (tmp_path / "out" / "checkpoint-1").exists()
