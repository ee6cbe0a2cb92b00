"""Annotators' field edits applied to a line already rendered in an output format.

A carried line is not re-rendered from its record (the record is not read again), so an edit of a
record field has to find where the format put that field: a top-level key (``text``,
``jumpstart-instruction``), or the user / assistant turn of a conversation (see the renderers in
curation/formats.py). An edit that has no such simple place is reported, not guessed.
"""

from __future__ import annotations

from typing import Any

# Record field -> output key, for formats that rename a field to a top-level key.
RENAMED: dict[str, dict[str, str]] = {"jumpstart-vqa": {"question": "prompt", "answer": "completion"}}
# Conversation formats: the key holding the turns, and the role whose turn holds each record field.
CONVERSATIONS: dict[str, str] = {"messages": "messages", "jumpstart-chat": "dialog", "bedrock-conversation": "messages"}
TURN_OF: dict[str, str] = {"prompt": "user", "completion": "assistant"}


def apply_edits(
    line: dict[str, Any], fields: dict[str, str], fmt: str, chunked: bool = False
) -> tuple[bool, list[str]]:
    """Apply ``fields`` to ``line`` in place; returns whether the line changed and the fields it could not take.

    ``chunked``: the text format cut documents into pieces, so one line holds only part of ``text``.
    """
    changed, not_applied = False, []
    for name, value in fields.items():
        if fmt in CONVERSATIONS:
            done = _set_turn(line, CONVERSATIONS[fmt], name, value, fmt == "bedrock-conversation")
        else:
            key = RENAMED.get(fmt, {}).get(name, name)
            done = None
            if isinstance(line.get(key), str) and not (chunked and key == "text"):
                done = line[key] != value
                line[key] = value
        if done is None:
            not_applied.append(name)
        changed |= bool(done)
    return changed, not_applied


def _set_turn(line: dict[str, Any], key: str, name: str, value: str, blocks: bool) -> bool | None:
    """Set the content of the one turn of the field's role; None when there is not exactly one."""
    role = TURN_OF.get(name)
    turns = [turn for turn in line.get(key) or [] if isinstance(turn, dict) and turn.get("role") == role]
    if role is None or len(turns) != 1:
        return None
    turn = turns[0]
    if blocks:  # Bedrock: content is a list of {"text": ...} blocks; only a single block is simple
        content = turn.get("content")
        if not (isinstance(content, list) and len(content) == 1 and isinstance(content[0], dict)):
            return None
        before, content[0]["text"] = content[0].get("text"), value
        return before != value
    if not isinstance(turn.get("content"), str):
        return None
    before, turn["content"] = turn["content"], value
    return before != value
