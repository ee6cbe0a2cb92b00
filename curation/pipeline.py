"""Builds a run from a recipe and publishes the next version of its dataset: what the run reads
(``RunPlan``), the stages it runs (with the executor of ``curation.executors``), what it carries
forward from the version it extends, and what it records once its version is visible.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import os
import re
import signal
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import polars as pl
import pyarrow as pa
from sqlalchemy import Engine

from connectors.base import Source
from connectors.files import FilesSourceReader, unread_partition
from connectors.hf import CONNECTOR as HF
from connectors.sql import CONNECTOR as SQL
from connectors.state import HeldLock, LockLost, Watermarks, has_read_before, run_lock
from connectors.storage import StorageError, filesystem, is_s3, some_named
from curation.executors.local import AnyStage, Executor, LocalExecutor, Tally, reads_again
from curation.formats import FormatOptions, output_format
from curation.published import dataset_uri, published_versions, read_manifest, refuse_unwritable_dest, version_uri
from curation.report import Profile, attach_report
from curation.review.decisions import (
    DecisionMark,
    RunDecisions,
    changes,
    changes_since,
    inputs_to_read_again,
    mark_now,
    rejections_changed,
)
from curation.review.queue import add_items, note_read, queued_records
from curation.review.rejected_content import remember as remember_rejected_content
from curation.review.rejected_content import remember_copies
from curation.stages.dedup import ExactDedup
from curation.stages.dedup_index import CrossRunDedup, SignatureIndex, SignatureRecorder
from curation.stages.image_check import ImageCheck, keep_archived
from curation.stages.neardup import with_published_texts
from curation.stages.quality import QUALITY_CONFIGS, quality_stages
from curation.stages.review import ContentKeys, ReviewDecisions, default_content_params, stores_content_keys
from curation.stages.shape import Field, Shape, recipe_template_error
from curation.stages.validate import SchemaValidation
from curation.state import StateStore, read_state
from curation.stopping import STOP_SIGNALS, Stopped, raise_if_stopped, stop_signals
from curation.writer import (
    DatasetWriter,
    inputs_of_duplicates,
    new_run_id,
    records_from_inputs,
    records_of_other_inputs,
)
from schemas.config import (
    ChunkConfig,
    DocumentsSource,
    ExactDedupConfig,
    HFSource,
    ImageDedupConfig,
    ImagesSource,
    NearDedupConfig,
    Recipe,
    RecipeError,
    SqlSource,
    stage_name,
)
from schemas.manifest import Counts, InputFile, Manifest, Split
from schemas.pii import PiiConfig
from schemas.records import (
    CONTENT_COLUMNS,
    RECORD_MODELS,
    SOURCE_TYPE,
    SetAsideExample,
    dedup_fields,
    empty_flags,
    table_row_model,
)

log = logging.getLogger("curation.pipeline")


@dataclass
class RunResult:
    # Both None when an incremental run found nothing new: it published nothing (see ``message``).
    manifest: Manifest | None
    version_uri: str | None
    message: str = ""

    @property
    def published(self) -> bool:
        return self.manifest is not None


class NotRecorded(RuntimeError):
    """The run's version is visible, but the state store did not record what it took and holds (``error``):
    the run stays marked publishing, so the next run reads every input again."""

    def __init__(self, result: RunResult, error: Exception) -> None:
        super().__init__(f"{result.version_uri} is published, but not recorded in the state store: {error}")
        self.result, self.error = result, error


def build_sources(recipe: Recipe, watermarks: Watermarks | None = None) -> list[Source]:
    """A reader per source; with ``watermarks``, each reads only what is new since the last run."""
    sources: list[Source] = []
    declared = recipe.input_schema.columns if recipe.input_schema is not None else {}
    shape = Shape(recipe.record, carry=recipe.carry_columns())
    used = shape.reads | set(declared)  # what the recipe reads
    required = set(recipe.input_schema.required_columns()) if recipe.input_schema is not None else set()
    keyed = shape.keyed | required  # columns whose absence from a batch is not null: see ``_KeysOfFile``
    # A VQA record's image column (not a template): an hf source reads an Image() feature there as its picture.
    picture = next((f for f in shape.fields if f.target == "image"), None) if shape.kind == "vqa" else None
    image = picture.column if picture is not None else None
    # Read besides as text (``{{ image.path }}``, another field naming it), an Image() feature there is refused
    # by name as any read as text: the templates would see the picture's name the reader puts in its place.
    as_text = {f.column for f in shape.fields if f is not picture} | {
        n for f in shape.fields for n in f.template_columns
    }
    text_columns = used if image in as_text else used - {image}
    # What of each column the fields certainly render as text (``shot.cap``): a dict holding an Image() feature
    # is refused where that reaches the image.
    text_paths: dict[str, set[tuple[str | int, ...]]] = {}
    for field in shape.fields:
        for name, paths in field.paths.items() if field is not picture else ():
            text_paths.setdefault(name, set()).update(paths)
    # The stages that read the pictures' bytes (of a VQA record's picture only): an hf source whose images are
    # paths refuses them by name.
    bytes_for = list(
        dict.fromkeys(
            "image_dedup" if isinstance(stage, ImageDedupConfig) else "pii ocr"
            for stage in (recipe.stages if picture is not None else [])
            if (isinstance(stage, ImageDedupConfig) and stage.column == "image_bytes")
            or (isinstance(stage, PiiConfig) and stage.ocr)
        )
    )
    for config in recipe.sources:
        mark = watermarks.for_source(config) if watermarks is not None else None
        if isinstance(config, SqlSource):
            from connectors.sql import SqlSourceReader

            sources.append(SqlSourceReader(config, recipe.batch_rows, mark, used_columns=used))
        elif isinstance(config, DocumentsSource):
            from connectors.documents import DocumentsSourceReader

            sources.append(DocumentsSourceReader(config, mark))
        elif isinstance(config, ImagesSource):
            from connectors.images import ImagesSourceReader

            sources.append(ImagesSourceReader(config, recipe.batch_rows, mark, keyed=keyed))
        elif isinstance(config, HFSource):
            from connectors.hf import HFSourceReader

            sources.append(
                HFSourceReader(
                    config,
                    recipe.batch_rows,
                    mark,
                    used_columns=used,
                    image_column=image,
                    text_columns=text_columns,
                    text_paths=text_paths,
                    bytes_for=bytes_for,
                )
            )
        else:
            text = [name for name, kind in declared.items() if kind == "str"]
            sources.append(
                FilesSourceReader(config, recipe.batch_rows, mark, text_columns=text, used_columns=used, keyed=keyed)
            )
    return sources


def source_inputs(sources: list[Source]) -> list[InputFile]:
    """What the sources are to read. An input two sources match, new or not, would give its records
    twice: that is a recipe error."""
    inputs: list[InputFile] = []
    matched_by: dict[str, int] = {}
    for number, source in enumerate(sources):
        taken = source.inputs()
        for uri in getattr(source, "listed_uris", None) or [entry.uri for entry in taken]:
            if uri in matched_by:
                raise RecipeError(
                    f"{uri}: matched by sources.{matched_by[uri]} and sources.{number}; "
                    "an input must belong to one source (narrow a path or glob)"
                )
            matched_by[uri] = number
        inputs += taken
    return inputs


def _keyed_uris(recipe: Recipe) -> frozenset[str]:
    """The SQL sources whose record ids come from a key, not content (a row keeps its id when edited)."""
    from connectors.sql import source_uri

    return frozenset(source_uri(c) for c in recipe.sources if isinstance(c, SqlSource) and c.key)


def build_stages(
    recipe: Recipe,
    full_refresh: bool = False,
    decisions_as_of: DecisionMark | None = None,
    records_again: Collection[str] = (),
) -> list[AnyStage]:
    """The recipe's stages in order; ``full_refresh`` starts cross-run dedup over with this run; the
    review decisions are those in force at ``decisions_as_of`` (default: now); ``records_again``: inputs
    whose records come again one by one under their ids, changed (a VQA row whose image changed in place)."""
    kind = recipe.record.kind
    stages: list[AnyStage] = []
    if recipe.input_schema is not None and recipe.input_schema.columns:
        columns = recipe.input_schema.columns
        required = set(recipe.input_schema.required_columns())
        stages.append(SchemaValidation(table_row_model(columns, required), name="validate_input"))
    stages.append(Shape(recipe.record, carry=recipe.carry_columns()))
    stages.append(SchemaValidation(RECORD_MODELS[kind], name="validate_record"))
    if kind == "vqa":  # an image the writer could not read is quarantined here, not a failed run
        stages.append(ImageCheck())
    review = ReviewDecisions.from_state(recipe.state, recipe.dataset, decisions_as_of, kind)
    stages.append(review)
    across_runs: list[CrossRunDedup] = []
    index = None
    for config in recipe.stages:
        if isinstance(config, ExactDedupConfig):
            fields = config.fields or dedup_fields(kind)
            stages.append(ExactDedup(fields, config.normalize, stage_name(config.type, (s.name for s in stages))))
        elif isinstance(config, PiiConfig):
            from curation.stages.pii import PiiRedaction, PiiSettingError  # presidio and spaCy only when asked

            try:
                name = stage_name(config.type, (s.name for s in stages))
                # Spans marked "not PII" on this stage's own items: another's offsets are in other text.
                decisions = review.decisions
                marked = decisions.marked_in.get(name)
                stages.append(
                    PiiRedaction(config, kind, undone=decisions.undone_in.get(name), marked=marked, name=name)
                )
            except PiiSettingError as error:  # found as the stage is built: the CLI names its place (stage_place)
                raise PiiSettingError(f"{name}: {error}") from None
        elif isinstance(config, QUALITY_CONFIGS):
            stages.extend(quality_stages(config, kind, review.decisions.kept_apart_in, (s.name for s in stages)))
        if getattr(config, "across_runs", False):
            index = index or SignatureIndex(recipe.state, recipe.dataset, start_over=full_refresh)
            stages[-1] = CrossRunDedup(
                stages[-1],
                index,
                recipe.output.carry_forward,
                _keyed_uris(recipe) | frozenset(records_again),
                review.decisions.kept_from.get(stages[-1].name),
            )
            across_runs.append(stages[-1])
    recorded: list[CrossRunDedup | ContentKeys] = list(across_runs)
    if not stores_content_keys(stages, kind):
        # A record rejected once published is found by its content key (curation/review/rejected_content.py):
        # stored for each published record as the review stage read it, where no exact_dedup stores it.
        recorded.append(ContentKeys(kind))
        review.attach = recorded[-1].column
        index = index or SignatureIndex(recipe.state, recipe.dataset, start_over=full_refresh)
    stages.append(Profile([c for c in CONTENT_COLUMNS[kind] if c not in ("label", "image")]))  # for the report
    if recorded:
        stages.append(SignatureRecorder(recorded, index))  # last: sees exactly what is written
    return stages


def stage_order_warnings(recipe: Recipe) -> list[str]:
    """What the order of the recipe's stages puts at risk: a ``clean`` after ``pii`` rewrites text the
    PII stage already scanned (``Maria&nbsp;Garcia`` becomes a name after it was passed over)."""
    warnings: list[str] = []
    pii: int | None = None
    for number, config in enumerate(recipe.stages, 1):
        if config.type == "pii":
            pii = number  # the last one before a clean: a second PII stage has its own entities and fields
        elif config.type == "clean" and pii is not None:
            warnings.append(
                f"stages: clean (stage {number}) comes after pii (stage {pii}): the text it rewrites (markup, "
                "HTML entities, spacing) is not scanned for PII again; put clean before pii"
            )
    return warnings


def _overlapping_chunks(recipe: Recipe) -> dict[str, ChunkConfig]:
    """The chunk settings of the recipe's documents sources whose chunks overlap, by the source's path."""
    return {
        source.path: source.chunk
        for source in recipe.sources
        if isinstance(source, DocumentsSource) and source.chunk is not None and source.chunk.overlap_chars > 0
    }


def chunk_overlap_warnings(recipe: Recipe) -> list[str]:
    """A ``near_dedup`` threshold that neighbouring chunks of one document reach by their overlap alone: the
    later one is set aside as a near-duplicate of the earlier, and the text it adds is lost.

    Two neighbouring chunks of ``max_chars`` (m) sharing ``overlap_chars`` (o) hold m + m - o characters
    between them, o of which both hold. The threshold is estimated Jaccard of their shingle sets, word or
    character shingles alike, and a shingle's count follows the length of the text it is cut from, so they
    share about o / (2m - o) of their shingles: 400 of 800 characters, a third. A shingle of k words or
    characters is shared only whole inside the overlap, k - 1 fewer in both counts, little next to a chunk;
    chunks packed short of ``max_chars`` by whole paragraphs share more, so a threshold a little above the
    figure still loses some (the estimate varies too, by about 0.04 at 128 permutations)."""
    shared = {
        path: chunk.overlap_chars / (2 * chunk.max_chars - chunk.overlap_chars)
        for path, chunk in _overlapping_chunks(recipe).items()
    }
    # The record fields a chunk's text lands in (a documents source's ``text`` column, by name or template): a
    # stage comparing none of them (``fields: [title]``) never sees two chunks' overlap.
    chunk_fields = {
        field.target
        for field in (Field(*item) for item in recipe.record.mapping().items())
        if field.column == "text" or "text" in field.template_columns
    }
    warnings: list[str] = []
    for number, config in enumerate(recipe.stages, 1):
        if isinstance(config, NearDedupConfig) and chunk_fields & set(
            config.fields or dedup_fields(recipe.record.kind)
        ):
            warnings.extend(
                f"stages: near_dedup (stage {number}) threshold {config.threshold:g} is at or below the "
                f"~{jaccard:.2f} Jaccard neighbouring chunks of one document of source {path} share by their "
                "overlap (chunk.overlap_chars / (2 * max_chars - overlap_chars)): they are set aside as "
                "near-duplicates of each other and their own text is lost; raise the threshold well above it "
                "(default 0.7) or lower chunk.overlap_chars"
                for path, jaccard in shared.items()
                if config.threshold <= jaccard
            )
    return warnings


def recipe_warnings(recipe: Recipe) -> list[str]:
    """What the recipe puts at risk, said at ``check`` and as a run starts: its stages' order
    (``stage_order_warnings``), a near-duplicate threshold that one document's overlapping chunks reach
    (``chunk_overlap_warnings``), and a split that puts one document's overlapping chunks on both sides, or
    a later version's repeat of published content on the other side from it (a model evaluated on text it
    trained on)."""
    warnings = stage_order_warnings(recipe) + chunk_overlap_warnings(recipe)
    if recipe.output.validation_fraction > 0:
        # A repeat is a new record with its own id, hashed to either side: the signatures kept across runs are
        # what set it aside.
        warnings.extend(
            f"stages: {config.type} (stage {number}) has across_runs: false, so a later version may repeat "
            "content published in an earlier one, on either side of the split (validation_fraction "
            f"{recipe.output.validation_fraction:g}): keep across_runs on"
            for number, config in enumerate(recipe.stages, 1)
            if isinstance(config, ExactDedupConfig | NearDedupConfig | ImageDedupConfig) and not config.across_runs
        )
    overlapping = list(_overlapping_chunks(recipe))
    # Not the default: a version split chunk by chunk holds documents on both sides, and no later run moves
    # a published record (README "Splits"). Chunks overlap only within a section, whose chunks share its
    # title: a split by title keeps them together too.
    grouped = recipe.groups_by_document or recipe.output.group_by == "title"
    if overlapping and recipe.output.validation_fraction > 0 and not grouped:
        warnings.append(
            f"sources {', '.join(overlapping)}: chunks of one document overlap (chunk.overlap_chars), and "
            "the split places each on its own side: split them by document with group_by: document"
        )
    return warnings


def _decisions_read(recipe: Recipe, state: StateStore, version: Manifest) -> DecisionMark:
    """The review decisions the run that published ``version`` applied (recorded as it started, see
    ``_run_locked``), else, where the state store does not know the run, those made by its publication."""
    read = state.decisions_read(recipe.dataset, version.version)
    return read or DecisionMark(at=version.created_at)


def _review_changes(recipe: Recipe, state: StateStore, since: DecisionMark, now: DecisionMark) -> int:
    """Decisions changed between the extended version's reading of them (``since``) and this run's
    (``now``): with carry-forward they make a new version (the carried records with the decisions
    applied) even when there is no new input."""
    if not recipe.output.carry_forward:
        return 0
    return changes_since(state.engine, recipe.dataset, since, now)


def _rewriting_stages(stages: list[AnyStage]) -> tuple[list[int], int | None]:
    """Where the stages that rewrite text (clean, PII) stand in the recipe, and where its last PII stage
    does (None: no PII stage): a text taken before a PII stage is published as those between make it."""
    from curation.stages.pii import PiiRedaction

    rewriting = [at for at, stage in enumerate(stages) if getattr(stage, "rewrites_text", False)]
    return rewriting, max((at for at in rewriting if isinstance(stages[at], PiiRedaction)), default=None)


def _flags_as_published(stages: list[AnyStage], flags: list[pa.Table]) -> list[pa.Table]:
    """Near-duplicate flags made before a PII stage quote text it had yet to redact, and a PII stage's
    flags text that a later one redacts further; they get the form the stages that rewrite text after
    them make of it (each PII stage's, and a clean stage's between two, which turns markup the later
    scan would miss into what it finds), in recipe order, which the review page shows roles that do
    not see PII."""
    from curation.stages.pii import PiiRedaction, as_published_after

    rewriting, last_pii = _rewriting_stages(stages)
    if last_pii is None:  # no text of a flag is redacted after it: every role sees it as flagged
        return flags
    for at, stage in enumerate(stages[:last_pii]):
        later = [stages[after] for after in rewriting if after > at]
        scrub = _in_turn([one.rewrite_texts for one in later])  # type: ignore[union-attr]
        flags = [with_published_texts(table, scrub, made_by={stage.name}) for table in flags]
        if isinstance(stage, PiiRedaction):  # the PII stage's own flags: redacted further after it
            ocr_later = any(getattr(one, "redacts_images", False) for one in later)
            flags = [as_published_after(table, stage.name, scrub, ocr_later) for table in flags]
    return flags


def _in_turn(steps: list[Callable[..., Any]]) -> Callable[..., Any]:
    """One step that applies ``steps`` one after the other to a value, as their stages run (each also given
    the arguments after it: a scrub's records)."""

    def apply(value: Any, *rest: Any) -> Any:
        for step in steps:
            value = step(value, *rest)
        return value

    return apply


def set_aside_scrub(stages: list[AnyStage]) -> Callable[[pa.Table], pa.Table] | None:
    """The texts of set-aside rows as the stages that rewrite text make them, in recipe order, up to the
    last PII stage (None without one): each PII stage redacts its own entities, so the first alone would
    publish in clear what a later one redacts on the records, and a clean stage before one turns markup
    and HTML entities it would miss (``<b>415</b>-555-0132``, ``maria&#64;example.com``) into what it
    finds, as it does on the records. A clean stage after the last leaves nothing more to redact. A text no PII
    stage redacts anything in is published as the PII stages alone make it (``cleaned_where_redacted``)."""
    from curation.stages.pii import PiiRedaction, cleaned_where_redacted, rewrite_set_aside, string_by_string

    rewriting, last_pii = _rewriting_stages(stages)
    if last_pii is None:
        return None
    # A PII stage scans a parsed row's JSON itself (keys and numbers too); a clean stage is given its strings.
    steps = [
        (stage.rewrite_texts, True)
        if isinstance(stage, PiiRedaction)
        else (string_by_string(stage.rewrite_texts), False)  # type: ignore[union-attr]
        for stage in (stages[at] for at in rewriting if at <= last_pii)
    ]
    return functools.partial(rewrite_set_aside, rewrite=cleaned_where_redacted(steps))


def _check_some_record_has_the_columns(
    recipe: Recipe, counts: Counts, example: SetAsideExample | None, scrub: Callable[[pa.Table], pa.Table] | None
) -> None:
    """A run whose every record lacks a column the recipe names is a recipe error (a misspelt column),
    not bad data: it fails, publishes nothing and leaves its input to be read again once fixed. Its ``example`` is
    quoted as its set-aside row is published (``scrub``): the detail can quote a one-column CSV header."""
    missing = counts.reasons.get("quarantined", {}).get("missing_column", 0)
    if missing and counts.written == 0 and counts.quarantined == counts.input:
        detail = example.detail if example else None
        uri = re.match(r"(.+?)(?::\d+)?: ", detail or "")  # a detail starts with ``uri:line`` (or ``uri``)
        hints = (unread_partition(source, uri.group(1), detail or "") for source in recipe.sources if uri)
        raise RecipeError(
            f"none of the {counts.input:,} records could be made into a record: {missing:,} lack a column the "
            f"recipe names, for example {example.as_published(scrub) if example else None}; fix the column name in "
            "the recipe (or the input) and run again" + next((hint for hint in hints if hint), "")
        )


def templates_on_trial(recipe: Recipe, made: Manifest | None) -> bool:
    """Whether a template failing one way on every record is the recipe's error, not the records' (run and check
    ask): unless ``made``, the version a run builds on, was made with the recipe's record templates. Those made
    its records: failing on all of a few new rows is their data's fault (quarantined), or every later run would
    fail on them too, whatever else changed (a stage, ``batch_rows``, a release of curation). A version of an
    earlier release, which kept no hash of its templates, counts as made with them: a recipe error there would
    block every scheduled run, where a quarantined row is only counted and reported. So does one whose hash left
    the ``input_schema`` out, as releases before it did (the hash a recipe without one has)."""
    made_by = (None, recipe.record.fingerprint(recipe.input_schema), recipe.record.fingerprint(None))
    return made is None or made.record_sha256 not in made_by


def columns_on_trial(recipe: Recipe, made: Manifest | None) -> bool:
    """Whether every record lacking a column the recipe names is the recipe's error, a misspelt name (run and check
    ask): unless ``made``, the version a run builds on, was made naming the same columns. Then a few new rows all
    lacking one (a bad export) are their data's fault, quarantined, or every later run would fail on them too. The
    record templates and the ``input_schema`` name columns: ``made`` by the same hash of both, or by an earlier
    release's, with none (one whose hash left the ``input_schema`` out, which ``templates_on_trial`` accepts, only where
    the whole recipe is unchanged since: a recipe adding an ``input_schema`` leaves that hash as it was); so do ``output.group_by`` and
    ``stratify_by``, which ``made``'s ``split`` records (one recording none counts as made with them). A source no
    version read is judged apart (``lacking_from_untried``)."""
    split = made.split if made is not None else {}
    changed = any(name in split and split[name] != getattr(recipe.output, name) for name in ("group_by", "stratify_by"))
    if changed or made is None:
        return True
    earlier = made.record_sha256 == recipe.record.fingerprint(None) and made.recipe_sha256 == recipe.fingerprint()
    return not (earlier or made.record_sha256 in (None, recipe.record.fingerprint(recipe.input_schema)))


def new_to_the_dataset(source: Source) -> bool:
    """Whether no version read ``source``: added to the recipe, or its settings changed (an images source's column
    settings too), its watermarks keyed by them hold nothing committed."""
    mark = getattr(source, "watermark", None)
    return mark is not None and not mark.read_before


def lacking_from_untried(lacking: set[tuple[str, str]], untried: frozenset[str]) -> bool:
    """Whether a record lacking a column (``Tally.lacking_column``: connector, input) came from an input of a source
    no version read (``untried``), whose names are on trial as on a first run, or from a SQL result: a column gone
    from it is the table's (or query's) schema, which every later row shares, not a bad export's; quarantined, each
    run would take them all (the cursor moved past them), read again only by --full-refresh."""
    return any(connector == SQL or uri in untried for connector, uri in lacking)


def extended_version(previous: list[int], watermarks: Watermarks) -> int | None:
    """The version a run extends: the latest, unless the state store holds no watermark for any of the
    recipe's sources (a path or setting changed, another state store): its version then holds only what
    it reads, and no version made its records (``templates_on_trial``: the templates are on trial)."""
    return previous[-1] if previous and watermarks.had_previous() else None


def version_a_run_extends(recipe: Recipe, previous: list[int]) -> tuple[int | None, set[int]]:
    """``extended_version`` as a run of ``recipe`` would find it now (``curation check`` asks), and the sources (by
    number) no version read (``new_to_the_dataset``): the state store's watermarks of the recipe's sources, as
    ``build_sources`` looks them up. A store not made yet (no SQLite file, no watermark table) holds none, and is
    left so."""

    def extends(engine: Engine) -> tuple[int | None, set[int]]:
        watermarks = Watermarks(engine, recipe.dataset, only_read=True)
        marks = [watermarks.for_source(config) for config in recipe.sources]
        return extended_version(previous, watermarks), {
            number for number, mark in enumerate(marks) if not mark.read_before
        }

    return read_state(recipe.state, extends, (None, set())) if previous else (None, set())


def _check_a_template_made_some_record(
    recipe: Recipe,
    counts: Counts,
    tally: Tally,
    stages: list[AnyStage],
    scrub: Callable[[pa.Table], pa.Table] | None,
) -> None:
    """A run whose every record the shape stage took failed one template in one way (``{{ x.upper(1) }}``) met a
    recipe error, as for a misspelt column: it fails, publishes nothing and leaves its input to be read again
    once fixed, not an empty version after which the fixed recipe finds nothing new. Asked only where the
    templates are on trial (``templates_on_trial``)."""
    before = {"read", *itertools.takewhile(lambda name: name != Shape.name, (stage.name for stage in stages))}
    shaped = counts.input - sum(tally.by_stage[name] for name in before)
    error = recipe_template_error(tally.template_errors, tally.by_stage[Shape.name], shaped)
    if error is not None:
        target = error.split(":", 1)[0]
        raise RecipeError(
            f"none of the {counts.input:,} records could be made into a record: the template of record.{target} "
            f"({recipe.record.mapping().get(target)!r}) failed on every record it was given ({shaped:,}), "
            f"for example {tally.template_errors.example_as_published(scrub)}; fix the template "
            "in the recipe and run again"
        )


def _recipe_changed(recipe: Recipe, extended: Manifest | None) -> str | None:
    """A note when the recipe differs from the one that made the ``extended`` version: records read
    before were made by the old recipe, and a scheduled run reads only what is new."""
    if extended is None or extended.recipe_sha256 == recipe.fingerprint():
        return None
    pii = [stage for stage in recipe.stages if isinstance(stage, PiiConfig)]
    keyed = " its pseudonym key, or" if any(stage.pseudonym_key_id() for stage in pii) else ""
    pii_rules = f"{keyed} the PII stage's detection rules, or" if pii else ""
    also = f" (or{pii_rules} how values are written as text or what a stage does, in a new release of curation)"
    return (
        f"the recipe changed since v{extended.version}{also}: records read "
        "before keep what the old recipe made of them (only new or changed input is read); run with --full-refresh to "
        "apply the new recipe to every record"
    )


def published_place(recipe: Recipe) -> str:
    """Where a run of ``recipe`` publishes, one spelling per place: the dataset's folder on S3 as written, a local one
    as the real path (``file://``, a symlink, ``//`` or ``..`` name the same folder)."""
    uri = dataset_uri(recipe.output.dest, recipe.dataset)
    return uri if is_s3(uri) else os.path.realpath(filesystem(uri)[1])


def _watermarks_untrusted(
    recipe: Recipe, state: StateStore, previous: list[int], unrecorded: dict[str, int]
) -> str | None:
    """Why what the state store says earlier runs read cannot be trusted, if it cannot: reading only
    what is new would then publish a wrong version. ``unrecorded``: ``StateStore.unrecorded_runs``."""
    if unrecorded:
        last = max(unrecorded.values())
        gone = "" if last in previous else f" (not at {recipe.output.dest} now)"
        return (
            f"{recipe.dataset} v{last}{gone} was published by a run killed before it recorded what it "
            "read (reading only what is new would publish that version's new records a second time, or, where "
            "it was deleted since, leave them out)"
        )
    last = state.last_published(recipe.dataset) if previous else None
    elsewhere = state.last_published_at(recipe.dataset) if last is not None else None
    if elsewhere is not None and elsewhere != published_place(recipe):
        # The watermarks say what the runs at that dest read: here, its versions hold none of what they took since.
        return (
            f"{recipe.dataset}'s last run of this state store published at {elsewhere}, not at {recipe.output.dest} "
            "(reading only what is new would leave out what the runs there read)"
        )
    if last is not None and last not in previous:
        # Deleted (a rollback of a bad version, a retention rule): the watermarks say its input was read.
        return (
            f"{recipe.dataset} v{last}, which the state store says the last run published, is not at "
            f"{recipe.output.dest} (reading only what is new would leave out the records of the input it read)"
        )
    if not previous and has_read_before(state.engine, recipe.dataset):
        # Runs published elsewhere (another dest), or their versions were deleted.
        return (
            f"{recipe.dataset} has no version at {recipe.output.dest}, yet the state store says earlier runs read "
            "its input (reading only what is new would publish an empty version); it compares with no earlier "
            "version, and the state store follows this dest from now on (a dataset name or state store per dest "
            "keeps both)"
        )
    return None


def _refuse_to_drop_moved_away(recipe: Recipe, latest: int, inputs: list[InputFile]) -> None:
    """Fail before reading where a run that reads all input again (the watermarks untrusted) would leave out
    the records ``latest`` holds of inputs no longer listed (moved away once taken, their records carried):
    its version holds only what it reads. A Hugging Face dataset's data files are those its ``state.json`` names
    now (saved again with other shards, the old files stay, unread): none is moved away."""
    gone = records_of_other_inputs(
        version_uri(recipe.output.dest, recipe.dataset, latest), {entry.uri for entry in inputs}, skip=(HF,)
    )
    if gone:
        raise StorageError(
            f"{recipe.dataset}: this run reads all input again, and v{latest} holds {sum(gone.values())} record(s) "
            f"of {len(gone)} input(s) no longer listed ({some_named(gone, 3)}) that its version would leave out: put "
            "them back and run again, or run with --full-refresh to publish only what is there now"
        )


def _note_sources_new_to_the_dataset(
    recipe: Recipe, sources: list[Source], watermarks: Watermarks, latest: int
) -> None:
    """A source no earlier run read (added to the recipe, or its settings changed: its state is keyed
    by them) reads all its input. In a version that extends the latest, what it reads replaces what
    the dataset holds from those inputs, as for a changed file: carried as well, a record was
    published twice. With no source read before, the version extends nothing: the run says so."""
    if not watermarks.had_previous():
        # A store that holds no read of the dataset at all is likely not the one the earlier runs used.
        cause = (
            ""
            if has_read_before(watermarks.engine, recipe.dataset)
            else ", or the earlier runs used another state store"
        )
        log.warning(
            "%s: no source of the recipe was read for v%d (a path or setting changed%s?): this run reads all "
            "their input, and its version holds only what it reads, not v%d's records",
            recipe.dataset,
            latest,
            cause,
            latest,
        )
        return
    for number, source in enumerate(sources):
        if not new_to_the_dataset(source):
            continue
        mark = source.watermark  # type: ignore[attr-defined]
        log.info("sources.%d: not read for an earlier version (new, or its settings changed): read whole", number)
        mark.reread = True
        mark.replaced.update(entry.uri for entry in source.inputs())


def _less_kept(ids: pl.Series, watermarks: Watermarks) -> pl.Series:
    """``ids`` less the records a source keeps though their input is read again (an images sidecar's row
    whose image was taken and has been moved away since): they are carried, not replaced."""
    kept = watermarks.kept()
    return ids.filter(~ids.is_in(pl.Series(sorted(kept), dtype=pl.String).implode())) if kept else ids


def _replaced_records(
    recipe: Recipe,
    watermarks: Watermarks,
    sources: list[Source],
    previous: list[int],
    inputs: list[InputFile],
    read_chain: Callable[[], list[Manifest]],
) -> tuple[list[InputFile], pl.Series, pl.DataFrame]:
    """The ids of the records the latest version holds from inputs this run reads whole again (changed
    files): what those hold now replaces them, so neither cross-run dedup nor the carry keeps them; and
    the side (validation or not) each of those records had there.

    A replaced record may have been the kept copy of content other inputs hold too (set aside as its
    duplicates): those inputs are read again as well (the listing, returned, grows), or the content
    would leave the dataset. ``read_chain``: the chain's manifests (``_chain_manifests``), read once a plan."""
    latest = version_uri(recipe.output.dest, recipe.dataset, previous[-1])
    published, held = records_from_inputs(latest, watermarks.replaced())

    def keep(uris: set[str]) -> None:  # a VQA record whose image is gone, or unreadable now, stays as published
        # Of inputs the latest version holds records of: another's rows (a source new to the dataset) have
        # nothing to keep, and were read, and their warnings said, once more than the run reads them.
        if recipe.record.kind == "vqa" and (of_latest := uris & held):
            shape = Shape(recipe.record, carry=recipe.carry_columns())
            keep_archived(sources, shape, published["id"].to_arrow(), of_latest)

    keep(watermarks.replaced())
    replaced_ids = _less_kept(published["id"], watermarks)
    if replaced_ids.is_empty():
        return inputs, replaced_ids, published
    found = inputs_of_duplicates(recipe.output.dest, recipe.dataset, [m.version for m in read_chain()], replaced_ids)
    holding = set(found) - watermarks.replaced()
    if holding:
        watermarks.read_again.update(holding)
        for source in sources:
            getattr(source, "list_again", lambda: None)()
        inputs = source_inputs(sources)
        published, held = records_from_inputs(latest, watermarks.replaced())
        keep(holding & watermarks.replaced())  # read again now: the set of files read again is final
        replaced_ids = _less_kept(published["id"], watermarks)
    # An input that cannot be read again (gone, a SQL cursor, a source that lists once): the records
    # it holds duplicates of stay as they were published, or their content would leave the dataset.
    unread = sorted(holding - watermarks.replaced())
    if unread:
        kept = pl.Series(sorted(set().union(*(found[uri] for uri in unread))), dtype=pl.String)
        replaced_ids = replaced_ids.filter(~replaced_ids.is_in(kept.implode()))
        log.warning(
            "%d record(s) of changed inputs stay as published: %s also held them (set aside as duplicates) "
            "and cannot be read again",
            len(kept),
            some_named(unread, 3),
        )
    return inputs, replaced_ids, published


def _earlier_sides(
    recipe: Recipe,
    previous: list[int],
    sources: list[Source],
    watermarks: Watermarks,
    replaced: pl.DataFrame | None,
    read_chain: Callable[[], list[Manifest]],
) -> pl.DataFrame | None:
    """``id`` and ``validation`` of each published record this run may write again under its id, so it keeps
    its side (README "Splits"): ``replaced`` (the latest version's records of inputs read whole again), and
    those of inputs whose records come again one by one (an edited keyed SQL row, a VQA row whose image
    changed). Every version of the chain is looked in, the latest first: a record may have left the latest (a
    line deleted, a rejection since undone) and, dealt as new, could come back on the other side (and be
    counted twice in a stratified split's ``dealt``). Of a version before the latest only the records its own
    run wrote are read: a carried one is in the version it came from, on the same side, so the walk reads
    about the records the chain's runs wrote, not every version's whole lineage. None is read where the split
    deals every record the side it has anyway (``_dealt_alike``): every run with a changed file walked the chain."""
    uris = _records_again(sources) | watermarks.replaced() | watermarks.read_again
    if not uris:  # before the chain's manifests are read: most runs have nothing to look up
        return replaced
    dest, dataset = recipe.output.dest, recipe.dataset
    chain = read_chain()[::-1]
    # The oldest version left extends one deleted since (a retention rule): the records it carried from there
    # are in it alone, so it is read whole.
    cut = chain[-1].extends is not None and chain[-1].extends not in previous
    if _dealt_alike(recipe, chain, cut):
        return replaced
    latest, *earlier = [manifest.version for manifest in chain]
    found = [replaced] if replaced is not None else []
    if in_latest := (uris - watermarks.replaced()) if replaced is not None else uris:
        found.append(records_from_inputs(version_uri(dest, dataset, latest), in_latest)[0])
    seen = pl.concat(found)["id"]
    for version in earlier:
        rows = records_from_inputs(version_uri(dest, dataset, version), uris, own=version != earlier[-1] or not cut)[0]
        # A record a later version holds is on its side there: of each version, only those not found yet.
        rows = rows.filter(~pl.col("id").is_in(seen.implode()))
        found.append(rows)
        seen = seen.append(rows["id"])
    return pl.concat(found).unique("id", keep="first", maintain_order=True)


def _dealt_alike(recipe: Recipe, chain: list[Manifest], cut: bool) -> bool:
    """Whether this run's split deals each record the side every version of ``chain`` holds it on, so a record
    that left the latest (a line deleted, a rejection undone) comes back on its side with no walk down the chain
    (README "Splits"). At ``validation_fraction`` 0 every record goes to train: so it is where no version holds
    a validation record. Else a plain hash split (of the id, by ``split_seed`` under the fraction: no
    ``stratify_by``, group or image) deals a record the side it was dealt by every version split so too, the
    chain whole (``cut``: its oldest carried records of a version deleted since, split by settings unknown)."""
    out = recipe.output
    # Groups and images keep their sides in the state store, past a full refresh that split without them: one
    # there on validation takes a restored record to it at fraction 0 too.
    if cut or out.group_by or recipe.record.kind == "vqa":
        return False
    if not out.validation_fraction:
        return all(not (split := manifest.splits.get("validation")) or not split.records for manifest in chain)
    if out.stratify_by:
        return False
    plain = {"method": "hash", "seed": out.split_seed, "validation_fraction": out.validation_fraction}
    return all(
        {key: manifest.split.get(key) for key in plain} == plain
        and not (manifest.split.get("stratify_by") or manifest.split.get("group_by"))
        and not manifest.split.get("group_by_image")
        for manifest in chain
    )


def _records_again(sources: list[Source]) -> set[str]:
    """The inputs whose records come again one by one under their ids (an edited keyed SQL row, a VQA row whose
    image changed in place)."""
    return {uri for source in sources for uri in getattr(source, "records_again", set)()}


def _chain_manifests(recipe: Recipe, previous: list[int]) -> list[Manifest]:
    """The manifests of the versions the latest builds on, oldest first: it and those it extends, back to one
    that extends nothing (a first run, a full refresh), or to the oldest still there where one it extends was
    deleted since. What versions before that set aside describes input as it was then."""
    chain: list[Manifest] = []
    version: int | None = previous[-1]
    while version is not None and version in previous and version not in (m.version for m in chain):
        chain.append(read_manifest(version_uri(recipe.output.dest, recipe.dataset, version)))
        version = chain[-1].extends
    return chain[::-1]


def _content_keys_of(recipe: Recipe, stages: list[AnyStage], ids: set[str], warn: bool = True) -> dict[str, int]:
    """The content keys of published records ``ids`` (``rejected_content.content_keys``), from the
    signatures stored of them: by the review stage (``ContentKeys``), else by a default ``exact_dedup``."""
    index = next((stage.index for stage in stages if isinstance(stage, SignatureRecorder)), None)
    if not ids or index is None:
        return {}
    params = default_content_params(recipe.record.kind)
    found: dict[str, int] = {}
    # Stored as the review stage read the record, else by a default exact_dedup (or by the one a version
    # published before this recipe had: keys of the text as that stage saw it).
    for name in (ContentKeys.name, ExactDedup.name):
        missing = pa.array(sorted(ids - found.keys()), pa.string())
        if len(missing):
            found.update(index.keys_of(name, params, missing))
    if warn and len(found) < len(ids):
        log.warning(
            "%d record(s) rejected by annotators: their content key was not stored (published by an earlier "
            "version of curation, or never published), so the same content read from another input is not "
            "filtered by the rejection",
            len(ids) - len(found),
        )
    return found


def _carried_copies(
    stages: list[AnyStage],
    review: ReviewDecisions,
    state: StateStore,
    dataset: str,
    since: DecisionMark | None,
    until: DecisionMark,
) -> tuple[dict[str, str], dict[str, int]]:
    """Published records holding a rejected record's content (copy id -> that record), which a recipe
    without a default exact_dedup across runs may have published beside it, and the content keys of
    records rejected since ``since`` found meanwhile (record -> key). Looked up in the content keys the
    review stage stored (``ContentKeys``): only where the recipe has them."""
    recorder = next((stage for stage in stages if isinstance(stage, SignatureRecorder)), None)
    content = next((s for s in recorder.stages if isinstance(s, ContentKeys)), None) if recorder else None
    if content is None or not review.decisions.rejected:
        return {}, {}
    decisions = review.decisions
    keys = {**decisions.rejected_content, **{key: record for record, key in review.learned.items()}}
    found: dict[str, int] = {}
    if since is not None:  # rejected since the last version: carried now, their keys are not kept yet
        newly = {
            change.now["record_id"]
            for change in changes(state.engine, dataset, since, until)
            if change.now is not None and change.now["action"] == "reject"
        }
        unknown = sorted(newly - set(keys.values()) - decisions.copy_of.keys())
        if unknown:
            found = recorder.index.keys_of(content.name, content.params, pa.array(unknown, pa.string()))
            keys.update({key: record for record, key in found.items()})
    if not keys:
        return {}, found
    holding = recorder.index.ids_holding(content.name, content.params, pa.array(list(keys), pa.uint64()))
    # A copy with an edit in force is judged by its own decisions (the edit made it other content), as
    # the review stage judges one read; its stored key is of its content as read, before the edit.
    copies = {
        record: keys[key]
        for record, key in holding.items()
        if record not in decisions.rejected and record not in decisions.edits
    }
    return copies, found


def edits_through_stages(stages: list[AnyStage], decisions: RunDecisions) -> tuple[RunDecisions, set[str]]:
    """Annotators' edits as the stages that rewrite text after the review stage (clean, PII) make them.

    A record read again meets an edit before those stages; a carried line is not read again, so its
    edit would be published as typed (a name or a phone number in a reply, HTML). Returns the decisions
    with the edited values as the stages leave them, and the edited records a stage sets aside (a PII
    ``drop`` operator, nothing left after cleaning): rejected too, so they are not carried.
    """
    rewriting = [stage for stage in stages if getattr(stage, "rewrites_text", False)]
    if not decisions.edits or not rewriting:
        return decisions, set()
    edits, set_aside = _through(rewriting, decisions.edits)
    return dataclasses.replace(decisions, edits=edits, rejected=decisions.rejected | set_aside), set_aside


def restorations_through_stages(stages: list[AnyStage], decisions: RunDecisions) -> tuple[RunDecisions, set[str]]:
    """Carried texts with spans marked not PII put back, as the stages that rewrite text after the PII
    stage whose item it was make them (``decisions.restored``).

    A flag holds only its own stage's text and redactions: rebuilt from it alone, a carried line would
    publish in clear what a later PII stage redacts. A field rebuilt by several stages goes on from the
    earliest one, the later ones applying their own marks as it passes, as on a record read again.
    Returns the decisions with those texts, and the records a later stage sets aside (a PII ``drop``
    operator): rejected too, so they are not carried.
    """
    restored: dict[str, dict[str, str]] = {}
    set_aside: set[str] = set()
    for stage in stages:
        if restored and getattr(stage, "rewrites_text", False):
            restored, dropped = _through([stage], restored)
            set_aside |= dropped
        for record, fields in decisions.restored_in.get(getattr(stage, "name", ""), {}).items():
            # An edit of the field replaces the text anyway (it goes through the stages on its own).
            fields = {name: text for name, text in fields.items() if name not in decisions.edits.get(record, {})}
            if fields and record not in set_aside:
                restored[record] = {**fields, **restored.get(record, {})}  # an earlier stage's goes on
    return dataclasses.replace(decisions, restored=restored, rejected=decisions.rejected | set_aside), set_aside


def _through(stages: list[AnyStage], values: dict[str, dict[str, str]]) -> tuple[dict[str, dict[str, str]], set[str]]:
    """``values`` (record -> field -> text) as ``stages`` rewrite them, one after the other, and the records
    they set aside."""
    ids = sorted(values)
    names = sorted(
        {name for fields in values.values() for name in fields}.union(*(stage.fields for stage in stages))  # type: ignore[attr-defined]
    )
    batch = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "source": pa.nulls(len(ids), pa.struct(list(SOURCE_TYPE))),
            **{name: pa.array([values[r].get(name) for r in ids], pa.string()) for name in names},
        }
    )
    set_aside: set[str] = set()
    for stage in stages:
        result = stage(batch)  # type: ignore[operator]
        batch = result.kept
        set_aside.update(result.set_aside["id"].to_pylist())
    kept = {row["id"]: {name: row[name] for name in values[row["id"]]} for row in batch.to_pylist()}
    return kept, set_aside


class HeldStops:
    """SIGTERM and ^C held off from the moment a version becomes visible until the run has recorded
    what it took and published: stopped in between, the next run would read the same input again and
    publish its records a second time. A signal that came meanwhile is raised after (``signals``)."""

    def __init__(self) -> None:
        self.signals: list[int] = []
        self.previous: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}

    def hold(self) -> None:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for signum in STOP_SIGNALS:
                self.previous[signum] = signal.signal(signum, lambda got, _frame: self.signals.append(got))

    def release(self) -> None:
        for signum, previous in self.previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self.previous = {}


def default_executor(recipe: Recipe, quiet: bool = False) -> Executor:
    """The executor the recipe's ``engine`` names: embedded by default, Ray Data when asked (``quiet``:
    Ray prints only its errors)."""
    if recipe.engine == "ray":
        from curation.executors.ray_executor import RayExecutor

        return RayExecutor(recipe.ray_address, quiet=quiet)
    return LocalExecutor()


def run_recipe(
    recipe: Recipe,
    on_start: Callable[[int], None] = lambda _: None,
    on_input: Callable[[int], None] = lambda _: None,
    executor: Executor | None = None,
    full_refresh: bool = False,
    on_written: Callable[[int], None] = lambda _: None,
) -> RunResult:
    """Run a recipe end to end and publish the next version; nothing is visible if it fails.

    Sources take only what is new since the last published run (``full_refresh`` takes everything
    again); a run that finds nothing new publishes nothing. Two runs of one dataset never overlap:
    the second raises ``RunLocked``. For progress: ``on_start`` gets the input's size in bytes,
    ``on_input`` the bytes read since, ``on_written`` the records written so far (after a
    deduplication stage, writing starts once all input is read).
    """
    stop_signals.clear()  # a process may run several recipes (tests, a notebook)
    state = StateStore(recipe.state)
    result: RunResult | None = None
    try:
        with run_lock(state.engine, recipe.dataset, new_run_id()) as lock:
            result = _run_locked(recipe, state, lock, on_start, on_input, executor, full_refresh, on_written)
            return result
    except Stopped as stop:  # while the lock was given back: the run had ended, and published if it says so
        if stop.published is None and result is not None:
            raise Stopped(int(stop.args[0]), result) from None
        raise


@dataclass
class RunPlan:
    """What a run settles before it reads anything: the versions it builds on and the inputs it reads."""

    previous: list[int]  # the dataset's published versions
    latest: Manifest | None  # the latest one, which this run compares with (none on a full refresh)
    full_refresh: bool
    decided_before: DecisionMark | None  # the review decisions ``latest`` applied
    watermarks: Watermarks
    sources: list[Source]
    inputs: list[InputFile]
    replaced_ids: pl.Series | None  # the latest version's records from inputs read whole again
    # ``id`` and ``validation`` of the published records this run may write again (``_earlier_sides``)
    published_sides: pl.DataFrame | None
    # The runs that left a version unrecorded (``StateStore.unrecorded_runs``): this run reads everything again.
    supersedes: list[str]
    untried: frozenset[str]  # the inputs of sources no version read (``new_to_the_dataset``)

    @property
    def extends(self) -> int | None:
        """The version this run extends: none when no source was read before (a path or setting changed)."""
        return extended_version(self.previous, self.watermarks)

    @property
    def extended(self) -> Manifest | None:
        """The version this run extends, as read before the run (none on a full refresh)."""
        return self.latest if self.extends is not None else None


@dataclass
class RunStages:
    stages: list[AnyStage]  # the recipe's, as the executor runs them
    # Without a cross-run stage in the recipe now, the signatures earlier versions stored stay for a
    # later run that has one again: they still lose the records this version replaces or leaves out
    # (all of them on a full refresh), or content would be set aside as a repeat of a record the
    # dataset no longer holds.
    index_only: list[AnyStage]
    review: ReviewDecisions

    @classmethod
    def build(cls, recipe: Recipe, plan: RunPlan, decided_by: DecisionMark) -> RunStages:
        # A version that extends nothing (no source read before: a path or setting changed) holds only
        # what this run reads: cross-run dedup starts over with it, as on a full refresh, or the records
        # it reads would be set aside as repeats of versions it does not hold.
        start_over = plan.full_refresh or not plan.watermarks.had_previous()
        # A row of a sidecar not read whole again comes again only because its image changed in place: in a
        # delta version it is a new version of its record (same id), as an edited keyed SQL row is.
        again = _records_again(plan.sources) - plan.watermarks.replaced()
        stages = build_stages(recipe, start_over, decided_by, again)
        index_only: list[AnyStage] = (
            []
            if any(isinstance(s, SignatureRecorder) for s in stages)
            else [SignatureRecorder([], SignatureIndex(recipe.state, recipe.dataset, start_over=start_over))]
        )
        return cls(stages, index_only, next(s for s in stages if isinstance(s, ReviewDecisions)))

    @property
    def with_index(self) -> list[AnyStage]:
        """Every stage that keeps cross-run state."""
        return [*self.stages, *self.index_only]

    def retire(self, ids: pa.Array) -> None:
        """Hand ``ids`` to the signature index of the cross-run dedup stages, if there are any."""
        if len(ids):
            for stage in self.with_index:
                if isinstance(stage, SignatureRecorder):
                    stage.index.retire(ids)


def _run_locked(
    recipe: Recipe,
    state: StateStore,
    lock: HeldLock,
    on_start: Callable[[int], None],
    on_input: Callable[[int], None],
    executor: Executor | None,
    full_refresh: bool,
    on_written: Callable[[int], None],
) -> RunResult:
    # The review decisions this run applies, everywhere it reads them (which inputs to read again, the
    # review stage, the carry): recorded with the run, so the next run compares the decisions in force
    # as of this mark with its own, and nothing decided in between is lost or counted twice.
    decided_by = mark_now(state.engine)
    plan = _plan(recipe, state, full_refresh, decided_by)
    on_start(sum(entry.size or 0 for entry in plan.inputs))
    writer = _writer(recipe, state, plan.full_refresh, lock.run_id)  # it stages nothing before the run is recorded
    if plan.published_sides is not None and not plan.published_sides.is_empty():  # read again: same side
        sides = plan.published_sides
        writer.splitter.keep_sides(sides["id"].to_arrow(), sides["validation"].to_arrow())
    if plan.extended is not None:  # each label's balance holds across runs, not only within one
        writer.splitter.deal_on_from(plan.extended.split)
    writer.on_written = on_written
    writer.confirm_lock = lock.confirm
    published_at = published_place(recipe)
    state.run_started(
        writer.run_id, recipe.dataset, recipe.fingerprint(), decisions_read=decided_by, published_at=published_at
    )
    held = HeldStops()
    log.info("run=%s dataset=%s inputs=%d", writer.run_id, recipe.dataset, len(plan.inputs))
    tally = Tally()
    publishing: list[int] = []  # the version this run marked publishing, once it did
    try:
        run_stages = RunStages.build(recipe, plan, decided_by)
        review = run_stages.review
        tally.queued = queued_records(state.engine, recipe.dataset)
        # The content key of each record rejected since it was published, from its stored signatures
        # (before they are retired), before anything is read: a copy read in this run is filtered too.
        review.know(_content_keys_of(recipe, run_stages.with_index, review.keys_unknown(), warn=False))
        if plan.replaced_ids is not None:
            run_stages.retire(plan.replaced_ids.to_arrow())
        # A rejected record leaves the dataset as a replaced one does: no record read now is an earlier version
        # of it (its input may be gone, so that it is never read again to take its place in its cluster). Not in a
        # delta version: the record stays in the version that published it, its signatures with it (retired, they
        # would be removed for good, and a copy read once the rejection is undone published a second time).
        if recipe.output.carry_forward:
            run_stages.retire(review.rejected)
        # With a PII stage, set-aside rows are redacted too: their raw input is published in set_aside/.
        writer.scrub = set_aside_scrub(run_stages.stages)
        (executor or default_executor(recipe)).run(plan.sources, run_stages.stages, writer, tally, on_input)
        plan.watermarks.read_next_run(tally.unread_inputs)  # records a stage could not read for now
        tally.flags = _flags_as_published(run_stages.stages, tally.flags)
        counts = tally.counts()
        changed = _recipe_changed(recipe, plan.extended)
        missing_column = tally.examples.get(("quarantined", "missing_column"))
        if columns_on_trial(recipe, plan.extended) or lacking_from_untried(tally.lacking_column, plan.untried):
            _check_some_record_has_the_columns(recipe, counts, missing_column, writer.scrub)
        if templates_on_trial(recipe, plan.extended):
            _check_a_template_made_some_record(recipe, counts, tally, run_stages.stages, writer.scrub)
        cannot_read = plan.watermarks.unread() + tally.unread_once
        # A version extending none would hold no record at all; failed, nothing is committed either. So too where
        # it would hold none and a SQL or Hugging Face row could not be read for now: its table or data file would
        # be taken, and the row read again only by --full-refresh.
        held_back = counts.input == counts.quarantined == cannot_read or tally.unread_once
        if plan.extended is None and counts.input and counts.written == 0 and held_back:
            others = counts.input - cannot_read
            which = "the new version (it extends none)" if plan.previous else "the first version"
            again = reads_again(None, full_refresh=bool(plan.full_refresh and plan.previous))
            said = (
                f"; nothing was taken: {again} reads them again" if tally.unread_once else f"; {again} reads it again"
            )
            raise StorageError(
                f"{recipe.dataset}: {cannot_read} input(s) (files, image rows) cannot be read"
                + (f" and the other {others} were set aside: {which} would hold no record" if others else "")
                # A stage's row as published says what reads it again once its input is taken: not so here.
                + (
                    f", e.g. {tally.unread_example.as_published(writer.scrub)}{said}"
                    if tally.unread_example
                    else _first_detail(tally, writer.scrub, "unreadable")
                )
            )
        if _nothing_new(recipe, state, plan, counts, decided_by):
            writer.abort()
            # e.g. a new but empty file: no need to look at it again; not by a run whose lock was taken over
            plan.watermarks.commit(writer.run_id, lock.confirm_within)
            state.run_finished(writer.run_id, "empty", counts=counts.model_dump())
            message = f"nothing new since {recipe.dataset} v{plan.extends}: published nothing" + (
                f"; {changed}" if changed else ""
            )
            if same := plan.watermarks.same_bytes():  # no version's stats will name them: the message does
                message += (
                    f"; {len(same)} new file(s) not read, holding the bytes of files taken before: "
                    + ", ".join(f"{uri} (same bytes as {taken})" for uri, taken in sorted(same.items())[:3])
                    + (", ..." if len(same) > 3 else "")
                )
            if counts.input:  # read again, still unreadable: said on each run, published once
                unread = f"{counts.input} input(s) (files, image rows) still cannot be read" + _first_detail(
                    tally, writer.scrub
                )
                log.warning("run=%s %s", writer.run_id, unread)
                message += f"; {unread}"
            log.info("run=%s %s", writer.run_id, message)
            return RunResult(manifest=None, version_uri=None, message=message)
        if changed:
            log.warning("%s", changed)
        if not plan.inputs and plan.previous:  # ``_plan`` refused it where there was input to read (or no version)
            # Something to publish though nothing was read (a review decision since): not staged yet, refused here.
            refuse_unwritable_dest(recipe.output.dest, recipe.dataset)

        review_rejected = review.keys_unknown()  # rejected records whose content is not known yet
        rejected_keys = dict(review.learned)  # content keys of rejected records, to keep once published
        if recipe.output.carry_forward and plan.extends is not None:
            # The new version is the whole dataset, not only this run's records.
            found = _carry(recipe, state, plan, plan.extends, run_stages, writer, tally, counts, decided_by)
            rejected_keys.update(found)
        # A rejection covers the record's content (curation/review/rejected_content.py): the key of each
        # rejected record this run met, read or carried, from the signatures it was published with (read
        # before they are retired); one the review stage hashed itself (``learned``) is known already.
        met = (tally.rejected_read | writer.carry_rejected) & review_rejected - rejected_keys.keys()
        rejected_keys.update(_content_keys_of(recipe, run_stages.with_index, met))

        def visible_next(version: int) -> None:
            lock.confirm()  # taken over while this run went on (not renewed for a lease): the other run publishes
            # The last moment a stopped run publishes nothing, whatever the executor; after the lock is
            # confirmed, as a stop takes the copies under vN/ away and a run that lost it must leave them.
            raise_if_stopped()
            state.run_publishing(writer.run_id, version)
            publishing.append(version)
            held.hold()

        published = writer.publish(
            functools.partial(_manifest, recipe, plan, writer, tally, counts),
            before_visible=visible_next,
            builds_on=plan.previous,
        )
    except BaseException as error:
        held.release()
        writer.abort()
        # Failed once it was marked publishing (an error in the rename or a signal no handler holds), its
        # version may be visible: it stays marked so, and the next run reads everything again if it is.
        # Marked failed, the next would trust the watermarks and publish that version's records twice.
        # Not on ``LockLost``: raised only before it is (``PublishedMeanwhile``: its number holds another run's
        # version, most often the one that took over its lock, which recorded it: this run, marked killed then,
        # must not have the next run read everything again for it).
        visible = publishing and not isinstance(error, LockLost)
        status, version = ("publishing", publishing[0]) if visible else ("failed", None)
        state.run_finished(writer.run_id, status, version, error=type(error).__name__)
        raise
    result = RunResult(
        manifest=published, version_uri=version_uri(recipe.output.dest, recipe.dataset, published.version)
    )
    try:  # the version is visible: what it took and what it holds are recorded before anything else
        try:
            _record_published(recipe, state, plan, run_stages, writer, tally, published, rejected_keys, lock)
        except Exception as error:  # said as such, not as a run that published nothing
            if isinstance(error, LockLost):  # marked killed by the run that took over: publishing, so the
                with contextlib.suppress(Exception):  # next run reads every input again
                    state.run_publishing(writer.run_id, published.version)
            raise NotRecorded(result, error) from error
        finally:
            writer.clean_up()  # held too: a stop while it runs is raised below, with the result it published
    finally:
        held.release()
    if held.signals:
        raise Stopped(held.signals[0], result)
    return result


def _clusters_of_rejected(
    recipe: Recipe,
    state: StateStore,
    since: DecisionMark,
    until: DecisionMark,
    read_chain: Callable[[], list[Manifest]],
) -> set[str]:
    """The inputs of the records the chain set aside as duplicates of a record rejected since ``since``, or no
    longer rejected, and that record's own: a carried line takes the rejection, but the cluster it kept is
    resolved again only when its members are read again (as a full refresh would: without the rejected
    record, one of them may be published; with it back, the one published in its place is set aside
    again). Only a run with such a change reads the chain's set-aside rows for it."""
    changed = rejections_changed(state.engine, recipe.dataset, since, until)
    if not changed:
        return set()
    ids = pl.Series(sorted(changed), dtype=pl.String)
    found = inputs_of_duplicates(recipe.output.dest, recipe.dataset, [m.version for m in read_chain()], ids)
    kept = set().union(*found.values())
    return set(found) | {uri for record in kept if (uri := changed[record])}


def _plan(recipe: Recipe, state: StateStore, full_refresh: bool, decided_by: DecisionMark) -> RunPlan:
    """The versions the run builds on and the inputs it reads (the run holds the dataset's lock: no
    other run publishes a version until it ends)."""
    previous = published_versions(recipe.output.dest, recipe.dataset)
    # Asked before a first version too: it marks killed the runs that died publishing one (their claim then passed by).
    unrecorded = state.unrecorded_runs(recipe.dataset, previous)
    untrusted = _watermarks_untrusted(recipe, state, previous, unrecorded)
    # Not asked for: records of inputs moved away since they were taken (carried) must not leave silently.
    unasked = bool(untrusted and previous and recipe.output.carry_forward and not full_refresh)
    if untrusted and not full_refresh:
        log.warning("%s: this run reads all of it again (as --full-refresh)", untrusted)
        full_refresh = True
    # Not on a full refresh: it compares with no earlier version (and so runs even when the latest is damaged).
    latest = (
        read_manifest(version_uri(recipe.output.dest, recipe.dataset, previous[-1]))
        if previous and not full_refresh
        else None
    )
    if latest is not None and recipe.output.carry_forward and latest.holds_only_its_run:
        # A delta version (made with carry_forward: false) holds only what its run read: carried alone, the
        # new version would say it holds the whole dataset and leave out every version before it.
        log.warning(
            "%s v%d holds only what was new since v%d (output.carry_forward was false): this run reads all "
            "input again (as --full-refresh), so that its version holds the whole dataset",
            recipe.dataset,
            latest.version,
            latest.extends,
        )
        full_refresh, latest = True, None
    decided_before = _decisions_read(recipe, state, latest) if latest is not None else None
    # Read when first needed, once: a damaged manifest raises where it did when each caller read the chain.
    chain = functools.cache(lambda: _chain_manifests(recipe, previous))
    read_again = (
        inputs_to_read_again(state.engine, recipe.dataset, decided_before, decided_by)
        | _clusters_of_rejected(recipe, state, decided_before, decided_by, chain)
        if decided_before is not None and recipe.output.carry_forward and not full_refresh
        else set()
    )
    if read_again:
        log.info("%d input(s) read again for review decisions a carried record cannot take", len(read_again))
    elif decided_before is not None and not recipe.output.carry_forward and not full_refresh:
        # A delta version reads only new input: such decisions (a near duplicate marked not a duplicate, a
        # rejection undone) wait for their input to change, unseen.
        unread = inputs_to_read_again(state.engine, recipe.dataset, decided_before, decided_by)
        if unread:
            log.warning(
                "review decisions on the records of %d input(s) (%s) take effect when they are read again: with "
                "output.carry_forward false only new input is read, so run with --full-refresh",
                len(unread),
                some_named(unread, 3),
            )
    watermarks = Watermarks(state.engine, recipe.dataset, full_refresh, read_again)
    sources = build_sources(recipe, watermarks)
    inputs = source_inputs(sources)
    if inputs or not previous:  # what it reads is staged under the dest; nothing new over a read-only one is no error
        refuse_unwritable_dest(recipe.output.dest, recipe.dataset)
    for gone in sorted(read_again - {entry.uri for entry in inputs}):
        log.warning(
            "%s: review decisions on its records (one that ended, one on a set-aside near duplicate, or a "
            "rejection of the record their cluster kept, or its end) take effect when it is read again, and it is no longer "
            "there to read again",
            gone,
        )
    if unasked:
        _refuse_to_drop_moved_away(recipe, previous[-1], inputs)
    for warning in recipe_warnings(recipe):
        log.warning("%s", warning)
    if previous and not full_refresh:
        _note_sources_new_to_the_dataset(recipe, sources, watermarks, previous[-1])
    replaced_ids, sides = None, None
    if recipe.output.carry_forward and previous and watermarks.replaced():
        inputs, replaced_ids, sides = _replaced_records(recipe, watermarks, sources, previous, inputs, chain)
    if previous and not full_refresh:
        sides = _earlier_sides(recipe, previous, sources, watermarks, sides, chain)
    untried = frozenset(entry.uri for source in sources if new_to_the_dataset(source) for entry in source.inputs())
    return RunPlan(
        previous,
        latest,
        full_refresh,
        decided_before,
        watermarks,
        sources,
        inputs,
        replaced_ids,
        sides,
        [*unrecorded],
        untried,
    )


def _writer(recipe: Recipe, state: StateStore, full_refresh: bool, run_id: str) -> DatasetWriter:
    out = recipe.output
    fmt = output_format(
        out.format, recipe.record.kind, FormatOptions(system_prompt=out.system_prompt, chunk_chars=out.chunk_chars)
    )
    writer = DatasetWriter(
        out.dest,
        recipe.dataset,
        fmt,
        out.shard_max_bytes,
        out.validation_fraction,
        out.split_seed,
        stratify_by=out.stratify_by,
        group_by=out.group_by,
        by_document=recipe.groups_by_document,
        run_id=run_id,
    )
    writer.ended_runs = functools.partial(state.ended_runs, recipe.dataset)
    writer.last_published = functools.partial(state.last_published, recipe.dataset)
    # A group or image read again keeps the side its records are on.
    if writer.splitter.remembers_sides and not full_refresh:
        writer.splitter.known = functools.partial(state.group_sides, recipe.dataset)
    return writer


def _first_detail(tally: Tally, scrub: Callable[[pa.Table], pa.Table] | None, reason: str | None = None) -> str:
    """The first quarantined record's detail (of ``reason``'s first, where there is one), as published (``scrub``)."""
    found = sorted(
        ((why != reason, example) for (outcome, why), example in tally.examples.items() if outcome == "quarantined"),
        key=lambda pair: pair[0],  # stable: otherwise in the order met
    )
    return f", e.g. {found[0][1].as_published(scrub)}" if found else ""


def _nothing_new(recipe: Recipe, state: StateStore, plan: RunPlan, counts: Counts, decided_by: DecisionMark) -> bool:
    """Whether the run has nothing to add to the version it extends: no record read (but inputs that could
    not be read then and cannot be now, files or rows of images: an earlier version counts them), no input read again that
    now holds nothing, no review decision changed since."""
    emptied = plan.replaced_ids is not None and not plan.replaced_ids.is_empty()
    return (
        plan.extended is not None
        and plan.decided_before is not None
        and counts.input == counts.quarantined == plan.watermarks.still_unread()
        and not emptied
        and not _review_changes(recipe, state, plan.decided_before, decided_by)
    )


def _carry(
    recipe: Recipe,
    state: StateStore,
    plan: RunPlan,
    extends: int,
    run_stages: RunStages,
    writer: DatasetWriter,
    tally: Tally,
    counts: Counts,
    decided_by: DecisionMark,
) -> dict[str, int]:
    """Copy version ``extends``'s records into the new one, with annotators' decisions applied as the
    review stage read them; returns the content keys of rejected records found on the way."""
    review = run_stages.review
    decisions = review.decisions
    # Published before the rejection (no dedup across runs kept them apart), a copy of its content is
    # carried: it leaves with the rejected record.
    carried_copies, found_keys = _carried_copies(
        run_stages.stages, review, state, recipe.dataset, plan.decided_before, decided_by
    )
    if carried_copies:
        decisions = dataclasses.replace(decisions, rejected=decisions.rejected | carried_copies.keys())
    decisions, edits_set_aside = edits_through_stages(run_stages.stages, decisions)
    decisions, restored_set_aside = restorations_through_stages(run_stages.stages, decisions)
    edits_set_aside |= restored_set_aside
    counts.carried = writer.carry(
        version_uri(recipe.output.dest, recipe.dataset, extends),
        recipe.record.kind,
        decisions,
        plan.watermarks.reread(),
        plan.replaced_ids,
    )
    tally.rejected_copies.update(
        (carried_copies[record], record, writer.carry_rejected_uris.get(record, ""))
        for record in writer.carry_rejected & carried_copies.keys()
    )
    # No longer published as they were: later runs must not take that content for an earlier version's
    # (a record written again keeps the signature this run stores).
    run_stages.retire(pa.array(sorted(writer.carry_rejected | writer.carry_replaced), pa.string()))
    if edits_set_aside:
        writer.carry_stats["edits_set_aside"] = len(edits_set_aside)
        log.warning(
            "%d carried record(s) left out: a stage sets aside their text as annotators edited it or put "
            "spans marked not PII back (a PII operator drop, nothing left after cleaning)",
            len(edits_set_aside),
        )
    return found_keys


def _manifest(
    recipe: Recipe,
    plan: RunPlan,
    writer: DatasetWriter,
    tally: Tally,
    counts: Counts,
    version: int,
    splits: dict[str, Split],
    side_files: list[str],
) -> Manifest:
    """The new version's manifest, with its report (report.html/json beside it, published with it)."""
    built = Manifest(
        dataset=recipe.dataset,
        version=version,
        extends=plan.extends,
        carried_from=plan.extends if recipe.output.carry_forward else None,
        created_at=datetime.now(UTC),
        recipe_sha256=recipe.fingerprint(),
        record_sha256=recipe.record.fingerprint(recipe.input_schema),
        record_kind=recipe.record.kind,
        format=writer.format.name,
        counts=counts,
        splits=splits,
        side_files=side_files,
        inputs=[entry.model_copy(update={"records": tally.by_input[entry.uri]}) for entry in plan.inputs],
        row_schema=writer.format.row_schema(),
        stats={"stages": tally.stats()} if tally.stage_stats else {},
    )
    if writer.carry_stats:
        built.stats["carry"] = writer.carry_stats
    if same := plan.watermarks.same_bytes():  # new files holding what an earlier run took: not read again
        built.stats["same_bytes"] = same
    if links := plan.watermarks.links_out():  # links in a source's folder that lead out of it: not read
        built.stats["links_out"] = links
    if again := plan.watermarks.links_repeated():  # paths through links to files read under another: not read
        built.stats["links_repeated"] = again
    return attach_report(built, writer)


def _record_published(
    recipe: Recipe,
    state: StateStore,
    plan: RunPlan,
    run_stages: RunStages,
    writer: DatasetWriter,
    tally: Tally,
    published: Manifest,
    rejected_keys: dict[str, int],
    lock: HeldLock,
) -> None:
    """Record what the visible version took and holds, before anything else; nothing more from the moment
    this run's lock is found taken over (it stalled past its lease as it published, and may wake while the
    run that took over records its own, after reading everything again): ``LockLost``."""
    plan.watermarks.commit(writer.run_id, lock.confirm_within)
    for stage in run_stages.with_index:  # stages that keep cross-run state learn the version they went into
        if hasattr(stage, "published"):
            stage.published(published.version, lock.confirm_within)
    flags = pa.concat_tables(tally.flags) if tally.flags else empty_flags()
    # The review tables are written by helpers in transactions of their own: the lock is confirmed once
    # before them. A stall past the lease among them can still add this version's items or notes; the
    # run's status, confirmed in its own transaction below, then stays publishing, and the next run
    # reads everything again.
    with state.engine.begin() as db:
        lock.confirm_within(db)
    # Before this run's items are queued: which earlier items' records it did not find where it read.
    read_whole = None if plan.full_refresh or plan.extends is None else plan.watermarks.replaced()
    note_read(state.engine, recipe.dataset, writer.run_id, tally.queued_read | plan.watermarks.kept(), read_whole)
    add_items(state.engine, recipe.dataset, published.version, writer.run_id, flags)
    remember_rejected_content(state.engine, recipe.dataset, rejected_keys)
    remember_copies(state.engine, recipe.dataset, tally.rejected_copies)
    if writer.splitter.remembers_sides:
        sides = writer.splitter.placed()
        state.record_group_sides(recipe.dataset, sides, plan.full_refresh, lock.confirm_within)
    # Last: a run killed before this stays "publishing", and the next reads everything again. Marked
    # published before its signatures were, the next run would trust the watermarks but compare with no
    # signature of this version, and publish its content a second time.
    counts = published.counts.model_dump()
    state.run_finished(
        writer.run_id, "published", published.version, counts, superseded=plan.supersedes, confirm=lock.confirm_within
    )
    log.info("run=%s published version=%d written=%d", writer.run_id, published.version, published.counts.written)
