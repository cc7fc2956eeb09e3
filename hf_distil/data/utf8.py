"""Text that is not UTF-8: find the first bad byte of a corpus file and name it, its line and the fix."""

from __future__ import annotations

import gzip
import os


def _not_utf8_message(files) -> str | None:
    """One line naming the first file, line and byte that are not UTF-8, and the fix; None if all decode."""
    for path in files:
        with gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb") as handle:
            line, carry = 1, b""
            while True:
                chunk = handle.read(1 << 20)
                data, carry, bad = carry + chunk, b"", None
                try:
                    data.decode("utf-8")
                except UnicodeDecodeError as error:
                    if chunk and error.reason == "unexpected end of data" and error.end == len(data):
                        data, carry = data[: error.start], data[error.start :]  # a character cut by the chunk end
                    else:
                        bad = error.start
                if bad is not None:
                    line += data.count(b"\n", 0, bad)
                    plain = path[:-3] if path.lower().endswith(".gz") else path
                    stem, ext = os.path.splitext(plain)
                    fix = f"iconv -f latin1 -t utf-8 {plain} > {stem}.utf8{ext}"
                    fix += " (gunzip it first)" if plain != path else ""
                    return (
                        f"{path} is not UTF-8: line {line} has byte 0x{data[bad]:02x}; re-encode it, e.g. {fix} "
                        "(-f cp1252 for Windows/Excel files)"
                    )
                line += data.count(b"\n")
                if not chunk:
                    break
    return None
