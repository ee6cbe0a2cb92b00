"""Cleaning: repair text in place, and count every kind of change.

Steps, in order (each can be switched off in the recipe):

- ``unicode_fixed``: mojibake and other encoding damage repaired with ftfy (only its encoding fixes:
  quotes, ligatures and widths are content and stay as they are);
- ``html_removed``: tags, comments and entities left over from HTML (``<br>``, ``&amp;``); not in closed
  fenced code blocks nor in code spans (`` `<br>` ``, on one line), whose markup is the text (backticks in a
  tag or comment, as elements' text or as apostrophes are no code span: see ``_is_code``);
- ``control_removed``: control and zero-width characters (whitespace stays, and the zero-width
  joiners letters and emoji need);
- ``whitespace_normalized``: runs of spaces, space at lines' starts and ends, runs of blank lines, space
  at the ends; not in a closed fenced code block (Markdown's ``` or ~~~), whose whitespace is code.

Stats count the field values each step changed (``<step>``, and ``<step>:<field>`` per field) and the
records changed at all (``records_changed``). A record whose required text is empty (or spaces alone) after
cleaning is filtered (reason ``empty_after_clean``): nothing is lost silently.
"""

from __future__ import annotations

import bisect
import functools
import html
import html.entities
import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterator

import ftfy
import pyarrow as pa
import pyarrow.compute as pc
from markdown_it import MarkdownIt

from curation.stages.base import StageResult, is_text, require_columns, split_by_mask
from schemas.records import set_aside_rows

_FTFY = ftfy.TextFixerConfig(
    unescape_html=False,
    fix_latin_ligatures=False,
    fix_character_width=False,
    uncurl_quotes=False,
    fix_line_breaks=False,
    remove_control_chars=False,
    normalization=None,
    explain=False,
)
# The elements of HTML (and old ones exports still hold), and namespaced ones as Word's HTML writes
# them (<o:p>): any other word in angle brackets is content, not a remnant: code (List<String>,
# "if (x<y && y>z)") and the placeholders of a pii stage run before this one (<PERSON>, <LOCATION>).
_HTML_ELEMENTS = (
    "a|abbr|acronym|address|area|article|aside|audio|b|base|basefont|bdi|bdo|big|blink|blockquote|body|br|"
    "button|canvas|caption|center|cite|code|col|colgroup|data|datalist|dd|del|details|dfn|dialog|dir|div|dl|"
    "dt|em|embed|fieldset|figcaption|figure|font|footer|form|frame|frameset|h[1-6]|head|header|hgroup|hr|"
    "html|i|iframe|img|input|ins|kbd|label|legend|li|link|main|map|mark|marquee|menu|meta|meter|nav|nobr|"
    "noframes|noscript|object|ol|optgroup|option|output|p|param|picture|pre|progress|q|rp|rt|ruby|s|samp|"
    "script|search|section|select|slot|small|source|span|strike|strong|style|sub|summary|sup|svg|table|"
    "tbody|td|template|textarea|tfoot|th|thead|time|title|tr|track|tt|u|ul|var|video|wbr"
)
# What follows a tag's name must read as attributes: name=value (quoted or not), or a name alone that
# HTML writes without a value (<input checked>, <td nowrap>, <div data-x>). Other words do not:
# "if a<b and c>d" holds the element names b and i, but "and c" are no attributes. Once a tag holds
# one name=value it is HTML, so any name alone may follow (Vimeo's <iframe ... webkitallowfullscreen>),
# and so may the next attribute right after a quoted value (<a href="/x"target="_blank">, as browsers read
# it); before that only the names listed here, or with a hyphen, are attributes ("u<p class>q" stays).
_BARE_ATTRIBUTES = (
    "allowfullscreen|async|autofocus|autoplay|border|checked|compact|contenteditable|controls|declare|default|"
    "defer|disabled|download|formnovalidate|hidden|inert|ismap|itemscope|loop|mozallowfullscreen|multiple|muted|"
    "nohref|nomodule|noresize|noshade|novalidate|nowrap|open|playsinline|popover|readonly|required|reversed|"
    "scoped|seamless|selected|truespeed|webkitallowfullscreen"
)
_NAME = r"[A-Za-z_:@][-A-Za-z0-9_:.@]*"
_VALUED = rf"{_NAME}\s*=\s*(?:\"[^\"]*\"|'[^']*'|[^\s\"'=<>`]+)"
_LISTED = rf"(?i:{_BARE_ATTRIBUTES})|[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)+"
_ATTRIBUTES = rf"(?:\s+(?:{_LISTED}))*(?:\s+{_VALUED}(?:\s*{_VALUED}|\s+{_NAME})*)?\s*/?>"
_TAG = (
    r"(?s:<!--.*?-->)"  # a comment may span lines (RE2's "." stops at a newline without s)
    rf"|</?(?i:{_HTML_ELEMENTS}){_ATTRIBUTES}"
    rf"|</?[A-Za-z]+:[A-Za-z][A-Za-z0-9-]*{_ATTRIBUTES}"
)
_BREAK_TAG = r"(?i)<br\s*/?>|</p\s*>|</div\s*>|</li\s*>|</h[1-6]\s*>"
_ENTITY = re.compile(r"&(?:#\d{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
# Form feeds and vertical tabs are whitespace (a page break between words): the whitespace step makes
# them a space. RE2 syntax.
_CONTROL = r"[\x00-\x08\x0e-\x1f\x{7f}-\x{9f}\x{200b}\x{2060}\x{feff}]"
# The zero-width non-joiner and joiner belong to the letters of Persian, Arabic and Indic scripts (a
# Persian word written with one is spelt otherwise without it) and to emoji sequences (a family is one
# picture): kept after such characters, removed after ASCII, which they do nothing to ("pass", U+200D,
# "word" hides a word from filters and PII detection).
_STRAY_JOINER = r"(^|[\x00-\x7f])[\x{200c}\x{200d}]+"
# A text that may hold a fenced code block, whose whitespace is left as written.
_FENCE_MARK = r"```|~~~"
# A code span (`<br>`, ``a `b` c``): a run of backticks, not after a backslash that escapes it, closed by a
# run as long, on the same line: across lines a stray backtick (an apostrophe typed as one) would make code
# of all up to the next. The HTML step leaves it as written: its markup is the text, as in a fenced block.
_CODE_SPAN = re.compile(r"(?<![`\\])(`+)(?!`)[^\n]*?(?<!`)\1(?!`)")
# As CommonMark reads them, whichever starts first wins: a backtick in a tag or comment ("<span
# title="run `date`">", "<!-- use `foo` -->") opens no code span, and a tag in a code span is its text.
_SPAN_OR_TAG = re.compile(rf"{_CODE_SPAN.pattern}|{_TAG}")
_TAG_RE = re.compile(_TAG)
_TAG_NAME = re.compile(r"</?([^\s/>]+)")
_IN_WORD = re.compile(r"\w`\w")  # a backtick typed for an apostrophe ("don`t")


def _changed(before: pa.Array, after: pa.Array) -> pa.Array:
    return pc.fill_null(pc.not_equal(before, after), False)


def _fix_unicode(values: pa.Array) -> pa.Array:
    # Mojibake needs non-ASCII characters, so ASCII strings skip the per-string ftfy call.
    suspect = pc.fill_null(pc.invert(pc.string_is_ascii(values)), False).to_pylist()
    texts = values.to_pylist()
    return pa.array(
        [ftfy.fix_text(t, _FTFY) if s else t for t, s in zip(texts, suspect, strict=True)],
        pa.string(),
    )


def _strip_html(values: pa.Array) -> pa.Array:
    return _outside_code(values, _strip_tags_and_entities, inline=True)


def _strip_tags_and_entities(values: pa.Array) -> pa.Array:
    values = pc.replace_substring_regex(values, _BREAK_TAG, "\n")
    values = pc.replace_substring_regex(values, _TAG, " ")
    has_entity = pc.fill_null(pc.match_substring_regex(values, _ENTITY.pattern), False).to_pylist()
    texts = values.to_pylist()
    return pa.array([_ENTITY.sub(_decode, t) if e else t for t, e in zip(texts, has_entity, strict=True)], pa.string())


def _decode(entity: re.Match[str]) -> str:
    # Each complete entity alone: html.unescape on the whole text also decodes names without their ";"
    # as browsers do for legacy pages, and a URL's query (?a=1&not=2&copy=3) became "?a=1¬=2©=3".
    text = entity.group()
    if text.startswith("&#"):
        return html.unescape(text)  # its rules for numbers no character has (&#0;, &#x80; as cp1252)
    return html.entities.html5.get(text[1:], text)  # an unknown name (&bogus;) stays as written


def _remove_control(values: pa.Array) -> pa.Array:
    return pc.replace_substring_regex(pc.replace_substring_regex(values, _CONTROL, ""), _STRAY_JOINER, r"\1")


def _normalize_whitespace(values: pa.Array) -> pa.Array:
    values = pc.replace_substring_regex(values, r"\r\n?|\x{2028}", "\n")  # U+2028: Unicode's line separator
    values = pc.replace_substring_regex(values, r"\x{2029}", "\n\n")  # and its paragraph separator
    return pc.utf8_trim_whitespace(_outside_code(values, _tidy_spaces, inline=False))


def _tidy_spaces(values: pa.Array) -> pa.Array:
    # RE2's \s is ASCII only: name the Unicode spaces (NBSP, en/em spaces, ideographic space) too.
    values = pc.replace_substring_regex(values, r"[\t\f\v \x{a0}\x{2000}-\x{200a}\x{202f}\x{205f}\x{3000}]+", " ")
    values = pc.replace_substring_regex(values, r" ?\n ?", "\n")
    return pc.replace_substring_regex(values, r"\n{3,}", "\n\n")


def _outside_code(values: pa.Array, step: Callable[[pa.Array], pa.Array], inline: bool) -> pa.Array:
    """``values`` with ``step`` applied around the code they hold, not in it (see ``_code``)."""
    done = step(values)
    # A text the step leaves as it is has nothing to change in its code either: only the others are cut up.
    marked = pc.and_(
        pc.fill_null(pc.match_substring_regex(values, f"`|{_FENCE_MARK}" if inline else _FENCE_MARK), False),
        _changed(values, done),
    )
    if not pc.any(marked).as_py():
        return done
    texts = pc.filter(values, marked).to_pylist()
    pieces = []  # each text's: outside, code, outside, ..., outside
    for text in texts:
        cuts = [0, *itertools.chain.from_iterable(_code(text, inline)), len(text)]
        pieces.append([text[begin:end] for begin, end in itertools.pairwise(cuts)])
    outside = iter(step(pa.array([piece for each in pieces for piece in each[::2]], pa.string())).to_pylist())
    for each in pieces:
        each[::2] = [next(outside) for _ in each[::2]]
    return pc.replace_with_mask(done, marked, pa.array(["".join(each) for each in pieces], pa.string()))


def _code(text: str, inline: bool) -> list[tuple[int, int]]:
    """(start, end) of each closed fenced code block of ``text`` (as CommonMark reads them, in a list or quote
    too: in code, markup, indentation, alignment and blank lines are content), and with ``inline`` of each
    code span between them, in order."""
    blocks = []
    if re.search(_FENCE_MARK, text):
        lines = text.split("\n")
        starts = [0, *itertools.accumulate(len(line) + 1 for line in lines)]  # each line's, and past the end
        blocks = [
            (starts[token.map[0]], starts[token.map[1]] - 1)  # from its first line's start to its last line's end
            for token in _markdown().parse(text)
            if token.type == "fence" and token.map and _closed(token.markup, lines[token.map[0] : token.map[1]])
        ]
    if not inline:
        return blocks
    outside = itertools.pairwise([0, *itertools.chain.from_iterable(blocks), len(text)])
    spans = [span for begin, end in itertools.islice(outside, 0, None, 2) for span in _code_spans(text, begin, end)]
    return sorted(blocks + spans)


def _code_spans(text: str, begin: int, end: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each code span of ``text[begin:end]`` that is code, not backticks in HTML's text."""
    open_elements: Counter[str] = Counter()  # of the tags read so far, outside code
    # Read once, when a span first needs it: a search of the rest of the text per span is quadratic.
    unmatched_closes = functools.cache(lambda: _unmatched_closes(text, begin, end))
    at = begin
    while found := _SPAN_OR_TAG.search(text, at, end):
        at = found.end()
        if found.group(1) is None:  # a tag or comment, and any backticks in it
            if not found.group().startswith("<!--"):
                closing, name = _element(found.group())
                open_elements[name] += -1 if closing else 1
        elif _is_code(text, found, open_elements, unmatched_closes):
            yield found.span()
        else:  # its closing backticks may open a span of their own
            at = found.start() + len(found.group(1))


def _is_code(
    text: str,
    span: re.Match[str],
    open_elements: Counter[str],
    unmatched_closes: Callable[[], Callable[[int, str], bool]],
) -> bool:
    """Whether a code span is code: not when its closing backticks fall in a tag ("`a <span title="`">"),
    when it closes an element open before it (``<kbd>`</kbd> or <kbd>`</kbd>``, "<kbd>`</kbd>`": backticks
    as the elements' text) unless it holds that tag alone and a tag after it still closes the element
    ("<li>Close it with `</li>`.</li>": a close no later opening of it matches, or for an element whose
    end tag may be left out a later opening of it, "<li>Next": ``unmatched_closes``), nor
    when its backticks stand in words as apostrophes do ("It`s <b>bold</b> and don`t") around markup."""
    close = span.end() - len(span.group(1))
    tags = [tag for tag in _tags_from(text, span.start(), close) if not tag.group().startswith("<!--")]
    if any(tag.end() > close for tag in tags):
        return False
    # A span holding one tag alone may quote it, as CommonMark reads it; but when nothing after it closes
    # the element its tag closes, that tag is the element's end and the backticks its text ("Key
    # <kbd>`</kbd>`</p>"): markup left in the text is worse than a quoted tag stripped. A later element of
    # that name closes itself, not this one ("<kbd>`</kbd>` then <kbd>Enter</kbd>").
    quoted = len(tags) == 1 and tags[0].group() == text[span.start() + len(span.group(1)) : close].strip(" ")
    opened = set()
    for closing, name in (_element(tag.group()) for tag in tags):
        closes_open = closing and name not in opened and open_elements[name] > 0
        if closes_open and not (quoted and unmatched_closes()(span.end(), name)):
            return False
        opened.add(name)
    in_words = _IN_WORD.fullmatch(text, span.start() - 1, span.start() + 2) and _IN_WORD.fullmatch(
        text, close - 1, close + 2
    )
    return not (in_words and tags)


def _tags_from(text: str, begin: int, end: int) -> Iterator[re.Match[str]]:
    """The tags and comments that start in ``text[begin:end]``, each read whole (past ``end`` too). Only
    their starts are searched: a search up to the next ">" after ``end`` read all the text after each
    span again when that ">" was far, quadratic in the spans before it."""
    at = text.find("<", begin, end)
    while at >= 0:
        tag = _TAG_RE.match(text, at)
        at = text.find("<", tag.end() if tag else at + 1, end)
        if tag:
            yield tag


def _unmatched_closes(text: str, begin: int, end: int) -> Callable[[int, str], bool]:
    """Whether a closing tag of an element that no later opening tag of it matches ends after a place in
    ``text[begin:end]``: ``unmatched(at, name)``. Tags in code spans are their text and count for nothing
    (each span read as code here: a quoted "`</kbd>`" later closes no element). An element whose end tag
    HTML lets a writer leave out (``_OPTIONAL_END``) is also closed by the next opening of it while it is
    open ("<li>Close it with `</li>`.<li>Next"): for those, any later tag of it ends the one open."""
    steps: dict[str, list[tuple[int, int]]] = {}  # per element: (tag's start, +1 closing or -1 opening)
    for found in _SPAN_OR_TAG.finditer(text, begin, end):
        if found.group(1) is None and not found.group().startswith("<!--"):
            closing, name = _element(found.group())
            steps.setdefault(name, []).append((found.start(), 1 if closing else -1))
    # Per element and tag, the most that closes outnumber opens from that tag on (> 0: one is unmatched),
    # read from the end in one pass; a place is then looked up in its element's tags' starts.
    starts = {name: [at for at, _ in each] for name, each in steps.items()}
    excess = {}
    for name, each in steps.items():
        most = [0] * (len(each) + 1)
        for i in range(len(each) - 1, -1, -1):
            most[i] = each[i][1] + max(0, most[i + 1])
        excess[name] = most

    def unmatched(at: int, name: str) -> bool:
        if name not in starts:
            return False
        later = bisect.bisect_left(starts[name], at)
        if name in _OPTIONAL_END:
            return later < len(starts[name])
        return excess[name][later] > 0

    return unmatched


# Elements whose end tag HTML lets a writer leave out: a later opening of one while it is open closes it.
_OPTIONAL_END = frozenset({"p", "li", "dt", "dd", "td", "th", "tr", "option"})


def _element(tag: str) -> tuple[bool, str]:
    """Whether a tag closes its element, and the element's name (lower case)."""
    name = _TAG_NAME.match(tag)
    return tag.startswith("</"), name.group(1).lower() if name else ""


def _closed(markup: str, lines: list[str]) -> bool:
    """Whether a fence's ``lines`` end with a line closing it (its opening's character, as many times or
    more, after the marks of a quote or list item). A fence never closed runs to the end of the text:
    a line of tildes, a plain-text divider or reStructuredText's underline, is one, and is no code."""
    closing = rf"[ \t>]*{re.escape(markup[0])}{{{len(markup)},}}[ \t]*"
    return len(lines) > 1 and re.fullmatch(closing, lines[-1]) is not None


@functools.cache
def _markdown() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False})


class Clean:
    """Repair the text fields of each record; count what changed."""

    name = "clean"
    rewrites_text = True  # annotators' edits of carried records go through it too (see the pipeline)

    def __init__(
        self,
        fields: list[str],
        fix_unicode: bool = True,
        strip_html: bool = True,
        remove_control: bool = True,
        normalize_whitespace: bool = True,
        required: list[str] | None = None,
        *,
        name: str | None = None,
    ) -> None:
        self.name = name or self.name  # a second stage of its type in the recipe: ``own_name``
        self.fields = fields
        self.required = required if required is not None else fields
        self.steps = [
            (name, step)
            for name, step, on in (
                ("unicode_fixed", _fix_unicode, fix_unicode),
                ("html_removed", _strip_html, strip_html),
                ("control_removed", _remove_control, remove_control),
                ("whitespace_normalized", _normalize_whitespace, normalize_whitespace),
            )
            if on
        ]

    def rewrite_texts(self, values: list[str | None], records: list[int] | None = None) -> list[str | None]:
        """``values`` as the stage's steps leave a text field: for text taken before it (review items,
        set-aside rows), which a PII stage after it scans in this form."""
        array = pa.array(values, pa.string())
        for _, step in self.steps:
            array = step(array)
        return array.to_pylist()

    def __call__(self, batch: pa.Table) -> StageResult:
        stats: dict[str, int] = {}
        any_change = pa.array([False] * batch.num_rows)
        require_columns(batch, self.fields, f"{self.name} fields")  # a misspelt field would clean nothing
        for field in self.fields:
            values = batch[field].combine_chunks()
            if not is_text(values.type):
                continue
            values = values.cast(pa.string())  # the steps build string arrays; polars hands JSONL text as large
            for step_name, step in self.steps:
                fixed = step(values)
                changed = _changed(values, fixed)
                count = pc.sum(changed).as_py() or 0
                if count:
                    stats[step_name] = stats.get(step_name, 0) + count
                    stats[f"{step_name}:{field}"] = count
                    any_change = pc.or_(any_change, changed)
                values = fixed
            batch = batch.set_column(batch.column_names.index(field), field, values)
        stats["records_changed"] = pc.sum(any_change).as_py() or 0
        # Spaces alone are no text either (``Record._not_blank``): left by HTML with whitespace not
        # normalised, they were published as a blank line, or as no line at all once cut into pieces.
        emptied = {
            field: pc.fill_null(
                pc.or_(pc.equal(pc.utf8_length(batch[field]), 0), pc.utf8_is_space(batch[field])), False
            ).to_pylist()
            for field in self.required
            if field in batch.column_names
        }
        # Which field is empty: a reviewer tells "the answer was all HTML" from "the question was".
        fields = [[f for f, empty in emptied.items() if empty[row]] for row in range(batch.num_rows)]
        kept, gone = split_by_mask(batch, pa.array([not names for names in fields]))
        details = [f"nothing left of {' and '.join(names)} after cleaning" for names in fields if names]
        set_aside = set_aside_rows(gone["id"], gone["source"], self.name, "filtered", "empty_after_clean", details)
        return StageResult(kept=kept, set_aside=set_aside, stats=stats)
