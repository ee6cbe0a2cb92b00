"""Quality filters. Each is its own stage with its own reason, so the manifest says what each removed;
each set-aside row's ``detail`` says why (the measured value and the limit it broke).

- ``LengthFilter`` (reason ``length``): characters and words, vectorised with Arrow.
- ``LanguageFilter`` (``language``): langdetect, whose language profiles ship inside its package.
- ``RepetitionFilter`` (``repetition``): the Gopher rules (Rae et al. 2021, table A1), computed as
  datatrove's ``GopherRepetitionFilter`` does.
- ``RatioFilter`` (``symbol_ratio``, ``digit_ratio``): share of symbols / digits in the non-space text.
- ``InstructionFilter`` (``instruction``): empty or trivial completions, completion equal to the prompt.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from curation.stages.base import StageResult, require_columns, split_by_mask
from schemas.records import set_aside_rows, shortened


def joined_text(batch: pa.Table, fields: Sequence[str], stage: str) -> pa.Array:
    """The text fields of each row joined with newlines (nulls skipped)."""
    require_columns(batch, fields, f"{stage} fields")  # a misspelt field would measure empty text
    parts = [pc.cast(batch[f], pa.string()) for f in fields]
    if not parts:
        return pa.array([""] * batch.num_rows, pa.string())
    text = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, "\n", null_handling="skip")
    text = pc.fill_null(text, "")
    return text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text


def _result(stage: str, batch: pa.Table, reasons: list[str | None], details: list[str | None]) -> StageResult:
    keep = pa.array([r is None for r in reasons])
    kept, gone = split_by_mask(batch, keep)
    gone_reasons = [r for r in reasons if r is not None]
    gone_details = [d for r, d in zip(reasons, details, strict=True) if r is not None]
    aside = set_aside_rows(gone["id"], gone["source"], stage, "filtered", gone_reasons, gone_details)
    stats = {"checked": batch.num_rows}
    for reason, count in Counter(gone_reasons).items():
        stats[f"removed:{reason}"] = count
    return StageResult(kept=kept, set_aside=aside, stats=stats)


# --- words: one definition for every filter --------------------------------------------------------

# What Python's ``str.split()`` parts words at (``str.isspace``). RE2's ``\s`` is ASCII alone, and \v,
# the information separators and NEL are no ``\p{Z}``; written as the characters themselves, one class
# reads the same to RE2 (Arrow) and to Python's ``re``.
_SPACE = "\t-\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"

# Chinese and Japanese put no spaces between words: split at spaces, a sentence was one "word" and no
# n-gram rule could fire ("好好好..." passed). Each Han or kana character is a word there, and an n-gram
# joins it to its neighbours without the space the text does not have; two other words (English in a
# Japanese text) are joined by a space, as in a text of no Han or kana.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_CJK_CHARACTER = re.compile(f"[{_CJK}]")
_WORD = f"([{_CJK}])|([^{_SPACE}{_CJK}]+)"  # (a Han or kana character, another word)
_CJK_WORDS = re.compile(_WORD)


def _word_counts(text: pa.Array) -> list[int]:
    """The words in each text, as ``repetition_filter`` reads them (``_words``), counted by RE2."""
    return pc.count_substring_regex(text, _WORD).to_pylist()


class LengthFilter:
    name = "length_filter"

    def __init__(
        self,
        fields: list[str],
        min_chars: int | None = None,
        max_chars: int | None = None,
        min_words: int | None = None,
        max_words: int | None = None,
        *,
        name: str | None = None,
    ) -> None:
        self.name = name or self.name  # a second stage of its type in the recipe: ``own_name``
        self.fields = fields
        self.limits = (min_chars, max_chars, min_words, max_words)

    def __call__(self, batch: pa.Table) -> StageResult:
        text = joined_text(batch, self.fields, self.name)
        # The fields' own characters: the newline that joins two fields is no character of the record's
        # (a prompt and completion of 40 characters were 41 > max_chars 40).
        lengths = [pc.fill_null(pc.utf8_length(pc.cast(batch[f], pa.string())), 0) for f in self.fields]
        chars = functools.reduce(pc.add, lengths, pc.multiply(pc.utf8_length(text), 0)).to_pylist()
        words = _word_counts(text)
        min_chars, max_chars, min_words, max_words = self.limits
        reasons: list[str | None] = []
        details: list[str | None] = []
        for c, w in zip(chars, words, strict=True):
            problem = None
            if min_chars is not None and c < min_chars:
                problem = f"{c} characters < min_chars {min_chars}"
            elif max_chars is not None and c > max_chars:
                problem = f"{c} characters > max_chars {max_chars}"
            elif min_words is not None and w < min_words:
                problem = f"{w} words < min_words {min_words}"
            elif max_words is not None and w > max_words:
                problem = f"{w} words > max_words {max_words}"
            reasons.append("length" if problem else None)
            details.append(problem)
        return _result(self.name, batch, reasons, details)


def _detector() -> Callable[[str], list[tuple[str, float]]]:
    from langdetect import DetectorFactory, LangDetectException, detect_langs

    def detect(text: str) -> list[tuple[str, float]]:
        # langdetect samples at random: a fixed seed makes runs repeatable. Set here, in the process that
        # detects: a Ray worker unpickles this function into a process where langdetect's seed is unset.
        DetectorFactory.seed = 0
        try:
            return [(guess.lang, guess.prob) for guess in detect_langs(text)]
        except LangDetectException:  # no letters to go on
            return []

    return detect


class LanguageFilter:
    name = "language_filter"
    sample_chars = 2000  # the first characters are plenty to tell the language, and bound the cost

    def __init__(
        self, fields: list[str], languages: list[str], min_confidence: float = 0.8, *, name: str | None = None
    ) -> None:
        self.name = name or self.name  # a second stage of its type in the recipe: ``own_name``
        self.fields, self.languages, self.min_confidence = fields, set(languages), min_confidence
        self.detect = _detector()

    def __call__(self, batch: pa.Table) -> StageResult:
        texts = pc.utf8_slice_codeunits(joined_text(batch, self.fields, self.name), 0, self.sample_chars).to_pylist()
        reasons: list[str | None] = []
        details: list[str | None] = []
        for text in texts:
            guesses = self.detect(text)
            score = sum(p for lang, p in guesses if lang in self.languages)
            if score >= self.min_confidence:
                reasons.append(None)
                details.append(None)
                continue
            found = f"detected {guesses[0][0]} ({guesses[0][1]:.2f})" if guesses else "no language detected"
            reasons.append("language")
            details.append(f"{found}; wanted {'/'.join(sorted(self.languages))} >= {self.min_confidence}")
        return _result(self.name, batch, reasons, details)


# --- Gopher repetition rules ---------------------------------------------------------------------


def _duplicates(elements: list[str]) -> tuple[int, int]:
    """(repeated elements, characters in them): every occurrence after the first counts."""
    seen: set[str] = set()
    count = chars = 0
    for element in elements:
        if element in seen:
            count += 1
            chars += len(element)
        else:
            seen.add(element)
    return count, chars


def _words(text: str) -> tuple[list[str], list[str]]:
    """The words of ``text``, and each after its joiner: an n-gram from word ``i`` is ``words[i]`` and
    ``joined[i + 1 : i + n]``."""
    if not _CJK_CHARACTER.search(text):
        words = text.split()
        return words, [" " + word for word in words]
    pairs = _CJK_WORDS.findall(text)
    words = [cjk or other for cjk, other in pairs]
    # A space only between two words that are not Han or kana, as the text has it.
    joined = [" " + other if other and i and pairs[i - 1][1] else cjk or other for i, (cjk, other) in enumerate(pairs)]
    return words, joined


def _top_ngram_chars(words: list[str], joined: list[str], n: int) -> int:
    """Characters covered by the most frequent n-gram, counted only if it occurs more than once."""
    grams = Counter(words[i] + "".join(joined[i + 1 : i + n]) for i in range(len(words) - n + 1))
    if not grams:
        return 0
    gram, count = grams.most_common(1)[0]
    return len(gram) * count if count > 1 else 0


def _duplicate_ngram_chars(words: list[str], joined: list[str], n: int) -> int:
    """Characters in n-grams seen before, skipping past each repeat so overlaps count once."""
    seen: set[str] = set()
    chars = index = 0
    while index < len(words) - n + 1:
        gram = words[index] + "".join(joined[index + 1 : index + n])
        if gram in seen:
            chars += len(gram)
            index += n
        else:
            seen.add(gram)
            index += 1
    return chars


class RepetitionFilter:
    name = "repetition_filter"

    def __init__(
        self,
        fields: list[str],
        max_duplicate_line_fraction: float = 0.30,
        max_duplicate_paragraph_fraction: float = 0.30,
        max_duplicate_line_char_fraction: float = 0.20,
        max_duplicate_paragraph_char_fraction: float = 0.20,
        max_top_ngram_char_fraction: dict[int, float] | None = None,
        max_duplicate_ngram_char_fraction: dict[int, float] | None = None,
        *,
        name: str | None = None,
    ) -> None:
        self.name = name or self.name  # a second stage of its type in the recipe: ``own_name``
        self.fields = fields
        self.line_limits = (max_duplicate_line_fraction, max_duplicate_line_char_fraction)
        self.paragraph_limits = (max_duplicate_paragraph_fraction, max_duplicate_paragraph_char_fraction)
        self.top = max_top_ngram_char_fraction or {2: 0.20, 3: 0.18, 4: 0.16}
        self.dup = max_duplicate_ngram_char_fraction or {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}

    def check(self, text: str) -> str | None:
        """Why the text breaks a rule, or None."""
        if not text:
            return None
        size = len(text)
        for unit, parts, (max_share, max_chars) in (
            ("paragraph", [p for p in re.split(r"\n{2,}", text.strip()) if p], self.paragraph_limits),
            ("line", [line for line in text.split("\n") if line.strip()], self.line_limits),
        ):
            count, chars = _duplicates(parts)
            if parts and count / len(parts) > max_share:
                return f"duplicate {unit}s {count}/{len(parts)} > {max_share}"
            if chars / size > max_chars:
                return f"characters in duplicate {unit}s {chars / size:.2f} > {max_chars}"
        words, joined = _words(text)
        for n, limit in sorted(self.top.items()):
            share = _top_ngram_chars(words, joined, n) / size
            if share > limit:
                return f"top {n}-gram covers {share:.2f} of characters > {limit}"
        for n, limit in sorted(self.dup.items()):
            share = _duplicate_ngram_chars(words, joined, n) / size
            if share > limit:
                return f"duplicate {n}-grams cover {share:.2f} of characters > {limit}"
        return None

    def __call__(self, batch: pa.Table) -> StageResult:
        details = [self.check(text) for text in joined_text(batch, self.fields, self.name).to_pylist()]
        return _result(self.name, batch, ["repetition" if d else None for d in details], details)


class RatioFilter:
    name = "ratio_filter"

    def __init__(
        self,
        fields: list[str],
        max_symbol_ratio: float | None,
        max_digit_ratio: float | None,
        *,
        name: str | None = None,
    ) -> None:
        self.name = name or self.name  # a second stage of its type in the recipe: ``own_name``
        self.fields, self.max_symbol, self.max_digit = fields, max_symbol_ratio, max_digit_ratio

    def __call__(self, batch: pa.Table) -> StageResult:
        text = joined_text(batch, self.fields, self.name)
        # Any space (no-break, ideographic: ``_SPACE``) is neither text nor a symbol.
        solid = pc.count_substring_regex(text, f"[^{_SPACE}]").to_pylist()
        symbols = pc.count_substring_regex(text, f"[^\\pL\\pN\\pM{_SPACE}]").to_pylist()
        digits = pc.count_substring_regex(text, r"\pN").to_pylist()
        reasons: list[str | None] = []
        details: list[str | None] = []
        for total, sym, dig in zip(solid, symbols, digits, strict=True):
            reason = detail = None
            if total and self.max_symbol is not None and sym / total > self.max_symbol:
                reason, detail = "symbol_ratio", f"symbols {sym}/{total} = {sym / total:.2f} > {self.max_symbol}"
            elif total and self.max_digit is not None and dig / total > self.max_digit:
                reason, detail = "digit_ratio", f"digits {dig}/{total} = {dig / total:.2f} > {self.max_digit}"
            reasons.append(reason)
            details.append(detail)
        return _result(self.name, batch, reasons, details)


def _squash(values: pa.Array) -> list[str]:
    """Case-folded, whitespace-collapsed, trimmed: what a reader would call the same text."""
    values = pc.utf8_lower(pc.fill_null(pc.cast(values, pa.string()), ""))
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(values, f"[{_SPACE}]+", " ")).to_pylist()


class InstructionFilter:
    name = "instruction_filter"

    def __init__(
        self,
        min_completion_chars: int = 1,
        trivial: Sequence[str] = (),
        drop_prompt_equals_completion: bool = True,
        *,
        name: str | None = None,
    ) -> None:
        self.name = name or self.name  # a second stage of its type in the recipe: ``own_name``
        self.min_chars = min_completion_chars
        self.trivial = set(_squash(pa.array(list(trivial), pa.string())))  # as the completions are
        self.drop_equal = drop_prompt_equals_completion

    def __call__(self, batch: pa.Table) -> StageResult:
        prompts = _squash(batch["prompt"])
        completions = _squash(batch["completion"])
        reasons: list[str | None] = []
        details: list[str | None] = []
        # The detail quotes the completion as the record has it: "trivial completion" alone left a user
        # whose labels include "None" or "N/A" guessing which rule took their records.
        given = batch["completion"].to_pylist()
        for prompt, completion, raw in zip(prompts, completions, given, strict=True):
            problem = None
            if not completion:
                problem = "empty completion"
            elif len(completion) < self.min_chars:
                problem = f"completion of {len(completion)} characters < min_completion_chars {self.min_chars}"
            elif completion in self.trivial:
                problem = f"trivial completion {shortened(raw)!r} (in trivial_completions)"
            elif not re.search(r"\w", completion):
                problem = f"trivial completion {shortened(raw)!r} (no letter or digit)"
            elif self.drop_equal and completion == prompt:
                problem = "completion equals the prompt"
            reasons.append("instruction" if problem else None)
            details.append(problem)
        return _result(self.name, batch, reasons, details)
