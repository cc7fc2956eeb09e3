"""The README's main job: the committed quickstart config distils the committed toy teacher, offline."""

import json

from tiny import ROOT as REPO_ROOT
from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

from hf_distil.recipe import main

ROOT = str(REPO_ROOT)


def test_quickstart_config_distils_and_shows_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config's paths are relative to the repository root, as in the README
    out = tmp_path / "quickstart"
    code = main(["recipes/configs/quickstart.yaml", "--output_dir", str(out), "--max_steps", "40",
                 "--eval_strategy", "no", "--save_strategy", "no", "--max_eval_samples", "96",
                 "--disable_tqdm", "true"])
    assert code == 0
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_teacher_agreement"] > results["init_teacher_agreement"] + 0.1
    assert results["eval_kd_loss"] < 0.5 * results["init_kd_loss"]
    assert "hf-distil summary" in capsys.readouterr().out
    model = AutoModelForMaskedLM.from_pretrained(out)
    fill = pipeline("fill-mask", model=model, tokenizer=AutoTokenizer.from_pretrained(out), top_k=1)
    assert fill("the patient was started on [MASK] 25 mg po bid.")[0]["score"] > 0
    assert model.config.num_hidden_layers == 2 and (out / "README.md").exists() and (out / "loss_terms.png").exists()
