"""The fine-tuning errors a user can fix; `hf-distil-finetune` prints them as one line and exits 2."""

from ..errors import DistillationConfigError


class FinetuneDataError(DistillationConfigError):
    """A data file or column that cannot be used as given; the message says how to fix it."""


class FinetuneFileNotFoundError(FinetuneDataError, FileNotFoundError):
    """A file or folder named in the arguments does not exist."""
