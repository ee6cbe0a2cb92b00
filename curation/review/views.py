"""What the item pages show, computed from a flag's payload: highlighted PII spans, the redacted
text for users without the PII role, and word-level differences between near-duplicates."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from curation.review.auth import User
from curation.review.decisions import redacted_as_shown

_WORDS = re.compile(r"\s+|[^\s]+")
# The keys of a near-duplicate item's side kept for a role shown its texts redacted (not ``fields``,
# ``thumbnail``: taken before the PII stage, they hold raw PII).
_SHOWN_REDACTED = ("id", "uri", "published_text", "published_fields")


@dataclass
class Segment:
    text: str
    mark: str | None = None  # css class: "pii", "del", "ins"
    title: str | None = None


def pii_segments(original: str, spans: list[dict[str, Any]]) -> list[Segment]:
    """The original text cut into plain parts and the flagged spans (entity and score as title)."""
    segments: list[Segment] = []
    position = 0
    for span in sorted(spans, key=lambda s: (s["start"], s["end"])):
        start, end = max(span["start"], position), span["end"]
        if end <= start:
            continue
        segments.append(Segment(original[position:start]))
        segments.append(Segment(original[start:end], "pii", f"{span['entity']} {span['score']:.2f}"))
        position = end
    segments.append(Segment(original[position:]))
    return [s for s in segments if s.text]


def word_diff(kept: str, member: str) -> tuple[list[Segment], list[Segment]]:
    """Both texts cut into words, with what only one side has marked (``del`` / ``ins``)."""
    a, b = _WORDS.findall(kept), _WORDS.findall(member)
    left: list[Segment] = []
    right: list[Segment] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            left.append(Segment("".join(a[i1:i2])))
            right.append(Segment("".join(b[j1:j2])))
            continue
        if i2 > i1:
            left.append(Segment("".join(a[i1:i2]), "del"))
        if j2 > j1:
            right.append(Segment("".join(b[j1:j2]), "ins"))
    return left, right


def item_view(
    item: dict[str, Any],
    user: User,
    not_pii: Iterable[tuple[str, int, int]] = (),
    edited: dict[str, str] | None = None,
    published: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The template context for one item; raw PII only for users whose role may see it. ``not_pii``:
    the spans of a PII item that the decisions in force mark not PII, shown in clear to every role
    (the next run publishes them so). ``edited``: the field values the edits in force set, which an
    edit starts from (what the next run publishes), for a role that sees the item's texts raw.
    ``published``: a PII item's other fields as a role that does not see PII is shown them, with the
    spans marked not PII on their own items in clear (``decisions.record_in_force``)."""
    view = _item_view(item, user, not_pii, published or {})
    if edited:
        # An edit is stored as typed: a pii-reviewer's may hold raw PII, so a role shown the texts
        # redacted is told that one is in force, not shown it.
        raw = {"pii": user.sees_pii, "near_duplicate": not view.get("redacted")}.get(item["kind"], True)
        if raw:
            view["edit_values"] = {**view["edit_values"], **edited}
        else:
            view["edit_hidden"] = sorted(edited)
    return view


def _item_view(
    item: dict[str, Any], user: User, not_pii: Iterable[tuple[str, int, int]], published: dict[str, str]
) -> dict[str, Any]:
    payload = json.loads(item["payload"] or "{}")
    view: dict[str, Any] = {"kind": item["kind"], "detail": item["detail"], "source": json.loads(item["source"])}
    if item["kind"] == "pii":
        spans = payload.get("spans", [])
        view["field"] = payload.get("field")
        # The record's other fields (a flag made before they came with it has none: the editor then says
        # it does not show them); the editor opens on the flagged one.
        view["edit_selected"] = view["field"]
        view["thumbnail"] = payload.get("thumbnail")  # a VQA record's image, as published
        view["entities"] = [
            {"entity": s["entity"], "score": s["score"], "placeholder": s.get("placeholder", "")} for s in spans
        ]
        places = {(start, end) for name, start, end in not_pii if name == payload.get("field")}
        keyed = [{**s, "key": f"{payload.get('field')}:{s['start']}:{s['end']}"} for s in spans]
        # The spans marked not PII in force may be marked PII again, by any role: it only redacts more. A
        # role that does not see PII is not shown their text here (a later PII stage may redact it).
        view["pii_again"] = [s for s in keyed if (s["start"], s["end"]) in places]
        if user.sees_pii:
            original = payload.get("original", "")
            view["segments"] = pii_segments(original, spans)
            for s in keyed:
                s["text"] = original[s["start"] : s["end"]]
            view["spans"] = [s for s in keyed if (s["start"], s["end"]) not in places]
            view["edit_values"] = {**payload.get("fields", {}), payload.get("field"): original}
        else:
            # The text as the next run publishes it: an edit starts from it, and what it keeps stays so.
            view["redacted"] = redacted_as_shown(payload, places)
            others = {**payload.get("redacted_fields", {}), **published}
            view["edit_values"] = {**others, payload.get("field"): view["redacted"]}
    elif item["kind"] == "near_duplicate":
        kept, member = payload.get("kept", {}), payload.get("member", {})
        # With the recipe's PII stage after the near-dedup stage, roles that do not see PII get the
        # texts as published.
        view["redacted"] = "published_text" in member and not user.sees_pii
        # A VQA record's image: not for a role shown the texts redacted (the PII stage after the flag's
        # can redact text in images too, and the flag took them before it).
        pictures = "thumbnail" in kept or "thumbnail" in member
        if view["redacted"]:
            # Only what the role may see: the payload's raw fields and images must not reach the
            # template context at all, where a later template change could show them.
            kept, member = (
                {**{k: v for k, v in side.items() if k in _SHOWN_REDACTED}, "text": side.get("published_text", "")}
                for side in (kept, member)
            )
        view["kept"], view["member"] = kept, member
        view["images"] = pictures and not view["redacted"]
        view["images_withheld"] = pictures and view["redacted"]
        view["similarity"] = payload.get("similarity")
        view["left"], view["right"] = word_diff(kept.get("text", ""), member.get("text", ""))
        # An edit starts from the set-aside record's fields as the role sees its text (a flag made
        # before the member's fields were kept has none: the editor then says it does not show them).
        own = member.get("published_fields", {}) if view["redacted"] else member.get("fields", {})
        view["edit_values"] = {name: value or "" for name, value in own.items()}
    elif item["kind"] == "quarantined":
        view["reason"] = payload.get("reason")
        # With a PII stage in the recipe, roles that do not see PII get the input as published.
        view["redacted"] = "redacted_record" in payload and not user.sees_pii
        prefix = "redacted_" if view["redacted"] else ""
        view["reason_detail"] = payload.get(f"{prefix}detail")
        view["raw"] = payload.get(f"{prefix}record")
        view["edit_values"] = {}
    elif item["kind"] == "vqa":
        view.update({name: payload.get(name) for name in ("image", "question", "answer")})
        view["edit_values"] = {name: payload.get(name, "") for name in ("question", "answer")}
    else:
        view["payload"] = json.dumps(payload, indent=2) if user.sees_pii else None
        view["edit_values"] = {}
    return view
