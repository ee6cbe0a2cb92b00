"""Documents: PDF (fpdf2), DOCX (python-docx), HTML, Markdown and text, generated here; local and S3."""

from __future__ import annotations

import codecs
import io
import itertools
import logging
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import docx
import pytest
import regex
from fpdf import FPDF
from pypdf.generic import ArrayObject, NumberObject, TextStringObject

from connectors.chunk import Chunk, chunk_text
from connectors.documents import DocumentsSourceReader, extract_pdf
from schemas.config import ChunkConfig, DocumentsSource, RecipeError, parse_recipe
from tests.helpers import outputs, read_lines, refusing, run, set_aside, write_jsonl

PARAGRAPHS = [
    "Refunds are paid within five working days of the returned item arriving at the warehouse.",
    "Customers abroad may return items by courier; the courier fee is refunded with the item.",
    "Gift cards cannot be refunded once activated, but they can be transferred to another account.",
]


class HandbookPDF(FPDF):
    def header(self) -> None:
        self.set_font("helvetica", size=9)
        self.cell(0, 8, "ACME Internal - Confidential", new_x="LMARGIN", new_y="NEXT")

    def footer(self) -> None:
        self.set_y(-15)
        self.set_font("helvetica", size=9)
        self.cell(0, 8, f"Page {self.page_no()} of 4")


def make_pdf(pages: int = 4, password: str | None = None) -> bytes:
    pdf = HandbookPDF()
    pdf.set_title("Customer Handbook")
    if password:
        pdf.set_encryption(owner_password="owner", user_password=password)
    for number in range(1, pages + 1):
        pdf.add_page()
        pdf.set_font("helvetica", size=12)
        pdf.multi_cell(0, 8, f"Chapter {number}. " + PARAGRAPHS[number % 3])
    return bytes(pdf.output())


def make_docx() -> bytes:
    document = docx.Document()
    document.sections[0].header.paragraphs[0].text = "ACME letterhead - do not copy"
    document.add_paragraph("Returns Policy", style="Title")
    document.add_paragraph("This policy applies to all stores.")
    document.add_heading("Refunds", level=1)
    document.add_paragraph(PARAGRAPHS[0])
    document.add_heading("Gift cards", level=1)
    document.add_paragraph(PARAGRAPHS[2])
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Card", "Refundable"
    table.cell(1, 0).text, table.cell(1, 1).text = "Activated", "No"
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


HTML = """<html><head><title>Shipping times | ACME</title></head><body>
<nav><a href="/">Home</a> | <a href="/shop">Shop</a> | <a href="/login">Log in to your account</a></nav>
<article><h1>Shipping times</h1>
<p>Orders placed before noon leave the warehouse the same day and arrive within two working days.</p>
<h2>International</h2>
<p>International parcels take five to ten working days, depending on customs in the destination country.</p>
</article>
<footer>Copyright 2026 ACME Ltd. All rights reserved. Cookie settings.</footer></body></html>"""

MARKDOWN = """---
title: Support playbook
---
Intro line for agents.

# Escalation

Escalate fraud reports to the risk team within one hour.

```bash
# not a heading: a comment in a code block
```

## Refunds

Refunds above 500 USD need a second approval.
"""


def read(path: Path | str, **settings: object) -> tuple[list[dict], list[dict]]:
    reader = DocumentsSourceReader(DocumentsSource(type="documents", path=str(path), **settings))
    rows, aside = [], []
    for batch in reader.batches():
        rows += batch.rows.to_pylist()
        aside += batch.set_aside.to_pylist()
    return rows, aside


def test_pdf_pages_keep_order_and_lose_running_headers(tmp_path: Path) -> None:
    (tmp_path / "handbook.pdf").write_bytes(make_pdf())
    rows, aside = read(tmp_path)
    assert aside == []
    assert [r["source"]["page"] for r in rows] == [1, 2, 3, 4]
    assert all(r["title"] == "Customer Handbook" for r in rows)
    for number, row in enumerate(rows, start=1):
        assert row["text"].startswith(f"Chapter {number}.")
        assert "Confidential" not in row["text"] and "of 4" not in row["text"]


def test_pdf_lines_that_differ_only_in_numbers_are_kept_unless_they_run_at_the_page_edges(tmp_path: Path) -> None:
    def pdf(bodies: list[list[str]], running: bool) -> bytes:
        document = HandbookPDF() if running else FPDF()
        for body in bodies:
            document.add_page()
            document.set_font("helvetica", size=12)
            for line in body:
                document.cell(0, 8, line, new_x="LMARGIN", new_y="NEXT")
        return bytes(document.output())

    # A ledger: the same shape of line in the body of every page, between a running header and footer.
    ledger = [[f"Invoice {n}{k} total {k * 12} USD" for k in range(1, 6)] for n in range(1, 5)]
    (tmp_path / "ledger.pdf").write_bytes(pdf(ledger, running=True))
    # A form per page, one line each: every line looks like a running header, yet they are the content.
    forms = [[f"Form {n}: amount due {n * 40} USD"] for n in range(1, 5)]
    (tmp_path / "forms.pdf").write_bytes(pdf(forms, running=False))
    # Edge lines of one shape but not as many numbers ("Ticket #" beside "Ticket 3"): content, no crash.
    (tmp_path / "tickets.pdf").write_bytes(
        pdf([["Ticket 1", "a"], ["Ticket #", "b"], ["Ticket 3", "c"]], running=False)
    )
    # A sentence opening every page with the page's number says something of its own on each: it stays.
    # The same sentence closing every page is a running footer.
    rules = [
        [f"Rule {n}: book economy class for short flights.", f"Detail {'xyz'[n - 1]}", "All rights reserved by Acme."]
        for n in (1, 2, 3)
    ]
    (tmp_path / "rules.pdf").write_bytes(pdf(rules, running=False))
    rows, aside = read(tmp_path)
    assert aside == []
    texts = {(Path(r["source"]["uri"]).name, r["source"]["page"]): r["text"] for r in rows}
    assert texts["tickets.pdf", 2] == "Ticket #\nb"
    assert [texts["rules.pdf", n].splitlines() for n in (1, 2, 3)] == [page[:2] for page in rules]
    for n in range(1, 5):
        assert texts["forms.pdf", n] == f"Form {n}: amount due {n * 40} USD"
        ledger_page = texts["ledger.pdf", n].splitlines()
        assert "Confidential" not in texts["ledger.pdf", n] and "of 4" not in texts["ledger.pdf", n]
        assert ledger_page == ledger[n - 1]


def test_a_pdf_page_without_text_among_text_pages_is_quarantined_not_dropped(workdir: Path) -> None:
    # A scanned page in a text PDF: it was left out, and the manifest counted two pages of three.
    pdf = FPDF()
    for text in ("Refunds are paid within five days.", None, "Parcels ship the same day."):
        pdf.add_page()
        if text:
            pdf.set_font("helvetica", size=12)
            pdf.multi_cell(0, 8, text)
    (workdir / "docs").mkdir()
    (workdir / "docs" / "mixed.pdf").write_bytes(bytes(pdf.output()))
    result = run(
        workdir, {"dataset": "kb", "sources": [{"type": "documents", "path": "docs"}], "record": {"kind": "document"}}
    )
    counts = result.manifest.counts
    assert (counts.input, counts.written, counts.reasons) == (3, 2, {"quarantined": {"no_text": 1}})
    [row] = set_aside(Path(result.version_uri))
    assert row["source"]["page"] == 2 and "(page 2): no text on this page" in row["detail"]


def _pdf_with_broken_pages(*broken: int, base: bytes | None = None) -> bytes:
    """The 4-page handbook (or ``base``) with the content stream of each page in ``broken`` (numbered from 1) one that
    does not decode (an ASCII85 stream of other characters): pypdf's extract_text raises on that page."""
    from pypdf import PdfReader, PdfWriter
    from pypdf.generic import NameObject, StreamObject

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(base or make_pdf())))
    for number in broken:
        stream = StreamObject()
        stream.set_data(b"BT (not ASCII85) Tj ET~>")
        stream[NameObject("/Filter")] = NameObject("/ASCII85Decode")
        writer.pages[number - 1][NameObject("/Contents")] = writer._add_object(stream)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_a_pdf_page_that_cannot_be_read_is_quarantined_and_the_other_pages_published(workdir: Path) -> None:
    # One page whose content stream does not decode: the whole PDF was quarantined as corrupt, and the
    # text of its three readable pages was lost.
    (workdir / "docs").mkdir()
    (workdir / "docs" / "handbook.pdf").write_bytes(_pdf_with_broken_pages(2))
    result = run(
        workdir, {"dataset": "kb", "sources": [{"type": "documents", "path": "docs"}], "record": {"kind": "document"}}
    )
    counts = result.manifest.counts
    assert (counts.input, counts.written, counts.reasons) == (4, 3, {"quarantined": {"corrupt": 1}})
    assert sorted(line["text"].split(".")[0] for line in outputs(Path(result.version_uri))) == [
        "Chapter 1",
        "Chapter 3",
        "Chapter 4",
    ]
    [row] = set_aside(Path(result.version_uri))
    assert (row["source"]["page"], row["reason"]) == (2, "corrupt")
    assert row["detail"].startswith(f"{workdir}/docs/handbook.pdf (page 2): the page could not be read (ValueError: ")


def _scan_with_text_on_page_one() -> bytes:
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.multi_cell(0, 8, "Refunds are paid within five days.")
    pdf.add_page()
    return bytes(pdf.output())


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (lambda: _pdf_with_broken_pages(1, 2, 3, 4), "not a readable PDF: no page could be read (page 1: ValueError: "),
        (
            lambda: _pdf_with_broken_pages(1, base=_scan_with_text_on_page_one()),
            "not a readable PDF: page 1 could not be read (ValueError: ",
        ),
    ],
)
def test_a_pdf_with_no_page_of_text_but_pages_that_cannot_be_read_is_corrupt_naming_one(
    tmp_path: Path, content: Any, detail: str
) -> None:
    # Not "no text found (a scanned document needs OCR first)": OCR would not read a page that does not decode.
    (tmp_path / "handbook.pdf").write_bytes(content())
    rows, [aside] = read(tmp_path)
    assert rows == [] and (aside["source"]["page"], aside["reason"]) == (None, "corrupt")
    assert f"handbook.pdf: {detail}" in aside["detail"]


def test_docx_sections_title_and_tables_without_page_header(tmp_path: Path) -> None:
    (tmp_path / "policy.docx").write_bytes(make_docx())
    rows, _ = read(tmp_path)
    assert [r["title"] for r in rows] == ["Returns Policy", "Returns Policy › Refunds", "Returns Policy › Gift cards"]
    assert rows[0]["text"] == "This policy applies to all stores."
    assert rows[1]["text"] == "Refunds\n\n" + PARAGRAPHS[0]
    assert "Activated | No" in rows[2]["text"]
    assert all("letterhead" not in r["text"] for r in rows)
    # the paragraph each section's text starts on: the first's is past the Title, paragraph 1
    assert [r["source"]["line"] for r in rows] == [2, 3, 5]


def test_docx_table_reads_a_merged_cell_once_and_a_table_inside_a_cell(tmp_path: Path) -> None:
    document = docx.Document()
    document.add_heading("Fees", level=1)
    table = document.add_table(rows=2, cols=3)
    table.cell(0, 0).merge(table.cell(0, 2)).text = "Card fees 2026"  # one cell across three columns
    table.cell(1, 0).text, table.cell(1, 2).text = "Debit", "Free"
    inner = table.cell(1, 1).add_table(rows=1, cols=2)
    inner.cell(0, 0).text, inner.cell(0, 1).text = "Abroad", "1.5%"
    buffer = io.BytesIO()
    document.save(buffer)
    (tmp_path / "fees.docx").write_bytes(buffer.getvalue())
    [row], _ = read(tmp_path)
    # Was: "Card fees 2026 | Card fees 2026 | Card fees 2026", and the inner table's text was lost.
    assert row["text"] == "Fees\n\nCard fees 2026\nDebit | Abroad | 1.5% | Free"


@pytest.mark.parametrize("span", ["0", "-1"])
def test_a_docx_cell_spanning_no_column_is_read_as_one(tmp_path: Path, span: str) -> None:
    # Word writes a cell's gridSpan as 1 or more; other tools write 0. python-docx gave such a cell for no
    # column, and its text was lost without a word ("B\nC | D").
    (tmp_path / "rates.docx").write_bytes(_docx_with_table("<w:tcPr>", f'<w:tcPr><w:gridSpan w:val="{span}"/>'))
    [row], aside = read(tmp_path)
    assert (row["text"], aside) == ("Refunds are paid within five days.\n\nA | B\nC | D", [])


def test_docx_text_inside_content_controls_is_read(tmp_path: Path) -> None:
    # A Word template's content controls (w:sdt): a block, a field inside a paragraph, a cell. Their
    # text was left out without a word.
    w = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
    document = docx.Document()
    document.add_heading("Refunds", level=1)
    block = f"<w:sdt {w}><w:sdtPr/><w:sdtContent><w:p><w:r><w:t>Refunds take five days.</w:t></w:r></w:p></w:sdtContent></w:sdt>"
    document.element.body.insert(1, docx.oxml.parse_xml(block))
    paragraph = document.add_paragraph("Approved by ")
    paragraph._p.append(
        docx.oxml.parse_xml(f"<w:sdt {w}><w:sdtContent><w:r><w:t>the risk team</w:t></w:r></w:sdtContent></w:sdt>")
    )
    paragraph.add_run(".")
    table = document.add_table(rows=1, cols=2)
    table.cell(0, 0).text = "Limit"
    cell = f"<w:sdt {w}><w:sdtContent><w:p><w:r><w:t>500 USD</w:t></w:r></w:p></w:sdtContent></w:sdt>"
    table.cell(0, 1)._tc.append(docx.oxml.parse_xml(cell))
    buffer = io.BytesIO()
    document.save(buffer)
    (tmp_path / "refunds.docx").write_bytes(buffer.getvalue())
    [row], _ = read(tmp_path)
    assert row["text"] == "Refunds\n\nRefunds take five days.\n\nApproved by the risk team.\n\nLimit | 500 USD"


def test_docx_with_tracked_changes_reads_as_word_shows_it(tmp_path: Path) -> None:
    # Changes not yet accepted: the inserted word was left out ("Refunds take  days."), python-docx's
    # text reading only the paragraph's own runs.
    w = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
    document = docx.Document()
    paragraph = document.add_paragraph("Refunds take ")
    deleted = f'<w:del {w} w:id="1" w:author="ana"><w:r><w:delText>ten</w:delText></w:r></w:del>'
    inserted = f'<w:ins {w} w:id="2" w:author="ana"><w:r><w:t>five</w:t></w:r></w:ins>'
    paragraph._p.append(docx.oxml.parse_xml(deleted))
    paragraph._p.append(docx.oxml.parse_xml(inserted))
    paragraph.add_run(" days.")
    buffer = io.BytesIO()
    document.save(buffer)
    (tmp_path / "refunds.docx").write_bytes(buffer.getvalue())
    [row], _ = read(tmp_path)
    assert row["text"] == "Refunds take five days."


def test_docx_text_in_equations_and_text_direction_runs_is_read(tmp_path: Path) -> None:
    # Runs inside an equation (m:oMath, read in its linear form), a right-to-left run (w:dir) or one
    # whose direction is overridden (w:bdo) were left out: "Rotate passwords every  days.", no phone.
    ns = docx.oxml.ns.nsdecls("w", "m")
    document = docx.Document()
    maths = document.add_paragraph("Rotate passwords every ")
    maths._p.append(docx.oxml.parse_xml(f"<m:oMath {ns}><m:r><m:t>90</m:t></m:r></m:oMath>"))
    maths.add_run(" days.")
    display = f"<m:oMathPara {ns}><m:oMath><m:r><m:t>x</m:t></m:r><m:r><m:t>=2</m:t></m:r></m:oMath></m:oMathPara>"
    document.add_paragraph()._p.append(docx.oxml.parse_xml(display))
    document.add_paragraph()._p.append(
        docx.oxml.parse_xml(f'<w:dir {ns} w:val="rtl"><w:r><w:t>שלום עולם</w:t></w:r></w:dir>')
    )
    phone = document.add_paragraph("Call ")
    phone._p.append(docx.oxml.parse_xml(f'<w:bdo {ns} w:val="ltr"><w:r><w:t>+44 20 7946 0000</w:t></w:r></w:bdo>'))
    phone.add_run(" for help.")
    document.save(tmp_path / "security.docx")
    [row], _ = read(tmp_path)
    assert row["text"] == "Rotate passwords every 90 days.\n\nx=2\n\nשלום עולם\n\nCall +44 20 7946 0000 for help."


def test_docx_equations_read_fractions_scripts_and_tracked_changes_as_shown(tmp_path: Path) -> None:
    # An equation's texts were joined as found: ½ read "12", c² "c2", and an edit x=3 -> x=2 tracked in it
    # read "x=3x=2".
    ns = docx.oxml.ns.nsdecls("w", "m")

    def run(text: str) -> str:
        return f"<m:r><m:t>{text}</m:t></m:r>"

    change = 'w:id="{}" w:author="a" w:date="2024-01-01T00:00:00Z"'
    equations = {
        "Half is ": f"<m:f><m:num>{run('1')}</m:num><m:den>{run('2')}</m:den></m:f>",
        "Energy: ": f"{run('E=m')}<m:sSup><m:e>{run('c')}</m:e><m:sup>{run('2')}</m:sup></m:sSup>",
        "Next: ": f"<m:sSub><m:e>{run('x')}</m:e><m:sub>{run('i+1')}</m:sub></m:sSub>"
        f"<m:f><m:num>{run('a+b')}</m:num><m:den>{run('c')}</m:den></m:f>",
        "Tracked: ": f"<w:del {change.format(1)}>{run('x=3')}</w:del><w:ins {change.format(2)}>{run('x=2')}</w:ins>"
        f"<w:moveFrom {change.format(3)}>{run('+y')}</w:moveFrom>",
        # A fraction deleted whole left its bar ("y=x+/"); sub- and superscript on one base read as its texts.
        "Deleted: ": f"{run('y=x+')}<m:f><m:num><w:del {change.format(4)}>{run('1')}</w:del></m:num>"
        f"<m:den><w:del {change.format(5)}>{run('2')}</w:del></m:den></m:f>",
        "Both: ": f"<m:sSubSup><m:e>{run('x')}</m:e><m:sub>{run('i')}</m:sub><m:sup>{run('n+1')}</m:sup></m:sSubSup>",
    }
    document = docx.Document()
    for words, maths in equations.items():
        document.add_paragraph(words)._p.append(docx.oxml.parse_xml(f"<m:oMath {ns}>{maths}</m:oMath>"))
    document.save(tmp_path / "maths.docx")
    [row], _ = read(tmp_path)
    assert row["text"] == (
        "Half is 1/2\n\nEnergy: E=mc^2\n\nNext: x_(i+1)(a+b)/c\n\nTracked: x=2\n\nDeleted: y=x+\n\nBoth: x_i^(n+1)"
    )


def test_a_pages_only_heading_is_kept_with_no_article_around_it(tmp_path: Path) -> None:
    # trafilatura left a lone h1 out of the text when no <article> or <main> held it (an h2 more brought
    # it back). Not a page header's: a site's name is no heading of the page's text.
    paragraphs = [
        "Passwords are rotated every ninety days and never sent by email to anyone at all.",
        "Use a manager for them, never a sticky note on the screen.",
    ]
    text = "".join(f"<p>{paragraph}</p>" for paragraph in paragraphs)
    (tmp_path / "policy.html").write_text(f"<html><body><h1>Password policy</h1>{text}</body></html>")
    (tmp_path / "site.html").write_text(f"<html><body><header><h1>ACME intranet</h1></header>{text}</body></html>")
    # Inline markup splitting its text: its words were counted as one text ("Password") where the page's are
    # counted piece by piece ("Pass", "word"), so the place right after it was one word short: it stayed lost.
    split = f"<html><body><h1>Pass<span>word</span> policy</h1>{text}</body></html>"
    (tmp_path / "policy_split.html").write_text(split)
    rows, _ = read(tmp_path)
    assert [(row["title"], row["text"]) for row in rows] == [
        ("Password policy", "\n\n".join(["# Password policy", *paragraphs])),
        ("Password policy", "\n\n".join(["# Password policy", *paragraphs])),
        ("ACME intranet", "\n\n".join(paragraphs)),
    ]


def test_a_lost_heading_split_by_markup_or_a_line_break_is_put_back_whole(tmp_path: Path) -> None:
    # The paragraph after the heading split by inline markup ("Re<span>funds</span>") was counted as one
    # word in the text kept and as two in the page's: the heading stayed lost. A <br> in the heading ran its
    # words together ("Passwordpolicy"), and trafilatura keeps the line after it as a paragraph: "policy"
    # was all the text kept of "Password<br>policy".
    paragraphs = [
        "Refunds are paid within five working days of the returned item arriving at the warehouse.",
        "Store credit is offered where the original payment method has expired or been closed.",
    ]
    text = "".join(f"<p>{paragraph}</p>" for paragraph in paragraphs)
    split = text.replace("Refunds", "Re<span>funds</span>", 1)
    pages = {
        "a_split_paragraph": f"<h1>Password policy</h1>{split}",
        "b_line_break": f"<h1>Password<br>policy</h1>{text}",
        "c_line_breaks": f"<h1>Refund<br/>policy<br>for customers</h1>{text}",
        "d_split_both": f"<h1>Pass<span>word</span><br>policy</h1>{split}",
    }
    for name, page in pages.items():
        (tmp_path / f"{name}.html").write_text(f"<html><body>{page}</body></html>")
    rows, _ = read(tmp_path)
    assert [(row["title"], row["text"]) for row in rows] == [
        ("Password policy", "\n\n".join(["# Password policy", *paragraphs])),
        ("Password policy", "\n\n".join(["# Password policy", *paragraphs])),
        ("Refund policy for customers", "\n\n".join(["# Refund policy for customers", *paragraphs])),
        ("Password policy", "\n\n".join(["# Password policy", *paragraphs])),
    ]


def test_a_lost_heading_is_put_back_only_next_to_the_text_it_heads_and_as_written(tmp_path: Path) -> None:
    # A cookie banner's heading, whose own text trafilatura dropped, headed the page's refund policy; and a
    # heading's "a\*b" read "a*b": its backslash went as one of the escapes of trafilatura's Markdown. An h1
    # followed by an author line (share buttons, a breadcrumb) that trafilatura drops heads the text its own
    # element holds: it was no longer put back.
    paragraphs = [
        "Refunds take five days to reach the card used for the order, and a note is sent by email.",
        "Exchanges are free within thirty days of delivery for every item in the shop.",
    ]
    text = "".join(f"<p>{paragraph}</p>" for paragraph in paragraphs)
    banner = "<div class='cookie-banner'><h2>We value your privacy</h2><p>Accept cookies</p></div>"
    (tmp_path / "banner.html").write_text(f"<html><body>{banner}<div>{text}</div></body></html>")
    author = "<div class='author'>Written by Ann Lee</div>"
    (tmp_path / "refunds.html").write_text(f"<html><body><div><h1>Refund policy</h1>{author}{text}</div></body></html>")
    (tmp_path / "tips.html").write_text(f"<html><body><div><h1>C# *tips* [1] a\\*b</h1>{text}</div></body></html>")
    # A heading right in <body>, whose own element is the whole page, heads only the text right after it.
    bare = "<h2>We value your privacy</h2><div class='cookie-banner'><p>Accept cookies</p></div>"
    (tmp_path / "bare_banner.html").write_text(f"<html><body>{bare}<div>{text}</div></body></html>")
    rows, _ = read(tmp_path)
    assert [row["text"] for row in rows] == [
        "\n\n".join(paragraphs),
        "\n\n".join(paragraphs),
        "\n\n".join(["# Refund policy", *paragraphs]),
        "\n\n".join(["# C# *tips* [1] a\\*b", *paragraphs]),
    ]


def test_html_drops_navigation_and_footer(tmp_path: Path) -> None:
    (tmp_path / "shipping.html").write_text(HTML)
    rows, _ = read(tmp_path)
    text = "\n".join(r["text"] for r in rows)
    assert "same day" in text and "customs" in text
    assert "Log in" not in text and "Copyright" not in text
    assert rows[0]["title"] == "Shipping times"
    assert rows[-1]["title"] == "Shipping times › International"


def test_html_text_is_published_without_the_escapes_of_trafilaturas_markdown(tmp_path: Path) -> None:
    # Was: "Set max\_retry\_count to 5 \* 2 \[default\]", "\# of tickets", "1\. Open": Markdown escapes
    # in training text.
    (tmp_path / "guide.html").write_text(
        "<html><head><title>Retry guide</title></head><body><article><h1>Retry_settings</h1>"
        "<p>Set max_retry_count to 5 * 2 [default] for a_b and ~old~ values, or C:\\temp\\x.</p>"
        "<p># of tickets per agent is capped at twelve in the support queue each day.</p>"
        "<p>1. Open the console and check the queue before changing any settings.</p>"
        "<pre>retry_count = 5 * 2  # [default]</pre></article></body></html>"
    )
    [row], _ = read(tmp_path)
    assert row["text"] == (
        "# Retry_settings\n\n"
        "Set max_retry_count to 5 * 2 [default] for a_b and ~old~ values, or C:\\temp\\x.\n\n"
        "# of tickets per agent is capped at twelve in the support queue each day.\n\n"
        "1. Open the console and check the queue before changing any settings.\n\n"
        "retry_count = 5 * 2  # [default]"
    )
    assert row["title"] == "Retry_settings"


def test_a_web_pages_superscripts_and_subscripts_are_published_as_their_text(tmp_path: Path) -> None:
    # trafilatura's Markdown kept the tags: "footnote<sup>1</sup> here", "H<sub>2</sub>O" in training text.
    (tmp_path / "claims.html").write_text(
        "<html><head><title>Claims</title></head><body><article><p>Claim with a footnote"
        '<sup><a href="#fn1">1</a></sup> here: water is H<sub>2</sub>O and energy is mc<sup>2</sup>.</p>'
        "</article></body></html>"
    )
    [row], _ = read(tmp_path)
    assert row["text"] == "Claim with a footnote1 here: water is H2O and energy is mc2."


WEB_PAGE_HEADS = [
    "<title>Shipping times | ACME</title>",
    '<meta property="og:title" content="Returns"><title>Site</title>',
    '<meta name="title" content="Fish &amp;amp; chips   \n  menu">',
    '<script type="application/ld+json">{"@context": "https://schema.org", "@type": "Article", "headline": "Gift cards"}</script>',
    "",  # the page's only <h1>
]


@pytest.mark.parametrize("head", WEB_PAGE_HEADS)
def test_a_web_pages_title_is_trafilaturas_without_its_date_worked_out(
    head: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The title is the one of all of trafilatura's metadata, which worked out the page's date (htmldate),
    author, site name, categories and licence too for nothing: about four fifths of the title's cost."""
    import trafilatura
    import trafilatura.metadata

    from connectors.documents import extract_html

    heading = "" if head else "<h1>Refunds policy</h1>"  # trafilatura takes a page's only <h1> before its <title>
    page = f"<html><head>{head}</head><body>{heading}<p>{PARAGRAPHS[0]}</p></body></html>"
    expected = trafilatura.extract_metadata(trafilatura.load_html(page)).title
    assert expected

    def no_date(*_: object, **__: object) -> None:
        raise AssertionError("the page's date was worked out")

    monkeypatch.setattr(trafilatura.metadata, "find_date", no_date)
    assert extract_html(page.encode(), "stem").title == expected


def test_markdown_sections_skip_code_fences_and_read_front_matter(tmp_path: Path) -> None:
    (tmp_path / "playbook.md").write_text(MARKDOWN)
    (tmp_path / "notes.txt").write_text("Plain notes.\n\nSecond paragraph.\n")
    rows, _ = read(tmp_path)
    by_title = {r["title"]: r for r in rows}
    assert set(by_title) == {"Support playbook", "Support playbook › Escalation", "Support playbook › Refunds", "notes"}
    assert "not a heading" in by_title["Support playbook › Escalation"]["text"]
    assert by_title["Support playbook › Refunds"]["source"]["line"] == 14
    assert by_title["notes"]["text"] == "Plain notes.\n\nSecond paragraph."


def test_chunker_respects_size_overlap_and_paragraphs() -> None:
    paragraphs = [f"Paragraph {i} says something about topic {i}." for i in range(40)]
    text = "\n\n".join(paragraphs)
    chunks = chunk_text(text, max_chars=300, overlap_chars=100)
    assert all(len(c.text) <= 300 for c in chunks)
    assert all(text[c.start : c.start + len(c.text)] == c.text for c in chunks)
    for chunk in chunks:  # every chunk is whole paragraphs
        assert all(p in paragraphs for p in chunk.text.split("\n\n"))
    for before, after in itertools.pairwise(chunks):  # consecutive chunks share a paragraph
        assert after.text.split("\n\n")[0] in before.text.split("\n\n")
    covered = {p for c in chunks for p in c.text.split("\n\n")}
    assert covered == set(paragraphs)
    long = "word " * 500 + "end."
    pieces = chunk_text(long, max_chars=200)
    assert all(len(p.text) <= 200 for p in pieces) and all(not p.text.startswith(" ") for p in pieces)
    assert "".join(p.text.replace(" ", "") for p in pieces) == long.replace(" ", "")


def test_an_overlap_over_half_a_chunk_is_a_recipe_error_naming_it() -> None:
    # With 3999 of 4000 and short paragraphs each chunk moved on by one paragraph: a 12 KB file of
    # 1,000 lines came out as 668 chunks of about 4,000 characters (2.7 MB of one text repeated).
    text = (
        "dataset: d\nsources:\n  - type: documents\n    path: x\n"
        "    chunk:\n      max_chars: 4000\n      overlap_chars: 3999\nrecord: {kind: document}\n"
    )
    with pytest.raises(
        RecipeError, match=r"sources.0.chunk.overlap_chars \(line 7\): .*at most half of max_chars \(2000\)"
    ):
        parse_recipe(text)
    parse_recipe(text.replace("3999", "2000"))  # half is the most: each chunk brings as much as it repeats
    with pytest.raises(ValueError, match="at most half"):
        chunk_text("a\n\nb", max_chars=200, overlap_chars=101)


def _pieces(text: str, max_chars: int) -> list[str]:
    """``text`` cut by the chunker, each piece within ``max_chars``, nothing lost or doubled but spaces."""
    pieces = [chunk.text for chunk in chunk_text(text, max_chars=max_chars)]
    assert all(len(piece) <= max_chars for piece in pieces)
    assert "".join(p.replace(" ", "") for p in pieces) == text.replace(" ", "")
    return pieces


def test_a_long_paragraph_is_not_cut_between_the_words_of_a_name() -> None:
    line = "the refund for this account was approved by Daniel Okafor and sent to Maria de la Cruz today " * 12
    for max_chars in range(60, 140):
        pieces = _pieces(line, max_chars)
        for before, after in itertools.pairwise(pieces):
            assert not (before.split()[-1][:1].isupper() and after[:1].isupper()), (max_chars, before, after)
    # Words all capitalised: cut at the last space all the same, never inside a word.
    title = "Quarterly Review Of The Northern Region Accounts " * 6
    assert all(not p.text.startswith(" ") and len(p.text) <= 50 for p in chunk_text(title, max_chars=50))


def test_a_long_paragraph_of_lines_without_spaces_is_cut_at_line_ends() -> None:
    # A list of addresses, one a line: cut only at spaces, it was cut inside an address at the limit
    # ("daniel.okafor@exa" | "mple.com"), half an address in each record, which the PII stage missed.
    lines = [f"customer{i:03d}.okafor@example.com" for i in range(40)]
    text = "\n".join(lines)
    for max_chars in range(60, 200, 7):
        pieces = [chunk.text for chunk in chunk_text(text, max_chars=max_chars)]
        assert all(len(piece) <= max_chars for piece in pieces)
        assert [line for piece in pieces for line in piece.split()] == lines, max_chars
    # A list of names, one a line: cut between two lines, not between a first name and a surname.
    names = "\n".join(["Daniel Okafor", "Maria Garcia", "Wei Zhang", "Amara Nwosu"] * 10)
    for max_chars in range(60, 200, 7):
        pieces = [chunk.text for chunk in chunk_text(names, max_chars=max_chars)]
        assert all(piece.strip().split("\n")[-1].count(" ") == 1 for piece in pieces), max_chars


def test_chunked_markdown_points_at_the_line_of_each_chunk(tmp_path: Path) -> None:
    lines = [f"Line {i} of the guide has a sentence about parcels." for i in range(1, 61)]
    (tmp_path / "guide.md").write_text("\n\n".join(lines) + "\n")
    rows, _ = read(tmp_path, chunk=ChunkConfig(max_chars=400, overlap_chars=60))
    assert len(rows) > 5
    for row in rows:
        first = row["text"].splitlines()[0]
        assert first == f"Line {(row['source']['line'] + 1) // 2} of the guide has a sentence about parcels."


@pytest.mark.parametrize(
    ("name", "content", "reason", "detail"),
    [
        ("locked.pdf", lambda: make_pdf(password="secret"), "encrypted", "password-protected"),
        ("broken.pdf", lambda: make_pdf()[:400], "corrupt", "not a readable PDF"),
        ("noise.pdf", lambda: b"%PDF-1.7\n" + bytes(range(256)) * 4, "corrupt", "not a readable PDF"),
        ("locked.docx", lambda: bytes.fromhex("d0cf11e0a1b11ae1") + b"\0" * 512, "encrypted", "password-protected"),
        ("broken.docx", lambda: make_docx()[:300], "corrupt", "not a readable DOCX"),
        ("latin1.txt", lambda: "caf\xe9".encode("latin-1"), "corrupt", "not UTF-8"),
        # It decoded as UTF-8 (a NUL after each letter) and was published as such.
        ("utf16.txt", lambda: "Refunds take five days.".encode("utf-16-le"), "corrupt", "holds NUL characters"),
        ("utf16.md", lambda: "# Refunds\n\nFive days.".encode("utf-16-le"), "corrupt", "holds NUL characters"),
    ],
)
def test_bad_documents_are_quarantined_and_the_run_goes_on(
    workdir: Path, name: str, content, reason: str, detail: str
) -> None:
    docs = workdir / "docs"
    docs.mkdir()
    (docs / name).write_bytes(content())
    (docs / "handbook.pdf").write_bytes(make_pdf())
    (docs / "playbook.md").write_text(MARKDOWN)
    result = run(
        workdir, {"dataset": "kb", "sources": [{"type": "documents", "path": "docs"}], "record": {"kind": "document"}}
    )
    counts = result.manifest.counts
    assert counts.reasons["quarantined"] == {reason: 1}
    assert counts.written == 4 + 3 and counts.input == 4 + 3 + 1
    [row] = set_aside(Path(result.version_uri))
    assert row["reason"] == reason and name in row["detail"] and detail in row["detail"]
    assert len(outputs(Path(result.version_uri))) == 7


def test_documents_from_s3(bucket: str) -> None:
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="kb/policy.docx", Body=make_docx())
    s3.put_object(Bucket=bucket, Key="kb/handbook.pdf", Body=make_pdf(pages=3))
    s3.put_object(Bucket=bucket, Key="kb/locked.pdf", Body=make_pdf(password="pw"))
    rows, aside = read(f"s3://{bucket}/kb/")
    assert [r["source"]["uri"] for r in rows] == [f"s3://{bucket}/kb/handbook.pdf"] * 3 + [
        f"s3://{bucket}/kb/policy.docx"
    ] * 3
    assert [a["reason"] for a in aside] == ["encrypted"]
    assert [r["source"]["page"] for r in rows[:3]] == [1, 2, 3]


def test_an_edited_document_replaces_its_sections(workdir: Path) -> None:
    docs = workdir / "docs"
    docs.mkdir()
    (docs / "playbook.md").write_text(MARKDOWN)
    (docs / "handbook.pdf").write_bytes(make_pdf())
    spec = {
        "dataset": "kb",
        "sources": [{"type": "documents", "path": "docs"}],
        "record": {"kind": "document"},
        "stages": [{"type": "exact_dedup"}, {"type": "near_dedup"}],
    }
    first = run(workdir, spec)
    (docs / "playbook.md").write_text(
        MARKDOWN.replace("within one hour", "within 30 minutes").replace(
            "## Refunds\n\nRefunds above 500 USD need a second approval.\n", ""
        )
    )
    second = run(workdir, spec)
    texts = [line["text"] for line in outputs(Path(second.version_uri))]
    joined = "\n".join(texts)
    assert "within 30 minutes" in joined and "within one hour" not in joined and "Refunds above" not in joined
    assert len(texts) == len(outputs(Path(first.version_uri))) - 1  # the PDF's sections carried, once each
    assert second.manifest.counts.carried == first.manifest.counts.written - 3


def test_a_section_repeated_in_one_document_is_a_record_of_its_own_and_a_duplicate(workdir: Path) -> None:
    docs = workdir / "docs"
    docs.mkdir()
    note = "<h2>Notes</h2><p>To be decided later by the team.</p>"
    (docs / "a.html").write_text(f"<main><h1>Doc</h1><p>Intro text for the document here.</p>{note}{note}</main>")
    spec = {"dataset": "kb", "sources": [{"type": "documents", "path": "docs"}], "record": {"kind": "document"}}
    result = run(workdir, spec)
    assert (result.manifest.counts.written, result.manifest.counts.duplicate) == (2, 1)
    texts = [line["text"] for line in outputs(Path(result.version_uri))]
    assert texts.count("## Notes\n\nTo be decided later by the team.") == 1


@pytest.mark.parametrize("stage", ["exact_dedup", "near_dedup"])
def test_the_first_of_repeated_sections_of_a_page_is_the_one_kept(workdir: Path, stage: str) -> None:
    # A page's sections share their source (its URI, no line, no page): the kept one was the one whose
    # id sorted first, here Part 5, not the first in the page.
    docs = workdir / "docs"
    docs.mkdir()
    words = "Passwords are rotated every ninety days and never sent by email to anyone"
    sections = [f"<h2>Part {n}</h2><p>{words}{'.' * n}</p>" for n in range(1, 7)]
    if stage == "exact_dedup":  # equal once case-folded, but each its own text
        sections = [f"<h2>Part</h2><p>{words[:n].upper()}{words[n:]}</p>" for n in range(1, 7)]
    (docs / "a.html").write_text(
        f"<main><h1>Doc</h1><p>What the security team asks of everyone.</p>{''.join(sections)}</main>"
    )
    spec = {
        "dataset": "kb",
        "sources": [{"type": "documents", "path": "docs"}],
        "record": {"kind": "document"},
        "stages": [{"type": stage, **({"threshold": 0.5} if stage == "near_dedup" else {})}],
    }
    result = run(workdir, spec)
    texts = [line["text"] for line in outputs(Path(result.version_uri))]
    intro, first = (row["text"] for row in read(docs)[0][:2])
    assert result.manifest.counts.duplicate == 5 and sorted(texts) == sorted([intro, first])  # in either split


def test_text_files_lines_end_in_a_newline_whatever_the_file_used(tmp_path: Path) -> None:
    (tmp_path / "crlf.txt").write_bytes(b"Line one.\r\nLine two.\r\n\r\nLine four.\r\n")
    (tmp_path / "cr.txt").write_bytes(b"Line one.\rLine two.\r\rLine four.\r")
    rows, _ = read(tmp_path)
    assert [row["text"] for row in rows] == ["Line one.\nLine two.\n\nLine four."] * 2


@pytest.mark.parametrize("stage", ["exact_dedup", "near_dedup"])
def test_equal_sections_of_documents_with_other_titles_are_duplicates(workdir: Path, stage: str) -> None:
    docs = workdir / "docs"
    docs.mkdir()
    note = "## Notes\n\nTo be decided later by the team, once the quarterly figures are in."
    for name in ("Returns", "Shipping"):
        (docs / f"{name.lower()}.md").write_text(f"# {name}\n\nHow {name.lower()} work at ACME.\n\n{note}\n")
    spec = {
        "dataset": "kb",
        "sources": [{"type": "documents", "path": "docs"}],
        "record": {"kind": "document"},
        "stages": [{"type": stage}],
    }
    result = run(workdir, spec)
    texts = [line["text"] for line in outputs(Path(result.version_uri))]  # the text format has no title
    assert texts.count(note) == 1 and result.manifest.counts.duplicate == 1


def test_the_clean_stage_keeps_the_markup_of_code_in_markdown_and_web_pages(workdir: Path) -> None:
    # Its HTML step stripped tags inside code as remnants: "Use the `<br>` element" was published as
    # "Use the `\n` element", and a fenced HTML sample lost its tags.
    docs = workdir / "docs"
    docs.mkdir()
    guide = (
        'Use the `<br>` element to break a line, and `<p class="note">` for notes.\n\n'
        "```html\n<p>First line<br>\nsecond line</p>\n```\n"
    )
    (docs / "guide.md").write_text(guide)
    # A web page's code, which trafilatura writes as Markdown code (its &lt;br&gt; decoded to <br>).
    page = (
        "<html><head><title>Line breaks</title></head><body><article><h1>Line breaks</h1>"
        "<p>Use the <code>&lt;br&gt;</code> element to break a line inside a paragraph of the page.</p>"
        "<pre><code>&lt;p&gt;First line&lt;br&gt;\nsecond line&lt;/p&gt;</code></pre></article></body></html>"
    )
    (docs / "breaks.html").write_text(page)
    spec = {
        "dataset": "kb",
        "sources": [{"type": "documents", "path": "docs"}],
        "record": {"kind": "document"},
        "stages": [{"type": "clean"}],
    }
    result = run(workdir, spec)
    texts = sorted(line["text"] for line in outputs(Path(result.version_uri)))
    assert texts == [
        "# Line breaks\n\nUse the `<br>` element to break a line inside a paragraph of the page.\n\n"
        "```\n<p>First line<br>\nsecond line</p>\n```",
        guide.strip(),
    ]
    assert "html_removed" not in result.manifest.stats["stages"]["clean"]  # no remnant was removed


def test_a_long_paragraph_is_not_cut_at_a_no_break_space_while_a_space_will_do() -> None:
    # A no-break space joins what it stands between ("10\u00a0000 euros", "12\u00a0kg"): taken for a space, a
    # piece ended "10" and the next began "000 euros".
    line = "the parcel was 12\u00a0kg and cost 10\u00a0000 euros, paid on page\u00a03 of the form. " * 6
    for max_chars in range(30, 120):
        pieces = _pieces(line, max_chars)
        assert not [p for p in pieces if p.startswith(("kg", "000", "3 "))], (max_chars, pieces)
    # A run of them longer than a piece: cut at one all the same, not inside a number.
    assert [chunk.text for chunk in chunk_text("12\u00a0345\u00a0678\u00a0901", max_chars=8)] == [
        "12\u00a0345\u00a0",
        "678\u00a0901",
    ]


def _cut_inside_a_number(text: str, at: int) -> bool:
    """Whether a cut at ``at`` in ``text`` falls between two digit groups of a number, spaces around it or not."""
    before, after = text[:at].rstrip(), text[at:].lstrip()
    return bool(before and before[-1] in "0123456789)+(" and re.match(r"\(?\d", after))


def test_a_long_paragraph_is_not_cut_between_the_digit_groups_of_a_number() -> None:
    # A cut on the space between two groups ("card 4111 1111 " | "1111 1111", "+1 415 555 " | "0100") left part
    # of the number in each piece, and the PII stage, which reads one piece at a time, found it in neither.
    line = (
        "the refund went to card 4111 1111 1111 1111 and the desk called +1 (415) 555 0100 to confirm "
        "that the iban DE89 3704 0044 0532 0130 00 was right for the account "
    ) * 6
    for max_chars in range(60, 200):
        for overlap_chars in (0, max_chars // 3):
            chunks = chunk_text(line, max_chars, overlap_chars)
            assert all(len(chunk.text) <= max_chars for chunk in chunks)
            cuts = [chunk.start for chunk in chunks[1:]] + [chunk.start + len(chunk.text) for chunk in chunks[:-1]]
            assert not [at for at in cuts if _cut_inside_a_number(line, at)], (max_chars, overlap_chars, chunks)
    # A wall of digit groups longer than a piece: cut at a space all the same, never inside a group.
    assert all(group == "4111" for piece in _pieces("4111 " * 20, max_chars=22) for group in piece.split())


def test_a_space_in_a_long_paragraph_is_judged_by_the_words_next_to_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each space tried was judged with the whole piece up to it and from it on, copied: in a paragraph of numbers,
    # every space inside one, cutting took time quadratic in max_chars (4 MB at max_chars 1M: minutes).
    import connectors.chunk as chunk

    judged: list[int] = []
    judge = chunk._inside_a_name_or_number

    def judging(before: str, after: str) -> bool:
        judged.append(len(before) + len(after))
        return judge(before, after)

    monkeypatch.setattr(chunk, "_inside_a_name_or_number", judging)
    text = " ".join(f"{n % 90 + 10}" for n in range(30_000)) + " to Maria de la Cruz"
    for max_chars, overlap_chars in ((20_000, 0), (20_000, 2_000), (500, 100)):
        chunks = chunk_text(text, max_chars, overlap_chars)
        assert all(len(piece.text) <= max_chars for piece in chunks)
        assert all(len(group) == 2 for piece in chunks[:-1] for group in piece.text.split())  # cut at spaces
    assert len(judged) > 1000 and max(judged) <= 200  # a few words either side, however long the piece


def test_a_long_paragraph_is_not_cut_after_an_initial_a_title_or_a_particle_of_a_name() -> None:
    # A full stop after an initial was taken for a sentence end ("... by Daniel O." | "Okafor who"),
    # and a space before "de la" was free ("... to Maria" | "de la Cruz"): half a name in each piece,
    # and the PII stage, which reads one piece at a time, left "Okafor" and "Maria" in clear.
    line = (
        "the refund for this account was approved by Daniel O. Okafor who called twice, "
        "then Mr. Garcia and Dr. Whitfield sent it to Maria de la Cruz and Ludwig van der Berg. "
    ) * 6
    names = ("Daniel O. Okafor", "Mr. Garcia", "Dr. Whitfield", "Maria de la Cruz", "Ludwig van der Berg")
    for max_chars in range(60, 200):
        pieces = [chunk.text for chunk in chunk_text(line, max_chars=max_chars)]
        assert all(len(piece) <= max_chars for piece in pieces)
        assert "".join(p.replace(" ", "") for p in pieces) == line.replace(" ", "")  # nothing lost or doubled
        for piece in pieces:
            cut = [name for name in names if piece.rstrip().endswith(tuple(name.split()[:-1]))]
            assert not cut, (max_chars, piece)


def _overlaps(chunks: list[Chunk], max_chars: int, overlap_chars: int) -> list[int]:
    """How much each chunk repeats of the one before, once the chunks are checked to be exact, in order,
    within ``max_chars`` and repeating at most ``overlap_chars``."""
    assert all(len(chunk.text) <= max_chars for chunk in chunks)
    overlaps = [before.start + len(before.text) - after.start for before, after in itertools.pairwise(chunks)]
    assert all(before.start < after.start for before, after in itertools.pairwise(chunks))
    assert all(overlap <= overlap_chars for overlap in overlaps), overlaps
    return overlaps


def test_a_pdf_page_and_a_long_paragraph_are_chunked_with_overlap() -> None:
    # PDF text has no blank lines, so a page is one paragraph, cut into pieces back to back: overlap_chars
    # did nothing, and the sentence at each cut lost its context.
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    for number in range(1, 7):
        pdf.multi_cell(0, 8, f"Paragraph {number}. " + PARAGRAPHS[number % 3], new_x="LMARGIN", new_y="NEXT")
    text = extract_pdf(bytes(pdf.output()), "page").parts[0].text
    long_line = " ".join(f"Sentence {n} of the note is about the {n}th parcel sent abroad." for n in range(30))
    for paragraph in (text, long_line):
        chunks = chunk_text(paragraph, max_chars=400, overlap_chars=150)
        assert len(chunks) > 1 and all(paragraph[c.start : c.start + len(c.text)] == c.text for c in chunks)
        assert all(overlap > 0 for overlap in _overlaps(chunks, 400, 150))
        # Each chunk after the first starts at a sentence: the overlap steps back to a sentence end.
        assert all(re.match(r"Paragraph \d+\. |Sentence \d+ of ", c.text) for c in chunks[1:]), chunks
    assert all(overlap == 0 for overlap in _overlaps(chunk_text(long_line, max_chars=400), 400, 0))
    # Nor does a chunk start inside a name, which the PII stage, reading one chunk at a time, would miss.
    line = "the refund for this account was approved by Daniel Okafor and sent to Maria de la Cruz today " * 12
    for max_chars in range(60, 200, 3):
        for overlap_chars in range(20, max_chars // 2 + 1, 5):
            chunks = chunk_text(line, max_chars, overlap_chars)
            assert any(_overlaps(chunks, max_chars, overlap_chars))
            assert not [c for c in chunks if c.text.startswith(("Okafor", "de la", "la Cruz", "Cruz"))]


def test_a_numbered_label_is_no_sentence_end_to_cut_at() -> None:
    # "Paragraph 4." was a sentence end: the piece ended with the label, the next began with its text.
    line = " ".join(f"Paragraph {n}. " + PARAGRAPHS[n % 3] for n in range(1, 9))
    for max_chars in range(150, 400, 10):
        pieces = _pieces(line, max_chars)
        assert not [p for p in pieces if re.search(r"Paragraph \d+\.\s*$", p)], (max_chars, pieces)
    # A number that ends a sentence still ends it.
    assert _pieces("The total came to 25. " + "It was paid by card. " * 5, 40)[0] == "The total came to 25. "


def test_chunks_with_overlap_keep_every_invariant_on_random_texts() -> None:
    words = [
        "parcel", "refund", "the", "Daniel", "O.", "Okafor", "Mr.", "Maria", "de", "la", "Cruz", "cafe\u0301",
        "10\u00a0000", "\U0001f468\u200d\U0001f469\u200d\U0001f467", "\U0001f1eb\U0001f1f7", "\u4e2d\u6587\u4e2d\u6587",
        "https://example.com/a/very/long/path/without/spaces", "2.", "Chapter", "3.", "done.", "why?", "(sure.)",
    ]  # fmt: skip
    separators = [" "] * 12 + ["\n", "\n\n", "\n  \n"]
    generator = random.Random(181)
    for _ in range(300):
        text = "".join(generator.choice(words) + generator.choice(separators) for _ in range(generator.randint(1, 150)))
        max_chars = generator.randint(20, 300)
        overlap_chars = generator.randint(0, max_chars // 2)
        chunks = chunk_text(text, max_chars, overlap_chars)
        _overlaps(chunks, max_chars, overlap_chars)
        assert all(text[c.start : c.start + len(c.text)] == c.text for c in chunks)
        covered = set().union(*(range(c.start, c.start + len(c.text)) for c in chunks))
        assert all(i in covered for i, character in enumerate(text) if not character.isspace()), (text, chunks)
        boundaries = {match.start() for match in regex.finditer(r"\X", text)} | {len(text)}
        assert all({c.start, c.start + len(c.text)} <= boundaries for c in chunks), (text, chunks)


def test_a_file_opening_with_blank_lines_points_at_the_line_its_text_starts_on(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("\n\n\nRefunds take five days.\n")
    (tmp_path / "guide.md").write_text("---\ntitle: Guide\n---\n\n\nIntro for agents.\n\n# Refunds\n\nFive days.\n")
    rows, _ = read(tmp_path)
    assert [(row["source"]["uri"].rsplit("/", 1)[1], row["source"]["line"]) for row in rows] == [
        ("guide.md", 6),
        ("guide.md", 8),
        ("notes.txt", 4),
    ]
    # Chunks count from there too.
    (tmp_path / "guide.md").unlink()
    (tmp_path / "notes.txt").write_text("\n\n" + "\n\n".join(f"Paragraph {i} about parcels." for i in range(40)))
    rows, _ = read(tmp_path, chunk=ChunkConfig(max_chars=200, overlap_chars=0))
    for row in rows:
        number = int(row["text"].split()[1])
        assert row["source"]["line"] == 3 + 2 * number


def test_an_empty_web_page_is_quarantined_without_the_html_parsers_own_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "empty.html").write_text("")
    (tmp_path / "blank.htm").write_text("  \n")
    with caplog.at_level(logging.DEBUG):
        rows, aside = read(tmp_path)
    assert rows == [] and [row["reason"] for row in aside] == ["no_text", "no_text"]
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []


def test_a_pdf_page_with_only_its_running_header_and_footer_is_quarantined_not_dropped(workdir: Path) -> None:
    # A scan put into a PDF that stamps a header and "Page N of M" on every page: once those were
    # dropped the page had no text, and it was left out, in no count of the manifest.
    pdf = HandbookPDF()
    for number in range(1, 5):
        pdf.add_page()
        if number != 3:
            pdf.set_font("helvetica", size=12)
            pdf.multi_cell(0, 8, f"Chapter {number}. " + PARAGRAPHS[number % 3])
    (workdir / "docs").mkdir()
    (workdir / "docs" / "stamped.pdf").write_bytes(bytes(pdf.output()))
    result = run(
        workdir, {"dataset": "kb", "sources": [{"type": "documents", "path": "docs"}], "record": {"kind": "document"}}
    )
    counts = result.manifest.counts
    assert (counts.input, counts.written, counts.reasons) == (4, 3, {"quarantined": {"no_text": 1}})
    [row] = set_aside(Path(result.version_uri))
    assert row["source"]["page"] == 3 and "(page 3): no text on this page" in row["detail"]
    assert all("ACME Internal" not in line["text"] for line in outputs(Path(result.version_uri)))


def test_markdown_sections_point_at_their_line_past_a_form_feed_or_line_separator(tmp_path: Path) -> None:
    # str.splitlines() broke lines at U+2028 and the form feed too: each section after one was said
    # to start a line further down than it does.
    (tmp_path / "guide.md").write_text("# Parcels\n\nSame day.\u2028Next day abroad.\x0c\n\n# Refunds\n\nFive days.\n")
    rows, _ = read(tmp_path)
    assert [(row["source"]["line"], row["text"].splitlines()[0]) for row in rows] == [
        (1, "# Parcels"),
        (5, "# Refunds"),
    ]


def test_chunked_docx_points_at_the_paragraph_each_chunk_starts_on(tmp_path: Path) -> None:
    # A chunk's place was the section's paragraph plus the newlines before it: each paragraph joined
    # by a blank line counted two, so the fourth paragraph was said to be the seventh.
    document = docx.Document()
    document.add_heading("Refunds", level=1)
    for number in range(2, 12):
        document.add_paragraph(f"Paragraph {number}. " + PARAGRAPHS[0] * 3)
        if number == 6:
            document.add_paragraph("")  # an empty paragraph is a paragraph too
    document.save(tmp_path / "refunds.docx")
    rows, _ = read(tmp_path, chunk=ChunkConfig(max_chars=700, overlap_chars=300))
    assert len(rows) > 4
    for row in rows[1:]:
        number = int(row["text"].split()[1].rstrip("."))
        assert row["source"]["line"] == number + (number > 6), row
    assert rows[0]["source"]["line"] == 1  # the heading's


def _text_box(text: str) -> str:
    """A run holding a text box as Word writes one: a drawing, and the same box in VML for older readers."""
    content = f"<w:txbxContent><w:p><w:r><w:t>{text}</w:t></w:r></w:p></w:txbxContent>"
    return (
        f"<w:r {docx.oxml.ns.nsdecls('w', 'wp', 'a')} "
        'xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006" '
        'xmlns:wps="http://schemas.microsoft.com/office/word/2010/wordprocessingShape" '
        'xmlns:v="urn:schemas-microsoft-com:vml">'
        '<mc:AlternateContent><mc:Choice Requires="wps"><w:drawing><wp:anchor><a:graphic><a:graphicData>'
        f"<wps:wsp><wps:txbx>{content}</wps:txbx></wps:wsp>"
        "</a:graphicData></a:graphic></wp:anchor></w:drawing></mc:Choice>"
        f"<mc:Fallback><w:pict><v:shape><v:textbox>{content}</v:textbox></v:shape></w:pict></mc:Fallback>"
        "</mc:AlternateContent></w:r>"
    )


def test_docx_text_in_a_text_box_is_read_once(tmp_path: Path) -> None:
    # Word shows it on the page; python-docx's text passes over it, and it was left out unseen.
    document = docx.Document()
    document.add_heading("Claim form", level=1)
    paragraph = document.add_paragraph("Fill in every field.")
    paragraph._p.append(docx.oxml.parse_xml(_text_box("Policy number: write it as on your card.")))
    document.add_paragraph("Send it to the claims desk.")
    document.save(tmp_path / "form.docx")
    [row], _ = read(tmp_path)
    assert row["text"] == (
        "Claim form\n\nFill in every field.\n\nPolicy number: write it as on your card.\n\nSend it to the claims desk."
    )


def test_a_web_page_in_the_charset_it_declares_is_read_in_it(tmp_path: Path) -> None:
    # It was quarantined as "not UTF-8 text": a browser reads it in the charset its <meta> declares.
    page = (
        "<html><head><meta http-equiv='Content-Type' content='text/html; charset=iso-8859-1'>"
        "<title>Caf\u00e9 menu</title></head><body><article><h1>Caf\u00e9 menu</h1>"
        "<p>Our \u201cpetit d\u00e9jeuner\u201d is served until eleven \u2013 every day of the week, "
        "in the caf\u00e9 on the ground floor.</p></article></body></html>"
    )
    (tmp_path / "menu.html").write_bytes(page.encode("cp1252"))  # what "iso-8859-1" means to a browser
    (tmp_path / "undeclared.html").write_bytes(page.replace("charset=iso-8859-1", "").encode("cp1252"))
    rows, aside = read(tmp_path)
    [row] = rows
    assert "Our \u201cpetit d\u00e9jeuner\u201d is served until eleven \u2013 every day" in row["text"]
    assert row["title"] == "Caf\u00e9 menu"
    assert [(a["source"]["uri"].rsplit("/", 1)[1], a["reason"]) for a in aside] == [("undeclared.html", "corrupt")]


def test_a_web_page_declaring_utf_16_is_read_as_utf_8_as_browsers_do(tmp_path: Path) -> None:
    # Its bytes (an ASCII tag declared them) were decoded as UTF-16: CJK garbage, quarantined no_text.
    page = (
        '<html><head><meta charset="utf-16"><title>Refunds</title></head><body><article><h1>Refunds</h1>'
        "<p>Refunds are issued within fourteen days \u2013 once support has approved the request.</p>"
        "</article></body></html>"
    )
    (tmp_path / "stray.html").write_bytes(page.encode("cp1252"))  # \u2013 is the byte 0x96: not UTF-8
    (tmp_path / "nul.html").write_bytes(page.encode() + b"\0")
    rows, aside = read(tmp_path)
    assert rows == []
    assert sorted(
        (a["source"]["uri"].rsplit("/", 1)[1], a["reason"], a["detail"].split(": ", 1)[1]) for a in aside
    ) == [
        (
            "nul.html",
            "corrupt",
            "not UTF-8 text: it holds NUL characters (UTF-16, or not text at all) (it declares "
            "utf-16, which browsers read as UTF-8)",
        ),
        (
            "stray.html",
            "corrupt",
            "not UTF-8 text: byte 0x96 at line 1, column 139 (it declares utf-16, which browsers read as UTF-8)",
        ),
    ]


def test_a_docx_paragraph_in_the_title_style_that_is_not_the_title_is_kept(tmp_path: Path) -> None:
    # Every paragraph in the Title style was taken for the title and left out of the records: one the
    # file's properties title otherwise (a template's name left there), and a second part's title.
    document = docx.Document()
    document.core_properties.title = "Company letter template"
    document.add_paragraph("Refund policy for EU customers", style="Title")
    document.add_paragraph("Refunds are paid within 14 days.")
    document.add_paragraph("Part two: shipping", style="Title")
    document.add_paragraph("Parcels ship the same day.")
    document.save(tmp_path / "policy.docx")
    rows, _ = read(tmp_path)
    assert [(row["title"], row["text"], row["source"]["line"]) for row in rows] == [
        (
            "Company letter template › Refund policy for EU customers",
            "Refund policy for EU customers\n\nRefunds are paid within 14 days.",
            1,
        ),
        ("Company letter template › Part two: shipping", "Part two: shipping\n\nParcels ship the same day.", 3),
    ]


def test_docx_footnotes_and_endnotes_are_read_after_the_paragraph_that_refers_to_them(tmp_path: Path) -> None:
    # python-docx does not read them: "Gift cards are not refunded." was in no record.
    from docx.opc.constants import CONTENT_TYPE, RELATIONSHIP_TYPE
    from docx.opc.packuri import PackURI
    from docx.opc.part import Part

    w = docx.oxml.ns.nsdecls("w")
    document = docx.Document()
    document.add_heading("Refunds", level=1)
    paragraph = document.add_paragraph("Refunds are paid within 14 days.")
    paragraph._p.append(docx.oxml.parse_xml(f'<w:r {w}><w:footnoteReference w:id="1"/></w:r>'))
    paragraph._p.append(docx.oxml.parse_xml(f'<w:del {w}><w:r><w:footnoteReference w:id="2"/></w:r></w:del>'))
    document.add_paragraph("Ask the desk for a form.")
    for kind, content_type in (("footnote", CONTENT_TYPE.WML_FOOTNOTES), ("endnote", CONTENT_TYPE.WML_ENDNOTES)):
        texts = {"1": "Gift cards are not refunded.", "2": "A note whose reference was deleted."}
        notes = "".join(
            f'<w:{kind} w:id="{i}"><w:p><w:r><w:{kind}Ref/></w:r><w:r><w:t xml:space="preserve"> {t}</w:t></w:r></w:p>'
            f"</w:{kind}>"
            for i, t in texts.items()
        )
        separator = f'<w:{kind} w:type="separator" w:id="-1"><w:p><w:r><w:separator/></w:r></w:p></w:{kind}>'
        xml = f"<w:{kind}s {w}>{separator}{notes}</w:{kind}s>".encode()
        part = Part(PackURI(f"/word/{kind}s.xml"), content_type, xml, document.part.package)
        document.part.relate_to(part, getattr(RELATIONSHIP_TYPE, f"{kind.upper()}S"))
        if kind == "endnote":
            closing = document.add_paragraph("Parcels ship the same day.")
            closing._p.append(docx.oxml.parse_xml(f'<w:r {w}><w:endnoteReference w:id="1"/></w:r>'))
    document.save(tmp_path / "refunds.docx")
    [row], _ = read(tmp_path)
    assert row["text"] == (
        "Refunds\n\nRefunds are paid within 14 days.\n\nGift cards are not refunded.\n\nAsk the desk for a form."
        "\n\nParcels ship the same day.\n\nGift cards are not refunded."
    )


def test_a_footnote_that_refers_to_itself_is_read_once(tmp_path: Path) -> None:
    # Notes inside notes were followed: a crafted file looped until Python's recursion limit.
    from docx.opc.constants import CONTENT_TYPE, RELATIONSHIP_TYPE
    from docx.opc.packuri import PackURI
    from docx.opc.part import Part

    w = docx.oxml.ns.nsdecls("w")
    document = docx.Document()
    paragraph = document.add_paragraph("Refunds are paid within 14 days.")
    paragraph._p.append(docx.oxml.parse_xml(f'<w:r {w}><w:footnoteReference w:id="1"/></w:r>'))
    note = '<w:footnote w:id="1"><w:p><w:r><w:t>See this note.</w:t></w:r><w:r><w:footnoteReference w:id="1"/></w:r>'
    xml = f"<w:footnotes {w}>{note}</w:p></w:footnote></w:footnotes>".encode()
    part = Part(PackURI("/word/footnotes.xml"), CONTENT_TYPE.WML_FOOTNOTES, xml, document.part.package)
    document.part.relate_to(part, RELATIONSHIP_TYPE.FOOTNOTES)
    document.save(tmp_path / "loop.docx")
    rows, aside = read(tmp_path)
    assert aside == [] and [row["text"] for row in rows] == ["Refunds are paid within 14 days.\n\nSee this note."]


def test_an_endnote_cited_only_in_a_footnote_is_read_once_after_it(tmp_path: Path) -> None:
    # A note's own references were not followed: the endnote was in no record, and counted nowhere. Notes
    # citing each other (footnote 2 and endnote 1) are each read once, at the first reference, not in a loop.
    from docx.opc.constants import CONTENT_TYPE, RELATIONSHIP_TYPE
    from docx.opc.packuri import PackURI
    from docx.opc.part import Part

    w = docx.oxml.ns.nsdecls("w")
    document = docx.Document()
    paragraph = document.add_paragraph("Refunds are paid within 14 days.")
    paragraph._p.append(docx.oxml.parse_xml(f'<w:r {w}><w:footnoteReference w:id="1"/></w:r>'))
    paragraph._p.append(docx.oxml.parse_xml(f'<w:r {w}><w:footnoteReference w:id="2"/></w:r>'))
    notes = {
        "footnote": [("1", "Gift cards are not refunded.", "endnote", "1"), ("2", "Nor vouchers.", "endnote", "1")],
        "endnote": [("1", "Store credit is, see footnote 2.", "footnote", "2")],
    }
    for kind, content_type in (("footnote", CONTENT_TYPE.WML_FOOTNOTES), ("endnote", CONTENT_TYPE.WML_ENDNOTES)):
        xml = "".join(
            f'<w:{kind} w:id="{i}"><w:p><w:r><w:t>{text}</w:t></w:r><w:r><w:{cited}Reference w:id="{to}"/></w:r>'
            f"</w:p></w:{kind}>"
            for i, text, cited, to in notes[kind]
        )
        part = Part(PackURI(f"/word/{kind}s.xml"), content_type, f"<w:{kind}s {w}>{xml}</w:{kind}s>".encode(), None)
        document.part.relate_to(part, getattr(RELATIONSHIP_TYPE, f"{kind.upper()}S"))
    document.save(tmp_path / "refunds.docx")
    rows, aside = read(tmp_path)
    assert aside == [] and [row["text"].split("\n\n") for row in rows] == [
        [
            "Refunds are paid within 14 days.",
            "Gift cards are not refunded.",
            "Store credit is, see footnote 2.",
            "Nor vouchers.",
        ]
    ]


def test_docx_paragraphs_are_numbered_as_word_counts_them_past_a_text_box(tmp_path: Path) -> None:
    # A text box's paragraphs were numbered as the body's: every section after one pointed past its heading.
    document = docx.Document()
    document.add_heading("Claim form", level=1)
    paragraph = document.add_paragraph("Fill in every field.")
    paragraph._p.append(docx.oxml.parse_xml(_text_box("Policy number: write it as on your card.")))
    document.add_heading("Sending it", level=1)
    document.add_paragraph("Send it to the claims desk.")
    document.save(tmp_path / "form.docx")
    rows, _ = read(tmp_path)
    assert [(row["title"], row["source"]["line"]) for row in rows] == [
        ("Claim form", 1),
        ("Claim form › Sending it", 3),
    ]


def test_a_docx_of_many_footnotes_looks_each_style_up_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each paragraph's style was looked up through every style of the file, twice, and each note is a
    # paragraph: a file of 10,000 notes (a legal text, a thesis) took most of a minute; every note is still read.
    # Counted, not timed: python-docx's lookup (``Paragraph.style``) goes through every style of the file.
    # So a few hundred notes show a second lookup of a style as well as 10,000 would, in a fiftieth of the time.
    from docx.opc.constants import CONTENT_TYPE, RELATIONSHIP_TYPE
    from docx.opc.packuri import PackURI
    from docx.opc.part import Part

    w = docx.oxml.ns.nsdecls("w")
    document = docx.Document()
    count = 200
    notes = "".join(
        f'<w:footnote w:id="{i}"><w:p><w:r><w:t>Note {i}.</w:t></w:r></w:p></w:footnote>' for i in range(count)
    )
    xml = f"<w:footnotes {w}>{notes}</w:footnotes>".encode()
    part = Part(PackURI("/word/footnotes.xml"), CONTENT_TYPE.WML_FOOTNOTES, xml, document.part.package)
    document.part.relate_to(part, RELATIONSHIP_TYPE.FOOTNOTES)
    for i in range(count):
        paragraph = document.add_paragraph(f"Clause {i}.")
        paragraph._p.append(docx.oxml.parse_xml(f'<w:r {w}><w:footnoteReference w:id="{i}"/></w:r>'))
    document.save(tmp_path / "statute.docx")
    lookups = []
    style = docx.text.paragraph.Paragraph.style

    def counted(paragraph: docx.text.paragraph.Paragraph) -> object:
        lookups.append(paragraph._p.style)
        return style.fget(paragraph)

    monkeypatch.setattr(docx.text.paragraph.Paragraph, "style", property(counted, style.fset))
    [row], aside = read(tmp_path)
    assert len(lookups) == len(set(lookups))  # once per style the file's paragraphs name, not per paragraph
    assert aside == [] and row["text"].split("\n\n") == [
        t for i in range(count) for t in (f"Clause {i}.", f"Note {i}.")
    ]


def test_a_web_page_with_a_byte_order_mark_is_read_in_the_encoding_it_names(tmp_path: Path) -> None:
    # A UTF-16 page with a byte-order mark was quarantined as "not UTF-8 text"; browsers read it by
    # its mark, whatever it declares. A UTF-8 mark wins too: its page is not read as the Latin-1 it declares.
    page = (
        '<html><head><meta charset="{charset}"><title>Caf\u00e9 menu</title></head><body><article>'
        "<h1>Caf\u00e9 menu</h1><p>Our \u201cpetit d\u00e9jeuner\u201d is served until eleven \u2013 every "
        "day of the week, in the caf\u00e9 on the ground floor.</p></article></body></html>"
    )
    (tmp_path / "le.html").write_bytes(codecs.BOM_UTF16_LE + page.format(charset="utf-16").encode("utf-16-le"))
    (tmp_path / "be.html").write_bytes(codecs.BOM_UTF16_BE + page.format(charset="iso-8859-1").encode("utf-16-be"))
    (tmp_path / "mixed.html").write_bytes(codecs.BOM_UTF8 + page.format(charset="iso-8859-1").encode("cp1252"))
    rows, aside = read(tmp_path)
    assert sorted((row["source"]["uri"].rsplit("/", 1)[1], row["title"]) for row in rows) == [
        ("be.html", "Caf\u00e9 menu"),
        ("le.html", "Caf\u00e9 menu"),
    ]
    assert all("Our \u201cpetit d\u00e9jeuner\u201d is served until eleven \u2013 every" in row["text"] for row in rows)
    assert [(a["source"]["uri"].rsplit("/", 1)[1], a["reason"]) for a in aside] == [("mixed.html", "corrupt")]


def test_a_docx_first_section_points_at_its_text_and_its_title_is_matched_whatever_the_case(tmp_path: Path) -> None:
    # The first section said line 1 whatever came before its text (a Title, empty paragraphs), and a
    # Title paragraph differing from the file's title property only in case became a section of its own.
    document = docx.Document()
    document.core_properties.title = "Returns Policy"
    document.add_paragraph("Returns policy", style="Title")
    document.add_paragraph("")
    document.add_paragraph("")
    document.add_paragraph("This policy applies to all stores.")
    document.add_heading("Refunds", level=1)
    document.add_paragraph(PARAGRAPHS[0])
    document.save(tmp_path / "policy.docx")
    rows, _ = read(tmp_path)
    assert [(row["title"], row["text"], row["source"]["line"]) for row in rows] == [
        ("Returns Policy", "This policy applies to all stores.", 4),
        ("Returns Policy › Refunds", "Refunds\n\n" + PARAGRAPHS[0], 5),
    ]


def test_a_markdown_file_opening_with_a_rule_keeps_the_text_before_the_next_rule(tmp_path: Path) -> None:
    # Any text between a first line "---" and the next was taken for front matter and dropped unseen. As
    # CommonMark reads it, the first "---" is a rule and the text over the second a heading (as GitHub shows it),
    # which, with no text of its own, opens the next section.
    (tmp_path / "notice.md").write_text(
        "---\nThe refund rules changed in March 2026.\n---\n\n# Refunds\n\nFive days.\n"
    )
    rows, aside = read(tmp_path)
    assert aside == []
    assert [(row["source"]["line"], row["text"]) for row in rows] == [
        (2, "The refund rules changed in March 2026.\n---\n\n# Refunds\n\nFive days."),
    ]


def test_a_heading_with_no_text_of_its_own_opens_the_next_section(tmp_path: Path) -> None:
    # "# Security" straight over "## Passwords" was a record of its own, its whole text the heading.
    (tmp_path / "policy.md").write_text(
        "# Security\n\n## Passwords\n\nUse long ones.\n\n## Keys\n\n---\n\n### Rotation\n\nYearly.\n"
    )
    rows, _ = read(tmp_path)
    assert [(row["title"], row["source"]["line"], row["text"]) for row in rows] == [
        ("Security › Passwords", 1, "# Security\n\n## Passwords\n\nUse long ones."),
        ("Security › Rotation", 7, "## Keys\n\n---\n\n### Rotation\n\nYearly."),
    ]


@pytest.mark.parametrize(
    ("front_matter", "title"),
    [
        ("title: >-\n  Returns and\n  refunds\nauthor: Dana", "Returns and refunds"),  # folded over lines
        ("title: Returns # draft", "Returns"),  # a YAML comment
        ("title: 'It''s returns'", "It's returns"),  # a quote escaped in quotes
        ('title: "Returns: the rules"', "Returns: the rules"),
        # As the file shows it, not as YAML 1.1 reads it: a boolean (Norway), an octal number, a float.
        ("title: NO", "NO"),
        ("title: 0755", "0755"),
        ("title: 1.10\ntags: [a, b]", "1.10"),
        ("title: ~\nauthor: Dana", "returns"),  # no title: the file's name
    ],
)
def test_a_markdown_title_in_front_matter_is_read_as_yaml(tmp_path: Path, front_matter: str, title: str) -> None:
    (tmp_path / "returns.md").write_text(f"---\n{front_matter}\n---\n\nBody text.\n")
    [row] = read(tmp_path)[0]
    assert row["title"] == title and row["text"] == "Body text."
    assert row["source"]["line"] == front_matter.count("\n") + 5  # past the closing "---" and a blank line


def test_a_markdown_files_toml_front_matter_is_read_as_yaml_front_matter_is(tmp_path: Path) -> None:
    # Hugo's "+++" front matter was a record of its own, and the title the first heading's.
    (tmp_path / "returns.md").write_text(
        '+++\ntitle = "Returns and refunds"\ndate = 2026-03-01\ntags = ["a"]\n+++\n\n# Refunds\n\nFive days.\n'
    )
    (tmp_path / "keys.md").write_text('+++\ndraft = true\n[params]\nteam = "ops"\n+++\n\nSeven days.\n')
    # Not TOML, or not front matter's keys: the file's text, as such a block between "---" lines is.
    (tmp_path / "broken.md").write_text('+++\ntitle = "Returns\n+++\n\nTen days.\n')
    (tmp_path / "sentence.md").write_text('+++\nNote = "refunds take five days"\n+++\n\nTwo days.\n')
    rows, aside = read(tmp_path)
    assert aside == []
    assert sorted((row["title"], row["text"], row["source"]["line"]) for row in rows) == [
        ("Returns and refunds › Refunds", "# Refunds\n\nFive days.", 7),
        ("broken", '+++\ntitle = "Returns\n+++\n\nTen days.', 1),
        ("keys", "Seven days.", 7),
        ("sentence", '+++\nNote = "refunds take five days"\n+++\n\nTwo days.', 1),
    ]


def test_a_markdown_code_block_ends_only_at_a_fence_like_the_one_that_opened_it(tmp_path: Path) -> None:
    # Any fence toggled the block: "~~~" or a shorter "```" inside a code block ended it, so a shell
    # comment below was a heading that cut the block in two, and the heading after the block was not one.
    (tmp_path / "guide.md").write_text(
        "# Markdown\n\n````md\n```bash\n# install it\n```\n````\n\n"
        "# Shell\n\n```\n~~~\n# a comment\n```\n\n# Refunds\n\nFive days.\n"
    )
    rows, _ = read(tmp_path)
    assert [(row["title"], row["source"]["line"]) for row in rows] == [
        ("Markdown", 1),
        ("Markdown › Shell", 9),
        ("Markdown › Refunds", 16),
    ]


def test_markdown_headings_are_those_commonmark_reads(tmp_path: Path) -> None:
    # Underlined headings and "#" headings indented by up to three spaces start sections; a "#" line in an
    # indented code block, a quote or a list item does not (the hand-written rules had it the other way).
    (tmp_path / "guide.md").write_text(
        "Returns policy\n==============\n\nKeep the receipt.\n\n"
        "   ## Refunds\n\nFive days.\n\n"
        "    # a shell comment in indented code\n\n"
        "> # a quoted heading\n\n- # a heading in a list item\n\n"
        "Exchanges\n---------\n\nWithin thirty days.\n"
    )
    rows, _ = read(tmp_path)
    assert [(row["title"], row["source"]["line"]) for row in rows] == [
        ("Returns policy", 1),
        ("Returns policy › Refunds", 6),
        ("Returns policy › Exchanges", 16),
    ]
    assert "a heading in a list item" in rows[1]["text"]


def test_text_and_markdown_in_utf_16_with_a_byte_order_mark_are_read_in_it(tmp_path: Path) -> None:
    # Notepad's "Unicode" (UTF-16 with a byte-order mark) was quarantined as "not UTF-8 text", though the
    # mark names the encoding, as it does for a web page; without a mark, UTF-16 is still quarantined.
    (tmp_path / "notes.txt").write_bytes(codecs.BOM_UTF16_LE + "Caf\u00e9 opens at nine.\r\n".encode("utf-16-le"))
    (tmp_path / "guide.md").write_bytes(codecs.BOM_UTF16_BE + "# Caf\u00e9\n\nOpen at nine.\n".encode("utf-16-be"))
    (tmp_path / "bare.txt").write_bytes("Caf\u00e9 opens at nine.".encode("utf-16-le"))
    rows, aside = read(tmp_path)
    assert [(row["title"], row["text"], row["source"]["line"]) for row in rows] == [
        ("Caf\u00e9", "# Caf\u00e9\n\nOpen at nine.", 1),
        ("notes", "Caf\u00e9 opens at nine.", 1),
    ]
    assert [(a["source"]["uri"].rsplit("/", 1)[1], a["reason"]) for a in aside] == [("bare.txt", "corrupt")]


def test_a_web_pages_noscript_text_is_not_published_nor_breaks_its_sections(tmp_path: Path) -> None:
    # Browsers run scripts, so they never show <noscript>; but its text made trafilatura's plain dump
    # of a short page look fuller than its extraction: one flat record, headings run into the text
    # ("International International parcels"), and "Please enable JavaScript" in the training text.
    (tmp_path / "returns.html").write_text(
        "<html><head><title>Returns</title></head><body><article><h1>Returns policy</h1>"
        "<p>Orders placed before noon leave the warehouse the same day.</p><h2>International</h2>"
        "<p>International parcels take five to ten working days.</p><div id='disqus_thread'></div>"
        "<noscript>Please enable JavaScript to view the comments.</noscript></article></body></html>"
    )
    (tmp_path / "app.html").write_text(
        "<html><head><title>App</title></head><body><noscript>You need to enable JavaScript to run this app."
        "</noscript><div id='root'></div></body></html>"
    )
    rows, aside = read(tmp_path)
    assert [(row["title"], row["text"]) for row in rows] == [
        ("Returns policy", "# Returns policy\n\nOrders placed before noon leave the warehouse the same day."),
        ("Returns policy › International", "## International\n\nInternational parcels take five to ten working days."),
    ]
    assert [(a["source"]["uri"].rsplit("/", 1)[1], a["reason"]) for a in aside] == [("app.html", "no_text")]


def _handbook(workdir: Path) -> tuple[dict, Path]:
    docs = workdir / "docs"
    docs.mkdir()
    (docs / "refunds.md").write_text(f"# Refunds\n\n{PARAGRAPHS[0]}\n")
    (docs / "gift-cards.md").write_text(f"# Gift cards\n\n{PARAGRAPHS[2]}\n")
    spec = {"dataset": "kb", "sources": [{"type": "documents", "path": "docs"}], "record": {"kind": "document"}}
    return spec, docs / "gift-cards.md"


def _refuse(monkeypatch: pytest.MonkeyPatch, refused: Path | None) -> None:
    """``refused`` cannot be opened (chmod 000 does not stop root, who may run the tests): by the reader,
    nor by the listing, which hashes a local file's bytes; None: every file can be again."""
    import connectors.documents as documents
    import connectors.state as state
    from connectors.storage import filesystem

    for module in (documents, state):
        monkeypatch.setattr(module, "filesystem", refusing(refused, filesystem) if refused else filesystem)


def test_a_document_that_cannot_be_read_is_quarantined_and_read_again_on_the_next_run(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # One file denied among many failed every run of a scheduled job, and nothing new was published.
    spec, denied = _handbook(workdir)
    _refuse(monkeypatch, denied)
    first = run(workdir, spec)
    counts = first.manifest.counts
    assert (counts.input, counts.written, counts.quarantined) == (2, 1, 1)
    assert counts.reasons["quarantined"] == {"unreadable": 1}
    [refused] = set_aside(Path(first.version_uri))
    assert refused["detail"] == f"{denied}: cannot read (Permission denied); the next run reads it again"
    assert [line["text"] for line in outputs(Path(first.version_uri))] == [f"# Refunds\n\n{PARAGRAPHS[0]}"]
    # Still denied: nothing new, and the run says why rather than publish that quarantine again.
    with caplog.at_level("WARNING"):
        second = run(workdir, spec)
    assert second.manifest is None and second.message.startswith("nothing new since kb v1")
    assert "1 input(s) (files, image rows) still cannot be read, e.g. " in second.message
    assert f"{denied}: cannot read (Permission denied)" in second.message and "Permission denied" in caplog.text
    _refuse(monkeypatch, None)  # readable again, the file untouched (chmod does not move its mtime)
    third = run(workdir, spec)
    assert (third.manifest.version, third.manifest.counts.input, third.manifest.counts.written) == (2, 1, 1)
    assert sorted(line["text"] for line in outputs(Path(third.version_uri))) == [
        f"# Gift cards\n\n{PARAGRAPHS[2]}",
        f"# Refunds\n\n{PARAGRAPHS[0]}",
    ]
    assert run(workdir, spec).message.startswith("nothing new")


def test_a_document_taken_before_that_changed_and_cannot_be_read_still_fails_the_run(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read again, its records published before are replaced by what it holds now: quarantined, they would
    # leave the dataset for a file that still holds them, as far as anyone knows.
    spec, denied = _handbook(workdir)
    run(workdir, spec)
    denied.write_text(f"# Gift cards\n\n{PARAGRAPHS[1]}\n")
    _refuse(monkeypatch, denied)
    with pytest.raises(OSError, match=rf"^{denied}: cannot read: Permission denied$"):
        run(workdir, spec)


def test_a_docx_heading_with_no_text_of_its_own_opens_the_next_section(tmp_path: Path) -> None:
    # As in Markdown: "Security" straight over "Passwords" was a record of its own, its whole text the heading.
    document = docx.Document()
    document.add_heading("Security", level=1)
    document.add_paragraph("")  # an empty paragraph between them is no text either
    document.add_heading("Passwords", level=2)
    document.add_paragraph("Use long ones.")
    document.add_heading("Keys", level=2)
    document.add_heading("Rotation", level=3)
    document.add_paragraph("Yearly.")
    document.add_heading("Contacts", level=2)  # a last heading with nothing after it is still read
    document.save(tmp_path / "policy.docx")
    rows, _ = read(tmp_path)
    assert [(row["title"], row["source"]["line"], row["text"]) for row in rows] == [
        ("Security › Passwords", 1, "Security\n\nPasswords\n\nUse long ones."),
        ("Security › Rotation", 5, "Keys\n\nRotation\n\nYearly."),
        ("Security › Contacts", 8, "Contacts"),
    ]


def test_a_short_web_page_keeps_its_headings_past_elements_trafilatura_leaves_out(tmp_path: Path) -> None:
    # A <time>, <figure>, <button>, <nav> or form in a short article made trafilatura's plain dump of the
    # page longer than its extraction, which it then fell back to: one flat record, headings run into the
    # text ("International International parcels"), with the button's and the form's labels in it.
    (tmp_path / "returns.html").write_text(
        "<html><head><title>Returns</title></head><body><article><h1>Returns policy</h1>"
        "<nav><a href='#intl'>International</a></nav><button>Share this page</button>"
        "<p>The warehouse is closed until <time datetime='2026-01-09'>9 January</time>, when orders ship again.</p>"
        "<figure><img src='van.png'><figcaption>Our van</figcaption></figure>"
        "<h2>International</h2><figure><table><tr><td>EU</td><td>5 days</td></tr></table>"
        "<figcaption>Delivery times</figcaption></figure>"
        "<form><label>Email</label><input name='email'><button>Subscribe</button></form></article></body></html>"
    )
    rows, aside = read(tmp_path)
    assert aside == []
    assert [(row["title"], row["text"]) for row in rows] == [
        ("Returns policy", "# Returns policy\n\nThe warehouse is closed until 9 January, when orders ship again."),
        ("Returns policy › International", "## International\n\n| EU | 5 days |\n\nDelivery times"),
    ]


@pytest.mark.parametrize(
    "block",
    [
        "Note: refunds above 500 USD need a second approval",
        "Q: Who approves refunds?\nA: The risk team.",
        "null: refunds are never paid twice",  # a null key to YAML, not a name
        "true: refunds take five days",  # a boolean key
    ],
)
def test_a_sentence_between_two_rules_at_the_top_of_a_markdown_file_is_text(tmp_path: Path, block: str) -> None:
    # It parses as YAML keys, so it was taken for front matter and dropped unseen. Front matter's keys are
    # lower-case names (or a title, as Hugo may write it), which a sentence's first word is not. The text over
    # the second rule is an underlined heading, which may run over two lines: its title is one line.
    (tmp_path / "refunds.md").write_text(f"---\n{block}\n---\n\nFive days.\n")
    (tmp_path / "hugo.md").write_text("---\nTitle: Hugo refunds\nDate: 2026-03-01\n---\n\nFive days.\n")
    (tmp_path / "jekyll.md").write_text(
        "---\nlayout: post\nlast_modified: 2026-03-01\ntags: [refunds]\n---\n\nFive days.\n"
    )
    rows, _ = read(tmp_path)
    assert [(row["title"], row["text"], row["source"]["line"]) for row in rows] == [
        ("Hugo refunds", "Five days.", 6),
        ("jekyll", "Five days.", 7),
        (f"refunds › {' '.join(block.split())}", f"{block}\n---\n\nFive days.", 2),
    ]


def test_a_docx_table_of_blank_cells_is_no_text(tmp_path: Path) -> None:
    # A form's table of cells to fill in was a record of bare separators (" |  | "), and a file holding
    # only such a table was published so; a blank row in a table with text was a line of them too.
    document = docx.Document()
    document.add_table(rows=2, cols=3)
    document.save(tmp_path / "form.docx")
    document = docx.Document()
    document.add_heading("Rates", level=1)
    table = document.add_table(rows=3, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text, table.cell(2, 0).text = "EU", "5 days", "US"
    document.add_heading("Signatures", level=1)
    document.add_table(rows=2, cols=2)
    document.add_heading("Contacts", level=1)
    document.add_paragraph("The risk team.")
    document.save(tmp_path / "rates.docx")
    rows, aside = read(tmp_path)
    assert [(row["title"], row["text"]) for row in rows] == [
        ("Rates", "Rates\n\nEU | 5 days\nUS |"),
        ("Rates › Contacts", "Signatures\n\nContacts\n\nThe risk team."),
    ]
    assert [(a["source"]["uri"].rsplit("/", 1)[1], a["reason"]) for a in aside] == [("form.docx", "no_text")]


def test_a_short_web_page_without_an_article_keeps_its_headings(tmp_path: Path) -> None:
    # trafilatura took a plain dump of the page's paragraphs for its extraction, the dump being longer by a
    # byline: one flat record, the "Abroad" heading lost from the text, the byline published. (The title is
    # the page's h1, as trafilatura's metadata reads it.)
    (tmp_path / "refunds.html").write_text(
        "<html><head><title>Refunds | ACME</title></head><body><header><h1>Refunds</h1>"
        f"<p class='byline'>By Dana</p></header><div class='content'><p>{PARAGRAPHS[0]}</p><h2>Abroad</h2>"
        f"<p>{PARAGRAPHS[1]}</p></div></body></html>"
    )
    # A page whose text the extraction misses is still read whole from the dump.
    (tmp_path / "bare.html").write_text(f"<html><body>{PARAGRAPHS[0]}<br>{PARAGRAPHS[1]}</body></html>")
    rows, aside = read(tmp_path)
    assert aside == []
    assert [(row["title"], row["text"]) for row in rows] == [
        ("bare", f"{PARAGRAPHS[0]} {PARAGRAPHS[1]}"),
        ("Refunds", PARAGRAPHS[0]),
        ("Refunds › Abroad", f"## Abroad\n\n{PARAGRAPHS[1]}"),
    ]


def test_html_comments_in_markdown_are_not_published_and_lines_still_point_at_the_text(tmp_path: Path) -> None:
    # Writers' notes to each other ("TODO: ask legal") were published as text, and a file holding only a
    # comment was a record of it. A comment in code is the code's text, and stays.
    (tmp_path / "guide.md").write_text(
        "<!-- TODO: ask legal -->\n\n# Refunds <!-- rename? -->\n\n"
        f"{PARAGRAPHS[0]} <!-- check with\nfinance --> Abroad: ten days.\n\n"
        f"<!--\nDraft: nobody reads this.\n-->\n\n{PARAGRAPHS[1]}\n\n"
        f"> {PARAGRAPHS[2]}\n> <!-- quoted note -->\n\n`<!-- shown, in code -->`\n\n"
        "<!-- old section\n# Gift cards\n-->\n# Rates\n\nFive days.\n\n- EU\n- <!-- US: ask -->\n- UK\n"
    )
    (tmp_path / "notes.md").write_text("<!-- only a note to self -->\n")
    rows, aside = read(tmp_path)
    assert [(row["title"], row["text"], row["source"]["line"]) for row in rows] == [
        (
            "Refunds",
            f"# Refunds\n\n{PARAGRAPHS[0]} Abroad: ten days.\n\n{PARAGRAPHS[1]}\n\n> {PARAGRAPHS[2]}\n\n"
            "`<!-- shown, in code -->`",
            3,
        ),
        ("Refunds › Rates", "# Rates\n\nFive days.\n\n- EU\n- UK", 22),
    ]
    assert [(a["source"]["uri"].rsplit("/", 1)[1], a["reason"]) for a in aside] == [("notes.md", "no_text")]
    # A chunk past the lines of a comment points at its own line.
    rows, _ = read(tmp_path / "guide.md", chunk=ChunkConfig(max_chars=120, overlap_chars=0))
    assert [(row["text"].split()[0], row["source"]["line"]) for row in rows] == [
        ("#", 3),
        ("Customers", 12),
        (">", 14),
        ("`<!--", 17),
        ("#", 22),
    ]


def test_a_document_without_text_is_said_to_need_ocr_only_where_it_may_be_a_scan(tmp_path: Path) -> None:
    # Every empty file was told "a scanned document needs OCR first": an empty .txt or .md too.
    from PIL import Image

    pdf = FPDF()
    pdf.add_page()
    (tmp_path / "scan.pdf").write_bytes(bytes(pdf.output()))
    png = io.BytesIO()
    Image.new("RGB", (40, 20), "white").save(png, format="PNG")
    document = docx.Document()
    document.add_picture(png)
    document.save(tmp_path / "scan.docx")
    docx.Document().save(tmp_path / "blank.docx")
    (tmp_path / "blank.md").write_text("---\ntitle: Draft\n---\n\n")
    (tmp_path / "blank.txt").write_text("\n  \n")
    (tmp_path / "blank.html").write_text("<html><body><nav><a href='/'>Home</a></nav></body></html>")
    rows, aside = read(tmp_path)
    assert rows == []
    ocr = {a["source"]["uri"].rsplit("/", 1)[1]: "OCR" in a["detail"] for a in aside}
    assert ocr == {
        "blank.docx": False,
        "blank.html": False,
        "blank.md": False,
        "blank.txt": False,
        "scan.docx": True,
        "scan.pdf": True,
    }
    assert {a["reason"] for a in aside} == {"no_text"}
    assert all(a["detail"].startswith(f"{a['source']['uri']}: no text found") for a in aside)


def test_a_web_pages_definition_list_keeps_each_meaning_with_its_term(tmp_path: Path) -> None:
    # trafilatura made a flat list of terms and meanings ("- RMA\n- Return ...\n- SLA"): which meaning is
    # whose was lost.
    (tmp_path / "glossary.html").write_text(
        f"<html><head><title>Glossary</title></head><body><article><h1>Glossary</h1><p>{PARAGRAPHS[0]}</p>"
        "<dl><dt>RMA</dt><dd>Return merchandise authorisation</dd><dt>SLA</dt><dt>OLA</dt>"
        "<dd>Service level agreement.</dd><dd>Its <i>internal</i> twin.</dd>"
        "<div><dt>ETA</dt><dd>Estimated time of arrival</dd></div></dl></article></body></html>"
    )
    # A blank term (a template's) leaves no bare ": " before its meaning.
    (tmp_path / "short.html").write_text(
        "<html><body><dl><dt>RMA</dt><dd>Return authorisation</dd><dt> </dt><dd>Left blank</dd></dl></body></html>"
    )
    rows, aside = read(tmp_path)
    assert aside == []
    assert [row["text"] for row in rows] == [
        f"# Glossary\n\n{PARAGRAPHS[0]}\n\n- **RMA**: Return merchandise authorisation\n"
        "- **SLA**, **OLA**: Service level agreement. Its *internal* twin.\n- **ETA**: Estimated time of arrival",
        "- **RMA**: Return authorisation\n- Left blank",
    ]


def test_a_docx_table_of_contents_is_not_published(tmp_path: Path) -> None:
    # Its entries ("Refunds\t2") repeat the headings with page numbers: they were a record of their own.
    from docx.enum.style import WD_STYLE_TYPE

    document = docx.Document()
    document.add_paragraph("Returns Policy", style="Title")
    document.add_paragraph("Contents", style="TOC Heading")
    for level, entry in [(1, "Refunds\t2"), (2, "Abroad\t2")]:
        document.styles.add_style(f"toc {level}", WD_STYLE_TYPE.PARAGRAPH)
        document.add_paragraph(entry, style=f"toc {level}")
    document.add_heading("Refunds", level=1)
    document.add_paragraph(PARAGRAPHS[0])
    document.save(tmp_path / "styled.docx")
    # Word puts its table of contents in a content control of the "Table of Contents" gallery.
    w = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
    document = docx.Document()
    document.add_heading("Refunds", level=1)
    document.add_paragraph(PARAGRAPHS[0])
    toc = (
        f'<w:sdt {w}><w:sdtPr><w:docPartObj><w:docPartGallery w:val="Table of Contents"/></w:docPartObj></w:sdtPr>'
        "<w:sdtContent><w:p><w:r><w:t>Contents</w:t></w:r></w:p><w:p><w:r><w:t>Refunds 1</w:t></w:r></w:p>"
        "</w:sdtContent></w:sdt>"
    )
    document.element.body.insert(0, docx.oxml.parse_xml(toc))
    document.save(tmp_path / "control.docx")
    rows, aside = read(tmp_path)
    assert aside == []
    assert [(row["title"], row["text"], row["source"]["line"]) for row in rows] == [
        ("Refunds", f"Refunds\n\n{PARAGRAPHS[0]}", 3),
        ("Returns Policy › Refunds", f"Refunds\n\n{PARAGRAPHS[0]}", 5),
    ]


def test_a_web_pages_table_rows_end_without_a_space(tmp_path: Path) -> None:
    # trafilatura's Markdown table rows ended in a stray space ("| EU | 5 days | ").
    (tmp_path / "rates.html").write_text(
        f"<html><head><title>Rates</title></head><body><article><h1>Rates</h1><p>{PARAGRAPHS[0]}</p>"
        "<table><tr><th>Region</th><th>Time</th></tr><tr><td>EU</td><td>5 days</td></tr></table>"
        f"<p>{PARAGRAPHS[1]}</p></article></body></html>"
    )
    [row], _ = read(tmp_path)
    assert (
        row["text"] == f"# Rates\n\n{PARAGRAPHS[0]}\n\n| Region | Time |\n|---|---|\n| EU | 5 days |\n\n{PARAGRAPHS[1]}"
    )


def test_a_docx_table_of_contents_field_is_not_published_however_its_entries_are_styled(tmp_path: Path) -> None:
    # A TOC field's result (its entries, each with a PAGEREF field of its own) in paragraphs of no TOC
    # style, as tools other than Word write them; the text after the field's end is the document's.
    w = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'

    def runs(*parts: str) -> str:
        found = []
        for part in parts:
            if part in ("begin", "separate", "end"):
                found.append(f'<w:r><w:fldChar w:fldCharType="{part}"/></w:r>')
            elif part.startswith(" "):
                found.append(f'<w:r><w:instrText xml:space="preserve">{part}</w:instrText></w:r>')
            else:
                found.append(f"<w:r><w:t>{part}</w:t></w:r>")
        return f"<w:p {w}>{''.join(found)}</w:p>"

    document = docx.Document()
    body = document.element.body
    entries = [
        runs(
            "begin",
            ' toc \\o "1-3" \\h ',
            "separate",
            "Refunds ",
            "begin",
            " PAGEREF _Toc1 \\h ",
            "separate",
            "1",
            "end",
        ),
        runs("Abroad ", "begin", " PAGEREF _Toc2 \\h ", "separate", "2", "end"),
        runs("end"),
    ]
    for index, entry in enumerate(entries):
        body.insert(index, docx.oxml.parse_xml(entry))
    document.add_heading("Refunds", level=1)
    document.add_paragraph(PARAGRAPHS[0])
    # A field of another kind is text as its result reads.
    document.element.body.insert(
        len(entries) + 2, docx.oxml.parse_xml(runs("begin", " DATE ", "separate", "9 May", "end"))
    )
    document.save(tmp_path / "fields.docx")
    rows, aside = read(tmp_path)
    assert aside == []
    assert [(row["text"], row["source"]["line"]) for row in rows] == [(f"Refunds\n\n{PARAGRAPHS[0]}\n\n9 May", 4)]


def test_a_document_that_is_not_utf_8_is_quarantined_naming_the_byte_and_its_line(tmp_path: Path) -> None:
    # It said "not UTF-8 text" alone, where a JSONL or CSV line names the byte and where it is.
    (tmp_path / "notes.md").write_bytes(b"# Opening hours\n\nThe caf\xe9 opens at nine.\n")
    (tmp_path / "marked.txt").write_bytes(codecs.BOM_UTF8 + b"Refunds \x96 within fourteen days.\n")
    rows, aside = read(tmp_path)
    assert rows == []
    assert sorted(
        (a["source"]["uri"].rsplit("/", 1)[1], a["reason"], a["detail"].split(": ", 1)[1]) for a in aside
    ) == [
        ("marked.txt", "corrupt", "not UTF-8 text: byte 0x96 at line 1, column 9"),  # after the byte-order mark
        ("notes.md", "corrupt", "not UTF-8 text: byte 0xe9 at line 3, column 8"),
    ]


def test_a_web_page_is_parsed_and_extracted_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each page was extracted twice, with trafilatura's fallback to a flat dump of its paragraphs and without
    # it, and parsed twice, again for its title: a third of the time spent on web pages. An extraction with a
    # heading, list, table or emphasis is not the flat dump, so the page is extracted once; its records are
    # as they were.
    import trafilatura.core
    import trafilatura.utils

    calls: Counter[str] = Counter()

    extract = trafilatura.core.trafilatura_sequence

    def extract_counted(*args: Any, **kwargs: Any) -> Any:
        calls["extraction"] += 1
        return extract(*args, **kwargs)

    parse = trafilatura.utils.fromstring

    def parse_counted(html: str | bytes, **kwargs: Any) -> Any:
        calls["parse"] += html == HTML  # not readability's parse of its own summary, part of the extraction
        return parse(html, **kwargs)

    monkeypatch.setattr(trafilatura.utils, "fromstring", parse_counted)
    monkeypatch.setattr(trafilatura.core, "trafilatura_sequence", extract_counted)
    (tmp_path / "shipping.html").write_text(HTML)
    rows, _ = read(tmp_path)
    assert calls == {"parse": 1, "extraction": 1}
    assert [(row["title"], row["text"]) for row in rows] == [
        (
            "Shipping times",
            "# Shipping times\n\nOrders placed before noon leave the warehouse the same day and arrive within two "
            "working days.",
        ),
        (
            "Shipping times › International",
            "## International\n\nInternational parcels take five to ten working days, depending on customs in the "
            "destination country.",
        ),
    ]


def _pdf_titled(title: Any) -> bytes:
    """A one-page PDF whose /Title is ``title`` (a pypdf object: a number or an array is no text)."""
    from pypdf import PdfWriter
    from pypdf.generic import NameObject

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.cell(0, 8, "Refunds are paid within five days.")
    writer = PdfWriter(clone_from=io.BytesIO(bytes(pdf.output())))
    writer._info.get_object()[NameObject("/Title")] = title
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _docx_with_table(old: str, new: str) -> bytes:
    """A Word file with a 2x2 table whose first cell's properties get ``old`` replaced by ``new``."""
    import zipfile

    document = docx.Document()
    document.add_paragraph("Refunds are paid within five days.")
    table = document.add_table(rows=2, cols=2)
    for (row, column), text in zip([(0, 0), (0, 1), (1, 0), (1, 1)], "ABCD", strict=True):
        table.cell(row, column).text = text
    raw, out = io.BytesIO(), io.BytesIO()
    document.save(raw)
    with zipfile.ZipFile(io.BytesIO(raw.getvalue())) as packed, zipfile.ZipFile(out, "w") as repacked:
        for info in packed.infolist():
            content = packed.read(info.filename)
            if info.filename == "word/document.xml":
                content = content.decode().replace(old, new, 1).encode()
            repacked.writestr(info, content)
    return out.getvalue()


def _run_beside_a_readable_one(workdir: Path, name: str, content: bytes) -> Any:
    """A documents run over the file ``name`` holding ``content`` and a plain text file beside it."""
    (workdir / "docs").mkdir()
    (workdir / "docs" / name).write_bytes(content)
    (workdir / "docs" / "ok.txt").write_text("Parcels ship the same day.")
    return run(
        workdir, {"dataset": "kb", "sources": [{"type": "documents", "path": "docs"}], "record": {"kind": "document"}}
    )


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("number_title.pdf", lambda: _pdf_titled(NumberObject(5))),
        ("array_title.pdf", lambda: _pdf_titled(ArrayObject([TextStringObject("a")]))),
        ("deep.md", lambda: b"---\ntitle: " + b"[" * 5000 + b"\n---\nRefunds take five days.\n"),
    ],
)
def test_a_document_whose_metadata_a_library_chokes_on_is_read_without_it(
    workdir: Path, name: str, content: Any
) -> None:
    # A PDF title that is a number or an array (AttributeError), front matter nested past the YAML parser's
    # depth (RecursionError): the run failed with the library's traceback.
    result = _run_beside_a_readable_one(workdir, name, content())
    assert (result.manifest.counts.input, result.manifest.counts.written) == (2, 2)
    assert any("five days" in line["text"] for line in outputs(Path(result.version_uri)))


@pytest.mark.parametrize(
    ("name", "content", "detail"),
    [
        (
            "undefined.html",
            lambda: b'<meta charset="undefined"><p>caf\xe9 opens at nine every day of the week.</p>',
            "not UTF-8 text, nor undefined as it declares",
        ),
        (
            "vmerge_first_row.docx",
            lambda: _docx_with_table("<w:tcPr>", "<w:tcPr><w:vMerge/>"),
            "not a readable DOCX, paragraph 2: a table it cannot read (ValueError: no tr above topmost tr",
        ),
        (
            "gridspan_text.docx",
            lambda: _docx_with_table("<w:tcPr>", '<w:tcPr><w:gridSpan w:val="x"/>'),
            "not a readable DOCX, paragraph 2: a table it cannot read (ValueError:",
        ),
    ],
)
def test_a_document_a_library_cannot_read_is_quarantined_naming_it(
    workdir: Path, name: str, content: Any, detail: str
) -> None:
    # A codec that decodes nothing (UnicodeError), a Word table python-docx cannot follow (ValueError): the
    # run failed with the library's traceback.
    result = _run_beside_a_readable_one(workdir, name, content())
    assert (result.manifest.counts.written, result.manifest.counts.quarantined) == (1, 1)
    [aside] = set_aside(Path(result.version_uri))
    assert aside["reason"] == "corrupt" and aside["detail"].startswith(f"{workdir}/docs/{name}")
    assert detail in aside["detail"]


def _paragraphs_by_side(version: Path) -> dict[str, set[str]]:
    return {
        side: {p for line in read_lines(sorted(version.glob(f"{side}/*.jsonl"))) for p in line["text"].split("\n\n")}
        for side in ("train", "validation")
    }


def _texts_by_side(version: Path) -> dict[str, set[str]]:
    return {
        side: {line["text"] for line in read_lines(sorted(version.glob(f"{side}/*.jsonl")))}
        for side in ("train", "validation")
    }


def _handbooks(folder: Path, count: int) -> None:
    folder.mkdir(exist_ok=True)
    for n in range(count):
        paragraphs = [f"Handbook {n} rule {k}: staff keep the {k}th register locked at night." for k in range(12)]
        (folder / f"handbook-{n}.md").write_text("\n\n".join(paragraphs) + "\n")


def _handbook_recipe(**output: Any) -> dict[str, Any]:
    """The handbooks (``_handbooks``) read as documents in overlapping chunks, with ``output``."""
    source = {"type": "documents", "path": "in/", "chunk": {"max_chars": 200, "overlap_chars": 80}}
    return {"dataset": "handbook", "sources": [source], "record": {"kind": "document"}, "stages": [], "output": output}


def test_overlapping_chunks_of_one_document_are_split_by_document_with_group_by_document(workdir: Path) -> None:
    _handbooks(
        workdir / "in", 20
    )  # sides follow from temporary paths: 20 at a half leave a side empty once in half a million runs
    recipe = _handbook_recipe(dest="out", validation_fraction=0.5, group_by="document")
    result = run(workdir, recipe)
    sides = _paragraphs_by_side(Path(result.version_uri))
    assert sides["train"] and sides["validation"]
    assert not sides["train"] & sides["validation"]  # no overlapping text on both sides
    assert sum(result.manifest.split["groups"].values()) == 20  # a group per document


def test_group_by_document_beside_a_source_of_rows_is_refused_at_recipe_load(workdir: Path) -> None:
    # The rows' own `document` column would be dropped and each file of rows made one group.
    _handbooks(workdir / "in", 2)
    write_jsonl(
        workdir / "rows" / "tickets.jsonl", [{"text": f"ticket {i}", "document": f"doc{i % 10}"} for i in range(20)]
    )
    sources = [{"type": "documents", "path": "in/"}, {"path": "rows/"}]
    recipe = {"dataset": "mix", "sources": sources, "record": {"kind": "document"}, "stages": []}
    recipe["output"] = {"dest": "out", "validation_fraction": 0.3, "group_by": "document"}
    with pytest.raises(
        RecipeError, match=r"output\.group_by \(line \d+\): 'document' groups .* also reads files sources"
    ):
        run(workdir, recipe)
    assert not (workdir / "out").exists()


def test_a_split_of_overlapping_chunks_without_group_by_document_is_warned_about(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _handbooks(workdir / "in", 12)
    recipe = _handbook_recipe(dest="out", validation_fraction=0.3)
    with caplog.at_level(logging.WARNING):
        result = run(workdir, recipe)
    said = "chunks of one document overlap (chunk.overlap_chars), and the split places each on its own side"
    assert any(said in message and "group_by: document" in message for message in caplog.messages)
    sides = _paragraphs_by_side(Path(result.version_uri))
    assert sides["train"] & sides["validation"]  # what it warns of


def test_a_split_of_overlapping_chunks_grouped_by_title_or_document_is_not_warned_about(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Chunks overlap only within a section, whose chunks share its title: a split by title keeps them on one
    # side as one by document does, yet it was told to split them by document. (A document's side follows from
    # its path, a temporary one: 20 at a half each leave one side empty once in half a million runs; 12 at 0.3
    # left validation empty once in 70.)
    _handbooks(workdir / "in", 20)
    recipe = _handbook_recipe()
    for group_by in ("title", "document"):
        recipe["output"] = {"dest": f"out-{group_by}", "validation_fraction": 0.5, "group_by": group_by}
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            result = run(workdir, recipe)
        assert not [message for message in caplog.messages if "chunks of one document overlap" in message]
        sides = _paragraphs_by_side(Path(result.version_uri))
        assert sides["train"] and sides["validation"]
        assert not sides["train"] & sides["validation"]  # as the missing warning says


def test_group_by_document_set_later_moves_no_published_chunk_of_a_changed_document(workdir: Path) -> None:
    _handbooks(workdir / "in", 12)
    recipe = _handbook_recipe(dest="out", validation_fraction=0.3)
    first = run(workdir, recipe)
    before = _texts_by_side(Path(first.version_uri))
    for path in (workdir / "in").iterdir():  # every document changed: read again whole
        path.write_text(path.read_text() + "\nA closing note on keys, added in this edition.\n")
    recipe["output"]["group_by"] = "document"
    second = run(workdir, recipe)
    after = _texts_by_side(Path(second.version_uri))
    assert before["train"] & after["validation"] == set()
    assert before["validation"] & after["train"] == set()
    assert before["train"] & after["train"] and before["validation"] & after["validation"]


def test_group_by_document_set_later_puts_a_documents_new_chunks_of_every_run_on_one_side(workdir: Path) -> None:
    """A document published chunk by chunk has chunks on both sides, which keep them: its group takes the side
    of its first chunk read again, and the new chunks of this run and of later ones go there (the state store
    kept validation wherever one chunk was there, and the next run's new chunks went to the other side)."""
    _handbooks(workdir / "in", 12)
    recipe = _handbook_recipe(dest="out", validation_fraction=0.3)
    versions = [_texts_by_side(Path(run(workdir, recipe).version_uri))]
    recipe["output"]["group_by"] = "document"
    for note in ("A closing note on keys, added in this edition.", "A second note, on alarms, added later."):
        for path in (workdir / "in").iterdir():  # read again whole
            path.write_text(path.read_text() + f"\n{path.stem} rule x: {note}\n")
        versions.append(_texts_by_side(Path(run(workdir, recipe).version_uri)))
    new_sides: dict[str, set[str]] = {}
    for before, after in itertools.pairwise(versions):
        for side, texts in after.items():
            for text in texts - before["train"] - before["validation"]:
                new_sides.setdefault(re.findall(r"handbook-\d+", text)[-1], set()).add(side)
    assert len(new_sides) == 12 and all(len(sides) == 1 for sides in new_sides.values()), new_sides


def test_numbers_in_a_long_paragraph_are_redacted_whatever_the_chunks_cuts(workdir: Path) -> None:
    # A chunk cut on the space between two digit groups ("card 4111 1111 " | "1111 1111") published the number
    # in clear: the PII stage reads one chunk at a time and recognised neither half.
    numbers = "card 4111 1111 1111 1111 or phone +1 415 555 0100 or iban DE89 3704 0044 0532 0130 00"
    paragraph = " ".join(f"the customer {'wrote again ' * k}and gave {numbers} for the refund" for k in range(12))
    (workdir / "in").mkdir()
    (workdir / "in" / "refunds.txt").write_text(paragraph + "\n")
    source = {"type": "documents", "path": "in/", "chunk": {"max_chars": 300, "overlap_chars": 60}}
    recipe = {"dataset": "refunds", "sources": [source], "record": {"kind": "document"}, "stages": [{"type": "pii"}]}
    recipe["output"] = {"group_by": "document"}  # the chunks overlap
    texts = [line["text"] for line in outputs(Path(run(workdir, recipe).version_uri))]
    assert any("<CREDIT_CARD>" in text for text in texts)
    assert not [text for text in texts if re.search(r"\d", text)]


def test_a_near_dedup_threshold_neighbouring_overlapping_chunks_reach_is_warned_about(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Chunks of 800 characters sharing 400 share about 400 / (1600 - 400), a third, of their shingles: at a
    # threshold of 0.3 a document's chunks were set aside as near-duplicates of its own earlier ones.
    rng = random.Random(252)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=6)) for _ in range(3000)]
    paragraphs = [" ".join(rng.choices(words, k=14)) + "." for _ in range(60)]
    (workdir / "in").mkdir()
    (workdir / "in" / "guide.md").write_text("\n\n".join(paragraphs) + "\n")
    source = {"type": "documents", "path": "in/", "chunk": {"max_chars": 800, "overlap_chars": 400}}
    recipe = {"dataset": "guide", "sources": [source], "record": {"kind": "document"}, "output": {"dest": "out"}}
    said = "near_dedup (stage 1) threshold 0.3 is at or below the ~0.33 Jaccard neighbouring chunks"
    for threshold, warned in ((0.3, True), (0.7, False)):
        # 64 bands of 2: pairs near 0.3 are candidates (with 32 of 4, about a third are)
        stage = {"type": "near_dedup", "threshold": threshold, "bands": 64, "across_runs": False}
        recipe["stages"] = [stage]
        recipe["output"]["dest"] = f"out-{threshold}"
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            result = run(workdir, recipe)
        warning = [message for message in caplog.messages if "neighbouring chunks of one document" in message]
        assert bool(warning) == warned
        published = {p for line in outputs(Path(result.version_uri)) for p in line["text"].split("\n\n")}
        lost = [paragraph for paragraph in paragraphs if paragraph not in published]
        if warned:
            assert said in warning[0] and "lower chunk.overlap_chars" in warning[0]
            reasons = {row["reason"] for row in set_aside(Path(result.version_uri))}
            assert lost and reasons == {"near_duplicate"}  # what it warns of: text in no published chunk
        else:
            assert not lost


@pytest.mark.parametrize(
    ("record", "fields", "warned"),
    [
        ("{kind: document}", "[title]", False),  # titles alone: no overlap to reach
        ("{kind: document}", "[text, title]", True),
        # The chunk's text reaches the record through a template: the stage compares it under that field's name.
        ('{kind: instruction, prompt: "Summarise {{ title }}", completion: "{{ text | trim }}"}', "[prompt]", False),
        ('{kind: instruction, prompt: "Summarise {{ title }}", completion: "{{ text | trim }}"}', "null", True),
        # A template that renders only part of the text, or through a method call, still renders the chunk's text.
        ('{kind: instruction, prompt: "{{ text[:300] }}", completion: "{{ title }}"}', "[prompt]", True),
        ('{kind: instruction, prompt: "{{ text.strip() }}", completion: "{{ title }}"}', "[prompt]", True),
    ],
)
def test_a_near_dedup_stage_that_does_not_compare_the_chunk_text_is_not_warned_about_their_overlap(
    record: str, fields: str, warned: bool
) -> None:
    from curation.pipeline import recipe_warnings

    recipe = parse_recipe(
        "dataset: guide\n"
        "sources: [{type: documents, path: in/, chunk: {max_chars: 800, overlap_chars: 400}}]\n"
        f"record: {record}\n"
        f"stages: [{{type: near_dedup, threshold: 0.3, fields: {fields}}}]\n"
        "output: {dest: out, group_by: document}\n",
        reads_sources=False,
    )
    said = [w for w in recipe_warnings(recipe) if "neighbouring chunks of one document" in w]
    assert bool(said) == warned
