"""Incremental state: per dataset and source, what earlier runs have taken; and the run lock.

A watermark is one value per item of a source: a file's fingerprint (S3 ETag, or size and mtime
with the hash of its bytes) keyed by its URI, or the highest value of a SQL cursor column. Sources
read the committed watermarks and stage new ones while they read; the pipeline commits them only
after the version is published, so a run that fails leaves the next run to take the same input again.

The lock is one row per dataset: a second run of the same recipe meets the row and stops with a
message naming the run that holds it, before it reads or writes anything. The holder renews the row
while it runs; a lock not renewed for a lease (its process killed on a host this one cannot see, an
OOM-killed pod) is taken over, and a run that finds its lock taken publishes nothing.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from datetime import time as day_time
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
import xxhash
from pydantic import BaseModel

from connectors.base import SourceBatch
from connectors.batches import id_chunks
from connectors.storage import (
    FileEntry,
    ReadDigest,
    StorageError,
    Unreadable,
    filesystem,
    list_files,
    pattern_hint,
    readable,
)
from schemas.manifest import InputFile
from schemas.records import record_ids, set_aside_rows, source_array

metadata = sa.MetaData()

watermarks = sa.Table(
    "watermarks",
    metadata,
    sa.Column("dataset", sa.String(200), primary_key=True),
    sa.Column("source", sa.String(64), primary_key=True),  # hash of the source's settings
    sa.Column("item", sa.String(2048), primary_key=True),  # a file URI, or "cursor"
    sa.Column("value", sa.Text, nullable=False),  # JSON
    sa.Column("run_id", sa.String(32)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

run_locks = sa.Table(
    "run_locks",
    metadata,
    sa.Column("dataset", sa.String(200), primary_key=True),
    sa.Column("run_id", sa.String(32), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
    # Renewed while the run goes on; empty in a lock taken by a release that did not renew (never expires).
    sa.Column("renewed_at", sa.DateTime(timezone=True)),
)

log = logging.getLogger(__name__)

LEASE_SETTING = "CURATION_LOCK_LEASE"
DEFAULT_LEASE_SECONDS = 900.0
MIN_LEASE_SECONDS = 0.5

# An item's watermark when it was listed but could not be read (an image it may not read, a share away):
# no fingerprint equals it, so the next run reads it again, changed or not; it was never published.
UNREAD = "unread"

# The watermarks' ``source`` of the inputs the next run reads again, whichever source holds them
# (``Watermarks.read_next_run``): no source's key (32 hex digits) is this.
_READ_AGAIN = "read-again"


@dataclass(frozen=True)
class HashedWhenRead:
    """The watermark staged at listing for a file new to its source, whose reader hashes its bytes as it
    reads them (``ListedFiles.read_digest``) and stages the value then: hashed now, each new byte would
    be read twice (on a share, sent twice). A value still staged so at commit is hashed then."""

    entry: FileEntry

    def value(self) -> str | dict[str, str]:
        return file_value(self.entry)


def create_tables(engine: sa.Engine) -> None:
    """Create the watermark and lock tables if missing; two first runs at once may race to do it."""
    for attempt in range(5):
        try:
            metadata.create_all(engine)  # checks first: a retry creates only what is still missing
            add_missing_columns(engine, run_locks)  # renewed_at
            return
        except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError):
            if attempt == 4:
                raise
            time.sleep(0.05 * (attempt + 1))


class RunLocked(RuntimeError):
    """Another run of the same dataset holds the lock; this one did nothing."""


class LockLost(RuntimeError):
    """This run's lock was taken over (it was not renewed for a lease): the run must publish nothing."""


def lock_lease() -> float:
    """Seconds a lock stays held without renewal: ``CURATION_LOCK_LEASE``, 15 minutes by default."""
    raw = os.environ.get(LEASE_SETTING, "")
    try:
        lease = float(raw) if raw.strip() else DEFAULT_LEASE_SECONDS
    except ValueError:
        lease = 0.0
    if not MIN_LEASE_SECONDS <= lease < float("inf"):  # shorter, renewals would keep the store busy
        raise ValueError(
            f"{LEASE_SETTING}={raw!r}: expected a number of seconds of at least {MIN_LEASE_SECONDS}, e.g. 900"
        )
    return lease


def has_read_before(engine: sa.Engine, dataset: str) -> bool:
    """Whether a published run of ``dataset`` recorded what it read."""
    create_tables(engine)
    with engine.connect() as db:
        return (
            db.execute(sa.select(watermarks.c.item).where(watermarks.c.dataset == dataset).limit(1)).first() is not None
        )


# Query parameters of a database URL that hold a secret: libpq takes the password as ``?password=`` (and
# ``sslpassword``), other dialects a token or secret key. Masked as the URL's own password is.
_SECRET_PARAMETER = re.compile(r"pass|pwd|secret|token", re.IGNORECASE)


def safe_url(url: str) -> str:
    """The URL with its password, and any query parameter holding a secret (``?password=``), masked: fit for
    logs, manifests and record sources."""
    return _masked(sa.engine.make_url(url))


def _masked(parsed: sa.engine.URL) -> str:
    secrets = {name: "***" for name in parsed.query if _SECRET_PARAMETER.search(name)}
    rendered = parsed.update_query_dict(secrets).render_as_string(hide_password=True)
    return rendered.replace("=%2A%2A%2A", "=***") if secrets else rendered


def source_key(config: BaseModel) -> str:
    """A stable key for a source's settings: change what it reads or how, and it starts afresh. The
    password in a database URL is no such setting: rotated, the source reads on from its watermark."""
    return source_keys(config)[0]


def source_keys(config: BaseModel) -> list[str]:
    """The source's key, then the key a state store from before passwords were left out holds its
    watermarks under (the same where its URL has no password)."""
    url = getattr(config, "url", None)
    keys = [_settings_key(config)]
    if isinstance(url, str):
        try:
            parsed = sa.engine.make_url(url)
        except (sa.exc.ArgumentError, ValueError):
            return keys
        masked = _masked(parsed)
        if masked != parsed.render_as_string(hide_password=False):
            # A secret in the URL's query (``?password=``) was in the key, and in its records' ids and sources,
            # until it was masked too: such a source starts afresh, its records read again under the new ids.
            legacy = keys if masked == parsed.render_as_string(hide_password=True) else []
            keys = [_settings_key(config.model_copy(update={"url": masked})), *legacy]
    return keys


def _settings_key(config: BaseModel) -> str:
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:32]


class SourceWatermark:
    """What one source took in earlier runs (committed) and what this run has taken (pending)."""

    def __init__(
        self, committed: dict[str, Any], read_again: set[str] | None = None, retry: dict[str, set[str]] | None = None
    ) -> None:
        self.committed = committed
        # New file -> the file taken before whose bytes it holds (renamed, moved or copied): not read.
        self.same_bytes: dict[str, str] = {}
        # A link in the source's folder -> where it leads, out of the folder: not read (``list_files``).
        self.links_out: dict[str, str] = {}
        # A path through a link in the source's folder -> the path the file it leads to is read under: not
        # read twice (``list_files``).
        self.links_repeated: dict[str, str] = {}
        # Inputs taken before that this run reads again though unchanged (review decisions that only
        # a record read again can take: see curation.review.decisions.inputs_to_read_again).
        self.read_again = read_again if read_again is not None else set()
        # Inputs taken before, unchanged since, holding records an earlier run could not take (a VQA row's image
        # it could not read for now: ``Watermarks.read_next_run``) -> their ids: only those rows are read again.
        self.retry = retry if retry is not None else {}
        self.pending: dict[str, Any] = {}
        # Whether this run reads again something an earlier run took (a changed file, a table read
        # whole): records published before can then be written again, and replace their carried copy.
        self.reread = False
        # Inputs read whole again (a changed file, a table without a cursor): their records published
        # before are replaced by what the run reads from them now, so an edited or removed line goes.
        self.replaced: set[str] = set()
        # Ids of published records from inputs in ``replaced`` that stay as published all the same (known
        # before the run reads: an images sidecar's unchanged row whose image was taken and moved away, a VQA row
        # of a files, SQL or Hugging Face source whose image cannot be opened now: ``keep_archived``).
        self.kept: set[str] = set()
        # URI -> (fingerprint, xxh3) of each local file this run hashed: a file compared and then staged,
        # or listed again at planning, is not read again for it (``file_digest``).
        self.digests: dict[str, tuple[str, str]] = {}
        # Item -> how many inputs this run staged ``UNREAD`` under it: an images sidecar's identical rows
        # share one item, and each is an input counted (quarantined as unreadable) in the manifest.
        self.unread_inputs: dict[str, int] = {}
        # Items whose watermark goes at commit: no longer part of the source (a data file a Hugging Face
        # dataset's state.json no longer names), so one of that name later is new.
        self.forgotten: set[str] = set()

    @property
    def read_before(self) -> bool:
        """Whether a version read this source: nothing committed under its key (its path and settings), it is new to
        the dataset (added to the recipe, or its settings changed)."""
        return bool(self.committed)

    def get(self, item: str) -> Any:
        return self.committed.get(item)

    def less_kept(self, batch: SourceBatch) -> SourceBatch:
        """``batch`` less the rows whose published records stay as they were though their input is read again
        (``kept``): carried, not read."""
        if not self.kept or not batch.rows.num_rows:
            return batch
        kept = pa.array(list(self.kept), pa.string())  # a look-up set: no order needed
        return dataclasses.replace(batch, rows=batch.rows.filter(pc.invert(pc.is_in(batch.rows["id"], value_set=kept))))

    def set(self, item: str, value: Any) -> None:
        if value == UNREAD:
            self.unread_inputs[item] = self.unread_inputs.get(item, 0) + 1
        self.pending[item] = value

    def forget(self, item: str) -> None:
        self.pending.pop(item, None)
        self.forgotten.add(item)

    def is_new(self, item: str, value: Any) -> bool:
        if item not in self.committed:
            return True
        if self.committed[item] != value:
            self.reread = True
            return True
        return False


class Watermarks:
    """The watermarks of one dataset, read at the start of a run and committed after it publishes."""

    def __init__(
        self,
        engine: sa.Engine,
        dataset: str,
        full_refresh: bool = False,
        read_again: set[str] | None = None,
        only_read: bool = False,
    ) -> None:
        """``only_read``: the store is left as it is (``curation check`` changes nothing); one whose tables are not
        made yet holds no watermark, as for a full refresh."""
        if only_read:
            full_refresh = full_refresh or not sa.inspect(engine).has_table(watermarks.name)
        else:
            create_tables(engine)
        self.engine, self.dataset, self.full_refresh = engine, dataset, full_refresh
        self.read_again = set(read_again or ())  # shared with each source's
        self.sources: dict[str, SourceWatermark] = {}
        # Inputs an earlier run read, but not all their records (a VQA row's image it could not read for
        # now: ``read_next_run``) -> the ids of those records: this run reads them again, changed or not (a
        # files source: ``SourceWatermark.retry``).
        self.retry: dict[str, set[str]] = {}
        self.pending_unread: dict[str, list[str]] = {}
        if not full_refresh:
            with engine.connect() as db:
                rows = db.execute(
                    sa.select(watermarks.c.item, watermarks.c.value).where(
                        watermarks.c.dataset == dataset, watermarks.c.source == _READ_AGAIN
                    )
                )
                for item, value in rows:
                    ids = json.loads(value)
                    if isinstance(ids, list):
                        self.retry[item] = set(ids)
                    else:  # a count, as the release before kept it: the input is read whole again
                        self.read_again.add(item)

    def for_source(self, config: BaseModel) -> SourceWatermark:
        key, *earlier = source_keys(config)
        if key not in self.sources:
            committed: dict[str, Any] = {}
            if not self.full_refresh:
                with self.engine.connect() as db:
                    for stored in (key, *earlier):  # committed under its own key; else under the earlier one
                        rows = db.execute(
                            sa.select(watermarks.c.item, watermarks.c.value).where(
                                watermarks.c.dataset == self.dataset, watermarks.c.source == stored
                            )
                        )
                        committed = {item: json.loads(value) for item, value in rows}
                        if committed:
                            break
            self.sources[key] = SourceWatermark(committed, self.read_again, self.retry)
        return self.sources[key]

    def had_previous(self) -> bool:
        """Whether any source of this run took only what was new since an earlier run."""
        return any(source.committed for source in self.sources.values())

    def reread(self) -> bool:
        """Whether any source read again something an earlier run took."""
        return any(source.reread for source in self.sources.values())

    def read_next_run(self, unread: dict[str, set[str]]) -> None:
        """Have the next run read these records again: this run read their inputs (URIs, of a files source),
        but could not take records ``unread[uri]`` (ids: an image a VQA row names it could not read for now).
        Unchanged, an input gives the next run only those (``SourceWatermark.retry``); its other records stay
        as published. Changed, it is read whole, as ever."""
        self.pending_unread = {uri: sorted(ids) for uri, ids in unread.items()}

    def unread(self) -> int:
        """How many inputs this run could not read (``UNREAD``), whatever earlier runs made of them."""
        return sum(map(len, self.pending_unread.values())) + sum(
            source.unread_inputs.get(item, 1)
            for source in self.sources.values()
            for item, value in source.pending.items()
            if value == UNREAD
        )

    def still_unread(self) -> int:
        """How many inputs of items an earlier run could not read (``UNREAD``) this run could not read either."""
        again = sum(len(self.retry.get(uri, set()).intersection(ids)) for uri, ids in self.pending_unread.items())
        return again + sum(
            source.unread_inputs.get(item, 1)
            for source in self.sources.values()
            for item, value in source.pending.items()
            if value == UNREAD and source.committed.get(item) == UNREAD
        )

    def same_bytes(self) -> dict[str, str]:
        """New file -> the file an earlier run took whose bytes it holds, which this run does not read."""
        return {uri: taken for source in self.sources.values() for uri, taken in source.same_bytes.items()}

    def links_out(self) -> dict[str, str]:
        """A link in a source's folder -> where it leads, out of the folder, which this run does not read."""
        return {link: target for source in self.sources.values() for link, target in source.links_out.items()}

    def links_repeated(self) -> dict[str, str]:
        """A path through a link in a source's folder -> the path its file is read under, not read again."""
        return {path: at for source in self.sources.values() for path, at in source.links_repeated.items()}

    def replaced(self) -> set[str]:
        """The inputs (URIs) this run reads whole again: what they hold now replaces what they held."""
        return {uri for source in self.sources.values() for uri in source.replaced}

    def kept(self) -> set[str]:
        """Ids of records of the inputs in ``replaced`` that are kept as published (``SourceWatermark.kept``)."""
        return {record for source in self.sources.values() for record in source.kept}

    def commit(self, run_id: str, confirm: Callable[[sa.Connection], None] | None = None) -> None:
        """Record what this run took, in one transaction; a full refresh forgets everything before.
        ``confirm(db)`` first, in that transaction: it raises to record nothing (``HeldLock.confirm_within``)."""
        now = datetime.now(UTC)
        # A file its reader did not hash is hashed now, before the transaction: not with the store's write
        # lock held (all of a SQLite store) while a large file is read.
        for source in self.sources.values():
            source.pending.update(
                {item: value.value() for item, value in source.pending.items() if isinstance(value, HashedWhenRead)}
            )
        with begin_confirmed(self.engine, confirm) as db:

            def insert(source: str, item: str, value: Any) -> None:
                row = {"dataset": self.dataset, "source": source, "item": item, "run_id": run_id, "updated_at": now}
                db.execute(watermarks.insert().values(value=json.dumps(value), **row))

            if self.full_refresh:
                db.execute(watermarks.delete().where(watermarks.c.dataset == self.dataset))
            for key, source in self.sources.items():
                of_source = (watermarks.c.dataset == self.dataset) & (watermarks.c.source == key)
                for chunk in id_chunks(source.forgotten):
                    db.execute(watermarks.delete().where(of_source & watermarks.c.item.in_(chunk)))
                for item, value in source.pending.items():
                    db.execute(watermarks.delete().where(of_source & (watermarks.c.item == item)))
                    insert(key, item, value)
            marks = (watermarks.c.dataset == self.dataset) & (watermarks.c.source == _READ_AGAIN)
            db.execute(watermarks.delete().where(marks))  # read again by this run: a mark each still unread
            for uri, ids in self.pending_unread.items():
                insert(_READ_AGAIN, uri, ids)


# --- the run lock ----------------------------------------------------------------------------------


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)  # SQLite gives it back naive


def _started_after(pid: int, moment: datetime) -> bool:
    """Whether process ``pid`` started after ``moment``, so it cannot be the run that took a lock then
    (pids are reused: in a container every run can be pid 1). False where ``/proc`` cannot tell."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        boot = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return False
    return boot + ticks / os.sysconf("SC_CLK_TCK") > _aware(moment).timestamp() + 1  # btime is in whole seconds


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def add_missing_columns(engine: sa.Engine, table: sa.Table) -> set[str]:
    """Give ``table``, as an earlier release made it in this store, the nullable columns added since;
    returns their names. Two processes adding one at once: the one that fails finds it there."""
    have = {column["name"] for column in sa.inspect(engine).get_columns(table.name)}
    missing = [column for column in table.columns if column.name not in have]
    for column in missing:
        kind = column.type.compile(dialect=engine.dialect)
        try:
            with engine.begin() as db:
                db.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))
        except sa.exc.SQLAlchemyError:
            if column.name not in {c["name"] for c in sa.inspect(engine).get_columns(table.name)}:
                raise
    return {column.name for column in missing}


class HeldLock:
    """The lock a run holds: renewed on a thread every sixth of the lease, and confirmed before the
    run makes its version visible."""

    def __init__(self, engine: sa.Engine, dataset: str, run_id: str, lease: float) -> None:
        self.engine, self.dataset, self.run_id = engine, dataset, run_id
        self.lost = False
        self._stop = threading.Event()
        self._renewing = threading.Thread(target=self._renew_until_stopped, args=(lease / 6,), daemon=True)
        self._renewing.name = f"run-lock-{run_id}"

    def renew(self) -> bool:
        """Mark the lock renewed now; False if it is no longer this run's."""
        with self.engine.begin() as db:
            return self._renew_in(db)

    def _renew_in(self, db: sa.Connection) -> bool:
        renewed = db.execute(
            run_locks.update()
            .where((run_locks.c.dataset == self.dataset) & (run_locks.c.run_id == self.run_id))
            .values(renewed_at=_store_now(db))
        )
        self.lost = self.lost or renewed.rowcount == 0
        return not self.lost

    def confirm_within(self, db: sa.Connection) -> None:
        """Raise ``LockLost`` unless the lock is still this run's, within the transaction ``db``: the row it
        renews stays this run's (written, so no other run takes it over) until that transaction ends."""
        if not self._renew_in(db):
            raise LockLost(
                f"dataset {self.dataset!r}: this run's lock was taken over by another run as it published (it was "
                f"not renewed for longer than {LEASE_SETTING} allows), so the state store did not record it"
            )

    def confirm(self) -> None:
        """Raise ``LockLost`` unless the lock is still this run's (checked against the store, now)."""
        if not self.renew():
            raise LockLost(
                f"dataset {self.dataset!r}: this run's lock was taken over by another run (it was not renewed "
                f"for longer than {LEASE_SETTING} allows), so this run published nothing"
            )

    def _renew_until_stopped(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                if not self.renew():
                    log.warning("dataset %r: the run lock was taken over by another run", self.dataset)
                    return
            except sa.exc.SQLAlchemyError:
                continue  # the store busy or away for a moment: the next beat tries again, confirm() decides

    def __enter__(self) -> HeldLock:
        self._renewing.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._renewing.join()


def _store_now(db: sa.Connection) -> datetime:
    """The time by the state store's clock where it has one of its own (PostgreSQL), so that runs on
    hosts whose clocks disagree renew and judge a lease by one clock; else this host's (SQLite is a file
    on this host, or on a share whose hosts run their own clocks)."""
    if db.dialect.name == "postgresql":
        return _aware(db.execute(sa.select(sa.func.clock_timestamp())).scalar_one())
    return datetime.now(UTC)


def _expired(holder: sa.RowMapping, lease: float, now: datetime) -> bool:
    renewed = holder["renewed_at"]
    return renewed is not None and (now - _aware(renewed)).total_seconds() > lease


def _how_it_ends(holder: sa.RowMapping, lease: float) -> str:
    """What ends a lock that stops a run, should its holder have been killed (on another host, where this
    run cannot see whether its process lives)."""
    if holder["renewed_at"] is None:  # an earlier release's: never renewed, so never taken over
        dataset, run_id = (str(holder[name]).replace("'", "''") for name in ("dataset", "run_id"))  # SQL quoting
        return (
            "It was taken by an earlier release of curation, which does not renew its lock, so no run takes it "
            "over: once that run is no longer running, remove it from the state store: DELETE FROM run_locks "
            f"WHERE dataset = '{dataset}' AND run_id = '{run_id}'"
        )
    return (
        f"If that run was killed, its lock is taken over once it has not been renewed for {lease:g} seconds "
        f"({LEASE_SETTING}; last renewed {_aware(holder['renewed_at']).astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC)."
    )


@contextlib.contextmanager
def run_lock(engine: sa.Engine, dataset: str, run_id: str) -> Iterator[HeldLock]:
    """Hold the dataset's lock for the block; raise ``RunLocked`` if another run holds it.

    A lock is taken over when it was left by a process that died on this host, or was not renewed for
    a lease (``CURATION_LOCK_LEASE`` seconds): its holder was killed, on a host this one cannot see.
    A lock without a renewal time (taken by an earlier release) is respected until someone removes it
    (``DELETE FROM run_locks WHERE dataset = ...``).
    """
    lease = lock_lease()
    create_tables(engine)
    host, pid = socket.gethostname(), os.getpid()
    for attempt in range(2):
        try:
            with engine.begin() as db:
                # Taken by this host's clock: a later run on this host compares it with a process's start
                # (``_started_after``); renewed by the store's, which runs on every host read alike.
                db.execute(
                    run_locks.insert().values(
                        dataset=dataset,
                        run_id=run_id,
                        host=host,
                        pid=pid,
                        acquired_at=datetime.now(UTC),
                        renewed_at=_store_now(db),
                    )
                )
            break
        except sa.exc.IntegrityError:
            with engine.begin() as db:
                holder = db.execute(run_locks.select().where(run_locks.c.dataset == dataset)).mappings().first()
                if holder is None:
                    continue  # released between our insert and this look
                ended = not process_alive(holder["pid"]) or _started_after(holder["pid"], holder["acquired_at"])
                expired = _expired(holder, lease, _store_now(db))
                if attempt == 0 and ((holder["host"] == host and ended) or expired):
                    if holder["host"] != host:
                        log.warning(
                            "dataset %r: taking over the lock of run %s (pid %s on %s), not renewed since %s",
                            dataset,
                            holder["run_id"],
                            holder["pid"],
                            holder["host"],
                            f"{_aware(holder['renewed_at']):%Y-%m-%d %H:%M:%S}",
                        )
                    # Only the row as it was read: renewed since (its run woke, and renews it inside its
                    # watermarks commit), it is that run's still, and this run takes no lock.
                    db.execute(
                        run_locks.delete().where(
                            (run_locks.c.dataset == dataset)
                            & (run_locks.c.run_id == holder["run_id"])
                            & (run_locks.c.renewed_at == holder["renewed_at"])
                        )
                    )
                    continue
            raise RunLocked(
                f"dataset {dataset!r} is being curated by another run (run {holder['run_id']}, pid {holder['pid']} "
                f"on {holder['host']}, since {holder['acquired_at']:%Y-%m-%d %H:%M:%S}); this run did nothing. "
                f"Try again when it has finished. {_how_it_ends(holder, lease)}"
            ) from None
    else:
        raise RunLocked(f"dataset {dataset!r}: could not take the run lock; try again")
    try:
        with HeldLock(engine, dataset, run_id, lease) as held:
            yield held
    finally:
        with engine.begin() as db:
            db.execute(run_locks.delete().where((run_locks.c.dataset == dataset) & (run_locks.c.run_id == run_id)))


# --- file fingerprints -----------------------------------------------------------------------------


HASH_BLOCK_BYTES = 8 * 1024 * 1024


def file_fingerprints(entries: Iterable[FileEntry]) -> dict[str, str]:
    """URI -> fingerprint: the S3 ETag (a content hash, from the listing), or size and mtime."""
    return {entry.uri: fingerprint(entry) for entry in entries}


def fingerprint(entry: FileEntry) -> str:
    return entry.etag or f"{entry.size}:{entry.mtime}"


def content_hash(uri: str) -> str:
    """The xxh3 of a file's bytes as stored, read a block at a time."""
    digest = xxhash.xxh3_128()
    fs, path = filesystem(uri)
    with fs.open_input_stream(path, compression=None) as stream:  # its bytes: a .gz file is not unpacked
        while block := stream.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def file_digest(entry: FileEntry, known: dict[str, tuple[str, str]] | None = None) -> str:
    """The xxh3 of a local file's bytes, remembered in ``known`` (URI -> fingerprint, xxh3) while its
    fingerprint holds, so a run reads a file once for it however often it lists and compares it."""
    now = fingerprint(entry)
    if known is not None and entry.uri in known and known[entry.uri][0] == now:
        return known[entry.uri][1]
    digest = content_hash(entry.uri)
    if known is not None:
        known[entry.uri] = (now, digest)
    return digest


def file_value(
    entry: FileEntry, digest: str | None = None, known: dict[str, tuple[str, str]] | None = None
) -> str | dict[str, str]:
    """What a watermark keeps of a file a run takes: its fingerprint, and for a local file the hash of
    its bytes (``digest``, else ``file_digest``), by which ``kept_value`` tells a file restored or touched."""
    if entry.etag:
        return entry.etag
    try:
        return {"fingerprint": fingerprint(entry), "xxh3": digest or file_digest(entry, known)}
    except OSError:  # not readable now: its reader says so; the fingerprint alone tells a change later
        return fingerprint(entry)


# A file skipped for holding the bytes of a file taken before keeps that file's URI in its watermark's value
# (``same_as``): its lines were published under that file's name only, so once that file's records are
# replaced (it changed, or a Hugging Face dataset no longer names it) the skipped file is read. A watermark
# from a release before has no link: such a file is taken, never read.
_SAME_AS = "same_as"


def _held_bytes_of(value: Any) -> str | None:
    """The taken file whose bytes a file held when a run skipped it for them, from its watermark's value."""
    return value.get(_SAME_AS) if isinstance(value, dict) else None


def _linked(value: str | dict[str, str], taken: str) -> dict[str, str]:
    return {**(value if isinstance(value, dict) else {"fingerprint": value}), _SAME_AS: taken}


def _unlinked(value: Any) -> Any:
    if _held_bytes_of(value) is None:
        return value
    plain = {key: held for key, held in value.items() if key != _SAME_AS}
    return plain if "xxh3" in plain else plain["fingerprint"]  # an ETag (or an unhashed local file) is a string


def kept_value(before: Any, entry: FileEntry, known: dict[str, tuple[str, str]] | None = None) -> Any | None:
    """``before`` (a watermark's value for the file), as it is to be kept now, when the file holds
    what it held then; None when it changed. A local file whose mtime moved with its size unchanged
    (restored from a backup, copied without ``-p``, touched) is compared by its bytes' hash, where the
    watermark has one (``file_digest``, remembered in ``known``): files whose fingerprint did not move
    are never read."""
    now = fingerprint(entry)
    if (before["fingerprint"] if isinstance(before, dict) else before) == now:
        return before
    if entry.etag or not isinstance(before, dict) or not before["fingerprint"].startswith(f"{entry.size}:"):
        return None
    try:
        same = file_digest(entry, known) == before["xxh3"]
    except OSError:  # its reader meets the error and says so
        return None
    if not same:
        return None
    link = {_SAME_AS: before[_SAME_AS]} if _SAME_AS in before else {}  # a file skipped for its bytes keeps it
    return {"fingerprint": now, "xxh3": before["xxh3"], **link}


def new_files(
    entries: list[FileEntry],
    watermark: SourceWatermark | None,
    hashed_when_read: bool = False,
    partition_of: Callable[[str], Hashable] | None = None,
) -> list[FileEntry]:
    """The files that are new or changed since the committed watermark; stages their watermarks, and
    the new mtime of a file that holds what it held (so it is not read again for it). With
    ``hashed_when_read`` (the reader hashes what it reads: ``ListedFiles``), a file not hashed to be
    compared is staged ``HashedWhenRead``, not read for its hash now. ``partition_of`` (a URI -> what its
    path gives its rows: hive partition values) tells files holding the same bytes apart: one in another
    partition gives other records, so it is read."""
    if watermark is None:
        return entries
    partition_of = partition_of or _unpartitioned
    fresh, new = set(), []
    linked: list[tuple[FileEntry, Any]] = []  # taken before as holding another file's bytes, and still so
    as_before: set[str] = set()  # read again for a review decision, unchanged: what it gave stays as it was
    for entry in entries:
        if watermark.committed.get(entry.uri, UNREAD) == UNREAD:  # new, or listed and not read by an earlier run
            new.append(entry)
            fresh.add(entry.uri)
            continue
        before = watermark.committed[entry.uri]
        kept = kept_value(before, entry, watermark.digests)
        watermark.reread |= kept is None
        if kept is None or entry.uri in watermark.read_again:
            fresh.add(entry.uri)
            watermark.replaced.add(entry.uri)  # changed since an earlier run took it: read whole again
            if kept is not None:
                as_before.add(entry.uri)
                kept = _unlinked(kept)  # read now: from this run on its records are its own
        elif entry.uri in watermark.retry:  # unchanged: read for the records an earlier run could not take
            fresh.add(entry.uri)
        elif (held := _held_bytes_of(kept)) is not None:
            if partition_of(entry.uri) != partition_of(held):
                # Skipped by a release that compared bytes only: its rows' partition values were never published.
                fresh.add(entry.uri)
                kept = _unlinked(kept)
                log.info("%s: skipped before for the bytes of a file in another partition: read", entry.uri)
            else:
                linked.append((entry, kept))
        if kept != before:
            watermark.set(entry.uri, kept or _value_to_stage(entry, watermark, hashed_when_read))
    released = watermark.replaced - as_before
    promoted = _read_in_place_of(linked, watermark, released, fresh, {entry.uri for entry in entries})
    same = _same_bytes(new, watermark, promoted, as_before, partition_of)
    for entry in new:
        watermark.set(
            entry.uri,
            _linked(file_value(entry, known=watermark.digests), watermark.same_bytes[entry.uri])
            if entry.uri in same
            else _value_to_stage(entry, watermark, hashed_when_read),
        )
    return [entry for entry in entries if entry.uri in fresh and entry.uri not in same]


def _unpartitioned(uri: str) -> None:
    return None


def _read_in_place_of(
    linked: list[tuple[FileEntry, Any]],
    watermark: SourceWatermark,
    released: set[str],
    fresh: set[str],
    listed: set[str],
) -> dict[str, str]:
    """Read the files skipped for holding the bytes of a taken file whose records this run replaces
    (``released``: changed, or gone from a Hugging Face dataset): their lines were published under its name
    only. One file per taken file is read, as new; others holding the same bytes now repeat it. Returns
    taken file -> the file read in its place; a skipped file no longer listed loses its watermark, so one
    of its name later is compared as new."""
    promoted: dict[str, str] = {}
    for entry, kept in linked:
        taken = _held_bytes_of(kept)
        if taken not in released:
            continue
        first = promoted.setdefault(taken, entry.uri)
        if first == entry.uri:
            fresh.add(entry.uri)
            watermark.set(entry.uri, _unlinked(kept))
            log.info("%s: held the bytes of %s, whose records this run replaces: read", entry.uri, taken)
        else:
            watermark.same_bytes[entry.uri] = first
            watermark.set(entry.uri, _linked(_unlinked(kept), first))
    for uri, value in watermark.committed.items():
        if uri not in listed and _held_bytes_of(value) in released:
            watermark.forget(uri)
    return promoted


def _same_bytes(
    new: list[FileEntry],
    watermark: SourceWatermark,
    promoted: dict[str, str],
    as_before: set[str],
    partition_of: Callable[[str], Hashable],
) -> set[str]:
    """The files of ``new`` that hold the bytes of a file an earlier run took (renamed or moved within the
    source, or copied), noted in ``watermark.same_bytes``: their records were published under the name
    they were taken by (a record's id holds its input's URI), and read again under another they would be
    published twice. An S3 object is compared by its ETag; a local file by its size, then the xxh3 of its
    bytes, so only a file of the size of one taken is read for it. A taken file read again in this run
    (changed since; not one read again unchanged, ``as_before``) is compared with none: its records are
    replaced by what it holds now; but where a file holding what it held is read in its place
    (``promoted``), a new one holding that too repeats that file.
    A file skipped before for its bytes is no file to compare with: the file it repeats is. Only files of
    the same partition (``partition_of``) are compared: the same bytes in another are other records."""
    if not new or not watermark.committed:
        return set()
    # Bytes (an ETag, or a local file's size and xxh3) -> the taken files holding them, in the watermark's
    # order; a file's partition is found only where its bytes match (a source may have taken a hundred thousand).
    holders: dict[Hashable, list[str]] = {}
    sizes: set[int] = set()  # a local file of another size is not read to hash it
    for uri, value in watermark.committed.items():
        replaced = uri in watermark.replaced and uri not in as_before  # read again unchanged: gives what it gave
        if (replaced and uri not in promoted) or value == UNREAD or _held_bytes_of(value):
            continue
        uri = promoted.get(uri, uri)
        if isinstance(value, dict):
            size = int(value["fingerprint"].split(":", 1)[0])
            sizes.add(size)
            holders.setdefault((size, value["xxh3"]), []).append(uri)
        else:  # an ETag (or a local file's size and mtime, from a release that did not hash it: no ETag)
            holders.setdefault(value, []).append(uri)
    # Many taken files may share bytes (header-only CSVs, empty parts, the same daily file): each one's
    # partition is worked out once, on the first new file holding its bytes, not once per new file.
    first_in: dict[Hashable, dict[Hashable, str]] = {}  # bytes -> partition -> its first file
    same = set()
    for entry in new:
        if entry.etag:
            held: Hashable = entry.etag
        elif entry.size in sizes:
            try:
                held = (entry.size, file_digest(entry, watermark.digests))
            except OSError:  # its reader meets the error and says so
                continue
        else:
            continue
        holding = holders.get(held)
        if not holding:
            continue
        places = first_in.get(held)
        if places is None:
            places = first_in[held] = {}
            for uri in holding:  # the first in the watermark's order, as before
                places.setdefault(partition_of(uri), uri)
        taken = places.get(partition_of(entry.uri))
        if taken is not None:
            watermark.same_bytes[entry.uri] = taken
            same.add(entry.uri)
            log.info("%s: same bytes as %s, which an earlier run took: not read again", entry.uri, taken)
    return same


def _value_to_stage(entry: FileEntry, watermark: SourceWatermark, hashed_when_read: bool) -> Any:
    """What a file about to be read stages: its value (``file_value``) where that needs no reading (an
    ETag, a hash taken to compare it), else ``HashedWhenRead`` if its reader hashes it."""
    known = watermark.digests.get(entry.uri)
    if entry.etag or not hashed_when_read or (known is not None and known[0] == fingerprint(entry)):
        return file_value(entry, known=watermark.digests)
    return HashedWhenRead(entry)


@contextlib.contextmanager
def begin_confirmed(engine: sa.Engine, confirm: Callable[[sa.Connection], None] | None) -> Iterator[sa.Connection]:
    """A transaction on ``engine`` that first runs ``confirm(db)`` (``HeldLock.confirm_within``), which raises
    to record nothing once this run's lock is lost."""
    with engine.begin() as db:
        if confirm is not None:
            confirm(db)
        yield db


def less_kept(watermark: SourceWatermark | None, batch: SourceBatch) -> SourceBatch:
    """``SourceWatermark.less_kept`` of a source that may keep no watermark (``batch`` as it is then)."""
    return batch if watermark is None else watermark.less_kept(batch)


def read_digest(watermark: SourceWatermark | None, entry: FileEntry) -> ReadDigest | None:
    """What hashes ``entry``'s bytes as its reader reads them (``open_input``), where its watermark waits
    for that hash (``HashedWhenRead``); the reader hands it to ``taken`` once the file is read."""
    if watermark is not None and isinstance(watermark.pending.get(entry.uri), HashedWhenRead):
        return ReadDigest()
    return None


def taken(watermark: SourceWatermark | None, entry: FileEntry, digest: ReadDigest | None) -> None:
    """Stage the watermark of ``entry``, read whole, with the hash of the bytes read (``read_digest``) and
    the fingerprint the listing gave (a file appended meanwhile is read again by the next run)."""
    if watermark is not None and digest is not None and digest.value is not None:
        watermark.set(entry.uri, file_value(entry, digest.value))


class ListedFiles:
    """A source over the files under ``config.path``: listed once per run, only new or changed ones kept.

    Subclasses set ``suffixes`` (what to list) and ``nothing_found`` (the error when none match on a
    source's first run).
    """

    name: str  # the connector's, in a quarantined row's source
    suffixes: tuple[str, ...]
    bare_names: bool = False  # whether names without a suffix are listed too (see ``list_files``)
    nothing_found: str = "no input files match"
    config: Any
    watermark: SourceWatermark | None
    _listed: list[FileEntry] | None = None
    listed_uris: list[str]  # every file the path matches, new or not (set by ``entries``)

    def entries(self) -> list[FileEntry]:
        if self._listed is None:
            away: dict[str, str] = {}
            again: dict[str, str] = {}
            listed = list_files(
                self.config.path,
                suffixes=self.suffixes,
                name_unread=True,
                bare=self.bare_names,
                links_out=away,
                links_repeated=again,
            )
            if self.watermark is not None:
                self.watermark.links_out, self.watermark.links_repeated = away, again
            entries = readable(listed)
            # A source that gave files before may be empty now (inputs are moved away once taken): nothing
            # new. One that never did most likely names the wrong place.
            if not entries and not (self.watermark is not None and self.watermark.committed):
                raise StorageError(f"{self.config.path}: {self.nothing_found}{pattern_hint(self.config.path)}")
            self.listed_uris = [entry.uri for entry in entries]
            self._listed = new_files(entries, self.watermark, hashed_when_read=True, partition_of=self.partition_of)
        return self._listed

    def partition_of(self, uri: str) -> Hashable:
        """What a file's path gives its rows besides its bytes (``FilesSourceReader``: hive partition values)."""
        return None

    def read_digest(self, entry: FileEntry) -> ReadDigest | None:
        return read_digest(self.watermark, entry)

    def taken(self, entry: FileEntry, digest: ReadDigest | None) -> None:
        taken(self.watermark, entry, digest)

    def inputs(self) -> list[InputFile]:
        return [InputFile(uri=e.uri, size=e.size, mtime=e.mtime) for e in self.entries()]

    def unreadable(self, entry: FileEntry, error: Unreadable) -> SourceBatch:
        """A file that could not be read (``error``) before any of its records was passed on: one row
        quarantined as ``unreadable``, and its watermark ``UNREAD``, so the next run reads it again,
        changed or not, and the run goes on with the other files. ``error`` is raised where the file
        cannot be left to the next run: without a watermark (an images sidecar, whose rows keep their
        own), or read again after an earlier run took it (changed: the records it gave are replaced by
        what it holds now, which would be nothing; or for the rows an earlier run could not take, whose
        mark would go, and the file, then new, be read whole again: its records published twice)."""
        if self.watermark is None or entry.uri in self.watermark.replaced or entry.uri in self.watermark.retry:
            raise error
        self.watermark.set(entry.uri, UNREAD)
        set_aside = set_aside_rows(
            record_ids(entry.uri, [None], [b""]),
            source_array(self.name, entry.uri, [None]),
            stage="read",
            outcome="quarantined",
            reasons="unreadable",
            details=[f"{entry.uri}: cannot read ({error.why})"],  # the run says what reads it again
        )
        return SourceBatch(rows=pa.table({}), set_aside=set_aside, input_bytes=entry.size)

    def list_again(self) -> None:
        """Forget the listing: the next ``entries`` lists again (inputs added to ``read_again`` since)."""
        self._listed = None

    def limited_to(self, entries: list[FileEntry]) -> Any:
        """The same reader, settings and all, reading only ``entries`` (already listed: no listing again)."""
        part = copy.copy(self)
        part._listed = list(entries)
        return part


# --- typed cursor values ---------------------------------------------------------------------------


def encode_cursor(value: Any) -> dict[str, str] | None:
    """A cursor value as JSON that keeps its type, so it binds back as the same type."""
    if value is None:
        return None
    if isinstance(value, bool):
        return {"type": "bool", "value": str(value)}
    if isinstance(value, int):
        return {"type": "int", "value": str(value)}
    if isinstance(value, float):
        return {"type": "float", "value": repr(value)}
    if isinstance(value, Decimal):
        return {"type": "decimal", "value": str(value)}
    if isinstance(value, datetime):
        return {"type": "datetime", "value": value.isoformat()}
    if isinstance(value, date):
        return {"type": "date", "value": value.isoformat()}
    # Kept as text, a UUID (v7 grows with time) or time of day bound back as text: PostgreSQL has no `uuid >= text`,
    # and a table's UUID equalled no value read, so the rows at the watermark were read again every run.
    if isinstance(value, UUID):
        return {"type": "uuid", "value": str(value)}
    if isinstance(value, day_time):
        return {"type": "time", "value": value.isoformat()}
    return {"type": "str", "value": str(value)}


def decode_cursor(encoded: dict[str, str]) -> Any:
    kind, text = encoded["type"], encoded["value"]
    return {
        "bool": lambda t: t == "True",
        "int": int,
        "float": float,
        "decimal": Decimal,
        "datetime": datetime.fromisoformat,
        "date": date.fromisoformat,
        "uuid": UUID,
        "time": day_time.fromisoformat,
        "str": str,
    }[kind](text)
