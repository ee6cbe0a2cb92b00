"""Cleaning repairs text in place and counts each kind of change; a record emptied by it is filtered."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from curation.published import read_manifest
from curation.stages.clean import Clean
from schemas.records import source_array
from tests.helpers import outputs, run, set_aside, write_jsonl


def _batch(texts: list[str]) -> pa.Table:
    ids = [f"r{i}" for i in range(len(texts))]
    return pa.table(
        {"id": ids, "source": source_array("files", "/in.jsonl", list(range(1, len(ids) + 1))), "text": texts}
    )


def test_each_repair_and_its_count() -> None:
    texts = [
        "The café’s menu",  # already clean: untouched, curly quote kept
        "The cafÃ© doesnâ€™t open",  # mojibake
        "<p>Fish &amp; chips</p><br/>Today<!-- note -->",  # HTML remnants
        "zero\u200bwidth\x07 bell",  # control and zero-width characters
        "  lots \t of\u00a0space \r\n\n\n\nend  ",  # whitespace
        "a < b and 3 > 2",  # comparison signs are not tags
    ]
    result = Clean(["text"])(_batch(texts))
    assert result.kept["text"].to_pylist() == [
        "The café’s menu",
        "The café doesn’t open",
        "Fish & chips\n\nToday",
        "zerowidth bell",
        "lots of space\n\nend",
        "a < b and 3 > 2",
    ]
    assert result.stats["unicode_fixed"] == 1
    assert result.stats["html_removed"] == 1
    assert result.stats["control_removed"] == 1
    # the HTML row also had its whitespace tidied once its tags were gone
    assert result.stats["whitespace_normalized"] == 2
    assert result.stats["records_changed"] == 4
    assert result.set_aside.num_rows == 0


def test_joiners_that_letters_and_emoji_need_stay_and_page_breaks_part_words() -> None:
    texts = [
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian: the non-joiner is its spelling
        "\U0001f468\u200d\U0001f469\u200d\U0001f467 family",  # one emoji: a family, not three people
        "\u0915\u094d\u200d\u0937",  # Devanagari: the joiner picks the half form
        "pass\u200dword",  # after ASCII a joiner joins nothing: it only hides the word
        "end of page one.\x0cPage two\x0bthree",  # a form feed is a page break, not nothing
    ]
    result = Clean(["text"])(_batch(texts))
    assert result.kept["text"].to_pylist() == [*texts[:3], "password", "end of page one. Page two three"]
    assert result.stats["control_removed"] == 1 and result.stats["whitespace_normalized"] == 1


def test_words_in_angle_brackets_that_are_no_html_element_stay() -> None:
    # Code in a support ticket, and the placeholders of a pii stage listed before clean: they read as
    # tags, and "if (x<y && y>z)" was published as "if (x z)", "Call <PERSON>" as "Call".
    texts = [
        "if (x<y && y>z) return x;",
        "Use List<String> or Map<K, V>; std::vector<std::string> too",
        "Call <PERSON> in <LOCATION> at <EMAIL_ADDRESS>",
        '<P ALIGN="center">Old</P><o:p></o:p><span class="x">page</span>',
    ]
    result = Clean(["text"])(_batch(texts))
    assert result.kept["text"].to_pylist() == [*texts[:3], "Old\npage"]
    assert result.stats["html_removed"] == 1


def test_comparisons_in_code_are_not_tags_of_elements_with_attributes() -> None:
    # "<b and c>" and "<i or y>" start with element names: read as tags with attributes, the code was
    # published as "if a d: pass". Attributes are name=value or names HTML writes alone.
    texts = [
        "if a<b and c>d: pass",
        "while x<i or y>j: x += 1",
        "if x<s and y>t or u<p class>q",
        '<input type="checkbox" checked disabled/>x<td nowrap>y</td><div data-id v-cloak>z</div>',
        '<table border cellpadding=2 width=\'50%\'><a href="/?a=1&b=2" title="a > b">link</a></table>',
    ]
    result = Clean(["text"])(_batch(texts))
    assert result.kept["text"].to_pylist() == [*texts[:3], "x y z", "link"]
    assert result.stats["html_removed"] == 2


def test_tags_with_attributes_html_writes_alone_or_unspaced_are_removed() -> None:
    # Once only listed names could stand alone, these opening tags were published: Vimeo's embed code,
    # a module fallback, a popover, and an attribute right after a quoted value (as browsers read it).
    texts = [
        '<iframe src="https://player.vimeo.com/video/1" frameborder="0" webkitallowfullscreen mozallowfullscreen'
        " allowfullscreen></iframe>Hi",
        '<script nomodule src="a.js"></script>Hi',
        "<div popover>Hi</div>",
        '<a href="/x"target="_blank">Hi</a>',
        "<form novalidate action=/go data-x=1 autocomplete=off someflag/>Hi",
    ]
    result = Clean(["text"])(_batch(texts))
    assert result.kept["text"].to_pylist() == ["Hi"] * len(texts)


def test_an_html_comment_over_several_lines_is_removed_whole() -> None:
    result = Clean(["text"])(_batch(["a<!-- a note\nover two lines -->b", "<!--\r\n-->c<!-- one -->d"]))
    assert result.kept["text"].to_pylist() == ["a b", "c d"]


def test_only_complete_entities_are_decoded_whatever_else_the_text_holds() -> None:
    # Once the text held one entity, all of it was unescaped as a browser reads legacy pages, names
    # without ";" too: the query of a URL beside "&amp;" was published as "?a=1¬=2¶=3©=4".
    url = "https://x.com/?a=1&not=2&para=3&copy=4"
    texts = [f"Tom &amp; Jerry: {url}", url, "&notit; &bogus; &AMP; &#x41;&#66; &amp;lt;"]
    result = Clean(["text"])(_batch(texts))
    assert result.kept["text"].to_pylist() == [f"Tom & Jerry: {url}", url, "&notit; &bogus; & AB &lt;"]
    assert result.stats["html_removed"] == 2


def test_fenced_code_blocks_keep_their_whitespace() -> None:
    # Each line's leading space was stripped and runs of spaces and blank lines squeezed in code too:
    # "if x:\n    y = 2" was published as "if x:\ny = 2". Outside the blocks whitespace is tidied as before.
    code = "```python\nif x:\n    y  = 2   # aligned\n\n\n\ndef f():\n\treturn 1\n```"
    texts = [
        code,
        f"Run  this:  \n\n\n\n{code}\n\n\n  then   this. ",
        "- a list item\n\n  ~~~\n  keep    me\n  ~~~\n> ```\n>     quoted  code\n> ```",
        "``` not a block ```  but  `inline`\n  code",
        "the rest\n```\nis code    left open\n  ",
    ]
    result = Clean(["text"])(_batch(texts))
    assert result.kept["text"].to_pylist() == [
        code,
        f"Run this:\n\n{code}\n\nthen this.",
        texts[2],
        "``` not a block ``` but `inline`\ncode",
        # A fence never closed is no code: CommonMark runs it to the end of the text, and a line of
        # tildes under a title (plain text's divider, reStructuredText's underline) kept all after it untidied.
        "the rest\n```\nis code left open",
    ]
    assert result.stats["whitespace_normalized"] == 3


def test_markup_in_code_spans_and_fenced_blocks_stays() -> None:
    # The HTML step stripped tags in code as remnants ("Use the `<br>` element" became "Use the `\n`
    # element"); outside code, a remnant goes as before.
    block = "```html\n<p>First line<br>\nsecond &amp; last</p>\n```"
    texts = [
        'Use the `<br>` element, and ``<p class="note">`` for notes, `&amp;` for "&".',
        f"<b>Intro</b>\n\n{block}\n<p>after</p>",
        "\\`<b>escaped</b>\\` and it`s <b>stray</b>\nbut `<i>` is code: a code span ends on its line",
        "List<String> in `code` only",
    ]
    result = Clean(["text"])(_batch(texts))
    assert result.kept["text"].to_pylist() == [
        texts[0],
        f"Intro\n\n{block}\nafter",
        "\\` escaped \\` and it`s stray\nbut `<i>` is code: a code span ends on its line",
        texts[3],
    ]
    assert result.stats["html_removed"] == 2  # a text with markup in code alone had none removed
    # Text taken before the stage (set-aside rows, review items) gets the same.
    assert Clean(["text"]).rewrite_texts(texts) == result.kept["text"].to_pylist()


def test_a_line_of_tildes_in_plain_text_is_no_fence_left_open() -> None:
    texts = [
        "Title\n~~~~~~~~\n\nlots    of   space   \n\n\n\n\nend",
        "> ~~~\n>   quoted   text  \n\n\n\nafter",
        "Title\n~~~~\n\n  code  \n~~~~~~\nafter    it",  # closed by a longer line: code, as CommonMark reads it
    ]
    result = Clean(["text"])(_batch(texts))
    assert result.kept["text"].to_pylist() == [
        "Title\n~~~~~~~~\n\nlots of space\n\nend",
        "> ~~~\n> quoted text\n\nafter",
        "Title\n~~~~\n\n  code  \n~~~~~~\nafter it",
    ]


def test_text_polars_hands_over_as_large_strings_is_cleaned_too() -> None:
    # A carried input column named in `fields` comes as large_string from JSONL: it was skipped unseen.
    batch = _batch(["<b>Fish</b>  &amp; chips"]).append_column("note", pa.array(["a  <br>b"], pa.large_string()))
    result = Clean(["text", "note"])(batch)
    assert result.kept["note"].to_pylist() == ["a\nb"]
    assert result.stats["html_removed:note"] == 1


def test_unicode_line_and_paragraph_separators_are_line_breaks() -> None:
    # Word and web exports write them; they stayed, as lines no reader of the text sees as lines.
    result = Clean(["text"])(_batch(["one\u2028two\u2029three", "a\r\nb\rc"]))
    assert result.kept["text"].to_pylist() == ["one\ntwo\n\nthree", "a\nb\nc"]
    assert result.stats["whitespace_normalized"] == 2


def test_steps_can_be_switched_off() -> None:
    result = Clean(["text"], fix_unicode=False, strip_html=False)(_batch(["cafÃ© <b>x</b>"]))
    assert result.kept["text"].to_pylist() == ["cafÃ© <b>x</b>"]
    assert "unicode_fixed" not in result.stats and "html_removed" not in result.stats


def test_recipe_counts_changes_in_the_manifest_and_filters_emptied_records(workdir: Path) -> None:
    write_jsonl(
        workdir / "in.jsonl",
        [
            {"q": "What is <b>2+2</b>?", "a": "Four &amp; nothing else"},
            {"q": "Où est la gare ?", "a": "Ã€ gauche"},
            {"q": "Blank answer", "a": "<br/><br/>"},
            {"q": "Fine", "a": "Fine too"},
        ],
    )
    result = run(
        workdir,
        {
            "dataset": "qa",
            "sources": [{"path": "in.jsonl"}],
            "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
            "stages": [{"type": "clean"}],
        },
    )
    version = Path(result.version_uri)
    manifest = read_manifest(str(version))
    stats = manifest.stats["stages"]["clean"]
    assert stats["html_removed"] == 3 and stats["html_removed:prompt"] == 1 and stats["html_removed:completion"] == 2
    assert stats["unicode_fixed"] == 1
    assert manifest.counts.reasons["filtered"] == {"empty_after_clean": 1}
    assert [row["detail"] for row in set_aside(version)] == ["nothing left of completion after cleaning"]
    assert sorted(r["completion"] for r in outputs(version)) == ["Fine too", "Four & nothing else", "À gauche"]


def test_text_left_as_spaces_alone_is_emptied_too(workdir: Path) -> None:
    # Without whitespace normalising, "<p> </p>" left "  \n": counted as written, then cut by
    # output.chunk_chars into no piece at all (no line published for it), or published blank without.
    write_jsonl(workdir / "in.jsonl", [{"text": "<p> </p>\n"}, {"text": "A real page."}])
    result = run(
        workdir,
        {
            "dataset": "docs",
            "sources": [{"path": "in.jsonl"}],
            "record": {"kind": "document"},
            "stages": [{"type": "clean", "normalize_whitespace": False}],
            "output": {"format": "text", "chunk_chars": 100},
        },
    )
    version = Path(result.version_uri)
    manifest = read_manifest(str(version))
    assert (manifest.counts.written, manifest.counts.reasons["filtered"]) == (1, {"empty_after_clean": 1})
    assert [row["detail"] for row in set_aside(version)] == ["nothing left of text after cleaning"]
    assert [r["text"] for r in outputs(version)] == ["A real page."]


def test_backticks_in_html_make_no_code_span() -> None:
    # A pair of backticks made code of the markup between them, left as written: backticks as elements'
    # text, in a comment or an attribute, typed for apostrophes; and an HTML line before a fence hid the fence.
    texts = [
        "<p>Press the <kbd>`</kbd> key, then <kbd>`</kbd> again.</p>",
        "<!-- use `foo` here --><p>Hello</p>",
        '<span title="run `date`">now</span> ok',
        "It`s <b>bold</b> and don`t <i>stop</i>",
        "<div>Intro</div>\n```html\n<p>a<br>b</p>\n```\nafter",
        # Code still is: a tag after a span's start is its text, an element closed before it is no matter.
        "<b>Note</b>: `<!--` opens a comment, `</b>` closes bold, and `-->` ends it",
    ]
    assert Clean(["text"]).rewrite_texts(texts) == [
        "Press the ` key, then ` again.",
        "Hello",
        "now ok",
        "It`s bold and don`t stop",
        "Intro\n\n```html\n<p>a<br>b</p>\n```\nafter",
        "Note : `<!--` opens a comment, `</b>` closes bold, and `-->` ends it",
    ]


def test_many_code_spans_before_a_tag_stay_code_and_a_span_quoting_a_tag_is_code() -> None:
    # Each span searched all the text up to the next ">" for a tag holding its closing backticks: one tag
    # at the end of a long text made the step quadratic (170 KB took 20 s). The result must stay the same.
    line = "Call `f(x)` then `<b>`; see `h`.\n"
    texts = [
        line * 2000 + "<br>\nend",
        # A span holding a tag alone quotes it, even the one closing an element open around it, when a tag
        # after it still closes that element.
        "<li>Close the item with `</li>`.</li>",
        "<p>Press the <kbd>`</kbd> key, then <kbd>`</kbd> again.</p>",
    ]
    assert Clean(["text"]).rewrite_texts(texts) == [
        (line * 2000).rstrip("\n") + "\n\nend",
        "Close the item with `</li>`.",
        "Press the ` key, then ` again.",
    ]


def test_a_span_holding_the_only_close_of_an_open_element_is_the_elements_text() -> None:
    # "`</kbd>`" alone looks like a quoted tag, but nothing after it closes the <kbd> it is in: the tag ends
    # the element and the backticks are text around it; kept as code, the tag stayed in the cleaned text.
    texts = [
        "<p>Key <kbd>`</kbd>`</p>",
        "<p>Shell: <b>`</b>`date` runs date</p>",
        "<ul><li>Close the item with `</li>`.</li><li>Or `</ul>` the list.</li></ul>",
    ]
    assert Clean(["text"]).rewrite_texts(texts) == [
        "Key ` `",
        "Shell: ` `date` runs date",
        "Close the item with `</li>`.\nOr `</ul>` the list.",
    ]


def test_a_later_element_of_the_same_name_does_not_make_a_span_holding_the_close_code() -> None:
    # Only a close no later opening matches can close the element around the span: a later <kbd> of its
    # own, or a "`</kbd>`" quoted in a later span, left "</kbd>" in the cleaned text.
    texts = [
        "<p>Key <kbd>`</kbd>` then <kbd>Enter</kbd>.</p>",
        "<p>Key <kbd>`</kbd>`</p><p>Then press <kbd>Enter</kbd> to go on.</p>",
        "<p>Key <kbd>`</kbd>` and to close type `</kbd>` yourself</p>",
        "<ul><li>Close the item with `</li>`.</li><li>Next</li></ul>",
    ]
    assert Clean(["text"]).rewrite_texts(texts) == [
        "Key ` ` then Enter .",
        "Key ` `\nThen press Enter to go on.",
        "Key ` ` and to close type ` ` yourself",
        "Close the item with `</li>`.\nNext",
    ]


def test_a_later_opening_of_an_element_whose_end_tag_may_be_left_out_closes_it() -> None:
    # HTML ends a <p>, <li>, <td>... at the next opening of it: a quoted "`</li>`" with only a later <li>
    # after it was read as the item's end and stripped, "`\n`." left in the text.
    texts = [
        "<ul><li>Close the item with `</li>`.<li>Next</li></ul>",
        "<p>Use `</p>` to end a paragraph.<p>Next one</p>",
        "<table><tr><td>Type `</td>` here<td>next</td></tr></table>",
        "<dl><dt>Term `</dt>` quoted<dt>Other</dt></dl>",
        # An element whose end tag must be written still is closed by its own close only.
        "<p>Key <kbd>`</kbd>` then <kbd>Enter</kbd>.</p>",
    ]
    cleaned = Clean(["text"]).rewrite_texts(texts)
    assert [text.split() for text in cleaned] == [
        ["Close", "the", "item", "with", "`</li>`.", "Next"],
        ["Use", "`</p>`", "to", "end", "a", "paragraph.", "Next", "one"],
        ["Type", "`</td>`", "here", "next"],
        ["Term", "`</dt>`", "quoted", "Other"],
        ["Key", "`", "`", "then", "Enter", "."],
    ]
