"""The corpus errors a user can fix, and how a library's error becomes one line of them."""

from __future__ import annotations


class DataError(ValueError):
    """A corpus problem the user can fix; the message is one line that names the fix."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A corpus path that does not exist."""


# Their public home, as before hf_distil.data became a package: tracebacks and pickles name hf_distil.data.DataError.
DataError.__module__ = DataFileNotFoundError.__module__ = "hf_distil.data"


def _root_cause(error: BaseException) -> BaseException:
    """The innermost `__cause__` of a chained error: what a `datasets` error wraps."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _first_line(error: BaseException) -> str:
    """The first line of an error's message (its type name if it has none), to quote inside one of ours."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
