"""Small text parsers shared by layers that must not import each other."""

from __future__ import annotations

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")


def parse_bool(text: str) -> bool:
    """``true``/``false`` in the spellings config parameters and query strings use (case and
    surrounding space ignored; empty is false); ``ValueError`` for anything else."""
    value = text.strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise ValueError(value)
