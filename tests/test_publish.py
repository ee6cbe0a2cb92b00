"""Publishing is atomic: a run interrupted before publish leaves no visible version, and a rerun
publishes a complete one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from connectors.storage import StorageError
from curation import writer
from curation.executors.local import AccountingError, LocalExecutor, Tally
from curation.pipeline import run_recipe
from curation.published import published_versions, read_manifest, verify_checksums
from curation.review.queue import review_items
from schemas.config import load_recipe
from tests.helpers import docs_recipe, lineage_rows, outputs, run, write_jsonl, write_recipe

RECIPE = {"dataset": "docs", "sources": [{"path": "docs.jsonl"}], "record": {"kind": "document"}}


class Interrupted(Exception):
    pass


class Killed(BaseException):  # as SIGKILL: nothing after it runs
    pass


def killed(*_: object) -> None:
    raise Killed


def test_interrupted_run_leaves_no_version_and_rerun_publishes(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_jsonl(workdir / "docs.jsonl", [{"text": f"document {i}"} for i in range(500)])
    recipe = load_recipe(write_recipe(workdir, dict(RECIPE, batch_rows=50)))

    original_write = writer.DatasetWriter.write
    calls = {"n": 0}

    def write_then_die(self: writer.DatasetWriter, batch) -> None:
        calls["n"] += 1
        if calls["n"] == 4:
            raise Interrupted("killed mid-run")
        original_write(self, batch)

    monkeypatch.setattr(writer.DatasetWriter, "write", write_then_die)
    with pytest.raises(Interrupted):
        run_recipe(recipe)
    dataset_dir = workdir / "output" / "docs"
    assert published_versions(str(workdir / "output"), "docs") == []
    assert not list(dataset_dir.glob("v*")), "no version folder may appear"
    assert not (dataset_dir / "_staging").exists(), "the aborted run's staging is removed"

    monkeypatch.setattr(writer.DatasetWriter, "write", original_write)
    result = run_recipe(recipe)
    assert result.manifest.version == 1
    assert result.manifest.counts.written == 500
    assert verify_checksums(result.version_uri, read_manifest(result.version_uri)) == []


def test_a_run_the_state_store_could_not_record_leaves_no_staging_folder(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its staging folder was made before the store recorded the run ("database is locked"): a folder of a run
    # no store knows of, which no later run removes (only those of runs known to be over).
    from curation.state import StateStore

    write_jsonl(workdir / "docs.jsonl", [{"text": f"document {i}"} for i in range(20)])
    recipe = load_recipe(write_recipe(workdir, dict(RECIPE)))

    def locked(*_: object, **__: object) -> None:
        raise sa.exc.OperationalError("INSERT INTO runs", {}, Exception("database is locked"))

    with monkeypatch.context() as patched:
        patched.setattr(StateStore, "run_started", locked)
        with pytest.raises(sa.exc.OperationalError):
            run_recipe(recipe)
    assert not (workdir / "output" / "docs").exists()  # a first run: not its dataset folder either
    assert run_recipe(recipe).manifest.version == 1


_KILLED_BEFORE_IT_IS_RECORDED = """
import os, signal, sys
from curation.pipeline import run_recipe
from curation.state import StateStore
from schemas.config import load_recipe

StateStore.run_started = lambda *_, **__: os.kill(os.getpid(), signal.SIGKILL)
run_recipe(load_recipe(sys.argv[1]))
"""


def test_a_run_killed_before_the_store_recorded_it_leaves_no_staging_folder(workdir: Path) -> None:
    # No handler runs on SIGKILL: a staging folder made with the writer, before the run was recorded, stayed
    # for good (no later run removes the folder of a run its store does not know of: another store's may be live).
    import subprocess
    import sys

    write_jsonl(workdir / "docs.jsonl", [{"text": f"document {i}"} for i in range(20)])
    path = write_recipe(workdir, dict(RECIPE))
    killed_run = subprocess.run(
        [sys.executable, "-c", _KILLED_BEFORE_IT_IS_RECORDED, str(path)],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        capture_output=True,
        text=True,
    )
    assert killed_run.returncode == -9, killed_run.stderr
    staging = workdir / "output" / "docs" / "_staging"
    assert not staging.exists() or list(staging.iterdir()) == []
    assert run_recipe(load_recipe(path)).manifest.version == 1
    assert not staging.exists() or list(staging.iterdir()) == []


def test_a_version_published_but_not_recorded_is_said_so_and_the_next_run_reads_everything_again(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The state store failed once the version was visible: the command said "nothing published".
    from typer.testing import CliRunner

    from connectors.state import Watermarks
    from curation.cli import app

    write_jsonl(workdir / "docs.jsonl", [{"text": f"document {i}"} for i in range(20)])
    path = write_recipe(workdir, dict(RECIPE))

    def locked(*_: object, **__: object) -> None:
        raise sa.exc.OperationalError("UPDATE watermarks", {}, Exception("database is locked"))

    with monkeypatch.context() as patched:
        patched.setattr(Watermarks, "commit", locked)
        said = CliRunner().invoke(app, ["run", str(path), "--quiet"], env={"COLUMNS": "300"})
    assert said.exit_code == 1, said.output
    output = " ".join(said.output.split())
    assert "nothing published" not in output
    assert (
        f"published, not recorded: {workdir}/output/docs/v1 is visible, but the state store did not record it" in output
    )
    assert "database is locked): the next run reads every input again" in output
    assert published_versions(str(workdir / "output"), "docs") == [1]
    assert not (workdir / "output" / "docs" / "_staging").exists() or not any(
        (workdir / "output" / "docs" / "_staging").iterdir()
    )
    again = run_recipe(load_recipe(path))
    assert (again.manifest.version, again.manifest.counts.input, again.manifest.counts.written) == (2, 20, 20)


def test_staged_files_without_manifest_are_not_a_version(workdir: Path) -> None:
    (workdir / "output" / "docs" / "v1" / "train").mkdir(parents=True)
    (workdir / "output" / "docs" / "v1" / "train" / "part-00000.jsonl").write_text('{"text": "half"}\n')
    assert published_versions(str(workdir / "output"), "docs") == []
    with pytest.raises(StorageError, match="not published, or was deleted since"):
        read_manifest(str(workdir / "output" / "docs" / "v1"))


def test_a_stage_that_loses_records_fails_the_run(workdir: Path) -> None:
    write_jsonl(workdir / "docs.jsonl", [{"text": f"document {i}"} for i in range(10)])
    recipe = load_recipe(write_recipe(workdir, dict(RECIPE)))

    class Leaky:
        name = "leaky"

        def __call__(self, batch):
            from curation.stages.base import StageResult

            return StageResult(kept=batch.slice(0, batch.num_rows - 1))

    from curation import pipeline

    original = pipeline.build_stages
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "build_stages", lambda r, *a: [*original(r, *a), Leaky()])
        with pytest.raises(AccountingError, match="leaky took 10 records"):
            run_recipe(recipe)
    assert published_versions(str(workdir / "output"), "docs") == []


def test_tally_refuses_counts_that_do_not_add_up() -> None:
    tally = Tally(input=5, written=3)
    tally.reasons[("duplicate", "exact_duplicate")] = 1
    with pytest.raises(ValueError, match="input"):
        tally.counts()


def test_executor_is_the_default(workdir: Path) -> None:
    write_jsonl(workdir / "docs.jsonl", [{"text": "a"}])
    result = run_recipe(load_recipe(write_recipe(workdir, dict(RECIPE))), executor=LocalExecutor())
    assert result.manifest.counts.written == 1


def test_a_run_killed_before_it_finished_is_marked_so_by_the_next(workdir: Path) -> None:
    from curation.state import StateStore

    write_jsonl(workdir / "in.jsonl", [{"text": "one"}])
    recipe = load_recipe(write_recipe(workdir, docs_recipe("in.jsonl")))
    state = StateStore(recipe.state)
    state.run_started("killedrun", "docs", "x")  # as a SIGKILLed run leaves it
    run_recipe(recipe)
    statuses = {run["run_id"]: run["status"] for run in state.last_runs("docs")}
    assert statuses.pop("killedrun") == "killed" and list(statuses.values()) == ["published"]


def test_a_version_folder_without_a_manifest_does_not_block_the_next_run(workdir: Path) -> None:
    write_jsonl(workdir / "in.jsonl", [{"text": "one"}])
    stray = workdir / "output" / "docs" / "v1" / "train"
    stray.mkdir(parents=True)
    (stray / "part-00000.jsonl").write_text('{"text": "left by hand"}\n')  # no manifest: no version
    recipe = load_recipe(write_recipe(workdir, docs_recipe("in.jsonl")))
    result = run_recipe(recipe)
    assert result.manifest.version == 1 and verify_checksums(result.version_uri, result.manifest) == []


def test_what_a_run_killed_as_it_cleared_a_version_folder_moved_aside_is_removed_by_the_next(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A version folder without a manifest is moved aside into the staging area, then deleted: killed between,
    # it stayed there for good (its name, the run's with "-leftover", is no run the store knows of).
    write_jsonl(workdir / "in.jsonl", [{"text": "one"}])
    stray = workdir / "output" / "docs" / "v1" / "train"
    stray.mkdir(parents=True)
    (stray / "part-00000.jsonl").write_text('{"text": "left by hand"}\n')
    recipe = load_recipe(write_recipe(workdir, docs_recipe("in.jsonl")))

    def killed_once_moved(self: writer.DatasetWriter, target: str, meanwhile: str) -> None:
        self.fs.move(target, f"{self.staging}-leftover")
        raise Killed

    with monkeypatch.context() as patched:
        patched.setattr(writer.DatasetWriter, "_remove_leftover", killed_once_moved)
        with pytest.raises(Killed):
            run_recipe(recipe)
    staging = workdir / "output" / "docs" / "_staging"
    assert [folder.name.endswith("-leftover") for folder in staging.iterdir()] == [True]
    result = run_recipe(recipe)
    assert result.manifest.version == 1
    assert not staging.exists() or list(staging.iterdir()) == []


def test_a_run_killed_after_its_version_became_visible_makes_the_next_read_everything_again(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from connectors.state import Watermarks

    write_jsonl(workdir / "in" / "a.jsonl", [{"text": "one"}, {"text": "two"}])
    recipe = load_recipe(
        write_recipe(workdir, {"dataset": "docs", "sources": [{"path": "in"}], "record": {"kind": "document"}})
    )
    run_recipe(recipe)
    write_jsonl(workdir / "in" / "b.jsonl", [{"text": "three"}])

    with monkeypatch.context() as patch:
        patch.setattr(Watermarks, "commit", killed)
        with pytest.raises(Killed):
            run_recipe(recipe)
    assert published_versions(str(workdir / "output"), "docs") == [1, 2]  # visible, but not recorded
    write_jsonl(workdir / "in" / "c.jsonl", [{"text": "four"}])
    with caplog.at_level(logging.WARNING):
        third = run_recipe(recipe)
    assert "killed before it recorded what it read" in caplog.text
    texts = sorted(line["text"] for line in outputs(Path(third.version_uri)))
    assert texts == ["four", "one", "three", "two"]  # each once: b.jsonl's "three" is not published twice


def test_a_version_left_unrecorded_stays_so_until_a_run_that_read_everything_publishes(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run that reads everything again because of a killed run's unrecorded version is killed too
    (a scheduler's next try, OOM): the run after it must still not trust the watermarks."""
    from connectors.state import Watermarks

    write_jsonl(workdir / "in" / "a.jsonl", [{"text": "one"}, {"text": "two"}])
    recipe = load_recipe(write_recipe(workdir, {**RECIPE, "sources": [{"path": "in"}]}))
    run_recipe(recipe)
    write_jsonl(workdir / "in" / "b.jsonl", [{"text": "three"}])
    for where in (Watermarks, LocalExecutor):  # v2 visible, unrecorded; then the next run, while it reads
        with monkeypatch.context() as patch:
            patch.setattr(where, "commit" if where is Watermarks else "run", killed)
            with pytest.raises(Killed):
                run_recipe(recipe)
    assert published_versions(str(workdir / "output"), "docs") == [1, 2]
    third = run_recipe(recipe)
    texts = sorted(line["text"] for line in outputs(Path(third.version_uri)))
    assert texts == ["one", "three", "two"]  # b.jsonl's "three" once, not carried from v2 and read again


@pytest.mark.parametrize("killed_in", ["signatures", "review queue"])
def test_a_run_killed_before_it_recorded_its_signatures_does_not_count_as_published(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, killed_in: str
) -> None:
    from curation import pipeline
    from curation.stages.dedup_index import SignatureIndex

    write_jsonl(workdir / "in" / "a.jsonl", [{"text": "one"}, {"text": "two"}])
    recipe = load_recipe(write_recipe(workdir, {**RECIPE, "sources": [{"path": "in"}]}))
    run_recipe(recipe)
    write_jsonl(workdir / "in" / "b.jsonl", [{"text": "three"}, "{not json"])  # a line for the review queue
    with monkeypatch.context() as patch:
        if killed_in == "signatures":
            patch.setattr(SignatureIndex, "published", killed)
        else:
            patch.setattr(pipeline, "add_items", killed)
        with pytest.raises(Killed):
            run_recipe(recipe)
    assert published_versions(str(workdir / "output"), "docs") == [1, 2]
    write_jsonl(workdir / "in" / "c.jsonl", [{"text": "three"}, {"text": "four"}])  # v2's content again
    third = run_recipe(recipe)
    texts = sorted(line["text"] for line in outputs(Path(third.version_uri)))
    assert texts == ["four", "one", "three", "two"]  # "three" once: v2's signatures were not lost
    with sa.create_engine(recipe.state).connect() as db:  # and the quarantined line reached the queue
        assert db.execute(sa.select(sa.func.count()).select_from(review_items)).scalar() == 1


def test_a_version_left_unrecorded_then_deleted_makes_the_next_run_read_everything_again(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Killed once it committed what it read, its v2 deleted (a rollback): the run was marked killed and
    # the watermarks trusted, so b.jsonl counted as read, in no version, and no run read it again.
    import shutil

    from curation.stages.dedup_index import SignatureIndex

    write_jsonl(workdir / "in" / "a.jsonl", [{"text": "one"}, {"text": "two"}])
    recipe = load_recipe(write_recipe(workdir, {**RECIPE, "sources": [{"path": "in"}]}))
    run_recipe(recipe)
    write_jsonl(workdir / "in" / "b.jsonl", [{"text": "three"}])
    with monkeypatch.context() as patch:
        patch.setattr(SignatureIndex, "published", killed)  # after the watermarks were committed
        with pytest.raises(Killed):
            run_recipe(recipe)
    shutil.rmtree(workdir / "output" / "docs" / "v2")
    with caplog.at_level("WARNING", logger="curation.pipeline"):
        third = run_recipe(recipe)
    assert f"docs v2 (not at {workdir}/output now) was published by a run killed before it recorded" in caplog.text
    assert third.manifest.version == 2
    assert sorted(line["text"] for line in outputs(Path(third.version_uri))) == ["one", "three", "two"]
    assert run_recipe(recipe).manifest is None  # recorded now: nothing new


def test_a_run_interrupted_as_its_version_became_visible_makes_the_next_read_everything_again(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    write_jsonl(workdir / "in" / "a.jsonl", [{"text": "one"}, {"text": "two"}])
    recipe = load_recipe(write_recipe(workdir, {**RECIPE, "sources": [{"path": "in"}]}))
    run_recipe(recipe)
    write_jsonl(workdir / "in" / "b.jsonl", [{"text": "three"}])
    publish = writer.DatasetWriter.publish

    def interrupted(self: writer.DatasetWriter, *args: object, **kwargs: object) -> object:
        publish(self, *args, **kwargs)
        raise KeyboardInterrupt  # ^C (SIGINT is not held off as SIGTERM is) once the version is visible

    with monkeypatch.context() as patch:
        patch.setattr(writer.DatasetWriter, "publish", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_recipe(recipe)
    assert published_versions(str(workdir / "output"), "docs") == [1, 2]
    third = run_recipe(recipe)
    texts = sorted(line["text"] for line in outputs(Path(third.version_uri)))
    assert texts == ["one", "three", "two"]  # b.jsonl's "three" once, not read again beside v2's copy


def test_a_run_removes_the_spill_a_killed_run_left(workdir: Path) -> None:
    import os
    import socket
    import subprocess
    import sys

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    spills = workdir / "spills"
    host = socket.gethostname()
    left = (
        spills / f"curation-spill-{host}-{ended.stdout.strip()}-abc"
    )  # as a run SIGKILLed while deduplicating leaves it
    left.mkdir(parents=True)
    (left / "2.arrow").write_bytes(b"a copy of that run's input")
    running = spills / f"curation-spill-{host}-{os.getppid()}-def"  # a run that is still going keeps its own
    running.mkdir()
    elsewhere = spills / f"curation-spill-other-host-{ended.stdout.strip()}-ghi"  # a run on another host, too
    elsewhere.mkdir()
    write_jsonl(workdir / "in.jsonl", [{"text": "one"}])
    run_recipe(load_recipe(write_recipe(workdir, docs_recipe("in.jsonl"))), executor=LocalExecutor(str(spills)))
    assert sorted(path.name for path in spills.iterdir()) == sorted([running.name, elsewhere.name])


_HOLDS_ITS_SPILL = """
import sys
from curation.executors import local
from curation.pipeline import run_recipe
from schemas.config import load_recipe

write = local.Spill.write


def held(self, batch):  # the run stops at the barrier, its spill on disk, until told to go on
    write(self, batch)
    print(self.prefix.parent, flush=True)
    sys.stdin.readline()


local.Spill.write = held
run_recipe(load_recipe(sys.argv[1]), executor=local.LocalExecutor(sys.argv[2]), full_refresh=True)
"""


def test_a_run_keeps_the_spill_of_a_run_in_another_container_and_removes_a_killed_ones(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs in two containers sharing a temp volume and a host name: a pid means nothing across them. A
    spill folder told by host and pid was taken for a killed run's and removed under the other run."""
    import subprocess
    import sys

    from curation.executors import local

    spills = workdir / "spills"
    spills.mkdir()
    (workdir / "other").mkdir()
    write_jsonl(workdir / "other" / "in.jsonl", [{"text": "theirs"}, {"text": "theirs too"}])
    theirs = write_recipe(workdir / "other", {**docs_recipe("in.jsonl"), "stages": [{"type": "exact_dedup"}]})

    def start() -> tuple[subprocess.Popen, Path]:
        other = subprocess.Popen(
            [sys.executable, "-c", _HOLDS_ITS_SPILL, str(theirs), str(spills)],
            cwd=workdir / "other",
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        return other, Path(other.stdout.readline().strip())

    write_jsonl(workdir / "in.jsonl", [{"text": "ours"}])
    ours = load_recipe(write_recipe(workdir, {**docs_recipe("in.jsonl"), "stages": [{"type": "exact_dedup"}]}))
    monkeypatch.setattr(local, "process_alive", lambda pid: False)  # as seen from the other container
    other, held = start()
    try:
        run_recipe(ours, executor=LocalExecutor(str(spills)))
        assert held.is_dir() and list(held.glob("*.arrow"))
        other.communicate("\n", timeout=120)
        assert other.returncode == 0  # its spill was there to read back
    finally:
        other.kill()
    killed, left = start()
    killed.kill()  # SIGKILL: its spill stays on disk
    killed.wait()
    assert list(left.glob("*.arrow"))
    run_recipe(ours, executor=LocalExecutor(str(spills)))
    assert not left.exists() and list(spills.iterdir()) == []


def test_a_full_refresh_runs_when_the_latest_manifest_is_damaged(workdir: Path) -> None:
    write_jsonl(workdir / "in.jsonl", [{"text": "one"}])
    recipe = load_recipe(write_recipe(workdir, docs_recipe("in.jsonl")))
    first = run_recipe(recipe)
    (Path(first.version_uri) / "manifest.json").write_text("{")
    assert run_recipe(recipe, full_refresh=True).manifest.version == 2  # it compares with no earlier version


def test_a_column_typed_apart_in_two_inputs_passes_the_dedup_barrier(workdir: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (workdir / "in").mkdir()
    pq.write_table(pa.table({"text": ["p1", "p2"], "customer": [17, 18]}), workdir / "in" / "a.parquet")
    write_jsonl(workdir / "in" / "b.jsonl", [{"text": "j1", "customer": "C-17"}, {"text": "j2", "customer": "17"}])
    recipe = docs_recipe("in/", validation_fraction=0.5, group_by="customer")
    recipe["stages"] = [{"type": "exact_dedup"}]
    # The spill before the dedup took every batch as the first one's types: "C-17" as an int64 failed the run.
    result = run_recipe(load_recipe(write_recipe(workdir, recipe)))
    assert result.manifest.counts.written == 4


def test_a_dictionary_column_with_other_values_in_each_input_passes_the_dedup_barrier(workdir: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (workdir / "in").mkdir()
    # A category column (pandas writes its categoricals so) is read dictionary-encoded, each file with its own
    # dictionary: an Arrow IPC file holds one dictionary per column, so the spill before the dedup failed the run.
    for number, regions in enumerate([["north", "south"], ["east", "west"]]):
        rows = {"text": [f"Document {number}-{i}." for i in range(4)], "region": [regions[i % 2] for i in range(4)]}
        table = pa.table({**rows, "region": pa.array(rows["region"]).dictionary_encode()})
        pq.write_table(table, workdir / "in" / f"{number}.parquet")
    recipe = docs_recipe("in/", validation_fraction=0.5, group_by="region")
    recipe["stages"] = [{"type": "exact_dedup"}]
    result = run_recipe(load_recipe(write_recipe(workdir, recipe)))
    assert result.manifest.counts.written == 8


def test_a_version_a_killed_run_left_moved_aside_is_put_back_not_deleted(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A run killed between the two renames of a version folder it found (another store's version, renamed
    # into place just then) left that version in _staging/RUN-leftover: the next clean-up deleted it.
    from curation.pipeline import _writer
    from curation.state import StateStore
    from curation.writer import new_run_id

    write_jsonl(workdir / "in.jsonl", [{"text": "one"}])
    recipe = load_recipe(write_recipe(workdir, docs_recipe("in.jsonl")))
    v1 = run_recipe(recipe).version_uri
    state = StateStore(recipe.state)
    state.run_started("killedrun", "docs", "x")
    state.run_finished("killedrun", "killed")
    staging = workdir / "output" / "docs" / "_staging"
    staging.mkdir()
    (workdir / "output" / "docs" / "v1").rename(staging / "killedrun-leftover")
    _writer(recipe, state, False, new_run_id()).clean_up()  # the next run's, as it ends
    assert verify_checksums(v1, read_manifest(v1)) == [] and "docs v1 was found in" in caplog.text
    assert not staging.exists()


def test_a_leftover_whose_manifest_cannot_be_read_is_left_said_and_the_other_folders_cleared(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Reading a leftover's manifest to put its version back raised, and the clean-up's loop stopped there
    # without a word: the folders of ended runs after it stayed, on every run.
    import logging
    from datetime import UTC, datetime

    import sqlalchemy as sa

    write_jsonl(workdir / "in.jsonl", [{"text": "alpha"}])
    spec = {"dataset": "d", "sources": [{"path": "in.jsonl"}], "record": {"kind": "document"}, "stages": []}
    assert run(workdir, spec).manifest.version == 1
    staging = workdir / "output" / "d" / "_staging"
    names = [f"run{i:02d}" for i in range(12)]
    with sa.create_engine(f"sqlite:///{workdir}/state.db").begin() as db:
        for name in names:
            db.execute(
                sa.text(
                    "INSERT INTO runs (run_id, dataset, recipe_sha256, status, started_at) "
                    "VALUES (:r, 'd', 'x', 'killed', :t)"
                ),
                {"r": name, "t": datetime.now(UTC)},
            )
    for name in names:
        (staging / name).mkdir(parents=True)
        (staging / name / "part.jsonl").write_text("x")
    bad = staging / "run05-leftover"  # killed as it was written: its manifest cut short
    bad.mkdir()
    (bad / "manifest.json").write_text('{"version": ')
    write_jsonl(workdir / "in.jsonl", [{"text": "alpha"}, {"text": "beta"}])
    with caplog.at_level(logging.WARNING, logger="curation"):
        assert run(workdir, spec).manifest.version == 2
    assert sorted(p.name for p in staging.iterdir()) == ["run05-leftover"]
    assert f"left in {bad} holds a manifest that cannot be read" in caplog.text


@pytest.mark.parametrize("then", ["killed", "deleted"])
def test_a_run_reading_everything_again_refuses_to_drop_the_records_of_inputs_moved_away(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, then: str
) -> None:
    """Inputs are moved away once taken, their records carried; a run that must read all input again (a version
    left unrecorded, or the last one deleted) publishes what is listed now alone: it fails before reading, naming
    the inputs whose records it would drop, until they are back or --full-refresh is asked."""
    import shutil

    from connectors.state import Watermarks
    from connectors.storage import StorageError

    recipe = load_recipe(write_recipe(workdir, {**RECIPE, "sources": [{"path": "in"}]}))
    write_jsonl(workdir / "in" / "day1.jsonl", [{"text": "one"}, {"text": "two"}])
    run_recipe(recipe)
    (workdir / "in" / "day1.jsonl").unlink()
    write_jsonl(workdir / "in" / "day2.jsonl", [{"text": "three"}])
    if then == "killed":
        with monkeypatch.context() as patch:
            patch.setattr(Watermarks, "commit", killed)
            with pytest.raises(Killed):
                run_recipe(recipe)
    else:
        run_recipe(recipe)
        shutil.rmtree(workdir / "output" / "docs" / "v2")
    assert published_versions(str(workdir / "output"), "docs") == ([1, 2] if then == "killed" else [1])
    (workdir / "in" / "day2.jsonl").unlink()
    write_jsonl(workdir / "in" / "day3.jsonl", [{"text": "four"}])
    latest = workdir / "output" / "docs" / f"v{published_versions(str(workdir / 'output'), 'docs')[-1]}"
    held = {row["id"] for row in lineage_rows(latest)}
    gone = ["day1.jsonl", "day2.jsonl"] if then == "killed" else ["day1.jsonl"]
    with pytest.raises(
        StorageError, match=rf"{len(held)} record\(s\) of {len(gone)} input\(s\) no longer listed"
    ) as raised:
        run_recipe(recipe)
    assert all(name in str(raised.value) for name in gone) and "--full-refresh" in str(raised.value)
    assert published_versions(str(workdir / "output"), "docs") == ([1, 2] if then == "killed" else [1])
    write_jsonl(workdir / "in" / "day1.jsonl", [{"text": "one"}, {"text": "two"}])  # put back
    if then == "killed":
        write_jsonl(workdir / "in" / "day2.jsonl", [{"text": "three"}])
    third = run_recipe(recipe)
    ids = {row["id"] for row in lineage_rows(third.version_uri)}
    assert held < ids and len(ids) == len(held) + 1  # each record once, and day3's


@pytest.mark.parametrize("then", ["killed", "deleted"])
def test_a_hugging_face_dataset_saved_again_with_other_shards_is_no_input_moved_away(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, then: str
) -> None:
    """Its data files are those its state.json names now: the old shards stay on disk, unread, as a plain run
    leaves them; a run reading all again was refused as if they had been moved away, with nothing to put back."""
    import shutil

    import datasets

    from connectors.state import Watermarks

    def save(texts: list[str], shards: int) -> None:
        datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(workdir / "ds"), num_shards=shards)

    texts = [f"document number {i} holds a few words of text" for i in range(6)]
    save(texts, 3)
    spec = {"dataset": "docs", "sources": [{"type": "hf", "path": "ds"}], "record": {"kind": "document"}}
    recipe = load_recipe(write_recipe(workdir, spec))
    run_recipe(recipe)
    texts[0] = "edited zero"
    if then == "killed":
        save(texts, 3)
        with monkeypatch.context() as patch:
            patch.setattr(Watermarks, "commit", killed)
            with pytest.raises(Killed):
                run_recipe(recipe)
    else:
        save(texts, 2)
        run_recipe(recipe)
        shutil.rmtree(workdir / "output" / "docs" / "v2")
    texts[1] = "edited one"
    save(texts, 1)
    published = run_recipe(recipe)
    assert sorted(line["text"] for line in outputs(Path(published.version_uri))) == sorted(texts)


def test_a_run_asked_to_read_everything_again_publishes_only_what_is_listed_now(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connectors.state import Watermarks

    recipe = load_recipe(write_recipe(workdir, {**RECIPE, "sources": [{"path": "in"}]}))
    write_jsonl(workdir / "in" / "day1.jsonl", [{"text": "one"}, {"text": "two"}])
    run_recipe(recipe)
    (workdir / "in" / "day1.jsonl").unlink()
    write_jsonl(workdir / "in" / "day2.jsonl", [{"text": "three"}])
    with monkeypatch.context() as patch:
        patch.setattr(Watermarks, "commit", killed)
        with pytest.raises(Killed):
            run_recipe(recipe)
    third = run_recipe(recipe, full_refresh=True)
    assert sorted(line["text"] for line in outputs(Path(third.version_uri))) == ["three"]
