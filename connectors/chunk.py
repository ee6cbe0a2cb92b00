"""Split text into overlapping chunks for domain adaptation, cutting on paragraph boundaries.

Paragraphs (blank-line separated) are packed into a chunk while it stays within ``max_chars``;
the next chunk starts with the last paragraphs of the previous one, up to ``overlap_chars``, so
no sentence loses its context at a cut. A paragraph longer than a chunk is cut at the last
sentence end (or space or line break) that fits, never inside a word unless it has no space at all, and not
inside a name where another space will do (between two capitalised words, "de la" between them or
not; nor after an initial or a title's full stop, "Daniel O. Okafor", "Mr. Okafor"), nor between two groups
of a number ("4111 1111", "+1 415 555 0100", "DE89 3704"): a name or number cut in two is half of it in each
piece, which the PII stage (it reads one record at a time) no longer recognises. A no-break space ("10\u00a0000", "Mr\u00a0Okafor") is no place to cut while a space is; a run
of words without either (a URL, text in a script written without spaces) is cut between two characters
as a reader sees them (grapheme clusters), not between a letter and its accent or inside an emoji. With an
overlap, each piece of a long paragraph starts inside the end of the one before, at a sentence end or a space.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import regex

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
# No-break spaces (French "10\u00a0000", "Mr\u00a0Okafor", a figure space, a narrow one): they join their words.
_NO_BREAK = "\xa0\u2007\u202f"
# A full stop after an initial or a title ("Daniel O. Okafor", "Mr. Okafor") ends no sentence: cut
# there, the name was half a name in each piece, which the PII stage missed ("Okafor who called").
# The full stop comes first, the look-backs after it: tried at every character, they made a long
# paragraph's cuts about five times slower (the text format's chunk_chars cuts whole documents).
_SENTENCE_END = re.compile(
    r"(?:\.(?<!\b[A-Z]\.)(?<!\b(?:Mr|Ms|Dr|St)\.)(?<!\b(?:Mrs|Mme|Sir)\.)(?<!\bProf\.)|[!?])[\"')\]]?"
    rf"[^\S{_NO_BREAK}]"
)
# A number's full stop after a capitalised word or at a line's start labels what follows ("Chapter 4. Refunds",
# "2. Fill in the form") and ends no sentence: a piece cut there began with the label's text, torn from its
# number, and ended with the label. Not a full stop after a number in a sentence ("the total was 25. It ...").
_LABEL_NUMBER = regex.compile(r"(?<=(?:^|\n|\b\p{Lu}\p{L}*[ \t]+)\d+)\.")
# A word ending a number's group ("4111", "+1", "(415)"), or a "+" or "(" opening one, and a word starting one
# ("1111", "(415)"): a space between them is inside a number (a card's, a phone's, an IBAN's).
_NUMBER_GROUP_END = re.compile(r"(?:\d\)?|^[+(])$")
_NUMBER_GROUP_START = re.compile(r"\(?\d")
# Lower-case words inside names ("Maria de la Cruz", "Ludwig van der Berg").
_PARTICLES = frozenset(
    {"de", "la", "le", "del", "della", "der", "den", "van", "von", "da", "das", "dos", "di", "du", "bin", "al"}
)
# A line break is a space here too: a paragraph of lines without spaces (a list of addresses) was cut
# inside a word at the limit, half an address in each piece, which the PII stage did not recognise.
# A no-break space joins its words: cut there only where no other space is.
_SPACE = re.compile(rf"[^\S{_NO_BREAK}]+")
# The characters either side of a space that say whether it stands inside a name or a number: the few words
# there (a name's last and first, "de la" between them; a number's groups) fit in them.
_CONTEXT = 100
_GRAPHEME = regex.compile(r"\X")
# A grapheme cluster boundary sure without looking further back (UAX #29): none of its rules joins a character
# after Prepend, ZWJ, CR, a regional indicator, a Hangul L or Extend (an Indic linker is one), nor one that is
# Extend, ZWJ, SpacingMark, a regional indicator, a Hangul V or T, or LF. Searched backwards, from the limit.
_SURE_BOUNDARY = regex.compile(
    r"(?r)(?<=[^\p{GCB=Prepend}\p{GCB=ZWJ}\p{GCB=CR}\p{GCB=Regional_Indicator}\p{GCB=L}\p{GCB=Extend}])"
    r"(?=[^\p{GCB=Extend}\p{GCB=ZWJ}\p{GCB=SpacingMark}\p{GCB=Regional_Indicator}\p{GCB=V}\p{GCB=T}\p{GCB=LF}])"
)


@dataclass(frozen=True)
class Chunk:
    start: int  # character offset of the chunk's first character in the text
    text: str


def _paragraphs(text: str) -> list[tuple[int, int]]:
    """(start, end) of each paragraph, without the blank lines between them."""
    spans, position = [], 0
    for match in _PARAGRAPH_BREAK.finditer(text):
        if text[position : match.start()].strip():
            spans.append((position, match.start()))
        position = match.end()
    if text[position:].strip():
        spans.append((position, len(text.rstrip())))
    return spans


def _cut_long(text: str, start: int, end: int, max_chars: int, overlap_chars: int = 0) -> list[tuple[int, int]]:
    """Pieces of one over-long paragraph, each at most ``max_chars``, cut at sentence ends or spaces; with
    ``overlap_chars``, each piece starts inside the previous one's end (see ``_overlap_start``)."""
    pieces = []
    while end - start > max_chars:
        window = text[start : start + max_chars]
        ends = _sentence_ends(text, start, start + max_chars)
        cut = ends[-1] - start if ends and ends[-1] - start > max_chars // 2 else _space_cut(text, start, max_chars)
        if cut <= 0:
            cut = _no_break_space_cut(window) or _grapheme_cut(text, start, max_chars)
        pieces.append((start, start + cut))
        start = _overlap_start(text, start, start + cut, overlap_chars) if overlap_chars else start + cut
        while start < end and text[start].isspace():
            start += 1
    if start < end:
        pieces.append((start, end))
    return pieces


def _sentence_ends(text: str, start: int, end: int) -> list[int]:
    """Where each sentence in ``text[start:end]`` ends, past the space after its full stop."""
    return [
        match.end()
        for match in _SENTENCE_END.finditer(text, start, end)
        if not (text[match.start() - 1].isdigit() and _LABEL_NUMBER.match(text, match.start()))
    ]


def _space_cut(text: str, start: int, max_chars: int) -> int:
    """Where to cut the window of ``max_chars`` from ``start`` in ``text`` at a space (from ``start``): the last one
    in its second half that does not stand inside a name or a number (``_cuttable``), else the last one; 0 if it
    has none."""
    spaces = list(_SPACE.finditer(text, start, start + max_chars))
    for space in reversed(spaces):
        if space.start() - start <= max_chars // 2:
            break
        if _cuttable(text, space, start):
            return space.end() - start
    return spaces[-1].end() - start if spaces else 0


def _overlap_start(text: str, start: int, end: int, overlap_chars: int) -> int:
    """Where the piece after ``text[start:end]`` starts, so that it repeats the end of that one: after the first
    sentence end, else the first space not inside a name or a number, in the piece's last ``overlap_chars`` (and its second
    half: a piece repeats no more than it brings); ``end`` (no overlap) where there is neither, as in a text
    written without spaces."""
    tail = max(end - overlap_chars, start + (end - start) // 2)
    for sentence_end in _sentence_ends(text, tail, end):
        if sentence_end < end:
            return sentence_end
    for space in _SPACE.finditer(text, tail, end):
        if space.end() < end and _cuttable(text, space, start):
            return space.end()
    return end


def _cuttable(text: str, space: re.Match[str], start: int) -> bool:
    """Whether ``space`` in ``text`` (a piece of which starts at ``start``) is a place to cut: a line break always
    is (a list of names, one a line); another space where it stands inside no name or number
    (``_inside_a_name_or_number``). Only the words next to it are read: passed the whole piece, each space
    tried copied it, and a long paragraph of numbers, all spaces inside one, took minutes to cut."""
    if "\n" in space.group():
        return True
    before = text[max(start, space.start() - _CONTEXT) : space.start()]
    return not _inside_a_name_or_number(before, text[space.end() : space.end() + _CONTEXT])


def _no_break_space_cut(window: str) -> int:
    """Where to cut ``window``, which has no space, at its last no-break space (between two numbers' groups
    rather than inside one); 0 if it has none, or only at its start."""
    at = max(map(window.rfind, _NO_BREAK))
    return at + 1 if at > 0 else 0


def _grapheme_cut(text: str, start: int, max_chars: int) -> int:
    """The last grapheme cluster boundary at most ``max_chars`` after ``start``: the start of the cluster that
    holds the character past the limit (``max_chars`` itself where that one cluster is longer: a limit is one).
    Clusters are read from the last boundary sure without them (``_SURE_BOUNDARY``), not the window's start:
    a text without spaces (Chinese) is all such cuts."""
    limit = start + max_chars
    sure = _SURE_BOUNDARY.search(text, start + 1, limit + 1)
    last = _GRAPHEME.findall(text, sure.start() if sure else start, limit + 1)[-1]
    return limit + 1 - len(last) - start or max_chars


def _inside_a_name(text_before: str, text_after: str) -> bool:
    """Whether a space between the texts ``text_before`` and ``text_after`` it stands inside a name: between two
    capitalised words, lower-case particles ("de la") between them or not ("Maria | de la Cruz"). The texts are the
    few words either side (``_CONTEXT``), all split: split four times at most, the "word" before four particles
    in a row was the whole text before them, whose first letter decided."""
    before, after = text_before.split(), text_after.split()
    while before and before[-1] in _PARTICLES:
        before = before[:-1]
    while after and after[0] in _PARTICLES:
        after = after[1:]
    return bool(before and after and before[-1][:1].isupper() and after[0][:1].isupper())


def _inside_a_name_or_number(text_before: str, text_after: str) -> bool:
    """Whether a space between ``text_before`` and ``text_after`` stands inside a name (``_inside_a_name``) or
    between two groups of a number ("4111 | 1111", "+1 415 555 | 0100"): either cut in two is half of it in each
    piece, which the PII stage, reading one piece at a time, recognises in neither."""
    before, after = text_before.rsplit(None, 1)[-1:], text_after.split(None, 1)[:1]
    if before and after and _NUMBER_GROUP_END.search(before[0]) and _NUMBER_GROUP_START.match(after[0]):
        return True
    return _inside_a_name(text_before, text_after)


def chunk_text(text: str, max_chars: int, overlap_chars: int = 0) -> list[Chunk]:
    """Chunks of at most ``max_chars`` characters covering every paragraph of ``text``, in order."""
    if overlap_chars > max_chars // 2:  # see ChunkConfig: the output would grow with the paragraphs, not the text
        raise ValueError("overlap_chars must be at most half of max_chars")
    units: list[tuple[int, int]] = []
    for start, end in _paragraphs(text):
        units.extend(_cut_long(text, start, end, max_chars, overlap_chars))
    chunks: list[Chunk] = []
    index = 0
    while index < len(units):
        first = index
        end = index + 1  # a chunk always takes at least one unit
        while end < len(units) and units[end][1] - units[first][0] <= max_chars:
            end += 1
        chunks.append(Chunk(units[first][0], text[units[first][0] : units[end - 1][1]]))
        if end == len(units):
            break
        # Overlap: step back over whole trailing units while they fit in overlap_chars, but always move on.
        index = end
        while index - 1 > first and units[end - 1][1] - units[index - 1][0] <= overlap_chars:
            index -= 1
        while index < end and units[end][1] - units[index][0] > max_chars:  # leave room for the next unit
            index += 1
    return chunks
