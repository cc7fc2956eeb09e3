"""The quickstart's committed assets: the synthetic corpus regenerates exactly, the toy teacher loads
offline, is small, and has learned the corpus (held-out masked accuracy well above a unigram guess)."""

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from tiny import ROOT
from transformers import AutoModelForMaskedLM, AutoTokenizer, BertTokenizerFast, pipeline

RECIPES = ROOT / "recipes"
DATA = RECIPES / "data"
TEACHER = RECIPES / "assets" / "tiny-clinical-bert"
CORPUS_FILES = ["sample_notes.jsonl", "sample_notes_validation.jsonl"]
TEACHER_FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json", "README.md"]


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _load_recipe(name):
    spec = importlib.util.spec_from_file_location(name, RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _notes(path):
    return [json.loads(line)["text"] for line in Path(path).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def teacher():
    model = AutoModelForMaskedLM.from_pretrained(TEACHER, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(TEACHER, local_files_only=True)
    return model, tokenizer


def test_corpus_regenerates_byte_identically(tmp_path):
    _load_recipe("make_sample_corpus").main(["--output_dir", str(tmp_path)])
    for name in CORPUS_FILES:
        assert _sha256(tmp_path / name) == _sha256(DATA / name), f"{name} differs from a fresh run of the generator"
    train, validation = _notes(DATA / CORPUS_FILES[0]), _notes(DATA / CORPUS_FILES[1])
    assert 2000 <= len(train) + len(validation) <= 4000
    assert len(validation) / (len(train) + len(validation)) == pytest.approx(0.10, abs=0.01)
    assert sum((DATA / name).stat().st_size for name in CORPUS_FILES) < 1.6e6
    assert len(set(train)) == len(train) and not set(train) & set(validation)
    headers = {"Admission Date:", "Nursing", "NPN", "Progress Note", "IMPRESSION:"}
    seen = {h for h in headers for note in train[:200] if h in note}
    assert seen == headers, f"note types missing from the first 200 notes: {headers - seen}"


def test_generator_rejects_too_few_notes(tmp_path):
    with pytest.raises(ValueError, match="num_notes"):
        _load_recipe("make_sample_corpus").write_corpus(tmp_path, num_notes=3)


def test_teacher_folder_is_complete_and_small(teacher):
    model, tokenizer = teacher
    assert sorted(p.name for p in TEACHER.iterdir()) == sorted(TEACHER_FILES)
    assert sum(p.stat().st_size for p in TEACHER.iterdir()) < 8e6
    assert model.config.num_hidden_layers == 4
    assert len(tokenizer) == model.config.vocab_size == model.get_input_embeddings().num_embeddings
    # vocab.txt alone rebuilds the same tokenizer (for tools that want a BERT vocab file).
    from_vocab = BertTokenizerFast(vocab=str(TEACHER / "vocab.txt"), do_lower_case=True)
    note = _notes(DATA / CORPUS_FILES[1])[0]
    assert from_vocab(note).input_ids == tokenizer(note).input_ids
    assert "[UNK]" not in tokenizer.tokenize("Pt c/o SOB; CXR shows no acute process. Metoprolol 25 mg p.o. b.i.d.")


def test_teacher_beats_unigram_baseline_on_held_out_notes(teacher):
    model, tokenizer = teacher
    ids = [i for note in _notes(DATA / CORPUS_FILES[1])[:20] for i in tokenizer(note, verbose=False).input_ids]
    blocks = torch.tensor(ids[: 16 * 128]).view(16, 128)
    special = torch.isin(blocks, torch.tensor(tokenizer.all_special_ids))
    masked = (torch.rand(blocks.shape, generator=torch.Generator().manual_seed(0)) < 0.15) & ~special
    inputs = blocks.masked_fill(masked, tokenizer.mask_token_id)
    with torch.no_grad():
        predictions = model(input_ids=inputs).logits.argmax(-1)
    labels = blocks[masked]
    accuracy = (predictions[masked] == labels).float().mean().item()
    # The best single constant guess for exactly these positions: a unigram baseline that saw the answers.
    unigram = labels.bincount().max().item() / labels.numel()
    assert labels.numel() > 250
    assert accuracy > unigram + 0.25, f"teacher accuracy {accuracy:.3f} vs unigram {unigram:.3f}"


def test_teacher_fill_mask_knows_the_corpus_regularities(teacher):
    model, tokenizer = teacher
    fill = pipeline("fill-mask", model=model, tokenizer=tokenizer, top_k=3)
    frequencies = {"bid", "tid", "qid", "daily", "qd", "qhs", "prn", "once", "twice", "weekly"}
    assert frequencies & {p["token_str"] for p in fill("apixaban 5 mg po [MASK].")}
    assert "mg" == fill("atorvastatin 40 [MASK] po qhs")[0]["token_str"]  # the unit after a dose
    assert "po" == fill("metoprolol tartrate 25 mg [MASK] bid")[0]["token_str"]  # the route after the unit
    assert "urine" == fill("Foley draining clear yellow [MASK].")[0]["token_str"]
