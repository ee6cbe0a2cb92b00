"""Tables laid out as Spark, Hive and Athena write them (``tx/category=Dining/part-0.parquet``):
with ``hive_partitioning: true`` the ``key=value`` folders below the source's path are columns."""

from __future__ import annotations

import collections
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import connectors.files as files_module
from connectors.files import FilesSourceReader
from connectors.state import SourceWatermark, file_value, new_files
from connectors.storage import StorageError, hive_partitions, list_files
from schemas.config import FilesSource, RecipeError
from tests.helpers import outputs, run, write_jsonl, write_recipe

RECORD = {"kind": "instruction", "prompt": "{{ description }} in {{ year }}", "completion": "category"}


def recipe(path: str, **source: object) -> dict:
    return {"dataset": "tx", "sources": [{"path": path, **source}], "record": RECORD}


def lake(root: Path) -> None:
    write_jsonl(root / "category=Dining" / "year=2024" / "part-0.jsonl", [{"description": "coffee"}])
    write_jsonl(root / "category=Dining" / "year=2025" / "part-0.jsonl", [{"description": "lunch"}])
    pq.write_table(pa.table({"description": ["rent"]}), _made(root / "category=Housing" / "year=2025") / "p.parquet")
    # Spark writes a value with a slash in it quoted.
    write_jsonl(root / "category=Bills%2FUtilities" / "year=2025" / "part-0.jsonl", [{"description": "power"}])


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_partition_folders_become_columns_the_record_uses(workdir: Path) -> None:
    lake(workdir / "tx")
    result = run(workdir, recipe("tx/", hive_partitioning=True))
    got = sorted((row["prompt"], row["completion"]) for row in outputs(Path(result.version_uri)))
    assert got == [
        ("coffee in 2024", "Dining"),
        ("lunch in 2025", "Dining"),
        ("power in 2025", "Bills/Utilities"),
        ("rent in 2025", "Housing"),
    ]


def test_a_glob_takes_partitions_below_its_fixed_part_only(workdir: Path) -> None:
    # ``category=`` above the path the source names is where the table lies, not a column of it.
    lake(workdir / "category=all" / "tx")
    result = run(workdir, recipe("category=all/tx/*/year=2025/*", hive_partitioning=True))
    assert sorted(row["completion"] for row in outputs(Path(result.version_uri))) == [
        "Bills/Utilities",
        "Dining",
        "Housing",
    ]


def test_without_the_setting_partition_folders_are_only_folders(workdir: Path) -> None:
    lake(workdir / "tx")
    with pytest.raises(RecipeError, match=r"column 'year' is missing .*'hive_partitioning: true' on the source"):
        run(workdir, recipe("tx/"))


@pytest.mark.parametrize("setting", [False, True])
def test_a_folder_above_the_source_path_is_not_offered_as_a_partition(workdir: Path, setting: bool) -> None:
    # ``year=2024`` lies above the path the source names: the setting reads no column from it, so
    # the error said to set what would not help (or what was set already).
    write_jsonl(workdir / "lake" / "year=2024" / "tx" / "a.jsonl", [{"description": "tea"}])
    with pytest.raises(RecipeError, match=r"column 'year' is missing") as refused:
        run(workdir, recipe("lake/year=2024/tx", hive_partitioning=setting))
    assert "hive_partitioning" not in str(refused.value)


def test_check_names_the_setting_for_a_column_in_folder_names_and_accepts_it_once_set(workdir: Path) -> None:
    from typer.testing import CliRunner

    from curation.cli import app

    lake(workdir / "tx")
    said = {}
    for setting in (False, True):
        path = write_recipe(workdir, recipe("tx", hive_partitioning=setting))
        checked = CliRunner().invoke(app, ["check", str(path)], env={"COLUMNS": "300"})
        said[setting] = (checked.exit_code, " ".join(checked.output.split()))
    assert said[False][0] == 2 and "column 'year' is missing" in said[False][1]
    assert "'year=...' folders: 'hive_partitioning: true' on the source reads those as columns" in said[False][1]
    assert said[True][0] == 0 and "input error" not in said[True][1]


def test_files_named_without_a_suffix_as_hive_and_athena_write_them_are_read_in_the_declared_format(
    workdir: Path,
) -> None:
    # Hive names a table's files 000000_0, Athena's CTAS a query id: under a folder only names ending in
    # a known suffix were read, so such a table was "no input files match" whatever 'format' said.
    folder = _made(workdir / "tx" / "category=Housing" / "year=2025")
    pq.write_table(pa.table({"description": ["rent"]}), folder / "000000_0")
    pq.write_table(pa.table({"description": ["water"]}), folder / "20250101_093000_00012_abcde_5f1c2e")
    (folder / "_SUCCESS").write_text("")  # a marker still
    (folder.parent / "year=2025_$folder$").write_text("")  # and the folder marker Hadoop's S3 clients write
    (folder / "notes.txt").write_text("not a table file\n")  # another suffix: named, not read
    result = run(workdir, recipe("tx", hive_partitioning=True, format="parquet"))
    assert sorted(row["prompt"] for row in outputs(Path(result.version_uri))) == ["rent in 2025", "water in 2025"]


def test_files_hive_wrote_compressed_are_read_and_a_codec_that_cannot_be_unpacked_is_named(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A Hive table written with compression names its files 000000_0.gz, .deflate (zlib, Hive's default
    # codec), .bz2 or .zst: none was read (only "not a kind of file this source reads"), so a compressed
    # table was "no input files match". Hadoop's snappy framing no reader here unpacks: named as such.
    import bz2
    import gzip
    import zlib

    folder = _made(workdir / "tx" / "category=Dining" / "year=2025")
    # Hive's text format: fields split by \x01. A plain file opening with "x\x01" (zlib's header bytes 78 01)
    # is text all the same: zlib is told by the name.
    (folder / "000000_0").write_bytes(b"description\x01n\nx\x011\n")
    (folder / "000001_0.gz").write_bytes(gzip.compress(b"description\x01n\ncoffee\x012\n"))
    (folder / "000002_0.deflate").write_bytes(zlib.compress(b"description\x01n\nlunch\x013\n"))
    (folder / "000003_0.bz2").write_bytes(bz2.compress(b"description\x01n\ntea\x014\n"))
    with pa.CompressedOutputStream(str(folder / "000004_0.zst"), "zstd") as out:
        out.write(b"description\x01n\ncake\x015\n")
    snappy = folder / "000005_0.snappy"
    snappy.write_bytes(b"\x00\x00\x00\x10framed by Hadoop")
    with caplog.at_level("WARNING"):
        result = run(workdir, recipe("tx", hive_partitioning=True, format="csv", csv_delimiter="\x01"))
    assert sorted(row["prompt"] for row in outputs(Path(result.version_uri))) == [
        "cake in 2025",
        "coffee in 2025",
        "lunch in 2025",
        "tea in 2025",
        "x in 2025",
    ]
    [said] = [r.getMessage() for r in caplog.records if "not read" in r.getMessage()]
    assert "compressed with a codec this source cannot unpack (Hadoop's .snappy" in said
    assert said.endswith(str(snappy))


def test_a_partition_folder_whose_key_starts_with_an_underscore_is_read(workdir: Path) -> None:
    # Spark skips names starting with '_' unless they hold '=' (a partition column such as ``_batch``):
    # such a folder's files were skipped as if hidden, their records left out without a word.
    write_jsonl(workdir / "tx" / "_batch=7" / "year=2025" / "a.jsonl", [{"description": "tea", "category": "Dining"}])
    (workdir / "tx" / "_batch=7" / "year=2025" / "_SUCCESS").write_text("")  # still a marker, not input
    write_jsonl(workdir / "tx" / "_temporary" / "year=2025" / "b.jsonl", [{"description": "half-written"}])
    spec = recipe("tx", hive_partitioning=True)
    spec["record"] = {**RECORD, "prompt": "{{ description }} in {{ year }}, batch {{ _batch }}"}
    result = run(workdir, spec)
    assert [row["prompt"] for row in outputs(Path(result.version_uri))] == ["tea in 2025, batch 7"]


def test_a_column_also_named_by_a_partition_folder_is_refused_by_name(workdir: Path) -> None:
    path = write_jsonl(workdir / "tx" / "year=2024" / "a.jsonl", [{"description": "tea", "year": 2023}])
    with pytest.raises(StorageError, match=rf"{path}: 'year' is both a column of the file and a partition folder"):
        run(workdir, recipe("tx", hive_partitioning=True))


def test_partition_values_as_hive_writes_them() -> None:
    assert hive_partitions("/lake/tx", "/lake/tx/a=1/b=__HIVE_DEFAULT_PARTITION__/notes/c=x%3Dy/f.jsonl") == {
        "a": "1",
        "b": None,  # Hive's folder for rows whose value is null
        "c": "x=y",
    }
    # Arrow writes an empty text as ``k=`` (Spark writes it as Hive's null folder): read back as written.
    assert hive_partitions("/lake", "/lake/k=/f.jsonl") == {"k": ""}
    assert hive_partitions("/lake/tx/a=1/f.jsonl", "/lake/tx/a=1/f.jsonl") == {}  # a file named: nothing below
    assert hive_partitions("/lake/tx/", "/lake/tx2/a=1/f.jsonl") == {}  # not below: no partial folder name
    with pytest.raises(StorageError, match="'a' comes twice"):
        hive_partitions("/lake", "/lake/a=1/a=2/f.jsonl")


def test_partition_folders_on_s3(workdir: Path, bucket: str, aws_env: str) -> None:
    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.put_object(Bucket=bucket, Key="tx/category=Dining/year=2024/part-0.jsonl", Body=b'{"description": "tea"}\n')
    s3.put_object(Bucket=bucket, Key="tx/category=Travel/year=2025/part-0.jsonl", Body=b'{"description": "bus"}\n')
    result = run(workdir, recipe(f"s3://{bucket}/tx/", hive_partitioning=True))
    got = sorted((row["prompt"], row["completion"]) for row in outputs(Path(result.version_uri)))
    assert got == [("bus in 2025", "Travel"), ("tea in 2024", "Dining")]


def test_a_partition_folder_named_source_is_read_as_input_source(workdir: Path) -> None:
    write_jsonl(workdir / "tx" / "source=crm" / "a.jsonl", [{"description": "tea", "year": 2024}])
    spec = recipe("tx", hive_partitioning=True)
    spec["record"] = {**RECORD, "completion": "input_source"}
    result = run(workdir, spec)
    [row] = outputs(Path(result.version_uri))
    assert row["completion"] == "crm"


def test_rows_of_a_file_outside_a_partition_folder_hold_null_for_it(workdir: Path) -> None:
    # A table partitioned from some day on, beside its older flat files: the split groups by a column
    # only some paths hold, as Arrow reads such a layout (null for the rest), where it failed the run
    # on the first batch without it ("column 'year' is not in the records").
    write_jsonl(workdir / "tx" / "old.jsonl", [{"description": f"tea {i}", "category": "Dining"} for i in range(4)])
    write_jsonl(workdir / "tx" / "year=2025" / "a.jsonl", [{"description": "bus", "category": "Travel"}])
    # A file that holds the column itself keeps its values: only a missing column is filled.
    write_jsonl(workdir / "tx" / "older.jsonl", [{"description": "rent", "category": "Housing", "year": "2023"}])
    spec = recipe("tx", hive_partitioning=True)
    spec["record"] = {**RECORD, "prompt": "{{ description }}"}
    spec["output"] = {"validation_fraction": 0.5, "group_by": "year"}
    result = run(workdir, spec)
    assert sorted(row["prompt"] for row in outputs(Path(result.version_uri))) == [
        "bus",
        "rent",
        "tea 0",
        "tea 1",
        "tea 2",
        "tea 3",
    ]
    # The four without a year are a group each; the other two years one each.
    assert sum(result.manifest.split["groups"].values()) == 6


def test_partition_keys_of_files_moved_away_once_taken_are_kept_for_later_files(workdir: Path) -> None:
    # Keys came from this run's listing only: once the year=2024/ files were taken and moved away, a new
    # flat file had no 'year' at all (where the run before gave its flat files null), and the split by it
    # failed the run.
    write_jsonl(workdir / "tx" / "year=2024" / "a.jsonl", [{"description": "coffee", "category": "Dining"}])
    write_jsonl(workdir / "tx" / "old.jsonl", [{"description": "tea", "category": "Dining"}])
    spec = recipe("tx", hive_partitioning=True)
    spec["record"] = {**RECORD, "prompt": "{{ description }}"}
    spec["output"] = {"validation_fraction": 0.5, "group_by": "year"}
    run(workdir, spec)
    (workdir / "tx" / "year=2024" / "a.jsonl").rename(workdir / "a-taken.jsonl")
    write_jsonl(workdir / "tx" / "new.jsonl", [{"description": "bus", "category": "Travel"}])
    result = run(workdir, spec)
    assert result.manifest.counts.written == 1 and result.manifest.counts.quarantined == 0
    assert sorted(row["prompt"] for row in outputs(Path(result.version_uri))) == ["bus", "coffee", "tea"]


def test_partition_keys_of_a_hundred_thousand_files_taken_before_are_read_once_per_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each file earlier runs took was looked at alone, its filesystem made twice: about 7 s for 100,000
    # (23 s on S3) at every listing, and again in each Ray read task. A file's keys are its folder's.
    root = tmp_path / "tx"
    taken: dict[str, Any] = {f"{root}/year={2000 + n % 50}/month={n % 12}/p-{n}.jsonl": None for n in range(100_000)}
    taken[f"{root}/region=eu/region=us/a.jsonl"] = None  # a key twice: refused when it was listed, so no key
    taken[f"{root}/year=2001/month=1/region=eu/b.jsonl"] = None
    taken[f"{tmp_path}/elsewhere/kind=old/c.jsonl"] = None  # not below the source's path
    folders = {uri.rsplit("/", 1)[0] for uri in taken}
    looked_at: list[str] = []
    below = files_module.partitions_below
    monkeypatch.setattr(files_module, "partitions_below", lambda base, uri: looked_at.append(uri) or below(base, uri))
    reader = FilesSourceReader(
        FilesSource(path=str(root), hive_partitioning=True), batch_rows=10, watermark=SourceWatermark(taken)
    )
    assert reader._partition_keys() == ["year", "month", "region"]
    assert len(looked_at) == len(folders) < 1_000  # one file of each folder, not each of the 100,003


def test_a_split_by_a_partition_key_does_not_read_jsonl_files_twice_for_it(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No line has the key 'year' (its folder gives it): a batch lacking a column the split goes by had its
    # file read once more, to find whether a later line holds the key.
    def read_again(self: FilesSourceReader, entry: object, names: object) -> set[str]:
        raise AssertionError(f"{entry} read again for {names}")

    monkeypatch.setattr(FilesSourceReader, "_keys_held", read_again)
    write_jsonl(workdir / "tx" / "year=2024" / "a.jsonl", [{"description": "coffee", "category": "Dining"}])
    write_jsonl(workdir / "tx" / "b.jsonl", [{"description": "tea", "category": "Dining"}])
    spec = recipe("tx", hive_partitioning=True)
    spec["output"] = {"validation_fraction": 0.5, "group_by": "year"}
    spec["record"] = {**RECORD, "prompt": "{{ description }}"}
    result = run(workdir, spec)
    assert result.manifest.counts.written == 2


def _daily(workdir: Path) -> tuple[Path, dict]:
    """A year=2024/ file taken by a first run of a recipe whose prompt holds its year."""
    first = write_jsonl(workdir / "tx" / "year=2024" / "part-0.jsonl", [{"description": "balance check"}])
    spec = recipe("tx", hive_partitioning=True)
    spec["record"] = {**RECORD, "completion": "year"}
    run(workdir, spec)
    return first, spec


def _prompts(result: Any) -> list[str]:
    return sorted(row["prompt"] for row in outputs(Path(result.version_uri)))


def test_the_same_bytes_in_another_partition_are_other_records(workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A file was skipped as holding the bytes of a file taken before, its partition values not compared: the
    # same daily file under a new day=... folder published nothing, its rows' day never read.
    first, spec = _daily(workdir)
    again = _made(workdir / "tx" / "year=2025") / "part-0.jsonl"
    again.write_bytes(first.read_bytes())
    second = run(workdir, spec)
    assert _prompts(second) == ["balance check in 2024", "balance check in 2025"]
    assert "same_bytes" not in second.manifest.stats
    # In its own partition a copy is the same records still: not read again.
    copy = workdir / "tx" / "year=2025" / "part-1.jsonl"
    copy.write_bytes(first.read_bytes())
    assert run(workdir, spec).message.startswith("nothing new")
    # Moved to another partition, a file is new input there; the records its old path gave stay, as a deleted
    # file's do (inputs are often moved away once taken).
    again.rename(_made(workdir / "tx" / "year=2026") / "part-0.jsonl")
    moved = run(workdir, spec)
    assert moved.manifest.counts.written == 1
    assert _prompts(moved) == ["balance check in 2024", "balance check in 2025", "balance check in 2026"]


def test_a_file_skipped_for_the_bytes_of_another_partitions_file_by_a_release_before_is_read(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, spec = _daily(workdir)
    (_made(workdir / "tx" / "year=2025") / "part-0.jsonl").write_bytes(first.read_bytes())
    with monkeypatch.context() as before:  # as the release before compared files: by their bytes alone
        before.setattr(FilesSourceReader, "partition_of", lambda self, uri: None)
        assert run(workdir, spec).message.startswith("nothing new")
    result = run(workdir, spec)
    assert _prompts(result) == ["balance check in 2024", "balance check in 2025"]
    assert run(workdir, spec).message.startswith("nothing new")


def test_many_taken_files_of_the_same_bytes_are_each_placed_in_their_partition_once(tmp_path: Path) -> None:
    # Header-only CSVs, empty parts, the same daily file: each new file walked every taken file holding its
    # bytes and worked out that file's partition again (20k files: minutes where it took a fraction of a second).
    rows = [{"description": "balance check"}]
    taken = [write_jsonl(tmp_path / "tx" / f"day={d}" / f"h={h}" / "a.jsonl", rows) for d in range(8) for h in range(3)]
    config = FilesSource(path=str(tmp_path / "tx") + "/", hive_partitioning=True)
    watermark = SourceWatermark({entry.uri: file_value(entry) for entry in list_files(config.path)})
    copies = {_made(file.parent) / "b.jsonl": file for file in taken}  # a copy in its own partition: the same records
    fresh = [_made(tmp_path / "tx" / "day=8" / f"h={h}") / "a.jsonl" for h in range(3)]  # other records
    for file in [*copies, *fresh]:
        write_jsonl(file, rows)
    reader = FilesSourceReader(config, 100, watermark=watermark)
    calls: collections.Counter[str] = collections.Counter()

    def partition_of(uri: str) -> Hashable:
        calls[uri] += 1
        return reader.partition_of(uri)

    read = new_files(list_files(config.path), watermark, hashed_when_read=True, partition_of=partition_of)
    assert sorted(entry.uri for entry in read) == sorted(str(file) for file in fresh)
    assert watermark.same_bytes == {str(copy): str(file) for copy, file in copies.items()}
    assert max(calls[str(file)] for file in taken) == 1


def test_the_same_object_in_another_partition_on_s3_is_other_records(workdir: Path, bucket: str, aws_env: str) -> None:
    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.put_object(Bucket=bucket, Key="tx/year=2024/part-0.jsonl", Body=b'{"description": "tea"}\n')
    spec = recipe(f"s3://{bucket}/tx/", hive_partitioning=True)
    spec["record"] = {**RECORD, "completion": "year"}
    run(workdir, spec)
    source = {"Bucket": bucket, "Key": "tx/year=2024/part-0.jsonl"}
    s3.copy_object(Bucket=bucket, Key="tx/year=2025/part-0.jsonl", CopySource=source)  # the same ETag
    second = run(workdir, spec)
    assert _prompts(second) == ["tea in 2024", "tea in 2025"]
    s3.copy_object(Bucket=bucket, Key="tx/year=2025/part-1.jsonl", CopySource=source)
    third = run(workdir, spec)
    assert third.message.startswith("nothing new") and "part-1.jsonl (same bytes as" in third.message
