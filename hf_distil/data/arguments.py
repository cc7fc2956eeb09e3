"""`DataArguments`: the corpus flags of the command line, checked as soon as they are parsed."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import DataError
from .files import SUPPORTED_FORMATS


@dataclass
class DataArguments:
    """Where the corpus comes from and how it becomes training blocks (parsed by `HfArgumentParser`)."""

    train_file: str | None = field(
        default=None,
        metadata={
            "help": f"Training corpus: {SUPPORTED_FORMATS}. MIMIC-III NOTEEVENTS.csv(.gz) is recognised by its header."
        },
    )
    validation_file: str | None = field(
        default=None,
        metadata={"help": "Validation corpus, same formats as --train_file. Default: split off the training corpus."},
    )
    dataset_name: str | None = field(default=None, metadata={"help": "A dataset on the Hub (datasets.load_dataset)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The configuration of --dataset_name."})
    dataset_path: str | None = field(
        default=None, metadata={"help": "A folder written by Dataset.save_to_disk (a Dataset or a DatasetDict)."}
    )
    text_column: str | None = field(
        default=None, metadata={"help": "Column holding the text. Default: 'TEXT' for NOTEEVENTS, 'text' otherwise."}
    )
    note_categories: str | None = field(
        default=None,
        metadata={
            "help": "NOTEEVENTS only: comma-separated CATEGORY values to keep, e.g. 'Discharge summary,Physician' "
            "(trimmed, case-insensitive)."
        },
    )
    malformed_rows: str = field(
        default="stop",
        metadata={
            "help": "NOTEEVENTS row that cannot be parsed: 'stop' (error naming the row) or 'skip' (drop and count)."
        },
    )
    max_seq_length: int = field(
        default=128, metadata={"help": "Tokens per training block (capped at what the model and tokenizer accept)."}
    )
    line_by_line: bool = field(
        default=False,
        metadata={"help": "One example per non-empty line (truncated) instead of concatenating into full blocks."},
    )
    pack_notes: bool = field(
        default=False,
        metadata={"help": "Pack whole notes (documents) into blocks of up to --max_seq_length tokens without cutting "
                  "a note across blocks (one longer than a block is cut into block-sized pieces); blocks are not "
                  "padded to full length (for long-context models: 4,096 or 8,192 tokens hold whole notes)."},
    )
    mlm_probability: float = field(
        default=0.15, metadata={"help": "Share of tokens masked for the masked-LM objective."}
    )
    validation_split_percentage: int = field(
        default=5,
        metadata={"help": "Percent of training rows held out for validation when no validation data is given (0-50)."},
    )
    max_train_samples: int | None = field(
        default=None,
        metadata={
            "help": "Keep only the first N training examples (blocks, or lines with --line_by_line); for debugging."
        },
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N validation examples; for debugging."}
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes used to tokenise (datasets.map num_proc)."}
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Rebuild the cached corpus and tokenised datasets."})

    def __post_init__(self):
        for name in ("train_file", "validation_file", "dataset_name", "dataset_path"):
            if isinstance(getattr(self, name), str) and not getattr(self, name).strip():
                setattr(self, name, None)  # `--validation_file ""` unsets a config's value
        sources = [f"--{n}" for n in ("train_file", "dataset_name", "dataset_path") if getattr(self, n) is not None]
        if not sources:
            raise DataError("no corpus given: pass one of --train_file, --dataset_name or --dataset_path")
        if len(sources) > 1:
            raise DataError(f"{' and '.join(sources)} given: pass exactly one corpus source")
        self.malformed_rows = str(self.malformed_rows).lower()
        if self.malformed_rows not in ("stop", "skip"):
            raise DataError(f"--malformed_rows must be 'stop' or 'skip', got {self.malformed_rows!r}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise DataError(f"--mlm_probability must be between 0 and 1 (exclusive), got {self.mlm_probability}")
        if not 0 <= self.validation_split_percentage <= 50:
            raise DataError(f"--validation_split_percentage must be 0..50, got {self.validation_split_percentage}")
        if self.pack_notes and self.line_by_line:
            raise DataError("--pack_notes and --line_by_line both given: pass one (whole notes per block, or one "
                            "example per line)")
        if self.max_seq_length < 1:
            raise DataError(f"--max_seq_length must be positive, got {self.max_seq_length}")
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise DataError(f"--{name} must be >= 1 (unset: every example), got {getattr(self, name)}")
        if self.preprocessing_num_workers is not None and self.preprocessing_num_workers < 1:
            raise DataError(f"--preprocessing_num_workers must be >= 1, got {self.preprocessing_num_workers}")
        if self.note_categories is not None and not self.categories:
            raise DataError(
                f"--note_categories={self.note_categories!r} names no category; e.g. 'Discharge summary,Physician'"
            )

    @property
    def categories(self) -> list[str] | None:
        """`note_categories` as trimmed, lower-cased names (None: keep all)."""
        if self.note_categories is None:
            return None
        return [c.strip().lower() for c in self.note_categories.split(",") if c.strip()]
