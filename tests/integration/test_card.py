"""The model card: facts computed from the student and the run, Hub metadata that parses back, no secrets."""

import re

import pytest
import torch
from huggingface_hub import ModelCard
from tiny import ROOT
from transformers import AlbertConfig, AlbertForMaskedLM, BertConfig, BertForMaskedLM

from hf_distil.arguments import DistillationArguments
from hf_distil.card import build_model_card, plot_loss_terms, validate_model_card

SEED_CARD = ROOT.parent / "shared" / "seed-model-card.md"
TEACHER = "emilyalsentzer/Bio_ClinicalBERT"
FAKE_TOKEN = "hf_FAKEtoken123"
METRICS = {
    "eval_loss": 12.3456789,
    "eval_kd_loss": 1.98765,
    "eval_mlm_loss": 2.0948123,
    "eval_hidden_loss": 0.1234567,
    "eval_perplexity": 8.12345678,
    "eval_accuracy": 0.61234567,
    "eval_teacher_agreement": 0.70001,
    "eval_runtime": 3.21,
    "eval_samples_per_second": 99.5,
    "epoch": 3.0,
}
LOG_HISTORY = [
    {"loss": 30.0 - i, "kd_loss": 4.0 - i / 10, "mlm_loss": 3.0 - i / 10, "hidden_loss": 0.5 - i / 100,
     "grad_norm": 1.0, "learning_rate": 1e-5, "epoch": i / 10, "step": 10 * i}
    for i in range(1, 6)
] + [{"eval_loss": 20.0, "eval_kd_loss": 3.0, "epoch": 0.5, "step": 50},
     {"train_loss": 27.0, "train_runtime": 10.0, "epoch": 0.5, "step": 50}]


def _student(num_layers=6, layers=(1, 3, 5, 7, 9, 11), strategy="every_other", **config_kwargs):
    """Bio_ClinicalBERT-shaped student, built on the meta device (no weights needed to count them)."""
    config = BertConfig(vocab_size=28996, num_hidden_layers=num_layers, **config_kwargs)
    if layers is not None:
        config.distil_teacher_layers = list(layers)
    if strategy is not None:
        config.distil_layer_strategy = strategy
    with torch.device("meta"):
        return BertForMaskedLM(config)


def _args(tmp_path, **overrides):
    kwargs = dict(
        output_dir=str(tmp_path / "distil-clinical"), per_device_train_batch_size=32,
        gradient_accumulation_steps=3, num_train_epochs=3, learning_rate=5e-5, warmup_steps=500,
        weight_decay=0.01, seed=42, hub_token=FAKE_TOKEN, report_to="none",
        teacher_model_name_or_path=TEACHER,
    )
    kwargs.update(overrides)
    return DistillationArguments(**kwargs)


def _card(tmp_path, model=None, args=None, **kwargs):
    kwargs = {"teacher_name": TEACHER, "total_train_batch_size": 192, "world_size": 2,
              "dataset_name": "MIMIC-III NOTEEVENTS", "metrics": METRICS, "log_history": LOG_HISTORY,
              "epochs_completed": 3.0, **kwargs}
    return build_model_card(model if model is not None else _student(), args or _args(tmp_path), **kwargs)


def _section(text, title):
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"section {title!r} missing"
    return match.group(1).strip()


def _bibtex(text):
    return re.search(r"```bibtex\n(.*?)```", text, re.S).group(1).strip()


def test_seed_run_card_states_the_computed_facts(tmp_path):
    model = _student()
    text = _card(tmp_path, model=model).text

    arch = _section(text, "Architecture")
    assert re.search(r"hidden dimension and the embedding layer are both set to (\d+)\.", arch).group(1) == "768"
    assert re.search(r"vocabulary size is (\d+)\.", arch).group(1) == "28996"
    assert re.search(r"number of transformer layers is (\d+)", arch).group(1) == "6"
    assert re.search(r"expansion rate of the feed-forward layer is ([\d.]+) ", arch).group(1) == "4"
    millions, exact = re.search(r"around ([\d.]+) million parameters \(([\d,]+) in total\)", arch).groups()
    n_params = sum(p.numel() for p in model.parameters())
    assert int(exact.replace(",", "")) == n_params
    assert 65_800_000 <= n_params < 65_900_000 and millions == "65.8"

    description = _section(text, "Model Description")
    assert f"distilled version of the [{TEACHER}](https://huggingface.co/{TEACHER}) model" in description
    assert "for 3 epochs using a total batch size of 192 on the MIMIC-III NOTEEVENTS dataset" in description
    assert ("KL divergence between the teacher's and student's masked-LM output distributions at temperature 2.0"
            " on masked positions (weight 5.0), the student's masked-LM loss (weight 2.0), and a cosine alignment"
            " of the last hidden states (weight 1.0)") in _section(text, "Distillation Procedure")
    assert "layers 1, 3, 5, 7, 9, 11 (every other layer)" in _section(text, "Initialisation")

    hyper = _section(text, "Training hyperparameters")
    for line in ("- learning rate: 5e-05", "- scheduler: linear", "- warmup: 500 steps", "- weight decay: 0.01",
                 "- epochs: 3", "- seed: 42", "- precision: fp32",
                 "- batch size: 32 per device × 2 device(s) × 3 accumulation step(s) = 192 in total"):
        assert line in hyper.splitlines()
    assert "Intended use and limitations" in text
    if SEED_CARD.is_file():  # the citation is the seed card's, byte for byte
        assert _bibtex(text) == _bibtex(SEED_CARD.read_text(encoding="utf-8"))
    else:
        assert "doi = {10.48550/ARXIV.2302.04725}" in _bibtex(text)


def test_factorised_embedding_and_fractional_expansion_are_reported():
    config = AlbertConfig(vocab_size=1000, embedding_size=16, hidden_size=32, num_hidden_layers=3,
                          num_attention_heads=2, intermediate_size=48)
    with torch.device("meta"):
        model = AlbertForMaskedLM(config)
    args = DistillationArguments(output_dir="unused", report_to="none")
    arch = _section(build_model_card(model, args, teacher_name=None, total_train_batch_size=8).text, "Architecture")
    assert "the hidden dimension is 32 and the embedding size is 16" in arch
    assert "expansion rate of the feed-forward layer is 1.5 (48 units)" in arch
    assert f"({model.num_parameters():,} in total)" in arch


def test_metrics_table_and_loss_plot(tmp_path):
    plot = tmp_path / "out" / "loss_terms.png"
    text = _card(tmp_path, plot_path=str(plot)).text
    results = _section(text, "Training results")
    rows = dict(re.findall(r"^\| (.+?) \| ([-\d.e]+) \|$", results, re.M))
    expected = {"Validation loss (weighted total)": "eval_loss", "KD loss (KL × T²)": "eval_kd_loss",
                "MLM loss": "eval_mlm_loss", "Hidden-state alignment loss": "eval_hidden_loss",
                "Perplexity (exp of MLM loss)": "eval_perplexity", "Masked-token accuracy": "eval_accuracy",
                "Top-1 agreement with the teacher": "eval_teacher_agreement"}
    assert set(rows) == set(expected)  # runtime, throughput and epoch are left out
    for name, key in expected.items():
        assert float(rows[name]) == round(METRICS[key], 4)
    assert "last logged training step (50)" in results and "KD 3.5" in results

    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width = matplotlib.image.imread(str(plot)).shape[:2]
    assert (width, height) == (700, 400)
    assert "](loss_terms.png)" in results


def test_no_plot_without_loss_points(tmp_path):
    evals_only = [{"eval_loss": 1.0, "step": 5}]
    assert plot_loss_terms(evals_only, str(tmp_path / "p.png")) is False
    text = _card(tmp_path, log_history=evals_only, metrics=None, plot_path=str(tmp_path / "p.png")).text
    assert not (tmp_path / "p.png").exists() and ".png" not in text
    assert "No evaluation metrics were recorded" in text


def test_front_matter_parses_back(tmp_path):
    dataset_dir = tmp_path / "local_ds"
    dataset_dir.mkdir()
    card = _card(tmp_path, dataset_ids=["bigbio/mednli", "not a valid id!", str(dataset_dir)],
                 extra_tags=["mimic-iii", "clinical"], language=["en"])
    card.save(tmp_path / "README.md")
    data = ModelCard.load(tmp_path / "README.md").data
    assert (data.library_name, data.pipeline_tag, data.base_model, data.license) == (
        "transformers", "fill-mask", TEACHER, "apache-2.0")
    assert data.language == ["en"] and data.datasets == ["bigbio/mednli"]
    assert data.tags == ["distillation", "knowledge-distillation", "fill-mask", "clinical", "biomedical", "mimic-iii"]
    assert data.model_name == "distil-clinical"
    values = {r.metric_type: r.metric_value for r in data.eval_results}
    assert values == {"perplexity": round(METRICS["eval_perplexity"], 4),
                      "accuracy": round(METRICS["eval_accuracy"], 4)}
    assert {(r.task_type, r.dataset_type, r.dataset_name) for r in data.eval_results} == {
        ("fill-mask", "bigbio/mednli", "MIMIC-III NOTEEVENTS")}


def test_validate_model_card_rejects_bad_metadata():
    with pytest.raises(ValueError, match="base_model"):
        validate_model_card(ModelCard("---\nbase_model: a/b/c\n---\ntext"))
    with pytest.raises(ValueError, match="language"):
        validate_model_card(ModelCard("---\nlanguage: English\n---\ntext"))
    with pytest.raises(ValueError, match="model_index"):
        validate_model_card(ModelCard("---\nmodel-index:\n- name: x\n  results:\n  - task: {}\n---\ntext"))


def test_zero_weight_terms_are_omitted(tmp_path):
    mlm_only = _section(_card(tmp_path, args=_args(tmp_path, alpha_kd=0.0, alpha_hidden=0.0)).text,
                        "Distillation Procedure")
    assert mlm_only.startswith("The training loss is the student's masked-LM loss (weight 2.0): loss = 2.0 · MLM.")
    assert "KL" not in mlm_only and "hidden" not in mlm_only and "teacher was frozen" not in mlm_only

    no_mlm = _section(_card(tmp_path, args=_args(tmp_path, alpha_mlm=0.0, hidden_loss="mse", kd_positions="all",
                                                 temperature=4.0, bf16=False)).text, "Distillation Procedure")
    assert "at temperature 4.0 on all non-padding positions (weight 5.0)" in no_mlm
    assert "a mean-squared-error alignment of the last hidden states (weight 1.0)" in no_mlm
    assert "masked-LM loss" not in no_mlm and "MLM" not in no_mlm


def test_layer_information_absent_or_partial(tmp_path):
    absent = _section(_card(tmp_path, model=_student(layers=None, strategy=None)).text, "Initialisation")
    assert "does not record which teacher layers" in absent and "layers 1" not in absent

    distilbert = _section(_card(tmp_path, model=_student(layers=(0, 2, 4, 7, 9, 11), strategy="distilbert")).text,
                          "Initialisation")
    assert "layers 0, 2, 4, 7, 9, 11 (DistilBERT's choice)" in distilbert
    unnamed = _section(_card(tmp_path, model=_student(num_layers=2, layers=(0, 11), strategy=None)).text,
                       "Initialisation")
    assert "its 2 transformer layers were copied from the teacher's layers 0, 11, counting from 0" in unnamed


def test_local_teacher_no_secrets_no_training_text(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    teacher_dir = tmp_path / "private" / "my_teacher"
    teacher_dir.mkdir(parents=True)
    corpus = tmp_path / "private" / "notes.txt"
    lines = ["Patient zebrafinch-7731 was admitted with quokka syndrome.",
             "Discharge plan: continue xylophone-therapy twice daily."]
    corpus.write_text("\n".join(lines) + "\n")

    card = _card(tmp_path, teacher_name=str(teacher_dir), dataset_name=str(corpus),
                 data_use_note="Distilled on PhysioNet credentialed data; see the MIMIC-III data use agreement.")
    card.save(tmp_path / "README.md")
    saved = (tmp_path / "README.md").read_text()
    assert "the local model `my_teacher`" in card.text and "huggingface.co/my_teacher" not in saved
    assert ModelCard.load(tmp_path / "README.md").data.base_model is None
    assert "on the notes.txt dataset" in card.text
    assert "PhysioNet credentialed data" in _section(card.text, "Data use")
    assert FAKE_TOKEN not in saved and "hub_token" not in saved
    assert str(tmp_path) not in saved  # neither the teacher's nor the corpus's folder
    for fragment in (*lines, "zebrafinch", "quokka", "xylophone"):
        assert fragment not in saved


def test_lora_adapter_card(tmp_path):
    from peft import LoraConfig, get_peft_model

    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64)
    base = BertForMaskedLM(config)
    n_base = base.num_parameters()
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    card = build_model_card(model, _args(tmp_path), teacher_name=TEACHER, total_train_batch_size=192)
    trainable = model.get_nb_trainable_parameters()[0]
    assert f"LoRA adapter (rank 4, alpha 8, on query, value) ({trainable:,} trainable parameters)" in card.text
    assert f"({n_base:,} in total)" in _section(card.text, "Architecture")
    assert card.data.library_name == "peft" and "lora" in card.data.tags


def test_trainer_writes_the_card_facts_it_was_given_and_create_model_card_arguments_win(tmp_path):
    from tiny import tiny_teacher

    from hf_distil import DistillationTrainer, create_student
    from hf_distil.card import DEFAULT_LICENSE, CardFacts

    teacher = tiny_teacher()

    def card(facts=None, **overrides):
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        args = DistillationArguments(output_dir=str(out), report_to="none", use_cpu=True)
        trainer = DistillationTrainer(model=create_student(teacher, 2), teacher_model=teacher, args=args,
                                      **({"card_facts": facts} if facts else {}))
        trainer.create_model_card(**overrides)
        return ModelCard.load(out / "README.md")

    default = card()
    assert (default.data.license, default.data.language, default.data.datasets) == (DEFAULT_LICENSE, "en", None)
    assert "an unrecorded corpus" in default.text and "## Data use" not in default.text

    facts = CardFacts(dataset_name="MIMIC-III NOTEEVENTS", data_use_note="Credentialed access only.", license="mit",
                      language=["en", "fr"], extra_tags=["mimic-iii"])
    given = card(facts)
    assert (given.data.license, given.data.language, given.data.tags[-1]) == ("mit", ["en", "fr"], "mimic-iii")
    assert "on the MIMIC-III NOTEEVENTS dataset" in given.text and "Credentialed access only." in given.text

    overridden = card(facts, license="cc-by-4.0", language="de", tags="extra", dataset="bigbio/mednli")
    assert (overridden.data.license, overridden.data.language) == ("cc-by-4.0", "de")
    assert overridden.data.tags[-1] == "extra" and "mimic-iii" not in overridden.data.tags
    assert overridden.data.datasets == ["bigbio/mednli"] and "MIMIC-III NOTEEVENTS dataset" in overridden.text
    assert facts.license == "mit"  # the trainer's facts are not changed by one call's arguments
    # no licence given: it follows the data; a corpus with a data-use note gets no open licence
    restricted = card(CardFacts(dataset_name="MIMIC-III NOTEEVENTS", data_use_note="Credentialed access only."))
    assert restricted.data.license == "other"


def test_one_parameter_counter_for_the_card_and_fine_tuning():
    """Tied weights once, peft's injected weights left out of the model's own count."""
    from peft import LoraConfig, get_peft_model

    from hf_distil.parameters import ADAPTER_PARAMETER_NAMES, count_parameters

    model = BertForMaskedLM(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64))
    assert count_parameters(model) == (model.num_parameters(), model.num_parameters())
    n_base = model.num_parameters()
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    trainable, total = count_parameters(peft_model)
    assert (trainable, total) == peft_model.get_nb_trainable_parameters()
    assert count_parameters(peft_model, exclude=ADAPTER_PARAMETER_NAMES)[1] == n_base
