"""Redaction spans applied to a text: shared by the PII stage, which redacts, and by carry-forward,
which rebuilds a published text when annotators say some of its spans are not PII."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def redacted(text: str, spans: Iterable[dict[str, Any]]) -> str:
    """``text`` with each span (``start``, ``end``, ``placeholder``; not overlapping) replaced."""
    pieces, position = [], 0
    for span in sorted(spans, key=lambda span: span["start"]):
        pieces += [text[position : span["start"]], span["placeholder"]]
        position = span["end"]
    pieces.append(text[position:])
    return "".join(pieces)
