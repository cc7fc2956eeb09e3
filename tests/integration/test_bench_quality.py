"""benchmarks/bench_quality.py: the scoring is exact, and --smoke runs the whole pipeline on the shipped teacher."""

import dataclasses
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny import ROOT
from transformers import AutoTokenizer

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_quality  # noqa: E402
import quality_report  # noqa: E402

TEACHER = bench_quality.DEFAULT_TEACHER
WORDS = ("patient denies chest pain fever cough blood pressure insulin diabetes kidney heart rate daily tablet "
         "history mother father smoking alcohol allergies penicillin normal exam abdomen soft tender").split()
HEADERS = ("GENHX", "MEDICATIONS", "ALLERGY", "FAM/SOCHX")


def sentence(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n)) + "."


def write_fake_data(folder: Path) -> Path:
    """Files shaped like ../shared/data (random words, 4 section headers), so the test needs no shared folder."""
    rng = random.Random(0)
    folder.mkdir()
    (folder / "medquad_answers.txt").write_text("\n".join(sentence(rng, 30) for _ in range(320)) + "\n")
    splits = {"TrainingSet": 6, "ValidationSet": 2, "Final_200_TestSet_1": 2, "Final_200_TestSet_2": 2}
    with open(folder / "mts_sections.jsonl", "w") as f:
        for split, per_label in splits.items():
            for header in HEADERS * per_label:
                f.write(json.dumps({"split": split, "section_header": header, "text": sentence(rng, 12)}) + "\n")
    return folder


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TEACHER)


def test_masked_batches_are_fixed_and_never_mask_special_or_padding_tokens(tokenizer):
    texts = ["the patient denies chest pain.", "fever", "blood pressure was normal at the visit today.", "",
             "pain \u2603 \u2603 \u2603"]  # an empty text, and one with [UNK]s
    first, again = bench_quality.masked_batches(tokenizer, texts), bench_quality.masked_batches(tokenizer, texts)
    for a, b in zip(first, again):
        for key in a:
            assert torch.equal(a[key], b[key])
    batch = first[0]
    masked = batch["labels"] != -100
    assert masked.any(dim=1).tolist() == [True, True, True, False, True]  # each text has one, but the empty one
    assert (batch["input_ids"][masked] == tokenizer.mask_token_id).all()
    plain = tokenizer(texts, padding=True, return_tensors="pt")
    assert (plain["input_ids"] == tokenizer.unk_token_id).any()
    special = torch.isin(plain["input_ids"], torch.tensor(tokenizer.all_special_ids))
    assert not (masked & special).any()
    assert torch.equal(batch["labels"][masked], plain["input_ids"][masked])


class ConstantLM(torch.nn.Module):
    """A masked LM with the same logits everywhere: its perplexity and accuracy are known in closed form."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits)

    def forward(self, input_ids, **_):
        return type("Out", (), {"logits": self.logits.expand(*input_ids.shape, -1)})()


def test_scores_equal_their_formulas(tokenizer):
    batches = bench_quality.masked_batches(tokenizer, ["the patient denies chest pain and fever."] * 3)
    vocab = len(tokenizer)
    uniform = bench_quality.score_masked_lm(ConstantLM(torch.zeros(vocab)), batches)
    assert uniform["perplexity"] == pytest.approx(vocab, rel=1e-4)
    labels = torch.cat([b["labels"][b["labels"] != -100] for b in batches])
    favourite = int(labels[0])
    logits = torch.zeros(vocab)
    logits[favourite] = 5.0
    teacher_top1 = torch.full_like(labels, favourite)
    scored = bench_quality.score_masked_lm(ConstantLM(logits), batches, teacher_top1)
    log_p_hit = 5.0 - math.log(math.exp(5.0) + vocab - 1)
    log_p_miss = -math.log(math.exp(5.0) + vocab - 1)
    hits = (labels == favourite).float()
    expected = math.exp(-(hits * log_p_hit + (1 - hits) * log_p_miss).mean().item())
    assert scored["perplexity"] == pytest.approx(expected, rel=1e-4)
    assert scored["masked_accuracy"] == pytest.approx(hits.mean().item())
    assert scored["teacher_agreement"] == 1.0
    log_p = torch.log_softmax(logits.double(), dim=0)
    unigram = bench_quality.score_unigram(log_p, batches)
    assert unigram["masked_accuracy"] == pytest.approx(scored["masked_accuracy"])
    assert unigram["perplexity"] == pytest.approx(expected, rel=1e-4)


def test_training_rows_are_cut_in_turn_so_every_label_is_trained(tmp_path):
    rows = [{"text": f"t{i}", "label": "A" if i < 10 else "B", "split": "s"} for i in range(12)]
    mts = {"train": rows, "validation": [{"text": "v", "label": "B", "split": "s"}],
           "test": [{"text": "x", "label": "C", "split": "s"}, {"text": "y", "label": "A", "split": "s"}]}
    paths = bench_quality.write_mts_files(mts, tmp_path, train_rows=4, eval_rows=5)
    train = [json.loads(line)["label"] for line in paths["train"].read_text().splitlines()]
    assert train == ["A", "B", "A", "B"]
    test = [json.loads(line)["label"] for line in paths["test"].read_text().splitlines()]
    assert test == ["A"]  # a label no training row has would stop the fine-tuning


def test_wrong_folders_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench_quality.main(["--out", str(tmp_path / "o"), "--data", str(tmp_path)])
    assert "has no medquad_answers.txt" in capsys.readouterr().err
    data = write_fake_data(tmp_path / "data")
    with pytest.raises(SystemExit):
        bench_quality.main(["--out", str(tmp_path / "o"), "--data", str(data), "--teacher", str(tmp_path)])
    assert "holds no model" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(SystemExit):
        bench_quality.main(["--out", str(tmp_path / "a-file"), "--data", str(data)])
    assert "--out" in (err := capsys.readouterr().err) and "is a file: pass a folder" in err
    (data / "mts_sections.jsonl").write_text(json.dumps({"split": "TrainingSet", "section_header": "CC",
                                                         "text": "chest pain"}) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        bench_quality.main(["--out", str(tmp_path / "o"), "--data", str(data)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "has no rows of split ValidationSet" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One --smoke run of every part on fake data (shared by the tests below: it is the slowest thing here)."""
    tmp = tmp_path_factory.mktemp("smoke")
    data = write_fake_data(tmp / "data")
    out = tmp / "out"
    return bench_quality.main(["--smoke", "--data", str(data), "--out", str(out)]), out


def test_smoke_distils_every_student_with_each_seed_then_scores_and_fine_tunes_each_run(smoke):
    report, out = smoke
    sizes = bench_quality.SIZES["smoke"]
    names = ["teacher"] + [s.name for s in bench_quality.STUDENTS]
    assert sorted(report["models"]) == sorted(names)
    assert report["distillation_runs_per_student"] == sizes.seeds
    saved = json.loads((out / "quality.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(report["summary"]))
    rows = report["summary"]["rows"]
    for name in names:
        runs = report["models"][name]["runs"]
        assert [r["seed"] for r in runs] == list(range(sizes.seeds))
        assert all(0 <= r["accuracy"] <= 1 and 0 <= r["macro_f1"] <= 1 and r["perplexity"] > 1 for r in runs)
        mean = sum(r["macro_f1"] for r in runs) / len(runs)
        assert rows[name]["macro_f1"] == pytest.approx(mean)
        assert rows[name]["perplexity"] == pytest.approx(sum(r["perplexity"] for r in runs) / len(runs))
        if rows["teacher"]["macro_f1"]:
            assert rows[name]["macro_f1_retention"] == pytest.approx(mean / rows["teacher"]["macro_f1"])
        assert (name == "teacher") == ("teacher_agreement" not in rows[name])
        if name != "teacher":
            assert rows[name]["tokens_per_second"] > 0 and rows[name]["speedup"] > 0
    assert rows["distilled"]["parameters"] < rows["teacher"]["parameters"]
    # Each seed is its own distillation (different data order and masks), fine-tuned with that seed.
    distilled = report["models"]["distilled"]["runs"]
    assert distilled[0]["perplexity"] != distilled[1]["perplexity"]
    for seed in range(sizes.seeds):
        args = json.loads((out / "students" / "distilled" / f"seed{seed}" / "distillation_args.json").read_text())
        assert args["seed"] == args["data_seed"] == seed
    # Same budget for every trained student: their arguments differ only in the objective, the init and the paths.
    budgets = []
    objective_keys = {key for student in bench_quality.STUDENTS for key in student.objective}
    for student in bench_quality.STUDENTS:
        if not student.trained:
            continue
        folder = out / "students" / student.slug / "seed0"
        args = json.loads((folder / "distillation_args.json").read_text())
        assert args["max_steps"] == sizes.distil_steps
        for term in ("alpha_kd", "alpha_mlm", "alpha_hidden", "alpha_attention", "alpha_intermediate",
                     "alpha_relation"):
            assert args[term] == student.objective.get(term, 0.0), (student.name, term)
        config = json.loads((folder / "config.json").read_text())
        for name, value in (student.widths or {}).items():  # the narrower students are narrower
            assert config[name] == value and config["distil_init"] == "random"
        budgets.append({k: v for k, v in args.items() if k not in objective_keys
                        and not k.startswith(("alpha_", "output_dir", "logging_dir", "student_model_name_or_path"))})
    assert len(budgets) == 10 and all(b == budgets[0] for b in budgets)
    assert [json.loads((out / "students" / slug / "seed0" / "distillation_args.json").read_text())["temperature"]
            for slug in ("distilled", "distilled-at-T-1")] == [2.0, 1.0]
    assert json.loads((out / "students" / "TinyBERT-style" / "seed0" / "distillation_args.json").read_text())[
        "attention_loss"] == "scores"
    narrow = rows["TinyBERT-style"]["parameters"]
    assert narrow == rows["MiniLM-style"]["parameters"] == rows["narrow mlm-only"]["parameters"]
    assert narrow < rows["distilled"]["parameters"]
    # Every model is fine-tuned with float32 weights, the float16 teacher included.
    for folder in (out / "finetune").glob("*/seed*"):
        assert json.loads((folder / "config.json").read_text())["dtype"] == "float32", folder
    # The MLM-only baseline is still compared with the teacher (agreement and KL reported without a KD term).
    mlm_only = report["models"]["mlm-only"]["runs"][0]["distillation"]["recipe_metrics"]
    assert "eval_teacher_agreement" in mlm_only and "eval_kd_loss" in mlm_only
    table = (out / "quality.md").read_text()
    assert all(f"| {name} |" in table for name in names) and "unigram" in table
    assert (out / "quality.png").stat().st_size > 0


def test_smoke_pairs_each_method_with_its_control_seed_by_seed(smoke):
    report, out = smoke
    comparisons = report["summary"]["comparisons"]
    expected = {f"{m} − {c}" for pairs in bench_quality.COMPARISONS.values() for m, c in pairs}
    assert set(comparisons) == expected
    assert {"distilled − mlm-only", "without KD − distilled", "without cosine − distilled", "without MLM − distilled",
            "mlm-only − distilled", "random-init distilled − distilled", "distilled at T 1 − distilled",
            "distilled at T 1 − mlm-only", "TinyBERT-style − narrow mlm-only",
            "MiniLM-style − narrow mlm-only"} == expected
    runs = report["models"]
    for metric, higher in (("macro_f1", True), ("perplexity", False)):
        gap = comparisons["distilled − mlm-only"][metric]
        diffs = [d[metric] - m[metric] for d, m in zip(runs["distilled"]["runs"], runs["mlm-only"]["runs"])]
        assert gap["paired_differences"] == pytest.approx(diffs) and gap["mean"] == pytest.approx(sum(diffs) / 2)
        se = statistics.stdev(diffs) / math.sqrt(2)
        assert gap["standard_error"] == pytest.approx(se)
        gain = gap["mean"] if higher else -gap["mean"]
        assert gap["better_by_2se"] == (gain > 2 * se) and gap["higher_is_better"] == higher
    row = "| distilled − mlm-only | " + " | ".join(quality_report.gap_cell(comparisons["distilled − mlm-only"][m])
                                                   for m in quality_report.HIGHER_IS_BETTER) + " |"
    assert row in (out / "quality.md").read_text()  # one row per pair, a column per score


def test_smoke_budget_curve_runs_each_budget_and_reuses_the_main_runs(smoke):
    report, out = smoke
    sizes = bench_quality.SIZES["smoke"]
    curve = report["budget_curve"]
    assert curve["steps"] == list(sizes.curve_steps)
    for name in bench_quality.CURVE_STUDENTS:
        points = curve["students"][name]
        assert [p["steps"] for p in points] == list(sizes.curve_steps)
        for point in points:
            if point["steps"] == sizes.distil_steps:  # the main part's seed-0 run, not trained again
                assert point["minutes"] is None
                assert point["perplexity"] == report["models"][name]["runs"][0]["perplexity"]
            else:
                slug = name.replace(" ", "-")
                args = json.loads((out / "curve" / slug / f"steps{point['steps']}" / "distillation_args.json")
                                  .read_text())
                assert args["max_steps"] == point["steps"] and args["seed"] == 0
    assert (out / "budget_curve.png").stat().st_size > 0 and "## Budget curve" in (out / "quality.md").read_text()
    # At the largest budget each student is fine-tuned with every seed; the smoke's largest budget is the main part's,
    # so its seed-0 fine-tuning is the main part's seed-0 run: the same model, the same seed, the same scores.
    downstream = curve["downstream"]
    assert downstream["steps"] == sizes.curve_steps[-1] == sizes.distil_steps
    teacher_f1 = report["summary"]["rows"]["teacher"]["macro_f1"]
    for name in bench_quality.CURVE_STUDENTS:
        runs = downstream["students"][name]
        assert [run["seed"] for run in runs] == list(range(sizes.seeds))
        assert runs[0]["macro_f1"] == pytest.approx(report["models"][name]["runs"][0]["macro_f1"])
        assert (out / "finetune" / f"{name.replace(' ', '-')}-at-4-steps" / "seed1" / "config.json").is_file()
        row = downstream["summary"]["rows"][name]
        assert row["macro_f1"] == pytest.approx(statistics.fmean(run["macro_f1"] for run in runs))
        if teacher_f1:
            assert row["macro_f1_retention"] == pytest.approx(row["macro_f1"] / teacher_f1)
    gap = downstream["summary"]["comparisons"]["distilled − mlm-only"]
    pairs = zip(*(downstream["students"][name] for name in ("distilled", "mlm-only")))
    assert gap["accuracy"]["paired_differences"] == pytest.approx([d["accuracy"] - m["accuracy"] for d, m in pairs])
    assert "perplexity" not in gap  # the curve's perplexities are one run each, not paired over seeds
    assert "Fine-tuned on MTS sections at 4 steps" in (out / "quality.md").read_text()


def test_smoke_task_part_distils_each_seeds_fine_tuned_teacher_beside_the_plain_control(smoke):
    full, out = smoke
    report = full["task_distillation"]
    sizes = bench_quality.SIZES["smoke"]
    assert [run["seed"] for run in report["runs"]] == list(range(sizes.seeds))
    rows = report["summary"]["rows"]
    assert list(rows) == list(bench_quality.TASK_ROLES)
    for role in bench_quality.TASK_ROLES:
        values = [run[role]["macro_f1"] for run in report["runs"]]
        assert all(0 <= v <= 1 for v in values) and rows[role]["macro_f1"] == pytest.approx(sum(values) / len(values))
    for init in bench_quality.TASK_INITS:
        distilled, plain = f"task-distilled, {init}", f"plain, {init}"
        assert rows[distilled]["parameters"] == rows[plain]["parameters"] < rows["fine-tuned teacher"]["parameters"]
        diffs = [run[distilled]["macro_f1"] - run[plain]["macro_f1"] for run in report["runs"]]
        assert report["summary"]["gaps"][init]["macro_f1"]["paired_differences"] == pytest.approx(diffs)
        for seed in range(sizes.seeds):
            student = out / "task" / f"seed{seed}" / init.replace(" ", "-")
            config = json.loads((student / "config.json").read_text())
            assert config["num_hidden_layers"] == sizes.student_layers
            assert config["distil_init"] == ("checkpoint" if init == "pretrained layers" else "teacher_layers")
            # Same budget for the distilled student and its control, and the shipped config's objective.
            args = json.loads((student / "distillation_args.json").read_text())
            control = json.loads((student / "compare_with" / "training_args.json").read_text())
            for key in ("num_train_epochs", "learning_rate", "per_device_train_batch_size", "seed", "warmup_steps"):
                assert args[key] == control[key], key
            assert args["alpha_kd"] == report["objective"]["alpha_kd"] and args["seed"] == seed
            assert (student / "comparison.md").is_file() and "README.md" in os.listdir(student)
    assert json.loads((out / "task_distillation.json").read_text())["summary"] == \
        json.loads(json.dumps(report["summary"]))
    assert "| pretrained layers: task-distilled − plain | " in (out / "task_distillation.md").read_text()
    # what each teacher's soft labels hold beyond the gold labels, on its transfer set and on the test sections
    for run in report["runs"]:
        labels = json.loads((out / "task" / f"seed{run['seed']}" / "teacher" / "config.json").read_text())["id2label"]
        for split, fit in run["teacher_targets"].items():
            assert fit["rows"] == sum(1 for _ in open(out / "mts" / f"{split}.jsonl"))
            assert 0 <= fit["agrees_with_gold"] <= 1 and 1 / len(labels) <= fit["mean_top_probability"] <= 1
            assert 0 <= fit["mass_off_gold"] <= 1 and 0 <= fit["entropy_nats"] <= math.log(len(labels)) + 1e-6
            # the gold label's mean probability is at most the top class's
            assert 1 - fit["mass_off_gold"] <= fit["mean_top_probability"] + 1e-6
    assert "What the teachers' soft labels hold beyond the gold ones" in (out / "task_distillation.md").read_text()
    assert "## Task distillation" in (out / "quality.md").read_text()


def test_a_part_run_alone_merges_with_the_parts_already_in_the_folder(smoke, tmp_path):
    """Parts run apart (each within a machine's limit) still make one report; a part run again replaces its own."""
    report, out = smoke
    copy = tmp_path / "out"
    (copy / "parts").mkdir(parents=True)
    for name in ("teacher", "curve"):
        (copy / "parts" / f"{name}.json").write_text((out / "parts" / f"{name}.json").read_text())
    merged = quality_report.merge(copy)
    assert list(merged["models"]) == ["teacher"] and "budget_curve" in merged and "task_distillation" not in merged
    (copy / "parts" / "task.json").write_text((out / "parts" / "task.json").read_text())
    assert quality_report.merge(copy)["task_distillation"]["runs"] == report["task_distillation"]["runs"]



def test_students_runs_only_the_rows_named_and_the_comparisons_between_them(smoke, tmp_path, capsys):
    """A part split into runs of a few rows each (each within a machine's limit) still makes one report; an unknown
    row is one line."""
    import shutil

    _, out = smoke
    with pytest.raises(SystemExit):
        bench_quality.main(["--smoke", "--out", str(tmp_path), "--students", "distilled,mlm only"])
    assert "--students mlm only: no such row" in capsys.readouterr().err
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    for folder in ("students", "finetune"):  # a copied model's record names the folder it was made in: not ours
        for row in ("TinyBERT-style", "MiniLM-style", "narrow-mlm-only"):
            shutil.rmtree(copy / folder / row, ignore_errors=True)
    data = write_fake_data(tmp_path / "data")
    report = bench_quality.main(["--smoke", "--data", str(data), "--out", str(copy), "--part", "narrow",
                                 "--students", "TinyBERT-style, narrow mlm-only"])
    narrow = json.loads((copy / "parts" / "narrow.json").read_text())
    earlier = json.loads((out / "parts" / "narrow.json").read_text())
    # the rows run now replace their earlier runs; the row not named (MiniLM-style) stays from the earlier run
    assert sorted(narrow["models"]) == ["MiniLM-style", "TinyBERT-style", "narrow mlm-only"]
    assert narrow["models"]["MiniLM-style"] == earlier["models"]["MiniLM-style"]
    assert (copy / "students" / "TinyBERT-style" / "seed0" / "model.safetensors").exists()  # distilled again
    assert narrow["comparisons_run"] == [["TinyBERT-style", "narrow mlm-only"], ["MiniLM-style", "narrow mlm-only"]]
    # which run made which rows: the first run's, then this one's
    assert [run["rows"] for run in narrow["runs_history"]] == [["TinyBERT-style", "MiniLM-style", "narrow mlm-only"],
                                                               ["TinyBERT-style", "narrow mlm-only"]]
    assert "distilled" in report["models"]  # main's rows still merged


def test_the_budget_curve_splits_by_student_and_joins_the_saved_points(smoke, tmp_path, capsys):
    """The curve's students run apart (two one-thread runs on 2 cores, or two sessions): each run's points join the
    saved ones; a row that is not on the curve, or --students with the task part, is one line before any compute."""
    _, out = smoke
    data = write_fake_data(tmp_path / "data")
    for part, row in (("curve", "without KD"), ("task", "distilled"), ("narrow", "distilled")):
        with pytest.raises(SystemExit):
            bench_quality.main(["--smoke", "--data", str(data), "--out", str(tmp_path / "x"), "--part", part,
                                "--students", row])
        assert f"--students {row}: not a row of --part {part}" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    fresh = tmp_path / "fresh"
    (fresh / "parts").mkdir(parents=True)
    earlier = json.loads((out / "parts" / "curve.json").read_text())
    (fresh / "parts" / "curve.json").write_text(json.dumps(earlier))
    bench_quality.main(["--smoke", "--data", str(data), "--out", str(fresh), "--part", "curve", "--students",
                        "mlm-only"])
    curve = json.loads((fresh / "parts" / "curve.json").read_text())
    assert list(curve["students"]) == list(bench_quality.CURVE_STUDENTS)
    assert curve["students"]["distilled"] == earlier["students"]["distilled"]  # saved, not trained here
    assert curve["downstream"]["students"]["distilled"] == earlier["downstream"]["students"]["distilled"]
    assert not (fresh / "finetune" / "distilled-at-4-steps").exists()
    assert (fresh / "finetune" / "mlm-only-at-4-steps" / "seed0").is_dir()
    assert not (fresh / "curve" / "distilled").exists() and (fresh / "curve" / "mlm-only").is_dir()
    assert [p["steps"] for p in curve["students"]["mlm-only"]] == list(bench_quality.SIZES["smoke"].curve_steps)
    assert [run["rows"] for run in curve["runs_history"]] == [["distilled", "mlm-only"], ["mlm-only"]]
    # another budget's curve is moved aside, not joined
    (fresh / "parts" / "curve.json").write_text(json.dumps({**curve, "sizes": {**curve["sizes"], "distil_steps": 9}}))
    bench_quality.main(["--smoke", "--data", str(data), "--out", str(fresh), "--part", "curve", "--students",
                        "mlm-only"])
    assert "cannot be joined" in capsys.readouterr().out and len(list((fresh / "replaced_parts").glob("curve-*"))) == 1
    assert list(json.loads((fresh / "parts" / "curve.json").read_text())["students"]) == ["mlm-only"]
    (fresh / "parts" / "curve.json").write_text('{"students": {"distilled"')  # cut off while written
    bench_quality.main(["--smoke", "--data", str(data), "--out", str(fresh), "--part", "curve", "--students",
                        "mlm-only"])
    assert "is not valid JSON and cannot be joined" in capsys.readouterr().out
    assert len(list((fresh / "replaced_parts").glob("curve-*"))) == 2


def test_parts_moved_aside_within_one_second_are_all_kept(tmp_path, monkeypatch):
    """Two saved parts moved aside in the same second (a fast machine) keep both files: neither overwrites the other."""
    monkeypatch.setattr(bench_quality.time, "strftime", lambda fmt, *a: "20261207-120000")
    bench = SimpleNamespace(args=SimpleNamespace(out=tmp_path, students=["mlm-only"]))
    (tmp_path / "parts").mkdir()
    for n in range(3):
        (tmp_path / "parts" / "curve.json").write_text(f'{{"cut off {n}"')
        assert bench_quality.joinable_part(bench, "curve") is None
    kept = sorted((tmp_path / "replaced_parts").iterdir())
    assert [p.name for p in kept] == ["curve-20261207-120000-2.json", "curve-20261207-120000-3.json",
                                      "curve-20261207-120000.json"]
    assert sorted(p.read_text() for p in kept) == [f'{{"cut off {n}"' for n in range(3)]


def test_two_runs_in_one_folder_keep_each_others_rows(tmp_path, monkeypatch):
    """Two --students runs side by side in one OUT: the run that writes second joins the rows the other wrote while
    it trained (it had read the part before they existed); the text a run trains on is never rewritten under it."""
    data, out = write_fake_data(tmp_path / "data"), tmp_path / "out"
    argv = ["--smoke", "--data", str(data), "--out", str(out), "--part", "main", "--students"]
    phase, beside, corpus = bench_quality.Bench.phase, [], out / "corpus" / "train.jsonl"

    def a_run_beside(self, text):
        if text.startswith("inference speed") and not beside:  # the first run has trained, not yet written
            beside.append(corpus.stat().st_mtime_ns)
            bench_quality.main([*argv, "distilled"])
        phase(self, text)

    monkeypatch.setattr(bench_quality.Bench, "phase", a_run_beside)
    (out / "parts").mkdir(parents=True)
    (out / "parts" / "teacher.json").write_text('{"model": {"runs": [')  # cut off while written: made again
    bench_quality.main([*argv, "mlm-only"])
    part = json.loads((out / "parts" / "main.json").read_text())
    assert list(part["models"]) == ["distilled", "mlm-only"]
    assert [run["rows"] for run in part["runs_history"]] == [["distilled"], ["mlm-only"]]
    assert "distilled − mlm-only" in part["comparisons"]
    assert set(json.loads((out / "quality.json").read_text())["models"]) == {"teacher", "distilled", "mlm-only"}
    assert corpus.stat().st_mtime_ns == beside[0]  # the same text: left as it was, not written again
    assert not [p.name for p in (*out.iterdir(), *(out / "parts").iterdir(), *(out / "mts").iterdir())
                if p.name.startswith(".") and p.name != ".lock"]  # nothing half-made left behind


def test_the_parts_lock_makes_a_second_holder_wait(tmp_path):
    """Two holders of OUT's parts lock (two runs in one OUT) take turns: the second enters only after the first left."""
    import threading

    bench = SimpleNamespace(args=SimpleNamespace(out=tmp_path))
    entered, order = threading.Event(), []

    def first():
        with bench_quality.Bench.parts_locked(bench):
            entered.set()
            time.sleep(0.3)
            order.append("first leaves")

    thread = threading.Thread(target=first)
    thread.start()
    entered.wait()
    with bench_quality.Bench.parts_locked(bench):
        order.append("second enters")
    thread.join()
    assert order == ["first leaves", "second enters"]


def test_a_part_that_is_not_json_is_left_out_of_the_report_with_one_line(tmp_path, capsys):
    """merge() beside a part cut off while written: one line names it, the other parts still make the report; a curve
    with one student fine-tuned shows its row and no comparison."""
    parts = tmp_path / "parts"
    parts.mkdir()
    results = ROOT / "benchmarks" / "results" / "parts"
    (parts / "teacher.json").write_text((results / "teacher.json").read_text())
    curve = json.loads((results / "curve.json").read_text())
    curve["downstream"] = {"steps": curve["steps"][-1], "students": {"distilled": [
        {"seed": seed, "accuracy": 0.6 + seed / 100, "macro_f1": 0.3} for seed in range(3)]}}
    (parts / "curve.json").write_text(json.dumps(curve))
    (parts / "main.json").write_text('{"models": {"distilled": ')
    report = quality_report.merge(tmp_path)
    assert f"{parts / 'main.json'} is not valid JSON: left out of the report" in capsys.readouterr().out
    assert set(report["models"]) == {"teacher"} and report["budget_curve"]["downstream"]["summary"]["comparisons"] == {}
    text = (tmp_path / "quality.md").read_text()
    assert "| distilled | 0.610 ± 0.010 | 0.300 ± 0.000 |" in text
    assert "same fine-tuning seed, one distillation" not in text  # no comparison, no footnote to one


def test_a_finished_student_is_reused_only_with_the_same_flags(smoke, tmp_path, monkeypatch):
    """A part killed halfway (a session's end) keeps the students it finished: the next run reuses a folder whose
    bench_run.json has exactly its flags, trains again otherwise, and a run that does not finish leaves no record."""
    import shutil

    from hf_distil import recipe

    report, out = smoke
    sizes, student = bench_quality.SIZES["smoke"], bench_quality.BY_NAME["distilled"]
    folder = tmp_path / "seed0"
    shutil.copytree(out / "students" / "distilled" / "seed0", folder)
    record = json.loads((folder / bench_quality.RUN_RECORD).read_text())
    assert record["flags"]["seed"] == "0" and record["result"]["recipe_metrics"]["train_loss"] > 0
    calls = []
    monkeypatch.setattr(recipe, "main", lambda argv: calls.append(argv) or 1)  # "fails" whenever it is run
    args = (student, bench_quality.DEFAULT_TEACHER, out / "corpus", folder, sizes, "cpu")
    with pytest.raises(bench_quality.BenchmarkInputError, match="failed"):
        bench_quality.distil_student(*args, seed=0)  # a copy made elsewhere is not this folder's run: trained again
    assert len(calls) == 1 and not (folder / bench_quality.RUN_RECORD).exists()  # and the failed run left no record
    record["flags"]["output_dir"] = str(folder)  # as if it had finished here
    (folder / bench_quality.RUN_RECORD).write_text(json.dumps(record))
    reused = bench_quality.distil_student(*args, seed=0)
    assert len(calls) == 1 and reused["reused"] and reused["recipe_metrics"] == record["result"]["recipe_metrics"]
    with pytest.raises(bench_quality.BenchmarkInputError, match="failed"):
        bench_quality.distil_student(*args, seed=1)  # another seed: trained again
    assert len(calls) == 2 and not (folder / bench_quality.RUN_RECORD).exists()


def test_a_saved_part_is_matched_by_the_teachers_weights_not_its_path():
    """Parts committed or copied from another checkout still merge (same weights, same sizes); another teacher's or
    another budget's do not; a part saved before the hash kept matching by path."""
    from types import SimpleNamespace

    sizes = bench_quality.SIZES["smoke"]
    bench = SimpleNamespace(args=SimpleNamespace(teacher=TEACHER), sizes=sizes,
                            teacher_sha256=bench_quality.weights_sha256(TEACHER))
    assert len(bench.teacher_sha256) == 64 and bench.teacher_sha256 == bench_quality.weights_sha256(TEACHER)
    saved = {"teacher": "/another/checkout/medical-bert-teacher", "teacher_sha256": bench.teacher_sha256,
             "sizes": json.loads(json.dumps(dataclasses.asdict(sizes)))}
    assert bench_quality.same_run(saved, bench)
    assert not bench_quality.same_run({**saved, "teacher_sha256": "0" * 64}, bench)
    assert not bench_quality.same_run({**saved, "sizes": {**saved["sizes"], "distil_steps": 5}}, bench)
    older = {k: v for k, v in saved.items() if k != "teacher_sha256"}
    assert not bench_quality.same_run(older, bench)
    assert bench_quality.same_run({**older, "teacher": str(TEACHER)}, bench)


def test_a_part_continues_in_a_fresh_folder_from_its_saved_json(smoke, tmp_path, capsys):
    """The next session, on another machine: only the saved parts (results/parts/*.json) are there; the rows run now
    join the saved ones, and the teacher's classifier the speeds are measured against is fine-tuned again."""
    _, out = smoke
    fresh = tmp_path / "fresh"
    (fresh / "parts").mkdir(parents=True)
    for name in ("teacher", "main"):
        (fresh / "parts" / f"{name}.json").write_text((out / "parts" / f"{name}.json").read_text())
    earlier = json.loads((out / "parts" / "main.json").read_text())
    report = bench_quality.main(["--smoke", "--data", str(write_fake_data(tmp_path / "data")), "--out", str(fresh),
                                 "--part", "main", "--students", "init only"])
    main = json.loads((fresh / "parts" / "main.json").read_text())
    assert list(main["models"]) == list(earlier["models"])  # every row, the saved ones kept as they were
    assert main["models"]["distilled"] == earlier["models"]["distilled"]
    assert (fresh / "finetune" / "teacher" / "seed0" / "config.json").is_file()
    assert not (fresh / "students" / "distilled").exists() and "without KD − distilled" in report["comparisons"]
    # A saved part that cannot be joined (another budget, or written before the teacher and sizes were recorded) is
    # said before the compute and moved aside, never overwritten with the new rows alone.
    assert main["runs_history"][-1]["rows"] == ["init only"] and len(main["runs_history"]) == 2
    noted = {**{k: v for k, v in main.items() if k != "runs_history"}, "runs_note": "joined by hand"}
    (fresh / "parts" / "main.json").write_text(json.dumps(noted))
    bench_quality.main(["--smoke", "--data", str(tmp_path / "data"), "--out", str(fresh), "--part", "main",
                        "--students", "init only"])
    history = json.loads((fresh / "parts" / "main.json").read_text())["runs_history"]
    assert history[0] == {"note": "joined by hand"} and history[1]["rows"] == ["init only"] and len(history) == 2
    older = {k: v for k, v in main.items() if k not in ("teacher", "teacher_sha256", "sizes")}
    (fresh / "parts" / "main.json").write_text(json.dumps(older))
    bench_quality.main(["--smoke", "--data", str(tmp_path / "data"), "--out", str(fresh), "--part", "main",
                        "--students", "init only"])
    assert "cannot be joined" in capsys.readouterr().out
    (moved,) = (fresh / "replaced_parts").glob("main-*.json")
    assert json.loads(moved.read_text()) == older
    assert list(json.loads((fresh / "parts" / "main.json").read_text())["models"]) == ["init only"]


DATA = ROOT.parent / "shared" / "data"


@pytest.mark.skipif(not (DATA / "medquad_answers.txt").exists(), reason=f"real text not found in {DATA}")
def test_the_shipped_teacher_card_states_the_scores_of_the_shipped_weights(tmp_path, tokenizer):
    """Rescore the float16 asset on the held-out text: the card's table and scores.json are this model's numbers."""
    import make_quality_teacher
    from transformers import AutoModelForMaskedLM

    sys.path.insert(0, str(ROOT / "recipes"))
    import make_real_text_corpus

    make_real_text_corpus.main(["--out", str(tmp_path)])
    model = AutoModelForMaskedLM.from_pretrained(TEACHER, dtype=torch.float32)
    assert {p.dtype for p in AutoModelForMaskedLM.from_pretrained(TEACHER).parameters()} == {torch.float16}
    batches = bench_quality.masked_batches(tokenizer, make_quality_teacher.read_texts(tmp_path / "valid.jsonl"))
    scores = bench_quality.score_masked_lm(model, batches)
    shipped = json.loads((TEACHER / "scores.json").read_text())
    assert scores["perplexity"] == pytest.approx(shipped["model"]["perplexity"], rel=1e-3)
    assert scores["masked_accuracy"] == pytest.approx(shipped["model"]["masked_accuracy"], abs=1e-4)
    card = (TEACHER / "README.md").read_text()
    assert f"| this model | {scores['masked_accuracy']:.3f} | {scores['perplexity']:.1f} |" in card
    assert "license: cc-by-4.0" in card and "MedQuAD" in card and "MTS-Dialog" in card
    # Clearly better than the unigram model of the training text, or the benchmark's table means nothing.
    assert scores["perplexity"] < shipped["unigram"]["perplexity"] / 3


def test_the_teacher_commands_run_end_to_end_at_toy_size(tmp_path):
    """pretrain_medical_teacher.py then make_quality_teacher.py, as the shipped card says, on a toy corpus."""
    sys.path.insert(0, str(ROOT / "recipes"))
    import make_quality_teacher
    import pretrain_medical_teacher

    rng = random.Random(1)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    clinical = [sentence(rng, 12) for _ in range(10)]
    texts = {"train.jsonl": [sentence(rng, 40) for _ in range(200)],
             "valid.jsonl": [sentence(rng, 40) for _ in range(20)] + clinical, "valid_clinical.jsonl": clinical}
    for name, rows in texts.items():
        (corpus / name).write_text("".join(json.dumps({"text": text}) + "\n" for text in rows))
    trained, shipped = tmp_path / "trained", tmp_path / "asset"
    pretrain_medical_teacher.main(["--corpus", str(corpus), "--output_dir", str(trained), "--max_steps", "6",
                                   "--hidden_size", "32", "--intermediate_size", "64", "--vocab_size", "200",
                                   "--per_device_train_batch_size", "8", "--save_steps", "3", "--eval_steps", "3"])
    run = json.loads((trained / "run.json").read_text())
    assert run["train_steps"] == 6 and (trained / "checkpoints" / "checkpoint-6").is_dir()
    # The held-out clinical curve at the start and every eval_steps; the result is its best weights.
    curve = [run["held_out_start"]] + [e["held_out"] for e in run["log_history"] if "held_out" in e]
    assert [e["step"] for e in curve] == [0, 3, 6]
    best = min(curve, key=lambda e: e["clinical_perplexity"])
    assert run["best"] == best
    make_quality_teacher.main(["--corpus", str(corpus), "--trained", str(trained), "--out", str(shipped)])
    scores = json.loads((shipped / "scores.json").read_text())
    card = (shipped / "README.md").read_text()
    assert f"| this model | {scores['model']['masked_accuracy']:.3f} | {scores['model']['perplexity']:.1f} |" in card
    assert "--max_steps 6 --learning_rate 0.0005" in card and "6 layer" not in card
    assert f"| {best['step']:,} (kept) | {best['clinical_perplexity']:.1f} |" in card
    assert json.loads((shipped / "config.json").read_text())["dtype"] == "float16"
    assert scores["clinical"]["masked_tokens"] > 0 and scores["medquad"]["masked_tokens"] > 0
    # Continued from that asset (its weights, vocabulary and record), the card says it has two legs.
    again = tmp_path / "again"
    pretrain_medical_teacher.main(["--corpus", str(corpus), "--output_dir", str(again), "--max_steps", "3",
                                   "--init_from", str(shipped), "--per_device_train_batch_size", "8",
                                   "--save_steps", "3", "--eval_steps", "3"])
    assert json.loads((again / "run.json").read_text())["held_out_start"]["clinical_perplexity"] == pytest.approx(
        best["clinical_perplexity"], rel=1e-2)  # the kept weights, stored in float16
    make_quality_teacher.main(["--corpus", str(corpus), "--trained", str(again), "--out", str(tmp_path / "asset2")])
    card = (tmp_path / "asset2" / "README.md").read_text()
    assert "In two legs" in card and "--init_from FOLDER_OF_THE_EARLIER_TEACHER" in card
    assert f"| the earlier teacher this one continues | {scores['model']['masked_accuracy']:.3f}" in card


def test_term_gradients_smoke_reports_each_attention_form_beside_kd(tmp_path):
    import term_gradients

    data = write_fake_data(tmp_path / "data")
    report = term_gradients.main(["--smoke", "--data", str(data), "--json", str(tmp_path / "g.json")])
    forms = report["forms"]
    assert list(forms) == ["scores", "probs", "kl"]
    for terms in forms.values():
        assert set(terms) == {"kd", "attention", "intermediate"} and terms["kd"] == forms["scores"]["kd"]
        assert all(t["grad_norm"] > 0 and t["weight"] == 1.0 for t in terms.values())
    # the probabilities' MSE is tiny beside the scores' (the reason TinyBERT's code fits the scores)
    assert forms["probs"]["attention"]["grad_norm"] < forms["scores"]["attention"]["grad_norm"] / 100
    assert json.loads((tmp_path / "g.json").read_text())["forms"] == json.loads(json.dumps(forms))
    assert "| scores | attention |" in (tmp_path / "g.md").read_text()
