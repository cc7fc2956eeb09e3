"""trust_remote_code off by default; no unsafe unpickling anywhere in the package."""

import pathlib
import re

from hf_distil import recipe
from hf_distil.recipe import parse_arguments

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "hf_distil"


def test_remote_code_is_not_trusted_unless_asked(monkeypatch, tmp_path):
    seen = []

    def record(name, *args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        raise OSError("stop here")

    monkeypatch.setattr(recipe, "load_teacher", lambda name, args, **kw: record(name, **kw))
    model_args, _, training_args, _ = parse_arguments(
        ["--output_dir", str(tmp_path), "--teacher_model_name_or_path", "t", "--train_file", "x.txt"])
    assert model_args.trust_remote_code is False
    try:
        recipe.build_models(model_args, training_args)
    except OSError:
        pass
    model_args.trust_remote_code = True
    try:
        recipe.build_models(model_args, training_args)
    except OSError:
        pass
    assert seen == [False, True]


def test_no_unsafe_torch_load_in_the_package():
    for path in PACKAGE.rglob("*.py"):
        for call in re.findall(r"torch\.load\([^)]*\)", path.read_text()):
            assert "weights_only=True" in call, f"{path}: {call}"
