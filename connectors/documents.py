"""PDF, DOCX, HTML, Markdown and plain-text files to document records, from local paths and S3.

Each PDF page and each document section (a heading and what follows it) becomes a record with the
document's title (``Title › Section``) and its place in ``source``: the page for PDFs, the line
(Markdown, text) or paragraph number (DOCX) where it starts. With ``chunk`` set, each is cut into
overlapping chunks on paragraph boundaries. Boilerplate is dropped: running headers and footers
that repeat on most PDF pages, navigation and footers of web pages (trafilatura), page headers of
Word files (only the body is read). A file that cannot be read (encrypted, corrupt, denied) is quarantined
with the reason and the run goes on; so is a PDF page that cannot, alone, beside its file's other pages.
"""

from __future__ import annotations

import bisect
import codecs
import contextlib
import functools
import io
import itertools
import logging
import math
import posixpath
import re
import tomllib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import yaml

from connectors.base import SourceBatch
from connectors.chunk import chunk_text
from connectors.state import ListedFiles, SourceWatermark
from connectors.storage import FileEntry, Unreadable, filesystem, open_input, read_error
from schemas.config import DocumentsSource, RecipeLoader
from schemas.records import InputIds, record_ids, set_aside_rows, source_array

if TYPE_CHECKING:
    import docx.table
    import docx.text.paragraph
    from trafilatura.settings import Document, Extractor

CONNECTOR = "documents"
KINDS = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".html": "html",
    ".htm": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
}
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # password-protected Office files are OLE containers


class DocumentError(Exception):
    """A document that cannot become records; ``reason`` goes to the manifest, ``detail`` to the reviewer."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass
class Part:
    """A page or section of a document, with where it starts."""

    text: str
    page: int | None = None
    line: int | None = None
    section: str | None = None
    # DOCX: where each paragraph (or table) starts in ``text``, and its number, for a chunk's place;
    # Markdown that had comments left out: where each line starts, and its line in the file
    paragraphs: list[tuple[int, int]] = field(default_factory=list)

    def line_at(self, offset: int) -> int | None:
        """The line (DOCX: paragraph number) at ``offset`` of the text, where a chunk starts."""
        if self.line is None or offset == 0:
            return self.line
        if self.paragraphs:
            return self.paragraphs[bisect.bisect_right(self.paragraphs, (offset, math.inf)) - 1][1]
        return self.line + self.text.count("\n", 0, offset)


@dataclass
class Extracted:
    title: str
    parts: list[Part]
    # PDF pages with no text but a running header or footer, if that (a scanned page, stamped or not)
    blank_pages: list[int] = field(default_factory=list)
    # A Word file holding pictures: without text, it is a scan put into Word
    images: bool = False
    # PDF pages whose text could not be extracted (a content stream that does not decode): page -> why
    broken_pages: dict[int, str] = field(default_factory=dict)


# --- PDF ---------------------------------------------------------------------------------------------


EDGE_LINES = 2  # running headers and footers are looked for in this many lines at each end of a page


def _boilerplate_lines(pages: list[list[str]]) -> set[str]:
    """Lines that open or close most pages (running headers, footers, page numbers): the same on each
    page but for numbers that follow the page's (digits are ignored in the shapes returned)."""
    if len(pages) < 3:
        return set()
    edges: dict[str, dict[int, str]] = {}
    for page, lines in enumerate(pages, start=1):
        for line in _edges(lines):
            edges.setdefault(_shape(line), {}).setdefault(page, line)
    threshold = max(3, int(0.6 * len(pages)))
    return {
        shape
        for shape, found in edges.items()
        if len(found) >= threshold and _runs_with_pages(found) and not _numbered_sentences(found)
    }


def _numbered_sentences(found: dict[int, str]) -> bool:
    """Whether lines of one shape are sentences told apart by their numbers ("Rule 3: book economy
    class for short flights."): each page says something of its own, which dropping would lose. The
    same sentence on every page ("All rights reserved.") is a running footer, dropped as one."""
    return len(set(found.values())) > 1 and all(_reads_as_a_sentence(line) for line in found.values())


def _reads_as_a_sentence(line: str) -> bool:
    return len(line.split()) >= 4 and line.rstrip().endswith((".", "!", "?"))


def _runs_with_pages(found: dict[int, str]) -> bool:
    """Whether each number in these lines (page -> line, all of one shape) is the same on every page or
    goes up with the page ("Page 3 of 12"): a line whose numbers change otherwise is content."""
    numbers = {page: [int(n) for n in re.findall(r"\d+", line)] for page, line in found.items()}
    if len({len(values) for values in numbers.values()}) > 1:  # "Ticket #" beside "Ticket 3": not one line
        return False
    for position in range(len(next(iter(numbers.values())))):
        values = {page: found_numbers[position] for page, found_numbers in numbers.items()}
        if len(set(values.values())) > 1 and len({value - page for page, value in values.items()}) > 1:
            return False
    return True


def _edges(lines: list[str]) -> list[str]:
    return lines[:EDGE_LINES] + lines[EDGE_LINES:][-EDGE_LINES:]


def _without_boilerplate(lines: list[str], boilerplate: set[str]) -> list[str]:
    """The page's lines less boilerplate at its ends (a body line of the same shape stays)."""
    last = len(lines) - EDGE_LINES
    return [
        line
        for index, line in enumerate(lines)
        if not ((index < EDGE_LINES or index >= last) and _shape(line) in boilerplate)
    ]


def _shape(line: str) -> str:
    return re.sub(r"\d+", "#", line.strip().lower())


# pypdf logs its own warnings on damaged files ("EOF marker not found"); the file is quarantined with a
# reason that names it, so they would only be noise beside the run's summary.
logging.getLogger("pypdf").setLevel(logging.ERROR)
# trafilatura logs ERRORs of its own on an empty or tagless page ("lxml parsing failed: Document is
# empty"), naming no file; the page is quarantined as no_text with its name, so they are noise too.
logging.getLogger("trafilatura").setLevel(logging.CRITICAL)


def extract_pdf(data: bytes, stem: str) -> Extracted:
    from pypdf import PasswordType, PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            raise DocumentError("encrypted", "the PDF is password-protected")
        page_objects = list(reader.pages)
        metadata_title = (reader.metadata.title if reader.metadata else None) or ""
        # A title that is no text (a number, an array, bytes: pypdf gives the PDF object) is no title.
        metadata_title = metadata_title if isinstance(metadata_title, str) else ""
    except DocumentError:
        raise
    except Exception as error:  # pypdf raises many kinds of errors on damaged files; each is "corrupt"
        raise DocumentError("corrupt", f"not a readable PDF ({type(error).__name__}: {error})") from None
    texts, broken = _page_texts(page_objects)
    pages = [[line for line in text.splitlines() if line.strip()] for text in texts]
    boilerplate = _boilerplate_lines(pages)
    kept = [_without_boilerplate(lines, boilerplate) for lines in pages]
    if not any(kept):
        # Every line looked like a running header: pages that differ only in numbers (a form per
        # page, a ledger) are the content, not boilerplate.
        kept = pages
    parts = [Part("\n".join(lines), page=number) for number, lines in enumerate(kept, start=1) if lines]
    if broken and not parts:
        first = min(broken)
        if len(broken) == len(texts):
            raise DocumentError("corrupt", f"not a readable PDF: no page could be read (page {first}: {broken[first]})")
        detail = f"page {first} could not be read ({broken[first]}), and no other page has text"
        raise DocumentError("corrupt", f"not a readable PDF: {detail}")
    title = metadata_title.strip() or (parts[0].text.splitlines()[0].strip() if parts else stem)
    # A page whose only text is the running header and footer is a scanned page as much as one with
    # none (a scan put into a PDF that stamps them on every page): quarantined, not left out unseen.
    blank = [number for number, lines in enumerate(kept, start=1) if not lines and number not in broken]
    return Extracted(title, parts, blank, broken_pages=broken)


def _page_texts(pages: list[Any]) -> tuple[list[str], dict[int, str]]:
    """Each page's text ("" for one that cannot be read), and page number -> why for those: one page whose
    content stream, filter or font pypdf cannot decode is quarantined alone, the rest of the file is read."""
    texts, broken = [], {}
    for number, page in enumerate(pages, start=1):
        try:
            texts.append(page.extract_text() or "")
        except Exception as error:  # pypdf raises many kinds on a damaged page (ValueError, NotImplementedError)
            texts.append("")
            broken[number] = f"{type(error).__name__}: {error}"
    return texts, broken


# --- DOCX --------------------------------------------------------------------------------------------


def extract_docx(data: bytes, stem: str) -> Extracted:
    if data.startswith(OLE_MAGIC):
        raise DocumentError("encrypted", "the Word file is password-protected (or an old binary .doc)")
    import docx
    from docx.table import Table

    try:
        document = docx.Document(io.BytesIO(data))
        notes = _notes(document)
        toc_field = _in_toc_field(document.element.body)
        blocks = list(_blocks(document.element.body, document._body, notes))
        core_title = document.core_properties.title or ""
    except Exception as error:  # python-docx: BadZipFile, KeyError, PackageNotFoundError, XML errors
        raise DocumentError("corrupt", f"not a readable DOCX ({type(error).__name__}: {error})") from None
    title = core_title.strip()
    parts: list[Part] = []
    current = Part("", line=1)
    number = 0
    style_names: dict[str | None, str] = {}
    first_heading = None
    only_headings = False  # the current part's text is headings alone: the next one joins it
    for block in blocks:
        # A text box's or note's paragraphs have the number of the paragraph they belong to: the body's
        # paragraphs are numbered as Word counts them.
        number += not _in_box_or_note(block._element)
        if isinstance(block, Table):
            try:
                _span_at_least_one(block)
                text, style = _table_text(block, notes), ""
            except Exception as error:  # python-docx's cells of a merge or span it cannot follow (ValueError)
                detail = f"paragraph {number}: a table it cannot read ({type(error).__name__}: {error})"
                raise DocumentError("corrupt", f"not a readable DOCX, {detail}") from None
        else:
            text, style = _paragraph_text(block).strip(), _style_name(block, style_names)
        # A table of contents repeats the headings, with page numbers: a list of them is no text of its own.
        if (
            not text
            or _TOC_STYLE.fullmatch(style.casefold())
            or _in_table_of_contents(block._element)
            or block._element in toc_field
        ):
            continue
        # Word's Title paragraph and the file's title property differ in case as often as not.
        if style == "Title" and (not title or text.casefold() == title.casefold()):
            title = title or text
            continue
        # Another paragraph in the Title style (a part's title, or one the file's properties title
        # otherwise, as a template can leave them) starts a section: its text was left out of every record.
        if style.startswith("Heading") or style == "Title":
            first_heading = first_heading or text
            if only_headings:  # "Security" straight over "Passwords": not a record alone, as in Markdown
                current.paragraphs.append((len(current.text) + 2, number))
                current.text, current.section = f"{current.text}\n\n{text}", text
                continue
            if current.text.strip():
                parts.append(current)
            current, only_headings = Part(text, line=number, section=text, paragraphs=[(0, number)]), True
            continue
        only_headings = False
        if not current.text:
            # The first section points at its first paragraph with text, past a Title or empty ones,
            # as every later section and chunk does.
            current.line = number
        current.paragraphs.append((len(current.text) + 2 if current.text else 0, number))
        current.text = f"{current.text}\n\n{text}" if current.text else text
    if current.text.strip():
        parts.append(current)
    images = not parts and _has_images(document.element.body)
    return Extracted(title or first_heading or stem, parts, images=images)


def _has_images(body: Any) -> bool:
    """Whether a Word body holds a picture (DrawingML's, or VML's of older files)."""
    blip, imagedata = (
        "{http://schemas.openxmlformats.org/drawingml/2006/main}blip",
        "{urn:schemas-microsoft-com:vml}imagedata",
    )
    return next(body.iter(blip, imagedata), None) is not None


# Word's styles of a table of contents' entries ("toc 1"; "TOC 1" as some tools spell them) and heading,
# and of a table of figures.
_TOC_STYLE = re.compile(r"toc \d|toc heading|table of figures")


def _in_table_of_contents(element: Any) -> bool:
    """Whether a paragraph or table is inside the content control Word puts a table of contents in."""
    from docx.oxml.ns import qn

    gallery = f"{qn('w:sdtPr')}/{qn('w:docPartObj')}/{qn('w:docPartGallery')}"
    return any(
        found.get(qn("w:val")) == "Table of Contents"
        for ancestor in element.iterancestors(qn("w:sdt"))
        if (found := ancestor.find(gallery)) is not None
    )


def _in_toc_field(body: Any) -> set[Any]:
    """The paragraphs whose text is all inside a TOC field's result (the entries Word wrote for it, which
    other tools may style as they please); fields nest (each entry's PAGEREF), and one spans paragraphs."""
    from docx.oxml.ns import qn

    paragraph, field_char, instruction, text = qn("w:p"), qn("w:fldChar"), qn("w:instrText"), qn("w:t")
    if next(body.iter(field_char), None) is None:  # no field at all: no run of text need be looked at
        return set()
    fields: list[str] = []  # the instruction of each field open here, outermost first
    inside: dict[Any, bool] = {}  # paragraph -> whether all its text so far is in a TOC field
    for element in body.iter(field_char, instruction, text):
        if element.tag == field_char:
            kind = element.get(qn("w:fldCharType"))
            if kind == "begin":
                fields.append("")
            elif kind == "end" and fields:
                fields.pop()
        elif element.tag == instruction and fields:
            fields[-1] += element.text or ""
        elif element.text:
            owner = next(element.iterancestors(paragraph), None)
            in_toc = any(field.upper().split()[:1] == ["TOC"] for field in fields)
            inside[owner] = inside.get(owner, True) and in_toc
    return {owner for owner, in_toc in inside.items() if in_toc}


def _style_name(paragraph: docx.text.paragraph.Paragraph, names: dict[str | None, str]) -> str:
    """The name of a paragraph's style, looked up once per style: python-docx's lookup goes through every
    style of the file (its default's, for a paragraph naming none: most), which took a minute for a
    file of 10,000 footnotes."""
    style_id = paragraph._p.style
    if style_id not in names:
        style = paragraph.style
        names[style_id] = style.name if style is not None and style.name is not None else ""
    return names[style_id]


def _blocks(element: Any, parent: Any, notes: Notes) -> Iterator[docx.text.paragraph.Paragraph | docx.table.Table]:
    """The paragraphs and tables of a body or cell in order, with those inside content controls (w:sdt,
    a Word template's fields and blocks), which python-docx's iter_inner_content passes over, and those
    of the text boxes and footnotes or endnotes a paragraph holds, after it."""
    from docx.oxml.ns import qn
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    for child in element.iterchildren():
        if child.tag == qn("w:p"):
            yield Paragraph(child, parent)
            for box in _text_boxes(child):  # after the paragraph they are anchored in
                yield from _blocks(box, parent, notes)
            for note in _note_references(child, notes):
                yield from _blocks(note, parent, notes)
        elif child.tag == qn("w:tbl"):
            yield Table(child, parent)
        elif child.tag == qn("w:sdt"):
            content = child.find(qn("w:sdtContent"))
            if content is not None:
                yield from _blocks(content, parent, notes)
        elif child.tag == qn("w:customXml"):
            yield from _blocks(child, parent, notes)


def _in_box_or_note(element: Any) -> bool:
    from docx.oxml.ns import qn

    inner = {qn("w:txbxContent"), qn("w:footnote"), qn("w:endnote")}
    return any(ancestor.tag in inner for ancestor in element.iterancestors())


class Notes(dict[tuple[str, str], Any]):
    """("footnote" or "endnote", its w:id) -> its element, and which of them a reference has read."""

    def __init__(self) -> None:
        super().__init__()
        self.read: set[tuple[str, str]] = set()


_NOTE_PARTS = {
    "http://schemas.openxmlformats.org/officeDocument/2006/relationships/footnotes": "footnote",
    "http://schemas.openxmlformats.org/officeDocument/2006/relationships/endnotes": "endnote",
}


def _notes(document: Any) -> Notes:
    """The file's footnotes and endnotes by id (python-docx does not read them): their text is the
    document's, at the foot of a page or its end, and goes after the paragraph that refers to it."""
    from docx.oxml import parse_xml
    from docx.oxml.ns import qn

    found = Notes()
    for rel in document.part.rels.values():
        kind = _NOTE_PARTS.get(rel.reltype)
        if kind is None or rel.is_external:
            continue
        for note in parse_xml(rel.target_part.blob).iterchildren(qn(f"w:{kind}")):
            if note.get(qn("w:type")) in (None, "normal"):  # not the separator lines Word keeps there
                found[(kind, note.get(qn("w:id")))] = note
    return found


def _note_references(paragraph: Any, notes: Notes) -> Iterator[Any]:
    """The notes a paragraph refers to, in its order, but for references a tracked change deleted, and
    for notes a reference read before: a note's own references are followed (an endnote cited only in a
    footnote), and each note is read once, at its first reference, so none loops (a note referring to
    itself, or two to each other)."""
    from docx.oxml.ns import qn

    for child in paragraph.iterchildren():
        if child.tag in (qn("w:del"), qn("w:moveFrom"), _FALLBACK):
            continue
        for kind in ("footnote", "endnote"):
            key = (kind, child.get(qn("w:id")))
            if child.tag == qn(f"w:{kind}Reference") and key in notes and key not in notes.read:
                notes.read.add(key)
                yield notes[key]
        if child.tag != qn("w:txbxContent"):  # a text box's own paragraphs say their notes
            yield from _note_references(child, notes)


# Word writes a text box twice: as a drawing (mc:Choice) and as VML for older readers (mc:Fallback).
_FALLBACK = "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback"


def _text_boxes(element: Any) -> Iterator[Any]:
    """The text boxes (w:txbxContent) anchored in a paragraph, once each, not those a tracked change
    deleted: their text is on the page, and python-docx's text passes over it (a form, a flyer)."""
    from docx.oxml.ns import qn

    for child in element.iterchildren():
        if child.tag == qn("w:txbxContent"):
            yield child  # a text box inside it is found when its own paragraphs are read
        elif child.tag not in (_FALLBACK, qn("w:del"), qn("w:moveFrom")):
            yield from _text_boxes(child)


def _paragraph_text(paragraph: docx.text.paragraph.Paragraph) -> str:
    """A paragraph's text as Word shows it: with the runs python-docx's text passes over, those inside a
    content control (w:sdt), a tracked insertion or move (w:ins, w:moveTo), a simple field, a run of
    set direction (w:dir, w:bdo) or an equation; not those a tracked change deleted or moved away."""
    return "".join(_texts(paragraph._p, paragraph))


_INLINE_CONTAINERS = (
    "ins",
    "moveTo",
    "sdt",
    "sdtContent",
    "hyperlink",
    "smartTag",
    "fldSimple",
    "customXml",
    "dir",
    "bdo",
)


def _texts(element: Any, paragraph: docx.text.paragraph.Paragraph) -> Iterator[str]:
    from docx.text.run import Run

    run, containers, math = _docx_tags()
    for child in element.iterchildren():
        if child.tag == run:
            yield Run(child, paragraph).text
        elif child.tag in containers:
            yield from _texts(child, paragraph)
        elif child.tag in math:
            yield _math_text(child)


@functools.cache
def _docx_tags() -> tuple[str, frozenset[str], frozenset[str]]:
    """The qualified tags ``_texts`` tells apart: a run, the inline containers it reads through, equations
    (made once: ``_texts`` asks for every node of every paragraph)."""
    from docx.oxml.ns import qn

    containers = frozenset(qn(f"w:{name}") for name in _INLINE_CONTAINERS)
    return qn("w:r"), containers, frozenset((qn("m:oMath"), qn("m:oMathPara")))


def _math_text(element: Any) -> str:
    """An equation's text in its linear form, as Word's linear format writes it: "x=2", "1/2", "(a+b)/c",
    "c^2", "x_(i+1)"; its runs (m:r) are not Word's and hold m:t. A tracked change deleted or moved away is
    no part of it ("x=3" changed to "x=2" read "x=3x=2"); structures other than fractions, superscripts and
    subscripts (both on one base: "x_i^2") read as their texts in order."""
    from docx.oxml.ns import qn

    def part(name: str) -> str:
        found = element.find(qn(f"m:{name}"))
        text = "" if found is None else _math_text(found)
        return text if re.fullmatch(r"\w*", text) else f"({text})"  # "x^n+1" would read as "(x^n)+1"

    if element.tag == qn("m:t"):
        return element.text or ""
    # Each structure's parts, each after its mark: ½ read "12", c² "c2".
    layouts = {
        qn("m:f"): (("num", ""), ("den", "/")),
        qn("m:sSup"): (("e", ""), ("sup", "^")),
        qn("m:sSub"): (("e", ""), ("sub", "_")),
        qn("m:sSubSup"): (("e", ""), ("sub", "_"), ("sup", "^")),
    }
    if element.tag in layouts:
        parts = [(mark, part(name)) for name, mark in layouts[element.tag]]
        # One whose parts were all deleted (a tracked change) is gone, marks too: "y=x+/" was left.
        return "".join(mark + text for mark, text in parts) if any(text for _, text in parts) else ""
    gone = (qn("w:del"), qn("w:moveFrom"))
    return "".join(_math_text(child) for child in element.iterchildren() if child.tag not in gone)


def _span_at_least_one(table: docx.table.Table) -> None:
    """Read a cell spanning fewer than one column (``w:gridSpan w:val="0"``: Word writes 1 or more, other
    tools 0) as spanning one: python-docx gives such a cell for no column, and its text was lost. A
    span that is no number is left to python-docx, whose ValueError quarantines the file."""
    from docx.oxml.ns import qn

    for span in table._tbl.iter(qn("w:gridSpan")):
        with contextlib.suppress(ValueError):
            if int(span.get(qn("w:val"), "1")) < 1:
                span.set(qn("w:val"), "1")


def _table_text(table: docx.table.Table, notes: Notes) -> str:
    """A Word table as lines of cells joined by " | ". A cell merged across columns is one cell (python-docx
    gives it once per column it spans), and a table inside a cell is read too (a cell's text leaves it out)."""
    from docx.table import Table

    lines = []
    for row in table.rows:
        cells: list[Any] = []
        for cell in row.cells:
            if not any(cell._tc is seen._tc for seen in cells):
                cells.append(cell)
        texts = []
        for cell in cells:
            blocks = _blocks(cell._tc, cell, notes)
            texts.append(
                "\n".join(_table_text(b, notes) if isinstance(b, Table) else _paragraph_text(b) for b in blocks).strip()
            )
        if any(texts):  # an empty row (a table of blank cells to fill in) is no text
            lines.append(" | ".join(texts).rstrip())  # an empty last cell leaves no trailing space
    return "\n".join(lines)


# --- HTML, Markdown, text ----------------------------------------------------------------------------


# A thematic break (``---``, ``* * *``), or a blank line: no text of the document's.
_RULE = re.compile(r" {0,3}(?:([-*_])(?: *\1){2,})? *")


def markdown_sections(text: str) -> tuple[str | None, list[Part]]:
    """(first H1 or front-matter title, sections split at the document's own headings), the headings as
    CommonMark reads them (markdown-it): ``#`` ones and underlined ones, not a ``#`` line in a code
    block (fenced or indented), a quote or a list item."""
    # Lines as an editor counts them: str.splitlines() also breaks at a form feed, U+2028 and others,
    # which would put every section after one at a line the file does not have there.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    title, offset = None, 0
    opening = lines[0].strip() if lines else ""
    if opening in _FRONT_MATTER_ENDS:
        end = next((i for i in range(1, len(lines)) if lines[i].strip() in _FRONT_MATTER_ENDS[opening]), None)
        front_matter = None if end is None else _front_matter("\n".join(lines[1:end]), toml=opening == "+++")
        if end is not None and front_matter is not None:
            found = next((value for key, value in front_matter.items() if key.lower() == "title"), None)
            title = found.strip() or None if found is not None else None
            offset = end + 1
    # HTML comments are the writer's notes to other writers ("TODO: ask legal"), which no reader sees.
    body, origin = _without_comments(lines[offset:])
    parts: list[Part] = []
    starts = [(0, 0, None), *_headings("\n".join(body)), (len(body), len(body), None)]
    joined = None  # the first line of headings with no text of their own: they open the next section
    for (first, own, name), (after, _, following) in itertools.pairwise(starts):
        if name is not None and title is None and name[0] == 1:
            title = name[1]
        if name is not None and following is not None and _no_text(body[own:after]):
            joined = first if joined is None else joined  # "# Security" over "## Passwords": not a record alone
            continue
        first, joined = first if joined is None else joined, None
        part = Part("", line=first, section=None if name is None else name[1])
        # The text before the first heading may be blank, or only a rule (``---`` over a setext heading).
        if not _no_text(body[first:after]) and _set_text(part, "\n".join(body[first:after])):
            _place(part, [offset + origin[line] + 1 for line in range(part.line, after)])
            parts.append(part)
    return title, parts


def _place(part: Part, numbers: list[int]) -> None:
    """Point the part at the file's line of its first line, ``numbers`` being the file's line of each of
    its lines: where a comment's lines were left out between them, each line of the text says its own."""
    starts = [0, *(found.end() for found in re.finditer("\n", part.text))]
    numbers = numbers[: len(starts)]  # blank lines after the text are not in it
    part.line = numbers[0]
    if numbers[-1] - numbers[0] != len(numbers) - 1:
        part.paragraphs = list(zip(starts, numbers, strict=True))


_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
# What opens a line of a quote or list item: a line of only these once its comment is out holds no text.
_MARKERS = re.compile(r"[ \t>]*(?:(?:[-*+]|\d{1,9}[.)])[ \t>]*)*")


def _without_comments(lines: list[str]) -> tuple[list[str], list[int]]:
    """Markdown ``lines`` less their HTML comments, and the index in ``lines`` of each line left: a line
    that held only comments goes, with a blank line that would follow another blank one."""
    text = "\n".join(lines)
    starts = [0, *itertools.accumulate(len(line) + 1 for line in lines)]
    # A comment, in an HTML block or inline, opens with "<!--" as written: most files have none to parse for.
    spans = _comment_spans(text, starts) if "<!--" in text else []
    if not spans:
        return lines, list(range(len(lines)))
    rows = [(line, index, False) for index, line in enumerate(lines)]
    for start, end in reversed(spans):  # from the end, so the lines and columns of those before hold
        first, last = bisect.bisect_right(starts, start) - 1, bisect.bisect_right(starts, end - 1) - 1
        head, tail = rows[first][0][: start - starts[first]], rows[last][0][end - starts[last] :]
        if head.endswith((" ", "\t")):  # "five days <!-- check --> abroad": one space between the words
            tail = tail.lstrip(" \t")
        rows[first : last + 1] = [(head + tail, first, True)]
    kept: list[str] = []
    origin: list[int] = []
    after_comment = False
    for line, index, cut in rows:
        if cut:
            line = line.rstrip(" \t")
            if _MARKERS.fullmatch(line):  # nothing but the comment, in a quote or list item or not
                after_comment = True
                continue
        if not (after_comment and not line.strip() and (not kept or not kept[-1].strip())):
            kept.append(line)
            origin.append(index)
        after_comment = False
    return kept, origin


def _comment_spans(text: str, starts: list[int]) -> list[tuple[int, int]]:
    """Where the HTML comments of Markdown ``text`` are, as CommonMark reads them (in an HTML block, or
    inline in a paragraph or heading; not in code), as offsets into ``text``, in order; ``starts``: the
    offset of each of its lines."""
    from markdown_it import MarkdownIt

    spans = []
    for token in MarkdownIt("commonmark").parse(text):
        if token.map is None:
            continue
        begin, end = starts[token.map[0]], starts[token.map[1]] - 1
        if token.type == "html_block":
            spans += [found.span() for found in _COMMENT.finditer(text, begin, end)]
        elif token.type == "inline":
            spans += _inline_comments(token, text, begin, end)
    return spans


def _inline_comments(inline: Any, text: str, begin: int, end: int) -> list[tuple[int, int]]:
    """The comments markdown-it found in an inline token, found in ``text[begin:end]``, its source, in
    their order, past any code span that shows one (`` `<!-- -->` ``, which is text)."""
    spans = []
    cursor = begin
    for child in inline.children or []:
        if child.type == "code_inline":
            ticks = re.compile(f"(?<!`){child.markup}(?!`)")
            opening = ticks.search(text, cursor, end)
            closing = ticks.search(text, opening.end(), end) if opening else None
            cursor = closing.end() if closing else cursor
        elif child.type == "html_inline" and child.content.startswith("<!--"):
            # A comment over lines of a quote or list item is given without their "> " or indentation.
            lines = [re.escape(line.strip(" \t")) for line in child.content.split("\n")]
            found = re.compile(r"[ \t]*\n[ \t>]*".join(lines)).search(text, cursor, end)
            if found:
                spans.append(found.span())
                cursor = found.end()
    return spans


def _no_text(lines: list[str]) -> bool:
    return all(_RULE.fullmatch(line) for line in lines)


def _headings(text: str) -> list[tuple[int, int, tuple[int, str]]]:
    """Each top-level heading of Markdown ``text`` with text: its first line and the line after it
    (0-based), its level and its text."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").parse(text)
    found = []
    for opening, inline in itertools.pairwise(tokens):
        if opening.type == "heading_open" and opening.level == 0 and opening.map and inline.content.strip():
            # An underlined heading may run over lines: a title is one line.
            found.append((opening.map[0], opening.map[1], (int(opening.tag[1]), " ".join(inline.content.split()))))
    return found


_FRONT_MATTER_KEY = re.compile(r"[a-z_][a-z0-9_.-]*")
_YAML_NULL, _YAML_STR = "tag:yaml.org,2002:null", "tag:yaml.org,2002:str"


# A Markdown file's first line opening front matter -> the lines that close it: YAML's, and TOML's (Hugo).
_FRONT_MATTER_ENDS = {"---": ("---", "..."), "+++": ("+++",)}


def _front_matter(text: str, toml: bool = False) -> dict[str, str | None] | None:
    """The keys of a Markdown file's front matter, each with its value's text as the file shows it (None
    for a null, a list or a mapping), or None if it is not YAML keys: text between a first line "---"
    and the next (two horizontal rules around a paragraph) is the document's, not metadata. The text as
    written, not as YAML 1.1 would read it: ``title: NO`` is "NO" (it was "False"), ``title: 1.10`` "1.10".
    With ``toml``, TOML keys (between "+++" lines), a string's value its text and any other None."""
    if toml:
        try:
            table = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, RecursionError):
            return None
        return _front_matter_keys({key: value if isinstance(value, str) else None for key, value in table.items()})
    try:
        node = yaml.compose(text, Loader=RecipeLoader)
    except (yaml.YAMLError, RecursionError):  # nested deeper than the parser goes: no keys of ours
        return None
    if node is None:  # "---" twice, nothing between
        return {}
    if not isinstance(node, yaml.MappingNode) or not all(isinstance(key, yaml.ScalarNode) for key, _ in node.value):
        return None
    found = {
        key.value: value.value if isinstance(value, yaml.ScalarNode) and value.tag != _YAML_NULL else None
        for key, value in node.value
    }
    # Text keys only: YAML reads `null: refunds take five days` or `true: ...` as a null or boolean key.
    return _front_matter_keys(found, all(key.tag == _YAML_STR for key, _ in node.value))


def _front_matter_keys(found: dict[str, str | None], text_keys: bool = True) -> dict[str, str | None] | None:
    """``found`` if its keys are front matter's, else None (``text_keys``: whether each was written as text)."""
    # Site generators' keys are lower-case names (title, date, tags); "Note: refunds take five days" between
    # two rules is a sentence of the document that parses as YAML all the same, and was dropped unseen.
    # Hugo's capitalised keys are front matter where they name a title.
    if any(key.lower() == "title" for key in found):
        return found
    return found if text_keys and all(_FRONT_MATTER_KEY.fullmatch(key) for key in found) else None


def _set_text(part: Part, text: str) -> bool:
    """Give the part its text less the blank lines around it, and move its line to where the text
    starts: blank lines at the top of a file are lines, and the source must point at the text."""
    stripped = text.strip()
    if part.line is not None and stripped:
        part.line += text[: text.index(stripped)].count("\n")
    part.text = stripped
    return bool(stripped)


def extract_markdown(data: bytes, stem: str) -> Extracted:
    title, parts = markdown_sections(_decode(data))
    return Extracted(title or stem, parts)


def extract_text(data: bytes, stem: str) -> Extracted:
    text = _decode(data).replace("\r\n", "\n").replace("\r", "\n")  # as Markdown's lines are joined
    part = Part("", line=1)
    return Extracted(stem, [part] if _set_text(part, text) else [])


def extract_html(data: bytes, stem: str) -> Extracted:
    import trafilatura
    from lxml.etree import strip_tags
    from trafilatura.htmlprocessing import tree_cleaning

    html = _decode_html(data)
    tree = trafilatura.load_html(html)
    # The page's own title, read before the tree is changed below (and without parsing the page again).
    page_title = _html_title(tree) if tree is not None else None
    options = _extraction_options()
    body = ""
    if tree is not None:
        # trafilatura drops the date out of a sentence ("closed until <time>9 January</time>, when"): it
        # is the sentence's text. Its Markdown keeps superscripts' and subscripts' tags ("footnote<sup>1</sup>",
        # "H<sub>2</sub>O"): their text alone is the page's (a footnote's link in one too: a short page's dump
        # put a link on a line of its own, "footnote\n1\nhere"). A caption is a paragraph of the page (of a
        # table's figure, which is kept).
        for script in list(tree.iter("sup", "sub")):
            strip_tags(script, "*")
        strip_tags(tree, "time", "sup", "sub")
        for caption in tree.iter("figcaption"):
            caption.tag = "p"
        _pair_definitions(tree)
        # What trafilatura's extraction leaves out anyway (buttons, forms, figures, <nav>, <noscript>, which
        # browsers never show) goes first: on a short page it falls back to a plain dump of the whole page
        # when that is longer, and their text alone made it so: one flat record, its headings lost.
        tree = tree_cleaning(tree, options)
        # trafilatura ends each row of a Markdown table with a space ("| EU | 5 days | "): no text of the page's.
        body = _with_lost_heading(tree, re.sub(r"[ \t]+$", "", _main_content(tree, options) or "", flags=re.MULTILINE))
    first_heading, parts = markdown_sections(body)
    for part in parts:
        part.line = None  # lines of the extracted text, not of the HTML file: not a place to point at
        part.text = _unescape_markdown(part.text)
        part.section = _unescape_markdown(part.section) if part.section else part.section
    first_heading = _unescape_markdown(first_heading) if first_heading else first_heading
    return Extracted(page_title or first_heading or stem, parts)


def _html_title(tree: Any) -> str | None:
    """The page's title as ``trafilatura.extract_metadata`` finds it (its meta tags, then its JSON-LD, then
    its <title>, <h1> or <h2>), by its steps for the title alone: the whole works out the date (htmldate),
    author, site name, categories and licence too, to throw them away (0.42 s of extract_html's 2.2 s on 200
    generated pages, against 0.08 s). trafilatura (pinned) has no public call for the title alone."""
    from trafilatura.metadata import examine_meta, extract_meta_json, extract_title

    metadata = examine_meta(tree)
    # As extract_metadata does: a page's JSON-LD it cannot read (a bug of trafilatura's) leaves the meta tags'.
    with contextlib.suppress(Exception):
        metadata = extract_meta_json(tree, metadata)
    metadata.title = metadata.title or extract_title(tree)
    metadata.clean_and_trim()  # its entities unescaped, its spaces and control characters trimmed
    return metadata.title


def _pair_definitions(tree: Any) -> None:
    """Make each definition list a list of "**Term**: meaning" items: trafilatura made one flat list of its
    terms and meanings, which lost which meaning is whose. Terms of one meaning ("SLA", "OLA") share an
    item, as do the meanings of one term."""
    from lxml.etree import SubElement

    for definitions in list(tree.iter("dl")):
        groups: list[tuple[list[Any], list[Any]]] = []
        # HTML lets a div wrap each term and its meanings.
        entries = [e for child in definitions for e in (child if child.tag == "div" else [child])]
        for entry in entries:
            if entry.tag == "dt" and (not groups or groups[-1][1]):
                groups.append(([entry], []))
            elif entry.tag in ("dt", "dd"):
                groups = groups or [([], [])]  # a meaning before any term
                groups[-1][entry.tag == "dd"].append(entry)
        for child in list(definitions):
            definitions.remove(child)
        definitions.tag, definitions.text = "ul", None
        for group in groups:
            # An empty term or meaning (a template's blank) would leave a bare ": " in the item.
            terms, meanings = ([e for e in members if "".join(e.itertext()).strip()] for members in group)
            item = SubElement(definitions, "li")
            for term in terms:
                term.tag, term.tail = "b", ", "
            for meaning in meanings:
                ended = "".join(meaning.itertext()).rstrip().endswith((".", "!", "?", ";", ":"))
                meaning.tag, meaning.tail = "span", " " if ended else "; "
            if terms:
                terms[-1].tail = ": " if meanings else None
            if meanings:
                meanings[-1].tail = None
            item.extend(terms + meanings)


def _extraction_options(min_extracted_size: int | None = None) -> Extractor:
    from trafilatura.settings import DEFAULT_CONFIG, Extractor, use_config

    config = DEFAULT_CONFIG
    if min_extracted_size is not None:
        config = use_config()
        config.set("DEFAULT", "MIN_EXTRACTED_SIZE", str(min_extracted_size))
    return Extractor(config=config, output_format="markdown", tables=True, comments=False, recall=True)


def _main_content(tree: Any, options: Extractor) -> str | None:
    """The page's main content as Markdown: trafilatura keeps it in reading order and drops navigation,
    footers and ads, and its Markdown keeps the headings, so sections are split as in Markdown files."""
    found = _extract(tree, options)
    # On a page with less text than MIN_EXTRACTED_SIZE, trafilatura takes a plain dump of the page's
    # paragraphs instead where that is longer: one flat record without the page's headings, a byline or
    # caption outside the content making it longer. It is taken here only where it holds every word of the
    # extraction without that fallback (a page whose text the extraction missed), not where it lost some of
    # its own. That second extraction is run only where the first could be the dump (nothing but paragraphs
    # of bare text, as the dump is): a page with a heading, list, table or emphasis is extracted once. (The
    # second's MIN_EXTRACTED_SIZE moves trafilatura's other thresholds too, readability is not tried past 10
    # characters: where the first is no dump, it is trafilatura's own choice and stays.)
    if found is not None and not all(child.tag == "p" and len(child) == 0 for child in found.body):
        return found.text
    found_text = found.text if found is not None else None
    extracted = _extract(tree, _extraction_options(min_extracted_size=1))
    if extracted is not None and _words(extracted.text or "") - _words(found_text or ""):
        return extracted.text
    return found_text


def _extract(tree: Any, options: Extractor) -> Document | None:
    """trafilatura's extraction of the tree (a copy of it) with its text as ``options`` say (Markdown)."""
    import trafilatura
    from trafilatura.core import determine_returnstring
    from trafilatura.settings import Document

    document = trafilatura.bare_extraction(tree, options=options)
    if isinstance(document, Document):
        document.text = determine_returnstring(document, options)
        return document
    return None


def _words(text: str) -> Counter[str]:
    return Counter(_WORD.findall(text.casefold()))


_WORD = re.compile(r"[^\W\d_]+")
_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")


def _with_lost_heading(tree: Any, body: str) -> str:
    """``body`` (the page's extracted Markdown) with the page's first heading put back where trafilatura
    left it out: a page's only heading, its h1, with no <article> or <main> around it, and the record
    lost it (one more heading brings it back). Put back only into a body of no heading, where it comes
    before the first paragraph kept, and is none of a page header's, navigation's, sidebar's or footer's
    (a site's name)."""
    from trafilatura.xml import _escape_inline_specials

    if re.search(r"^#{1,6} ", body, flags=re.MULTILINE):
        return body
    first = next((h for h in tree.iter(_HEADINGS) if not _in_page_furniture(h)), None)
    lines = _lines(first) if first is not None else []
    text = " ".join(lines)
    if not text or not body or " ".join(text.casefold().split()) in " ".join(body.casefold().split()):
        return body
    # trafilatura keeps each line after a <br> of the heading as a paragraph of its own ("Password<br>policy"
    # left "policy" first in the body): the whole heading takes their place.
    paragraphs = body.split("\n\n")
    if len(paragraphs) >= len(lines) > 1 and [_WORD.findall(p.casefold()) for p in paragraphs[: len(lines) - 1]] == [
        _WORD.findall(line.casefold()) for line in lines[1:]
    ]:
        paragraphs = paragraphs[len(lines) - 1 :]
    # The heading goes with the first paragraph kept when nothing dropped stands between them, or when its
    # own element holds that paragraph (an author line, share buttons or a breadcrumb dropped between): a
    # cookie banner's "We value your privacy" headed the page's refund policy, its element the banner alone.
    # Compared by their letters alone: inline markup splits the page's text into pieces mid-word
    # ("Re<span>funds</span>", in the heading or the paragraph) where the body's text runs on.
    opening = "".join(_WORD.findall(paragraphs[0].casefold())[:8])
    after = _letter_count(first.xpath("preceding::text()")) + _letter_count(first.xpath(".//text()"))
    parent = first.getparent()
    end = after + len(opening)  # right after the heading; within its own element, unless that is the whole page
    if parent is not None and parent.tag not in ("body", "html"):
        end = _letter_count(parent.xpath("preceding::text()")) + _letter_count(parent.xpath(".//text()"))
    if not opening or _letters(tree.xpath("//text()")).find(opening, after, end) < 0:
        return body
    # Escaped as trafilatura escapes the body's text, which ``_unescape_markdown`` takes out again.
    rest = "\n\n".join(paragraphs)
    return f"{'#' * int(first.tag[1])} {_escape_inline_specials(text)}\n\n{rest}"


def _lines(element: Any) -> list[str]:
    """The element's text, line by line: a <br> ends a line (``text_content()`` runs the words either side
    of it together, "Passwordpolicy"); inline markup joins its pieces ("Pass<b>word</b>" is one word)."""
    pieces = [piece if isinstance(piece, str) else "\n" for piece in element.xpath(".//text() | .//br")]
    return [line for line in (" ".join(line.split()) for line in "".join(pieces).split("\n")) if line]


def _letters(texts: list[str]) -> str:
    return "".join(_WORD.findall(" ".join(texts).casefold()))


def _letter_count(texts: list[str]) -> int:
    return len(_letters(texts))


def _in_page_furniture(element: Any) -> bool:
    return any(ancestor.tag in ("header", "nav", "aside", "footer") for ancestor in element.iterancestors())


# What trafilatura's Markdown escapes so the page's text renders as itself: an inline special after a
# run of k backslashes becomes 2k+1 of them, and a line that would start a heading, quote or list gets a
# backslash before its marker. Code (fenced blocks, inline spans) is verbatim and left alone.
_MARKDOWN_ESCAPES = re.compile(
    r"(?P<code>^[ \t]*(?P<fence>```|~~~)[^\n]*\n.*?^[ \t]*(?P=fence)[ \t]*$|(?P<ticks>`+)(?!`).+?(?<!`)(?P=ticks)(?!`))"
    r"|(?P<run>\\+)(?P<char>[*_`~\[\]<])"
    r"|^(?P<number> {0,3}\d{1,9})\\(?P<dot>[.)])(?=[ \t]|$)"
    r"|^(?P<indent> {0,3})\\(?P<marker>(?:#{1,6}|[-+])(?=[ \t]|$)|>)",
    re.DOTALL | re.MULTILINE,
)


def _unescape_markdown(text: str) -> str:
    """The text trafilatura's Markdown holds, its escapes taken out: training text reads "max_retry_count",
    "5 * 2" and "[draft]", not "max\\_retry\\_count", "5 \\* 2" and "\\[draft\\]"."""

    def plain(match: re.Match[str]) -> str:
        if match["code"] is not None:
            return match[0]
        if match["run"] is not None:
            run = len(match["run"])
            return "\\" * (run // 2) + match["char"] if run % 2 else match[0]
        if match["number"] is not None:
            return match["number"] + match["dot"]
        return match["indent"] + match["marker"]

    return _MARKDOWN_ESCAPES.sub(plain, text)


def _decode(data: bytes) -> str:
    """Text in the encoding its byte-order mark names (UTF-16: Notepad's "Unicode"), else UTF-8."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return _without_nul(data.decode("utf-16"))  # the codec reads the mark for the byte order
        except UnicodeDecodeError:
            raise DocumentError("corrupt", "not UTF-16 text, as its byte-order mark says") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DocumentError("corrupt", f"not UTF-8 text: {_undecodable_at(error)}") from None
    return _without_nul(text)


def _undecodable_at(error: UnicodeDecodeError) -> str:
    """The first byte that is not UTF-8, with its line and column (in bytes, from 1), as a JSONL or CSV
    line's is named: a document is many lines, and its offset alone is hard to find in an editor."""
    line_start = error.object.rfind(b"\n", 0, error.start) + 1
    line = error.object.count(b"\n", 0, error.start) + 1
    return f"byte {error.object[error.start]:#04x} at line {line}, column {error.start - line_start + 1}"


def _without_nul(text: str) -> str:
    # No text holds a NUL; UTF-16 without a byte-order mark (ASCII in it: a NUL after each letter)
    # decodes as UTF-8 all the same, and would be published as "R\u0000e\u0000f\u0000...".
    if "\x00" in text:
        raise DocumentError("corrupt", "not UTF-8 text: it holds NUL characters (UTF-16, or not text at all)")
    return text


# Labels a page may declare that browsers read as windows-1252 (WHATWG Encoding): its bytes 0x80-0x9F
# are curly quotes and dashes there, not the control characters Latin-1 has.
_WINDOWS_1252 = {"ascii", "us-ascii", "latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1", "cp819"}
# Labels of UTF-16, which browsers read as UTF-8 when a page declares it (WHATWG HTML, "prescan a byte
# stream": bytes the prescan could read as ASCII are not UTF-16): decoding such a page as UTF-16 made
# garbage of it.
_UTF_16 = {
    "utf-16",
    "utf-16le",
    "utf-16be",
    "unicode",
    "unicodefeff",
    "unicodefffe",
    "csunicode",
    "ucs-2",
    "iso-10646-ucs-2",
}


def _decode_html(data: bytes) -> str:
    """A web page's text: in the encoding its byte-order mark names, else UTF-8, else in the charset the
    page declares (``<meta charset>``, an XML declaration), as a browser reads it; a page in another
    charset that declares none is corrupt."""
    from bs4.dammit import EncodingDetector

    # A byte-order mark wins over any charset the page declares, as in browsers (WHATWG Encoding,
    # "decode"): a UTF-16 page with one was quarantined as "not UTF-8 text".
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF8)):
        return _decode(data)
    try:
        return _decode(data)
    except DocumentError as error:
        declared = EncodingDetector.find_declared_encoding(data, is_html=True)
        if not declared:
            raise
        if declared.lower() in _UTF_16:
            detail = f"{error.detail} (it declares {declared}, which browsers read as UTF-8)"
            raise DocumentError(error.reason, detail) from None
    codec = "cp1252" if declared.lower() in _WINDOWS_1252 else declared
    try:
        return _without_nul(data.decode(codec))
    except (LookupError, UnicodeError):  # "undefined", a codec that takes nothing, raises a plain UnicodeError
        raise DocumentError("corrupt", f"not UTF-8 text, nor {declared} as it declares") from None


EXTRACTORS = {
    "pdf": extract_pdf,
    "docx": extract_docx,
    "html": extract_html,
    "markdown": extract_markdown,
    "text": extract_text,
}


# Why a document has no text, as far as its kind tells: only a PDF, or a Word file of pictures, is a scan.
NO_TEXT = {
    "scan": "no text found (a scanned document needs OCR first)",
    "docx": "no text found: the Word file is empty (or holds only empty paragraphs and tables)",
    "html": "no text found in the page's main content (it is empty, or only navigation, forms or markup)",
    "markdown": "no text found: the file is empty (or holds only blank lines, rules, front matter or comments)",
    "text": "no text found: the file is empty (or holds only blank lines)",
}


# --- the source --------------------------------------------------------------------------------------


class DocumentsSourceReader(ListedFiles):
    name = CONNECTOR
    suffixes = tuple(KINDS)
    nothing_found = f"no documents match ({', '.join(KINDS)})"

    def __init__(self, config: DocumentsSource, watermark: SourceWatermark | None = None) -> None:
        self.config, self.watermark = config, watermark

    def batches(self) -> Iterator[SourceBatch]:
        for entry in self.entries():
            fs, path = filesystem(entry.uri)
            digest = self.read_digest(entry)
            try:
                with open_input(fs, path, entry.etag, digest) as stream:
                    data = stream.read()
            except OSError as exc:
                error = read_error(entry.uri, exc)
                if not isinstance(error, Unreadable):
                    raise error from None
                yield self.unreadable(entry, error)  # read whole before any record: nothing of it passed on
                continue
            yield self._records(entry, data)
            self.taken(entry, digest)

    def _records(self, entry: FileEntry, data: bytes) -> SourceBatch:
        name = posixpath.basename(entry.uri)
        stem, suffix = posixpath.splitext(name)
        try:
            kind = KINDS[suffix.lower()]
            extracted = EXTRACTORS[kind](data, stem)
            if not extracted.parts:
                scan = kind == "pdf" or extracted.images
                raise DocumentError("no_text", NO_TEXT["scan" if scan else kind])
        except DocumentError as problem:
            return SourceBatch(
                rows=pa.table({}), set_aside=self._quarantine(entry.uri, problem), input_bytes=entry.size
            )
        texts, titles, lines, pages = [], [], [], []
        for part in extracted.parts:
            title = f"{extracted.title} › {part.section}" if part.section and part.section != extracted.title else None
            chunks = [(0, part.text)]
            if self.config.chunk is not None:
                chunks = [
                    (c.start, c.text)
                    for c in chunk_text(part.text, self.config.chunk.max_chars, self.config.chunk.overlap_chars)
                ]
            for start, text in chunks:
                line = part.line_at(start)
                texts.append(text)
                titles.append(title or extracted.title)
                lines.append(line)
                pages.append(part.page)
        ids = InputIds(entry.uri)([t.encode() for t in texts])
        set_aside = self._pages_set_aside(entry.uri, extracted.blank_pages, extracted.broken_pages)
        rows = pa.table(
            {
                "id": pa.array(ids, pa.string()),
                "source": source_array(CONNECTOR, entry.uri, lines, pages),
                "text": pa.array(texts, pa.string()),
                "title": pa.array(titles, pa.string()),
            }
        )
        return SourceBatch(rows=rows, set_aside=set_aside, input_bytes=entry.size)

    @staticmethod
    def _pages_set_aside(uri: str, blank: list[int], broken: dict[int, str]) -> pa.Table:
        """The pages of a PDF with text elsewhere that have none (a scan among text pages), or that could
        not be read: quarantined one by one, as a whole document without text or unreadable is, not left
        out without a word."""
        found = {
            page: (
                "no_text",
                "no text on this page, but for any running header or footer (a scanned page needs OCR first)",
            )
            for page in blank
        }
        found |= {page: ("corrupt", f"the page could not be read ({why})") for page, why in broken.items()}
        pages = sorted(found)
        return set_aside_rows(
            record_ids(uri, pages, [b""] * len(pages)),
            source_array(CONNECTOR, uri, [None] * len(pages), pages),
            stage="read",
            outcome="quarantined",
            reasons=[found[page][0] for page in pages],
            details=[f"{uri} (page {page}): {found[page][1]}" for page in pages],
        )

    @staticmethod
    def _quarantine(uri: str, problem: DocumentError) -> pa.Table:
        return set_aside_rows(
            record_ids(uri, [None], [b""]),
            source_array(CONNECTOR, uri, [None]),
            stage="read",
            outcome="quarantined",
            reasons=problem.reason,
            details=[f"{uri}: {problem.detail}"],
        )
