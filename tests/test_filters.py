"""Each quality filter removes exactly what it should, with its reason in the manifest."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pytest

from curation.published import read_manifest
from curation.stages.filters import (
    InstructionFilter,
    LanguageFilter,
    LengthFilter,
    RatioFilter,
    RepetitionFilter,
    _words,
)
from schemas.config import RecipeError, load_recipe, parse_recipe
from schemas.records import source_array
from tests.helpers import outputs, run, set_aside, write_jsonl

PROSE = (
    "The quarterly report shows that revenue grew in every region, led by strong demand for the new "
    "savings accounts. Customer complaints fell for the third quarter in a row, and the branch network "
    "finished its move to the new booking system without a single day of downtime."
)


def _batch(**columns: list[str]) -> pa.Table:
    rows = len(next(iter(columns.values())))
    ids = [f"r{i}" for i in range(rows)]
    return pa.table({"id": ids, "source": source_array("files", "/in.jsonl", list(range(1, rows + 1))), **columns})


def _gone(result) -> dict[str, str]:
    aside = result.set_aside
    return dict(zip(aside["id"].to_pylist(), aside["reason"].to_pylist(), strict=True))


def test_a_field_the_records_lack_is_a_recipe_error_not_empty_text() -> None:
    # Measured as empty text, a misspelt field would filter every record (or none).
    with pytest.raises(RecipeError, match=r"length_filter fields: \['txt'\] are not columns .* have \['text'\]"):
        LengthFilter(["txt"], min_words=1)(_batch(text=[PROSE]))


def test_length_bounds_in_characters_and_words() -> None:
    texts = ["too short", "just right here ok", "x" * 60, "one two three four five six seven"]
    result = LengthFilter(["text"], min_chars=10, max_chars=50, min_words=2, max_words=5)(_batch(text=texts))
    assert result.kept["id"].to_pylist() == ["r1"]
    assert _gone(result) == {"r0": "length", "r2": "length", "r3": "length"}
    assert result.set_aside["detail"].to_pylist() == [
        "9 characters < min_chars 10",
        "60 characters > max_chars 50",
        "7 words > max_words 5",
    ]
    assert result.stats == {"checked": 4, "removed:length": 3}


def test_max_chars_exactly_hit_keeps_the_record_whatever_its_fields() -> None:
    # Two fields of 5 and 5 characters are 10: the newline joining them is not one of the record's.
    batch = _batch(prompt=["abcde", "abcde", "abcd"], completion=["fghij", "fghijk", None])
    result = LengthFilter(["prompt", "completion"], min_chars=4, max_chars=10)(batch)
    assert result.kept["id"].to_pylist() == ["r0", "r2"]
    assert result.set_aside["detail"].to_pylist() == ["11 characters > max_chars 10"]


def test_language_detection_uses_the_packaged_model() -> None:
    texts = [
        PROSE,
        "Le rapport trimestriel montre que le chiffre d'affaires a augmenté dans toutes les régions du pays.",
        "Der Quartalsbericht zeigt, dass der Umsatz in allen Regionen des Landes gestiegen ist.",
        "12345 !!! 678",
    ]
    result = LanguageFilter(["text"], ["en"], min_confidence=0.8)(_batch(text=texts))
    assert result.kept["id"].to_pylist() == ["r0"]
    details = result.set_aside["detail"].to_pylist()
    assert details[0].startswith("detected fr") and details[1].startswith("detected de")
    assert details[2] == "no language detected; wanted en >= 0.8"
    both = LanguageFilter(["text"], ["en", "fr"])(_batch(text=texts))
    assert both.kept["id"].to_pylist() == ["r0", "r1"]


def test_gopher_repetition_rules() -> None:
    repeated_lines = "\n".join(["Buy now and save big today!"] * 5 + ["Terms apply."])
    repeated_phrase = "the best offer " * 30
    looping = PROSE + " " + PROSE  # a passage pasted twice: no single phrase dominates
    result = RepetitionFilter(["text"])(_batch(text=[PROSE, repeated_lines, repeated_phrase, looping]))
    assert result.kept["id"].to_pylist() == ["r0"]
    details = result.set_aside["detail"].to_pylist()
    assert details[0].startswith("duplicate paragraphs") or details[0].startswith("duplicate lines")
    assert details[1].startswith("top 2-gram")
    assert details[2].startswith("duplicate 5-grams")
    assert set(_gone(result).values()) == {"repetition"}


def test_repetition_rules_see_the_words_of_chinese_and_japanese_written_without_spaces() -> None:
    prose = [
        "我小时候住在一个小村子里。村子后面有一座山，山上有很多树，树上有很多鸟。每天早上，我都会被鸟叫声吵醒。"
        "妈妈总是说，早起的鸟儿有虫吃。于是我就跟着爸爸去山上砍柴，一边走一边听他讲故事。",
        "東京都は日本の首都であり、政治、経済、文化の中心地です。東京には多くの観光名所があり、毎年たくさんの観光客が訪れます。",
    ]
    spam = ["好" * 32, "这是" * 18, "东京是日本的首都。" * 5]  # one "word" each when split at spaces
    result = RepetitionFilter(["text"])(_batch(text=prose + spam))
    assert result.kept["id"].to_pylist() == ["r0", "r1"]
    assert [d.split(" covers")[0] for d in result.set_aside["detail"].to_pylist()] == ["top 2-gram"] * 3


def test_english_words_in_a_japanese_text_keep_their_spaces_in_n_grams() -> None:
    # Once a text held a kana or Han character, its English words were joined without spaces too
    # ("callthesupportlineon"), so their repeats covered fewer characters than they do.
    japanese = "東京都は日本の首都であり、政治、経済、文化の中心地です。東京には多くの観光名所があり、毎年たくさんの観光客が訪れます。東京"
    phrase = "call the support line on weekdays"
    result = RepetitionFilter(["text"])(_batch(text=[f"{japanese} {phrase}, or {phrase}.", japanese]))
    assert result.kept["id"].to_pylist() == ["r1"]
    # "call the support line on" again: 24 of 134 characters, as a text of no Han or kana counts it
    # (joined without spaces, 20: 0.149 passed).
    assert result.set_aside["detail"].to_pylist() == ["duplicate 5-grams cover 0.18 of characters > 0.15"]


def test_symbol_and_digit_ratios() -> None:
    texts = [PROSE, "#### $$$ %%% *** !!! @@@ word", "4111 1111 1111 1111 exp 12/29 cvv 123", "Room 12, floor 3."]
    result = RatioFilter(["text"], max_symbol_ratio=0.25, max_digit_ratio=0.5)(_batch(text=texts))
    assert result.kept["id"].to_pylist() == ["r0", "r3"]
    assert _gone(result) == {"r1": "symbol_ratio", "r2": "digit_ratio"}


def test_spaces_other_than_ascii_are_neither_symbols_nor_text() -> None:
    # Ideographic and no-break spaces counted as symbols: a Japanese list of words was "symbols 3/7".
    texts = ["a\u3000b\u3000c\u3000d", "one\u00a0two\u00a0three\u00a0four\u00a0!!"]
    result = RatioFilter(["text"], max_symbol_ratio=0.2, max_digit_ratio=None)(_batch(text=texts))
    assert result.kept["id"].to_pylist() == ["r0", "r1"]  # the second: 2 symbols of 17 characters


def test_instruction_rules() -> None:
    prompts = ["Summarise the call", "What is 2+2?", "Translate: hello", "Name a colour", "Explain", "Say hi"]
    completions = ["The customer asked for a refund.", "  ", "translate:   HELLO", "N/A", "...", "Hi"]
    result = InstructionFilter(min_completion_chars=2, trivial=["n/a"])(_batch(prompt=prompts, completion=completions))
    assert result.kept["id"].to_pylist() == ["r0", "r5"]
    assert result.set_aside["detail"].to_pylist() == [
        "empty completion",
        "completion equals the prompt",
        "trivial completion 'N/A' (in trivial_completions)",
        "trivial completion '...' (no letter or digit)",
    ]


def test_a_trivial_completion_is_named_as_the_record_has_it() -> None:
    # "trivial completion" alone: a bank whose categories include "None" could not tell which rule took them.
    long_dashes = "-" * 60
    batch = _batch(prompt=["p", "p", "p"], completion=[" None ", "NO\u00a0Answer", long_dashes])
    result = InstructionFilter(1, ["none", "no answer"], True)(batch)
    assert result.set_aside["detail"].to_pylist() == [
        "trivial completion ' None ' (in trivial_completions)",
        "trivial completion 'NO\\xa0Answer' (in trivial_completions)",
        f"trivial completion '{'-' * 37}...' (no letter or digit)",
    ]


def test_recipe_filters_report_what_each_removed(workdir: Path) -> None:
    rows = [
        {"q": "Summarise the call", "a": PROSE},
        {"q": "Too short?", "a": "ok"},
        {
            "q": "Répondez en français",
            "a": "Le rapport trimestriel montre que le chiffre d'affaires a augmenté partout.",
        },
        {"q": "Echo", "a": "echo"},
        {"q": "Card?", "a": "4111 1111 1111 1111 12/29 123 4567 8910"},
        {"q": "Spam", "a": "\n".join(["Buy now and save big today!"] * 6)},
        {"q": "Shout", "a": "Wow!!! $$$ ### *** @@@ ok"},
    ]
    write_jsonl(workdir / "in.jsonl", rows)
    result = run(
        workdir,
        {
            "dataset": "qa",
            "sources": [{"path": "in.jsonl"}],
            "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
            "stages": [
                {"type": "instruction_filter"},
                {"type": "length_filter", "fields": ["completion"], "min_chars": 3},
                {"type": "ratio_filter"},
                {"type": "repetition_filter"},
                {"type": "language_filter", "fields": ["completion"], "languages": ["en"]},
            ],
        },
    )
    version = Path(result.version_uri)
    manifest = read_manifest(str(version))
    assert manifest.counts.reasons["filtered"] == {
        "instruction": 1,
        "length": 1,
        "repetition": 1,
        "digit_ratio": 1,
        "symbol_ratio": 1,
        "language": 1,
    }
    by_line = {row["source"]["line"]: (row["stage"], row["reason"]) for row in set_aside(version)}
    assert by_line == {
        2: ("length_filter", "length"),
        3: ("language_filter", "language"),
        4: ("instruction_filter", "instruction"),
        5: ("ratio_filter", "digit_ratio"),
        6: ("repetition_filter", "repetition"),
        7: ("ratio_filter", "symbol_ratio"),
    }
    assert [r["completion"] for r in outputs(version)] == [PROSE]
    assert manifest.stats["stages"]["language_filter"] == {"checked": 2, "removed:language": 1}


@pytest.mark.parametrize("unit", ["chars", "words"])
def test_a_minimum_above_the_maximum_is_a_recipe_error(unit: str) -> None:
    text = (
        f"dataset: d\nsources: [{{path: x}}]\nstages:\n  - type: length_filter\n    min_{unit}: 10\n    max_{unit}: 5\n"
    )
    with pytest.raises(RecipeError, match=rf"stages.0 \(line 4\): .*min_{unit} \(10\) is more than max_{unit} \(5\)"):
        parse_recipe(text)
    parse_recipe(text.replace("10", "5"))  # equal bounds keep records of exactly that length


@pytest.mark.parametrize("kind", ["document", "vqa"])
def test_an_instruction_filter_on_records_without_a_prompt_is_a_recipe_error(kind: str) -> None:
    # It failed the run with a KeyError traceback from Arrow on the first batch.
    text = f"dataset: d\nsources: [{{path: x}}]\nrecord: {{kind: {kind}}}\nstages:\n  - type: instruction_filter\n"
    with pytest.raises(
        RecipeError, match=rf"stages.0 \(line 5\): instruction_filter checks .* {kind} records have none"
    ):
        parse_recipe(text)


@pytest.mark.parametrize(
    ("setting", "where"),
    [
        ("max_duplicate_line_fraction: -0.1", "stages.0.max_duplicate_line_fraction (line 6)"),
        ("max_top_ngram_char_fraction: {0: 0.2}", "stages.0.max_top_ngram_char_fraction.0.[key] (line 6)"),
        ("max_duplicate_ngram_char_fraction: {5: -1}", "stages.0.max_duplicate_ngram_char_fraction.5 (line 6)"),
    ],
)
def test_a_repetition_share_below_zero_or_an_ngram_of_no_words_is_a_recipe_error(setting: str, where: str) -> None:
    # A negative share filtered every record; a 0-gram measured nothing.
    text = f"dataset: d\nsources: [{{path: x}}]\nstages:\n  - type: repetition_filter\n\n    {setting}\n"
    with pytest.raises(RecipeError, match=re.escape(where)):
        parse_recipe(text)


def test_a_language_langdetect_does_not_detect_is_a_recipe_error_listing_the_codes() -> None:
    text = "dataset: d\nsources: [{path: x}]\nstages:\n  - type: language_filter\n    languages: [english, fr]\n"
    with pytest.raises(
        RecipeError, match=r"stages.0.languages \(line 5\): .*\['english'\] are not language codes"
    ) as error:
        parse_recipe(text)
    assert "'en', 'es'" in str(error.value) and "'zh-cn', 'zh-tw'" in str(error.value)
    assert parse_recipe(text.replace("english", "zh-cn")).stages[0].languages == ["zh-cn", "fr"]


def test_two_stages_of_one_type_are_told_apart_in_stats_set_aside_rows_and_the_review_queue(workdir: Path) -> None:
    import sqlalchemy as sa

    from curation.review.queue import list_items

    rows = [
        {"q": "Summarise <b>the</b> call", "a": PROSE},
        {"q": "Too short?", "a": "ok"},
        {"q": "Why " * 20, "a": "Because the report says so, in every region."},
        {"q": "Repeat it", "a": "Fine &amp; done, thanks."},
        {"q": "Repeat it", "a": "Fine &amp; done."},
        {"q": "Say it twice", "a": "Twice as nice."},
        {"q": "Say it again", "a": "Twice as nice."},
    ]
    write_jsonl(workdir / "in.jsonl", rows)
    result = run(
        workdir,
        {
            "dataset": "qa",
            "sources": [{"path": "in.jsonl"}],
            "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
            "stages": [
                {"type": "clean", "fields": ["prompt"]},
                {"type": "clean", "fields": ["completion"]},
                {"type": "length_filter", "fields": ["completion"], "min_chars": 3},
                {"type": "length_filter", "fields": ["prompt"], "max_chars": 60},
                {"type": "expectations", "expect": [{"column": "prompt", "check": "unique"}]},
                {"type": "expectations", "expect": [{"column": "completion", "check": "unique"}]},
            ],
        },
    )
    version = Path(result.version_uri)
    stats = read_manifest(str(version)).stats["stages"]
    # Each stage's own figures, not two stages' summed under one name.
    assert stats["clean"]["html_removed"] == 1 and stats["clean_2"]["html_removed"] == 2
    assert stats["length_filter"] == {"checked": 7, "removed:length": 1}
    assert stats["length_filter_2"] == {"checked": 6, "removed:length": 1}
    by_line = {row["source"]["line"]: row["stage"] for row in set_aside(version)}
    assert by_line == {
        2: "length_filter",
        3: "length_filter_2",
        4: "expectations",
        5: "expectations",
        6: "expectations_2",
        7: "expectations_2",
    }
    # A quarantined record's item names the stage that set it aside.
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)
    queued = {json.loads(item["source"])["line"]: item["stage"] for item in list_items(engine, "qa")}
    engine.dispose()
    assert queued == {4: "expectations", 5: "expectations", 6: "expectations_2", 7: "expectations_2"}


def test_words_parted_by_any_unicode_space_count_apart() -> None:
    # RE2's \S+ is ASCII: a no-break, em or ideographic space, or \v, joined two words into one.
    spaces = [chr(c) for c in range(0x110000) if chr(c).isspace()]
    texts = [f"a{space}b" for space in spaces]
    result = LengthFilter(["text"], min_words=2, max_words=2)(_batch(text=texts))
    assert result.set_aside["detail"].to_pylist() == []
    assert len(spaces) == 29 and "\u00a0" in spaces and "\u3000" in spaces and "\v" in spaces


def test_length_filter_counts_chinese_and_japanese_words_as_repetition_filter_does() -> None:
    # A Japanese sentence without spaces was one word to length_filter, nine to repetition_filter.
    texts = ["今日は良い天気です", "東京 is big", "no CJK here at all", "データ\u3000と text です"]
    result = LengthFilter(["text"], min_words=2, max_words=5)(_batch(text=texts))
    assert result.set_aside["detail"].to_pylist() == ["9 words > max_words 5", "7 words > max_words 5"]
    assert [len(_words(text)[0]) for text in texts] == [9, 4, 5, 7]  # the one word counter both use


def test_trivial_completions_of_the_recipe_are_normalised_as_completions_are() -> None:
    # The recipe's "no  answer" was only lower-cased and stripped; the completion's spaces collapsed.
    batch = _batch(prompt=["p", "p", "p"], completion=["no  answer", "No\u00a0answer ", "no answer, sorry"])
    result = InstructionFilter(1, ["no  answer"], True)(batch)
    assert _gone(result) == {"r0": "instruction", "r1": "instruction"}
