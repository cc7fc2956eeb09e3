"""A teacher without the head the objective reads (a bare encoder, an ELECTRA discriminator, a folder whose head
weights do not load) is refused in one line before anything trains: before, its head started at random, the run
exited 0 and the card said the head was copied."""

import pytest
import torch
from tiny import args_for, bert_config, write_recipe_config, write_workspace
from transformers import BertModel, BertTokenizerFast, ElectraConfig, ElectraForPreTraining

from hf_distil import DistillationTrainer, create_student
from hf_distil.errors import TeacherLoadError
from hf_distil.recipe import main
from hf_distil.teacher import load_teacher


def replace_teacher(folder, model):
    """Save `model` where write_workspace saved the teacher, keeping its tokenizer."""
    tokenizer = BertTokenizerFast.from_pretrained(folder / "teacher")
    model.save_pretrained(folder / "teacher")
    tokenizer.save_pretrained(folder / "teacher")


def electra_discriminator():
    torch.manual_seed(0)
    return ElectraForPreTraining(ElectraConfig(vocab_size=64, hidden_size=32, embedding_size=32, num_hidden_layers=4,
                                               num_attention_heads=2, intermediate_size=64,
                                               max_position_embeddings=64))


@pytest.mark.parametrize("make, saved", [(lambda: BertModel(bert_config()), "BertModel"),
                                         (electra_discriminator, "ElectraForPreTraining")])
def test_the_command_line_refuses_a_teacher_without_a_masked_lm_head(tmp_path, capsys, make, saved):
    write_workspace(tmp_path)
    replace_teacher(tmp_path, make())
    code = main([str(write_recipe_config(tmp_path, max_steps=2))])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("hf-distil: error: Teacher ") and f"(saved as {saved})" in line
    assert "those would start at random" in line and "*ForMaskedLM" in line
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_task_distillation_refuses_a_bare_encoder_as_its_teacher(tmp_path, capsys):
    from tiny import FINETUNE_FIXTURES

    from hf_distil.finetune_cli import main as finetune_main

    write_workspace(tmp_path)
    replace_teacher(tmp_path, BertModel(bert_config()))
    with pytest.raises(SystemExit) as stopped:
        finetune_main(["--distil_from", str(tmp_path / "teacher"), "--train_file",
                       str(FINETUNE_FIXTURES / "ner_train.conll"), "--validation_file",
                       str(FINETUNE_FIXTURES / "ner_validation.conll"), "--output_dir", str(tmp_path / "ner"),
                       "--use_cpu", "true", "--report_to", "none"])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert stopped.value.code == 2 and "(saved as BertModel)" in line
    assert "fine-tuned *ForTokenClassification / *ForSequenceClassification folder" in line


def test_the_python_api_refuses_it_too_and_a_complete_masked_lm_loads(tmp_path):
    write_workspace(tmp_path)
    student = create_student(load_teacher(str(tmp_path / "teacher"), args_for(tmp_path)), 2)
    DistillationTrainer(model=student, teacher_model=str(tmp_path / "teacher"), args=args_for(tmp_path))
    replace_teacher(tmp_path, BertModel(bert_config()))
    with pytest.raises(TeacherLoadError, match=r"cls\.predictions"):
        DistillationTrainer(model=student, teacher_model=str(tmp_path / "teacher"), args=args_for(tmp_path))
