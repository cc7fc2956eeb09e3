"""trust_remote_code off by default; no unsafe unpickling anywhere in the package."""

import re

import pytest
from tiny import ROOT

from hf_distil import build, recipe
from hf_distil.errors import HubError
from hf_distil.recipe import parse_arguments

PACKAGE = ROOT / "hf_distil"


def test_remote_code_is_not_trusted_unless_asked(monkeypatch, tmp_path):
    seen = []

    def record(name, *args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        raise OSError("stop here")

    monkeypatch.setattr(build, "load_teacher", lambda name, args, **kw: record(name, **kw))
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


def _tiny_trainer(tmp_path, **overrides):
    import torch
    from tiny import premasked_dataset, tiny_teacher

    from hf_distil import DistillationArguments, DistillationTrainer
    from hf_distil.student import create_student

    teacher = tiny_teacher()
    torch.manual_seed(0)
    args = DistillationArguments(
        output_dir=str(tmp_path / "out"), max_steps=2, save_steps=1, save_strategy="steps", report_to=[],
        per_device_train_batch_size=4, use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, **overrides)
    return DistillationTrainer(model=create_student(teacher, 2), teacher_model=teacher, args=args,
                               train_dataset=premasked_dataset(8))


def test_python_api_push_to_hub_uploads_no_pickle_and_no_token(tmp_path, monkeypatch):
    from hub_fake import files_containing, go_online, pickles, record_uploads, tree_containing

    go_online(monkeypatch)
    uploads = record_uploads(monkeypatch)
    trainer = _tiny_trainer(tmp_path, push_to_hub=True, hub_model_id="me/api", hub_token="hf_FAKEapiToken555")
    trainer.train()
    trainer.push_to_hub()
    assert uploads["commits"] == 3  # after each of the 2 saves, and the explicit push
    assert "model.safetensors" in uploads["files"] and "distillation_args.json" in uploads["files"]
    assert pickles(uploads["files"]) == [] and files_containing(uploads["files"], "hf_FAKEapiToken555") == []
    assert tree_containing(tmp_path / "out", "hf_FAKEapiToken555") == []

    (tmp_path / "out" / "notes.pkl").write_bytes(b"\x80\x04N.")  # a pickle the user left in the folder
    with pytest.raises(HubError, match=r"notes\.pkl.*move them out"):
        trainer.push_to_hub()
    assert uploads["commits"] == 3


@pytest.mark.parametrize("failure", ["unreachable", "rejected"])
def test_push_to_hub_unreachable_or_token_rejected_is_one_line(tmp_path, monkeypatch, failure):
    # create_repo failing (no network, a bad token) used to end the run with an 80-line httpx traceback.
    import httpx2
    import huggingface_hub
    from hub_fake import go_online

    go_online(monkeypatch)

    def create_repo(self, repo_id, **kwargs):
        request = httpx2.Request("POST", "https://huggingface.co/api/repos/create")
        if failure == "unreachable":
            raise httpx2.ConnectError("[Errno -2] Name or service not known", request=request)
        response = httpx2.Response(401, request=request)
        raise huggingface_hub.errors.HfHubHTTPError("401 Unauthorized: Invalid credentials", response=response)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    with pytest.raises(HubError, match=r"me/api.*(Name or service not known|401)") as caught:
        _tiny_trainer(tmp_path, push_to_hub=True, hub_model_id="me/api", hub_token="hf_FAKEapiToken555")
    assert "\n" not in str(caught.value) and "hf_FAKEapiToken555" not in str(caught.value)
