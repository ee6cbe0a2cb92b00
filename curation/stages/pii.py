"""PII redaction: find personal data with presidio and replace it before anything is published.

Per entity the recipe picks an operator: ``replace`` (``<PERSON>``), ``mask`` (``****-****``, letters
and digits masked, separators kept), ``pseudonym`` (``<PERSON_3f9a2c1b0d>``: an HMAC of the value
keyed with a secret, so the same value gets the same placeholder everywhere in a dataset version and
the output cannot be reversed without the key) or ``drop`` (the record is set aside, reason ``pii``).

Detections scoring between ``threshold`` and ``review_below`` are redacted like the others and also
flagged (kind ``pii``) with their spans, so annotators can confirm or undo them; spans undone by an
annotator come back through ``undone`` and are left as they are on the next run.

Values never leave this module except in the flags' payload (state store only): log lines, stats,
set-aside details and errors name fields and entity types, never the text.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import hmac
import json
import logging
import re
import traceback
import unicodedata
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, ParamSpec, TypeVar

import pyarrow as pa

from curation.pii_engine import CustomRecognizer, Detection, EngineSpec, PiiAnalyzer, PiiEngineError, PiiTextError
from curation.pii_image import BadImage, check_tesseract, redact_image
from curation.redaction import redacted
from curation.stages.base import (
    StageError,
    StageResult,
    StageSettingError,
    flag_payloads,
    raised_where,
    require_columns,
    scrubbed_as_records,
    with_payloads,
)
from schemas.config import RecipeError
from schemas.pii import PiiConfig
from schemas.records import CONTENT_COLUMNS, FLAG_SCHEMA, location, set_aside_rows

log = logging.getLogger("curation.stages.pii")
P = ParamSpec("P")
R = TypeVar("R")

# The free-text fields of each record kind, scanned when the recipe does not list fields.
DEFAULT_FIELDS: dict[str, tuple[str, ...]] = {
    "document": ("text", "title"),
    "instruction": ("prompt", "completion"),
    "vqa": ("question", "answer"),
    "table": (),
}

Undone = Mapping[str, Collection[tuple[str, int, int]]]
# Per record, the text each span marked not PII held when it was marked (``RunDecisions.marked_in``).
Marked = Mapping[str, Mapping[tuple[str, int, int], str]]

# The stages whose set-aside details can quote input: readers (a line they could not parse, a file
# name), the template (a value it could not render) and the image check (the path of an image).
_QUOTING_STAGES = frozenset({"read", "shape", "image_check"})
# Names of formats the model takes for a person's ("malformed JSON" read "malformed <PERSON>" in the
# reader's messages): a detection of exactly one of these is no PII, as a recipe's `allow` values.
_FORMAT_NAMES = frozenset({"json", "jsonl", "ndjson", "csv", "tsv", "utf-8", "utf-16", "parquet", "arrow", "html"})


def _with_pictures(flagged: list[tuple[int, dict]], images: pa.ChunkedArray) -> None:
    """Give the flags of records with an image (VQA) that image as the review page shows it
    (``thumbnail``): as published, after this stage's own redaction of text in it (``ocr``), so
    every role may see it, as every role sees the published text."""
    from curation.stages.neardup import thumbnail

    for row, flag in flagged:
        picture = thumbnail(images[row].as_py())
        if picture:
            flag["payload"] = json.dumps({**json.loads(flag["payload"]), "thumbnail": picture})


def as_published_after(
    flags: pa.Table,
    stage: str,
    scrub: Callable[[list[str | None], list[int]], list[str | None]],
    images_redacted_later: bool = False,
) -> pa.Table:
    """The PII flags of ``stage`` with the texts a role that does not see PII is shown (``redacted``,
    ``redacted_fields``) as a PII stage after it publishes them (``scrub``, each flag's texts scanned as
    one record): as the stage made them they hold in clear what a later stage redacts (a phone number
    where this stage looks for names). ``published_after`` marks them: spans marked not PII are then
    not put back from ``original`` for such a role (see ``review.decisions.redacted_as_shown``), which
    would undo the later stages' redactions too. With ``images_redacted_later`` (a later PII stage
    with ``ocr``) a flag's ``thumbnail`` is dropped: it is this stage's picture, shown to every role,
    and holds in clear text that the later stage redacts from the published image."""
    payloads = flag_payloads(flags, "pii", {stage})
    if not payloads:
        return flags
    records = [
        [payload.get("redacted", ""), *payload.get("redacted_fields", {}).values()] for payload in payloads.values()
    ]
    for payload, (text, *fields) in zip(payloads.values(), scrubbed_as_records(scrub, records), strict=True):
        payload["redacted"] = text
        payload["redacted_fields"] = dict(zip(payload.get("redacted_fields", {}), fields, strict=True))
        payload["published_after"] = True
        if images_redacted_later:
            payload.pop("thumbnail", None)
    return with_payloads(flags, payloads)


class PiiSettingError(StageError, RecipeError):
    """The stage's settings cannot work (no fields, no key, model or tesseract missing): found when it
    is built, so `curation check` reports it as a recipe error and `curation run` before reading."""


def resolve_overlaps(detections: list[Detection]) -> list[Detection]:
    """Non-overlapping spans in text order. Detections that overlap become one span covering them all,
    labelled as the one with the highest score (then the longest): kept apart, the part of the losing
    one outside the winner stayed in clear ("Sophie <LOCATION>" of "Sophie Smith Jones" where the
    model saw a PERSON in "Sophie Smith" and a LOCATION in "Smith Jones")."""
    clusters: list[list[Detection]] = []
    reach = -1
    for det in sorted(detections, key=lambda d: (d[1], -d[2])):
        if clusters and det[1] < reach:
            clusters[-1].append(det)
            reach = max(reach, det[2])
        else:
            clusters.append([det])
            reach = det[2]
    spans = []
    for cluster in clusters:
        entity, _, _, score = max(cluster, key=lambda d: (d[3], d[2] - d[1]))
        spans.append((entity, min(d[1] for d in cluster), max(d[2] for d in cluster), score))
    return spans


def _messages_withheld(method: Callable[P, R]) -> Callable[P, R]:
    """An unexpected error in the stage (a bug) is named by its type and place, not its message: a
    message here can quote the text (a KeyError holds the key it missed), and values never reach a
    log or the terminal. No error leaves the stage with an earlier one attached (``__context__``) or
    the frames it was raised in: an error tracker (Sentry) reads both, and their messages and locals
    hold the texts."""

    @functools.wraps(method)
    def withheld(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (StageError, RecipeError, PiiEngineError) as error:  # ours: they name fields and rules, never values
            failure: Exception = error
        except Exception as error:
            failure = StageError(
                f"{_name_of(args)}: the stage failed: {raised_where(error)}; its message is withheld: it can quote the text"
            )
            _forget(error)
        _forget(failure)
        del args, kwargs  # the batch or texts, in this frame, which the raise puts in the traceback
        raise failure  # outside the handlers, so the error handled is not attached as its context

    return withheld


def _name_of(args: tuple) -> str:
    """The name of the stage a method was called on (its first argument): an error that opens with it
    is placed in the recipe (``stage_place``)."""
    return getattr(args[0], "name", "pii") if args else "pii"


def _forget(error: BaseException) -> None:
    """Drop what ``error`` holds of the texts: the frames it was raised in (their locals cleared, for
    whatever else holds them) and the errors it was raised during or from."""
    if error.__traceback__ is not None:
        traceback.clear_frames(error.__traceback__)
    error.__traceback__ = error.__context__ = error.__cause__ = None


class Echo(NamedTuple):
    """A place of a value found elsewhere in its record: redacted as that value (the same placeholder)."""

    detection: Detection
    value: str


def _found_elsewhere(
    where: list[tuple[str, int]], texts: list[str], detections: list[list[Detection]], allowed: re.Pattern | None
) -> dict[tuple[str, int], list[Echo]]:
    """Per text, the other places of values found in its record: a name the model saw in the prompt
    and missed in the completion (or in a field it does not scan for names) would otherwise stay
    there in clear, beside its pseudonym, which then names that person in every record. A value of
    several words is matched in any case; one word, as written. A place may hold a shorter
    detection ("Sophie" of "Sophie Smith"), which it replaces. What ``allowed`` matches (the
    recipe's ``allow``) is neither looked for nor redacted."""
    values: dict[int, dict[str, tuple[Detection, str]]] = {}  # row -> looked-for text -> (found, its value)
    for (_, row), text, found in zip(where, texts, detections, strict=True):
        for det in found:
            value = text[det[1] : det[2]]
            for part in _parts(value, det[0]):
                if allowed is None or not allowed.fullmatch(part):
                    values.setdefault(row, {}).setdefault(part, (det, value))
    echoes: dict[tuple[str, int], list[Echo]] = {}
    for (name, row), text, found in zip(where, texts, detections, strict=True):
        echoes[name, row] = []
        parts = values.get(row)
        if not parts:
            continue
        inside_allowed = [m.span() for m in allowed.finditer(text)] if allowed is not None else []
        for start, end, part in _places(text, list(parts)):
            if _free(start, end, found) and not any(a <= start and end <= b for a, b in inside_allowed):
                (entity, _, _, score), value = parts[part]
                echoes[name, row].append(Echo((entity, start, end, score), value))
    return echoes


def _left_in_clear(unmarked: list[Detection], redacted: list[Detection]) -> int:
    """How many of the spans a text would be redacted at without annotators' marks (``unmarked``) overlap
    none of those it is redacted at (``redacted``): the places the marks leave in clear."""
    return sum(not any(det[1] < end and start < det[2] for _, start, end, _ in redacted) for det in unmarked)


def _with_echoes(found: list[Detection], echoes: list[Echo]) -> list[Detection]:
    """A text's detections with the places of values found elsewhere in its record: a detection inside
    such a place ("Sophie" where "Sophie Smith" stands) gives way to it."""
    if not echoes:
        return resolve_overlaps(found)
    spans = [echo.detection[1:3] for echo in echoes]
    found = [det for det in found if not any(a <= det[1] and det[2] <= b for a, b in spans)]
    return resolve_overlaps(found + [echo.detection for echo in echoes])


def _places(text: str, parts: list[str]) -> Iterator[tuple[int, int, str]]:
    """(start, end, part) where each part stands in ``text`` as whole words, several words in any case
    and with any whitespace between them (a name broken over a line): left to right, the longest at a place,
    none within another. Places that overlap in part are all given, to be redacted as one span
    (``resolve_overlaps``): kept apart, the rest of the later one stayed in clear ("<LOCATION> garcia" where
    'title="maria' and "Maria Garcia" were found elsewhere). Found with ``str.find`` (in C): one regex of every
    part, tried at every character, took minutes on a long text of many names."""
    spaced, original = _one_space(text)
    lowered = spaced.lower()
    found = []
    shifted = len(lowered) != len(spaced)  # lowercasing moved offsets (a dotted capital İ): a regex keeps them
    for part in parts:
        if shifted:
            found += [(*match.span(), part) for match in re.finditer(_pattern(part), text)]
            continue
        words = part.split()
        haystack, needle = (lowered, " ".join(words).lower()) if len(words) > 1 else (spaced, part.strip())
        at = haystack.find(needle) if needle else -1
        while at >= 0:
            end = at + len(needle)
            if (at == 0 or not _word_character(spaced[at - 1])) and (
                end == len(spaced) or not _word_character(spaced[end])
            ):
                found.append((original(at), original(end - 1) + 1, part))
            at = haystack.find(needle, at + 1)
    reached = 0
    for start, end, part in sorted(found, key=lambda place: (place[0], place[0] - place[1])):
        if end > reached:
            reached = end
            yield start, end, part


_OTHER_WHITESPACE = re.compile(r"\s{2,}|[^\S ]")


def _one_space(text: str) -> tuple[str, Callable[[int], int]]:
    """``text`` with each run of whitespace as one space, and what gives the place in ``text`` of a
    character of it (exact for every character but a space that stands for a run)."""
    runs = list(_OTHER_WHITESPACE.finditer(text))
    if not runs:
        return text, lambda at: at
    pieces, starts, shifts, shift, last = [], [], [], 0, 0
    for run in runs:
        pieces += [text[last : run.start()], " "]
        shift += len(run.group()) - 1
        starts.append(run.start() - shift + len(run.group()))  # the first character after the space, spaced
        shifts.append(shift)
        last = run.end()
    pieces.append(text[last:])

    def original(at: int) -> int:
        index = bisect.bisect_right(starts, at)
        return at + (shifts[index - 1] if index else 0)

    return "".join(pieces), original


def _word_character(char: str) -> bool:
    return char.isalnum() or char == "_"  # as the regex \w


def _free(start: int, end: int, found: list[Detection]) -> bool:
    """Whether a place is not already within a detection of its text (one that overlaps it in part is
    merged with it: see ``resolve_overlaps``)."""
    return not any(det[1] <= start and end <= det[2] for det in found)


# Names that are English words a sentence opens with ("Will you send it?", "May I?", "Grace period"),
# and the titles and roles the model takes into a name ("Customer Sophie Smith"): the first or last word
# of a name is not looked for alone when it is one of these. A short list on purpose: it holds the
# names most often met as such words, not every one (a lone "Rose" of "Rose Tyler" rests on the model).
_WORDS_NOT_NAMES = frozenset(
    {
        "will", "may", "mark", "bill", "grace", "hope", "june", "april", "august", "rose", "faith", "joy",
        "jack", "frank", "sue", "art", "pat", "rich", "dawn", "ray", "max", "chase", "drew", "grant",
        "guy", "miles", "summer", "young", "white", "brown", "green", "black", "king", "long",
        "customer", "client", "dear", "mrs", "miss", "sir", "madam", "doctor", "professor", "agent",
    }
)  # fmt: skip


def _parts(value: str, entity: str) -> Iterator[str]:
    """The value, and for a name of three to six words ("Customer Sophie Smith") its runs of two to
    four that start and end with a capital ("Sophie Smith"): not "de la" of "Maria de la Cruz", nor
    the runs of a long span the model took for a name (a heading). Of a name of two to six words, its
    first and last word too, capitalised, of three letters or more and not a word of
    ``_WORDS_NOT_NAMES``: "Priya" alone beside the placeholder of "Priya Raman" names her."""
    yield value
    words = value.split()
    if entity != "PERSON" or len(words) > 6:
        return
    for size in range(2, min(len(words), 5)):
        for first in range(len(words) - size + 1):
            run = words[first : first + size]
            if run[0][:1].isupper() and run[-1][:1].isupper():
                yield " ".join(run)
    if len(words) > 1:
        for word in dict.fromkeys((words[0], words[-1])):
            if len(word) >= 3 and word.isalpha() and word[0].isupper() and word.casefold() not in _WORDS_NOT_NAMES:
                yield word


def _pattern(part: str) -> str:
    words = part.split()
    body = r"\s+".join(re.escape(word) for word in words)
    return rf"(?<!\w)(?i:{body})(?!\w)" if len(words) > 1 else rf"(?<!\w){body}(?!\w)"


class Placeholders:
    """What replaces a detected value, per operator."""

    def __init__(self, secret: bytes | None, mask_char: str) -> None:
        self.secret = secret
        self.mask_char = mask_char

    def __call__(self, operator: str, entity: str, value: str) -> str:
        if operator == "mask":
            return "".join(self.mask_char if ch.isalnum() else ch for ch in value)
        if operator == "pseudonym":
            assert self.secret is not None
            # Case, spacing and punctuation do not make a new person or number: "(212) 555-0100"
            # and "212-555-0100" get the same pseudonym.
            key = "".join(ch for ch in unicodedata.normalize("NFKC", value).casefold() if ch.isalnum())
            digest = hmac.new(self.secret, f"{entity}\x1f{key}".encode(), hashlib.sha256).hexdigest()
            return f"<{entity}_{digest[:10]}>"
        return f"<{entity}>"


class JsonValue(NamedTuple):
    """A string (a key too) or a number in a JSON text: ``value`` as decoded (half a UTF-16 pair alone
    as U+FFFD), and ``places``, where each of its characters starts in the JSON text, then where it
    ends (an escape such as ``\\u00e9`` or ``\\"`` is one character of the value and several of the text).
    ``key_of``: for a key, where the object that holds it starts in the text (None for the rest)."""

    value: str
    places: Sequence[int]
    is_string: bool
    key_of: int | None = None
    raw: bool = False  # text around JSON within a text (see ``json_values``): as it is, no JSON string

    def place(self, start: int, end: int) -> tuple[int, int]:
        """The characters of the JSON text that hold ``value[start:end]``."""
        return self.places[start], self.places[end]

    def covering(self, start: int, end: int) -> tuple[int, int] | None:
        """The part of the value (its offsets) whose characters cover what of the JSON text's
        ``[start, end)`` lies inside it, an escape cut by an edge counted whole; None outside it."""
        start, end = max(start, self.places[0]), min(end, self.places[-1])
        if start >= end:
            return None
        return bisect.bisect_right(self.places, start) - 1, bisect.bisect_left(self.places, end)


# A JSON string in a text, a key too: found left to right, so a quote inside one is never taken for an
# opening one; in a line that does not parse as well (the reader quarantined it), up to where it breaks.
_JSON_STRING = re.compile(r'"((?:[^"\\\n]|\\.)*)"')


def _decoded(match: re.Match) -> str:
    """The value of a JSON string ``_JSON_STRING`` found: its escapes decoded where they are valid JSON,
    half a UTF-16 pair alone as U+FFFD (spaCy fails on it; see ``_json_walk``)."""
    try:
        return _LONE_HALF.sub("\ufffd", json.loads(match.group()))
    except ValueError:
        return match.group(1)


_LONE_HALF = re.compile("[\ud800-\udfff]")
# The words of a key whose values are people's names (``first_name``, ``name_last``, ``customerName``, ``fname``,
# ``patient``): the last word one of these; with "name" anywhere, every word one of these or the qualifiers
# below, so ``product_name``, ``account_name`` and ``file_name`` are not; or a qualifier alone (a template's
# "{{ first }} {{ last }}"). ``user`` and ``username`` are left out: their values are handles, not names.
# Only such a value is scanned in a name's context.
_PERSON_KEY_WORDS = frozenset(
    {
        "name", "surname", "fullname", "firstname", "lastname", "fname", "lname", "forename", "customer", "client",
        "contact", "payee", "payer", "holder", "cardholder", "owner", "sender", "recipient", "author", "employee",
        "person", "patient", "guest", "assignee", "requester", "applicant", "beneficiary",
    }
)  # fmt: skip
_NAME_QUALIFIERS = frozenset({"first", "last", "given", "family", "middle", "full"})
_KEY_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")


def _names_a_person(key: str) -> bool:
    """Whether ``key`` names a person by its words (see ``_PERSON_KEY_WORDS``)."""
    words = [word.casefold() for word in _KEY_WORD.findall(key)]
    if "name" in words:
        return all(word in _PERSON_KEY_WORDS | _NAME_QUALIFIERS for word in words)
    return bool(words) and (words[-1] in _PERSON_KEY_WORDS or (len(words) == 1 and words[0] in _NAME_QUALIFIERS))


def _joined(label: str, matches: list[re.Match], between: str) -> tuple[str, list[tuple[int, int, re.Match]]]:
    """The values ``_JSON_STRING`` found, after ``label`` and ``between`` each other, and where each value
    lies in that text."""
    text, pieces = label, []
    for match in matches:
        value = _decoded(match)
        text += between if pieces else ""
        pieces.append((len(text), len(text) + len(value), match))
        text += value
    return text, pieces


_JSON_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_COLON = re.compile(r"[ \t\n\r]*:")  # what follows a key in an object
_JSON_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def json_values(text: str) -> list[JsonValue] | None:
    """The strings and numbers of ``text`` if it is the JSON text of an array or an object (how a
    column of lists or objects reaches a record field: a nested Parquet or JSONL column, a column of
    mixed types) or of a string (a raw input line holding one, set aside: its escapes decoded, its
    quotes kept), or if it holds such JSON within other text (a template that writes a list or an
    object column after words: ``Notes: ["Call Daniel Okafor"]``), else None. Told from the text,
    strictly: a part of it that starts with ``[`` or ``{`` and parses, holding a string; the text
    around it comes as ``raw`` values (scanned within the whole text only, written as it is)."""
    if text[:1] in ("[", "{", '"'):
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, list | dict | str):
            return _json_walk(text, 0, len(text))
    return _embedded_json(text)


# Where an array or object holding a string can start: "[" before a string, a number, an array or
# an object; "{" before a key. Not "[1]" of a footnote, "[see]" of Markdown, "{x}" of LaTeX.
_OPENING = re.compile(r'\[(?=[ \t\n\r]*[\[{"\-\d])|\{(?=[ \t\n\r]*")')
_DECODER = json.JSONDecoder()


def _embedded_json(text: str) -> list[JsonValue] | None:
    """The values of the JSON arrays and objects (holding a string) found within ``text``, with the
    text between them as ``raw`` values; None where there is none. A try that fails costs up to the
    text's length (Python's parser counts the lines before the place it failed), so a text gets 16
    of them (more when short: 64 KiB of parsing); past that, the rest is left to the scan of the whole."""
    found: list[JsonValue] = []
    at = reached = failed = 0
    while (opening := _OPENING.search(text, at)) is not None:
        start = opening.start()
        try:
            _, end = _DECODER.raw_decode(text, start)
        except (ValueError, RecursionError):
            failed += 1
            if failed * len(text) > 16 * len(text) + 65536:
                break
            at = start + 1
            continue
        values = _json_walk(text, start, end)
        if any(value.is_string for value in values):
            if reached < start:
                found.append(JsonValue(text[reached:start], range(reached, start + 1), True, raw=True))
            found += values
            reached = end
        at = end
    if not found:
        return None
    if reached < len(text):
        found.append(JsonValue(text[reached:], range(reached, len(text) + 1), True, raw=True))
    return found


def _json_walk(text: str, at: int, end: int) -> list[JsonValue]:
    """The strings and numbers of the JSON text ``text[at:end]`` (which parses), in text order."""
    found: list[JsonValue] = []
    opened: list[int] = []  # where each array or object the scan is inside starts
    while at < end:
        char = text[at]
        if char in "[{":
            opened.append(at)
        elif char in "]}":
            opened.pop()
        if char == '"':
            value, places, at = [], [], at + 1
            while text[at] != '"':
                places.append(at)
                if text[at] != "\\":
                    value.append(text[at])
                    at += 1
                elif text[at + 1] != "u":
                    value.append(_JSON_ESCAPES[text[at + 1]])
                    at += 2
                else:
                    code, at = int(text[at + 2 : at + 6], 16), at + 6
                    if 0xD800 <= code < 0xDC00 and text[at : at + 2] == "\\u":  # a pair: one character
                        low = int(text[at + 2 : at + 6], 16)
                        if 0xDC00 <= low < 0xE000:
                            code, at = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00), at + 6
                    # Half a pair alone (JSON allows it, the reader quarantines such a line) is no
                    # character: spaCy fails on it. Scanned as U+FFFD, one character as well.
                    value.append("\ufffd" if 0xD800 <= code < 0xE000 else chr(code))
            in_object = opened and text[opened[-1]] == "{"
            key = in_object and _COLON.match(text, at + 1) is not None
            found.append(JsonValue("".join(value), [*places, at], True, opened[-1] if key else None))
            at += 1
        elif char == "-" or char.isdigit():
            match = _JSON_NUMBER.match(text, at)
            if match is None:  # -Infinity, which Python's json reads
                at += 1
                continue
            found.append(JsonValue(match.group(), list(range(at, match.end() + 1)), False))
            at = match.end()
        else:
            at += 1
    return found


def _distinct_keys(text: str, structured: list[JsonValue], spans: list[dict]) -> None:
    """Give the placeholder of the last span in a redacted key a number (`` (2)``, `` (3)``, ...) where
    the key would otherwise be named twice in its object: names made ``<PERSON>`` alike (masked alike,
    or one person written two ways, one pseudonym), or as a key kept as written. An object naming a
    key twice is no valid record (the reader quarantines it; most JSON tools keep one of the values).
    Keys are taken in text order; a key left as it is keeps its name, the first redacted one of a
    name keeps it too unless a kept key holds it. ``spans`` are places in ``text`` (``start``,
    ``end``, ``placeholder`` as JSON writes it in a string): changed in place."""
    ordered = sorted(spans, key=lambda span: span["start"])
    starts = [span["start"] for span in ordered]
    objects: dict[int, list[tuple[JsonValue, list[dict]]]] = {}
    for value in structured:
        if value.key_of is not None:
            first, last = value.places[0], value.places[-1]
            inside = ordered[bisect.bisect_left(starts, first) : bisect.bisect_left(starts, last)]
            objects.setdefault(value.key_of, []).append((value, [span for span in inside if span["end"] <= last]))
    for keys in objects.values():
        if not any(inside for _, inside in keys):
            continue

        def name(value: JsonValue, inside: list[dict], suffix: str = "") -> str:
            first = value.places[0]
            pieces = [{**span, "start": span["start"] - first, "end": span["end"] - first} for span in inside]
            pieces[-1]["placeholder"] += suffix
            return json.loads(f'"{redacted(text[first : value.places[-1]], pieces)}"')

        taken = {json.loads(f'"{text[value.places[0] : value.places[-1]]}"') for value, inside in keys if not inside}
        for value, inside in keys:
            if not inside:
                continue
            number, suffix = 1, ""
            while (key := name(value, inside, suffix)) in taken:
                number += 1
                suffix = f" ({number})"
            inside[-1]["placeholder"] += suffix
            taken.add(key)


class Part(NamedTuple):
    """What is redacted on its own: a text, or one string or number of its JSON (``value``)."""

    text: int  # which text it is part of
    value: JsonValue | None
    scanned: str  # the text, or the string or number as decoded
    found: list[Detection]  # offsets in ``scanned``

    def place(self, start: int, end: int) -> tuple[int, int]:
        """Offsets in ``scanned`` as the text's; a number is replaced whole (by a JSON string)."""
        if self.value is None:
            return start, end
        return self.value.place(start, end) if self.value.is_string else self.value.place(0, len(self.scanned))

    def in_text(
        self, detections: list[Detection], values: Mapping[tuple[int, int], str]
    ) -> list[tuple[Detection, str, str]]:
        """Each detection at its place in the text, with its own text and the value it stands for
        (``values``: that of a place found again), both as decoded."""
        if self.value is not None and not self.value.is_string and detections:  # a number: one span
            entity, _, _, score = max(detections, key=lambda det: det[3])
            detections = [(entity, 0, len(self.scanned), score)]
        placed = []
        for entity, start, end, score in detections:
            own = self.scanned[start:end]
            placed.append(((entity, *self.place(start, end), score), own, values.get((start, end), own)))
        return placed


TextsRewrite = Callable[[list[str | None], list[int]], list[str | None]]


def rewrite_set_aside(table: pa.Table, rewrite: TextsRewrite) -> pa.Table:
    """Set-aside rows with their raw input and detail as ``rewrite`` makes them (the PII stages' redaction,
    see ``set_aside_scrub`` in the pipeline), before they are published.

    A quarantined record never reached the PII stage, yet its raw input (``record``) and the reader's
    or template's message (``detail``, which can quote what it could not parse) are published in
    the version's ``set_aside/``. A detail's ``file:line`` is left as it is, and so are the details
    the other stages write: they name fields, limits and measures, never values, and their words
    would be taken for names ("Input should be a valid number"). The review queue keeps the raw
    input (state store only) for annotators.
    """
    records, details = table["record"].to_pylist(), table["detail"].to_pylist()
    sources, stages = table["source"].to_pylist(), table["stage"].to_pylist()
    quoting = [row for row, detail in enumerate(details) if detail and stages[row] in _QUOTING_STAGES]
    prefix = {}
    for row in quoting:
        at = location(sources[row])
        prefix[row] = len(at) + 2 if details[row].startswith(f"{at}: ") else 0
    # One scan of every text, each with its row: a name found in one value of a row is found in its
    # other values and its detail too, as on the stage's path. A raw input that is a JSON object (a
    # row the reader could parse) is scanned as the stage scans a field of JSON: string by string
    # (keys too) and whole, a number found (a card) made a string.
    texts = [*records, *(details[row][prefix[row] :] for row in quoting)]
    rewritten = iter(rewrite(texts, [*range(len(records)), *quoting]))
    records = [next(rewritten) for _ in records]
    for row in quoting:
        details[row] = details[row][: prefix[row]] + (next(rewritten) or "")
    table = table.set_column(table.column_names.index("record"), "record", pa.array(records, pa.string()))
    return table.set_column(table.column_names.index("detail"), "detail", pa.array(details, pa.string()))


def string_by_string(rewrite: TextsRewrite) -> TextsRewrite:
    """``rewrite`` applied to each string value of a text holding JSON (a raw input the reader parsed),
    keys and the JSON around them left as they are, as a stage meets the record's fields; to the whole of
    any other text. So a clean stage's rewrite of a set-aside row keeps its JSON valid (``&quot;``
    decoded within a string) and reaches markup written as JSON escapes (``\\u003cb\\u003e``)."""

    def apply(values: list[str | None], records: list[int]) -> list[str | None]:
        structured = [json_values(value) if value else None for value in values]
        pieces: list[tuple[int, JsonValue | None]] = []
        for index, found in enumerate(structured):
            if found is None:
                pieces.append((index, None))
            else:
                pieces += [(index, one) for one in found if one.is_string and one.key_of is None]
        texts = [values[index] if one is None else one.value for index, one in pieces]
        out = list(values)
        # Each text's changed strings, put in at once: one slice of the whole per string was quadratic.
        changed: dict[int, list[dict]] = {}
        for (index, one), text, new in zip(pieces, texts, rewrite(texts, [records[i] for i, _ in pieces]), strict=True):
            if one is None:
                out[index] = new
            elif new != text:
                written = new if one.raw else json.dumps(new, ensure_ascii=False)[1:-1]
                span = {"start": one.places[0], "end": one.places[-1], "placeholder": written}
                changed.setdefault(index, []).append(span)
        for index, spans in changed.items():
            out[index] = redacted(str(values[index]), spans)
        return out

    return apply


def cleaned_where_redacted(steps: list[tuple[TextsRewrite, bool]]) -> TextsRewrite:
    """``steps`` in turn (each a rewrite and whether it is a PII stage's, the others a clean stage's), for the
    texts a PII stage changes then; each other text as the PII stages alone make it of what was read. A clean
    stage's rewriting makes markup and HTML entities found, yet a set-aside row is the evidence of what was read:
    the control character or the column the reader's message names stays, where nothing was redacted."""
    pii_alone = [rewrite for rewrite, is_pii in steps if is_pii]

    def apply(values: list[str | None], records: list[int]) -> list[str | None]:
        texts, redacted = list(values), [False] * len(values)
        for rewrite, is_pii in steps:
            rewritten = rewrite(texts, records)
            if is_pii:
                redacted = [was or new != old for was, old, new in zip(redacted, texts, rewritten, strict=True)]
            texts = rewritten
        # A text no stage changed is already what the PII stages alone make of it.
        again = [at for at, was in enumerate(redacted) if not was and texts[at] != values[at]]
        if again:
            # Scanned with every other text of its row, as read: a name found in one is found in the others.
            rows = {records[at] for at in again}
            scanned = [at for at, record in enumerate(records) if record in rows]
            read = [values[at] for at in scanned]
            for rewrite in pii_alone:
                read = rewrite(read, [records[at] for at in scanned])
            alone = dict(zip(scanned, read, strict=True))
            for at in again:
                texts[at] = alone[at]
        return texts

    return apply


class Scan:
    """Texts as the analyzer scans them. A text holding the JSON of a list, an object or a string (as a whole,
    or within words: see ``json_values``) is scanned whole (its keys give the pattern recognisers
    their context words: "phone": "555-0199") and each of its strings alone too (between JSON's
    quotes and commas the model misses a name it finds in the string alone); what is found is
    redacted in the string or number that holds it, so the JSON stays valid."""

    def __init__(self, texts: list[str]) -> None:
        self.structured = [json_values(text) for text in texts]
        self.texts = list(texts)  # what the analyzer scans
        self.owner = list(range(len(texts)))  # the text each scanned one belongs to
        self._strings: list[list[int]] = []  # per text, the scanned text of each of its strings (-1: none)
        for index, values in enumerate(self.structured):
            self._strings.append([])
            for value in values or ():
                scanned = value.is_string and bool(value.value) and not value.raw
                self._strings[index].append(len(self.texts) if scanned else -1)
                if scanned:
                    self.owner.append(index)
                    self.texts.append(value.value)

    def parts(self, found: list[list[Detection]]) -> list[Part]:
        """The parts of the texts, each with what was found in it, given what was found in ``texts``."""
        parts = []
        for index, values in enumerate(self.structured):
            if values is None:
                parts.append(Part(index, None, self.texts[index], found[index]))
                continue
            for value, own in zip(values, self._strings[index], strict=True):
                inside = [
                    (entity, *covered, score)
                    for entity, start, end, score in found[index]
                    if (covered := value.covering(start, end)) is not None
                ]
                parts.append(Part(index, value, value.value, inside + (found[own] if own >= 0 else [])))
        return parts


class PiiRedaction:
    """The PII stage: redacts, pseudonymises, drops and flags for review, per the recipe."""

    name = "pii"
    rewrites_text = True  # annotators' edits of carried records go through it too (see the pipeline)
    loads_model = True  # the Ray executor runs it on an actor pool, so each worker loads the model once

    def __init__(
        self,
        config: PiiConfig,
        kind: str,
        *,
        undone: Undone | None = None,
        marked: Marked | None = None,
        analyzer: PiiAnalyzer | None = None,
        name: str | None = None,
    ) -> None:
        self.name = name or self.name  # a second stage of its type in the recipe: ``own_name``
        self.config = config
        self.fields = list(config.fields or DEFAULT_FIELDS[kind])
        self.content = CONTENT_COLUMNS[kind]
        if not self.fields:
            raise PiiSettingError(
                f"the pii stage needs `fields` for {kind} records: name the columns that can hold PII"
            )
        bad = sorted(set(self.fields) - set(CONTENT_COLUMNS[kind])) if kind != "table" else []
        if bad:
            raise PiiSettingError(f"the pii stage scans {bad}, which are not fields of {kind} records")
        self.ner_fields = set(config.ner_fields if config.ner_fields is not None else self.fields)
        unscanned = sorted(self.ner_fields - set(self.fields))
        if unscanned:  # a misspelt name would quietly turn name detection off
            raise PiiSettingError(f"ner_fields names {unscanned}, which the pii stage does not scan: {self.fields}")
        custom = tuple(
            CustomRecognizer(r.entity, tuple((p.regex, p.score) for p in r.patterns), tuple(r.context))
            for r in config.recognizers
        )
        entities = tuple(config.scanned_entities())
        self.operators = {
            entity: config.operators.get(entity, config.operators.get("default", "replace")) for entity in entities
        }
        secret = config.secret_key()
        if "pseudonym" in self.operators.values() and not secret:
            raise PiiSettingError(
                f"the pii stage's pseudonym operator needs a secret key: set the environment variable "
                f"{config.secret_env} (or `secret` in the stage settings)"
            )
        self.placeholder = Placeholders(secret.encode() if secret else None, config.mask_char)
        self.undone = {record: set(spans) for record, spans in (undone or {}).items()}
        self.marked = marked or {}
        self.allowed = {value.casefold() for value in config.allow} | _FORMAT_NAMES
        self.allowed_places = (  # where an allowed value stands in a text (a name's echo stays out)
            re.compile("|".join(rf"(?<!\w){re.escape(value)}(?!\w)" for value in config.allow), re.IGNORECASE)
            if config.allow
            else None
        )
        try:
            self.analyzer = analyzer or PiiAnalyzer(EngineSpec(entities, custom), config.workers, config.batch_size)
            if config.ocr:
                check_tesseract()
        except PiiEngineError as error:
            raise PiiSettingError(str(error)) from None

    @_messages_withheld
    def __call__(self, batch: pa.Table) -> StageResult:
        return self._redact_batch(batch)

    def _redact_batch(self, batch: pa.Table) -> StageResult:
        # Each error opens with the stage's name, so a run names its place in the recipe (``stage_place``).
        require_columns(batch, self.fields, f"{self.name} fields")
        for name in self.fields:
            if not (pa.types.is_string(batch[name].type) or pa.types.is_null(batch[name].type)):
                raise StageSettingError(f"{self.name} fields: {name!r} holds {batch[name].type}, not text")
        ids = batch["id"].to_pylist()
        columns = {name: batch[name].to_pylist() for name in self.fields}
        where = [(name, row) for name in self.fields for row, value in enumerate(columns[name]) if value]
        texts = [columns[name][row] for name, row in where]
        scan = Scan(texts)
        try:
            found = self.analyzer.analyze(
                scan.texts, self.config.threshold, [where[index][0] in self.ner_fields for index in scan.owner]
            )
        except PiiTextError as error:
            name, row = where[scan.owner[error.index]]
            source = batch["source"][row].as_py()
            raise StageError(
                f"{self.name}: {location(source)}: record {ids[row]}, field {name}: presidio failed with "
                f"{error.error} (its message is withheld: it can quote the text)"
            ) from None
        parts = scan.parts(found)

        stats: Counter[str] = Counter()  # entities redacted (schemas.pii.PII_FOUND), and records counted
        dropped: dict[int, str] = {}  # row -> PII-free reason
        counts: dict[int, Counter[str]] = {}  # row -> entities redacted in it
        flags: dict[int, list[tuple[str, str, str, list[dict], list[dict]]]] = {}  # row -> its fields' flags
        redacted = {name: list(values) for name, values in columns.items()}
        found_in = [resolve_overlaps(self._not_allowed(part.scanned, part.found)) for part in parts]
        kept_detections = []
        for part, found_here in zip(parts, found_in, strict=True):
            name, row = where[part.text]
            kept_detections.append(
                [
                    det
                    for det in found_here
                    if not self._left_as_marked(ids[row], name, part.place(det[1], det[2]), columns[name][row])
                ]
            )
        keys = [(at, where[part.text][1]) for at, part in enumerate(parts)]
        echoes = _found_elsewhere(keys, [part.scanned for part in parts], kept_detections, self.allowed_places)
        # The places the records holding a span marked not PII would be redacted at without the marks: a
        # value marked so where the model found it is looked for nowhere else, so its places found again
        # come back in clear with it, and each place left in clear is counted (``review_restored``).
        marked = [at for at, (_, row) in enumerate(keys) if ids[row] in self.undone]
        unmarked = (
            _found_elsewhere(
                [keys[at] for at in marked],
                [parts[at].scanned for at in marked],
                [found_in[at] for at in marked],
                self.allowed_places,
            )
            if marked
            else {}
        )
        # Per field: its detections and, for each, its own text and the value it stands for, as decoded.
        in_field: list[list[Detection]] = [[] for _ in where]
        own_text: list[dict[tuple[int, int], str]] = [{} for _ in where]
        values_of: list[dict[tuple[int, int], str]] = [{} for _ in where]
        for at, (part, keep) in enumerate(zip(parts, kept_detections, strict=True)):
            name, row = where[part.text]
            echoed = [
                echo
                for echo in echoes[at, row]
                if not self._left_as_marked(ids[row], name, part.place(*echo.detection[1:3]), columns[name][row])
            ]
            # Places found again that overlap are redacted as one span, the one a flag shows: an undo is
            # marked on that span, and it is one place found again.
            spans = [
                det
                for det in _with_echoes(keep, echoed)
                if det in keep or not self._left_as_marked(ids[row], name, part.place(*det[1:3]), columns[name][row])
            ]
            if again := sum(det not in keep for det in spans):
                stats["found_elsewhere_in_record"] += again
            if (at, row) in unmarked and (
                restored := _left_in_clear(_with_echoes(found_in[at], unmarked[at, row]), spans)
            ):
                stats["review_restored"] += restored
            values = {echo.detection[1:3]: echo.value for echo in echoed}
            for det, own, value in part.in_text(spans, values):
                in_field[part.text].append(det)
                own_text[part.text][det[1:3]] = own
                values_of[part.text][det[1:3]] = value
        for index, ((name, row), text, keep) in enumerate(zip(where, texts, in_field, strict=True)):
            if not keep:
                continue
            drop = sorted({entity for entity, *_ in keep if self.operators[entity] == "drop"})
            if drop:
                dropped.setdefault(row, f"{name} holds {', '.join(drop)} (operator drop)")
                continue
            new_text, spans = self._redact(text, keep, values_of[index], own_text[index], scan.structured[index])
            redacted[name][row] = new_text
            counts.setdefault(row, Counter()).update(entity for entity, *_ in keep)
            uncertain = [span for span in spans if span["score"] < self.config.review_below]
            if uncertain:
                flags.setdefault(row, []).append((name, text, new_text, uncertain, spans))
        # Made once every field is redacted, from the batch as read: a flag holds the record's other
        # fields raw and as this stage publishes them. The flagged records are read in one take.
        content = [other for other in self.content if other in batch.column_names]
        rows = sorted(flags)
        read = batch.select(["id", "source", *content]).take(pa.array(rows, pa.int64())).to_pylist()
        made = {
            row: [self._flag(record, content, {n: v[row] for n, v in redacted.items()}, *flag) for flag in flags[row]]
            for row, record in zip(rows, read, strict=True)
        }
        stats["records_scanned"] += batch.num_rows
        bad_images: dict[int, str] = {}
        if self.config.ocr and "image_bytes" in batch.column_names:
            batch, bad_images = self._redact_images(batch, stats, skip=set(dropped))
        out = set(dropped) | set(bad_images)
        for row, row_counts in counts.items():
            if row not in out:  # a record not published is no record redacted
                stats.update(row_counts)
                stats["records_redacted"] += 1
        stats["records_dropped"] += len(dropped)
        for name in self.fields:
            batch = batch.set_column(batch.column_names.index(name), name, pa.array(redacted[name], pa.string()))
        kept = batch.filter(pa.array([row not in out for row in range(batch.num_rows)]))
        set_aside = pa.concat_tables(
            [
                self._set_aside(batch, dropped, "filtered", "pii"),
                self._set_aside(batch, bad_images, "quarantined", "bad_image"),
            ]
        )
        # A dropped record is not published, so there is nothing left in it to review.
        flagged = [(row, flag) for row, row_flags in sorted(made.items()) if row not in out for flag in row_flags]
        if "image_bytes" in batch.column_names:
            _with_pictures(flagged, batch["image_bytes"])
        flag_rows = [flag for _, flag in flagged]
        flag_table = pa.Table.from_pylist(flag_rows, schema=FLAG_SCHEMA)
        stats["review_flagged"] += flag_table.num_rows
        log.debug(
            "stage=pii records=%d texts=%d redacted=%d dropped=%d flagged=%d",
            batch.num_rows,
            len(texts),
            stats["records_redacted"],
            len(dropped),
            flag_table.num_rows,
        )
        return StageResult(kept=kept, set_aside=set_aside, stats=dict(stats), flags=flag_table)

    def _not_allowed(self, text: str, detections: list[Detection]) -> list[Detection]:
        """``detections`` less those of a value the recipe allows (``allow``) or a format's name."""
        return [det for det in detections if text[det[1] : det[2]].casefold() not in self.allowed]

    @property
    def redacts_images(self) -> bool:
        return self.config.ocr

    @_messages_withheld
    def rewrite_texts(self, values: list[str | None], records: list[int] | None = None) -> list[str | None]:
        """``values`` scanned as free text, every entity found replaced by ``<ENTITY>``: for text that
        leaves the stage's path (set-aside rows, review items made before it) and that no operator,
        undo or review flag applies to. With ``records`` (the record each value belongs to), a value
        found in one is redacted wherever the others of its record hold it, as on the stage's path.
        A value holding the JSON of a list or an object stays valid JSON (see ``Scan``)."""
        values = list(values)
        where = [row for row, value in enumerate(values) if value]
        if not where:
            return values
        scan = Scan([str(values[row]) for row in where])
        found = self.analyzer.analyze(scan.texts, self.config.threshold)
        for index, across in enumerate(self._names_across_values(scan.texts[: len(where)])):
            found[index] = found[index] + across
        parts = scan.parts(found)
        kept = [resolve_overlaps(self._not_allowed(part.scanned, part.found)) for part in parts]
        places = [
            (at, where[part.text] if records is None else records[where[part.text]]) for at, part in enumerate(parts)
        ]
        echoes = _found_elsewhere(places, [part.scanned for part in parts], kept, self.allowed_places)
        spans: list[list[dict]] = [[] for _ in where]
        for place, part, detections in zip(places, parts, kept, strict=True):
            for (entity, start, end, _), _, _ in part.in_text(_with_echoes(detections, echoes[place]), {}):
                number = part.value is not None and not part.value.is_string  # made a JSON string
                spans[part.text].append(
                    {"start": start, "end": end, "placeholder": f'"<{entity}>"' if number else f"<{entity}>"}
                )
        for index, row in enumerate(where):
            if scan.structured[index] is not None:
                _distinct_keys(scan.texts[index], scan.structured[index], spans[index])
            values[row] = redacted(scan.texts[index], spans[index])
        return values

    def _names_across_values(self, texts: list[str]) -> list[list[Detection]]:
        """Per text that is the line of a JSON object (a set-aside row's raw input, parsed or not), the
        names found across its string values, as a template writes them ("{{ first }} {{ last }}",
        "Customer {{ name }}"): alone, the model misses "Helen" and "Park", and "Olu Adeyemi". Two scans
        at most, each taking only what a name across values looks like, since the model makes names of
        short values ("Coffee Maker", "Returned") as readily: the values joined, a PERSON covering two
        or more of them whole (first and last name); and the values under a key that names a person
        (``_names_a_person``) on one line after "Customer:", in the row's order ("Customer: Helen Park"),
        a PERSON covering one or more whole. Each is given as the
        values it covers, to be redacted there and wherever else the row holds them
        (``_found_elsewhere``); a value a PERSON covers in part is left to that value's own scan."""
        joined: list[str] = []
        placed: list[tuple[int, int, list[tuple[int, int, re.Match]]]] = []  # text, values a name covers, values
        for index, text in enumerate(texts):
            if not text.lstrip().startswith("{"):
                continue
            strings: list[tuple[str, re.Match]] = []  # each value, with the key before it ("" for none)
            key = ""
            for match in _JSON_STRING.finditer(text):
                if _COLON.match(text, match.end()):
                    key = _decoded(match)
                else:
                    strings.append((key, match))
                    key = ""
            # One a line: spaces made more names of product and status values ("SKU-1791 Done").
            scans = [(2, "", [match for _, match in strings], "\n")] if len(strings) > 1 else []
            # One label for all, on one line so a first and a last name are read as one: after "Customer:"
            # the model takes 13 of 13 test names, after "name:" 8.
            named = [match for key, match in strings if _names_a_person(key)]
            scans += [(1, "Customer: ", named, " ")] if named else []
            for covers, label, matches, between in scans:
                text_joined, pieces = _joined(label, matches, between)
                joined.append(text_joined)
                placed.append((index, covers, pieces))
        across: list[list[Detection]] = [[] for _ in texts]
        if not joined:
            return across
        found_in = self.analyzer.analyze(joined, self.config.threshold)
        for (index, covers, pieces), found in zip(placed, found_in, strict=True):
            for entity, start, end, score in found:
                whole = [match for a, b, match in pieces if start <= a < b <= end]
                if entity == "PERSON" and len(whole) >= covers:
                    across[index] += [(entity, *match.span(1), score) for match in whole]
        return across

    def _set_aside(self, batch: pa.Table, rows: dict[int, str], outcome: str, reason: str) -> pa.Table:
        order = sorted(rows)
        taken = batch.take(pa.array(order, pa.int64()))
        return set_aside_rows(taken["id"], taken["source"], self.name, outcome, reason, [rows[r] for r in order])

    def _redact_images(self, batch: pa.Table, stats: Counter[str], skip: set[int]) -> tuple[pa.Table, dict[int, str]]:
        """Fill the boxes of PII text found by OCR in each image; unreadable images are quarantined.
        An image several records hold (questions about one page) is read once, and counted for each
        record, as text is: counted once per batch, the counts moved with where batches were cut."""
        images = batch["image_bytes"].to_pylist()
        sources = batch["source"].to_pylist()
        bad: dict[int, str] = {}
        done: dict[bytes, tuple[bytes, dict[str, int]] | BadImage] = {}  # by the image's bytes: one read
        for row, data in enumerate(images):
            if data is None or row in skip:
                continue
            if data not in done:
                done[data] = self._redact_image(data)
            outcome = done[data]
            if isinstance(outcome, BadImage):
                bad[row] = f"{location(sources[row])}: image_bytes: {outcome}"
                continue
            images[row], found = outcome
            stats.update({f"image_{entity}": count for entity, count in found.items()})
            stats["images_redacted"] += bool(found)
        column = batch.column_names.index("image_bytes")
        return batch.set_column(column, "image_bytes", pa.array(images, batch["image_bytes"].type)), bad

    def _redact_image(self, data: bytes) -> tuple[bytes, dict[str, int]] | BadImage:
        try:
            return redact_image(data, self.analyzer.spec, self.config.threshold)
        except BadImage as error:
            return error

    def _redact(
        self,
        text: str,
        detections: list[Detection],
        values: Mapping[tuple[int, int], str] | None = None,
        own: Mapping[tuple[int, int], str] | None = None,
        structured: list[JsonValue] | None = None,
    ) -> tuple[str, list[dict]]:
        """``text`` with ``detections`` replaced; ``values`` gives the value a place stands for when it is
        not its own text: a name found again by its words takes the name's pseudonym. In the JSON text
        of a list or an object (``structured``, its strings and numbers, and the words around it), ``own``
        gives the place's text as decoded, the placeholder is written as JSON writes it in a string, and
        a number becomes one; among the words around it, as it is."""
        values, own = values or {}, own or {}
        starts = [value.places[0] for value in structured or ()]
        spans = []
        for entity, start, end, score in detections:
            operator = self.operators[entity]
            mine = own.get((start, end), text[start:end])
            value = values.get((start, end), mine) if operator == "pseudonym" else mine
            placeholder = self.placeholder(operator, entity, value)
            holder = structured[bisect.bisect_right(starts, start) - 1] if structured else None
            if holder is not None and not holder.raw:  # in a JSON string, or a number made one
                placeholder = json.dumps(placeholder)[1:-1] if holder.is_string else json.dumps(placeholder)
            spans.append(
                {"start": start, "end": end, "entity": entity, "score": round(score, 4), "placeholder": placeholder}
            )
        if structured is not None:
            _distinct_keys(text, structured, spans)
        return redacted(text, spans), spans

    def _left_as_marked(self, record: str, name: str, place: tuple[int, int], text: str) -> bool:
        """Whether an annotator marked the span at ``place`` of field ``name`` not PII, and it holds the text
        it held then: a keyed row edited in place keeps its id, and new text at the same offsets (another
        phone number) is no text anyone looked at."""
        span = (name, *place)
        if span not in self.undone.get(record, ()):
            return False
        marked = self.marked.get(record, {}).get(span)
        return marked is None or text[place[0] : place[1]] == marked

    def _flag(
        self,
        record: dict[str, Any],
        content: list[str],
        redacted: dict[str, str | None],
        name: str,
        original: str,
        text: str,
        spans: list[dict],
        every: list[dict],
    ) -> dict:
        """A review item for the uncertain ``spans`` of the ``record`` (its id, source and ``content``
        fields, as read); ``every`` redaction of the field is kept beside them, so a carried copy can be
        rebuilt when some of them are marked not PII. The record's other text fields come with it, raw and
        as this stage publishes them (``redacted``, the fields it scans): an edit of one starts from its
        value, as the annotator's role may see it."""
        entities = ", ".join(sorted({span["entity"] for span in spans}))
        redactions = [{key: span[key] for key in ("start", "end", "placeholder")} for span in every]
        payload = {"field": name, "original": original, "redacted": text, "spans": spans, "redactions": redactions}
        payload["fields"] = {
            other: record[other] for other in content if other != name and isinstance(record[other], str)
        }
        payload["redacted_fields"] = {other: redacted.get(other, value) for other, value in payload["fields"].items()}
        return {
            "id": record["id"],
            "source": record["source"],
            "stage": self.name,
            "kind": "pii",
            "detail": f"{len(spans)} uncertain PII span(s) in {name}: {entities}",
            "payload": json.dumps(payload),
        }
