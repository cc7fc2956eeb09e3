"""Text that is not UTF-8: find the first bad byte of a corpus file and name it, its line and the fix."""

from __future__ import annotations

import gzip
import os

# Byte-order marks of the encodings Windows tools save as "Unicode"; UTF-32 first, its LE mark starts with UTF-16's.
_BOMS = ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"), (b"\xff\xfe", "utf-16"),
         (b"\xfe\xff", "utf-16"))


def bom_encoding(head: bytes) -> str | None:
    """'utf-16' or 'utf-32' when `head` (a file's first bytes) starts with that encoding's byte-order mark, else None:
    such a file is not latin-1 gone wrong, and iconv needs `-f utf-16` / `-f utf-32` to convert it."""
    return next((name for bom, name in _BOMS if head.startswith(bom)), None)


def _open(path: str):
    return gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")


def _bom_message(files) -> str | None:
    """One line naming the first file that starts with a UTF-16 / UTF-32 byte-order mark, and the iconv that converts
    it; None if none does. Reads 4 bytes a file, so it runs before any reader: the json reader reports such a file as
    a parse error, not as an encoding one."""
    for path in files:
        with _open(path) as handle:
            encoding = bom_encoding(handle.read(4))
        if encoding:
            plain = path[:-3] if path.lower().endswith(".gz") else path
            stem, ext = os.path.splitext(plain)
            fix = f"iconv -f {encoding} -t utf-8 {plain} > {stem}.utf8{ext}"
            return (f"{path} is {encoding.upper()} (it starts with a byte-order mark), not UTF-8; re-encode it, "
                    f"e.g. {fix}" + (" (gunzip it first)" if plain != path else ""))
    return None


def _not_utf8_message(files) -> str | None:
    """One line naming the first file, line and byte that are not UTF-8, and the fix; None if all decode."""
    bom = _bom_message(files)
    if bom:
        return bom
    for path in files:
        with _open(path) as handle:
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
