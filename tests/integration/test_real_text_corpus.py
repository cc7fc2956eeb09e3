"""The quality benchmark's pretraining corpus: real text from ../shared/data, and never MTS-Dialog's test sets."""

import importlib.util
import json
import os

import pytest
from tiny import ROOT

DATA = ROOT.parent / "shared" / "data"


@pytest.mark.skipif(not (DATA / "medquad_answers.txt").exists(), reason=f"real text not found in {DATA}")
def test_corpus_holds_train_text_only_and_a_disjoint_validation(tmp_path):
    script = ROOT / "recipes" / "make_real_text_corpus.py"
    spec = importlib.util.spec_from_file_location("make_real_text_corpus", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--out", str(tmp_path)])
    train = [json.loads(line)["text"] for line in open(tmp_path / "train.jsonl", encoding="utf-8")]
    valid = [json.loads(line)["text"] for line in open(tmp_path / "valid.jsonl", encoding="utf-8")]
    sections = [json.loads(line) for line in open(DATA / "mts_sections.jsonl", encoding="utf-8")]
    in_training_set = {s["text"] for s in sections if s["split"] == "TrainingSet"}
    # Short sections ("Noncontributory.") recur across MTS-Dialog's splits: only test text unseen in TrainingSet counts.
    test_texts = {s["text"] for s in sections if s["split"].startswith("Final_200_TestSet")} - in_training_set
    assert len(valid) == 300 + sum(s["split"] == "ValidationSet" for s in sections)
    assert all(text.strip() for text in train)
    assert not test_texts & (set(train) | set(valid))
    only_valid = {s["text"] for s in sections if s["split"] == "ValidationSet"} - in_training_set
    assert only_valid and not only_valid & set(train)
    assert os.path.getsize(tmp_path / "train.jsonl") > 20e6
    clinical = [json.loads(line)["text"] for line in open(tmp_path / "valid_clinical.jsonl", encoding="utf-8")]
    assert clinical == [s["text"] for s in sections if s["split"] == "ValidationSet"]
    # The clinical sections weighted to a third of the words: each repeated as often, the file shuffled
    mix = json.loads((tmp_path / "mix.json").read_text())
    training_sections = [s["text"] for s in sections if s["split"] == "TrainingSet"]
    clinical_words = mix["clinical_repeats"] * sum(len(t.split()) for t in training_sections)
    assert mix["clinical_repeats"] > 10 and 0.30 < clinical_words / sum(len(t.split()) for t in train) < 0.36
    answers = [line.strip() for line in open(DATA / "medquad_answers.txt", encoding="utf-8") if line.strip()]
    general = set(answers[:-300]) - set(answers[-300:])
    assert len(train) == len(general) + mix["clinical_repeats"] * len(training_sections)  # MedQuAD once each
    # spread through the file, not in one stretch: the first 2,000 texts hold about their share of sections
    share = mix["clinical_repeats"] * len(training_sections) / len(train)
    assert abs(sum(text not in general for text in train[:2000]) / 2000 - share) < 0.05
    unweighted = tmp_path / "unweighted"
    module.main(["--out", str(unweighted), "--clinical_share", "0"])
    assert json.loads((unweighted / "mix.json").read_text())["clinical_repeats"] == 1
