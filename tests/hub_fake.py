"""A recording stand-in for the Hub: what `create_repo` / `upload_folder` would have sent, without the network."""

import os
from concurrent.futures import Future
from pathlib import Path

import huggingface_hub
from huggingface_hub import HfApi
from huggingface_hub.utils import filter_repo_objects

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def go_online(monkeypatch, token="hf_FAKEenvToken999"):
    """Pretend HF_HUB_OFFLINE is unset and the user is logged in with `token`."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", token)


def record_uploads(monkeypatch) -> dict:
    """Replace HfApi.create_repo / upload_folder; returns {"repos": [...], "files": {path_in_repo: bytes}}."""
    seen = {"repos": [], "files": {}, "commits": 0}

    def create_repo(self, repo_id, token=None, private=None, exist_ok=False, **kwargs):
        seen["repos"].append({"repo_id": repo_id, "private": private})
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, repo_id, folder_path, path_in_repo=None, ignore_patterns=None, allow_patterns=None,
                      run_as_future=False, **kwargs):
        root = Path(folder_path)
        names = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        kept = filter_repo_objects(names, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns)
        for name in kept:
            seen["files"][f"{path_in_repo}/{name}" if path_in_repo else name] = (root / name).read_bytes()
        seen["commits"] += 1
        if run_as_future:
            future = Future()
            future.set_result(None)
            return future
        return None

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return seen


def pickles(files: dict) -> list[str]:
    """Uploaded names that are pickles, by suffix or by content (torch/pickle headers)."""
    found = []
    for name, data in files.items():
        zipped_pickle = data[:2] == b"PK" and b"data.pkl" in data[:4096]
        if name.endswith(PICKLE_SUFFIXES) or data[:1] == b"\x80" or zipped_pickle:
            found.append(name)
    return found


def files_containing(files: dict, secret: str) -> list[str]:
    return [name for name, data in files.items() if secret.encode() in data]


def tree_containing(folder, secret: str) -> list[str]:
    """Files under `folder` (checkpoints included) whose bytes contain `secret`."""
    hits = []
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                if secret.encode() in f.read():
                    hits.append(os.path.relpath(path, folder))
    return hits
