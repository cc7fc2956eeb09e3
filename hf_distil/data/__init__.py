"""Corpora for distillation: load text (files, MIMIC-III NOTEEVENTS, Hub, disk), tokenise it and
group it into fixed-length blocks for masked-language modelling.

Everything streams through `datasets` (Arrow files on disk, batched `.map`), so a 4 GB
NOTEEVENTS.csv is never held in Python memory and every step is cached.

Import from `hf_distil.data`; its modules, one job each, are its layout, not its interface:
  errors      DataError and DataFileNotFoundError: the corpus problems a user can fix
  arguments   DataArguments: the corpus flags, checked as soon as they are parsed
  files       what a corpus path names: its files and the `datasets` builder that reads them
  utf8        the first byte of a file that is not UTF-8, named with its line and the fix
  noteevents  MIMIC-III NOTEEVENTS: recognised by its header, parsed into cached Arrow, filtered
  sources     the corpus as "train"/"validation" text, from files, the Hub or a save_to_disk folder
  cache       where the files derived from a dataset (selections, splits, blocks) go
  blocks      tokenisation, grouping into fixed-length blocks, and the masked-LM collator
"""

# The "X as X" names are private on purpose: `datasets` hashes those functions into its cache keys as
# hf_distil.data.<name> (so caches outlive the package split) and finds them here when it pickles them for workers;
# _is_noteevents is the name hf_distil.recipe imported first.
from .arguments import DataArguments
from .blocks import _tokenize_and_group as _tokenize_and_group
from .blocks import _tokenize_and_pack_notes as _tokenize_and_pack_notes
from .blocks import _tokenize_lines as _tokenize_lines
from .blocks import effective_max_seq_length, make_collator, tokenize_corpus
from .errors import DataError, DataFileNotFoundError
from .files import SUPPORTED_FORMATS
from .noteevents import NOTEEVENTS_COLUMNS, is_noteevents, noteevents_inputs
from .noteevents import _is_noteevents as _is_noteevents
from .noteevents import _noteevents_rows as _noteevents_rows
from .sources import load_raw_corpus

__all__ = [
    "NOTEEVENTS_COLUMNS",
    "SUPPORTED_FORMATS",
    "DataArguments",
    "DataError",
    "DataFileNotFoundError",
    "effective_max_seq_length",
    "is_noteevents",
    "load_raw_corpus",
    "make_collator",
    "noteevents_inputs",
    "tokenize_corpus",
]
