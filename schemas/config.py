"""The recipe: one YAML file that says what a run reads, what it does, and where it publishes.

Every setting has a default, so a short recipe works::

    dataset: transactions
    sources:
      - path: data/transactions.csv
    record:
      kind: instruction
      prompt: "Categorise: {{ description }} at {{ merchant }} ({{ amount }} USD)"
      completion: "{{ category }}"
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import os
import re
from collections.abc import Iterable
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from schemas.pii import DETECTION_RULES, PiiConfig
from schemas.records import CONTENT_COLUMNS, RESERVED, TEXT_RULES
from schemas.regex import re2_pattern

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails
    from sqlalchemy.engine import URL


class RecipeError(ValueError):
    """A recipe that cannot be run; the message names the file, the setting and the line."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Ruled(Strict):
    """A stage whose rules (what it changes or sets aside with the same settings) a release may change:
    ``RULES`` counts such changes and is kept in the recipe's fingerprint (``Recipe.fingerprint``), so
    the first scheduled run after one says the recipe changed, as for ``TEXT_RULES``."""

    RULES: ClassVar[int] = 1


# --- sources -------------------------------------------------------------------------------------


class FilesSource(Strict):
    """JSONL, CSV or Parquet files: a path, a glob or a folder, local or ``s3://``."""

    type: Literal["files"] = "files"
    path: str
    format: Literal["auto", "jsonl", "csv", "parquet"] = "auto"
    csv_delimiter: str = Field(default=",", min_length=1, max_length=1)
    # Folders named ``key=value`` below ``path`` (as Spark, Hive and Athena lay out a table) become
    # columns of the rows under them, as text.
    hive_partitioning: bool = False


def _no_bare_at_sign(host: str | None) -> None:
    """'user:p@ss@host' parses as password 'p' on host 'ss@host': the rest of the password was shown as the host
    in every record's source, the manifest and the errors (which also failed to connect)."""
    if "@" in (host or ""):
        raise ValueError("the URL's password or user name holds an '@': write it percent-encoded, as %40")


# The pip package of the default driver of SQLAlchemy's own dialects, where its module is named otherwise.
_DRIVER_PACKAGES = {"MySQLdb": "mysqlclient"}


def _within_regular_package(module: str) -> bool:
    """Whether a dotted module's first part is a package installed with its own files (a namespace package,
    as google.cloud, has no origin: other packages install its parts)."""
    if "." not in module:
        return False
    try:
        spec = importlib.util.find_spec(module.split(".")[0])
    except (ImportError, ValueError):  # a module in sys.modules without a spec
        return False
    return spec is not None and spec.origin is not None


def _driver_installed(url: URL) -> None:
    """A source URL's SQLAlchemy dialect and its driver, importable: said at load, by the recipe line, not
    as a `ModuleNotFoundError` once the run connects."""
    from sqlalchemy.exc import NoSuchModuleError

    supported = "the toolkit installs the drivers for SQLite and PostgreSQL (psycopg)"
    try:
        url.get_dialect().import_dbapi()
    except NoSuchModuleError:
        raise ValueError(
            f"SQLAlchemy has no dialect {url.get_backend_name()!r}: {supported}; another database needs its "
            "SQLAlchemy dialect's package installed"
        ) from None
    except ImportError as error:
        module = error.name or url.get_driver_name()
        # A module missing within an installed package is found, but not loaded (a C extension built for another
        # Python, psycopg2._psycopg): said below. One under a namespace package that other packages install
        # (google.cloud.x) is not installed, though its first part is found.
        if isinstance(error, ModuleNotFoundError) and not _within_regular_package(module):
            # A top-level module is mostly named as its package (MySQLdb is not: mysqlclient); one within a
            # package is not one to pip install.
            package = _DRIVER_PACKAGES.get(module, module)
            package = f"the one providing {module}" if "." in package else f"pip install {package}"
            raise ValueError(
                f"{url.drivername} needs the driver {module!r}, which is not installed: {supported}; for another "
                f"database install the driver package of its SQLAlchemy dialect "
                f"({package}), or name an installed driver in the URL "
                f"({url.get_backend_name()}+DRIVER://...)"
            ) from None
        # Found, but not loaded: the package, not the module that failed (a driver's C extension whose library is
        # missing, libmysqlclient.so, fails as 'MySQLdb._mysql').
        raise ValueError(
            f"{url.drivername} needs the driver {module.split('.')[0]!r}, which is installed but cannot be "
            f"imported: {error}"
        ) from None
    except Exception:
        # Not a driver found missing: a dialect written for SQLAlchemy 1.x (a `dbapi()` classmethod, which
        # create_engine still calls) has no import_dbapi. Connecting says what is wrong, if anything is.
        return


class SqlSource(Strict):
    """Rows of a table or a query from any SQLAlchemy URL (SQLite file, PostgreSQL, ...).

    With ``cursor`` (a column that only grows: an id, an ``updated_at``), a rerun takes only rows
    whose cursor is past the last run's highest; without it, every run reads everything.
    """

    type: Literal["sql"]
    url: str
    table: str | None = None
    query: str | None = None
    cursor: str | None = None
    key: list[str] = Field(default_factory=list)  # columns that identify a row (record ids survive edits)
    # Values of the query's `:name` parameters, bound by the driver, never written into the SQL; a list's each
    # value in `IN :name`, or the list as an array on PostgreSQL (`= ANY(:name)`).
    params: dict[
        str, str | int | float | bool | datetime | date | list[str | int | float | bool | datetime | date] | None
    ] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _a_database_url(cls, url: str, info: ValidationInfo) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            parsed = make_url(url)
        except ArgumentError:
            # Not quoted back: a URL can hold a password.
            raise ValueError("not a database URL (sqlite:///path, postgresql+psycopg://user@host/db, ...)") from None
        _no_bare_at_sign(parsed.host)
        # SQLite's and PostgreSQL's drivers the toolkit installs; a command that never connects to the sources
        # (`review`) loads the recipe for its state store.
        reads_sources = (info.context or {}).get("reads_sources", True)
        if reads_sources and parsed.get_backend_name() not in ("sqlite", "postgresql"):
            _driver_installed(parsed)
        if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() != "psycopg":
            # The connector sets psycopg (3) up to read a timestamptz in UTC and a date Python cannot hold as its
            # text (``connectors.sql._lenient_moments``); psycopg2 (SQLAlchemy 2.0's default for 'postgresql://')
            # gave the session's zone, so the same rows were published as other text from another machine.
            raise ValueError(
                f"PostgreSQL is read through psycopg: write the URL as 'postgresql+psycopg://...' (its driver is "
                f"{parsed.get_driver_name()!r}, which would read a timestamptz in the session's time zone)"
            )
        return url

    @field_validator("params", mode="before")
    @classmethod
    def _one_value_each(cls, params: Any) -> Any:
        # Said once: pydantic would name each type of the union the value is not, six lines for one value.
        if isinstance(params, dict):
            for name, value in params.items():
                if isinstance(value, dict):
                    raise ValueError(
                        f"{name!r} is a mapping: a parameter takes one value, a string, number, boolean, date, "
                        "datetime or null, or a list of them"
                    )
                if not isinstance(value, list):
                    continue
                if not value:  # PostgreSQL cannot type `IN :name` with no value: SQLAlchemy's empty set is integers
                    raise ValueError(
                        f"{name!r} is an empty list: a list needs a value ('IN' none matches no row: leave the "
                        "condition out of the query)"
                    )
                if any(item is None or isinstance(item, list | dict) for item in value):
                    raise ValueError(
                        f"{name!r} is a list holding a null, list or mapping: a list's values are strings, numbers, "
                        "booleans, dates or datetimes (IN matches no NULL)"
                    )
                kinds = sorted({type(item).__name__ for item in value})
                if len(kinds) > 1:  # a PostgreSQL array holds one type: psycopg would type it by its first value
                    raise ValueError(f"{name!r} is a list mixing {', '.join(kinds)}: a list's values are of one type")
        return params

    @model_validator(mode="after")
    def _table_or_query(self) -> SqlSource:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of 'table' or 'query'")
        if self.query is None:
            if self.params:
                raise ValueError("'params' are bound to a 'query''s :name parameters; a 'table' takes none")
            return self
        places = parameter_places(self.query)
        used = list(places)  # each once, in the order the query names them
        problems = [
            f"the query's parameter ':{name}' has no value in 'params'" for name in used if name not in self.params
        ]
        if problems:  # a name written amiss, or a colon the user did not mean as a parameter
            problems[-1] += " (':name' outside quotes is a parameter; a cast is '::', an array slice '[: hi]')"
        problems += [
            f"params: {n!r} is not used in the query (no ':{n}' outside quotes)" for n in self.params if n not in used
        ]
        if not problems:
            problems = self._lists_written_so(used, places)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _lists_written_so(self, used: list[str], places: dict[str, set[str]]) -> list[str]:
        """What is amiss where the query uses a list: bound one value each in `IN :name` (SQLAlchemy's expanding
        parameter, which writes the parentheses), else whole, as a PostgreSQL array; and a single value
        written `IN :name`."""
        from sqlalchemy.engine import make_url

        arrays = make_url(self.url).get_backend_name() == "postgresql"
        problems = [
            # A database reads 'IN 5' or 'IN NULL' as a syntax error, at run time. Not bound as a one-value
            # list: a single value there is most often a list written amiss ('teams: payments, cards' is
            # one string), which would then match nothing without a word.
            f"params: {name!r} is one value, not a list: 'IN :{name}' takes a list ('{name}: [...]', one value "
            f"or more); for one value write '= :{name}'"
            for name in used
            if "IN" in places[name] and not isinstance(self.params[name], list)
        ]
        for name in (n for n in used if isinstance(self.params[n], list)):
            if "IN (" in places[name]:
                problems.append(f"params: {name!r} is a list: write 'IN :{name}', without parentheses (its own)")
            elif places[name] == {"IN", "other"}:
                problems.append(
                    f"params: {name!r} is a list, which the query uses both in 'IN :{name}' and elsewhere: "
                    "a list is bound either way in one query"
                )
            elif places[name] == {"other"} and not arrays:
                problems.append(
                    f"params: {name!r} is a list: write 'column IN :{name}' (only PostgreSQL binds a list as an "
                    f"array, '= ANY(:{name})')"
                )
        return problems


def parameter_places(query: str) -> dict[str, set[str]]:
    """The query's ``:name`` parameters, in the order it first names each, as SQL's tokens tell them (not in a
    string, a quoted name or a comment, nor a cast ``::`` or a number ``arr[:2]``), with where it writes each:
    'IN' right after IN ('id IN :ids'), 'IN (' in the parentheses of one ('id IN (:ids)'), else 'other'
    ('= ANY(:ids)')."""
    from sqlparse import tokens as sql_tokens

    places: dict[str, set[str]] = {}
    before: list[str] = []  # the last two tokens, less whitespace and comments, in upper case
    for kind, text, name in _query_tokens(query):
        if name is not None:
            place = "IN" if before[-1:] == ["IN"] else "IN (" if before[-2:] == ["IN", "("] else "other"
            places.setdefault(name, set()).add(place)
        if kind not in sql_tokens.Whitespace and kind not in sql_tokens.Comment:
            before = [*before[-1:], text.upper()]
    return places


def query_parts(query: str) -> Iterable[tuple[str, str | None]]:
    """The query's text, token by token, with the parameter each ``:name`` token names (else None)."""
    return ((text, name) for _, text, name in _query_tokens(query))


def _query_tokens(query: str) -> Iterable[tuple[Any, str, str | None]]:
    from sqlparse import lexer
    from sqlparse import tokens as sql_tokens

    for kind, text in lexer.tokenize(query):
        named = kind in sql_tokens.Name.Placeholder and re.fullmatch(r":([^\W\d]\w*)", text)
        yield kind, text, named.group(1) if named else None


class ChunkConfig(Strict):
    """Split long text into chunks of at most ``max_chars``, on paragraph boundaries, overlapping."""

    max_chars: int = Field(default=4000, ge=100)
    overlap_chars: int = Field(default=200, ge=0)

    @field_validator("overlap_chars")
    @classmethod
    def _overlap_fits(cls, overlap: int, info: ValidationInfo) -> int:
        # More than half, and a chunk of short paragraphs moves on by one of them: the output grew to
        # about paragraphs x max_chars (3999 of 4000: a 12 KB file of 1,000 lines made 2.7 MB).
        max_chars = info.data.get("max_chars")
        if max_chars is not None and overlap > max_chars // 2:
            raise ValueError(
                f"must be at most half of max_chars ({max_chars // 2}), so a chunk repeats no more than it brings"
            )
        return overlap


class DocumentsSource(Strict):
    """PDF, DOCX, HTML, Markdown and text files: a file, folder or glob, local or ``s3://``."""

    type: Literal["documents"]
    path: str
    chunk: ChunkConfig | None = None  # default: one record per PDF page or document section


_PILLOW_BOMB_PIXELS = 2 * 89_478_485  # twice PIL.Image.MAX_IMAGE_PIXELS, its default
# An images source's default pixel limit, also the one a VQA record's image named by a path or URI is held to
# (a files, SQL or Hugging Face source has no setting for it).
DEFAULT_MAX_PIXELS = 50_000_000


class ImagesSource(Strict):
    """Images with questions and answers: a folder or ``s3://`` prefix and a JSONL/CSV sidecar.

    Each sidecar row names an image (path relative to ``path``) and gives a question and answer.
    """

    type: Literal["images"]
    path: str
    sidecar: str
    image_column: str = "image"
    question_column: str = "question"
    answer_column: str = "answer"
    max_side: int | None = Field(default=None, ge=16)  # resize so the longer side is at most this
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)  # larger is treated as a decompression bomb
    formats: list[Literal["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"]] = Field(
        default_factory=lambda: ["JPEG", "PNG", "WEBP"]
    )

    @field_validator("max_pixels")
    @classmethod
    def _pillow_opens_it(cls, max_pixels: int) -> int:
        # Pillow refuses an image past twice its own MAX_IMAGE_PIXELS before our check reads the size; its
        # limit is module-wide (every image check and stage in the process, Ray workers apart), so it stays.
        if max_pixels > _PILLOW_BOMB_PIXELS:
            raise ValueError(
                f"at most {_PILLOW_BOMB_PIXELS} (past it Pillow, which decodes the images, refuses one as a "
                "decompression bomb)"
            )
        return max_pixels


class HFSource(Strict):
    """A Hugging Face dataset saved to disk (``save_to_disk``) or a folder of its parquet/arrow files."""

    type: Literal["hf"]
    path: str
    split: str | None = None  # default: every split


SourceConfig = Annotated[
    FilesSource | SqlSource | DocumentsSource | ImagesSource | HFSource, Field(discriminator="type")
]


# --- what the input rows must look like, and what record they become ------------------------------


def not_input_columns(names: Iterable[str]) -> None:
    """Refuse input column names that are the record's own: its id (a hash) and source (a struct). The
    readers rename an input's columns of those names (connectors/base.py, with_lineage), so a setting naming
    them meant the input's and would be given the record's: rendered into training data, checked against
    the hash, or grouping each record alone."""
    reserved = sorted(set(names) & set(RESERVED))
    if reserved:
        raise ValueError(
            "; ".join(f"{n!r} is the record's own {n}, not an input column: use input_{n}" for n in reserved)
            + " (an input's columns of these names are renamed so)"
        )


class InputSchema(Strict):
    """Columns the input rows must have, with their types; checked before anything else."""

    columns: dict[str, Literal["str", "int", "float", "bool"]] = Field(default_factory=dict)
    optional: list[str] = Field(default_factory=list)

    @field_validator("columns")
    @classmethod
    def _columns_are_the_inputs(cls, columns: dict[str, str]) -> dict[str, str]:
        not_input_columns(columns)
        return columns

    def required_columns(self) -> list[str]:
        """The declared columns every row must have (those not ``optional``), sorted."""
        return sorted(set(self.columns) - set(self.optional))

    @model_validator(mode="after")
    def _optional_are_declared(self) -> InputSchema:
        unknown = sorted(set(self.optional) - set(self.columns))
        if unknown:
            raise ValueError(f"optional names columns that are not declared: {unknown}")
        return self


class RecordShape(Strict):
    """Which record kind the rows become; each field is a column name or a Jinja template."""

    # A table row (``RecordKind`` "table") is what an input_schema validates, not a record a format publishes.
    kind: Literal["document", "instruction", "vqa"] = "instruction"
    text: str | None = None
    title: str | None = None
    prompt: str | None = None
    completion: str | None = None
    label: str | None = None
    image: str | None = None
    question: str | None = None
    answer: str | None = None

    @field_validator("text", "title", "prompt", "completion", "label", "image", "question", "answer")
    @classmethod
    def _templates_parse(cls, spec: str | None) -> str | None:
        if spec is None:
            return spec
        names = {spec}  # a column name
        if "{{" in spec or "{%" in spec:
            import jinja2  # only for a recipe with templates
            import jinja2.meta

            env = jinja2.Environment()
            try:
                tree = env.parse(spec)
                names = jinja2.meta.find_undeclared_variables(tree)
            except jinja2.TemplateSyntaxError as error:
                raise ValueError(f"template syntax error: {error.message}") from None
            # jinja2 refuses an unknown filter or test only outside a block: inside one ({% if %}, an inline
            # if) it is left to fail on each row that reaches it, quarantining them all for a recipe's typo.
            for node in tree.find_all((jinja2.nodes.Filter, jinja2.nodes.Test)):
                kind, known = ("filter", env.filters) if isinstance(node, jinja2.nodes.Filter) else ("test", env.tests)
                if node.name not in known:
                    raise ValueError(f"template syntax error: No {kind} named {node.name!r}.")
        not_input_columns(names)
        return spec

    @model_validator(mode="after")
    def _fields_belong_to_kind(self) -> RecordShape:
        allowed = set(CONTENT_COLUMNS[self.kind])
        given = {name for name in _SHAPE_FIELDS if getattr(self, name) is not None}
        wrong = sorted(given - allowed)
        if wrong:
            raise ValueError(f"{wrong} are not fields of a {self.kind} record; it has {sorted(allowed)}")
        return self

    def mapping(self) -> dict[str, str | None]:
        """Target field -> template or column; a field not set takes the same-named column."""
        return {name: getattr(self, name) for name in CONTENT_COLUMNS[self.kind]}

    def fingerprint(self, input_schema: InputSchema | None) -> str:
        """sha256 of the record kind and its fields' templates or columns, and of the recipe's ``input_schema``,
        which reads and casts the values they see (a column as text or a float): what made a version's records of
        its input, whatever else in the recipe (a stage, ``batch_rows``, a release's ``TEXT_RULES``) changed since.
        Without declared columns, the hash of earlier releases, which left the schema out."""
        settings = self.model_dump(mode="json")
        if input_schema is not None and input_schema.columns:
            settings["input_schema"] = input_schema.model_dump(mode="json")
        return _sha256_of(settings)


_SHAPE_FIELDS = ("text", "title", "prompt", "completion", "label", "image", "question", "answer")


# --- stages --------------------------------------------------------------------------------------


class ExactDedupConfig(Strict):
    """Drop records whose normalised content was already seen (first occurrence wins)."""

    type: Literal["exact_dedup"]
    fields: list[str] | None = None  # default: the record kind's content fields
    normalize: bool = True  # case, Unicode form and whitespace do not make content new
    across_runs: bool = True  # also drop content already published in an earlier version


class NearDedupConfig(Strict):
    """Drop near-duplicates: MinHash over shingles, LSH banding, pairs confirmed by estimated Jaccard."""

    type: Literal["near_dedup"]
    fields: list[str] | None = None  # default: the record kind's content fields
    shingle: Literal["word", "char"] = "word"
    shingle_size: int = Field(default=3, ge=1, le=32)
    num_perm: int = Field(default=128, ge=8, le=1024)
    bands: int = Field(default=32, ge=1)
    threshold: float = Field(default=0.7, gt=0.0, le=1.0)
    across_runs: bool = True  # also drop content near-duplicating earlier published versions

    @model_validator(mode="after")
    def _bands_divide_perms(self) -> NearDedupConfig:
        if self.num_perm % self.bands:
            raise ValueError(f"num_perm ({self.num_perm}) must be a multiple of bands ({self.bands})")
        return self


class ImageDedupConfig(Strict):
    """Drop records whose image's perceptual hash (pHash) is within ``max_distance`` bits of an earlier
    one's, and (``match_question``, VQA records) whose question is the same."""

    type: Literal["image_dedup"]
    column: str = "image_bytes"
    max_distance: int = Field(default=6, ge=0, le=32)
    match_question: bool = True  # several questions about one image are separate examples
    across_runs: bool = True  # also drop images near-duplicating those of earlier published versions


class CleanConfig(Ruled):
    """Repair text in place; each kind of change is counted in the manifest's stage stats."""

    # 2: zero-width joiners kept after non-ASCII letters, form feed and vertical tab as a space, U+2028 a
    #    new line and U+2029 a blank line, large_string columns (JSONL text) cleaned too.
    # 3: a comparison in code ("a<b and c>d") is not a tag; only complete entities ("&amp;", not "&copy")
    #    are decoded; fenced code blocks keep their whitespace.
    # 4: the markup and entities of code (fenced code blocks, code spans) stay.
    RULES: ClassVar[int] = 4

    type: Literal["clean"]
    fields: list[str] | None = None  # default: the record kind's text fields
    fix_unicode: bool = True  # mojibake ("cafÃ©" -> "café") with ftfy
    strip_html: bool = True  # tags, comments and entities left over from HTML, not in code
    remove_control: bool = True  # control and zero-width characters (tabs and newlines stay)
    normalize_whitespace: bool = True  # runs of spaces, blank-line runs, leading/trailing space; not in ``` code


class LengthFilterConfig(Ruled):
    """Drop records whose text is too short or too long (characters and words)."""

    RULES: ClassVar[int] = 2  # 2: the line joining a record's fields is not counted against max_chars

    type: Literal["length_filter"]
    fields: list[str] | None = None
    min_chars: int | None = Field(default=None, ge=0)
    max_chars: int | None = Field(default=None, ge=1)
    min_words: int | None = Field(default=None, ge=0)
    max_words: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _bounds_leave_room(self) -> LengthFilterConfig:
        for unit in ("chars", "words"):
            low, high = getattr(self, f"min_{unit}"), getattr(self, f"max_{unit}")
            if low is not None and high is not None and low > high:
                raise ValueError(f"min_{unit} ({low}) is more than max_{unit} ({high}): every record would be filtered")
        return self


class LanguageFilterConfig(Strict):
    """Keep records in the given languages (ISO 639-1), detected with langdetect's packaged profiles."""

    type: Literal["language_filter"]
    fields: list[str] | None = None
    languages: list[str] = Field(default_factory=lambda: ["en"], min_length=1)
    min_confidence: float = Field(default=0.8, ge=0.0, le=1.0)

    @field_validator("languages")
    @classmethod
    def _languages_detectable(cls, languages: list[str]) -> list[str]:
        # A language langdetect has no profile for is never detected: every record would be filtered.
        known = detectable_languages()
        unknown = [code for code in languages if code not in known]
        if unknown:
            raise ValueError(f"{unknown} are not language codes langdetect detects; it detects {known}")
        return languages


def detectable_languages() -> list[str]:
    """The codes langdetect reports (ISO 639-1, and zh-cn / zh-tw): one per profile it ships."""
    from importlib.resources import files

    return sorted(profile.name for profile in (files("langdetect") / "profiles").iterdir())


_NgramSize = Annotated[int, Field(ge=1)]
_Share = Annotated[float, Field(ge=0.0)]


class RepetitionFilterConfig(Ruled):
    """Gopher repetition rules (Rae et al. 2021, table A1): repeated lines, paragraphs and n-grams."""

    RULES: ClassVar[int] = 2  # 2: each Han or kana character a word (text without spaces had one word)

    type: Literal["repetition_filter"]
    fields: list[str] | None = None
    # A share below 0 filters every record, and an n-gram of no words measures nothing.
    max_duplicate_line_fraction: float = Field(default=0.30, ge=0.0)
    max_duplicate_paragraph_fraction: float = Field(default=0.30, ge=0.0)
    max_duplicate_line_char_fraction: float = Field(default=0.20, ge=0.0)
    max_duplicate_paragraph_char_fraction: float = Field(default=0.20, ge=0.0)
    max_top_ngram_char_fraction: dict[_NgramSize, _Share] = Field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    max_duplicate_ngram_char_fraction: dict[_NgramSize, _Share] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )


class RatioFilterConfig(Ruled):
    """Drop records where symbols or digits make up too much of the text (tables, dumps, noise)."""

    RULES: ClassVar[int] = 2  # 2: no-break and ideographic spaces are spaces, not symbols

    type: Literal["ratio_filter"]
    fields: list[str] | None = None
    max_symbol_ratio: float | None = Field(default=0.25, ge=0.0, le=1.0)  # of non-space characters
    max_digit_ratio: float | None = Field(default=0.5, ge=0.0, le=1.0)


class InstructionFilterConfig(Strict):
    """Drop instruction pairs with an empty or trivial completion, or a completion that repeats the prompt."""

    type: Literal["instruction_filter"]
    min_completion_chars: int = Field(default=1, ge=0)
    trivial_completions: list[str] = Field(
        default_factory=lambda: ["n/a", "na", "none", "null", "todo", "tbd", "...", "-", "?", "no answer"]
    )
    drop_prompt_equals_completion: bool = True


class Expectation(Strict):
    """One great-expectations check on one column; rows that fail it are quarantined under its name."""

    column: str
    check: Literal["not_null", "unique", "length_between", "between", "matches_regex", "in_set"]
    min: float | None = None  # length_between / between
    max: float | None = None
    regex: str | None = None  # matches_regex
    values: list[str | int | float | bool] | None = None  # in_set

    @field_validator("regex")
    @classmethod
    def _regex_compiles(cls, regex: str | None) -> str | None:
        # great-expectations would pass every row against a pattern that does not compile; one RE2
        # cannot run (a backreference) is refused here, not on the first batch.
        if regex is not None:
            re2_pattern(regex)
        return regex

    @field_validator("values", mode="before")
    @classmethod
    def _no_null_value(cls, values: Any) -> Any:
        # pydantic says a null is none of a string, an integer, a number and a boolean, one line each.
        if isinstance(values, list) and any(value is None for value in values):
            raise ValueError("a null is no value to be in a set (in_set passes nulls: not_null fails them)")
        # So does a date, as YAML reads an unquoted 2024-01-01. Not taken as its text: a date-time's
        # (2024-01-01T10:00:00Z) is not the text it was written as, which the column's text is compared with.
        dates = [value for value in values if isinstance(value, date)] if isinstance(values, list) else []
        if dates:
            raise ValueError(
                f"{dates[0]} is a date to YAML, not text: quote it (in_set compares text, numbers and booleans)"
            )
        return values

    @model_validator(mode="after")
    def _has_its_arguments(self) -> Expectation:
        own = {
            "length_between": ("min", "max"),
            "between": ("min", "max"),
            "matches_regex": ("regex",),
            "in_set": ("values",),
        }
        given = [n for n in ("min", "max", "regex", "values") if getattr(self, n) is not None]
        other = [n for n in given if n not in own.get(self.check, ())]
        if other:  # set for another check, or misplaced: it would change nothing, unseen
            takes = f"it takes {' and '.join(own[self.check])}" if self.check in own else "it takes no setting"
            verb = "does" if len(other) == 1 else "do"
            raise ValueError(f"{' and '.join(other)} {verb} not apply to {self.check}: {takes}")
        if self.check in own and all(getattr(self, n) is None for n in own[self.check]):
            raise ValueError(f"{self.check} needs {' or '.join(own[self.check])}")
        if self.check == "length_between" and any(v is not None and v != int(v) for v in (self.min, self.max)):
            raise ValueError("length_between counts characters: its min and max are whole numbers")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is more than max ({self.max:g}): every row would fail")
        if self.check == "in_set" and self.values == []:
            raise ValueError("in_set needs values")
        return self


class ExpectationsConfig(Strict):
    """Validate every batch with great-expectations (after schema validation, the first gate)."""

    type: Literal["expectations"]
    expect: list[Expectation] = Field(min_length=1)


# The stages curation/stages/quality.py builds.
QualityConfig = (
    ExpectationsConfig
    | CleanConfig
    | LengthFilterConfig
    | LanguageFilterConfig
    | RepetitionFilterConfig
    | RatioFilterConfig
    | InstructionFilterConfig
    | NearDedupConfig
    | ImageDedupConfig
)

StageConfig = Annotated[
    QualityConfig | ExactDedupConfig | PiiConfig,
    Field(discriminator="type"),
]


# --- output --------------------------------------------------------------------------------------


OutputFormat = Literal[
    "text", "jumpstart-instruction", "jumpstart-chat", "messages", "bedrock-conversation", "jumpstart-vqa"
]
DEFAULT_FORMAT: dict[str, OutputFormat] = {
    "document": "text",
    "instruction": "jumpstart-instruction",
    "vqa": "jumpstart-vqa",
}
# The record kind each format publishes (``curation.formats.FORMATS`` renders them).
FORMAT_KINDS: dict[OutputFormat, str] = {
    "text": "document",
    "jumpstart-instruction": "instruction",
    "jumpstart-chat": "instruction",
    "messages": "instruction",
    "bedrock-conversation": "instruction",
    "jumpstart-vqa": "vqa",
}


DOCUMENT_GROUP = "document"  # output.group_by: each record's input document (``Recipe.groups_by_document``)


class OutputConfig(Strict):
    dest: str = "output"
    format: OutputFormat | None = None  # default: the natural format of the record kind
    shard_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    validation_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    split_seed: str = "curation"
    # Split settings: a record column whose values keep their share on both sides (e.g. label), and a
    # column whose values never straddle train and validation (customer, document).
    stratify_by: str | None = None
    group_by: str | None = None
    system_prompt: str | None = None  # chat and conversation formats: a system turn before each exchange
    chunk_chars: int | None = Field(default=None, ge=16)  # text format: cut documents into pieces this long
    # An incremental run's version also holds the records of the version it extends, so the latest
    # version is the whole dataset; false: each version holds only what its run took.
    carry_forward: bool = True

    @field_validator("split_seed", mode="before")
    @classmethod
    def _seed_as_text(cls, seed: Any) -> Any:
        # YAML reads `split_seed: 7` as a number; it is the seed "7" (the same split).
        return str(seed) if isinstance(seed, int) and not isinstance(seed, bool) else seed

    @field_validator("stratify_by", "group_by")
    @classmethod
    def _splits_by_an_input_column(cls, column: str | None) -> str | None:
        if column is not None:
            not_input_columns([column])
        return column

    @model_validator(mode="after")
    def _options_fit_format(self) -> OutputConfig:
        if self.chunk_chars is not None and self.format not in (None, "text"):
            raise ValueError(f"chunk_chars applies to the text format, not {self.format}")
        chat = ("jumpstart-chat", "messages", "bedrock-conversation")
        if self.system_prompt is not None and self.format not in chat:
            raise ValueError(
                f"system_prompt applies to the {', '.join(chat)} formats, not {self.format or 'the default format'}"
            )
        return self

    def carry_columns(self) -> dict[str, str]:
        """Input columns the split needs at the writer, beyond the record's own fields, and the setting naming each."""
        named = (("output.stratify_by", self.stratify_by), ("output.group_by", self.group_by))
        return {column: setting for setting, column in named if column}


def ray_missing() -> str | None:
    """Why ``engine: ray`` cannot run here (Ray Data is not installed), or None."""
    from importlib.util import find_spec

    try:
        if find_spec("ray") is not None:  # found without importing it (seconds)
            return _ray_data_missing()
    except ValueError:  # a module put in place without a spec
        pass
    return "engine 'ray' needs Ray Data, which is not installed: pip install 'curation[ray]' (or engine: local)"


def _ray_data_missing() -> str | None:
    """Why the Ray found cannot run Ray Data: ``pip install ray`` leaves out its ``data`` extra (pandas
    and the rest), and ``import ray.data`` then fails once the run has started. Told by the installed
    packages' metadata, without importing Ray."""
    from importlib import metadata

    try:
        version, requires = metadata.version("ray"), metadata.requires("ray") or []
    except metadata.PackageNotFoundError:  # a Ray not installed as a package (a source checkout): trusted
        return None
    from packaging.requirements import InvalidRequirement, Requirement  # Ray's own dependency

    missing = []
    for line in requires:
        try:
            needed = Requirement(line)
        except InvalidRequirement:  # not ours to judge: pip installed it
            continue
        marker = needed.marker
        if marker is None or not marker.evaluate({"extra": "data"}) or marker.evaluate({"extra": ""}):
            continue  # not the data extra's, or not for this platform
        try:
            metadata.version(needed.name)
        except metadata.PackageNotFoundError:
            missing.append(needed.name)
    if not missing:
        return None
    return (
        f"engine 'ray' needs Ray Data: Ray {version} is installed without it ({', '.join(missing)} not "
        "installed): pip install 'curation[ray]' (or engine: local)"
    )


STATE_DRIVERS = {"sqlite": "pysqlite", "postgresql": "psycopg"}


def plain_sqlite_url(url: str) -> str:
    """``url`` with a SQLite file's driver left out (``sqlite+pysqlite:///x`` is ``sqlite:///x``): one
    spelling for the code that reads the file's path from it."""
    return "sqlite:" + url.removeprefix("sqlite+pysqlite:") if url.startswith("sqlite+pysqlite:") else url


class Recipe(Strict):
    # A folder of dest and a key of the state store: 200 is what its tables hold (runs.dataset), and fits
    # in a file name (255 bytes on most file systems).
    dataset: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=200)
    sources: list[SourceConfig] = Field(min_length=1)
    input_schema: InputSchema | None = None
    record: RecordShape = Field(default_factory=RecordShape)
    stages: list[StageConfig] = Field(default_factory=lambda: [ExactDedupConfig(type="exact_dedup")])
    output: OutputConfig = Field(default_factory=OutputConfig)
    state: str = "sqlite:///.curation/state.db"
    # A batch is held in memory, a few times over: ten million rows is past what any run needs, and a
    # count past 64 bits overflowed Arrow's slicing once the run had started.
    batch_rows: int = Field(default=50_000, ge=1, le=10_000_000)
    engine: Literal["local", "ray"] = "local"  # ray: the same stages on Ray Data (pip install 'curation[ray]')
    ray_address: str | None = None  # a Ray cluster (ray://host:10001 or auto); none: a local Ray instance

    @field_validator("engine")
    @classmethod
    def _ray_is_installed(cls, engine: str) -> str:
        if engine == "ray" and (problem := ray_missing()):
            raise ValueError(problem)
        return engine

    @field_validator("state")
    @classmethod
    def _state_is_sqlite_or_postgresql(cls, url: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            parsed = make_url(url)
        except ArgumentError:
            # Not quoted back: a URL can hold a password (a recipe error can reach a CI log).
            raise ValueError("not a database URL (sqlite:///path or postgresql+psycopg://...)") from None
        _no_bare_at_sign(parsed.host)
        backend = parsed.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise ValueError(f"the state store is SQLite or PostgreSQL, not {backend}")
        # The drivers curation installs (SQLAlchemy 2.1 reads a bare postgresql:// with psycopg): another
        # (psycopg2, asyncpg) is not installed, or async, and the run would fail opening the store.
        driver, installed = parsed.get_driver_name(), STATE_DRIVERS[backend]
        if driver != installed:
            raise ValueError(
                f"the state store's {backend} driver is {installed} ({backend}+{installed}:// or {backend}://), not {driver}"
            )
        # One spelling of a SQLite file, which the recipe's folder and the state store read (a relative
        # path taken from the recipe's folder, its folder made, write-ahead logging).
        return plain_sqlite_url(url)

    @field_validator("sources", mode="before")
    @classmethod
    def _default_source_type(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"type": "files", **v} if isinstance(v, dict) and "type" not in v else v for v in value]
        return value

    @model_validator(mode="after")
    def _format_fits_kind(self) -> Recipe:
        if self.output.format is None:
            if self.record.kind not in DEFAULT_FORMAT:
                raise ValueError(f"output.format must be set for {self.record.kind} records")
            self.output.format = DEFAULT_FORMAT[self.record.kind]
        return self

    @property
    def groups_by_document(self) -> bool:
        """Whether ``output.group_by: document`` splits by each record's input (``source.uri``): where the
        recipe reads a ``documents`` source, whose records have no column of that name (or any other to
        group chunks by), so a recipe grouping by an input column named ``document`` keeps its meaning."""
        return self.output.group_by == DOCUMENT_GROUP and any(isinstance(s, DocumentsSource) for s in self.sources)

    def carry_columns(self) -> dict[str, str]:
        """Input columns the split needs at the writer (``OutputConfig.carry_columns``): none for the document
        grouping, which reads the record's ``source``."""
        carried = self.output.carry_columns()
        if self.groups_by_document:
            del carried[DOCUMENT_GROUP]
        return carried

    def fingerprint(self) -> str:
        """sha256 of the validated recipe: two runs with the same hash did the same work."""
        # Where it runs (engine, cluster) does not change the work, so it is left out of the hash.
        settings = self.model_dump(mode="json", exclude={"engine", "ray_address"})
        for stage, dumped in zip(self.stages, settings["stages"], strict=True):
            if isinstance(stage, Ruled) and stage.RULES > 1:  # rules 1 left out: older fingerprints hold
                dumped["rules"] = stage.RULES
            if not isinstance(stage, PiiConfig):
                continue
            if (key_id := stage.pseudonym_key_id()) is not None:
                dumped["secret"] = key_id  # dumped as "**********" whatever it is; the environment's not at all
            dumped["detection_rules"] = DETECTION_RULES
        settings["text_rules"] = TEXT_RULES
        return _sha256_of(settings)


def _sha256_of(settings: dict[str, Any]) -> str:
    """sha256 of settings as canonical JSON: the same for the same settings, however they were written."""
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# --- settings that only the whole recipe can judge -------------------------------------------------


def record_columns(recipe: Recipe) -> dict[str, str | None]:
    """The columns every record has when the stages run, as ``Shape`` makes them, with their type where
    the recipe says it. ``id`` and ``source`` are columns too (``unique`` on ``id`` catches two rows of
    one SQL ``key``)."""
    kind = recipe.record.kind
    columns: dict[str, str | None] = {"id": "str", "source": "struct"}
    columns.update(dict.fromkeys(CONTENT_COLUMNS[kind], "str"))  # fields are rendered as text
    # The images connector's verified image, and an hf source's Image() feature read as a VQA record's picture.
    if any(
        isinstance(source, ImagesSource) or (isinstance(source, HFSource) and kind == "vqa")
        for source in recipe.sources
    ):
        columns["image_bytes"] = "bytes"
    declared = recipe.input_schema.columns if recipe.input_schema is not None else {}
    for name in recipe.carry_columns():  # passed through from the input as they are
        if name not in columns and name not in ("id", "source"):
            columns[name] = declared.get(name)
    return columns


def format_problems(recipe: Recipe) -> list[tuple[tuple[str | int, ...], str]]:
    """(setting, problem) for an ``output.format`` that does not publish the recipe's record kind: the
    run could only fail once started."""
    fmt, kind = recipe.output.format, recipe.record.kind
    if fmt is None or FORMAT_KINDS[fmt] == kind:
        return []
    fitting = [name for name, takes in FORMAT_KINDS.items() if takes == kind]
    fits = f"{kind} records are published as {', '.join(fitting)}" if fitting else f"no format publishes {kind} records"
    return [(("output", "format"), f"{fmt!r} publishes {FORMAT_KINDS[fmt]} records, and record.kind is {kind}: {fits}")]


def group_problems(recipe: Recipe) -> list[tuple[tuple[str | int, ...], str]]:
    """(setting, problem) for ``group_by: document`` where a documents source is read beside sources of other
    types: the split groups every record by its input file then, so each file of rows (a JSONL of tickets)
    was one group, whatever the ``document`` column of its rows said, and that column was not carried."""
    others = sorted({source.type for source in recipe.sources if not isinstance(source, DocumentsSource)})
    if not recipe.groups_by_document or not others:
        return []
    return [
        (
            ("output", "group_by"),
            f"'document' groups a documents source's chunks by their file, and the recipe also reads "
            f"{', '.join(others)} sources, whose records would be grouped by their file too (not by a column "
            "'document'): split the documents source into a recipe of its own",
        )
    ]


def between_needs_numbers(column: str, holds: str = "text") -> str:
    """Why ``between`` cannot check a column of text (or dates, lists...): great-expectations passes every
    such value, in any bounds."""
    return (
        f"between compares numbers, and {column!r} holds {holds}: every row would pass (length_between checks length)"
    )


def needs_scalars(check: str, column: str, holds: str) -> str:
    """Why ``in_set`` or ``matches_regex`` cannot check a column of objects or lists: great-expectations
    compares Python's text of each (``{'x': 1}``) or the object itself, never a member of it."""
    return f"{check} checks text or numbers, and {column!r} holds {holds}: not one by one (not_null and unique check any column)"


def length_needs_text(column: str, holds: str) -> str:
    """Why ``length_between`` cannot check a column of numbers (or lists, ...): great-expectations measures
    no length of a number (every row fails), nor rightly of a list."""
    return f"length_between measures text, and {column!r} holds {holds}: no row's length could be told (between compares numbers)"


def _in_set_needs_own_kind(column: str, holds: str, values: list[str | int | float | bool]) -> str | None:
    """Why ``in_set``'s values cannot match a column declared ``int``, ``float`` or ``bool``: a quoted
    number (``'1'``) is text, which no number equals, and a boolean is no number (nor a number one)."""
    if holds == "bool":
        wrong = [value for value in values if not isinstance(value, bool)]
        kind, fix = "true or false", "write true or false, unquoted"
    else:
        wrong = [value for value in values if isinstance(value, bool) or not isinstance(value, int | float)]
        quoted = [value for value in wrong if isinstance(value, str)]
        kind = "numbers"
        fix = f"unquote them: [{', '.join(quoted)}]" if quoted else "a boolean is no number"
    if not wrong:
        return None
    return f"{json.dumps(wrong)} are not {kind}, and {column!r} holds {holds}: every row would fail ({fix})"


def stage_problems(recipe: Recipe) -> list[tuple[tuple[str | int, ...], str]]:
    """(setting, problem) for each stage setting the records cannot satisfy: a column they do not have
    (a misspelt one would crash a stage halfway through the input, or quietly make it do nothing), or
    ``between`` on text (great-expectations passes every row)."""
    columns = record_columns(recipe)
    kind = recipe.record.kind
    have = f"{kind} records have {[name for name in columns if name not in ('id', 'source')]}"
    problems: list[tuple[tuple[str | int, ...], str]] = []
    # The sources whose VQA records may hold their pictures' bytes: an hf source's Image() feature (one whose
    # images are paths refuses ``ocr`` by file and column when read: this check cannot see a column's type).
    all_images = all(isinstance(source, ImagesSource | HFSource) for source in recipe.sources)
    for number, stage in enumerate(recipe.stages):
        fields = getattr(stage, "fields", None) or []
        missing = [name for name in fields if name not in columns]
        if missing:
            problems.append((("stages", number, "fields"), f"{missing} are not columns of the records; {have}"))
        if isinstance(stage, InstructionFilterConfig) and kind != "instruction":
            problems.append(
                (
                    ("stages", number),
                    f"instruction_filter checks an instruction's prompt and completion, and {kind} records have "
                    "none (length_filter, repetition_filter and ratio_filter check any record's text)",
                )
            )
        if isinstance(stage, ImageDedupConfig) and stage.column not in columns:
            problems.append(
                (
                    ("stages", number),
                    f"image_dedup compares images in {stage.column!r}, a column {kind} records from these sources "
                    f"do not have: images come from an `images` source, or an `hf` source's Image() feature (kind vqa)",
                )
            )
        elif isinstance(stage, ImageDedupConfig) and columns[stage.column] not in ("bytes", None):
            # A record's text (its question, a VQA image's name or path) failed the run with a TypeError.
            holds = "text" if columns[stage.column] == "str" else columns[stage.column]
            problems.append(
                (
                    ("stages", number, "column"),
                    f"image_dedup compares images in {stage.column!r}, which {kind} records hold as {holds}, not an "
                    "image's bytes: compare `image_bytes`, the pictures an `images` source or an `hf` source's "
                    "Image() feature gives",
                )
            )
        if isinstance(stage, PiiConfig) and stage.ocr and kind == "vqa" and not all_images:
            # The stage reads the text in images the images connector hands on; an image named by a path in
            # a row is read by the writer alone, as it is: asked to redact it, the run would publish it unread.
            problems.append(
                (
                    ("stages", number, "ocr"),
                    "ocr redacts text in the images an `images` source reads (image_bytes), or an `hf` source's "
                    "Image() feature; a VQA record from another source names its image by a path, published as it "
                    "is: read them with an `images` source",
                )
            )
        for at, spec in enumerate(getattr(stage, "expect", [])):
            if spec.column not in columns:
                problems.append(
                    (("stages", number, "expect", at, "column"), f"{spec.column!r} is not a column; {have}")
                )
            elif spec.check == "between" and columns[spec.column] in ("str", "struct", "bytes"):
                holds = "text" if columns[spec.column] == "str" else columns[spec.column]
                problems.append((("stages", number, "expect", at, "check"), between_needs_numbers(spec.column, holds)))
            elif spec.check in ("in_set", "matches_regex") and columns[spec.column] == "struct":
                problems.append(
                    (("stages", number, "expect", at, "check"), needs_scalars(spec.check, spec.column, "struct"))
                )
            elif spec.check == "length_between" and columns[spec.column] not in (None, "str"):
                problems.append(
                    (("stages", number, "expect", at, "check"), length_needs_text(spec.column, columns[spec.column]))
                )
            elif spec.check == "in_set" and columns[spec.column] == "str":
                not_text = [value for value in spec.values or [] if not isinstance(value, str)]
                if not_text:  # YAML reads `values: [1, 2]` as numbers: no text value is ever one of them
                    problems.append(
                        (
                            ("stages", number, "expect", at, "values"),
                            f"{json.dumps(not_text)} are not text, and {spec.column!r} holds text: every row would "
                            f"fail (quote them: {json.dumps([json.dumps(v) if isinstance(v, bool) else str(v) for v in not_text])})",
                        )
                    )
            elif spec.check == "in_set" and columns[spec.column] in ("int", "float", "bool"):
                problem = _in_set_needs_own_kind(spec.column, columns[spec.column], spec.values or [])
                if problem:
                    problems.append((("stages", number, "expect", at, "values"), problem))
    return problems


# --- loading, with errors that point at the line ----------------------------------------------------


def _yaml_lines(
    node: yaml.Node, path: tuple[Any, ...] = (), seen: set[int] | None = None
) -> dict[tuple[Any, ...], int]:
    """Map each setting's path in the YAML document to its 1-based line number. A node an alias names
    again is walked once (an alias bomb or an alias inside its own value would not end): a setting
    reached through the alias is placed at the alias."""
    seen = set() if seen is None else seen
    lines = {path: node.start_mark.line + 1}
    if id(node) in seen:
        return lines
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            lines.update(_yaml_lines(value, (*path, key.value), seen))
            lines[(*path, key.value)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(_yaml_lines(item, (*path, index), seen))
    return lines


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's message in one line, by the recipe's line and column (its own names the text
    ``"<unicode string>"`` and draws the line over several)."""
    if not isinstance(error, yaml.MarkedYAMLError) or error.problem_mark is None:
        return f": {error}"
    mark = error.problem_mark
    context = error.context_mark
    within = f" ({error.context} on line {context.line + 1})" if error.context and context is not None else ""
    return f" (line {mark.line + 1}, column {mark.column + 1}): {error.problem}{within}"


# How many values aliases may add to a recipe beyond those it writes out: a recipe has hundreds; an alias
# bomb (each level two aliases of the one before) a billion after 30 lines, walked by every check below.
_ALIAS_GROWTH = 100_000


def _alias_problem(node: yaml.Node) -> tuple[tuple[Any, ...], str] | None:
    """(setting, problem) for aliases no recipe needs: one inside the value it names (``x: &a [*a]``), which
    has no end, or ones that make the recipe far larger than its text (an alias bomb). Each YAML node is
    walked once: an alias is the node it names, shared."""
    sizes: dict[int, int] = {}  # id of a node: how many values it holds, aliases expanded
    open_: set[int] = set()  # the nodes being walked, holding the one at hand

    def size(node: yaml.Node, path: tuple[Any, ...]) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_:
            raise _AliasCycleError(path)
        open_.add(id(node))
        total = 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                total += size(key, path) + size(value, (*path, key.value))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                total += size(item, (*path, index))
        open_.discard(id(node))
        sizes[id(node)] = total
        return total

    try:
        expanded = size(node, ())
    except _AliasCycleError as cycle:
        return cycle.path, "an alias inside the value it names (x: &a [*a]): the value would have no end"
    if expanded > len(sizes) + _ALIAS_GROWTH:
        return (), (
            f"aliases make the recipe {expanded:,} values, {expanded - len(sizes):,} more than it writes out (at "
            f"most {_ALIAS_GROWTH:,}): write the settings out"
        )
    return None


class _AliasCycleError(Exception):
    def __init__(self, path: tuple[Any, ...]) -> None:
        self.path = path


def _named_twice(node: yaml.Node, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], str]]:
    """(setting, problem) for each setting named twice in one mapping: YAML keeps the last without a
    word, so a second ``stages:`` would drop the first one's stages (a ``pii`` stage among them)."""
    found: list[tuple[tuple[Any, ...], str]] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                if key.value in first:
                    problem = f"set twice (also on line {first[key.value]}): YAML would keep this one, drop the other"
                    found.append(((*path, key.value), problem + "; merge them"))
                first.setdefault(key.value, key.start_mark.line + 1)
            found.extend(_named_twice(value, (*path, key.value)))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found.extend(_named_twice(item, (*path, index)))
    return found


def _resolve_local(path: str, base: Path) -> str:
    """A relative local path (bare or ``file://``, which storage would take from the current directory) taken from
    ``base``. A glob's trailing ``/`` is kept: ``data/*/`` names folders, ``data/*`` files. A folder's is not: storage
    reads ``in/`` and ``in`` alike, and the path is in the source's watermark key, which would change with it. That
    holds for a folder named like a glob too (``exports [2026]/``), which storage reads by its name."""
    scheme = "file://" if path.startswith("file://") else ""
    local = path.removeprefix(scheme)
    if "://" in local or Path(local).is_absolute():
        return path
    resolved = str(base.resolve() / local)
    return scheme + resolved + ("/" if local.endswith("/") and _read_as_glob(resolved) else "")


def _read_as_glob(path: str) -> bool:
    """Whether storage reads ``path`` as a glob; True where the file system will not say (a name too long, no
    permission): the run's listing then names the path and the error, as an input error, not a traceback here."""
    from connectors.storage import _read_as_glob  # connectors import this module

    try:
        return _read_as_glob(path)
    except OSError:  # StorageError too
        return True


def _resolve_source_paths(source: Any, base_dir: Path) -> None:
    """Relative local paths in a source (and a relative SQLite file in a SQL URL) are taken from ``base_dir``."""
    for name in ("path", "sidecar"):
        if isinstance(getattr(source, name, None), str):
            setattr(source, name, _resolve_local(getattr(source, name), base_dir))
    url = getattr(source, "url", None)
    if isinstance(url, str) and url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        source.url = "sqlite:///" + _resolve_local(url.removeprefix("sqlite:///"), base_dir)


def _union_tags(*unions: Any) -> set[str]:
    """The ``type`` values of tagged unions: pydantic puts them in error locations; readers don't need them."""
    tags = set()
    for union in unions:
        members = get_args(get_args(union)[0]) or (get_args(union)[0],)
        for member in members:
            tags.update(get_args(member.model_fields["type"].annotation))
    return tags


def _unwrap(annotation: Any) -> Any:
    """``X`` of ``Annotated[X, ...]`` and of ``X | None``; a union of several settings models stays."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
            continue
        members = [m for m in get_args(annotation) if m is not type(None)]
        if get_origin(annotation) not in (list, dict) and len(members) == 1:
            annotation = members[0]
            continue
        return annotation


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The settings model at ``loc``, a pydantic error location (holding the ``type`` tag that picks a
    tagged union's member), or None where no model is there."""
    at = _unwrap(Recipe)
    for part in loc:
        if isinstance(at, type) and issubclass(at, BaseModel):
            at = at.model_fields[part].annotation if part in at.model_fields else None
        elif get_origin(at) in (list, dict):
            at = get_args(at)[-1]
        else:  # a tagged union: the part is the tag
            tags = {m: getattr(m, "model_fields", {}).get("type") for m in get_args(at)}
            at = next((m for m, tag in tags.items() if tag and part in get_args(tag.annotation)), None)
        at = _unwrap(at)
    return at if isinstance(at, type) and issubclass(at, BaseModel) else None


def _unknown_setting(loc: tuple[Any, ...], message: str) -> str:
    """pydantic's "Extra inputs are not permitted", with the settings allowed there (and the likely one)."""
    model = _model_at(loc[:-1])
    if model is None:
        return message
    allowed = sorted(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    guess = f"did you mean {close[0]!r}? " if close else ""
    return f"{message}: {guess}the settings here are {', '.join(allowed)}"


def _problem(error: ErrorDetails) -> str:
    """A pydantic error in the recipe's words."""
    if error["type"] == "extra_forbidden":
        return _unknown_setting(error["loc"], error["msg"])
    if error["type"] == "union_tag_invalid":
        return _unknown_type(error["ctx"])
    # A bare name in a list of mappings (`- exact_dedup`, `- docs.jsonl`): pydantic asks for a "dictionary".
    written = {"stages": "type", "sources": "path"}.get(str(error["loc"][0]))
    if (
        error["type"] == "model_attributes_type"
        and written
        and len(error["loc"]) == 2
        and isinstance(error["input"], str)
    ):
        kind = "a stage" if written == "type" else "a source"
        return f"{kind} is a mapping of settings: write `- {written}: {error['input']}`"
    # One where a list is asked for (`sources: in/`): pydantic says only that it "should be a valid list".
    if error["type"] == "list_type" and written and len(error["loc"]) == 1:
        given, each = error["input"], f"{error['msg']}: a list of {error['loc'][0]}, each a mapping"
        if isinstance(given, dict) and given:  # one mapping, unlisted (`sources:\n  path: in/`): its first line
            key, value = next(iter(given.items()))
            return f"{each}: put `- ` before `{key}: {value if isinstance(value, str | int | float) else '...'}`"
        value = given if isinstance(given, str) else "..."
        return f"{each}: write `- {written}: {value}`"
    return error["msg"].removeprefix("Value error, ")  # pydantic's prefix to a validator's own words


def _unknown_type(ctx: dict[str, Any]) -> str:
    """pydantic's message for a ``type`` no member of a tagged union has, with the likely one first."""
    types = re.findall(r"'([^']*)'", ctx["expected_tags"])
    close = difflib.get_close_matches(str(ctx["tag"]), types, n=1)
    guess = f": did you mean {close[0]!r}?" if close else ""
    return f"type {ctx['tag']!r} is not one of {', '.join(types)}{guess}"


def _recipe_error(origin: str, node: yaml.Node | None, found: list[tuple[tuple[Any, ...], str]]) -> RecipeError:
    """One error listing each problem with its setting and line."""
    lines = _yaml_lines(node) if node is not None else {}
    problems = []
    for loc, message in found:
        line = next((lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in lines), None)
        where = ".".join(str(part) for part in loc) or "(top level)"
        at = f" (line {line})" if line else ""
        problems.append(f"  {where}{at}: {message}")
    return RecipeError(f"{origin}: {len(problems)} problem(s) in the recipe:\n" + "\n".join(problems))


# The name a run gives the stage of a recipe type it names otherwise: the name keys the stage's statistics
# and what earlier runs stored, so it stays as it was.
_RUN_NAMES = {"image_dedup": "image_near_dedup"}


def own_name(name: str, taken: Iterable[str]) -> str:
    """The name of a stage of a recipe: its type's (``name``), or for a second stage of that type
    ``name_2`` and so on (``length_filter_2``). A stage's name keys its statistics and names it in the
    rows it sets aside and the items it queues; a dedup stage's also keys what it stores across runs
    (its signatures, which travel to the recorder in a column of that name) and the records annotators
    keep apart in it: two stages sharing one would mix them. A recipe's only stage of a type keeps the
    type's name, so what earlier runs stored under it stays its own."""
    taken = set(taken)
    if name not in taken:
        return name
    return next(f"{name}_{n}" for n in range(2, len(taken) + 3) if f"{name}_{n}" not in taken)


def stage_name(stage_type: str, taken: Iterable[str]) -> str:
    """The name a run gives a recipe stage of type ``stage_type`` after stages named ``taken`` (``own_name``;
    an ``image_dedup`` stage is ``image_near_dedup``)."""
    return own_name(_RUN_NAMES.get(stage_type, stage_type), taken)


def stage_place(origin: Path, recipe: Recipe, message: str) -> str | None:
    """``stages.N (line L)``: where the recipe ``origin`` sets the stage a run's recipe error names first
    (``expectations_2: between compares numbers...``), or None. Stages are named as the run names them
    (``stage_name``)."""
    taken: list[str] = []
    for number, stage in enumerate(recipe.stages):
        name = stage_name(stage.type, taken)
        taken.append(name)
        if re.match(rf"{re.escape(name)}[ :]", message):
            try:
                text = origin.read_text(encoding="utf-8")
                line = _yaml_lines(yaml.compose(text, Loader=RecipeLoader)).get(("stages", number))
            except (OSError, ValueError, yaml.YAMLError):  # the file changed since the run loaded it
                line = None
            return f"stages.{number}" + (f" (line {line})" if line else "")
    return None


class RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading plain scalars as YAML 1.2's core schema does. PyYAML follows YAML 1.1,
    where ``NO`` (Norway), ``on`` and ``yes`` are booleans, ``0755`` and ``010`` octal numbers, ``1_000``
    a thousand and ``12:30`` a base-60 number (750): a query parameter, an expectation's allowed value or
    a key meant as the text it shows became another value, silently. Here only ``true``/``false`` (any
    case YAML 1.2 allows) are booleans, numbers have no leading zero (``0o17`` and ``0x1F`` are octal and
    hex), and the rest is text; a date stays a date (a SQL parameter takes one)."""


_YAML_1_2 = {
    "tag:yaml.org,2002:bool": (r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    "tag:yaml.org,2002:int": (r"^(?:[-+]?(?:0|[1-9][0-9]*)|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    # A dot or an exponent: digits alone are an int, or text when they start with 0 (``0755``).
    "tag:yaml.org,2002:float": (
        r"""^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9]+[eE][-+]?[0-9]+
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        "-+0123456789.",
    ),
}
# YAML 1.1's readings (and its ``=``, which the safe loader cannot even build) are dropped; null, dates,
# ``<<`` merges and the rest stay as PyYAML resolves them.
RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in _YAML_1_2 and tag != "tag:yaml.org,2002:value"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, (_pattern, _first) in _YAML_1_2.items():
    for _char in _first:  # the patterns match apart, so their order does not matter
        RecipeLoader.yaml_implicit_resolvers.setdefault(_char, []).append((_tag, re.compile(_pattern, re.X)))


def parse_recipe(
    text: str, origin: str = "<recipe>", base_dir: Path | None = None, reads_sources: bool = True
) -> Recipe:
    """Validate recipe YAML; relative local paths are taken from ``base_dir`` (the recipe's folder).
    ``reads_sources``: whether the caller connects to its sources (a SQL source's driver must be installed)."""
    try:
        data = yaml.load(text, Loader=RecipeLoader)
        node = yaml.compose(text, Loader=RecipeLoader)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{origin}: not valid YAML{_yaml_problem(exc)}") from None
    except RecursionError:  # PyYAML builds a value within a value by recursion
        raise RecipeError(f"{origin}: not valid YAML: values nested too deeply (a recipe nests a few levels)") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{origin}: a recipe is a YAML mapping with at least 'dataset' and 'sources'")
    if (problem := _alias_problem(node)) is not None:
        raise _recipe_error(origin, node, [problem])
    found = _named_twice(node)
    if found:
        raise _recipe_error(origin, node, found)
    context = {"reads_sources": reads_sources}
    try:
        recipe = Recipe.model_validate(data, context=context)
    except ValidationError as exc:
        raise _recipe_error(origin, node, [*_found(exc), *_problems_past(data, exc, base_dir, context)]) from None
    found = _whole_recipe_problems(recipe, base_dir)
    if found:
        raise _recipe_error(origin, node, found)
    return recipe


def _whole_recipe_problems(
    recipe: Recipe, base_dir: Path | None, dataset_known: bool = True
) -> list[tuple[tuple[Any, ...], str]]:
    """(setting, problem) for what only the whole recipe shows, once its relative local paths are taken
    from ``base_dir`` (the recipe's folder); a source taking in the output only with ``dataset_known``."""
    if base_dir is not None:
        for source in recipe.sources:
            _resolve_source_paths(source, base_dir)
        recipe.output.dest = _resolve_local(recipe.output.dest, base_dir)
        if recipe.state.startswith("sqlite:///") and recipe.state != "sqlite:///:memory:":
            recipe.state = "sqlite:///" + _resolve_local(recipe.state.removeprefix("sqlite:///"), base_dir)
    published = published_in_sources(recipe) if dataset_known else []
    return [*format_problems(recipe), *group_problems(recipe), *stage_problems(recipe), *published]


def _found(error: ValidationError) -> list[tuple[tuple[Any, ...], str]]:
    """(setting, problem) for each of pydantic's errors, at the setting as the recipe writes it."""
    tags = _union_tags(SourceConfig, StageConfig)
    return [(tuple(part for part in e["loc"] if part not in tags), _problem(e)) for e in error.errors()]


# The settings the whole-recipe checks read (record_columns, format_problems, group_problems, stage_problems,
# published_in_sources): with one of them wrong, what the records hold, or where they go, is not known.
_JUDGED_ON = {"sources", "input_schema", "record", "output"}


def _problems_past(
    data: dict[str, Any], error: ValidationError, base_dir: Path | None, context: dict[str, Any]
) -> list[tuple[tuple[Any, ...], str]]:
    """The whole-recipe problems of the settings that validated, which pydantic leaves unchecked when any
    setting failed (it skips a model's after-validators, and ``stage_problems`` needs a Recipe): a user
    would otherwise fix a wrong ``state`` only to learn of a misspelt stage field on the next try. The
    recipe is validated again without the settings that failed (a failed stage left out, a setting
    with a default taken at it), with the first validation's ``context``; none where a setting the checks read
    failed."""
    locs = [e["loc"] for e in error.errors()]
    failed = {loc[0] for loc in locs if loc}
    if not all(locs) or ("stages",) in locs or failed & _JUDGED_ON:
        return []
    kept = {name: value for name, value in data.items() if name not in failed}
    if "dataset" in failed:
        kept["dataset"] = "x"  # required, and read by none of the checks
    bad_stages = {loc[1] for loc in locs if loc[0] == "stages"}
    numbers = [number for number in range(len(data.get("stages") or [])) if number not in bad_stages]
    if bad_stages:
        kept["stages"] = [data["stages"][number] for number in numbers]
    try:
        recipe = Recipe.model_validate(kept, context=context)
        found = _whole_recipe_problems(recipe, base_dir, dataset_known="dataset" not in failed)
    except ValidationError as again:  # the recipe's own after-validators, which pydantic skipped too
        found = _found(again)
    at = dict(enumerate(numbers))  # the n-th stage kept is the stage at its place in the recipe
    return [
        (("stages", at.get(loc[1], loc[1]), *loc[2:]) if loc[:1] == ("stages",) and len(loc) > 1 else loc, problem)
        for loc, problem in found
    ]


def published_in_sources(recipe: Recipe) -> list[tuple[tuple[str | int, ...], str]]:
    """(setting, problem) for a source whose folder or glob takes in what the recipe publishes: from the
    second run on, each would read the versions before it as input (its shards, manifest and report)."""
    from connectors.storage import _glob_match, _is_glob  # connectors import this module

    def plain(path: str) -> str:  # a local path as its listing names it; a glob of folders keeps its slash
        if path.startswith("s3://"):
            return path
        return os.path.normpath(path.removeprefix("file://")) + ("/" if path.endswith("/") else "")

    published = f"{plain(recipe.output.dest).rstrip('/')}/{recipe.dataset}/"
    files = [f"{published}v1/{name}" for name in ("train/part-00000.jsonl", "train/images/a.png", "report.html")]
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for number, source in enumerate(recipe.sources):
        # An images source reads only the images its sidecar names: its folder may hold the output.
        for setting in ("sidecar",) if isinstance(source, ImagesSource) else ("path",):
            path = getattr(source, setting, None)
            if not isinstance(path, str):
                continue
            path = plain(path)
            # A path with a '[' is read by its name once a file or folder has it (``_named_literally``), as
            # publishing under it makes one: from then on it takes in what the pattern did not.
            named = (not _is_glob(path) or "[" in path) and published.startswith(f"{path.rstrip('/')}/")
            takes = named or (_is_glob(path) and any(_glob_match(file, path) for file in files))
            if takes:
                problems.append(
                    (
                        ("sources", number, setting),
                        f"{path} takes in what this recipe publishes ({published}): each run would read the "
                        "versions before it as input; publish elsewhere (output.dest) or narrow the path",
                    )
                )
    return problems


def load_recipe(path: str | Path, reads_sources: bool = True) -> Recipe:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1  # in bytes: the line is no text
        raise RecipeError(
            f"{path}: not UTF-8: byte 0x{raw[exc.start]:02x} at line {line}, column {column} (save the recipe as UTF-8)"
        ) from None
    return parse_recipe(text, origin=str(path), base_dir=path.parent, reads_sources=reads_sources)
