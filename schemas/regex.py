"""A recipe's ``matches_regex`` pattern, written in Python's syntax, as RE2 runs it.

RE2 (``pyarrow.compute.match_substring_regex``) matches in time linear in the text, so no pattern can
hang a scheduled run as ``(a+)+$`` does Python's backtracking ``re`` on a long value; the price is
that RE2 has no backreferences or lookaround, which are refused at load. Where the two engines read
one pattern differently it is rewritten so that what matches is what Python's ``re`` would match:
``\\w``, ``\\d`` and ``\\s`` are Unicode's in Python and ASCII's in RE2, ``$`` also matches before a
final newline in Python, and ``\\Z``, ``\\uXXXX``, ``{,3}`` are Python's spellings. ``\\b`` stays RE2's: a
boundary of ASCII letters, digits and ``_``.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

_WORD = r"\p{L}\p{N}_"  # str.isalnum() or "_", as Python's \w
_SPACE = r"\t-\r\x{1c}-\x{1f}\x{85}\p{Z}"  # str.isspace(), as Python's \s
_OUTSIDE = {
    "w": f"[{_WORD}]",
    "W": f"[^{_WORD}]",
    "d": r"\p{Nd}",
    "D": r"\P{Nd}",
    "s": f"[{_SPACE}]",
    "S": f"[^{_SPACE}]",
    "Z": r"\z",
}
_INSIDE = {"w": _WORD, "d": r"\p{Nd}", "D": r"\P{Nd}", "s": _SPACE, "b": r"\x08"}  # [\b]: a backspace
_NO_LOWER_BOUND = re.compile(r"\{,(\d*)\}")
_HEX = {"u": 4, "U": 8}  # Python's \uXXXX; \xXX is one spelling in both

_WHY = (
    "matches_regex runs RE2, in linear time so that no pattern can hang a run, and RE2 cannot run this one "
    "(it has no backreferences or lookaround)"
)


def re2_pattern(regex: str) -> str:
    """``regex`` rewritten for RE2, matching what Python's ``re.search`` matches; ``ValueError`` saying
    why where RE2 cannot run it (backreferences, lookaround, ...) or it does not compile."""
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(regex):
        char = regex[i]
        if char == "\\" and i + 1 < len(regex):
            code = regex[i + 1]
            if code in _HEX:
                digits = regex[i + 2 : i + 2 + _HEX[code]]
                out.append(f"\\x{{{digits}}}")
                i += 2 + _HEX[code]
                continue
            if in_class and code in "WS":
                raise ValueError(
                    f"\\{code} inside [...] would be ASCII's in RE2, not Unicode's: write [^...] with \\{code.lower()}"
                )
            out.append((_INSIDE if in_class else _OUTSIDE).get(code, regex[i : i + 2]))
            i += 2
            continue
        if in_class:
            in_class = char != "]"
            out.append(char)
        elif char == "[":
            # A ']' right after '[' or '[^' is a character of the class, in both engines.
            start = i + 1 + (regex[i + 1 : i + 2] == "^")
            start += regex[start : start + 1] == "]"
            out.append(regex[i:start])
            in_class = True
            i = start
            continue
        elif char == "{" and (bound := _NO_LOWER_BOUND.match(regex, i)):
            out.append(f"{{0,{bound[1]}}}")  # Python's {,3} is {0,3}; RE2 reads "{,3}" as text
            i = bound.end()
            continue
        elif char == "$":
            out.append(r"(?:\n?$)")  # Python's $ matches before a final newline too
        else:
            out.append(char)
        i += 1
    pattern = "".join(out)
    try:
        re.compile(regex)
    except re.error as error:
        raise ValueError(f"not a valid regular expression: {error}") from None
    try:
        pc.match_substring_regex(pa.array([""]), pattern)
    except pa.ArrowInvalid as error:
        found = str(error).removeprefix("Invalid regular expression: ")
        raise ValueError(f"{_WHY}: {found}") from None
    return pattern
