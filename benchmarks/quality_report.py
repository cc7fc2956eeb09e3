"""The quality benchmark's numbers → summaries, paired comparisons, tables and plots (no training here).

bench_quality.py writes one JSON per part (OUT/parts/*.json); `merge` joins whatever parts exist into
OUT/quality.json, OUT/quality.md, OUT/quality.png and OUT/budget_curve.png, so that parts run apart (each within a
machine's time limit) still make one report.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

# Scores of a model row: the fine-tuned task metrics (higher is better) and the masked-LM scores on the MTS test
# texts (perplexity lower is better).
HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "perplexity": False, "masked_accuracy": True,
                    "teacher_agreement": True}
TASK_METRICS = ("accuracy", "macro_f1")
LM_METRICS = ("perplexity", "masked_accuracy", "teacher_agreement")
CURVE_CONTROL = "mlm-only"  # the budget curve's student without a teacher


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired_gap(diffs: list[float], spread: float, higher_is_better: bool = True) -> dict:
    """A method − control comparison from its per-seed differences: mean, sd, standard error; whether the method is
    better by more than 2 standard errors, and by more than the larger of the two seed-to-seed sds (`spread`)."""
    mean, sd = mean_std(diffs)
    se = sd / math.sqrt(len(diffs))
    gain = mean if higher_is_better else -mean
    return {"paired_differences": diffs, "mean": mean, "sd": sd, "standard_error": se, "largest_seed_sd": spread,
            "higher_is_better": higher_is_better, "better_by_2se": gain > 2 * se, "worse_by_2se": -gain > 2 * se,
            "beats_spread": gain > spread, "seeds_better": sum((d > 0) == higher_is_better and d != 0 for d in diffs)}


def summarise_models(models: dict) -> dict:
    """Per model: mean ± sd over its runs of every score, parameters, speed, and retention against the teacher."""
    rows = {}
    for name, model in models.items():
        runs = model["runs"]
        row = {"parameters": model["parameters"], "runs": len(runs),
               "distillation_runs": model.get("distillation_runs", 0)}
        for metric in TASK_METRICS + LM_METRICS:
            values = [run[metric] for run in runs if run.get(metric) is not None]
            if values:
                row[metric], row[f"{metric}_std"] = mean_std(values)
        row["tokens_per_second"] = model.get("tokens_per_second")
        row["speedup"] = model.get("speedup")
        rows[name] = row
    teacher = rows.get("teacher")
    for row in rows.values():
        for metric in TASK_METRICS:
            row[f"{metric}_retention"] = (row[metric] / teacher[metric] if teacher and teacher[metric]
                                          else float("nan"))
    return rows


def compare(models: dict, rows: dict, pairs) -> dict:
    """Paired per-seed differences method − control for each pair (same distillation and fine-tuning seed)."""
    out = {}
    for method, control in pairs:
        if method not in models or control not in models:
            continue
        by_seed = {name: {run["seed"]: run for run in models[name]["runs"]} for name in (method, control)}
        seeds = sorted(set(by_seed[method]) & set(by_seed[control]))
        gaps = {}
        for metric, higher in HIGHER_IS_BETTER.items():
            if not all(by_seed[n][s].get(metric) is not None for n in (method, control) for s in seeds):
                continue
            diffs = [by_seed[method][s][metric] - by_seed[control][s][metric] for s in seeds]
            spread = max(rows[method][f"{metric}_std"], rows[control][f"{metric}_std"])
            gaps[metric] = paired_gap(diffs, spread, higher)
        out[f"{method} − {control}"] = gaps
    return out


# ---------------------------------------------------------------- merging the parts


def merge(out: Path) -> dict:
    """Join OUT/parts/*.json into OUT/quality.json (+ .md, .png, budget_curve.png); returns the report."""
    parts = {}
    for path in sorted((out / "parts").glob("*.json")):
        try:
            parts[path.stem] = json.loads(path.read_text())
        except ValueError:  # cut off while written, or edited by hand: the other parts still make the report
            print(f"[quality_report] {path} is not valid JSON: left out of the report (run its part again).",
                  flush=True)
    teacher = parts.pop("teacher", None)
    report = {"parts": {}, "models": {}, "comparisons": {}}
    if teacher:
        report["models"]["teacher"] = teacher["model"]
        report.update({k: teacher[k] for k in ("unigram", "reference_classifiers", "sizes", "data", "device",
                                                "teacher", "threads") if k in teacher})
    for name in ("main", "narrow"):
        if name in parts:
            part = parts[name]
            report["parts"][name] = {k: part[k] for k in ("minutes", "smoke", "comparisons_run") if k in part}
            report["models"].update(part["models"])
            report["comparisons"].update(part["comparisons"])
    if "curve" in parts:
        report["budget_curve"] = parts["curve"]
        if parts["curve"].get("downstream", {}).get("students"):
            parts["curve"]["downstream"]["summary"] = summarise_downstream(parts["curve"]["downstream"],
                                                                         report["models"].get("teacher"))
        report["parts"]["curve"] = {"minutes": parts["curve"]["minutes"]}
    if "task" in parts:
        report["task_distillation"] = parts["task"]
        report["parts"]["task"] = {"minutes": parts["task"].get("minutes")}
    trained = [m["distillation_runs"] for m in report["models"].values() if m.get("distillation_runs", 0) > 1]
    report["distillation_runs_per_student"] = min(trained) if trained else 1
    report["summary"] = {"rows": summarise_models(report["models"]), "comparisons": report["comparisons"]}
    (out / "quality.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    text = markdown(report)
    (out / "quality.md").write_text(text + "\n", encoding="utf-8")
    if report["models"]:
        plot_models(report, out / "quality.png")
    if "budget_curve" in report:
        plot_curve(report["budget_curve"], out / "budget_curve.png")
    return report


# ---------------------------------------------------------------- markdown


def _share(value: float) -> str:
    """A share of the teacher's score, or — without a teacher row to divide by."""
    return f"{value:.1%}" if math.isfinite(value) else "—"


def _pm(row: dict, metric: str, digits: int = 3) -> str:
    if metric not in row:
        return "—"
    return f"{row[metric]:.{digits}f} ± {row[f'{metric}_std']:.{digits}f}"


def markdown_table(report: dict) -> str:
    rows = report["summary"]["rows"]
    lines = ["| model | params | test accuracy | test macro-F1 | F1 kept | MTS-test perplexity | masked acc. "
             "| teacher agreement | tokens/s (× teacher) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in rows.items():
        speed = (f"{r['tokens_per_second']:,.0f} ({r['speedup']:.2f}×)"
                 if r.get("tokens_per_second") and r.get("speedup") else "—")
        lines.append(f"| {name} | {r['parameters'] / 1e6:.2f} M | {_pm(r, 'accuracy')} | {_pm(r, 'macro_f1')} "
                     f"| {r['macro_f1_retention']:.1%} | {_pm(r, 'perplexity', 1)} | {_pm(r, 'masked_accuracy')} "
                     f"| {_pm(r, 'teacher_agreement')} | {speed} |")
    for name, r in report.get("reference_classifiers", {}).items():
        lines.append(f"| {name} (reference) | — | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | — | — | — | — | — |")
    if "unigram" in report:
        unigram = report["unigram"]
        lines.append(f"| unigram (reference) | — | — | — | — | {unigram['perplexity']:.1f} "
                     f"| {unigram['masked_accuracy']:.3f} | — | — |")
    return "\n".join(lines)


def gap_cell(gap: dict) -> str:
    """`+0.022 ± 0.003 (3/3) ↑`: mean paired difference ± its standard error, seeds on the better side, and an arrow
    when it is more than 2 SE better (↑) or worse (↓)."""
    n = len(gap["paired_differences"])
    arrow = " ↑" if gap["better_by_2se"] else " ↓" if gap["worse_by_2se"] else ""
    return f"{gap['mean']:+.3f} ± {gap['standard_error']:.3f} ({gap['seeds_better']}/{n}){arrow}"


def markdown_comparisons(comparisons: dict, paired_by: str = "same distillation and fine-tuning seed") -> str:
    """One row per method − control pair, one column per score, and what a cell means (`paired_by`: what the two runs
    of each difference share)."""
    metrics = [m for m in HIGHER_IS_BETTER if any(m in gaps for gaps in comparisons.values())]
    if not metrics:
        return ""
    lines = ["| paired difference | " + " | ".join(m.replace("_", " ") for m in metrics) + " |",
             "| --- | " + " | ".join("---:" for _ in metrics) + " |"]
    for pair, gaps in comparisons.items():
        lines.append(f"| {pair} | " + " | ".join(gap_cell(gaps[m]) if m in gaps else "—" for m in metrics) + " |")
    n = {len(g["paired_differences"]) for gaps in comparisons.values() for g in gaps.values()}
    lines.append("")
    lines.append(f"Each cell: the mean of the per-seed differences (method − control, {paired_by}; "
                 f"{' or '.join(map(str, sorted(n)))} seeds) ± its standard error, how many seeds "
                 "came out better (lower perplexity, higher otherwise), ↑ / ↓ where it is better / worse by more "
                 "than 2 standard errors.")
    return "\n".join(lines)


def summarise_downstream(downstream: dict, teacher: dict | None) -> dict:
    """The budget curve's students fine-tuned at its largest budget: mean ± sd per student over the fine-tuning
    seeds, macro-F1 kept against the teacher's, and each student's paired difference against the curve's control
    (MLM-only) seed by seed. One distillation seed: the spread is the fine-tuning's alone."""
    runs = downstream["students"]
    models = {name: {"runs": student_runs, "parameters": None} for name, student_runs in runs.items()}
    rows = summarise_models({**models, **({"teacher": teacher} if teacher else {})})
    rows.pop("teacher", None)
    pairs = [(name, CURVE_CONTROL) for name in runs if name != CURVE_CONTROL]
    return {"rows": rows, "comparisons": compare(models, rows, pairs)}


def curve_table(curve: dict) -> str:
    names = list(curve["students"])
    lines = ["| steps | " + " | ".join(f"{n} perplexity" for n in names) + " | teacher |",
             "| ---: | " + " | ".join("---:" for _ in names) + " | ---: |"]
    for i, steps in enumerate(curve["steps"]):
        cells = [f"{curve['students'][n][i]['perplexity']:.1f}" for n in names]
        lines.append(f"| {steps:,} | " + " | ".join(cells) + f" | {curve['teacher_perplexity']:.1f} |")
    summary = curve.get("downstream", {}).get("summary")
    if summary:
        rows = summary["rows"]
        lines += ["", f"Fine-tuned on MTS sections at {curve['downstream']['steps']:,} steps (seed-0 distillation, "
                  "each fine-tuned with every seed; ± is the fine-tuning's spread alone):", "",
                  "| student | test accuracy | test macro-F1 | F1 kept |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {name} | {_pm(r, 'accuracy')} | {_pm(r, 'macro_f1')} | {_share(r['macro_f1_retention'])} |"
                  for name, r in rows.items()]
        if summary["comparisons"]:  # both students fine-tuned
            lines += ["", markdown_comparisons(summary["comparisons"], paired_by="same fine-tuning seed, one "
                                               "distillation")]
    return "\n".join(lines)


def markdown(report: dict) -> str:
    parts = []
    if report["models"]:
        parts.append(markdown_table(report))
    if len(report["models"]) > 1:  # students beside the teacher
        sizes = report.get("sizes", {})
        parts.append(f"± is one standard deviation over the runs: each student was distilled with "
                     f"{report['distillation_runs_per_student']} seeds ({sizes.get('distil_steps')} steps of "
                     f"{sizes.get('distil_batch')} blocks of 128 tokens each) and each distilled model fine-tuned "
                     "with its own seed, so the spread covers both; the teacher and the untrained init are fine-tuned "
                     "with the same seeds. F1 kept: mean macro-F1 over the teacher's. Perplexity, masked accuracy and "
                     "teacher agreement: the MTS test texts, 15 % of their tokens masked at fixed positions.")
        parts.append(markdown_comparisons(report["comparisons"]))
    if "budget_curve" in report:
        parts.append("## Budget curve\n\n" + curve_table(report["budget_curve"]))
    if "task_distillation" in report:
        parts.append("## Task distillation\n\n" + task_markdown(report["task_distillation"]))
    return "\n\n".join(parts)


# ---------------------------------------------------------------- task distillation


TEACHER_ROLE = "fine-tuned teacher"
# The two student initialisations, each distilled and plainly fine-tuned: the pretrained teacher's layers
# (DistilBERT's: a general half-depth encoder, which learns the task here) and the fine-tuned teacher's layers and
# head (the student starts from the task already).
TASK_INITS = ("pretrained layers", "fine-tuned layers")
TASK_ROLES = (TEACHER_ROLE, *(f"{kind}, {init}" for init in TASK_INITS for kind in ("task-distilled", "plain")))


def summarise_task(report: dict) -> dict:
    """Mean ± sd per role, each student's share of the teacher, and per init the paired distilled − plain gap."""
    runs = report["runs"]
    rows = {}
    for role in TASK_ROLES:
        row = {"parameters": runs[0][role]["parameters"]}
        for metric in TASK_METRICS:
            row[metric], row[f"{metric}_std"] = mean_std([run[role][metric] for run in runs])
        rows[role] = row
    teacher = rows[TEACHER_ROLE]
    for row in rows.values():
        for metric in TASK_METRICS:
            row[f"{metric}_retention"] = row[metric] / teacher[metric] if teacher[metric] else float("nan")
    gaps = {}
    for init in TASK_INITS:
        distilled, plain = f"task-distilled, {init}", f"plain, {init}"
        gaps[init] = {}
        for metric in TASK_METRICS:
            diffs = [run[distilled][metric] - run[plain][metric] for run in runs]
            gaps[init][metric] = paired_gap(diffs, max(rows[distilled][f"{metric}_std"], rows[plain][f"{metric}_std"]))
    return {"rows": rows, "gaps": gaps}


def task_markdown(report: dict) -> str:
    summary = report["summary"]
    lines = ["| model | params | test accuracy | test macro-F1 | macro-F1 kept |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for role, r in summary["rows"].items():
        lines.append(f"| {role} | {r['parameters'] / 1e6:.2f} M | {_pm(r, 'accuracy')} | {_pm(r, 'macro_f1')} "
                     f"| {r['macro_f1_retention']:.1%} |")
    objective = ", ".join(f"{k} {v}" for k, v in report["objective"].items())
    lines.append("")
    lines.append(f"± is one standard deviation over {report['seeds']} seeds. Each seed fine-tunes its own teacher "
                 f"({report['teacher_epochs']} epochs, the best validation epoch kept), then trains "
                 f"{report['student_layers']}-layer students from two initialisations, each distilled from that "
                 "teacher (`run_finetune.py recipes/configs/task_distil.yaml --distil_from`) and, as its control, "
                 f"fine-tuned without it (`--compare_with plain`): {report['epochs']} epochs at learning rate "
                 f"{report['learning_rate']:g} for both, the epoch with the best validation macro-F1 kept. "
                 "Pretrained layers: every other layer of the pretrained (not fine-tuned) teacher, a new head. "
                 "Fine-tuned layers: every other layer of the fine-tuned teacher, and its head. Objective "
                 f"(recipes/configs/task_distil.yaml): {objective}.")
    fits = [run["teacher_targets"] for run in report["runs"] if "teacher_targets" in run]
    if fits:
        train, test = ({key: statistics.fmean(fit[split][key] for fit in fits) for key in fits[0][split]}
                       for split in ("train", "test"))
        lines.append(f"What the teachers' soft labels hold beyond the gold ones (temperature 1, mean over {len(fits)} "
                     "teachers): on the transfer set, the training sections they were fine-tuned on, the top class is "
                     f"the gold label for {train['agrees_with_gold']:.1%} of the sections, the mean top probability "
                     f"is {train['mean_top_probability']:.3f} and {train['mass_off_gold']:.3f} of the mass lies off "
                     f"the gold label; on the test sections: {test['agrees_with_gold']:.1%}, "
                     f"{test['mean_top_probability']:.3f} and {test['mass_off_gold']:.3f}.")
    lines.append("")
    lines.append(markdown_comparisons({f"{init}: task-distilled − plain": gaps
                                       for init, gaps in summary["gaps"].items()}))
    return "\n".join(lines)


# ---------------------------------------------------------------- plots


def _figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_models(report: dict, path: Path) -> None:
    """Bars of test accuracy and macro-F1 per model, error bars one standard deviation over the runs."""
    rows = report["summary"]["rows"]
    names = [n for n in rows if "accuracy" in rows[n]]
    fig = _figure((12, 4.5))
    ax = fig.add_subplot()
    width = 0.38
    for offset, metric in ((-width / 2, "accuracy"), (width / 2, "macro_f1")):
        ax.bar([i + offset for i in range(len(names))], [rows[n][metric] for n in names], width,
               yerr=[rows[n][f"{metric}_std"] for n in names], capsize=4, label=metric.replace("_", "-"))
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("MTS-Dialog test (mean ± sd over runs)")
    ax.set_title("Section-header classification after fine-tuning")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def plot_curve(curve: dict, path: Path) -> None:
    """MTS-test perplexity of each student against its budget (log-log), the teacher as a line."""
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    fig = _figure((7, 4.5))
    ax = fig.add_subplot()
    for name, points in curve["students"].items():
        ax.plot(curve["steps"], [p["perplexity"] for p in points], "o-", label=name)
    ax.axhline(curve["teacher_perplexity"], color="black", linestyle="--", label="teacher")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(curve["steps"], [f"{s:,}" for s in curve["steps"]])
    ax.xaxis.set_minor_formatter(NullFormatter())  # only the budgets are labelled
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel(f"student training steps (batch {curve['batch']} × 128 tokens, each its own schedule)")
    ax.set_ylabel("MTS-test perplexity (fixed masks)")
    ax.set_title("Distilled vs masked-LM-only student by budget")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path)
