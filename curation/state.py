"""The state store: what runs happened, and (as features land) watermarks, the cross-run dedup
index and review decisions. SQLAlchemy over a SQLite file by default, PostgreSQL by URL."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
import xxhash

from connectors.batches import batched
from connectors.state import add_missing_columns, begin_confirmed, watermarks
from schemas.config import plain_sqlite_url

if TYPE_CHECKING:
    from curation.review.decisions import DecisionMark

metadata = sa.MetaData()


def sqlite_file(url: str) -> Path | None:
    """The file a ``sqlite:///`` state URL names; None for an in-memory database or another server."""
    url = plain_sqlite_url(url)  # the driver named: the same file
    if not url.startswith("sqlite:///") or url.startswith("sqlite:///:memory:"):
        return None
    return Path(url.removeprefix("sqlite:///"))


class StateFolderError(sa.exc.SQLAlchemyError):
    """A SQLite state file's folder that does not exist and cannot be created, or cannot be written. A
    SQLAlchemy error so that it is said, as any store that cannot be reached is, as a state store error."""


def sqlite_folder_problem(url: str) -> str | None:
    """Why a SQLite state file that does not exist yet could not be created where ``url`` puts it (its
    folder, or the one it would be made in, refuses a new entry), without creating anything: ``curation
    check`` asks before a run would find out, which SQLite says only as `unable to open database file`."""
    path = sqlite_file(url)
    if path is None or path.exists():
        return None
    folder = path.parent.absolute()
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    if not existing.is_dir():
        return f"cannot create the folder {folder} for the SQLite file: {existing} is a file"
    try:  # an entry made and removed at once: the permissions, a read-only disk, /proc, as they are
        os.rmdir(tempfile.mkdtemp(prefix=".curation-state-", dir=existing))
    except OSError as error:
        said = "cannot write in the folder" if existing == folder else "cannot create the folder"
        return f"{said} {folder} for the SQLite file: {error.strerror or error}"
    return None


# The error of a run killed while publishing whose version a later run read everything again for, and
# recorded (``run_finished``): a run that wakes after that leaves it so (``run_publishing``).
READ_AGAIN = "killed while publishing; a later run read everything again for its version"


def _not_read_again() -> sa.ColumnElement[bool]:
    """A run's row unless a later run read everything again for its version (``READ_AGAIN``)."""
    return sa.or_(runs.c.error.is_(None), runs.c.error != READ_AGAIN)


def in_memory(url: str) -> bool:
    """Whether a state URL names an in-memory SQLite database (one per engine, seen by no other process)."""
    return plain_sqlite_url(url).startswith("sqlite:") and sqlite_file(url) is None


def state_engine(url: str) -> sa.Engine:
    """An engine on the state store. A SQLite file gets 64 KiB pages and write-ahead-log mode with normal sync:
    a commit then appends to the log instead of waiting for the disk (a run commits once per batch
    while it records signatures), readers such as the review page never block the run, and a power
    cut can lose only the last commits, never corrupt the file."""
    engine = sa.create_engine(url)
    if sqlite_file(url) is not None:

        @sa.event.listens_for(engine, "connect")
        def _write_ahead(connection: Any, _: Any) -> None:
            cursor = connection.cursor()
            # Large pages for a new file (an existing one keeps its own): the signature index stores
            # a blob per batch, which takes a chain of 4 KiB pages by default, about 7x slower.
            cursor.execute("PRAGMA page_size=65536")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    return engine


T = TypeVar("T")


def read_state(url: str, read: Callable[[sa.Engine], T], empty: T) -> T:
    """``read`` on the state store, or ``empty`` when its SQLite file does not exist yet: a command that only
    reads (``curation check``, a first run's review stage) creates no file, nor the folder it would be in. Not
    ``state_engine``: its settings would write the header of an empty file."""
    path = sqlite_file(url)
    if path is not None and not path.exists():
        return empty
    engine = sa.create_engine(url)
    try:
        return read(engine)
    finally:
        engine.dispose()


runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", sa.String(32), primary_key=True),
    sa.Column("dataset", sa.String(200), nullable=False, index=True),
    sa.Column("recipe_sha256", sa.String(64), nullable=False),
    # running, publishing (its version may be visible), published, failed, empty, killed
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("version", sa.Integer),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("counts", sa.Text),
    sa.Column("error", sa.Text),
    # The review decisions the run read (``DecisionMark``): decision ids and undo numbers up to these.
    sa.Column("decisions_through", sa.Integer),
    sa.Column("undos_through", sa.Integer),
    # Where the run publishes: the dataset's folder (``dataset_uri``); null in a store of an earlier release.
    sa.Column("published_at", sa.Text),
)


# The side of the split each group (``output.group_by``) went to, so a later run keeps it there. Keys are
# hashes: a group key can be a customer's name or e-mail address.
split_groups = sa.Table(
    "split_groups",
    metadata,
    sa.Column("dataset", sa.String(200), primary_key=True),
    sa.Column("group_hash", sa.String(32), primary_key=True),
    sa.Column("validation", sa.Boolean, nullable=False),
)
_IN_CLAUSE_KEYS = 5000  # SQLite allows 32,766 bound values per statement (999 before 3.32)


def _group_hash(key: str) -> str:
    return xxhash.xxh3_128_hexdigest(key.encode())


def _now() -> datetime:
    return datetime.now(UTC)


class StateStore:
    def __init__(self, url: str) -> None:
        if (problem := sqlite_folder_problem(url)) is not None:
            raise StateFolderError(problem)
        if (path := sqlite_file(url)) is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = state_engine(url)
        metadata.create_all(self.engine)
        add_missing_columns(self.engine, runs)  # decisions_through, undos_through, published_at

    def run_started(
        self,
        run_id: str,
        dataset: str,
        recipe_sha256: str,
        decisions_read: DecisionMark | None = None,
        published_at: str | None = None,
    ) -> None:
        """Record a run as running, with the review decisions it reads (``decisions_read``); called under
        the dataset's lock, so runs of it still marked running were killed (SIGKILL, a lost machine):
        they are marked so."""
        with self.engine.begin() as db:
            db.execute(
                runs.update()
                .where(runs.c.dataset == dataset, runs.c.status == "running")
                .values(status="killed", finished_at=_now(), error="found still running by a later run")
            )
            db.execute(
                runs.insert().values(
                    run_id=run_id,
                    dataset=dataset,
                    recipe_sha256=recipe_sha256,
                    status="running",
                    started_at=_now(),
                    decisions_through=decisions_read.decided if decisions_read else None,
                    undos_through=decisions_read.undone if decisions_read else None,
                    published_at=published_at,
                )
            )

    def run_publishing(self, run_id: str, version: int) -> None:
        """The run's version is about to become visible, or is and is not recorded: ``published`` follows
        once it is. Not a run a later one read everything again for (``READ_AGAIN``): that run recorded
        what this one's version holds, and the next run would read everything again for nothing."""
        with self.engine.begin() as db:
            db.execute(
                runs.update()
                .where(runs.c.run_id == run_id, _not_read_again())
                .values(status="publishing", version=version)
            )

    def unrecorded_runs(self, dataset: str, published: list[int]) -> dict[str, int]:
        """The runs of ``dataset`` (and the version of each) whose version became visible but that were
        killed before they recorded what they read (a run must then not trust the watermarks). They stay
        marked publishing until a run that read everything again publishes (``run_finished``): killed
        before that too, it leaves the next run to read everything again. So does one whose version is gone
        since (a rollback), once its run committed what it read: the watermarks say its input was read, and
        no version holds it. Runs killed before their version became visible are marked so."""
        with self.engine.begin() as db:
            rows = db.execute(
                sa.select(runs.c.run_id, runs.c.version).where(runs.c.dataset == dataset, runs.c.status == "publishing")
            ).all()
            committed = (
                set(
                    db.execute(
                        sa.select(watermarks.c.run_id)
                        .where(watermarks.c.dataset == dataset, watermarks.c.run_id.in_([row.run_id for row in rows]))
                        .distinct()
                    ).scalars()
                )
                if rows  # the usual: no run left publishing
                else set()
            )
            unrecorded = [row for row in rows if row.version in published or row.run_id in committed]
            db.execute(
                runs.update()
                .where(
                    runs.c.dataset == dataset,
                    runs.c.status == "publishing",
                    runs.c.run_id.not_in([row.run_id for row in unrecorded]),
                )
                .values(status="killed", finished_at=_now(), error="killed while publishing")
            )
        return {row.run_id: row.version for row in unrecorded}

    def run_finished(
        self,
        run_id: str,
        status: str,
        version: int | None = None,
        counts: dict[str, Any] | None = None,
        error: str | None = None,
        superseded: Iterable[str] = (),
        confirm: Callable[[sa.Connection], None] | None = None,
    ) -> None:
        """Record how the run ended. Published, it read everything again where the runs ``superseded``
        (``unrecorded_runs`` at its start) left a version unrecorded: they are marked killed. Not any other
        run marked publishing: one that took this run's lock over as it stalled may be publishing now.
        ``confirm(db)`` first, in that transaction: it raises to record nothing (``HeldLock.confirm_within``)."""
        with begin_confirmed(self.engine, confirm) as db:
            if status == "published" and (ids := list(superseded)):
                db.execute(
                    runs.update()
                    .where(runs.c.run_id.in_(ids), runs.c.status == "publishing")
                    .values(status="killed", finished_at=_now(), error=READ_AGAIN)
                )
            # Failed with its version visible, it stays publishing, unless a later run read everything again
            # for that version already (``run_publishing``).
            awake = _not_read_again() if status == "publishing" else sa.true()
            db.execute(
                runs.update()
                .where(runs.c.run_id == run_id, awake)
                .values(
                    status=status,
                    version=version,
                    finished_at=_now(),
                    counts=json.dumps(counts) if counts else None,
                    error=error,
                )
            )

    def ended_runs(self, dataset: str, run_ids: Iterable[str]) -> set[str]:
        """Those of ``run_ids`` that this store recorded as runs of ``dataset`` that are over: what they
        left in the dest (a staging folder, a claim on a version number) may go. Any other id is a run
        going on, or one of another state store."""
        ids = list(run_ids)
        ended = ("published", "failed", "empty", "killed")
        with self.engine.connect() as db:
            return {
                row.run_id
                for chunk in batched(ids, _IN_CLAUSE_KEYS)
                for row in db.execute(
                    sa.select(runs.c.run_id).where(
                        runs.c.dataset == dataset, runs.c.status.in_(ended), runs.c.run_id.in_(chunk)
                    )
                )
            }

    def decisions_read(self, dataset: str, version: int) -> DecisionMark | None:
        """The review decisions the run that published ``version`` of ``dataset`` read, or None when the
        store does not know the version. A run recorded before runs noted them read those standing at
        its start (``DecisionMark.at``)."""
        from curation.review.decisions import DecisionMark

        columns = (runs.c.decisions_through, runs.c.undos_through, runs.c.started_at)
        row = self._of_latest_published(columns, dataset, runs.c.version == version)
        if row is None:
            return None
        decided, undone, started = row
        return DecisionMark(decided, undone) if decided is not None else DecisionMark(at=started)

    def last_published(self, dataset: str) -> int | None:
        """The version the latest run of ``dataset`` that published made, or None when none did."""
        row = self._of_latest_published((runs.c.version,), dataset)
        return row.version if row else None

    def last_published_at(self, dataset: str) -> str | None:
        """Where the latest run of ``dataset`` that published published (its dataset folder), or None when none
        did or its store's release did not record it."""
        row = self._of_latest_published((runs.c.published_at,), dataset)
        return row.published_at if row else None

    def _of_latest_published(self, columns: tuple[sa.Column, ...], dataset: str, *where: Any) -> sa.Row | None:
        """``columns`` of the latest run of ``dataset`` that published (and meets ``where``), or None."""
        query = sa.select(*columns).where(runs.c.dataset == dataset, runs.c.status == "published", *where)
        with self.engine.connect() as db:
            return db.execute(query.order_by(runs.c.started_at.desc()).limit(1)).first()

    def group_sides(self, dataset: str, keys: list[str]) -> dict[str, bool]:
        """The side (True: validation) earlier runs put each of these group keys on, where they did."""
        by_hash = {_group_hash(key): key for key in keys}
        hashes = sorted(by_hash)
        found: dict[str, bool] = {}
        with self.engine.connect() as db:
            for chunk in batched(hashes, _IN_CLAUSE_KEYS):
                query = sa.select(split_groups.c.group_hash, split_groups.c.validation).where(
                    split_groups.c.dataset == dataset, split_groups.c.group_hash.in_(chunk)
                )
                found.update((by_hash[group], bool(side)) for group, side in db.execute(query))
        return found

    def record_group_sides(
        self,
        dataset: str,
        sides: dict[str, bool],
        start_over: bool,
        confirm: Callable[[sa.Connection], None] | None = None,
    ) -> None:
        """Keep the sides of the groups a published run placed; ``start_over`` (a full refresh: every
        record was split again) forgets the earlier ones first. ``confirm(db)`` first, in that transaction:
        it raises to record nothing (``HeldLock.confirm_within``)."""
        with begin_confirmed(self.engine, confirm) as db:
            if start_over:
                db.execute(split_groups.delete().where(split_groups.c.dataset == dataset))
            rows = [
                {"dataset": dataset, "group_hash": _group_hash(key), "validation": side} for key, side in sides.items()
            ]
            if rows:
                db.execute(split_groups.insert(), rows)

    def last_runs(self, dataset: str, limit: int = 10) -> list[dict[str, Any]]:
        with self.engine.connect() as db:
            rows = db.execute(
                runs.select().where(runs.c.dataset == dataset).order_by(runs.c.started_at.desc()).limit(limit)
            )
            return [dict(row._mapping) for row in rows]
