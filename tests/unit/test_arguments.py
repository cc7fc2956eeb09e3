import json
import re

import pytest
import yaml
from transformers import HfArgumentParser

from hf_distil import DistillationArguments


def make(**kw):
    return DistillationArguments(output_dir="out", report_to=[], **kw)


def test_defaults_are_the_seed_recipe():
    a = make()
    assert (a.temperature, a.alpha_kd, a.alpha_mlm, a.alpha_hidden) == (2.0, 5.0, 2.0, 1.0)
    assert (a.hidden_loss, a.kd_positions, a.teacher_dtype) == ("cosine", "masked", "auto")
    assert a.teacher_model_name_or_path is None


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"temperature": 0.0}, ["temperature", "0.0", "> 0"]),
        ({"temperature": -1.0}, ["temperature", "-1.0"]),
        ({"alpha_kd": -0.5}, ["alpha_kd", "-0.5", ">= 0"]),
        ({"alpha_mlm": -1.0}, ["alpha_mlm"]),
        ({"alpha_hidden": -2.0}, ["alpha_hidden"]),
        ({"alpha_kd": 0, "alpha_mlm": 0, "alpha_hidden": 0}, ["alpha_kd", "alpha_mlm", "alpha_hidden", "all 0"]),
        ({"hidden_loss": "l1"}, ["hidden_loss", "'l1'", "'cosine'", "'mse'"]),
        ({"kd_positions": "some"}, ["kd_positions", "'some'", "'masked'", "'all'"]),
        ({"attention_loss": "l1"}, ["attention_loss", "'l1'", "'scores'", "'probs'", "'kl'"]),
        # the old name of the probability MSE: a hint, not a silent change of loss
        ({"attention_loss": "mse"}, ["attention_loss='mse' was renamed", "'probs'", "'scores'", "TinyBERT"]),
        ({"teacher_dtype": "int8"}, ["teacher_dtype", "'int8'", "'auto'", "'bfloat16'", "'float16'", "'float32'"]),
    ],
)
def test_invalid_values_fail_at_construction_naming_field_value_and_choices(kw, words):
    with pytest.raises(ValueError) as err:
        make(**kw)
    for word in words:
        assert word in str(err.value)


def test_every_distillation_field_has_help():
    parser = HfArgumentParser(DistillationArguments)
    helps = {a.dest: a.help for a in parser._actions}
    for name in ("teacher_model_name_or_path", "teacher_dtype", "temperature", "alpha_kd", "alpha_mlm",
                 "alpha_hidden", "hidden_loss", "kd_positions"):
        assert helps[name] and len(helps[name]) > 10


def test_parses_from_cli_json_and_yaml(tmp_path):
    parser = HfArgumentParser(DistillationArguments)
    (cli,) = parser.parse_args_into_dataclasses(
        ["--output_dir", "o", "--temperature", "3", "--alpha_kd", "1.5", "--hidden_loss", "mse",
         "--kd_positions", "all", "--teacher_model_name_or_path", "t", "--report_to", "none"]
    )
    assert (cli.temperature, cli.alpha_kd, cli.hidden_loss, cli.kd_positions) == (3.0, 1.5, "mse", "all")
    assert cli.teacher_model_name_or_path == "t"

    values = {"output_dir": "o", "temperature": 4.0, "alpha_hidden": 0.0, "teacher_dtype": "bfloat16",
              "report_to": "none"}
    (tmp_path / "a.json").write_text(json.dumps(values))
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(values))
    (from_json,) = parser.parse_json_file(str(tmp_path / "a.json"))
    (from_yaml,) = parser.parse_yaml_file(str(tmp_path / "a.yaml"))
    for a in (from_json, from_yaml):
        assert (a.temperature, a.alpha_hidden, a.teacher_dtype) == (4.0, 0.0, "bfloat16")

    with pytest.raises(ValueError, match="temperature"):
        parser.parse_args_into_dataclasses(["--output_dir", "o", "--temperature", "0"])


def test_round_trips_through_to_dict():
    a = make(temperature=3.0, alpha_mlm=0.5, kd_positions="all", hidden_loss="mse")
    d = a.to_dict()
    assert d["temperature"] == 3.0 and d["kd_positions"] == "all" and d["hidden_loss"] == "mse"
    parser = HfArgumentParser(DistillationArguments)
    (back,) = parser.parse_dict({k: v for k, v in d.items() if k in {f.name for f in a.__dataclass_fields__.values()
                                                                      if f.init}})
    assert back.to_dict() == d


@pytest.mark.parametrize("kw, words", [
    ({"temperature": float("inf")}, "temperature=inf must be a finite number > 0"),
    ({"temperature": float("nan")}, "temperature=nan must be a finite number > 0"),
    ({"alpha_kd": float("inf")}, "alpha_kd=inf must be a finite number >= 0"),
    ({"alpha_mlm": float("nan")}, "alpha_mlm=nan must be a finite number >= 0"),
    ({"per_device_train_batch_size": 0}, "per_device_train_batch_size=0 must be a positive integer"),
    ({"per_device_eval_batch_size": 0}, "per_device_eval_batch_size=0 must be a positive integer"),
    ({"gradient_accumulation_steps": -1}, "gradient_accumulation_steps=-1 must be a positive integer"),
])
def test_non_finite_and_non_positive_values_raise_our_argument_error(kw, words):
    from hf_distil.errors import ArgumentError, DistillationConfigError

    with pytest.raises(ArgumentError, match=re.escape(words)) as caught:
        make(**kw)
    assert isinstance(caught.value, DistillationConfigError) and isinstance(caught.value, ValueError)
