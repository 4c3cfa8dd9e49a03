"""Per-request choices of the image pipelines (query parameters and the Accept header)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from serving.errors import InvalidInput
from serving.parsing import parse_bool

FORMATS = ("json", "png", "jpeg")
MAX_TOPK = 1000
# Numbers a segmentation JSON answer may hold (the mask, and separately the probabilities),
# unless the server sets it from max_mask_json_values; 2048x2048.
DEFAULT_MASK_JSON_VALUES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class TaskOptions:
    topk: int = 5
    format: str = ""  # "" = the task's default (JSON, or PNG for masks and images)
    poses: bool = False
    reconstruction: bool = False
    probabilities: bool = False
    # False when the format came from Accept: a task that cannot answer in it then uses its
    # default instead of failing (clients often send Accept: application/json by habit).
    explicit_format: bool = False
    # Budget of numbers per segmentation JSON answer, set per request by the server (its
    # limit divided among the request's images); not a client option.
    mask_json_values: int = DEFAULT_MASK_JSON_VALUES

    @classmethod
    def parse(cls, query: Mapping[str, str], accept: str = "") -> TaskOptions:
        """Read ``topk``, ``format``, ``poses``, ``reconstruction``, ``probabilities``; an
        explicit ``format`` wins over ``Accept``; ``*/*`` leaves the task's default."""
        raw_k = query.get("topk", query.get("top_k", "5"))
        try:
            k = int(raw_k)
        except ValueError:
            raise InvalidInput(f"topk must be an integer, got '{raw_k}'") from None
        if not 1 <= k <= MAX_TOPK:
            raise InvalidInput(f"topk must be between 1 and {MAX_TOPK}, got {k}")
        fmt = query.get("format", "").lower()
        if fmt == "jpg":
            fmt = "jpeg"
        if fmt and fmt not in FORMATS:
            raise InvalidInput(f"format must be one of {', '.join(FORMATS)}, got '{fmt}'")
        explicit = bool(fmt)
        if not fmt:
            fmt = _from_accept(accept)
        return cls(topk=k, format=fmt, explicit_format=explicit, poses=_flag(query, "poses"),
                   reconstruction=_flag(query, "reconstruction"),
                   probabilities=_flag(query, "probabilities"))


def _flag(query: Mapping[str, str], key: str) -> bool:
    try:
        return parse_bool(query.get(key, ""))
    except ValueError as exc:
        raise InvalidInput(f"{key} must be true or false, got '{exc}'") from None


def _from_accept(accept: str) -> str:
    # The first specific type named wins; clients like curl send */* which means "any".
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media == "application/json":
            return "json"
        if media == "image/png":
            return "png"
        if media in ("image/jpeg", "image/jpg"):
            return "jpeg"
    return ""
