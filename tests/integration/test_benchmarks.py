"""benchmarks/: the seed-style baseline computes our objective, and bench_step.py runs end to end (no timing claims)."""

import json
import sys

import pytest
import torch
from tiny import ROOT, premasked_dataset, tiny_teacher
from transformers import default_data_collator

from hf_distil import DistillationArguments, DistillationTrainer, create_student

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_step  # noqa: E402
from seed_style import SeedStyleDistiller  # noqa: E402

SEED = dict(temperature=2.0, alpha_kd=5.0, alpha_mlm=2.0, alpha_hidden=1.0, hidden_loss="cosine", kd_positions="masked")


def test_seed_style_loss_and_gradients_equal_distillation_trainer(tmp_path):
    teacher = tiny_teacher(seed=1, dropout=0.0)
    student = create_student(teacher, 2)
    batch = default_data_collator([premasked_dataset(6, seed=3)[i] for i in range(6)])  # padded rows, uneven masks
    assert (batch["attention_mask"] == 0).any()
    args = DistillationArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, **SEED)
    trainer = DistillationTrainer(model=student, args=args, teacher_model=teacher)
    wrapper = SeedStyleDistiller(student, trainer.teacher, 2.0, 5.0, 2.0, 1.0)

    ours, terms = trainer.compute_loss(student, batch, return_outputs=True)
    ours.backward()
    ours_grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    student.zero_grad()
    seed = wrapper(**batch)
    seed["loss"].backward()

    torch.testing.assert_close(ours, seed["loss"], rtol=1e-5, atol=1e-6)
    for name in ("kd", "mlm", "hidden"):
        torch.testing.assert_close(terms[name], seed[name], rtol=1e-5, atol=1e-6)
    assert terms["kd"] > 0 and terms["hidden"] > 0
    seed_grads = {n: p.grad for n, p in student.named_parameters() if p.grad is not None}
    assert seed_grads.keys() == ours_grads.keys()
    for name, grad in ours_grads.items():
        torch.testing.assert_close(grad, seed_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert all(p.grad is None for p in teacher.parameters())


def test_bench_step_runs_end_to_end_and_writes_the_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    sizes = ["--teacher_layers", "2", "--hidden", "32", "--vocab", "100", "--batch", "4", "--seq", "16",
             "--threads", "1"]  # one thread: tiny ops on a busy machine otherwise wait on OpenMP barriers
    bench_step.main([*sizes, "--steps", "2", "--warmup", "1", "--rounds", "1", "--json", str(out)])
    report = json.loads(out.read_text())

    assert report["loss_check"]["rel_diff"] < 1e-5
    assert set(report["contenders"]) == {"ours", "seed", "floor"}
    for name, figures in report["contenders"].items():
        assert len(report["runs"][name]) == 1 and len(report["runs"][name][0]["step_times_s"]) == 2
        assert 0 < figures["min_step_s"] <= figures["median_step_s"] <= figures["max_step_s"]
        assert figures["tokens_per_s"] == pytest.approx(4 * 16 / figures["median_step_s"])
        assert figures["peak_rss_mib"] >= figures["setup_rss_mib"] > 50
    for key in ("ours/seed", "ours/floor"):
        r, base = report["ratios"][key], report["contenders"][key.split("/")[1]]
        ours = report["contenders"]["ours"]
        assert r["time"] == pytest.approx(ours["median_step_s"] / base["median_step_s"])
        assert r["cpu_time"] == pytest.approx(ours["median_step_cpu_s"] / base["median_step_cpu_s"])
        assert r["memory"] == pytest.approx(ours["peak_rss_mib"] / base["peak_rss_mib"])
        assert r["time_paired"] > 0
    printed = capsys.readouterr().out
    assert "ours vs seed:" in printed and "ours vs floor:" in printed


def test_step_flops_is_the_documented_formula_and_mfu_needs_a_known_peak(tmp_path, capsys):
    """0.46 GFLOP per token at the seed's sizes (issue 24's count); MFU only against a peak that is known."""
    a = bench_step.parse_args(["--batch", "48"])
    per_token = bench_step.step_flops(a) / (48 * 128)
    d, i, v = 768, 3072, 28996
    layer = 2 * (4 * d * d + 2 * d * i) + 4 * 128 * d
    head = 0.15 * 2 * (d * d + d * v)
    assert per_token == pytest.approx(12 * layer + head + 3 * (6 * layer + head))
    assert 0.45e9 < per_token < 0.47e9
    assert bench_step.peak_tflops(a, "cpu") is None
    assert bench_step.peak_tflops(bench_step.parse_args(["--peak_tflops", "2.5"]), "cpu") == 2.5
    out = tmp_path / "bench.json"
    sizes = ["--teacher_layers", "2", "--hidden", "32", "--vocab", "100", "--batch", "4", "--seq", "16",
             "--threads", "1", "--peak_tflops", "0.001"]
    bench_step.main([*sizes, "--steps", "1", "--warmup", "1", "--rounds", "1", "--skip_check", "--json", str(out),
                     "--contenders", "ours,ours_compiled", "--compile_backend", "aot_eager"])
    report = json.loads(out.read_text())
    for name in ("ours", "ours_compiled"):
        c = report["contenders"][name]
        assert c["sequences_per_s"] == pytest.approx(4 / c["median_step_s"])
        assert c["mfu"] == pytest.approx(c["tflops_per_s"] / 0.001)
    assert "seed's three epochs at ours' rate" in capsys.readouterr().out


def test_bench_step_measures_each_layer_term_against_ours(tmp_path, capsys):
    out = tmp_path / "bench.json"
    sizes = ["--teacher_layers", "4", "--hidden", "32", "--heads", "2", "--vocab", "100", "--batch", "4", "--seq",
             "16", "--threads", "1"]
    bench_step.main([*sizes, "--steps", "1", "--warmup", "1", "--rounds", "1", "--skip_check", "--json", str(out),
                     "--contenders", "ours,ours_attention,ours_intermediate,ours_relation"])
    report = json.loads(out.read_text())
    seed_terms = ["hidden", "kd", "mlm"]
    assert report["runs"]["ours"][0]["terms"] == seed_terms
    for term in ("attention", "intermediate", "relation"):
        name = f"ours_{term}"
        assert report["runs"][name][0]["terms"] == sorted([*seed_terms, term])  # the lever really ran its term
        r = report["ratios"][f"{name}/ours"]
        assert r["time"] == pytest.approx(report["contenders"][name]["median_step_s"]
                                          / report["contenders"]["ours"]["median_step_s"])
    assert "ours_relation vs ours: time" in capsys.readouterr().out


def test_bench_step_sweeps_the_sequence_length_on_a_modernbert_teacher(tmp_path, capsys):
    """The long-sequence case: one full comparison per length at a fixed number of tokens per step."""
    out = tmp_path / "long.json"
    sizes = ["--family", "modernbert", "--teacher_layers", "4", "--hidden", "32", "--heads", "2", "--vocab", "100",
             "--threads", "1", "--lengths", "16,64", "--batch_tokens", "128", "--gradient_checkpointing"]
    bench_step.main([*sizes, "--steps", "1", "--warmup", "1", "--rounds", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["family"] == "modernbert" and report["gradient_checkpointing"] is True
    assert [(row["seq"], row["batch"]) for row in report["sweep"]] == [(16, 8), (64, 2)]
    for row, length_report in zip(report["sweep"], report["reports"]):
        assert length_report["loss_check"]["rel_diff"] < 1e-5  # ours = seed-style on ModernBERT too
        assert length_report["config"]["seq"] == row["seq"] and length_report["config"]["family"] == "modernbert"
        ours, seed = row["ours"], row["seed"]
        assert row["ours/seed"]["time"] == pytest.approx(ours["median_step_s"] / seed["median_step_s"])
        assert row["ours/seed"]["memory"] == pytest.approx(ours["memory_mib"] / seed["memory_mib"])
    assert "against the sequence length" in capsys.readouterr().out


def test_bench_step_rejects_unknown_contenders(capsys):
    with pytest.raises(SystemExit):
        bench_step.parse_args(["--contenders", "ours,teacher_only"])
    assert "unknown ['teacher_only']" in capsys.readouterr().err


def test_bench_collator_smoke_reports_both_collators_on_the_same_batches(tmp_path, capsys):
    import bench_collator

    out = tmp_path / "collator.json"
    report = bench_collator.main(["--smoke", "--json", str(out)])
    assert json.loads(out.read_text()) == report
    assert report["examples"] == 16 and report["config"]["repeats"] == 2
    for shape in ("no_column", "with_column"):
        rates, fig = report["rates"][shape], report["summary"][shape]
        assert len(rates["ours"]) == len(rates["stock"]) == 2 and min(rates["ours"] + rates["stock"]) > 0
        assert fig["ratio"] == pytest.approx(fig["ours_examples_per_s"] / fig["stock_examples_per_s"])
        assert fig["ours_examples_per_s"] == pytest.approx(sum(rates["ours"]) / 2)  # median of two
    for share in report["masked_share"].values():  # both mask ~15 % of the real tokens ([CLS]/[SEP] included)
        assert 0.08 < share < 0.2
    assert "ours / stock" in capsys.readouterr().out
