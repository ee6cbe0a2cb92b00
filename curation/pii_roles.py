"""Names after a role or salutation word: "Dear Sophie Smith", "Payee Tom Becker", "Call Daniel Okafor".

The NER model takes such a name with the word before it for an organisation ("Dear Sophie Smith" is an
ORG, which the PII stage does not look for) or finds nothing there, so the name stayed in clear; and it
folds the word into a PERSON span ("Customer Sophie Smith"), whose pseudonym then differs from the bare
name's. Read off spaCy's tokens once NER has run (presidio's ``SpacyRecognizer``, see ``pii_engine``):

- ``role_names``: a run of capitalised words right after such a word is a name, whatever the model
  made of it (an ORG, a LOCATION, nothing): two words or more after a role word or a verb ("Payee
  Tom Becker", "Call Daniel Okafor"), one is enough after a salutation or a title ("Hi Sophie",
  "Mr Okafor"). Not when one of its words is one of organisations, departments or headings
  ("Dear Customer Service", "Payee Bank of America", "Call Center"), nor a run of five words or more
  (a heading), nor words the model dated or counted, nor words that make a line of their own with the
  role word or verb before them and no separator between (a heading: "Customer Satisfaction Survey").
  A name may stand on the next line after a salutation, a title or a colon ("Regards," over a
  signature). In capitals, where a word's case says nothing, less is read: one word after a title ("MR OKAFOR"), two or more after a salutation ("DEAR SOPHIE
  SMITH": "ATTN: IRS" is no name), and after a role word or verb only a form's value ("PAYEE: MARIA
  GARCIA", not a heading such as "CUSTOMER SATISFACTION SURVEY"); a stop word, punctuation or a
  verb's past tense ends such a name ("MR OKAFOR CALLED"; ``Lexicon.past_tense``). One word is
  enough after a role word and a colon too, where it ends its line or sentence ("Payee: Okafor"),
  unless it is an English word ("Customer: New", ``Lexicon.english``) or a shop's name with a
  possessive ("Payee: Pollard's"). No name is found inside a well-known brand (``pii_brands``;
  the PII engine drops the model's as well).
- ``name_start``: a PERSON span of the model that opens with such words starts at the name; one of
  such words alone ("Email" of "Email dana@example.org"), or with words of organisations ("Email
  Support"), is no name.

These names are found by a rule, not by the model: ``ROLE_NAME_SCORE`` puts them in the default review
band, so they are redacted and annotators see them (a merchant after "Payee" that is not on the brand
list is taken for a name: mark it not PII, or list it under the stage's ``allow``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from curation.pii_brands import BRANDS

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc, Token

# In [threshold 0.3, review_below 0.6) of the default settings: redacted, and flagged for review.
ROLE_NAME_SCORE = 0.5

# Before a name of one word or more.
SALUTATIONS = frozenset(
    {"dear", "dearest", "hi", "hello", "hey", "attn", "greetings", "thanks", "regards", "sincerely"}
)
TITLES = frozenset({"mr", "mrs", "ms", "miss", "mx", "dr", "prof", "professor", "sir", "madam", "mister"})
# Before a name of two words or more.
ROLES = frozenset(
    {
        "customer", "client", "member", "user", "subscriber", "caller", "visitor", "guest", "passenger",
        "payer", "payor", "payee", "remitter", "sender", "recipient", "beneficiary", "addressee",
        "borrower", "co-borrower", "lender", "guarantor", "debtor", "creditor", "cardholder", "holder",
        "policyholder", "insured", "claimant", "depositor", "signatory", "owner", "buyer", "seller",
        "tenant", "landlord", "applicant", "candidate", "employee", "manager", "agent", "officer",
        "nurse", "doctor", "patient", "driver", "courier", "student", "teacher", "witness", "resident",
        "spouse", "contact", "attention",  # "Attention Required" is no name
    }
)  # fmt: skip
VERBS = frozenset({"call", "contact", "ask", "email", "e-mail", "text", "phone", "tell", "message", "notify", "remind"})
TRIGGERS = SALUTATIONS | TITLES | ROLES | VERBS

# Capitalised words of organisations, departments, products and headings: a run holding one is no name.
NOT_NAMES = frozenset(
    {
        "service", "services", "support", "team", "teams", "center", "centre", "department", "dept", "desk",
        "office", "branch", "bank", "banking", "group", "inc", "llc", "ltd", "plc", "corp", "corporation",
        "company", "care", "account", "accounts", "payable", "receivable", "management", "operations",
        "representative", "staff", "board", "members", "committee", "all", "everyone", "everybody", "there",
        "friends", "colleagues", "folks", "guys", "mom", "mum", "dad", "valued", "hiring", "information",
        "info", "number", "name", "details", "address", "agreement", "system", "systems", "application", "form",
        "portal", "app", "wireless", "cable", "union", "insurance", "health", "hospital", "clinic",
        "university", "school", "college", "city", "county", "state", "federal", "national", "international",
        "global", "financial", "credit", "capital", "trust", "fund", "funds", "savings", "loan", "loans",
        "mortgage", "energy", "electric", "utilities", "telecom", "mobile", "online", "digital", "solutions",
        "technologies", "labs", "partners", "associates", "holdings", "enterprises", "industries", "foundation",
        "association", "society", "club", "store", "shop", "market", "pharmacy", "restaurant", "hotel",
        "airlines", "airways", "motors", "practitioner", "license", "licence", "tracking", "success",
        "experience", "relations", "resources", "human", "marketing", "sales", "billing", "payroll", "finance",
        "legal", "compliance", "security", "fraud", "claims", "collections", "network", "communications",
        "media", "news", "world", "back", "request", "us", "yes", "unknown", "anonymous", "customer", "customers",
        "user", "users", "guest", "admin", "administrator", "agent", "officer", "manager", "director",
        "president", "owner", "sons", "brothers", "bros",
    }
)  # fmt: skip
# What the model took for a date, an amount, a count (a month or a day after "Dear" is no name).
_NOT_NAME_LABELS = frozenset(
    {"DATE", "TIME", "MONEY", "PERCENT", "QUANTITY", "ORDINAL", "CARDINAL", "LAW", "LANGUAGE", "EVENT"}
)
_MONTHS_AND_DAYS = frozenset(
    {
        "january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
        "november", "december", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday",
    }
)  # fmt: skip
_CAPITALISED = re.compile(r"[^\W\d_][^\W\d_'’]*(?:['’][^\W\d_]+)*")  # Sophie, O'Brien, Zoë, McDonald
_INITIAL = re.compile(r"[^\W\d_]\.")  # J.
_SEPARATORS = frozenset({":", ","})
# Past tenses whose form no rule makes from the verb (the model's table of them also holds surnames:
# Hung, Sung, Won): those that end a name written in capitals ("MR OKAFOR PAID").
_IRREGULAR_PAST = frozenset(
    {"paid", "sent", "said", "wrote", "came", "told", "gave", "made", "went", "left", "took", "brought",
     "bought", "spoke", "got", "thought", "felt", "kept", "lost", "forgot"}
)  # fmt: skip
# Endings of the regular forms of a word, and what its base form ends in instead: payments, denied.
_REGULAR_ENDINGS = (
    ("s", ""),
    ("es", ""),
    ("ies", "y"),
    ("ed", ""),
    ("ed", "e"),
    ("ied", "y"),
    ("ing", ""),
    ("ing", "e"),
)
_PAST_ENDINGS = tuple((end, base) for end, base in _REGULAR_ENDINGS if end.endswith("ed"))
_POSSESSIVE = "'s"  # a token's norm: "'s" and "’s" alike
MAX_LINE_BREAKS = 2  # a blank line between "Regards," and the name
MAX_NAME_WORDS = 4


class Lexicon:
    """English words, read from the model's lemmatizer tables (the model ships them; the pipeline
    does not run the lemmatizer), and the well-known brands of ``pii_brands``."""

    def __init__(self, nlp: Language) -> None:
        from spacy.matcher import PhraseMatcher

        index = {}
        if "lemmatizer" in nlp.component_names:
            lookups = nlp.get_pipe("lemmatizer").lookups
            if lookups.has_table("lemma_index"):
                index = lookups.get_table("lemma_index")
        self.verbs = frozenset(index.get("verb", ()))
        # Not the nouns: WordNet's, whence the tables come, hold people's surnames (Ochoa, Thompson).
        self.words = self.verbs.union(index.get("adj", ()), index.get("adv", ()))
        self.matcher = PhraseMatcher(nlp.vocab, attr="NORM")
        self.matcher.add("BRAND", list(nlp.tokenizer.pipe(BRANDS)))

    def english(self, word: str) -> bool:
        """Whether a lower-case word is an English verb, adjective or adverb, or a regular form of one
        (Gold, Approved, Pending, Payments); any word, where the model has no such tables."""
        return (
            not self.words
            or word in self.words
            or any(base in self.words for base in _base_forms(word, _REGULAR_ENDINGS))
        )

    def past_tense(self, word: str) -> bool:
        """Whether a lower-case word is a verb's past tense: called, phoned, applied, stopped, paid."""
        if word in _IRREGULAR_PAST:
            return True
        if len(word) < 5:
            return False
        return any(base in self.verbs for base in _base_forms(word, _PAST_ENDINGS, doubled=True))

    def brands(self, doc: Doc) -> list[tuple[int, int]]:
        """Character spans of the brands in ``doc``. A single name with a possessive ("Wendy's")
        is one only where no word follows: "Wendy's card" is a person's."""
        spans = []
        for _, start, end in self.matcher(doc):
            if end - start == 2 and doc[end - 1].norm_ == _POSSESSIVE and not _ends_a_value(doc, end):
                continue
            spans.append((doc[start].idx, doc[end - 1].idx + len(doc[end - 1].text)))
        return spans


def _base_forms(word: str, endings: Iterable[tuple[str, str]], doubled: bool = False) -> Iterator[str]:
    """The base forms a lower-case word would be a regular form of, by ``endings`` ("denied": "deny");
    with ``doubled``, also a stem's doubled last consonant undone ("stopped": "stop")."""
    for end, base in endings:
        if word.endswith(end):
            stem = word[: len(word) - len(end)]
            yield stem + base
            if doubled and not base and len(stem) > 2 and stem[-1] == stem[-2]:
                yield stem[:-1]


def _word(token: Token) -> str:
    return token.lower_.rstrip(".")


def _capitalised(token: Token) -> bool:
    text = token.text
    return text[:1].isupper() and (
        (_CAPITALISED.fullmatch(text) is not None and any(c.islower() for c in text))
        or _INITIAL.fullmatch(text) is not None
    )


def _in_capitals(token: Token) -> bool:
    """A word written in capitals (SOPHIE, O'BRIEN); one of two letters is taken for an acronym (HR, IT)."""
    text = token.text
    return len(text) > 2 and text.isupper() and _CAPITALISED.fullmatch(text) is not None


def _in_capitals_run(token: Token) -> bool:
    """A word that goes on a run in capitals: there a stop word ends the name ("DEAR SOPHIE SMITH YOUR
    CARD"), where in title case a lower-case word does."""
    return _in_capitals(token) and not token.is_stop


def _name_word(token: Token) -> bool:
    word = _word(token)
    return (
        (_capitalised(token) or _in_capitals(token))
        and word not in TRIGGERS
        and word not in NOT_NAMES
        and word not in _MONTHS_AND_DAYS
        and not token.is_stop
        and token.ent_type_ not in _NOT_NAME_LABELS
    )


def _hyphen_joined(doc: Doc, at: int, shape: Callable[[Token], bool] = _capitalised) -> bool:
    """Whether ``doc[at]`` is a hyphen that joins two words with no space (Smith-Jones)."""
    return (
        0 < at < len(doc) - 1
        and doc[at].text == "-"
        and not doc[at - 1].whitespace_
        and not doc[at].whitespace_
        and shape(doc[at + 1])
    )


def _gap(doc: Doc, at: int, shape: Callable[[Token], bool] = _capitalised) -> bool:
    """Whether ``doc[at]`` is extra spaces (spaCy's token for a run of them; not a line break) before
    a capitalised word: "Call  Daniel   Okafor" is one name."""
    return at < len(doc) - 1 and doc[at].is_space and "\n" not in doc[at].text and shape(doc[at + 1])


def _line_break(token: Token) -> bool:
    """Whether ``token`` is whitespace holding a line break."""
    return token.is_space and "\n" in token.text


def _whole_line(doc: Doc, start: int, end: int) -> bool:
    """Whether tokens ``[start, end)`` make a line of their own (or the whole text)."""
    return (start == 0 or _line_break(doc[start - 1])) and (end == len(doc) or _line_break(doc[end]))


def _triggers_before(doc: Doc, at: int) -> tuple[set[str], str, int]:
    """The kinds of the role words right before token ``at`` ("Dear Mr", "the payee"), the separator
    between them and the name ("Attn: Sophie", "Thanks, Sophie"; "" where there is none) and the
    index of the first of them. A line break may stand there too after a salutation or a title, as letters break lines ("Dear" or "Regards," on a line
    of its own, the name on the next, or after a blank line), or after a colon (a form's "Payee:"
    over its value); not after a bare role word or verb, which ends the lines of menus and headings
    as often ("Contact" over "Privacy Policy")."""
    kinds: set[str] = set()
    i = at - 1
    broken = False
    if i >= 0 and doc[i].is_space:
        if doc[i].text.count("\n") > MAX_LINE_BREAKS:
            return kinds, "", at
        broken = "\n" in doc[i].text
        i -= 1
    separator = ""
    if i >= 0 and doc[i].text in _SEPARATORS:
        separator = doc[i].text
        i -= 1
    while i >= 0:
        if doc[i].is_space and "\n" not in doc[i].text:
            i -= 1
            continue
        word = _word(doc[i])
        if word in SALUTATIONS:
            kinds.add("salutation")
        elif word in TITLES:
            kinds.add("title")
        elif word in ROLES:
            kinds.add("role")
        elif word in VERBS:
            kinds.add("verb")
        else:
            break
        i -= 1
    if broken and not (kinds & {"salutation", "title"} or separator == ":"):
        return set(), separator, at
    return kinds, separator, i + 1


def _ends_a_value(doc: Doc, at: int) -> bool:
    """Whether no word follows token ``at - 1``: the text, its line or a clause ends there, or a number
    follows ("Payee: Trader Joe's", "paid Wendy's $12")."""
    return at >= len(doc) or not doc[at].is_alpha


def _name_goes_on(lexicon: Lexicon | None) -> Callable[[Token], bool]:
    """A test of whether a word in capitals goes on a name: a stop word or a past tense ends it."""

    def goes_on(token: Token) -> bool:
        return _in_capitals_run(token) and (lexicon is None or not lexicon.past_tense(token.lower_))

    return goes_on


def role_names(doc: Doc, lexicon: Lexicon | None = None) -> list[tuple[int, int]]:
    """Character spans of the names right after role words in ``doc`` (see the module's doc). Without
    a ``lexicon`` no lone name after a form's label is read, and a name in capitals ends only at a stop
    word or punctuation."""
    spans = []
    i = 0
    while i < len(doc):
        capitals = not _capitalised(doc[i]) and _in_capitals(doc[i])
        if not (capitals or _capitalised(doc[i])) or _word(doc[i]) in TRIGGERS:
            i += 1
            continue
        kinds, separator, first = _triggers_before(doc, i)
        # In capitals a lone word after a salutation may be an acronym ("Attn: IRS"), and words after
        # a role word or a verb a heading ("CUSTOMER SATISFACTION SURVEY"): there a name is read after
        # a title alone ("MR OKAFOR"), of two words or more after a salutation ("DEAR SOPHIE SMITH"),
        # and after a role word or verb only as a form's value ("PAYEE: MARIA GARCIA").
        if capitals and not kinds & {"salutation", "title"} and not separator:
            kinds = set()
        if not kinds:  # asked first: a long text in title case was read run by run from each of its words
            i += 1
            continue
        shape = _in_capitals_run if capitals else _capitalised
        # In capitals a verb after the name reads as one more word of it ("MR OKAFOR CALLED"): a past
        # tense ends the name, as a lower-case word does in title case. Not its first word: "JARED".
        goes_on = _name_goes_on(lexicon) if capitals else shape
        # A run of capitalised words (Smith-Jones as one): all of it is a name, or none ("Amazon
        # Customer" is none). Read no further than one word past the most a name has (a hyphen adds none).
        end, count = i + 1, 1
        while (
            end < len(doc)
            and count <= MAX_NAME_WORDS
            and (goes_on(doc[end]) or _hyphen_joined(doc, end, goes_on) or _gap(doc, end, goes_on))
        ):
            count += doc[end].text != "-"
            end += 2 if doc[end].text == "-" or doc[end].is_space else 1
        words = [token for token in doc[i:end] if token.text != "-" and not token.is_space]
        length = len(words) - sum(token.text == "-" for token in doc[i:end])
        enough = 1 if kinds & ({"title"} if capitals else {"salutation", "title"}) else 2
        # A form's value may be a surname alone ("Payee: Okafor"), ending its line or sentence (not
        # "Payer: Hall, Smith and Jones"), and no English word ("Customer: New", "Member: Gold"); not
        # joined (Smith-Jones, a firm's name as often), nor in capitals, where it may be an acronym ("PAYEE: IRS").
        if (
            end == i + 1
            and "role" in kinds
            and separator == ":"
            and not capitals
            and (end == len(doc) or _line_break(doc[end]) or doc[end].text in (".", ";"))
            and lexicon is not None
            and not lexicon.english(_word(words[0]))
        ):
            enough = 1
        after = _word(doc[end]) if end < len(doc) else ""
        if (
            kinds
            # A line of its own, role word and all, is a heading ("Customer Satisfaction Survey"), as a
            # form's value has a separator ("Payee: Maria Garcia") and a name in a sentence words around it.
            and (kinds & {"salutation", "title"} or separator or not _whole_line(doc, first, end))
            # Smith-Jones is one word: after a role word it may be a firm's name as well as a person's.
            and enough <= length <= MAX_NAME_WORDS
            and all(_name_word(token) and (not capitals or shape(token)) for token in words)
            and _INITIAL.fullmatch(words[-1].text) is None
            and after not in NOT_NAMES  # "Dear Hester-Johnson team", "Payee Ward & Sons"
            and after != "&"
            # A shop's name: "Payee: Pollard's", "Payer Pollard's." A person's possessive goes before
            # what is theirs ("Customer Sophie Smith's card").
            and not (end < len(doc) and doc[end].norm_ == _POSSESSIVE and _ends_a_value(doc, end + 1))
        ):
            spans.append((doc[i].idx, doc[end - 1].idx + len(doc[end - 1].text)))
            i = end
        else:  # "Ward Nurse Jane Doe": the name may start further on
            i += 1
    return spans


def name_start(doc: Doc, start: int, end: int) -> int | None:
    """Where the name starts in a PERSON span ``[start, end)`` (characters) that opens with role words
    ("Customer Sophie Smith", "Mrs Helen Park"): after them, when what follows is a name; else ``start``.
    None for a span of role words alone, or with words of organisations ("Email Support") or an
    address, which names no one: the model takes "Email" of "Email dana@example.org" for a name, or
    the two words for one, and "Driver" of "Driver John Stephens" for one of its own."""
    span = doc.char_span(start, end, alignment_mode="expand")
    if span is None:
        return start
    i = span.start
    while i < span.end and (
        _word(doc[i]) in TRIGGERS or (i > span.start and (doc[i].text in _SEPARATORS or doc[i].is_space))
    ):
        i += 1
    # "Email Support"; "Email dana@example.org" whole, the address found as one on its own.
    if i > span.start and all(
        _word(token) in NOT_NAMES or token.like_email or token.like_url for token in doc[i : span.end]
    ):
        return None
    if i == span.start or i == span.end or not _name_word(doc[i]):
        return start
    return doc[i].idx
