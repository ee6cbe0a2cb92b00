"""The embedded executor: streams batches through the stages on this machine, and the accounting every
executor shares (each record's fate, counted once).

Batches stream from the sources through the per-batch stages to the writer, so memory stays flat
however large the input. A global stage (deduplication) is a barrier: the batches before it are
spilled to local Arrow files while their signatures are collected, the signatures are resolved
once, and the spilled batches stream on without the rows it set aside.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

from connectors.base import Source
from connectors.files import CONNECTOR as FILES
from connectors.images import CONNECTOR as IMAGES
from connectors.images import NOT_LISTED
from connectors.read_ahead import read_ahead
from connectors.state import process_alive
from curation.stages.base import GlobalStage, Stage
from curation.stages.review import ReviewDecisions
from curation.stages.shape import TemplateErrors
from curation.stopping import raise_if_stopped
from curation.writer import DatasetWriter, writing
from schemas.manifest import Counts
from schemas.records import FLAG_SCHEMA, OUTCOMES, SetAsideExample

log = logging.getLogger("curation.pipeline")

AnyStage = Stage | GlobalStage


class AccountingError(RuntimeError):
    """A stage or the run lost or invented records; the run is not published."""


@dataclass
class Tally:
    """Every record's fate, as the run goes."""

    input: int = 0
    written: int = 0
    reasons: Counter[tuple[str, str]] = field(default_factory=Counter)
    stage_stats: dict[str, Counter[str]] = field(default_factory=dict)
    flags: list[pa.Table] = field(default_factory=list)
    examples: dict[tuple[str, str], SetAsideExample] = field(default_factory=dict)  # the first row of each reason
    by_input: Counter[str] = field(default_factory=Counter)  # records per input URI, once each is accounted for
    # Records filtered for holding a rejected record's content: (that record, the copy's id, its input).
    rejected_copies: set[tuple[str, str, str]] = field(default_factory=set)
    rejected_read: set[str] = field(default_factory=set)  # records filtered for an annotator's rejection
    # Records with review items, and those of them the run read (written or set aside): the review page
    # says which ones a run that read their input did not find (``curation.review.queue.note_read``).
    queued: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    queued_read: set[str] = field(default_factory=set)
    # Inputs (URIs) holding records a stage could not read for now (``unreadable``: a VQA row's image it may
    # not read) of a files source, the ids of those, each once: the next run reads them again
    # (``Watermarks.read_next_run``). One the reader could not read keeps such a watermark of its own (``read``).
    unread_inputs: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    # Such records of a SQL or Hugging Face source, which only --full-refresh reads again: a first run that reads
    # nothing else fails, as one of a files source does, so that none of them is taken (``run_recipe``).
    unread_once: int = 0
    # The first detail of a record set aside as ``unreadable`` for now (a file the reader could not open, a row a
    # stage could not read), without what reads it again: a run that fails having taken nothing says its own
    # (``reads_again``).
    unread_example: SetAsideExample | None = None
    # Records each stage set aside (the reader's as "read"), and the shape stage's first kind of template error
    # (and whether another was seen): one that set aside every record the run shaped is the recipe's error
    # (``recipe_template_error``).
    by_stage: Counter[str] = field(default_factory=Counter)
    template_errors: TemplateErrors = field(default_factory=TemplateErrors)
    # The inputs (connector, URI) of records lacking a column the recipe names: a run setting aside every record
    # fails where one is of a source no version read (``lacking_from_untried``).
    lacking_column: set[tuple[str, str]] = field(default_factory=set)

    def count_inputs(self, table: pa.Table) -> None:
        """Every record is written or set aside once: counted then, by the input it came from."""
        if table.num_rows:
            counted = pc.value_counts(pc.struct_field(table["source"], "uri"))
            self.by_input.update(dict(zip(counted.field(0).to_pylist(), counted.field(1).to_pylist(), strict=True)))
            if len(self.queued):
                ids = table["id"]
                self.queued_read.update(ids.filter(pc.is_in(ids, value_set=self.queued)).to_pylist())

    def add_stats(self, stage: str, stats: dict[str, int]) -> None:
        if stats:
            self.stage_stats.setdefault(stage, Counter()).update(stats)

    def stats(self) -> dict[str, dict[str, int]]:
        return {stage: dict(sorted(counter.items())) for stage, counter in self.stage_stats.items()}

    def counts(self) -> Counts:
        by_outcome: dict[str, dict[str, int]] = {}
        for (outcome, reason), count in sorted(self.reasons.items()):
            by_outcome.setdefault(outcome, {})[reason] = count
        totals = {o: sum(by_outcome.get(o, {}).values()) for o in OUTCOMES}
        return Counts(input=self.input, written=self.written, reasons=by_outcome, **totals)


class Executor(Protocol):
    """Runs the stages over the sources' batches and hands every record to the writer or the set-aside
    rows, counting each in ``tally``: this embedded one, or Ray Data's (``ray_executor``)."""

    def run(
        self,
        sources: list[Source],
        stages: list[AnyStage],
        writer: DatasetWriter,
        tally: Tally,
        on_input: Callable[[int], None] = ...,
    ) -> None: ...


class LocalExecutor:
    """Streams batches through the stages on this machine, one batch at a time."""

    def __init__(self, spill_dir: str | None = None) -> None:
        self.spill_dir = spill_dir

    def run(
        self,
        sources: list[Source],
        stages: list[AnyStage],
        writer: DatasetWriter,
        tally: Tally,
        on_input: Callable[[int], None] = lambda _: None,
    ) -> None:
        _remove_spills_of_ended_runs(self.spill_dir)
        with _spill_folder(self.spill_dir) as spill:
            stream = self._read(sources, writer, tally, on_input)
            pending: list[Stage] = []
            for index, stage in enumerate(stages):
                if isinstance(stage, GlobalStage) and not isinstance(stage, Stage):
                    stream = self._apply(stream, pending, writer, tally)
                    stream = self._barrier(stream, stage, writer, tally, Spill(spill / str(index)))
                    pending = []
                else:
                    pending.append(stage)
            # Closed however the loop ends, so the threads reading ahead stop before the spill folder goes: each
            # generator closes the one it reads (an error's traceback would otherwise hold them, running).
            stream = self._apply(stream, pending, writer, tally)
            with contextlib.closing(stream) as batches:
                for batch in batches:
                    writer.write(batch)
                    tally.written += batch.num_rows
                    tally.count_inputs(batch)

    @staticmethod
    def _read(
        sources: list[Source], writer: DatasetWriter, tally: Tally, on_input: Callable[[int], None]
    ) -> Iterator[pa.Table]:
        # Sources are read a batch or two ahead, on another thread, while the stages work.
        with contextlib.closing(read_ahead(batch for source in sources for batch in source.batches())) as batches:
            for batch in batches:
                tally.input += batch.input_records
                record_set_aside(batch.set_aside, writer, tally)
                on_input(batch.input_bytes)
                if batch.rows.num_rows:
                    yield batch.rows

    @staticmethod
    def _apply(
        stream: Iterator[pa.Table], stages: list[Stage], writer: DatasetWriter, tally: Tally
    ) -> Iterator[pa.Table]:
        # Closed however this ends (a stage's error, a stop seen between stages), so the threads reading ahead
        # stop while the error is handled.
        with contextlib.closing(stream):
            for batch in stream:
                for stage in stages:
                    raise_if_stopped()
                    result = stage(batch)
                    if result.kept.num_rows + result.set_aside.num_rows != batch.num_rows:
                        raise AccountingError(
                            f"stage {stage.name} took {batch.num_rows} records and returned "
                            f"{result.kept.num_rows} kept + {result.set_aside.num_rows} set aside"
                        )
                    record_set_aside(result.set_aside, writer, tally)
                    tally.add_stats(stage.name, result.stats)
                    if result.flags.num_rows:
                        tally.flags.append(result.flags)
                    batch = result.kept
                    if batch.num_rows == 0:
                        break
                if batch.num_rows:
                    yield batch

    @staticmethod
    def _barrier(
        stream: Iterator[pa.Table], stage: GlobalStage, writer: DatasetWriter, tally: Tally, spill: Spill
    ) -> Iterator[pa.Table]:
        signatures = []
        with spill, contextlib.closing(stream):
            for batch in stream:
                signatures.append(stage.signatures(batch))
                spill.write(batch)
        dropped = stage.resolve(signatures)
        record_set_aside(dropped, writer, tally)
        review_flags = getattr(stage, "review_flags", None)
        if review_flags is not None and dropped.num_rows and spill.rows:
            tally.flags.append(review_flags(dropped, signatures, spill.batches()))
        log.info("stage=%s spilled=%d set_aside=%d", stage.name, spill.rows, dropped.num_rows)
        if not spill.rows:
            return
        # One lookup over every spilled id (in spill order), not a set of the dropped ids built per batch;
        # the chunks are not joined into one array, which would copy every id at the run's peak.
        ids = pa.chunked_array([chunk.cast(pa.string()) for s in signatures for chunk in s["id"].chunks], pa.string())
        keep = pc.invert(pc.is_in(ids, value_set=dropped["id"].combine_chunks().cast(pa.string())))
        # A cross-run stage's kept rows carry their signatures on to the recorder (their own ids: not held twice).
        carry = getattr(stage, "with_signatures", None)
        recorded = pa.concat_tables([s.drop_columns(["source", "id"]) for s in signatures]) if carry else None
        del signatures, ids  # not needed while the spill streams on: memory stays flat
        # Read back and filtered on another thread, a batch or two ahead: the reading thread is done with
        # the input by now, and the stages after the barrier and the writer keep this one busy.
        yield from read_ahead(_kept_rows(spill, keep, carry, recorded))


def _kept_rows(
    spill: Spill,
    keep: pa.ChunkedArray,
    carry: Callable[[pa.Table, pa.Table], pa.Table] | None,
    recorded: pa.Table | None,
) -> Iterator[pa.Table]:
    """The spilled batches' rows that ``keep`` marks, with their signature rows when ``carry`` takes them."""
    offset = 0
    for batch in spill.batches():
        mask = keep.slice(offset, batch.num_rows)
        # A batch that keeps every row goes on as read: a filter copies every column even then (0.14 CPU s
        # per 1M records of the bench's input), and most batches of a run with few repeats keep them all.
        every = bool(pc.all(mask, skip_nulls=False).as_py())
        kept = batch if every else batch.filter(mask)
        if carry is not None and recorded is not None:
            rows = recorded.slice(offset, batch.num_rows)
            kept = carry(kept, rows if every else rows.filter(mask))
        offset += batch.num_rows
        if kept.num_rows:
            yield kept


SPILL_PREFIX = "curation-spill-"
_SPILL_LOCK = "lock"


@contextlib.contextmanager
def _spill_folder(parent: str | None) -> Iterator[Path]:
    """A new spill folder (a random name), with a lock file this run holds locked (``flock``) while it
    uses the folder. The kernel lets the lock go when the process ends, however it ends (SIGKILL, the OOM
    killer): a later run removes a folder whose lock it can take. Names alone cannot tell that: another
    container sharing the temp volume and the host name runs its own pids."""
    folder = Path(tempfile.mkdtemp(prefix=SPILL_PREFIX, dir=parent))
    handle, taking = tempfile.mkstemp(prefix=".locking-", dir=folder)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # a volume without locks: no lock file, so no other run ever removes the folder
            log.warning("the spill folder %s cannot be locked: a run killed while using it leaves it", folder)
        else:
            # In place only once locked: a run looking meanwhile finds no lock file and leaves the folder.
            os.rename(taking, folder / _SPILL_LOCK)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # while still locked: no other run removes it at once
        os.close(handle)


def _remove_spills_of_ended_runs(folder: str | None) -> None:
    """Remove the spill folders that runs killed before they could (SIGKILL, the OOM killer) left: each
    holds a copy of that run's input, and the next kill would add another. A folder is a killed run's
    when its lock can be taken (``_spill_folder``); one an earlier release named by host and pid, when
    that pid on this host is not running."""
    legacy = f"{SPILL_PREFIX}{socket.gethostname()}-"
    for found in Path(folder or tempfile.gettempdir()).glob(f"{SPILL_PREFIX}*"):
        try:
            handle = os.open(found / _SPILL_LOCK, os.O_RDWR)  # writable: NFS locks a file open for reading never
        except FileNotFoundError:
            pid = found.name.removeprefix(legacy).split("-", 1)[0] if found.name.startswith(legacy) else ""
            if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
                shutil.rmtree(found, ignore_errors=True)
            continue
        except OSError:  # not a folder, or not ours to open
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: a live run's (or a volume without locks: nothing is known)
            continue
        else:
            shutil.rmtree(found, ignore_errors=True)
        finally:
            os.close(handle)


# Said where a spill file cannot be written for want of room: the spill folder, not the dest, is the one to free.
FULL_SPILL = "; the spill folder (TMPDIR, or the executor's spill_dir) has no room for it"


class Spill:
    """The batches before a barrier, in Arrow files under ``prefix``: a new file whenever a batch's
    schema differs from the one before (a column that is a number in one input and text in another),
    so every batch streams on as it came, not cast to the first batch's types."""

    def __init__(self, prefix: Path) -> None:
        self.prefix = prefix
        self.files: list[Path] = []
        self.rows = 0
        self._sink: pa.ipc.RecordBatchStreamWriter | None = None
        self._schema: pa.Schema | None = None

    def write(self, batch: pa.Table) -> None:
        if self._sink is None or batch.schema != self._schema:
            self.close()
            self.files.append(self.prefix.with_name(f"{self.prefix.name}-{len(self.files)}.arrow"))
            # The stream format, not the file format: a dictionary column (a category from Parquet) may hold
            # other values in each batch, and an Arrow IPC file takes one dictionary per column for good.
            with self._writing():
                self._sink, self._schema = pa.ipc.new_stream(str(self.files[-1]), batch.schema), batch.schema
        with self._writing():
            self._sink.write_table(batch)
        self.rows += batch.num_rows

    def close(self) -> None:
        if self._sink is not None:
            sink, self._sink = self._sink, None  # not closed twice: ``__exit__`` closes after a failed write too
            with self._writing():
                sink.close()

    def _writing(self) -> contextlib.AbstractContextManager[None]:
        return writing(str(self.files[-1]), FULL_SPILL)

    def __enter__(self) -> Spill:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def batches(self) -> Iterator[pa.Table]:
        """The spilled batches, in order. Read, not memory-mapped: mapped pages stay resident as the
        file is read, so the run's memory would grow with its input."""
        for path in self.files:
            with pa.OSFile(str(path)) as source:
                for batch in pa.ipc.open_stream(source):
                    yield pa.Table.from_batches([batch])


def reads_again(connector: str | None, stage: str = "", full_refresh: bool = False) -> str:
    """What reads again a record set aside as ``unreadable`` (for now: a file the reader could not open, a VQA row's
    image a stage may not read). Of a run that publishes, by its source's ``connector`` and the ``stage``: the next
    run, for a file the reader marked ``UNREAD`` or a files source's row (``Tally.unread_inputs``); for another
    source's row only --full-refresh (a SQL cursor moved past it, a Hugging Face data file taken). Of a run that
    fails having taken nothing (``connector`` None): the next run, but after a ``full_refresh`` of a dataset with
    versions the next with --full-refresh (a plain one reads on from their watermarks)."""
    if connector is None:
        return "the next run with --full-refresh" if full_refresh else "the next run"
    return "the next run" if connector == FILES or stage == "read" else "--full-refresh"


def record_set_aside(table: pa.Table, writer: DatasetWriter, tally: Tally) -> None:
    if table.num_rows == 0:
        return
    is_unreadable = pc.equal(table["reason"], "unreadable")
    # Each says what reads it again, but for the images connector's row naming what its listing did not find (a
    # folder): the row's fault, which no run reads again.
    not_listed = pc.and_(_connector_is(table, IMAGES), pc.fill_null(pc.ends_with(table["detail"], NOT_LISTED), False))
    for_now = pc.and_(is_unreadable, pc.invert(pc.and_(pc.equal(table["stage"], "read"), not_listed)))
    if pc.any(for_now).as_py():
        table = _said_what_reads_again(table, for_now, tally)
    published = writer.write_set_aside(table)
    tally.count_inputs(table)
    by_review = table.filter(pc.equal(table["stage"], ReviewDecisions.name))
    copies = by_review.filter(pc.is_valid(by_review["duplicate_of"]))
    tally.rejected_read.update(by_review.filter(pc.is_null(by_review["duplicate_of"]))["id"].to_pylist())
    if copies.num_rows:
        uris = pc.struct_field(copies["source"], "uri").to_pylist()
        tally.rejected_copies.update(
            zip(copies["duplicate_of"].to_pylist(), copies["id"].to_pylist(), uris, strict=True)
        )
    tally.flags.append(quarantine_flags(table, published if writer.scrub else None))
    stages = pc.value_counts(table["stage"])
    tally.by_stage.update(dict(zip(stages.field(0).to_pylist(), stages.field(1).to_pylist(), strict=True)))
    tally.template_errors.add(table)
    lacking = table.filter(pc.equal(table["reason"], "missing_column"))["source"]
    tally.lacking_column.update(
        zip(pc.struct_field(lacking, "connector").to_pylist(), pc.struct_field(lacking, "uri").to_pylist(), strict=True)
    )
    # A files source's alone: another reads its rows again only on --full-refresh (a SQL cursor moved past them).
    unreadable = table.filter(pc.and_(is_unreadable, pc.not_equal(table["stage"], "read")))
    unread = unreadable.filter(_connector_is(unreadable, FILES))
    tally.unread_once += unreadable.num_rows - unread.num_rows
    for uri, record in zip(pc.struct_field(unread["source"], "uri").to_pylist(), unread["id"].to_pylist(), strict=True):
        tally.unread_inputs[uri].add(record)
    counted = table.group_by(["outcome", "reason"], use_threads=False).aggregate([([], "count_all")])
    for outcome, reason, count in zip(
        *(counted[c].to_pylist() for c in ("outcome", "reason", "count_all")), strict=True
    ):
        tally.reasons[(outcome, reason)] += count
        if (outcome, reason) not in tally.examples:
            first = pc.and_(pc.equal(table["outcome"], outcome), pc.equal(table["reason"], reason))
            tally.examples[(outcome, reason)] = SetAsideExample.of(table, pc.index(first, True).as_py())


def _said_what_reads_again(table: pa.Table, for_now: pa.Array, tally: Tally) -> pa.Table:
    """``table`` with what reads each ``for_now`` row again (``reads_again``) at the end of its detail, as the run
    publishes it; the first such detail kept as it was for a run that fails having taken nothing."""
    if tally.unread_example is None:
        tally.unread_example = SetAsideExample.of(table, pc.index(for_now, True).as_py())
    by = pa.table({"connector": pc.struct_field(table["source"], "connector"), "stage": table["stage"]})
    details = table["detail"]
    pairs = by.filter(for_now).group_by(["connector", "stage"], use_threads=False).aggregate([])
    for connector, stage in zip(pairs["connector"].to_pylist(), pairs["stage"].to_pylist(), strict=True):
        said = pc.binary_join_element_wise(details, f"; {reads_again(connector, stage)} reads it again", "")
        these = pc.and_(for_now, pc.and_(pc.equal(by["connector"], connector), pc.equal(by["stage"], stage)))
        details = pc.if_else(these, said, details)
    return table.set_column(table.column_names.index("detail"), "detail", details)


def _connector_is(table: pa.Table, connector: str) -> pa.ChunkedArray:
    return pc.equal(pc.struct_field(table["source"], "connector"), connector)


def quarantine_flags(set_aside: pa.Table, redacted: pa.Table | None = None) -> pa.Table:
    """Every quarantined record goes to the review queue with its reason and raw input, and, when the
    recipe redacts PII, the same rows as published (``redacted``, in the same order): the review
    page shows those to roles that do not see PII."""
    quarantined = pc.equal(set_aside["outcome"], "quarantined")
    rows = set_aside.filter(quarantined)
    columns = [rows[name].to_pylist() for name in ("reason", "detail", "record")]
    if redacted is None:
        payload = [json.dumps({"reason": r, "detail": d, "record": raw}) for r, d, raw in zip(*columns, strict=True)]
    else:
        published = redacted.filter(quarantined)
        columns += [published[name].to_pylist() for name in ("detail", "record")]
        payload = [
            json.dumps({"reason": r, "detail": d, "record": raw, "redacted_detail": rd, "redacted_record": rr})
            for r, d, raw, rd, rr in zip(*columns, strict=True)
        ]
    return pa.table(
        {
            "id": rows["id"],
            "source": rows["source"],
            "stage": rows["stage"],
            "kind": pa.array(["quarantined"] * rows.num_rows, pa.string()),
            "detail": rows["reason"],
            "payload": pa.array(payload, pa.string()),
        },
        schema=FLAG_SCHEMA,
    )
