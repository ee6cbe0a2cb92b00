"""Reading ahead on a thread keeps order, raises the reader's errors, stays bounded and stops with its consumer."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.read_ahead import read_ahead


def test_items_arrive_in_order_and_a_reader_error_is_raised_to_the_consumer() -> None:
    assert list(read_ahead(iter(range(50)), depth=3)) == list(range(50))

    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("part-0003.jsonl: cannot read")

    stream = read_ahead(failing())
    assert next(stream) == 1
    with pytest.raises(ValueError, match=r"part-0003\.jsonl"):
        next(stream)


def test_the_reader_stays_at_most_depth_items_ahead_and_stops_when_the_consumer_does() -> None:
    produced: list[int] = []

    def counting() -> Iterator[int]:
        for n in range(1000):
            produced.append(n)
            yield n

    stream = read_ahead(counting(), depth=2)
    assert next(stream) == 0
    time.sleep(0.3)  # time enough for an unbounded reader to run far ahead
    # One taken, two queued, one held by the reader while it waits for room: never the whole input.
    assert len(produced) <= 5
    stream.close()  # the consumer stops early: the reader thread ends, it does not read on
    assert not any(t.name == "curation-read-ahead" and t.is_alive() for t in threading.enumerate())
    assert len(produced) <= 5


def test_a_run_whose_writer_fails_stops_every_thread_reading_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source's reading thread and the dedup barrier's spill reader both stop when the run fails, before the
    spill folder goes and while the error (which holds the run's frames) is still being handled."""
    from curation.pipeline import run_recipe
    from curation.writer import DatasetWriter
    from schemas.config import Recipe
    from tests.helpers import write_jsonl

    write_jsonl(tmp_path / "in.jsonl", [{"text": f"record {n}"} for n in range(200)])
    recipe = Recipe.model_validate(
        {
            "dataset": "d",
            "sources": [{"path": str(tmp_path / "in.jsonl")}],
            "record": {"kind": "document"},
            "batch_rows": 10,  # twenty batches: the threads are still reading ahead when the writer fails
            "output": {"dest": str(tmp_path / "out")},
            "state": f"sqlite:///{tmp_path}/state.db",
        }
    )

    def fail(self: DatasetWriter, batch: object) -> None:
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(DatasetWriter, "write", fail)
    try:
        run_recipe(recipe)
    except RuntimeError as error:  # its traceback holds the run's frames, as it does while the run aborts
        assert str(error) == "the disk is full"
        assert not any(t.name == "curation-read-ahead" and t.is_alive() for t in threading.enumerate())
    else:
        pytest.fail("the run did not fail")


def test_the_next_file_is_read_while_the_last_batch_of_the_one_before_is_worked_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread per file left the next file unread until the last batch of the one before was taken: the
    stages waited for its first block at every file's start (eight of them in a folder of eight parts)."""
    import connectors.files as files
    from curation.pipeline import build_sources
    from schemas.config import Recipe
    from tests.helpers import write_jsonl

    monkeypatch.setattr(files, "BLOCK_BYTES", 64)  # the source is more than a block: it is read ahead
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": "the first file's only record"}])
    write_jsonl(tmp_path / "in" / "b.jsonl", [{"text": f"record {n} of the second file"} for n in range(3)])
    opened, open_input = threading.Event(), files.open_input

    def watched(fs: object, path: str, *args: object, **kwargs: object) -> object:
        if path.endswith("b.jsonl"):
            opened.set()
        return open_input(fs, path, *args, **kwargs)

    monkeypatch.setattr(files, "open_input", watched)
    recipe = Recipe.model_validate(
        {"dataset": "d", "sources": [{"path": str(tmp_path / "in")}], "record": {"kind": "document"}}
    )
    [source] = build_sources(recipe)
    batches = source.batches()
    first = next(batches)  # a.jsonl's only batch, still being worked on
    assert first.rows["text"].to_pylist() == ["the first file's only record"]
    assert opened.wait(5)
    assert [text for batch in batches for text in batch.rows["text"].to_pylist()] == [
        f"record {n} of the second file" for n in range(3)
    ]


def test_a_generator_stopped_early_is_closed_on_its_thread_though_still_referenced() -> None:
    # Its clean-up (a file to close, a thread of its own to stop) waited for the last reference to it: the
    # frame that made it, which an error's traceback can hold for as long as the error is handled.
    cleaned = threading.Event()

    def items() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            cleaned.set()

    generator = items()  # referenced, as by the frame that made it
    ahead = read_ahead(generator)
    assert next(ahead) == 0
    ahead.close()
    assert cleaned.is_set()


def _input_files_open(folder: Path) -> list[str]:
    links = [Path("/proc/self/fd") / fd for fd in os.listdir("/proc/self/fd")]
    return [target for link in links if (target := os.path.realpath(link)).startswith(f"{folder}/")]


@pytest.mark.parametrize("stages", [[], [{"type": "exact_dedup"}], [{"type": "exact_dedup"}, "after"]])
def test_a_stop_seen_in_a_stage_stops_every_thread_reading_ahead_and_closes_the_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stages: list
) -> None:
    """SIGTERM's handler raises ``Stopped`` wherever the main thread is, most often in a stage: the threads
    reading ahead (the source's, its files', the dedup barrier's spill reader) and the file being read kept
    going while the error was handled, and the spill reader after its folder was gone."""
    import connectors.files as files
    import curation.executors.local as local
    from curation.pipeline import run_recipe
    from curation.stopping import Stopped
    from schemas.config import Recipe
    from tests.helpers import write_jsonl

    monkeypatch.setattr(files, "BLOCK_BYTES", 256)  # several blocks and files: the source's thread too
    for part in range(3):
        write_jsonl(tmp_path / "in" / f"p{part}.jsonl", [{"text": f"file {part} record {n}"} for n in range(200)])
    after = "after" in stages  # stopped by a stage after the barrier, once the spill is being read back
    spec = {
        "dataset": "d",
        "sources": [{"path": str(tmp_path / "in")}],
        "record": {"kind": "document"},
        "batch_rows": 10,
        "stages": [s for s in stages if s != "after"] + ([{"type": "length_filter", "min_chars": 1}] if after else []),
        "output": {"dest": str(tmp_path / "out")},
        "state": f"sqlite:///{tmp_path}/state.db",
    }
    reading_back, kept_rows = threading.Event(), local._kept_rows

    def watched(*args: object) -> Iterator[object]:
        for batch in kept_rows(*args):  # type: ignore[arg-type]
            reading_back.set()
            yield batch

    calls = []

    def stop_seen() -> None:
        calls.append(None)
        if (reading_back.is_set() and len(calls) > 3) if after else len(calls) == 3:
            raise Stopped(15)

    monkeypatch.setattr(local, "_kept_rows", watched)
    monkeypatch.setattr(local, "raise_if_stopped", stop_seen)
    try:
        run_recipe(Recipe.model_validate(spec))
    except Stopped:  # its traceback holds the run's frames, as while the CLI handles it
        assert reading_back.is_set() == after
        assert not [t.name for t in threading.enumerate() if t.name == "curation-read-ahead" and t.is_alive()]
        assert _input_files_open(tmp_path / "in") == []
    else:
        pytest.fail("the run was not stopped")
