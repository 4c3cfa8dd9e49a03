"""A reader for Java ``.properties`` files, the format of TorchServe's ``config.properties``.

Supported: ``key=value``, ``key: value`` and ``key value`` lines, ``#`` and ``!`` comments,
lines continued with a trailing backslash, and the ``\\t \\n \\r \\f \\uXXXX`` escapes. The
file is bounded in size because it is read before any limit of the server applies.
"""

from __future__ import annotations

from pathlib import Path

MAX_FILE_BYTES = 1 << 20
MAX_KEYS = 1000
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


class PropertiesError(ValueError):
    """A config.properties file that cannot be read; the message names the file and line."""


def read_properties(path: Path) -> dict[str, str]:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise PropertiesError(f"{path}: {size} bytes, over the limit of {MAX_FILE_BYTES}")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PropertiesError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise PropertiesError(f"{path} is not UTF-8 text ({exc.reason})") from None
    return parse_properties(text, str(path))


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Physical lines joined where a line ends in an odd number of backslashes."""
    out: list[tuple[int, str]] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.lstrip()  # continuation lines lose their indent too
        if not pending:
            start = number
            if not line or line[0] in "#!":
                continue
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2:
            pending += line[:-1]
            continue
        out.append((start, pending + line))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


def _unescape(text: str, where: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "\\" or i + 1 == len(text):
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "u":
            digits = text[i + 2:i + 6]
            if len(digits) != 4 or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise PropertiesError(f"{where}: malformed \\u escape")
            out.append(chr(int(digits, 16)))
            i += 6
            continue
        out.append(_ESCAPES.get(nxt, nxt))
        i += 2
    return "".join(out)


def _split(line: str) -> tuple[str, str]:
    """Key and value: the key ends at the first unescaped ``=``, ``:`` or whitespace."""
    i = 0
    while i < len(line):
        char = line[i]
        if char == "\\":
            i += 2
            continue
        if char in "=: \t\f":
            break
        i += 1
    key, rest = line[:i], line[i:].lstrip(" \t\f")
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(" \t\f")
    return key, rest


def parse_properties(text: str, source: str = "config.properties") -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in _logical_lines(text):
        where = f"{source} line {number}"
        key, value = _split(line)
        key = _unescape(key, where)
        if not key:
            raise PropertiesError(f"{where}: a value without a key")
        values[key] = _unescape(value, where)
        if len(values) > MAX_KEYS:
            raise PropertiesError(f"{source}: more than {MAX_KEYS} keys")
    return values
