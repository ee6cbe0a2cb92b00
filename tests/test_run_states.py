"""The states a run is recorded in around publishing when its lock is taken over: a run that stalled past
its lease (a paused VM) and the run that took over both end, and what each leaves recorded is true."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connectors.state import LockLost, RunLocked, Watermarks, run_locks
from curation import pipeline
from curation.stages.dedup_index import SignatureIndex
from curation.state import READ_AGAIN, StateStore
from curation.writer import DatasetWriter
from schemas.config import load_recipe
from tests.helpers import FailsOnceMoved, docs_recipe, outputs, run, write_jsonl, write_recipe

RECIPE = docs_recipe("in")


class _Killed(BaseException):
    """SIGKILL, as a test can raise it: no handler of the run's catches it as an error of its own."""


def _statuses() -> dict[str, str]:
    with sa.create_engine("sqlite:///state.db").connect() as db:
        return dict(db.execute(sa.text("SELECT run_id, status FROM runs")).tuples().all())


def _lease_lapses() -> None:
    """As the run that takes over sees a lock not renewed for a lease: its row goes."""
    with sa.create_engine("sqlite:///state.db").begin() as db:
        db.execute(run_locks.delete())


def _in_stalled_run(stalls: Callable[[], None], original: Callable[..., Any]) -> Callable[..., Any]:
    """``original``, after ``stalls()`` where the stalled run (not the main thread's) calls it."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if threading.current_thread() is not threading.main_thread():
            stalls()
        return result

    return wrapped


def _run_a(workdir: Path, outcome: list[BaseException]) -> threading.Thread:
    def run_a() -> None:
        try:
            run(workdir, RECIPE)
        except BaseException as error:  # checked by the test
            outcome.append(error)

    thread = threading.Thread(target=run_a)
    thread.start()
    return thread


def test_a_stalled_run_that_wakes_leaves_the_run_that_took_over_publishing(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's v2 is visible and what it read committed when A stalls past its lease. B takes over, reads
    everything again (v2 is not recorded as published) and publishes v3. A wakes while B is marked
    publishing, and records nothing more (its status stays publishing): were B marked killed then, B
    killed before it recorded v3 left a version the next run trusted the watermarks of A for, and
    c.jsonl's record was published twice."""
    write_jsonl(workdir / "in" / "a.jsonl", [{"text": "one"}, {"text": "two"}])
    run(workdir, RECIPE)
    write_jsonl(workdir / "in" / "b.jsonl", [{"text": "three"}])
    a_stalled, b_publishing = threading.Event(), threading.Event()

    def a_stalls() -> None:  # after its watermarks were committed, before it is marked published
        _lease_lapses()
        a_stalled.set()
        assert b_publishing.wait(60)

    def b_killed(*_: object, **__: object) -> None:  # B's v3 visible: killed before it records anything
        b_publishing.set()
        a.join(60)
        raise _Killed

    commit = Watermarks.commit
    outcome: list[BaseException] = []
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "add_items", _in_stalled_run(a_stalls, pipeline.add_items))
        patch.setattr(
            Watermarks,
            "commit",
            lambda self, *args, **kwargs: (
                b_killed() if threading.current_thread() is threading.main_thread() else commit(self, *args, **kwargs)
            ),
        )
        a = _run_a(workdir, outcome)
        assert a_stalled.wait(60)
        write_jsonl(workdir / "in" / "c.jsonl", [{"text": "four"}])
        try:
            with pytest.raises(_Killed):
                run(workdir, RECIPE)
        finally:
            b_publishing.set()
            a.join(60)
    [error] = outcome
    assert isinstance(error, pipeline.NotRecorded) and isinstance(error.error, LockLost)
    assert sorted(_statuses().values()) == ["published", "publishing", "publishing"]
    write_jsonl(workdir / "in" / "d.jsonl", [{"text": "five"}])
    fourth = run(workdir, RECIPE)
    assert fourth.manifest.version == 4
    assert sorted(line["text"] for line in outputs(Path(fourth.version_uri))) == ["five", "four", "one", "three", "two"]


def _stalled_as_its_version_becomes_visible(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> BaseException:
    """A is marked publishing v2 and stalls past its lease before the rename that makes v2 visible; B takes
    over (marking A killed: v2 is not there), publishes v2 and records it; A wakes and finds v2 there. The
    error A ends with."""
    write_jsonl(workdir / "in" / "a.jsonl", [{"text": "one"}, {"text": "two"}])
    run(workdir, RECIPE)
    write_jsonl(workdir / "in" / "b.jsonl", [{"text": "three"}])
    a_stalled, b_ended = threading.Event(), threading.Event()

    def a_stalls() -> None:
        _lease_lapses()
        a_stalled.set()
        assert b_ended.wait(60)

    outcome: list[BaseException] = []
    with monkeypatch.context() as patch:
        patch.setattr(StateStore, "run_publishing", _in_stalled_run(a_stalls, StateStore.run_publishing))
        a = _run_a(workdir, outcome)
        assert a_stalled.wait(60)
        try:
            assert run(workdir, RECIPE).manifest.version == 2
        finally:
            b_ended.set()
        a.join(60)
    [error] = outcome
    return error


def test_a_stalled_run_whose_version_number_the_run_that_took_over_published_is_recorded_failed(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A published nothing: recorded publishing (with v2, the number B published), the next run took B's
    recorded v2 for one a killed run left unrecorded, and read everything again."""
    error = _stalled_as_its_version_becomes_visible(workdir, monkeypatch)
    assert isinstance(error, LockLost)
    assert sorted(_statuses().values()) == ["failed", "published", "published"]
    write_jsonl(workdir / "in" / "c.jsonl", [{"text": "four"}])
    with caplog.at_level(logging.INFO, logger="curation.pipeline"):
        third = run(workdir, RECIPE)
    assert "killed before it recorded" not in caplog.text and "reads all of it again" not in caplog.text
    assert third.manifest.inputs[-1].uri.endswith("c.jsonl") and len(third.manifest.inputs) == 1
    assert sorted(line["text"] for line in outputs(Path(third.version_uri))) == ["four", "one", "three", "two"]


def test_a_stalled_run_that_finds_the_version_of_the_run_that_took_over_says_so(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one state store, the version that appeared while A went on is the run's that took A's lock over,
    not one of a run of another store."""
    message = str(_stalled_as_its_version_becomes_visible(workdir, monkeypatch))
    assert "docs v2 was published at" in message and "took over this run's lock" in message, message
    assert "does not use this run's state store" not in message


def test_a_stalled_run_whose_staging_folder_the_run_that_took_over_removed_says_so(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stalls past its lease with its shards staged; B takes over (marking A killed: still running) and
    fails, removing as it ends the staging folders of the runs that are over, A's among them. A wakes: with
    one state store, that was the run that took A's lock over, not a run of another store."""
    write_jsonl(workdir / "in" / "a.jsonl", [{"text": "one"}, {"text": "two"}])
    a_stalled, b_ended = threading.Event(), threading.Event()
    publish = DatasetWriter.publish

    def stalls_or_fails(self: DatasetWriter, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is threading.main_thread():
            raise RuntimeError("B fails")
        self.flush()  # its shards staged
        _lease_lapses()
        a_stalled.set()
        assert b_ended.wait(60)
        return publish(self, *args, **kwargs)

    outcome: list[BaseException] = []
    with monkeypatch.context() as patch:
        patch.setattr(DatasetWriter, "publish", stalls_or_fails)
        a = _run_a(workdir, outcome)
        assert a_stalled.wait(60)
        try:
            with pytest.raises(RuntimeError, match="B fails"):
                run(workdir, RECIPE)
        finally:
            b_ended.set()
        a.join(60)
    [error] = outcome
    assert isinstance(error, LockLost) and "removed while this run went on" in str(error)
    assert "took over this run's lock" in str(error) and "does not use this run's state store" not in str(error)
    assert run(workdir, RECIPE).manifest.version == 1


def test_a_rename_that_happened_though_it_was_answered_failed_is_this_runs_version(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On NFS a rename can happen and still be answered with an error (its answer lost, the retry finds no
    source). The version there is this run's own: recorded failed, the next run trusted the watermarks and
    published v2's records again."""
    write_jsonl(workdir / "in" / "a.jsonl", [{"text": "one"}, {"text": "two"}])
    run(workdir, RECIPE)
    write_jsonl(workdir / "in" / "b.jsonl", [{"text": "three"}])
    remove_leftover = DatasetWriter._remove_leftover

    def then_answered_failed(self: DatasetWriter, target: str, meanwhile: Callable[[], str]) -> None:
        remove_leftover(self, target, meanwhile)
        # The next move is the rename into place; its answer is lost, and the retry finds no source.
        self.fs = FailsOnceMoved(self.fs, FileNotFoundError("no such file or directory"))

    with monkeypatch.context() as patch:
        patch.setattr(DatasetWriter, "_remove_leftover", then_answered_failed)
        second = run(workdir, RECIPE)
    assert second.manifest.version == 2
    assert sorted(_statuses().values()) == ["published", "published"]
    write_jsonl(workdir / "in" / "c.jsonl", [{"text": "four"}])
    third = run(workdir, RECIPE)
    assert sorted(line["text"] for line in outputs(Path(third.version_uri))) == ["four", "one", "three", "two"]


def test_a_stalled_run_that_wakes_after_its_watermarks_commit_leaves_the_signatures_of_the_run_that_took_over(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's v2 is visible and its watermarks committed when A stalls past its lease. B takes over, reads
    everything again, and A wakes while B's signatures are pending: recording v2's, A removed every pending
    row not its own, B's among them, so v3 was recorded with no signature and the next run published
    again a record v3 holds."""
    recipe = {**RECIPE, "stages": [{"type": "exact_dedup"}]}
    write_jsonl(workdir / "in" / "a.jsonl", [{"text": "one"}, {"text": "two"}])
    run(workdir, recipe)
    write_jsonl(workdir / "in" / "b.jsonl", [{"text": "three"}])
    a_stalled, b_pending = threading.Event(), threading.Event()

    def a_stalls() -> None:  # its watermarks committed, nothing else recorded
        _lease_lapses()
        a_stalled.set()
        assert b_pending.wait(60)

    index_published = SignatureIndex.published

    def b_waits_for_a(self: SignatureIndex, *args: Any, **kwargs: Any) -> None:
        if threading.current_thread() is threading.main_thread():  # B's signatures staged: A wakes and ends
            b_pending.set()
            a.join(60)
        index_published(self, *args, **kwargs)

    outcome: list[BaseException] = []
    with monkeypatch.context() as patch:
        patch.setattr(Watermarks, "commit", _in_stalled_run(a_stalls, Watermarks.commit))
        patch.setattr(SignatureIndex, "published", b_waits_for_a)
        a = _run_a(workdir, outcome)
        assert a_stalled.wait(60)
        try:
            assert run(workdir, recipe).manifest.version == 3
        finally:
            b_pending.set()
            a.join(60)
    statuses = sorted(_statuses().values())
    write_jsonl(workdir / "in" / "c.jsonl", [{"text": "one"}, {"text": "four"}])
    fourth = run(workdir, recipe)
    assert sorted(line["text"] for line in outputs(Path(fourth.version_uri))) == ["four", "one", "three", "two"]
    assert fourth.manifest.counts.duplicate == 1
    [error] = outcome  # A recorded nothing after its watermarks: B, which read everything again, marked it killed
    assert isinstance(error, pipeline.NotRecorded) and isinstance(error.error, LockLost)
    assert statuses == ["killed", "published", "published"]


def test_a_run_with_an_in_memory_state_store_publishes_and_records(workdir: Path) -> None:
    # Each engine on `sqlite:///:memory:` is a database of its own: the signature index's held no lock table,
    # so confirming the lock there failed every such run after it published (NotRecorded).
    write_jsonl(workdir / "in" / "a.jsonl", [{"text": "one"}, {"text": "two"}, {"text": "one"}])
    recipe = {**docs_recipe("in"), "stages": [{"type": "exact_dedup"}], "state": "sqlite:///:memory:"}
    counts = run(workdir, recipe).manifest.counts
    assert (counts.input, counts.written, counts.duplicate) == (3, 2, 1)


def test_a_stalled_run_that_wakes_after_the_run_that_read_everything_again_for_it_stays_killed(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A stalls after its watermarks commit; B takes over, reads everything again for A's version, publishes and
    # records, marking A killed. A wakes to its lock lost: it marked itself publishing again, and the next run
    # read everything again (and said A was killed before it recorded what it read) for nothing.
    url, recipe = _published_then_more(workdir)
    commit = Watermarks.commit

    def then_b_ran_and_finished(self: Watermarks, run_id: str, *args: Any, **kwargs: Any) -> None:
        commit(self, run_id, *args, **kwargs)
        with sa.create_engine(url).begin() as db:
            db.execute(run_locks.delete())  # B took the lock over, and let it go as it ended
        StateStore(url).run_finished("b" * 12, "published", 3, superseded=[run_id])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Watermarks, "commit", then_b_ran_and_finished)
        with pytest.raises(pipeline.NotRecorded) as failed:
            run(workdir, recipe)
    assert isinstance(failed.value.error, LockLost)
    with sa.create_engine(url).begin() as db:
        assert db.execute(sa.text("SELECT status FROM runs ORDER BY started_at")).scalars().all() == [
            "published",
            "killed",
        ]
    write_jsonl(workdir / "in" / "c.jsonl", [{"text": "four"}])
    with caplog.at_level(logging.WARNING):
        counts = run(workdir, recipe).manifest.counts
    assert "killed before it recorded what it read" not in caplog.text
    assert (counts.input, counts.written) == (1, 1)


def test_a_run_that_fails_after_its_version_is_visible_stays_killed_once_a_later_run_read_everything_again(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A makes its version visible, then stalls past its lease; B takes over, reads everything again, publishes and
    # records, marking A killed (READ_AGAIN). A wakes to an error that is no LockLost: it was marked publishing
    # again, and the next run read everything again for nothing (r37).
    url, recipe = _published_then_more(workdir)
    publish_as = DatasetWriter._publish_as

    took_over: list[str] = []

    def visible_then_b_ran_then_error(self: DatasetWriter, *args: Any, **kwargs: Any) -> Any:
        published = publish_as(self, *args, **kwargs)  # the version is visible
        if took_over:  # B's own
            return published
        took_over.append(self.run_id)
        with sa.create_engine(url).begin() as db:
            db.execute(run_locks.delete())  # A stalled past its lease
        assert run(workdir, recipe).manifest.version == 3  # B: reads everything again for v2, and records
        with sa.create_engine(url).connect() as db:
            error = db.execute(sa.text("SELECT error FROM runs WHERE run_id = :r"), {"r": self.run_id}).scalar()
            assert error == READ_AGAIN
        raise OSError("lost answer, manifest unreadable")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DatasetWriter, "_publish_as", visible_then_b_ran_then_error)
        with pytest.raises(OSError):
            run(workdir, recipe)
    with sa.create_engine(url).begin() as db:
        rows = db.execute(sa.text("SELECT status, error FROM runs ORDER BY started_at")).all()
    write_jsonl(workdir / "in" / "c.jsonl", [{"text": "four"}])
    caplog.clear()  # B said it read everything again for A's version
    with caplog.at_level(logging.WARNING):
        counts = run(workdir, recipe).manifest.counts
    assert [status for status, _ in rows] == ["published", "killed", "published"]
    assert "killed before it recorded what it read" not in caplog.text
    assert (counts.input, counts.written) == (1, 1)


def _published_then_more(workdir: Path) -> tuple[str, dict[str, Any]]:
    """A state store's URL and a recipe with exact dedup, v1 published from a.jsonl, and b.jsonl added since."""
    url = "sqlite:///state.db"
    recipe = {**docs_recipe("in"), "stages": [{"type": "exact_dedup"}], "state": url}
    write_jsonl(workdir / "in" / "a.jsonl", [{"text": "one"}, {"text": "two"}])
    run(workdir, recipe)
    write_jsonl(workdir / "in" / "b.jsonl", [{"text": "three"}])
    return url, recipe


def test_a_run_refused_the_lock_names_the_holder_by_the_id_of_its_runs_row(workdir: Path) -> None:
    """The id a second run is refused with is the one to look up: the holder's row in the runs table, its
    staging folder and its log lines use it."""
    write_jsonl(workdir / "in" / "a.jsonl", [{"text": "one"}, {"text": "two"}])
    recipe = load_recipe(write_recipe(workdir, RECIPE))
    refusals: list[str] = []

    def second_run_while_writing(_written: int) -> None:
        if not refusals:
            with pytest.raises(RunLocked) as refused:
                run(workdir, RECIPE)
            refusals.append(str(refused.value))

    pipeline.run_recipe(recipe, on_written=second_run_while_writing)
    [run_id] = _statuses()
    [refusal] = refusals
    assert f"(run {run_id}, pid " in refusal
