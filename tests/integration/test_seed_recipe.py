"""The shipped seed config on a teacher with Bio_ClinicalBERT's architecture yields the seed card's facts."""

import os
import re

from tiny import ROOT
from transformers import BertConfig, BertForMaskedLM

from hf_distil import create_student
from hf_distil.build import parse_layers
from hf_distil.card import build_model_card
from hf_distil.recipe import parse_arguments

CONFIG = os.path.join(str(ROOT), "recipes", "configs",
                      "distil_clinical_bert.yaml")


def test_seed_config_is_the_seed_run():
    model_args, data_args, args, _ = parse_arguments([CONFIG, "--bf16", "false"])  # no GPU here
    assert args.teacher_model_name_or_path == "emilyalsentzer/Bio_ClinicalBERT"
    assert (model_args.student_num_layers, model_args.student_layers) == (6, "every_other")
    assert (args.temperature, args.alpha_kd, args.alpha_mlm, args.alpha_hidden) == (2.0, 5.0, 2.0, 1.0)
    assert (args.hidden_loss, args.kd_positions, args.num_train_epochs) == ("cosine", "masked", 3)
    assert (args.learning_rate, args.warmup_steps, args.weight_decay) == (5e-4, 5000, 1e-4)
    assert args.per_device_train_batch_size * 4 * args.gradient_accumulation_steps == 192  # on 4 GPUs
    assert data_args.train_file.endswith("NOTEEVENTS.csv.gz") and data_args.mlm_probability == 0.15


def test_seed_card_architecture_facts_are_computed(tmp_path):
    model_args, _, args, _ = parse_arguments([CONFIG, "--output_dir", str(tmp_path), "--bf16", "false"])
    teacher = BertForMaskedLM(BertConfig(vocab_size=28996))  # Bio_ClinicalBERT's shape, random weights
    student = create_student(teacher, model_args.student_num_layers, parse_layers(model_args.student_layers))
    card = build_model_card(student, args, teacher_name=args.teacher_model_name_or_path, total_train_batch_size=None,
                            world_size=4, dataset_name="MIMIC-III clinical notes (NOTEEVENTS)").text
    architecture = card.split("## Architecture", 1)[1].split("##", 1)[0]
    for fact in ("768", "28996", "6", "4"):
        assert re.search(rf"\b{fact}\b", architecture), fact
    assert "65.8 million" in architecture
    assert "total batch size of 192" in card and "3 epochs" in card
    assert "layers 1, 3, 5, 7, 9, 11" in card
    assert "https://huggingface.co/emilyalsentzer/Bio_ClinicalBERT" in card
