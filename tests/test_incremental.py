"""Scheduled runs: each takes only what is new since the last published version."""

from __future__ import annotations

import collections
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
import xxhash

import connectors.documents as documents
import connectors.files as files
import connectors.state as state
import connectors.storage as storage
from connectors.state import LockLost, RunLocked, create_tables, lock_lease, run_lock, run_locks
from connectors.storage import StorageError, list_files
from curation.pipeline import build_sources, recipe_warnings, run_recipe
from curation.published import published_versions, read_manifest, verify_checksums
from curation.writer import DatasetWriter
from schemas.config import FilesSource, Recipe, load_recipe, parse_recipe
from tests.helpers import (
    FailsOnceMoved,
    docs_recipe,
    lineage_rows,
    outputs,
    processed,
    refusing,
    run,
    set_aside,
    write_jsonl,
    write_recipe,
)
from tests.test_cli import curation

START = datetime(2026, 3, 1, tzinfo=UTC)


def add_tickets(db_url: str, first: int, count: int) -> None:
    engine = sa.create_engine(db_url)
    with engine.begin() as db:
        db.execute(sa.text("CREATE TABLE IF NOT EXISTS tickets (id INTEGER PRIMARY KEY, body TEXT, updated_at TEXT)"))
        db.execute(
            sa.text("INSERT INTO tickets VALUES (:id, :body, :at)"),
            [
                {
                    "id": i,
                    "body": f"Ticket {i}: card blocked after travel",
                    "at": (START + timedelta(hours=i)).isoformat(),
                }
                for i in range(first, first + count)
            ],
        )
    engine.dispose()


def scheduled_recipe(folder: Path) -> Path:
    return write_recipe(
        folder,
        {
            "dataset": "support",
            "sources": [
                {
                    "type": "sql",
                    "url": "sqlite:///crm.db",
                    "query": "SELECT id AS ticket, body AS text, updated_at FROM tickets",
                    "cursor": "updated_at",
                },
                {"type": "documents", "path": "kb"},
            ],
            "record": {"kind": "document"},
            "output": {"validation_fraction": 0.0},
        },
    )


def texts(version_uri: str) -> list[str]:
    return sorted(line["text"] for line in outputs(Path(version_uri)))


def test_scheduled_job_takes_only_new_rows_and_files(workdir: Path) -> None:
    add_tickets(f"sqlite:///{workdir}/crm.db", 1, 4)
    (workdir / "kb").mkdir()
    (workdir / "kb" / "refunds.md").write_text("# Refunds\n\nRefunds take five days.\n")
    recipe_path = scheduled_recipe(workdir)

    first = run_recipe(load_recipe(recipe_path))
    assert first.manifest.version == 1 and first.manifest.extends is None
    assert first.manifest.counts.input == 5

    add_tickets(f"sqlite:///{workdir}/crm.db", 5, 2)
    (workdir / "kb" / "shipping.md").write_text("# Shipping\n\nParcels leave the same day.\n")
    second = run_recipe(load_recipe(recipe_path))
    assert second.manifest.version == 2 and second.manifest.extends == 1
    new = [
        "# Shipping\n\nParcels leave the same day.",
        "Ticket 5: card blocked after travel",
        "Ticket 6: card blocked after travel",
    ]
    # Only the new items were processed; v2 holds them and everything v1 published (carry_forward).
    assert second.manifest.counts.input == 3 and second.manifest.counts.written == 3
    assert sorted(line["text"] for line in processed(Path(second.version_uri))) == new
    assert second.manifest.counts.carried == 5 and second.manifest.carried_from == 1
    assert texts(second.version_uri) == sorted(texts(first.version_uri) + new)
    assert [i.uri for i in second.manifest.inputs][1:] == [str(workdir / "kb" / "shipping.md")]

    # The third run, as the scheduler runs it: nothing new, nothing published, exit code 0.
    third = curation("run", "--quiet", str(recipe_path), cwd=workdir)
    assert third.returncode == 0, third.stderr
    assert "nothing new since support v2: published nothing" in third.stdout
    assert published_versions(str(workdir / "output"), "support") == [1, 2]

    # A changed file is taken again (its size and mtime changed), and only it.
    (workdir / "kb" / "refunds.md").write_text("# Refunds\n\nRefunds now take three days.\n")
    changed = curation("run", "--quiet", str(recipe_path), cwd=workdir)
    assert changed.returncode == 0, changed.stderr
    said = " ".join(changed.stdout.split())
    assert "1 new record(s) and 7 carried from v2; 1 carried record(s) replaced by what their inputs hold now" in said
    fourth_uri = str(workdir / "output" / "support" / "v3")
    assert json.loads((Path(fourth_uri) / "manifest.json").read_text())["extends"] == 2
    assert [line["text"] for line in processed(Path(fourth_uri))] == ["# Refunds\n\nRefunds now take three days."]
    # v2's other records (carried) and the changed file's new wording, which replaces the old one.
    assert texts(fourth_uri) == sorted(
        [t for t in texts(second.version_uri) if "five days" not in t] + ["# Refunds\n\nRefunds now take three days."]
    )

    # --full-refresh forgets the watermarks and takes everything again.
    fifth = curation("run", "--quiet", str(recipe_path), cwd=workdir)
    assert fifth.returncode == 0 and "nothing new since support v3" in fifth.stdout
    full = curation("run", "--quiet", "--full-refresh", str(recipe_path), cwd=workdir)
    assert full.returncode == 0, full.stderr
    manifest = json.loads((workdir / "output" / "support" / "v4" / "manifest.json").read_text())
    assert manifest["extends"] is None and manifest["counts"]["input"] == 8
    assert manifest["carried_from"] is None and manifest["counts"]["carried"] == 0
    assert manifest["splits"]["train"]["records"] == 8  # a full refresh carries nothing
    assert "holds what is new" not in full.stdout
    add_tickets(f"sqlite:///{workdir}/crm.db", 7, 1)
    after = curation("run", "--quiet", str(recipe_path), cwd=workdir)
    assert (
        "published" in after.stdout
        and "v5 holds the whole dataset: 1 new record(s) and 8 carried from v4" in after.stdout
    )


def test_a_failed_run_leaves_the_input_for_the_next(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_jsonl(workdir / "in" / "a.jsonl", [{"text": "alpha"}, {"text": "beta"}])
    recipe = {"dataset": "d", "sources": [{"path": "in"}], "record": {"kind": "document"}, "stages": []}

    def broken(self, build_manifest, before_visible, **_):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(DatasetWriter, "publish", broken)
        with pytest.raises(OSError, match="disk full"):
            run(workdir, recipe)
    result = run(workdir, recipe)
    assert result.manifest.version == 1 and result.manifest.counts.input == 2


def test_s3_objects_are_taken_again_only_when_their_etag_changes(workdir: Path, bucket: str) -> None:
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="in/a.jsonl", Body=b'{"text": "one"}\n')
    recipe = docs_recipe(f"s3://{bucket}/in/", dest=f"s3://{bucket}/out", validation_fraction=0.0)
    assert run(workdir, recipe).manifest.counts.input == 1
    s3.put_object(Bucket=bucket, Key="in/b.jsonl", Body=b'{"text": "two"}\n')
    second = run(workdir, recipe)
    assert second.manifest.extends == 1 and [i.uri for i in second.manifest.inputs] == [f"s3://{bucket}/in/b.jsonl"]
    s3.put_object(Bucket=bucket, Key="in/a.jsonl", Body=b'{"text": "one"}\n')  # same bytes, same ETag
    assert not run(workdir, recipe).published
    s3.put_object(Bucket=bucket, Key="in/a.jsonl", Body=b'{"text": "one, edited"}\n')
    fourth = run(workdir, recipe)
    assert fourth.manifest.version == 3 and fourth.manifest.counts.input == 1


def test_a_second_run_of_the_same_dataset_stops_with_a_clear_message(workdir: Path) -> None:
    write_jsonl(workdir / "in.jsonl", [{"text": "alpha"}])
    recipe_path = write_recipe(
        workdir, {"dataset": "d", "sources": [{"path": "in.jsonl"}], "record": {"kind": "document"}}
    )
    engine = sa.create_engine(f"sqlite:///{workdir}/state.db")
    with run_lock(engine, "d", "holder123"):
        done = curation("run", "--quiet", str(recipe_path), cwd=workdir)
        with pytest.raises(RunLocked, match="run holder123"):
            run_recipe(load_recipe(recipe_path))
    assert done.returncode == 1
    assert "dataset 'd' is being curated by another run (run holder123" in done.stderr
    assert not (workdir / "output" / "d").exists() or published_versions(str(workdir / "output"), "d") == []
    # Released: the next run goes ahead, and a lock left by a dead process on this host is taken over.
    with engine.begin() as db:
        db.execute(
            run_locks.insert().values(
                dataset="d", run_id="dead", host=os.uname().nodename, pid=2**22 + 17, acquired_at=datetime.now(UTC)
            )
        )
    assert run_recipe(load_recipe(recipe_path)).manifest.version == 1
    with engine.connect() as db:
        assert db.execute(sa.select(sa.func.count()).select_from(run_locks)).scalar() == 0


def test_a_lock_whose_pid_a_later_process_took_is_taken_over(workdir: Path) -> None:
    write_jsonl(workdir / "in.jsonl", [{"text": "alpha"}])
    recipe_path = write_recipe(
        workdir, {"dataset": "d", "sources": [{"path": "in.jsonl"}], "record": {"kind": "document"}}
    )
    engine = sa.create_engine(f"sqlite:///{workdir}/state.db")
    create_tables(engine)
    lock = {"dataset": "d", "run_id": "t", "host": os.uname().nodename, "pid": os.getpid()}
    with engine.begin() as db:  # a lock taken now by a run of this process (another thread) is respected
        db.execute(run_locks.insert().values(**lock, acquired_at=datetime.now(UTC)))
    with pytest.raises(RunLocked, match="run t,"):
        run_recipe(load_recipe(recipe_path))
    # Taken a day ago with this process's pid (a container's runs are all pid 1): that run was killed, and
    # this process, started since, only has its pid. The lock is taken over instead of blocking every run.
    with engine.begin() as db:
        db.execute(run_locks.update().values(run_id="killed", acquired_at=datetime.now(UTC) - timedelta(days=1)))
    assert run_recipe(load_recipe(recipe_path)).manifest.version == 1


def one_note(workdir: Path) -> Path:
    write_jsonl(workdir / "in.jsonl", [{"text": "alpha"}])
    return write_recipe(workdir, {"dataset": "d", "sources": [{"path": "in.jsonl"}], "record": {"kind": "document"}})


def lock_held_elsewhere(engine: sa.Engine, renewed: datetime | None) -> None:
    """A lock as a run on another host (a pod since killed, or still alive) left it."""
    create_tables(engine)
    with engine.begin() as db:
        db.execute(run_locks.delete())
        db.execute(
            run_locks.insert().values(
                dataset="d", run_id="pod7run", host="etl-pod-7", pid=1, acquired_at=START, renewed_at=renewed
            )
        )


def test_a_lock_from_another_host_not_renewed_for_a_lease_is_taken_over(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    recipe_path = one_note(workdir)
    engine = sa.create_engine(f"sqlite:///{workdir}/state.db")
    monkeypatch.setenv("CURATION_LOCK_LEASE", "60")
    lock_held_elsewhere(engine, datetime.now(UTC) - timedelta(seconds=30))  # alive: renewed within the lease
    with pytest.raises(RunLocked, match="run pod7run, pid 1 on etl-pod-7"):
        run_recipe(load_recipe(recipe_path))
    lock_held_elsewhere(engine, None)  # taken by a release that does not renew: kept until removed by hand
    with pytest.raises(RunLocked, match="run pod7run"):
        run_recipe(load_recipe(recipe_path))
    lock_held_elsewhere(engine, datetime.now(UTC) - timedelta(seconds=90))  # OOM-killed 90 s ago
    assert run_recipe(load_recipe(recipe_path)).manifest.version == 1
    assert "taking over the lock of run pod7run (pid 1 on etl-pod-7)" in caplog.text
    with engine.connect() as db:
        assert db.execute(sa.select(sa.func.count()).select_from(run_locks)).scalar() == 0


def test_a_run_stopped_by_a_lock_is_told_how_that_lock_ends(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scheduler's run refused by the lock of a run killed on another host waits the lease out; one
    refused by a lock an earlier release took (never renewed, never taken over) is given the statement
    that removes it, or it would be refused for good."""
    recipe_path = one_note(workdir)
    engine = sa.create_engine(f"sqlite:///{workdir}/state.db")
    monkeypatch.setenv("CURATION_LOCK_LEASE", "60")
    lock_held_elsewhere(engine, datetime.now(UTC) - timedelta(seconds=30))
    refused = curation("run", "--quiet", str(recipe_path), cwd=workdir)
    said = " ".join(refused.stderr.split())
    assert refused.returncode == 1 and "is taken over once it has not been renewed for 60 seconds" in said, said
    lock_held_elsewhere(engine, None)
    refused = curation("run", "--quiet", str(recipe_path), cwd=workdir)
    said = " ".join(refused.stderr.split())
    statement = "DELETE FROM run_locks WHERE dataset = 'd' AND run_id = 'pod7run'"
    assert refused.returncode == 1 and f"remove it from the state store: {statement}" in said, said
    with engine.begin() as db:
        db.execute(sa.text(statement))  # as the message says: the next run goes ahead
    assert run_recipe(load_recipe(recipe_path)).manifest.version == 1


@pytest.mark.parametrize("skew", [timedelta(hours=1), -timedelta(hours=1)])
def test_a_postgresql_store_times_the_lease_by_its_own_clock(
    postgres_url: str, skew: timedelta, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = sa.create_engine(postgres_url)
    monkeypatch.setenv("CURATION_LOCK_LEASE", "60")

    class Skewed(datetime):  # this host's clock, an hour off the database's
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return datetime.now(tz) + skew

    monkeypatch.setattr(state, "datetime", Skewed)
    with engine.connect() as db:
        store_now = db.execute(sa.select(sa.func.now())).scalar_one()
    lock_held_elsewhere(engine, store_now - timedelta(seconds=30))  # alive: renewed within the lease
    with pytest.raises(RunLocked, match="run pod7run"), run_lock(engine, "d", "here"):
        pass
    lock_held_elsewhere(engine, store_now - timedelta(seconds=90))  # killed
    with run_lock(engine, "d", "here"), engine.connect() as db:
        renewed = db.execute(sa.select(run_locks.c.renewed_at)).scalar_one()
    assert abs((renewed - store_now).total_seconds()) < 30  # renewed by the store's clock too


def test_a_lock_renewed_after_a_later_run_found_it_lapsed_is_not_taken_over(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A later run read the holder's row as lapsed (a stalled run); the holder woke and renewed it (inside its
    # watermarks commit, so that it records what it published) before the takeover's DELETE, which removed
    # the row all the same: both runs went on, each holding "the" lock.
    engine = sa.create_engine(postgres_url)
    monkeypatch.setenv("CURATION_LOCK_LEASE", "60")
    with engine.connect() as db:
        store_now = db.execute(sa.select(sa.func.now())).scalar_one()
    lock_held_elsewhere(engine, store_now - timedelta(seconds=90))  # lapsed when read
    expired = state._expired

    def holder_wakes(*args: Any) -> bool:
        lapsed = expired(*args)
        with engine.begin() as db:  # the holder renews its row now, committed before the takeover's DELETE
            db.execute(run_locks.update().where(run_locks.c.run_id == "pod7run").values(renewed_at=sa.func.now()))
        return lapsed

    monkeypatch.setattr(state, "_expired", holder_wakes)
    with pytest.raises(RunLocked, match="run pod7run"), run_lock(engine, "d", "here"):
        pass
    with engine.connect() as db:
        assert db.execute(sa.select(run_locks.c.run_id)).scalars().all() == ["pod7run"]
    engine.dispose()


@pytest.mark.parametrize("lease", ["abc", "-5", "0", "0.00001", "nan", "inf", "1e400"])
def test_a_lease_setting_that_is_no_sensible_time_is_refused_by_name(
    lease: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CURATION_LOCK_LEASE", lease)  # 0.00001: renewals every 2 µs, and live runs taken over
    with pytest.raises(ValueError, match=r"CURATION_LOCK_LEASE='.*': expected a number of seconds of at least 0.5"):
        lock_lease()


def test_a_run_renews_its_lock_so_a_long_run_is_not_taken_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    monkeypatch.setenv("CURATION_LOCK_LEASE", "0.6")
    with run_lock(engine, "d", "long") as held:
        time.sleep(1.5)  # longer than the lease: only the renewals keep it
        with pytest.raises(RunLocked, match="run long"), run_lock(engine, "d", "second"):
            pass
        assert not held.lost
    with engine.connect() as db:
        assert db.execute(sa.select(sa.func.count()).select_from(run_locks)).scalar() == 0


def test_a_run_whose_lock_was_taken_over_publishes_nothing(workdir: Path) -> None:
    recipe_path = one_note(workdir)
    engine = sa.create_engine(f"sqlite:///{workdir}/state.db")

    def taken_over(_total: int) -> None:  # as a run elsewhere does once this one's lease ran out
        with engine.begin() as db:
            db.execute(run_locks.update().values(run_id="other", host="etl-pod-8"))

    with pytest.raises(LockLost, match="taken over by another run"):
        run_recipe(load_recipe(recipe_path), on_start=taken_over)
    assert published_versions(str(workdir / "output"), "d") == []
    with engine.begin() as db:
        assert db.execute(sa.select(run_locks.c.run_id)).scalars().all() == ["other"]  # not given back: not ours
        db.execute(run_locks.delete())
    assert run_recipe(load_recipe(recipe_path)).manifest.version == 1  # the input was not taken


def test_a_lock_table_from_an_earlier_release_gains_the_renewal_column(workdir: Path) -> None:
    recipe_path = one_note(workdir)
    engine = sa.create_engine(f"sqlite:///{workdir}/state.db")
    with engine.begin() as db:
        db.execute(
            sa.text(
                "CREATE TABLE run_locks (dataset VARCHAR(200) PRIMARY KEY, run_id VARCHAR(32) NOT NULL, "
                "host VARCHAR(255) NOT NULL, pid INTEGER NOT NULL, acquired_at DATETIME NOT NULL)"
            )
        )
    assert run_recipe(load_recipe(recipe_path)).manifest.version == 1
    assert "renewed_at" in {column["name"] for column in sa.inspect(engine).get_columns("run_locks")}


def test_readme_connector_recipes_are_valid_and_warned_of_nothing(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Connectors", 1)[1].split("\n## ", 1)[0]
    recipes = [parse_recipe(block, base_dir=tmp_path) for block in re.findall(r"```yaml\n(.*?)```", section, re.S)]
    assert {recipe.sources[0].type for recipe in recipes} == {"sql", "documents", "images", "hf"}
    # A user copies them as written: the documents one warned that its overlapping chunks were split apart.
    assert [warning for recipe in recipes for warning in recipe_warnings(recipe)] == []


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_the_lock_admits_one_of_many_simultaneous_runs(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path}/state.db" if store == "sqlite" else request.getfixturevalue("postgres_url")
    engine = sa.create_engine(url)
    if store == "postgresql":  # a fresh store each time, as on a first run: the tables are created in the race
        with engine.begin() as db:
            db.execute(sa.text("DROP TABLE IF EXISTS run_locks, watermarks"))
    start, results = threading.Barrier(6), []

    def attempt(run_id: str) -> None:
        start.wait()
        try:
            with run_lock(engine, "race", run_id):
                time.sleep(0.5)  # hold it while the others try
            results.append("ran")
        except RunLocked as error:
            results.append(str(error))

    threads = [threading.Thread(target=attempt, args=(f"run{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 6 and results.count("ran") == 1
    assert all("is being curated by another run" in r for r in results if r != "ran")
    with engine.connect() as db:
        assert db.execute(sa.select(sa.func.count()).select_from(run_locks)).scalar() == 0
    engine.dispose()


def test_folder_listing_skips_what_is_hidden_or_in_the_making(tmp_path: Path) -> None:
    from connectors.storage import list_files

    for name in ["a.jsonl", "sub/b.jsonl", "sub/_SUCCESS", "_temporary/0/c.jsonl", ".git/d.jsonl", "notes.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}\n")
    listed = [Path(e.uri).relative_to(tmp_path).as_posix() for e in list_files(str(tmp_path), (".jsonl",))]
    assert listed == ["a.jsonl", "sub/b.jsonl"]
    # A glob ending in / names folders: what a folder source would read under each.
    globbed = [Path(e.uri).relative_to(tmp_path).as_posix() for e in list_files(f"{tmp_path}/*/", (".jsonl",))]
    assert globbed == ["sub/b.jsonl"]


def test_a_file_of_another_kind_in_a_source_folder_is_named_not_passed_over(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_jsonl(workdir / "in" / "a.jsonl", [{"text": "Note on refunds."}])
    write_jsonl(workdir / "in" / "b.xml", [{"text": "Note on cards."}])  # not a kind the source reads
    with pa.CompressedOutputStream(str(workdir / "in" / "c.jsonl.zst"), "zstd") as packed:  # read, as named alone
        packed.write(b'{"text": "Note on loans."}\n')
    (workdir / "in" / "sub").mkdir()
    (workdir / "in" / "sub" / "notes.txt").write_text("Note on fees.\n")
    (workdir / "in" / "_SUCCESS").write_text("")  # a marker, as data lakes write: not input, not named
    spec = {"dataset": "notes", "sources": [{"path": "in"}], "record": {"kind": "document"}}
    with caplog.at_level("WARNING", logger="connectors.storage"):
        result = run(workdir, spec)
    assert result.manifest.counts.written == 2
    warned = [r.getMessage() for r in caplog.records if "not a kind of file this source reads" in r.getMessage()]
    assert len(warned) == 1, caplog.text
    assert f"{workdir}/in/b.xml" in warned[0] and f"{workdir}/in/sub/notes.txt" in warned[0]
    assert "_SUCCESS" not in warned[0] and "a.jsonl" not in warned[0] and "c.jsonl.zst" not in warned[0]
    # A glob names the files it wants: nothing else under its folder is named.
    caplog.clear()
    with caplog.at_level("WARNING", logger="connectors.storage"):
        run(workdir, {**spec, "sources": [{"path": "in/*.jsonl"}]}, full_refresh=True)
    assert "not a kind of file" not in caplog.text


def test_a_link_to_a_file_that_is_not_there_is_named_not_passed_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from connectors.storage import list_files

    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "a.jsonl").write_text("{}\n")
    (tmp_path / "in" / "sub" / "moved.jsonl").symlink_to(tmp_path / "archive" / "moved.jsonl")
    (tmp_path / "in" / "gone.csv").symlink_to(tmp_path / "archive" / "gone.csv")  # not what the source reads
    for uri in (str(tmp_path / "in"), f"{tmp_path}/in/**/*.jsonl"):
        caplog.clear()
        with caplog.at_level("WARNING", logger="connectors.storage"):
            listed = [Path(e.uri).name for e in list_files(uri, (".jsonl",))]
        assert listed == ["a.jsonl"]
        assert f"not read: link to a file that is not there: {tmp_path}/in/sub/moved.jsonl" in caplog.text
        assert "gone.csv" not in caplog.text


@pytest.mark.parametrize(("kind", "suffix"), [("files", ".jsonl"), ("documents", ".txt")])
def test_a_link_out_of_a_source_folder_is_not_read_and_named(
    workdir: Path, caplog: pytest.LogCaptureFixture, kind: str, suffix: str
) -> None:
    # Arrow's listing follows every link: one in the folder to a file or folder elsewhere (another team's
    # exports, /etc/passwd) was read as input and published, though the recipe never pointed there. The
    # folder itself reached through a link is fine, and so is a link within it (read once: see below).
    real, private = workdir / "exports", workdir / "private"
    (real / "sub").mkdir(parents=True)
    private.mkdir()
    for path in (real / "a", real / "sub" / "b", private / "salaries", private / "other"):
        text = f"Notes from {path.name} on refunds."
        path.with_suffix(suffix).write_text(json.dumps({"text": text}) + "\n" if kind == "files" else text)
    (workdir / "in").symlink_to(real, target_is_directory=True)
    (real / f"staying{suffix}").symlink_to(f"sub/b{suffix}")
    (real / "inner").symlink_to("sub", target_is_directory=True)
    (real / f"leaving{suffix}").symlink_to(private / f"salaries{suffix}")
    (real / "away").symlink_to(private, target_is_directory=True)
    # A link to a folder of files the source does not read: named as such, not as inputs refused.
    (workdir / "tools").mkdir()
    for n in range(3):
        (workdir / "tools" / f"t{n}.py").write_text("print()\n")
    (real / "tools").symlink_to(workdir / "tools", target_is_directory=True)
    spec = {"dataset": "notes", "sources": [{"type": kind, "path": "in"}], "record": {"kind": "document"}}
    with caplog.at_level("WARNING", logger="connectors.storage"):
        result = run(workdir, spec)
    assert sorted(entry.uri.removeprefix(f"{workdir}/in/") for entry in result.manifest.inputs) == [
        f"a{suffix}",
        f"sub/b{suffix}",
    ]
    assert result.manifest.stats["links_repeated"] == {
        f"{workdir}/in/inner": f"{workdir}/in/sub",
        f"{workdir}/in/staying{suffix}": f"{workdir}/in/sub/b{suffix}",
    }
    assert not any("salaries" in line["text"] or "other" in line["text"] for line in outputs(Path(result.version_uri)))
    targets = {
        f"{workdir}/in/{link}{suffix}": f"{private.resolve()}/{target}{suffix}"
        for link, target in (("away/other", "other"), ("away/salaries", "salaries"), ("leaving", "salaries"))
    }
    assert result.manifest.stats["links_out"] == targets
    named = ", ".join(f"{link} -> {target}" for link, target in targets.items())
    assert f"not read: a link that leads out of the source's folder {workdir}/in (copy the file in" in caplog.text
    assert named in caplog.text and "t0.py ->" not in caplog.text
    assert "not a kind of file this source reads" in caplog.text and f"{workdir}/in/tools/t0.py" in caplog.text


def test_a_link_back_into_a_source_folder_reads_each_file_once(workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Arrow's listing follows every link: one to a folder above (`up -> ..`) listed the folder again and again,
    # 40 deep, each file published 40 times under 40 paths (ids); one to a file or folder beside it read those
    # files twice. Each is read once, under the path without a link, and the others are named.
    write_jsonl(workdir / "in" / "a.jsonl", [{"text": "Notes on refunds."}])
    write_jsonl(workdir / "in" / "data" / "d.jsonl", [{"text": "Notes on cards."}])
    (workdir / "in" / "sub").mkdir()
    (workdir / "in" / "sub" / "up").symlink_to("..", target_is_directory=True)
    (workdir / "in" / "same.jsonl").symlink_to("a.jsonl")
    (workdir / "in" / "alias").symlink_to("data", target_is_directory=True)
    # Second names of what the source does not read are not named as repeats (a manifest entry each).
    (workdir / "in" / "tools").mkdir()
    (workdir / "in" / "tools" / "t.py").write_text("print()\n")
    (workdir / "in" / "bin").symlink_to("tools", target_is_directory=True)
    (workdir / "in" / "notes.txt").write_text("notes\n")
    (workdir / "in" / "README.txt").symlink_to("notes.txt")
    spec = {"dataset": "notes", "sources": [{"path": "in"}], "record": {"kind": "document"}}
    with caplog.at_level("WARNING", logger="connectors.storage"):
        result = run(workdir, spec)
    assert [entry.uri for entry in result.manifest.inputs] == [f"{workdir}/in/a.jsonl", f"{workdir}/in/data/d.jsonl"]
    assert result.manifest.counts.written == 2
    repeated = {
        f"{workdir}/in/alias": f"{workdir}/in/data",
        f"{workdir}/in/same.jsonl": f"{workdir}/in/a.jsonl",
        f"{workdir}/in/sub/up": f"{workdir}/in",
    }
    assert result.manifest.stats["links_repeated"] == repeated
    warned = [
        r.getMessage() for r in caplog.records if "a path through a link to what the source reads" in r.getMessage()
    ]
    assert warned == [
        f"{workdir}/in: not read: a path through a link to what the source reads under another path (it would be "
        "read twice): " + ", ".join(f"{path} -> {at}" for path, at in repeated.items())
    ]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="drops root's file access")
def test_a_link_the_run_may_not_follow_fails_the_listing_as_a_folder_it_may_not_list_does(tmp_path: Path) -> None:
    # A link whose target it may not look up (a folder on the way it may not search) was passed over without
    # a word: a linked folder of inputs left out, a linked file called "not there". Arrow's listing failed.
    os.chmod(tmp_path, 0o755)
    (tmp_path / "in").mkdir()
    (tmp_path / "sec" / "dir").mkdir(parents=True)
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": "a"}])
    write_jsonl(tmp_path / "sec" / "dir" / "d.jsonl", [{"text": "d"}])
    (tmp_path / "in" / "linked").symlink_to("../sec/dir", target_is_directory=True)
    for path in (tmp_path / "sec", tmp_path / "sec" / "dir", tmp_path / "sec" / "dir" / "d.jsonl"):
        os.chown(path, 65534, 65534)
    os.chmod(tmp_path / "sec", 0o700)
    code = (
        "import sys\nfrom connectors.storage import list_files\n"
        "try:\n    print(list_files(sys.argv[1], ('.jsonl',), links_out={}, links_repeated={}))\n"
        "except Exception as error:\n    print(type(error).__name__, error)\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c", code, str(tmp_path / "in")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=False,
    )
    assert done.stdout.startswith(f"StorageError {tmp_path}/in: cannot list: "), (done.stdout, done.stderr)
    assert "Permission denied" in done.stdout


def test_a_file_reached_only_through_links_is_listed_once_under_the_first_path(tmp_path: Path) -> None:
    for name in ("_x/f.jsonl", "a.txt", "old/feb/x.jsonl"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_text("{}\n")
    (tmp_path / "in" / "c").symlink_to("_x", target_is_directory=True)  # a hidden folder: read through its links
    (tmp_path / "in" / "b").symlink_to("_x", target_is_directory=True)
    (tmp_path / "in" / "b.jsonl").symlink_to("a.txt")  # a .txt the source does not read, read as .jsonl
    (tmp_path / "in" / "2024-02").symlink_to("old/feb", target_is_directory=True)
    (tmp_path / "in" / "old" / "feb" / "up").symlink_to("../..", target_is_directory=True)
    again: dict[str, str] = {}
    listed = list_files(f"{tmp_path}/in", (".jsonl",), links_repeated=again)
    assert [Path(e.uri).relative_to(tmp_path / "in").as_posix() for e in listed] == [
        "b.jsonl",
        "b/f.jsonl",
        "old/feb/x.jsonl",
    ]
    assert again == {
        f"{tmp_path}/in/2024-02": f"{tmp_path}/in/old/feb",
        f"{tmp_path}/in/c": f"{tmp_path}/in/b",
        f"{tmp_path}/in/old/feb/up": f"{tmp_path}/in",
    }
    # A glob matches a path: the one through a link is read where the path without one does not match.
    again.clear()
    globbed = list_files(f"{tmp_path}/in/2024-*/*.jsonl", (".jsonl",), links_repeated=again)
    assert [e.uri for e in globbed] == [f"{tmp_path}/in/2024-02/x.jsonl"]
    # Without links_repeated (an images source, whose sidecar may name either path) each path is listed, but
    # a folder is not looked into again below itself.
    everything = [Path(e.uri).relative_to(tmp_path / "in").as_posix() for e in list_files(f"{tmp_path}/in")]
    assert everything == ["2024-02/x.jsonl", "a.txt", "b.jsonl", "b/f.jsonl", "c/f.jsonl", "old/feb/x.jsonl"]


@pytest.mark.parametrize(("kind", "suffix"), [("files", ".jsonl"), ("documents", ".txt"), ("images", ".png")])
def test_a_file_name_that_is_not_utf8_fails_the_listing_naming_the_file(
    workdir: Path, caplog: pytest.LogCaptureFixture, kind: str, suffix: str
) -> None:
    # A Linux name is bytes: one a Latin-1 tool wrote (caf\xe9) failed the run with a bare UnicodeEncodeError from
    # inside Arrow. No input's URI can carry it, so the listing fails first, naming it as its bytes.
    (workdir / "in").mkdir()
    (workdir / "in" / f"a{suffix}").write_text(json.dumps({"text": "Notes on refunds."}) + "\n")
    strange = os.path.join(os.fsencode(workdir / "in"), b"caf\xe9" + suffix.encode())
    with open(strange, "wb") as handle:
        handle.write(b"Notes from the caf\xe9.\n")
    if kind == "images":
        write_jsonl(workdir / "qa.jsonl", [{"image": f"a{suffix}", "question": "What is it?", "answer": "A note."}])
        source = {"type": kind, "path": "in", "sidecar": "qa.jsonl"}
    else:
        source = {"type": kind, "path": "in"}
    spec = {"dataset": "notes", "sources": [source], "record": {"kind": "vqa" if kind == "images" else "document"}}
    with pytest.raises(StorageError) as failed:
        run(workdir, spec)
    assert str(failed.value).startswith(f"{workdir}/in/caf\\xe9{suffix}: a file name that is not UTF-8 ")
    assert "rename it with a UTF-8 name" in str(failed.value)
    if kind == "images":
        return
    # One of a kind the source does not read is named, not read, and the run goes on.
    os.rename(strange, os.path.join(os.fsencode(workdir / "in"), b"caf\xe9.bin"))
    with caplog.at_level("WARNING", logger="connectors.storage"):
        result = run(workdir, spec)
    assert [entry.uri for entry in result.manifest.inputs] == [f"{workdir}/in/a{suffix}"]
    assert f"{workdir}/in: not read: a file name that is not UTF-8: {workdir}/in/caf\\xe9.bin" in caplog.text


def test_a_link_named_or_leading_to_a_name_that_is_not_utf8_is_named_escaped_in_the_manifest(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A folder link caf\xe9 -> sub, and a link leading out to else/caf\xe9.jsonl: their paths reached the
    # manifest's stats as Python's surrogates, and publishing failed with a bare PydanticSerializationError.
    write_jsonl(workdir / "in" / "sub" / "a.jsonl", [{"text": "Refunds take 5 days."}])
    os.symlink(b"sub", os.path.join(os.fsencode(workdir / "in"), b"caf\xe9"))
    (workdir / "else").mkdir()
    with open(os.path.join(os.fsencode(workdir / "else"), b"caf\xe9.jsonl"), "wb") as handle:
        handle.write(b'{"text": "Elsewhere."}\n')
    os.symlink(os.path.join(os.fsencode(workdir / "else"), b"caf\xe9.jsonl"), workdir / "in" / "x.jsonl")
    spec = {"dataset": "notes", "sources": [{"type": "files", "path": "in"}], "record": {"kind": "document"}}
    with caplog.at_level("WARNING", logger="connectors.storage"):
        result = run(workdir, spec)
    assert [entry.uri for entry in result.manifest.inputs] == [f"{workdir}/in/sub/a.jsonl"]
    assert result.manifest.stats["links_repeated"] == {f"{workdir}/in/caf\\xe9": f"{workdir}/in/sub"}
    assert result.manifest.stats["links_out"] == {f"{workdir}/in/x.jsonl": f"{workdir}/else/caf\\xe9.jsonl"}
    assert f"{workdir}/in/caf\\xe9 -> {workdir}/in/sub" in caplog.text


def test_two_links_whose_names_differ_only_in_how_their_bytes_escape_are_each_named(tmp_path: Path) -> None:
    # Links named \xff then the bytes \xe9, and \xff then the four characters `\xe9`, to a folder listed
    # already: both were written `\xff\xe9`, so stats.links_repeated held one key and hid the other link.
    write_jsonl(tmp_path / "in" / "sub" / "a.jsonl", [{"text": "a"}])
    for name in (b"\xff\xe9", b"\xff\\xe9"):
        os.symlink(b"sub", os.path.join(os.fsencode(tmp_path / "in"), name))
    again: dict[str, str] = {}
    assert [Path(e.uri).name for e in list_files(f"{tmp_path}/in", (".jsonl",), links_repeated=again)] == ["a.jsonl"]
    assert again == {
        f"{tmp_path}/in/\\xff\\xe9": f"{tmp_path}/in/sub",
        f"{tmp_path}/in/\\xff\\\\xe9": f"{tmp_path}/in/sub",
    }


def test_a_glob_of_a_fixed_depth_through_several_loop_links_walks_each_folder_once_per_depth(tmp_path: Path) -> None:
    # Five links `l_i -> .` and a glob six folders deep: the walk went down every one of 5**6 paths round the
    # loops (seconds; minutes a little deeper). Each folder is walked once at each depth, and the file listed once.
    write_jsonl(tmp_path / "d" / "a.jsonl", [{"text": "a"}])
    for i in range(5):
        (tmp_path / "d" / f"l{i}").symlink_to(".", target_is_directory=True)
    scanned: list[str] = []
    scandir = os.scandir

    def counted(folder: str) -> Any:
        scanned.append(folder)
        return scandir(folder)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(storage.os, "scandir", counted)
        listed = list_files(f"{tmp_path}/d/{'*/' * 6}*.jsonl", (".jsonl",), links_repeated={})
    assert [Path(e.uri).relative_to(tmp_path).as_posix() for e in listed] == [f"d/{'l0/' * 6}a.jsonl"]
    # One real folder, looked into once at each of the glob's seven depths (was 5**0 + ... + 5**6 = 19,531 times).
    assert len(scanned) == 7


def test_a_glob_of_a_fixed_depth_lists_a_file_it_names_through_a_loop_once(tmp_path: Path) -> None:
    # The walk cut the loop `sub/up -> ..`, so d/sub/up/a.jsonl, which the glob names, was listed only as
    # d/a.jsonl, which it does not match: the source read nothing. The glob's depth bounds the walk round it.
    write_jsonl(tmp_path / "d" / "a.jsonl", [{"text": "a"}])
    (tmp_path / "d" / "sub").mkdir()
    (tmp_path / "d" / "sub" / "up").symlink_to("..", target_is_directory=True)
    for glob, want in (("d/*/up/*.jsonl", ["d/sub/up/a.jsonl"]), ("d/*/*/*/*/*.jsonl", ["d/sub/up/sub/up/a.jsonl"])):
        again: dict[str, str] = {}
        listed = list_files(f"{tmp_path}/{glob}", (".jsonl",), links_repeated=again)
        assert [Path(e.uri).relative_to(tmp_path).as_posix() for e in listed] == want
        assert again == {}
    # A loop a glob of a fixed depth does not reach into is not named as left out: it holds nothing it matches.
    again = {}
    assert [Path(e.uri).name for e in list_files(f"{tmp_path}/d/*.jsonl", (".jsonl",), links_repeated=again)] == [
        "a.jsonl"
    ]
    assert again == {}
    # With ** the loop is cut, and named: the glob matches the file under both paths.
    assert [
        Path(e.uri).parent.name for e in list_files(f"{tmp_path}/d/**/*.jsonl", (".jsonl",), links_repeated=again)
    ] == ["d"]
    assert again == {f"{tmp_path}/d/sub/up": f"{tmp_path}/d"}


def test_a_folder_listing_gives_each_file_as_arrows_listing_did(tmp_path: Path) -> None:
    # A file's id is its path, and a scheduled run compares its size and time: listing the folder here
    # rather than with Arrow must change neither, for a file or a link to one (the time of what it leads to).
    import pyarrow.fs as pafs

    for name in ("a.jsonl", "sub/b.jsonl", "sub/deeper/c.jsonl", "x=1/d.jsonl"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_text('{"text": "x"}\n' * len(name))
    (tmp_path / "elsewhere.jsonl").write_text("{}\n")
    (tmp_path / "in" / "link.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")
    arrow = pafs.LocalFileSystem().get_file_info(pafs.FileSelector(str(tmp_path / "in"), recursive=True))
    files = sorted((i.path, i.size, i.mtime.isoformat()) for i in arrow if i.type == pafs.FileType.File)
    assert [(e.uri, e.size, e.mtime) for e in list_files(str(tmp_path / "in"), (".jsonl",))] == files


def test_a_path_naming_a_file_or_folder_with_a_bracket_reads_it_by_its_name(workdir: Path) -> None:
    # Any '[' made the path a glob, whose class matched one character: "exports [2026]/a.jsonl", a file that is
    # there, matched nothing ("no input files match"), and nothing could name it.
    a = write_jsonl(workdir / "exports [2026]" / "a.jsonl", [{"text": "alpha"}])
    write_jsonl(workdir / "exports [2026]" / "b.jsonl", [{"text": "beta"}])
    write_jsonl(workdir / "exports 2" / "c.jsonl", [{"text": "gamma"}])  # what the path read as a pattern matches
    assert [entry.uri for entry in list_files(str(a))] == [str(a)]
    assert len(list_files(str(workdir / "exports [2026]"), (".jsonl",))) == 2
    result = run(workdir, docs_recipe("exports [2026]/", validation_fraction=0.0))
    assert sorted(row["text"] for row in outputs(Path(result.version_uri))) == ["alpha", "beta"]
    # Where no file or folder has the name, the path is a pattern still: the run says it read it as one.
    assert [e.uri for e in list_files(str(workdir / "exports [2]" / "*.jsonl"))] == [str(workdir / "exports 2/c.jsonl")]
    with pytest.raises(StorageError, match=r"exports \[1999\]/\*\.jsonl: no input files match \(read as a pattern"):
        run(workdir, docs_recipe("exports [1999]/*.jsonl"))
    # ... in which '[[]' is a literal '[', as in a shell's glob.
    escaped = list_files(str(workdir / "exports [[]2026]" / "*.jsonl"))
    assert [entry.uri for entry in escaped] == [str(a), str(workdir / "exports [2026]" / "b.jsonl")]


def test_a_folder_read_by_its_name_with_a_bracket_is_not_said_to_be_read_as_a_pattern(workdir: Path) -> None:
    # The hint said no file or folder had the name, of a folder there by that name holding nothing readable.
    (workdir / "exports [2026]").mkdir()
    (workdir / "exports [2026]" / "notes.txt").write_text("to do\n")
    with pytest.raises(StorageError, match=r"exports \[2026\]: no input files match") as refused:
        run(workdir, docs_recipe("exports [2026]/"))
    assert "pattern" not in str(refused.value)


def test_a_name_read_by_it_that_as_a_pattern_matches_other_files_names_both(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The file of that name was read, silently: a1.jsonl and a2.jsonl may have been meant.
    literal = write_jsonl(tmp_path / "a[12].jsonl", [{"text": "alpha"}])
    for name in ("a1.jsonl", "a2.jsonl"):
        write_jsonl(tmp_path / name, [{"text": "beta"}])
    with caplog.at_level("WARNING", logger="connectors.storage"):
        assert [entry.uri for entry in list_files(str(literal))] == [str(literal)]
    (warned,) = [record.getMessage() for record in caplog.records]
    assert f"{tmp_path}/a1.jsonl, {tmp_path}/a2.jsonl" in warned
    assert f"{tmp_path}/a[[]12].jsonl" in warned
    assert [entry.uri for entry in list_files(f"{tmp_path}/a[[]12].jsonl")] == [str(literal)]  # as the warning says
    caplog.clear()
    (tmp_path / "a1.jsonl").unlink()
    (tmp_path / "a2.jsonl").unlink()
    list_files(str(literal))
    assert not caplog.records  # nothing else it could mean
    # A folder's name, so written, is a glob of folders: it keeps its '/'.
    folder = write_jsonl(tmp_path / "in [2]" / "a.jsonl", [{"text": "gamma"}]).parent
    write_jsonl(tmp_path / "in 2" / "b.jsonl", [{"text": "delta"}])
    with caplog.at_level("WARNING", logger="connectors.storage"):
        assert [entry.uri for entry in list_files(str(folder))] == [f"{folder}/a.jsonl"]
    assert f"{tmp_path}/in 2 instead: write the name as {tmp_path}/in [[]2]/ to say" in caplog.text
    assert [entry.uri for entry in list_files(f"{tmp_path}/in [[]2]/")] == [f"{folder}/a.jsonl"]


def test_a_glob_does_not_list_a_link_out_of_its_fixed_part(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "private").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text("{}\n")
    (tmp_path / "private" / "salaries.jsonl").write_text("{}\n")
    (tmp_path / "in" / "leaving.jsonl").symlink_to(tmp_path / "private" / "salaries.jsonl")
    away: dict[str, str] = {}
    listed = list_files(f"{tmp_path}/in/*.jsonl", (".jsonl",), links_out=away)
    assert [Path(entry.uri).name for entry in listed] == ["a.jsonl"]
    assert away == {f"{tmp_path}/in/leaving.jsonl": f"{tmp_path.resolve()}/private/salaries.jsonl"}


def test_a_source_whose_settings_changed_is_read_whole_and_replaces_what_it_gave(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in "ab":
        write_jsonl(workdir / f"{name}.jsonl", [{"text": f"Note {name}{n} on refunds."} for n in range(3)])
    spec = {"dataset": "notes", "sources": [{"path": "a.jsonl"}, {"path": "b.jsonl"}], "record": {"kind": "document"}}
    run(workdir, spec)
    # The source's state is keyed by its settings: changed, it has none, and reads all of b.jsonl again.
    changed = run(workdir, {**spec, "sources": [{"path": "a.jsonl"}, {"path": "b.jsonl", "format": "jsonl"}]})
    texts = [line["text"] for line in outputs(Path(changed.version_uri))]
    assert sorted(texts) == sorted(f"Note {name}{n} on refunds." for name in "ab" for n in range(3))  # each once
    assert changed.manifest.extends == 1 and changed.manifest.stats["carry"]["replaced"] == 3
    # No source read before (a path changed): the version extends nothing, and the run says so.
    with caplog.at_level("WARNING", logger="curation.pipeline"):
        moved = run(workdir, {**spec, "sources": [{"path": "*.jsonl"}]})
    assert moved.manifest.extends is None and len(outputs(Path(moved.version_uri))) == 6
    assert "no source of the recipe was read for v2 (a path or setting changed?)" in caplog.text


def test_a_run_with_another_state_store_than_the_last_version_says_so_among_the_causes(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The warning's only hint was "a path or setting changed?", with neither changed.
    write_jsonl(workdir / "a.jsonl", [{"text": f"Note {n} on refunds."} for n in range(3)])
    spec = {"dataset": "notes", "sources": [{"path": "a.jsonl"}], "record": {"kind": "document"}}
    run(workdir, {**spec, "state": "sqlite:///first.db"})
    with caplog.at_level("WARNING", logger="curation.pipeline"):
        second = run(workdir, {**spec, "state": "sqlite:///second.db"})
    assert second.manifest.version == 2 and second.manifest.extends is None
    assert (
        "no source of the recipe was read for v1 (a path or setting changed, or the earlier runs used another "
        "state store?)" in caplog.text
    )


def test_inputs_moved_to_a_new_path_are_published_not_taken_for_repeats_of_a_version_not_held(
    workdir: Path,
) -> None:
    rows = [{"text": f"Note {n} on refunds."} for n in range(4)]
    write_jsonl(workdir / "in" / "a.jsonl", rows)
    run(workdir, docs_recipe("in"))
    (workdir / "in").rename(workdir / "archive")  # the inputs moved, and the recipe's path with them
    moved = run(workdir, docs_recipe("archive"))
    # The version extends nothing and holds only what the run read: all of it, not set aside as
    # repeats of v1, which it does not carry.
    assert moved.manifest.extends is None and moved.manifest.carried_from is None
    assert sorted(line["text"] for line in outputs(Path(moved.version_uri))) == sorted(r["text"] for r in rows)
    assert moved.manifest.counts.reasons == {}
    # From there on, scheduled runs compare with that version.
    write_jsonl(workdir / "archive" / "b.jsonl", [rows[0], {"text": "A new note."}])
    later = run(workdir, docs_recipe("archive"))
    assert later.manifest.extends == 2 and later.manifest.counts.reasons == {"duplicate": {"earlier_version": 1}}
    assert len(outputs(Path(later.version_uri))) == 5


def test_a_new_dest_reads_all_input_instead_of_publishing_an_empty_version(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_jsonl(workdir / "in.jsonl", [{"text": f"Note {n} on refunds."} for n in range(5)])
    spec = {"dataset": "notes", "sources": [{"path": "in.jsonl"}], "record": {"kind": "document"}}
    first = run(workdir, {**spec, "output": {"dest": "out"}})
    assert first.manifest.counts.written == 5
    with caplog.at_level("WARNING", logger="curation.pipeline"):
        moved = run(workdir, {**spec, "output": {"dest": "elsewhere"}})  # same dataset, same state store
    assert moved.manifest.version == 1 and moved.manifest.counts.written == 5
    assert moved.manifest.counts.reasons == {}  # not taken for repeats of the other dest's version
    assert "has no version at" in caplog.text and "reads all of it again" in caplog.text
    # And from there on, scheduled runs at the new dest take only what is new.
    again = run(workdir, {**spec, "output": {"dest": "elsewhere"}})
    assert again.manifest is None and "nothing new" in again.message


def test_a_dest_the_dataset_comes_back_to_is_read_for_what_the_runs_elsewhere_took(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Back at A, the store's last run had published v2 at B, a number A has too: its watermarks were trusted, and
    # what the runs at B took ("three") was in no version at A, nor read again: lost, nothing said.
    spec = docs_recipe("in")
    at = {name: {**spec, "output": {"dest": name}} for name in ("a", "b")}
    write_jsonl(workdir / "in" / "1.jsonl", [{"text": "one"}])
    run(workdir, at["a"])
    write_jsonl(workdir / "in" / "2.jsonl", [{"text": "two"}])
    assert run(workdir, at["a"]).manifest.version == 2
    run(workdir, at["b"])  # a dest without versions: reads all
    write_jsonl(workdir / "in" / "3.jsonl", [{"text": "three"}])
    assert run(workdir, at["b"]).manifest.version == 2
    write_jsonl(workdir / "in" / "4.jsonl", [{"text": "four"}])
    with caplog.at_level("WARNING", logger="curation.pipeline"):
        back = run(workdir, at["a"])
    assert "last run of this state store published at" in caplog.text and "reads all of it again" in caplog.text
    assert sorted(line["text"] for line in outputs(Path(back.version_uri))) == ["four", "one", "three", "two"]
    assert run(workdir, at["a"]).manifest is None  # and from there on, only what is new
    # The same folder spelt another way is no other dest: nothing new, not all read again.
    (workdir / "link").symlink_to(workdir, target_is_directory=True)
    for spelt in (f"file://{workdir / 'a'}", str(workdir / "link" / "a"), f"{workdir}//a"):
        assert run(workdir, {**spec, "output": {"dest": spelt}}).manifest is None, spelt


def test_a_deleted_latest_version_makes_the_next_run_read_everything_again(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    write_jsonl(workdir / "in" / "a.jsonl", [{"text": "one"}, {"text": "two"}])
    run(workdir, docs_recipe("in"))
    write_jsonl(workdir / "in" / "b.jsonl", [{"text": "three"}])
    second = run(workdir, docs_recipe("in"))
    shutil.rmtree(second.version_uri)  # rolled back by hand: v1 is the latest again
    write_jsonl(workdir / "in" / "c.jsonl", [{"text": "four"}])
    with caplog.at_level("WARNING", logger="curation.pipeline"):
        again = run(workdir, docs_recipe("in"))
    assert "docs v2, which the state store says the last run published, is not at" in caplog.text
    # b.jsonl's record is not lost (its watermark said v2 took it), nor taken for a repeat of the deleted v2.
    assert sorted(line["text"] for line in outputs(Path(again.version_uri))) == ["four", "one", "three", "two"]
    assert again.manifest.counts.reasons == {}
    # Not v2 again: a training request or a model's lineage naming the deleted v2 would name other records.
    assert again.manifest.version == 3 and published_versions(str(workdir / "output"), "docs") == [1, 3]
    write_jsonl(workdir / "in" / "d.jsonl", [{"text": "five"}])
    later = run(workdir, docs_recipe("in"))  # and from there on, only what is new
    assert later.manifest.extends == 3 and later.manifest.counts.input == 1


def test_a_glob_beside_the_output_does_not_read_the_published_version(workdir: Path) -> None:
    write_jsonl(workdir / "a.jsonl", [{"text": "alpha"}, {"text": "beta"}])
    spec = {"dataset": "g", "sources": [{"path": "*.jsonl"}], "record": {"kind": "document"}, "output": {"dest": "."}}
    run(workdir, spec)
    write_jsonl(workdir / "b.jsonl", [{"text": "gamma"}])
    second = run(workdir, spec)  # g/v1/train/part-00000.jsonl matches "*.jsonl" only if * crosses folders
    assert [Path(i.uri).name for i in second.manifest.inputs] == ["b.jsonl"] and second.manifest.counts.input == 1


@pytest.mark.parametrize("path", ["landing", "landing/*.jsonl"])
def test_inputs_moved_away_once_taken_leave_nothing_new_not_a_failed_run(workdir: Path, path: str) -> None:
    spec = {**docs_recipe(path), "dataset": "notes"}
    write_jsonl(workdir / "landing" / "a.jsonl", [{"text": "Parcel 1 left the depot."}])
    run(workdir, spec)
    (workdir / "landing" / "a.jsonl").rename(workdir / "a.jsonl")  # taken: archived
    assert "nothing new since notes v1" in run(workdir, spec).message
    write_jsonl(workdir / "landing" / "b.jsonl", [{"text": "Parcel 2 arrived."}])
    v2 = run(workdir, spec)
    assert (v2.manifest.counts.written, v2.manifest.counts.carried) == (1, 1)
    # A source that never gave a file names the wrong place, most likely: that fails.
    with pytest.raises(StorageError, match="no input files match"):
        run(workdir, {**spec, "dataset": "other", "sources": [{"path": "landing/*.csv"}]})


def test_a_release_writing_values_as_other_text_is_a_changed_recipe(
    workdir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release that writes an input value as other text (a float field 10.0, not 10) leaves carried
    records with the old text, and content sent again is no exact duplicate of it: the first scheduled
    run after it says so, as for a changed recipe."""
    import logging

    import schemas.config

    write_jsonl(workdir / "in" / "a.jsonl", [{"q": "How much?", "n": 10.0}])
    spec = {
        "dataset": "amounts",
        "sources": [{"path": "in/"}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "n"},
        "stages": [{"type": "exact_dedup", "across_runs": True}],
        "output": {"validation_fraction": 0.0},
    }
    monkeypatch.setattr(schemas.config, "TEXT_RULES", schemas.config.TEXT_RULES - 1)  # the release before
    first = run(workdir, spec)
    monkeypatch.undo()
    write_jsonl(workdir / "in" / "b.jsonl", [{"q": "How much again?", "n": 2.5}])
    with caplog.at_level(logging.WARNING):
        second = run(workdir, spec)
    assert first.manifest.recipe_sha256 != second.manifest.recipe_sha256
    assert "how values are written as text or what a stage does, in a new release of curation" in caplog.text
    assert "--full-refresh" in caplog.text


def test_a_file_restored_with_a_new_mtime_is_not_published_again(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file was told changed by its size and mtime alone: one restored from a backup, copied without
    # -p or touched was read again whole and its records published as new. Only a file whose mtime
    # moved is hashed again, once; one unchanged is never read for it.
    a = write_jsonl(workdir / "in" / "a.jsonl", [{"text": "alpha"}, {"text": "beta"}])
    write_jsonl(workdir / "in" / "b.jsonl", [{"text": "gamma"}])
    recipe = {"dataset": "d", "sources": [{"path": "in"}], "record": {"kind": "document"}, "stages": []}
    hashed: list[str] = []
    hash_of = state.content_hash
    monkeypatch.setattr(state, "content_hash", lambda uri: hashed.append(Path(uri).name) or hash_of(uri))
    assert run(workdir, recipe).manifest.counts.written == 3
    assert hashed == []  # new: hashed as they were read, not read apart for it
    hashed.clear()
    os.utime(a, (1, 1))  # the same bytes, another mtime
    assert run(workdir, recipe).message.startswith("nothing new")
    assert hashed == ["a.jsonl"]
    hashed.clear()
    assert run(workdir, recipe).message.startswith("nothing new")
    assert hashed == []  # its new mtime was kept: not hashed again
    a.write_text(a.read_text().replace("alpha", "omega"))  # other bytes of the same size
    os.utime(a, (2, 2))
    changed = run(workdir, recipe)
    assert changed.manifest.counts.input == 2 and changed.manifest.stats["carry"]["replaced"] == 2
    assert sorted(line["text"] for line in outputs(Path(changed.version_uri))) == ["beta", "gamma", "omega"]


def test_a_file_changed_in_place_is_hashed_once(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Its size the same and its mtime moved, it was hashed to compare with its watermark, and again for
    # the watermark to stage: read twice more than the run needs.
    a = write_jsonl(workdir / "in" / "a.jsonl", [{"text": "alpha"}])
    recipe = {"dataset": "d", "sources": [{"path": "in"}], "record": {"kind": "document"}, "stages": []}
    run(workdir, recipe)
    hashed: list[str] = []
    hash_of = state.content_hash
    monkeypatch.setattr(state, "content_hash", lambda uri: hashed.append(Path(uri).name) or hash_of(uri))
    a.write_text(a.read_text().replace("alpha", "omega"))
    os.utime(a, (2, 2))
    assert run(workdir, recipe).manifest.counts.written == 1
    assert hashed == ["a.jsonl"]
    hashed.clear()
    assert run(workdir, recipe).message.startswith("nothing new")
    assert hashed == []  # the hash staged is the one of its new bytes


def test_files_listed_again_at_planning_are_not_hashed_again(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A changed file whose record was the kept copy of another input's content has that input read again:
    # the source is listed again, and each file new or changed since the last run was hashed again.
    a = write_jsonl(workdir / "in" / "a.jsonl", [{"text": "alpha"}])
    write_jsonl(workdir / "in" / "b.jsonl", [{"text": "alpha"}])
    recipe = {
        "dataset": "d",
        "sources": [{"path": "in"}],
        "record": {"kind": "document"},
        "stages": [{"type": "exact_dedup", "across_runs": True}],
        "output": {"validation_fraction": 0.0},
    }
    first = run(workdir, recipe)
    assert (first.manifest.counts.written, first.manifest.counts.duplicate) == (1, 1)
    hashed: list[str] = []
    hash_of = state.content_hash
    monkeypatch.setattr(state, "content_hash", lambda uri: hashed.append(Path(uri).name) or hash_of(uri))
    a.write_text(a.read_text().replace("alpha", "omega"))  # the kept copy of "alpha" changed in place
    os.utime(a, (2, 2))
    # Of another size than b.jsonl: a new file of a taken file's size is hashed first, to compare.
    write_jsonl(workdir / "in" / "c.jsonl", [{"text": "gamma ray"}])
    second = run(workdir, recipe)
    assert sorted(line["text"] for line in outputs(Path(second.version_uri))) == ["alpha", "gamma ray", "omega"]
    assert hashed == ["a.jsonl"]  # c.jsonl, new, is hashed as it is read


class _CountedReads:
    """A file handle that adds the bytes read through it to ``read[name]``."""

    def __init__(self, handle: pa.NativeFile, name: str, read: collections.Counter[str]) -> None:
        self.handle, self.name, self.read_bytes = handle, name, read

    def read(self, size: int | None = -1) -> bytes:
        data = self.handle.read(None if size is None or size < 0 else size)
        self.read_bytes[self.name] += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.handle.seek(offset, whence)

    def tell(self) -> int:
        return self.handle.tell()

    @property
    def closed(self) -> bool:
        return self.handle.closed

    def close(self) -> None:
        self.handle.close()


class _Counting:
    """A local filesystem that counts the bytes read of each file, by name, as a share's traffic would."""

    def __init__(self, fs: Any, read: collections.Counter[str]) -> None:
        self.fs, self.read = fs, read

    def open_input_file(self, path: str) -> pa.NativeFile:
        return pa.PythonFile(_CountedReads(self.fs.open_input_file(path), Path(path).name, self.read), mode="r")

    def open_input_stream(self, path: str, *args: Any, **kwargs: Any) -> pa.NativeFile:
        stream = self.fs.open_input_stream(path, *args, **kwargs)
        return pa.PythonFile(_CountedReads(stream, Path(path).name, self.read), mode="r")

    def __getattr__(self, name: str) -> object:
        return getattr(self.fs, name)


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """Bytes read of each input file (by name) from here on, by the sources and by their watermarks."""
    read: collections.Counter[str] = collections.Counter()
    for module in (state, files, documents):
        opened = module.filesystem
        monkeypatch.setattr(
            module, "filesystem", lambda uri, opened=opened: (_Counting(opened(uri)[0], read), opened(uri)[1])
        )
    return read


@pytest.mark.parametrize("name", ["a.jsonl", "a.jsonl.gz", "a.csv", "a.parquet", "a.md"])
def test_a_new_file_is_read_once_and_its_watermark_holds_the_hash_of_its_bytes(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # A file new to the source was hashed whole at planning, for its watermark, then read again by its
    # reader: on a network share each new byte crossed it twice. Only a touched file needs the hash
    # before it is read (to tell whether its bytes changed); a new one is hashed as its reader reads it.
    source = {"type": "documents", "path": "in"} if name.endswith(".md") else {"path": "in"}
    recipe = {"dataset": "d", "sources": [source], "record": {"kind": "document"}, "stages": []}
    a = workdir / "in" / name

    def write(words: list[str]) -> None:
        # Not packed (gzip level 0, Parquet uncompressed): the same words of other letters keep its size.
        if name.endswith(".gz"):
            lines = "".join(json.dumps({"text": word}) + "\n" for word in words)
            a.write_bytes(gzip.compress(lines.encode(), compresslevel=0, mtime=0))
        elif name.endswith(".parquet"):
            pq.write_table(pa.table({"text": words}), a, compression="none", use_dictionary=False)
        else:
            _rows_file(a, words[:300] if name.endswith(".md") else words)

    # About 3 MB (but for the document: a note of 300 sections).
    words = [f"{n} {hashlib.sha256(str(n).encode()).hexdigest() * 4}" for n in range(12_000)]
    a.parent.mkdir(parents=True)
    write(words)
    size = a.stat().st_size
    read, hashed = _count_reads(monkeypatch), []
    (reader,) = build_sources(load_recipe(write_recipe(workdir, recipe)))  # no state: reads, takes nothing
    assert sum(batch.input_records for batch in reader.batches()) >= 300
    reading = read.pop(name)  # what its reader reads of it (a Parquet file's footer too)
    assert reading <= size + 1024 * 1024  # about once (was, for a CSV file: its header read twice more, 7.3 MB)
    hash_of = state.content_hash
    monkeypatch.setattr(state, "content_hash", lambda uri: hashed.append(Path(uri).name) or hash_of(uri))
    first = run(workdir, recipe)
    assert first.manifest.counts.input >= 300
    assert read[name] <= reading + 64 * 1024  # (was: hashed whole, then read: its size more)
    assert hashed == []
    engine = sa.create_engine(f"sqlite:///{workdir}/state.db")
    with engine.connect() as db:
        (value,) = db.execute(sa.text("SELECT value FROM watermarks")).scalars()
    engine.dispose()
    (entry,) = list_files(str(a))
    # The value a run that hashed it at planning staged: the next runs compare with it alike.
    assert json.loads(value) == {
        "fingerprint": state.fingerprint(entry),
        "xxh3": xxhash.xxh3_128_hexdigest(a.read_bytes()),
    }
    assert run(workdir, recipe).message.startswith("nothing new")
    os.utime(a, (1, 1))  # touched: hashed (once) to tell its bytes did not change
    assert run(workdir, recipe).message.startswith("nothing new")
    assert hashed == [name]
    write([words[0].replace("0", "1", 2), *words[1:]])  # other bytes of the same size
    assert a.stat().st_size == size
    os.utime(a, (2, 2))
    changed = run(workdir, recipe)
    assert changed.manifest is not None and changed.manifest.stats["carry"]["replaced"] >= 1


def test_a_new_file_appended_after_it_was_listed_is_read_whole_again_once(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its hash is of the bytes its reader read, the appended line among them, and its fingerprint the
    # listing's: the next run sees a size it did not list, and reads it whole again, once.
    a = write_jsonl(workdir / "in" / "a.jsonl", [{"text": "alpha"}, {"text": "beta"}])
    listed = a.stat().st_size
    recipe = {"dataset": "d", "sources": [{"path": "in"}], "record": {"kind": "document"}, "stages": []}
    recipe["output"] = {"validation_fraction": 0.0}
    opened = files.open_input

    def appended_first(*args: Any) -> Any:
        with a.open("a") as more:
            more.write(json.dumps({"text": "gamma"}) + "\n")
        monkeypatch.setattr(files, "open_input", opened)
        return opened(*args)

    monkeypatch.setattr(files, "open_input", appended_first)
    assert run(workdir, recipe).manifest.counts.written == 3
    engine = sa.create_engine(f"sqlite:///{workdir}/state.db")
    with engine.connect() as db:
        (value,) = db.execute(sa.text("SELECT value FROM watermarks")).scalars()
    engine.dispose()
    assert json.loads(value)["fingerprint"].startswith(f"{listed}:")
    assert json.loads(value)["xxh3"] == xxhash.xxh3_128_hexdigest(a.read_bytes())
    again = run(workdir, recipe)
    assert again.manifest.counts.input == 3 and again.manifest.stats["carry"]["replaced"] == 3
    assert sorted(line["text"] for line in outputs(Path(again.version_uri))) == ["alpha", "beta", "gamma"]
    assert run(workdir, recipe).message.startswith("nothing new")


def test_a_new_file_no_reader_hashed_is_hashed_when_its_watermark_is_committed(tmp_path: Path) -> None:
    # Staged at listing to be hashed by its reader: where no reader did, its watermark is what a run that
    # hashed it at listing stages, not a value the state store cannot hold.
    a = write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": "alpha"}])
    engine = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    marks = state.Watermarks(engine, "d")
    mark = marks.for_source(FilesSource(path=str(tmp_path / "in")))
    (entry,) = state.new_files(list_files(str(tmp_path / "in")), mark, hashed_when_read=True)
    assert isinstance(mark.pending[entry.uri], state.HashedWhenRead)
    marks.commit("r1")
    with engine.connect() as db:
        (value,) = db.execute(sa.text("SELECT value FROM watermarks")).scalars()
    engine.dispose()
    assert json.loads(value) == {
        "fingerprint": state.fingerprint(entry),
        "xxh3": xxhash.xxh3_128_hexdigest(a.read_bytes()),
    }


def _rows_file(path: Path, texts: list[str]) -> Path:
    """``texts`` as the rows of a file of ``path``'s kind (a ``.md`` document: a section each)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": texts}), path)
    elif path.suffix == ".csv":
        path.write_text("text\n" + "".join(f"{text}\n" for text in texts))
    elif path.suffix == ".md":
        path.write_text("".join(f"# {text.title()}\n\n{text} is a word of this note.\n\n" for text in texts))
    else:
        write_jsonl(path, [{"text": text} for text in texts])
    return path


@pytest.mark.parametrize("name", ["a.jsonl", "a.csv", "a.parquet", "a.md"])
def test_a_file_touched_appended_truncated_and_restored_publishes_what_it_holds(workdir: Path, name: str) -> None:
    source = {"type": "documents", "path": "in"} if name.endswith(".md") else {"path": "in"}
    recipe = {"dataset": "d", "sources": [source], "record": {"kind": "document"}, "stages": []}
    recipe["output"] = {"validation_fraction": 0.0}

    def published(result: Any) -> list[str]:
        return sorted(line["text"] for line in outputs(Path(result.version_uri)))

    a = _rows_file(workdir / "in" / name, ["alpha", "beta"])
    _rows_file(workdir / "in" / f"b{a.suffix}", ["gamma"])
    first = published(run(workdir, recipe))
    os.utime(a, (1, 1))  # touched: the same bytes
    assert run(workdir, recipe).message.startswith("nothing new")
    _rows_file(a, ["alpha", "beta", "delta"])  # appended: its size moved
    os.utime(a, (2, 2))
    grown = published(run(workdir, recipe))
    assert len(grown) == len(first) + 1 and any("delta" in text for text in grown)
    backup = a.read_bytes()
    _rows_file(a, ["alpha"])  # truncated
    assert not any("beta" in text or "delta" in text for text in published(run(workdir, recipe)))
    a.write_bytes(backup)  # restored without -p: its size back, a new mtime
    assert published(run(workdir, recipe)) == grown
    os.utime(a, (3, 3))
    assert run(workdir, recipe).message.startswith("nothing new")


def test_watermarks_of_the_release_before_do_not_read_files_again(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file's watermark was its "size:mtime" alone: a file unchanged since is neither read nor hashed;
    # one touched is read again as before, and its watermark gains the hash of its bytes.
    a = write_jsonl(workdir / "in" / "a.jsonl", [{"text": "alpha"}])
    write_jsonl(workdir / "in" / "b.jsonl", [{"text": "beta"}])
    recipe = {"dataset": "d", "sources": [{"path": "in"}], "record": {"kind": "document"}, "stages": []}
    run(workdir, recipe)
    engine = sa.create_engine(f"sqlite:///{workdir}/state.db")
    with engine.begin() as db:
        for item, value in db.execute(sa.text("SELECT item, value FROM watermarks")).all():
            old = json.dumps(json.loads(value)["fingerprint"])
            db.execute(sa.text("UPDATE watermarks SET value = :v WHERE item = :i"), {"v": old, "i": item})
    engine.dispose()
    hashed: list[str] = []
    hash_of = state.content_hash
    monkeypatch.setattr(state, "content_hash", lambda uri: hashed.append(Path(uri).name) or hash_of(uri))
    assert run(workdir, recipe).message.startswith("nothing new")
    assert hashed == []
    os.utime(a, (1, 1))
    touched = run(workdir, recipe)
    assert touched.manifest.counts.input == 1 and touched.manifest.stats["carry"]["replaced"] == 1
    os.utime(a, (2, 2))
    assert run(workdir, recipe).message.startswith("nothing new")


def test_a_file_replaced_by_another_of_its_size_and_mtime_is_taken_once_touched(workdir: Path) -> None:
    # ``cp -p`` of another file of the same size: its size and mtime, all a run looks at before reading,
    # did not move, so it is not read (as in the release before); touched, it is hashed and taken.
    a = write_jsonl(workdir / "in" / "a.jsonl", [{"text": "alpha"}])
    other = write_jsonl(workdir / "other.jsonl", [{"text": "omega"}])
    recipe = {"dataset": "d", "sources": [{"path": "in"}], "record": {"kind": "document"}, "stages": []}
    run(workdir, recipe)
    stat = a.stat()
    a.write_bytes(other.read_bytes())
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert run(workdir, recipe).message.startswith("nothing new")
    a.touch()
    assert [line["text"] for line in outputs(Path(run(workdir, recipe).version_uri))] == ["omega"]


def two_hosts(tmp_path: Path, dest: str, first: str, second: str) -> tuple[Recipe, Recipe]:
    """Two copies of the ``docs`` recipe publishing to one ``dest``, as on two hosts: each in its own folder
    with its own state store (the SQLite file beside it), reading ``first`` and ``second`` in ``tmp_path``."""
    hosts = []
    for name, data in (("host1", first), ("host2", second)):
        (tmp_path / name).mkdir()
        hosts.append(load_recipe(write_recipe(tmp_path / name, docs_recipe(str(tmp_path / data), dest=dest))))
    return hosts[0], hosts[1]


def test_a_run_that_another_store_published_beside_meanwhile_refuses_to_publish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two copies of a recipe (two hosts, each with its own state store) publishing one dataset to one
    dest: the lock in a state store cannot keep them apart, so the run that comes second to publish
    refuses, rather than publish a second version of the same records (or a broken one: the first
    run's clean-up removed its staging folder)."""
    write_jsonl(tmp_path / "in.jsonl", [{"text": f"Parcel {n} left the depot."} for n in range(5)])
    dest = str(tmp_path / "shared")
    spec = docs_recipe(str(tmp_path / "in.jsonl"), dest=dest)
    for name in ("host1", "host2"):
        (tmp_path / name).mkdir()
    host1, host2 = (load_recipe(write_recipe(tmp_path / name, dict(spec))) for name in ("host1", "host2"))
    publish = DatasetWriter.publish

    def other_host_publishes_first(self: DatasetWriter, *args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(DatasetWriter, "publish", publish)
        assert run_recipe(host1).manifest.version == 1  # while this run (host2's) was about to publish
        return publish(self, *args, **kwargs)

    monkeypatch.setattr(DatasetWriter, "publish", other_host_publishes_first)
    with pytest.raises(LockLost, match=r"docs v1 was published at .*shared/docs while this run went on") as refused:
        run_recipe(host2)
    assert "share one state store" in str(refused.value)
    assert published_versions(dest, "docs") == [1]
    assert not list((tmp_path / "shared" / "docs" / "_staging").glob("*"))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_version_another_store_published_a_moment_before_is_never_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, request: pytest.FixtureRequest
) -> None:
    """The same two hosts, host1 publishing between host2's last look at the dest's versions and its
    publishing: host2 takes the number for free, and must not remove host1's version to put its own there."""
    import curation.writer as writer

    write_jsonl(tmp_path / "in.jsonl", [{"text": f"Parcel {n} left the depot."} for n in range(5)])
    write_jsonl(tmp_path / "other.jsonl", [{"text": "Only host1 reads this."}])
    dest = f"s3://{request.getfixturevalue('bucket')}/shared" if where == "s3" else str(tmp_path / "shared")
    host1, host2 = two_hosts(tmp_path, dest, "other.jsonl", "in.jsonl")
    listed = writer.published_versions

    def other_host_publishes_meanwhile(*args: Any) -> list[int]:
        found = listed(*args)
        monkeypatch.setattr(writer, "published_versions", listed)
        with monkeypatch.context() as patch:  # host2's staging folder stays (see the test above)
            patch.setattr(DatasetWriter, "clean_up", lambda _: None)
            assert run_recipe(host1).manifest.version == 1
        return found

    monkeypatch.setattr(writer, "published_versions", other_host_publishes_meanwhile)
    with pytest.raises(LockLost, match=r"docs v1 was published at .*shared/docs while this run went on"):
        run_recipe(host2)
    v1 = f"{dest}/docs/v1"
    assert read_manifest(v1).inputs[0].uri.endswith("other.jsonl") and verify_checksums(v1, read_manifest(v1)) == []


def test_a_version_another_store_published_whole_just_before_the_claim_is_never_emptied_on_s3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bucket: str
) -> None:
    """host1 (its own state store) claims, copies, writes its manifest and drops its claim between host2's
    look for a v1 manifest and host2's claim: host2 gets the claim, and must not take host1's files for
    what a killed run left."""
    import curation.writer as writer

    write_jsonl(tmp_path / "in.jsonl", [{"text": f"Parcel {n} left the depot."} for n in range(5)])
    write_jsonl(tmp_path / "other.jsonl", [{"text": "Only host1 reads this."}])
    dest = f"s3://{bucket}/shared"
    host1, host2 = two_hosts(tmp_path, dest, "other.jsonl", "in.jsonl")
    is_s3 = writer.is_s3

    def other_host_publishes_after_the_check(uri: str) -> bool:  # host2 asks right after it looked for v1
        if uri.endswith("/docs/v1"):
            monkeypatch.setattr(writer, "is_s3", is_s3)
            assert run_recipe(host1).manifest.version == 1
        return is_s3(uri)

    monkeypatch.setattr(writer, "is_s3", other_host_publishes_after_the_check)
    with pytest.raises(LockLost, match=r"docs v1 was published at .*shared/docs while this run went on"):
        run_recipe(host2)
    v1 = f"{dest}/docs/v1"
    assert read_manifest(v1).inputs[0].uri.endswith("other.jsonl") and verify_checksums(v1, read_manifest(v1)) == []


def test_two_stores_publishing_one_number_on_s3_at_once_publish_one_version_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bucket: str
) -> None:
    """host2 (its own state store) publishes while host1 has copied its files into v1 and is about to
    write its manifest: both found no v1. host2 must not copy into v1 (their files share names: the
    version host1 publishes would list checksums of host2's files) nor write a manifest there."""
    from connectors.state import HeldLock

    write_jsonl(tmp_path / "in.jsonl", [{"text": f"Parcel {n} left the depot."} for n in range(5)])
    write_jsonl(tmp_path / "other.jsonl", [{"text": "Only host2 reads this."}])
    dest = f"s3://{bucket}/shared"
    host1, host2 = two_hosts(tmp_path, dest, "in.jsonl", "other.jsonl")
    confirm = HeldLock.confirm

    def other_host_publishes_now(lock: HeldLock) -> None:  # host1's last step before its manifest
        monkeypatch.setattr(HeldLock, "confirm", confirm)
        with pytest.raises(LockLost, match=r"docs v1 is being published at .*shared/docs by run \w+") as refused:
            run_recipe(host2)
        assert "share one state store" in str(refused.value)
        confirm(lock)

    monkeypatch.setattr(HeldLock, "confirm", other_host_publishes_now)
    published = run_recipe(host1)
    assert published.manifest.version == 1 and published_versions(dest, "docs") == [1]
    assert verify_checksums(published.version_uri, published.manifest) == []
    s3 = boto3.client("s3")
    texts = [
        json.loads(line)["text"]
        for split in published.manifest.splits.values()
        for shard in split.shards
        for line in s3.get_object(Bucket=bucket, Key=f"shared/docs/v1/{shard.path}")["Body"].read().splitlines()
    ]
    assert sorted(texts) == [f"Parcel {n} left the depot." for n in range(5)]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="shared/")["Contents"]]
    left = [key for key in keys if "/_staging/" in key and not key.endswith("/")]  # folder markers are no files
    assert not left, "no claim and no staging folder is left"


@pytest.mark.parametrize("when", ["before the rename", "before the leftover is removed"])
def test_a_version_another_store_renames_into_place_as_this_run_publishes_is_the_same_clear_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """On local disk, host1 (its own state store) renames its v1 into place after host2 looked for a v1
    manifest: just before host2's own rename (which fails on host1's folder), or before host2 removes
    what a killed run left at v1 (host1's version, there now). host2 says why as when it found v1 before,
    not with the operating system's error, and host1's version stays whole."""
    import curation.writer as writer
    from connectors.state import HeldLock

    write_jsonl(tmp_path / "in.jsonl", [{"text": f"Parcel {n} left the depot."} for n in range(5)])
    write_jsonl(tmp_path / "other.jsonl", [{"text": "Only host1 reads this."}])
    dest = str(tmp_path / "shared")
    host1, host2 = two_hosts(tmp_path, dest, "other.jsonl", "in.jsonl")
    confirm = HeldLock.confirm

    def other_host_publishes_now(lock: HeldLock) -> None:  # host2's last step before its rename
        monkeypatch.setattr(HeldLock, "confirm", confirm)  # once: the writer holds host2's bound to this one
        if not published:
            published.append(run_recipe(host1).manifest.version)
        confirm(lock)

    published: list[int] = []

    is_s3 = writer.is_s3

    def other_host_publishes_after_the_check(uri: str) -> bool:  # host2 asks right after it looked for v1
        if uri.endswith("/docs/v1"):
            monkeypatch.setattr(writer, "is_s3", is_s3)
            assert run_recipe(host1).manifest.version == 1
        return is_s3(uri)

    if when == "before the rename":
        monkeypatch.setattr(HeldLock, "confirm", other_host_publishes_now)
    else:
        monkeypatch.setattr(writer, "is_s3", other_host_publishes_after_the_check)
    with pytest.raises(LockLost, match=r"docs v1 was published at .*shared/docs while this run went on"):
        run_recipe(host2)
    assert published == ([1] if when == "before the rename" else [])
    v1 = f"{dest}/docs/v1"
    assert read_manifest(v1).inputs[0].uri.endswith("other.jsonl") and verify_checksums(v1, read_manifest(v1)) == []


class _Killed(BaseException):
    """SIGKILL, as a test can raise it: no handler of the run's catches it as an error of its own."""


def test_a_run_that_stalled_past_its_lease_never_moves_the_version_of_the_run_that_took_over(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run A stalls past its lease (a paused VM) with its manifest staged, just before it clears v1 of what a
    killed run left there. Run B takes the lock over and renames its v1 into place. A wakes while B records
    what it published: it moved B's v1 into _staging/A-leftover to look for a manifest (and put it back), and
    killed between the two moves, that folder went with the clean-up of A's (a run the store counts as over):
    B's published version lost. A must not touch v1 once its lock is lost."""
    write_jsonl(workdir / "in.jsonl", [{"text": f"Parcel {n} left the depot."} for n in range(5)])
    recipe = docs_recipe("in.jsonl")
    remove_leftover, clean_up = DatasetWriter._remove_leftover, DatasetWriter.clean_up
    a_stalled, b_recorded, a_ended = threading.Event(), threading.Event(), threading.Event()
    a_writer: list[DatasetWriter] = []

    def stalls(self: DatasetWriter, target: str, meanwhile: str) -> None:
        if not a_writer:  # A's: its lease lapses here, and it wakes while B records
            a_writer.append(self)
            with sa.create_engine("sqlite:///state.db").begin() as db:
                db.execute(run_locks.delete())
            a_stalled.set()
            assert b_recorded.wait(60)
            self.fs = FailsOnceMoved(self.fs, _Killed(), "-leftover")  # A is killed right after its first move
        remove_leftover(self, target, meanwhile)

    def b_waits_for_a(self: DatasetWriter) -> None:
        if a_writer and self is not a_writer[0] and not b_recorded.is_set():
            b_recorded.set()  # B's v1 is visible; its clean-up comes once A is over
            assert a_ended.wait(60)
        clean_up(self)

    def run_a() -> None:
        try:
            run(workdir, recipe)
        except BaseException as error:  # checked below
            outcome.append(error)
        finally:
            a_ended.set()

    outcome: list[BaseException] = []
    monkeypatch.setattr(DatasetWriter, "_remove_leftover", stalls)
    monkeypatch.setattr(DatasetWriter, "clean_up", b_waits_for_a)
    a = threading.Thread(target=run_a)
    a.start()
    assert a_stalled.wait(60)
    b = run(workdir, recipe)
    a.join(60)
    assert b.manifest.version == 1
    assert published_versions(str(workdir / "output"), "docs") == [1]
    assert verify_checksums(b.version_uri, read_manifest(b.version_uri)) == []
    [error] = outcome
    assert isinstance(error, LockLost) and "taken over" in str(error)


@pytest.mark.parametrize("where", ["local", "s3"])
@pytest.mark.parametrize("ends", ["nothing new", "failed"])
def test_a_run_of_another_store_that_ends_leaves_the_staged_files_of_a_run_going_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, request: pytest.FixtureRequest, ends: str
) -> None:
    """host1 (its own state store) finds nothing new, or fails, while host2 stages its version: it removes
    only its own staging folder as it ends, so host2 publishes, whole (it published nothing when host1
    cleared the dataset's whole staging area)."""
    write_jsonl(tmp_path / "in.jsonl", [{"text": f"Parcel {n} left the depot."} for n in range(200)])
    write_jsonl(tmp_path / "other.jsonl", [{"text": "Only host1 reads this."}])
    dest = f"s3://{request.getfixturevalue('bucket')}/shared" if where == "s3" else str(tmp_path / "shared")
    for name in ("host1", "host2"):
        (tmp_path / name).mkdir()
    host1 = load_recipe(write_recipe(tmp_path / "host1", docs_recipe(str(tmp_path / "other.jsonl"), dest=dest)))
    # Small shards: those closed before host1 ends would be gone (on S3 too) if it cleared them.
    host2_spec = docs_recipe(str(tmp_path / "in.jsonl"), dest=dest, shard_max_bytes=1024)
    host2 = load_recipe(write_recipe(tmp_path / "host2", host2_spec))
    assert run_recipe(host1).manifest.version == 1
    publish = DatasetWriter.publish

    def other_host_ends(self: DatasetWriter, *args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(DatasetWriter, "publish", publish)
        if ends == "nothing new":
            assert run_recipe(host1).manifest is None
        else:
            (tmp_path / "other.jsonl").write_text('{"text": "A new line host1 reads."}\n')
            with monkeypatch.context() as patch, pytest.raises(RuntimeError):
                patch.setattr(DatasetWriter, "publish", lambda *_a, **_k: (_ for _ in ()).throw(RuntimeError("x")))
                run_recipe(host1)
        return publish(self, *args, **kwargs)

    monkeypatch.setattr(DatasetWriter, "publish", other_host_ends)
    result = run_recipe(host2)
    assert result.manifest.version == 2 and result.manifest.counts.written == 200
    assert verify_checksums(result.version_uri, result.manifest) == []
    assert published_versions(dest, "docs") == [1, 2]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_run_whose_staged_files_were_removed_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, request: pytest.FixtureRequest
) -> None:
    """A run of a release before this one (its own state store) clears the dataset's whole staging area as
    it ends, while host2 stages its version: host2 must not publish a version whose manifest lists files
    that are not there (training refuses it, and the next run would carry it forward)."""
    write_jsonl(tmp_path / "in.jsonl", [{"text": f"Parcel {n} left the depot."} for n in range(200)])
    dest = f"s3://{request.getfixturevalue('bucket')}/shared" if where == "s3" else str(tmp_path / "shared")
    (tmp_path / "host2").mkdir()
    # Small shards: those closed before the staging area is cleared are gone (on S3 too).
    host2_spec = docs_recipe(str(tmp_path / "in.jsonl"), dest=dest, shard_max_bytes=1024)
    host2 = load_recipe(write_recipe(tmp_path / "host2", host2_spec))
    publish = DatasetWriter.publish

    def staging_area_cleared(self: DatasetWriter, *args: Any, **kwargs: Any) -> Any:
        self.flush()  # the shards written so far are closed and there
        self.fs.delete_dir(self.staging.rsplit("/", 1)[0])
        return publish(self, *args, **kwargs)

    monkeypatch.setattr(DatasetWriter, "publish", staging_area_cleared)
    with pytest.raises(LockLost, match=r"removed while this run went on"):
        run_recipe(host2)
    assert published_versions(dest, "docs") == []


def _export(folder: Path, name: str, texts: list[str]) -> Path:
    """``texts`` as a table file of ``name``'s format, a ``text`` column."""
    path = folder / name
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": texts}), path)
    elif name.endswith(".csv"):
        path.write_text("text\n" + "".join(f"{text}\n" for text in texts))
    else:
        write_jsonl(path, [{"text": text} for text in texts])
    return path


def _refuse(monkeypatch: pytest.MonkeyPatch, refused: Path | None) -> None:
    """``refused`` cannot be opened (chmod 000 does not stop root, who may run the tests), by the reader
    nor by the listing, which hashes a local file's bytes; None: every file can be again."""
    import connectors.files as files
    from connectors.storage import filesystem

    for module in (files, state):
        monkeypatch.setattr(module, "filesystem", refusing(refused, filesystem) if refused else filesystem)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_a_table_file_that_cannot_be_read_is_quarantined_and_read_again_on_the_next_run(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    # One export denied among many failed every run of a scheduled job, and nothing new was published.
    (workdir / "in").mkdir()
    _export(workdir / "in", f"a{suffix}", ["refunds take five days", "gift cards cannot be refunded"])
    denied = _export(workdir / "in", f"b{suffix}", ["couriers are refunded with the item"])
    spec = docs_recipe("in")
    _refuse(monkeypatch, denied)
    first = run(workdir, spec)
    counts = first.manifest.counts
    assert (counts.input, counts.written, counts.quarantined) == (3, 2, 1)
    assert counts.reasons["quarantined"] == {"unreadable": 1}
    [refused] = set_aside(Path(first.version_uri))
    assert refused["detail"] == f"{denied}: cannot read (Permission denied); the next run reads it again"
    second = run(workdir, spec)  # still denied: nothing new, said
    assert second.manifest is None and "1 input(s) (files, image rows) still cannot be read" in second.message
    _refuse(monkeypatch, None)
    third = run(workdir, spec)
    assert (third.manifest.version, third.manifest.counts.input, third.manifest.counts.written) == (2, 1, 1)
    assert "couriers are refunded with the item" in [line["text"] for line in outputs(Path(third.version_uri))]
    assert run(workdir, spec).message.startswith("nothing new")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_files_read_ahead_one_into_the_next_keep_their_order_past_one_that_cannot_be_read(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    # Read ahead on a thread (the source is more than a block), the denied file between two others is
    # quarantined in its place and the one after it is read whole, each file once.
    import connectors.files as files

    monkeypatch.setattr(files, "BLOCK_BYTES", 64)
    (workdir / "in").mkdir()
    _export(workdir / "in", f"a{suffix}", [f"refunds take {n} days" for n in range(40)])
    denied = _export(workdir / "in", f"b{suffix}", ["couriers are refunded with the item"])
    _export(workdir / "in", f"c{suffix}", [f"gift card {n} cannot be refunded" for n in range(40)])
    spec = {**docs_recipe("in"), "batch_rows": 16}
    _refuse(monkeypatch, denied)
    first = run(workdir, spec)
    counts = first.manifest.counts
    assert (counts.input, counts.written, counts.quarantined) == (81, 80, 1)
    [refused] = set_aside(Path(first.version_uri))
    assert refused["detail"] == f"{denied}: cannot read (Permission denied); the next run reads it again"
    lineage = lineage_rows(Path(first.version_uri))
    read = [(Path(row["source"]["uri"]).name, row["source"]["line"]) for row in lineage]  # the published records
    first_line = 2 if suffix == ".csv" else 1  # a CSV file's header is its line 1
    assert sorted(read) == [(f"{name}{suffix}", first_line + n) for name in "ac" for n in range(40)]
    _refuse(monkeypatch, None)
    second = run(workdir, spec)  # the denied file alone, read again
    assert (second.manifest.counts.input, second.manifest.counts.written) == (1, 1)


def test_a_file_that_cannot_be_read_again_for_its_first_batchs_keys_is_quarantined_and_the_next_one_read(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A JSONL batch without a required column has the file searched for its key (another open); denied there,
    # the run failed, where a file denied at its first open is quarantined and read again next run.
    import connectors.files as files

    (workdir / "in").mkdir()
    denied = _export(workdir / "in", "a.jsonl", ["refunds take five days"])
    write_jsonl(workdir / "in" / "b.jsonl", [{"text": "gift cards cannot be refunded", "ref": "T-1"}])
    spec = {**docs_recipe("in"), "input_schema": {"columns": {"text": "str", "ref": "str"}}}
    opened, open_input = [], files.open_input

    def second_open_denied(fs: object, path: str, *args: object, **kwargs: object) -> object:
        opened.append(path)
        if path == str(denied) and opened.count(path) == 2:
            raise PermissionError(13, "Permission denied", path)
        return open_input(fs, path, *args, **kwargs)

    monkeypatch.setattr(files, "open_input", second_open_denied)
    first = run(workdir, spec)
    assert opened.count(str(denied)) == 2  # read, then searched for its key
    counts = first.manifest.counts
    assert (counts.input, counts.written, counts.quarantined) == (2, 1, 1)
    [refused] = set_aside(Path(first.version_uri))
    assert refused["detail"] == f"{denied}: cannot read (Permission denied); the next run reads it again"
    assert [line["text"] for line in outputs(Path(first.version_uri))] == ["gift cards cannot be refunded"]
    monkeypatch.setattr(files, "open_input", open_input)
    # Read again next run: its only record lacks the required column v1 was made naming, so it is quarantined
    # (a bad export), naming its line.
    [lacking] = set_aside(Path(run(workdir, spec).version_uri))
    assert (lacking["reason"], lacking["detail"]) == ("missing_column", f"{denied}:1: required column 'ref' is missing")


def test_a_full_refresh_that_can_read_none_of_its_inputs_says_a_run_with_full_refresh_reads_them_again(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It said "the next run reads it again", but a plain run reads on from v1's watermarks (the file is as it was).
    (workdir / "in").mkdir()
    denied = _export(workdir / "in", "a.jsonl", ["refunds take five days"])
    spec = docs_recipe("in")
    assert run(workdir, spec).manifest.counts.written == 1
    _refuse(monkeypatch, denied)
    with pytest.raises(StorageError) as failed:
        run(workdir, spec, full_refresh=True)
    assert str(failed.value) == (
        f"docs: 1 input(s) (files, image rows) cannot be read, e.g. {denied}: cannot read (Permission denied); "
        "the next run with --full-refresh reads it again"
    )
    _refuse(monkeypatch, None)
    assert run(workdir, spec).manifest is None  # nothing new since v1
    again = run(workdir, spec, full_refresh=True).manifest
    assert (again.version, again.counts.input, again.counts.written) == (2, 1, 1)


def test_a_first_run_that_can_read_none_of_its_inputs_publishes_nothing_and_fails(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It published a v1 holding no record (only the quarantine), which a consumer would train on.
    from typer.testing import CliRunner

    from curation.cli import app

    (workdir / "in").mkdir()
    denied = _export(workdir / "in", "a.jsonl", ["refunds take five days"])
    spec = docs_recipe("in")
    _refuse(monkeypatch, denied)
    said = CliRunner().invoke(app, ["run", str(write_recipe(workdir, spec)), "--quiet"], env={"COLUMNS": "300"})
    assert said.exit_code == 1, said.output
    assert (
        "run failed, nothing published: docs: 1 input(s) (files, image rows) cannot be read, e.g. "
        f"{denied}: cannot read (Permission denied); the next run reads it again" in " ".join(said.output.split())
    )
    assert published_versions(str(workdir / "output"), "docs") == []
    with pytest.raises(StorageError, match=r"1 input\(s\) \(files, image rows\) cannot be read"):
        run(workdir, spec)  # as often as it is run: nothing was committed
    _refuse(monkeypatch, None)
    first = run(workdir, spec)
    assert (first.manifest.version, first.manifest.counts.input, first.manifest.counts.written) == (1, 1, 1)


class _FailingLater:
    """A file that opens and gives its first ``good`` reads, then an I/O error (a disk or share failing)."""

    def __init__(self, handle: Any, good: int) -> None:
        self.handle, self.good = handle, good

    def read(self, *args: Any) -> bytes:
        if self.good == 0:
            raise OSError(5, "Input/output error")
        self.good -= 1
        return self.handle.read(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)

    def __enter__(self) -> _FailingLater:
        return self

    def __exit__(self, *_: object) -> None:
        self.handle.close()


def test_a_table_file_failing_after_its_first_records_still_fails_the_run(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its first records were passed on: quarantined as a whole, it would be read again from its start
    # next run, and those records published twice.
    import connectors.files as files
    from connectors.storage import filesystem

    failing = write_jsonl(workdir / "in" / "a.jsonl", [{"text": f"note {n} on refunds"} for n in range(5)])

    class Failing:
        def __init__(self, fs: Any) -> None:
            self.fs = fs

        def open_input_file(self, path: str) -> Any:
            handle = self.fs.open_input_file(path)
            return _FailingLater(handle, 1) if path == str(failing) else handle

        def __getattr__(self, name: str) -> Any:
            return getattr(self.fs, name)

    monkeypatch.setattr(files, "filesystem", lambda uri: (Failing(filesystem(uri)[0]), filesystem(uri)[1]))
    with pytest.raises(StorageError, match=rf"^{failing}: cannot read: Input/output error$"):
        run(workdir, {**docs_recipe("in"), "batch_rows": 2})


def test_a_damaged_parquet_file_still_fails_the_run(workdir: Path) -> None:
    # Arrow says so with an OSError too (no errno): its content, not its access, which no later run mends.
    import pyarrow.parquet as pq

    (workdir / "in").mkdir()
    pq.write_table(pa.table({"text": ["refunds take five days"]}), workdir / "in" / "a.parquet")
    data = (workdir / "in" / "a.parquet").read_bytes()
    (workdir / "in" / "a.parquet").write_bytes(data[:4] + b"x" * 20 + data[24:])  # its page header overwritten
    with pytest.raises(StorageError, match=r"a\.parquet: cannot read: Couldn.t deserialize thrift"):
        run(workdir, docs_recipe("in"))


def test_a_file_renamed_or_moved_since_it_was_taken_is_not_published_again(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A record's id holds its input's path: a file renamed between two scheduled runs was a new file, and
    # without a dedup stage its records were published a second time beside the carried ones.
    a = write_jsonl(workdir / "in" / "a.jsonl", [{"text": "alpha"}, {"text": "beta"}])
    b = write_jsonl(workdir / "in" / "b.jsonl", [{"text": "gamma"}])
    recipe = {"dataset": "d", "sources": [{"path": "in"}], "record": {"kind": "document"}, "stages": []}
    recipe["output"] = {"validation_fraction": 0.0}
    run(workdir, recipe)
    moved = workdir / "in" / "2026" / "renamed.jsonl"
    moved.parent.mkdir()
    a.rename(moved)
    write_jsonl(workdir / "in" / "c.jsonl", [{"text": "delta"}])
    write_jsonl(workdir / "in" / "d.jsonl", [{"text": "gammA"}])  # the size of b.jsonl, other bytes: read
    with caplog.at_level("INFO", logger="connectors.state"):
        second = run(workdir, recipe)
    assert f"{moved}: same bytes as {a}, which an earlier run took: not read again" in caplog.text
    published = sorted(line["text"] for line in outputs(Path(second.version_uri)))
    assert published == sorted(["alpha", "beta", "gamma", "delta", "gammA"])
    assert (second.manifest.counts.input, second.manifest.counts.carried) == (2, 3)
    assert second.manifest.stats["same_bytes"] == {str(moved): str(a)}
    assert run(workdir, recipe).message.startswith("nothing new")  # taken under its new name too
    # A copy that comes alone publishes nothing, so no version's stats name it: the run's message does.
    copy = workdir / "in" / "copy-of-b.jsonl"
    copy.write_bytes(b.read_bytes())
    alone = run(workdir, recipe)
    assert alone.manifest is None
    assert alone.message.startswith("nothing new")
    assert (
        f"1 new file(s) not read, holding the bytes of files taken before: {copy} (same bytes as {b})" in alone.message
    )
    copy.unlink()
    # A taken file's bytes moved away and its name given other bytes: both are read, nothing is lost.
    b.rename(workdir / "in" / "b-old.jsonl")
    write_jsonl(b, [{"text": "epsilon"}])
    third = run(workdir, recipe)
    published = sorted(line["text"] for line in outputs(Path(third.version_uri)))
    assert published == sorted(["alpha", "beta", "gamma", "delta", "gammA", "epsilon"])
    assert "same_bytes" not in third.manifest.stats


def s3_folder_taken(workdir: Path, bucket: str) -> tuple[Any, dict[str, Any]]:
    """An S3 folder holding a.jsonl (two lines), taken by a first run of a recipe without stages."""
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="in/a.jsonl", Body=b'{"text": "one"}\n{"text": "two"}\n')
    recipe = docs_recipe(f"s3://{bucket}/in/", dest=f"s3://{bucket}/out", validation_fraction=0.0)
    recipe["stages"] = []
    run(workdir, recipe)
    return s3, recipe


def test_an_s3_object_moved_since_it_was_taken_is_not_published_again(workdir: Path, bucket: str) -> None:
    s3, recipe = s3_folder_taken(workdir, bucket)
    s3.copy_object(Bucket=bucket, Key="in/done/a.jsonl", CopySource={"Bucket": bucket, "Key": "in/a.jsonl"})
    s3.delete_object(Bucket=bucket, Key="in/a.jsonl")
    assert run(workdir, recipe).message.startswith("nothing new")
    s3.copy_object(Bucket=bucket, Key="in/b.jsonl", CopySource={"Bucket": bucket, "Key": "in/done/a.jsonl"})
    s3.put_object(Bucket=bucket, Key="in/c.jsonl", Body=b'{"text": "three"}\n')
    third = run(workdir, recipe)
    assert (third.manifest.counts.input, third.manifest.counts.written, third.manifest.counts.carried) == (1, 1, 2)
    assert third.manifest.stats["same_bytes"] == {f"s3://{bucket}/in/b.jsonl": f"s3://{bucket}/in/a.jsonl"}


def _texts_by_input(version: str) -> dict[str, list[str]]:
    """Input file name -> the texts the version holds from it (carried or not), sorted."""
    from connectors.storage import filesystem

    fs, root = filesystem(version)
    shards: dict[str, list[str]] = {}
    found: dict[str, list[str]] = collections.defaultdict(list)
    for row in lineage_rows(version):
        if row["shard"] not in shards:
            with fs.open_input_stream(f"{root}/{row['shard']}") as stream:
                shards[row["shard"]] = [json.loads(line)["text"] for line in stream.read().splitlines()]
        found[row["source"]["uri"].rsplit("/", 1)[1]].append(shards[row["shard"]][row["line"] - 1])
    return {name: sorted(held) for name, held in found.items()}


@pytest.mark.parametrize("stages", [None, []], ids=["exact_dedup", "no_dedup"])
def test_a_copy_skipped_for_a_taken_files_bytes_is_read_when_that_file_changes(
    workdir: Path, stages: list | None
) -> None:
    # b.jsonl, a copy of a.jsonl, was not read: its lines were published under a.jsonl's name. a.jsonl edited,
    # its records are replaced by what it holds now, and b.jsonl's lines (the old ones) were in no input's.
    a = write_jsonl(workdir / "in" / "a.jsonl", [{"text": "alpha"}, {"text": "beta"}])
    recipe = docs_recipe("in", validation_fraction=0.0)
    if stages is not None:
        recipe["stages"] = stages
    run(workdir, recipe)
    for copy in ("b.jsonl", "b2.jsonl"):
        (workdir / "in" / copy).write_bytes(a.read_bytes())
    assert run(workdir, recipe).message.startswith("nothing new")
    (workdir / "in" / "b3.jsonl").write_bytes(a.read_bytes())  # new, with the bytes a.jsonl held
    write_jsonl(a, [{"text": "alpha, edited"}])
    third = run(workdir, recipe)
    # Read once: b2.jsonl and b3.jsonl hold b.jsonl's bytes now, as b.jsonl held a.jsonl's.
    assert _texts_by_input(third.version_uri) == {"a.jsonl": ["alpha, edited"], "b.jsonl": ["alpha", "beta"]}
    assert third.manifest.stats["same_bytes"] == {
        str(workdir / "in" / copy): str(workdir / "in" / "b.jsonl") for copy in ("b2.jsonl", "b3.jsonl")
    }
    assert run(workdir, recipe).message.startswith("nothing new")
    write_jsonl(workdir / "in" / "b.jsonl", [{"text": "beta, edited"}])
    fifth = run(workdir, recipe)
    assert _texts_by_input(fifth.version_uri) == {
        "a.jsonl": ["alpha, edited"],
        "b.jsonl": ["beta, edited"],
        "b2.jsonl": ["alpha", "beta"],
    }


def test_a_copy_of_a_taken_file_since_deleted_is_not_read_until_that_name_holds_other_lines(workdir: Path) -> None:
    # A deleted input's records stay: the copy's lines are published under the deleted file's name.
    a = write_jsonl(workdir / "in" / "a.jsonl", [{"text": "alpha"}, {"text": "beta"}])
    recipe = docs_recipe("in", validation_fraction=0.0)
    recipe["stages"] = []
    run(workdir, recipe)
    (workdir / "in" / "b.jsonl").write_bytes(a.read_bytes())
    write_jsonl(workdir / "in" / "c.jsonl", [{"text": "gamma"}])
    run(workdir, recipe)
    a.unlink()
    assert run(workdir, recipe).message.startswith("nothing new")
    write_jsonl(a, [{"text": "delta"}])  # its name given other lines: they replace its records
    fourth = run(workdir, recipe)
    assert _texts_by_input(fourth.version_uri) == {
        "a.jsonl": ["delta"],
        "b.jsonl": ["alpha", "beta"],
        "c.jsonl": ["gamma"],
    }


def test_an_s3_copy_skipped_for_a_taken_objects_etag_is_read_when_that_object_changes(
    workdir: Path, bucket: str
) -> None:
    s3, recipe = s3_folder_taken(workdir, bucket)
    s3.copy_object(Bucket=bucket, Key="in/b.jsonl", CopySource={"Bucket": bucket, "Key": "in/a.jsonl"})
    assert run(workdir, recipe).message.startswith("nothing new")
    s3.put_object(Bucket=bucket, Key="in/a.jsonl", Body=b'{"text": "one, edited"}\n')
    third = run(workdir, recipe)
    assert _texts_by_input(third.version_uri) == {"a.jsonl": ["one, edited"], "b.jsonl": ["one", "two"]}
    assert run(workdir, recipe).message.startswith("nothing new")


def copied_once_taken(workdir: Path, rows: list[dict[str, Any]]) -> tuple[Path, Path, dict[str, Any]]:
    """in/a.jsonl taken by a run of a recipe without stages, then copied to in/b.jsonl, which the next run
    finds nothing new in (the same bytes)."""
    a = write_jsonl(workdir / "in" / "a.jsonl", rows)
    recipe = docs_recipe("in", validation_fraction=0.0)
    recipe["stages"] = []
    run(workdir, recipe)
    b = workdir / "in" / "b.jsonl"
    b.write_bytes(a.read_bytes())
    assert run(workdir, recipe).message.startswith("nothing new")
    return a, b, recipe


def test_a_copy_skipped_for_a_taken_files_bytes_and_touched_since_is_still_read_when_that_file_changes(
    workdir: Path,
) -> None:
    # Its mtime moved, its bytes did not: compared by their hash, it stays what it was, a copy not read.
    a, b, recipe = copied_once_taken(workdir, [{"text": "alpha"}, {"text": "beta"}])
    os.utime(b, (1, 1))
    assert run(workdir, recipe).message.startswith("nothing new")
    write_jsonl(a, [{"text": "alpha, edited"}])
    fourth = run(workdir, recipe)
    assert _texts_by_input(fourth.version_uri) == {"a.jsonl": ["alpha, edited"], "b.jsonl": ["alpha", "beta"]}


def test_a_copy_skipped_for_a_taken_files_bytes_edited_with_that_file_is_read_once(workdir: Path) -> None:
    a, b, recipe = copied_once_taken(workdir, [{"text": "alpha"}])
    write_jsonl(a, [{"text": "alpha, edited"}])
    write_jsonl(b, [{"text": "beta"}])
    third = run(workdir, recipe)
    assert _texts_by_input(third.version_uri) == {"a.jsonl": ["alpha, edited"], "b.jsonl": ["beta"]}
    assert run(workdir, recipe).message.startswith("nothing new")  # its watermark kept: taken


def test_a_new_copy_of_a_file_read_again_unchanged_for_a_review_decision_is_not_read(tmp_path: Path) -> None:
    # A taken file read again for a review decision gives the records it gave (same ids): a new file holding
    # its bytes repeats them as any copy does. It was compared with nothing, read, and its lines published twice.
    a = write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": "alpha"}])
    engine = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    marks = state.Watermarks(engine, "d")
    state.new_files(list_files(str(tmp_path / "in")), marks.for_source(FilesSource(path=str(tmp_path / "in"))))
    marks.commit("r1")
    copy = tmp_path / "in" / "d.jsonl"
    copy.write_bytes(a.read_bytes())
    again = state.Watermarks(engine, "d", read_again={str(a)})
    mark = again.for_source(FilesSource(path=str(tmp_path / "in")))
    engine.dispose()
    assert [entry.uri for entry in state.new_files(list_files(str(tmp_path / "in")), mark)] == [str(a)]
    assert mark.same_bytes == {str(copy): str(a)}
