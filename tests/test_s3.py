"""The same recipe against S3: input read from and output published to a real S3-compatible
server over HTTP (moto in server mode), then the published version read back."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors.storage import StorageError
from curation.published import published_versions, read_manifest, verify_checksums
from curation.state import StateStore
from tests.helpers import docs_recipe, read_lines, run, write_jsonl


def test_recipe_reads_from_and_publishes_to_s3(workdir: Path, bucket: str, aws_env: str) -> None:
    s3 = boto3.client("s3", endpoint_url=aws_env)
    jsonl = "".join(json.dumps({"q": f"question {i}", "a": f"answer {i}"}) + "\n" for i in range(120))
    jsonl += "{broken\n" + json.dumps({"q": "question 0", "a": "answer 0"}) + "\n"
    s3.put_object(Bucket=bucket, Key="raw/2026/part-1.jsonl", Body=jsonl.encode())
    table = pa.table({"q": [f"parquet q {i}" for i in range(30)], "a": [f"parquet a {i}" for i in range(30)]})
    pq.write_table(table, workdir / "p.parquet")
    s3.upload_file(str(workdir / "p.parquet"), bucket, "raw/2026/part-2.parquet")

    result = run(
        workdir,
        {
            "dataset": "qa",
            "sources": [{"path": f"s3://{bucket}/raw/2026/*"}],
            "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
            "output": {"dest": f"s3://{bucket}/curated"},
        },
    )
    version_uri = f"s3://{bucket}/curated/qa/v1"
    assert result.version_uri == version_uri
    assert published_versions(f"s3://{bucket}/curated", "qa") == [1]

    manifest = read_manifest(version_uri)
    assert manifest.counts.input == 152
    assert manifest.counts.written == 150
    assert manifest.counts.reasons == {"duplicate": {"exact_duplicate": 1}, "quarantined": {"malformed_json": 1}}
    assert verify_checksums(version_uri, manifest) == []
    assert [i.uri for i in manifest.inputs] == [
        f"s3://{bucket}/raw/2026/part-1.jsonl",
        f"s3://{bucket}/raw/2026/part-2.parquet",
    ]
    assert sum(i.records for i in manifest.inputs) == 152 and all(i.records for i in manifest.inputs)

    keys = {obj["Key"] for obj in s3.list_objects_v2(Bucket=bucket, Prefix="curated/")["Contents"]}
    assert not [key for key in keys if "/_staging/" in key and not key.endswith("/")], "staging must be gone"
    assert "curated/qa/v1/train/template.json" in keys

    # Read the published shards back over HTTP and load them as a consumer would.
    local = workdir / "download"
    for shard in manifest.splits["train"].shards:
        target = local / shard.path
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, f"curated/qa/v1/{shard.path}", str(target))
    loaded = datasets.load_dataset("json", data_files=sorted(str(p) for p in local.glob("train/*.jsonl")))["train"]
    assert len(loaded) == manifest.splits["train"].records
    assert set(loaded.column_names) == {"prompt", "completion"}


def test_second_run_publishes_next_version_on_s3(workdir: Path, bucket: str, aws_env: str) -> None:
    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.put_object(Bucket=bucket, Key="in/docs.jsonl", Body=b'{"text": "one"}\n{"text": "two"}\n')
    recipe = {
        "dataset": "docs",
        "sources": [{"path": f"s3://{bucket}/in/docs.jsonl"}],
        "record": {"kind": "document"},
        "output": {"dest": f"s3://{bucket}/out"},
    }
    run(workdir, recipe)
    second = run(workdir, recipe, full_refresh=True)  # the same input again, not only what is new
    assert second.manifest.version == 2
    assert published_versions(f"s3://{bucket}/out", "docs") == [1, 2]


def test_an_endpoint_set_in_the_aws_profile_is_where_the_run_reads_and_publishes(
    workdir: Path, bucket: str, aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MinIO's endpoint in the profile (`endpoint_url` in ~/.aws/config), not in the environment: boto3
    # lists there, and pyarrow, which does not read the profile's endpoint, must read and write there too.
    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.put_object(Bucket=bucket, Key="in/docs.jsonl", Body=b'{"text": "one"}\n{"text": "two"}\n')
    config = workdir / "aws-config"
    config.write_text(f"[profile minio]\nendpoint_url = {aws_env}\nregion = us-east-1\n")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "minio")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # a new process's, which reads the config file
    result = run(workdir, docs_recipe(f"s3://{bucket}/in/docs.jsonl", dest=f"s3://{bucket}/out"))
    assert result.manifest.counts.written == 2
    assert verify_checksums(f"s3://{bucket}/out/docs/v1", result.manifest) == []


def test_what_killed_runs_left_on_s3_is_cleared_by_the_next_one(workdir: Path, bucket: str, aws_env: str) -> None:
    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.put_object(Bucket=bucket, Key="in/docs.jsonl", Body=b'{"text": "one"}\n{"text": "two"}\n')
    # A run killed while copying into v1 (no manifest: no version) and one killed while staging.
    for key in ("out/docs/v1/train/part-v0-00000.jsonl", "out/docs/v1/lineage/part-00007.jsonl"):
        s3.put_object(Bucket=bucket, Key=key, Body=b'{"text": "stale"}\n')
    # The killed run is one this run's state store recorded; a run it does not know (of another state
    # store, which may be writing now) keeps its staging folder.
    StateStore(f"sqlite:///{workdir / 'state.db'}").run_started("deadrun", "docs", "0" * 64)
    for run_id in ("deadrun", "otherstore"):
        s3.put_object(Bucket=bucket, Key=f"out/docs/_staging/{run_id}/train/part-00000.jsonl", Body=b"{}\n")
    result = run(
        workdir, docs_recipe(f"s3://{bucket}/in/docs.jsonl", dest=f"s3://{bucket}/out", validation_fraction=0.0)
    )
    assert result.manifest.version == 1
    objects = s3.list_objects_v2(Bucket=bucket, Prefix="out/docs/")["Contents"]
    listed = {o["Key"] for o in objects if not o["Key"].endswith("/")}  # folder markers are no files
    besides = ["manifest.json", "report.html", "report.json"]
    files = {f"out/docs/v1/{path}" for path in [s.path for s in result.manifest.all_files()] + besides}
    # Nothing the manifest does not list, and no staging left behind but the other store's run's.
    assert listed == files | {"out/docs/_staging/otherstore/train/part-00000.jsonl"}
    assert verify_checksums(f"s3://{bucket}/out/docs/v1", result.manifest) == []


@pytest.mark.parametrize("stopped", [True, False])
def test_a_run_stopped_just_before_its_manifest_takes_its_copies_away(
    workdir: Path, bucket: str, aws_env: str, monkeypatch: pytest.MonkeyPatch, stopped: bool
) -> None:
    """Stopped (SIGTERM), or its lock lost, with every file copied into v1 but its manifest not yet written:
    the copies stayed under v1/ until a later run published that number. No run takes a claim over, so v1
    is still this run's even with its lock lost: it takes them away too."""
    import signal

    from connectors.state import HeldLock, LockLost
    from curation.stopping import Stopped

    def confirm(_: HeldLock) -> None:  # the last step before the manifest
        raise Stopped(signal.SIGTERM) if stopped else LockLost("taken over by another run")

    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.put_object(Bucket=bucket, Key="in/docs.jsonl", Body=b'{"text": "one"}\n{"text": "two"}\n')
    confirm_lock = HeldLock.confirm
    monkeypatch.setattr(HeldLock, "confirm", confirm)
    # All to train: the two records' ids (so their sides) hang on the random bucket name, and both could
    # go to validation (about one run in a hundred), leaving no train shard to find.
    recipe = docs_recipe(f"s3://{bucket}/in/docs.jsonl", dest=f"s3://{bucket}/out", validation_fraction=0)
    with pytest.raises(Stopped if stopped else LockLost):
        run(workdir, recipe)
    assert published_versions(f"s3://{bucket}/out", "docs") == []
    left = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/docs/").get("Contents", [])]
    assert [key for key in left if key.startswith("out/docs/v1/") or key.endswith(".claim")] == []
    # The next run of the store publishes v1: the number was given back.
    monkeypatch.setattr(HeldLock, "confirm", confirm_lock)
    result = run(workdir, recipe)
    assert result.manifest.version == 1 and verify_checksums(result.version_uri, result.manifest) == []


def test_a_run_whose_lock_lapsed_while_it_copied_leaves_the_version_the_run_that_took_over_published(
    workdir: Path, bucket: str, aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run A's lease lapses while it copies into v1/ (a stall); run B takes the lock over, counts A as ended
    (its staging folder removed) and publishes v2, leaving v1 to A, which may still write there. A's next
    copy fails, and it takes away what it had copied (it took away all of B's v1 when B took its claim over)."""

    from curation import writer

    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.put_object(Bucket=bucket, Key="in/a.jsonl", Body=b"".join(b'{"text": "a%d"}\n' % i for i in range(400)))
    recipe = docs_recipe(f"s3://{bucket}/in/", dest=f"s3://{bucket}/out", validation_fraction=0, shard_max_bytes=1024)
    taken_over: list = []
    stalled: list = []
    publish = writer.DatasetWriter._publish_s3

    class Stalling:  # A's store: its second copy comes after the stall
        def __init__(self, fs: object) -> None:
            self.fs, self.copies = fs, 0

        def __getattr__(self, name: str) -> object:
            return getattr(self.fs, name)

        def copy_file(self, source: str, destination: str) -> None:
            self.copies += 1
            if self.copies == 2 and not stalled:
                stalled.append(True)
                taken_over.append(lease_lapses_and_another_run_takes_over(s3, bucket, workdir, recipe))
            self.fs.copy_file(source, destination)

    def stalling(self: writer.DatasetWriter, *args: object, **kwargs: object) -> object:
        if not stalled:  # A's
            self.fs = Stalling(self.fs)
        return publish(self, *args, **kwargs)

    monkeypatch.setattr(writer.DatasetWriter, "_publish_s3", stalling)
    with pytest.raises(OSError):  # A: its staging folder went with B's clean-up
        run(workdir, recipe)
    [published] = taken_over
    assert published.manifest.version == 2
    assert published_versions(f"s3://{bucket}/out", "docs") == [2]
    assert verify_checksums(published.version_uri, read_manifest(published.version_uri)) == []
    left = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/docs/").get("Contents", [])]
    assert [key for key in left if key.startswith("out/docs/v1/") or key.endswith(".claim")] == []


def lease_lapses_and_another_run_takes_over(s3: Any, bucket: str, workdir: Path, recipe: dict[str, Any]) -> Any:
    """Run A's lease lapses (its lock row gone), in/b.jsonl arrives and run B takes the lock and publishes."""
    import sqlalchemy as sa

    with sa.create_engine("sqlite:///state.db").begin() as db:
        db.execute(sa.text("DELETE FROM run_locks"))
    s3.put_object(Bucket=bucket, Key="in/b.jsonl", Body=b'{"text": "b0"}\n')
    return run(workdir, recipe)


def test_a_run_stalled_past_its_lease_before_it_copies_leaves_the_version_the_run_that_took_over_published(
    workdir: Path, bucket: str, aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run A claims v1, then stalls past its lease (a paused VM) just before it clears v1/ of what a killed run
    left there and copies. Run B takes the lock over and publishes. When A wakes, it goes on with v1/: a
    number another run took must not be one A still writes or deletes under (it emptied B's v1, manifest and all)."""

    from curation import writer

    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.put_object(Bucket=bucket, Key="in/a.jsonl", Body=b"".join(b'{"text": "a%d"}\n' % i for i in range(40)))
    recipe = docs_recipe(f"s3://{bucket}/in/", dest=f"s3://{bucket}/out", validation_fraction=0)
    taken_over: list = []
    stalled: list = []
    publish = writer.DatasetWriter._publish_s3

    class Stalling:  # A's store: the stall comes between its claim of v1 and its first write under v1/
        def __init__(self, fs: object) -> None:
            self.fs = fs

        def __getattr__(self, name: str) -> object:
            return getattr(self.fs, name)

        def delete_dir_contents(self, *args: object, **kwargs: object) -> None:
            if not stalled:
                stalled.append(True)
                taken_over.append(lease_lapses_and_another_run_takes_over(s3, bucket, workdir, recipe))
            self.fs.delete_dir_contents(*args, **kwargs)

    def stalling(self: writer.DatasetWriter, *args: object, **kwargs: object) -> object:
        if not stalled:  # A's
            self.fs = Stalling(self.fs)
        return publish(self, *args, **kwargs)

    monkeypatch.setattr(writer.DatasetWriter, "_publish_s3", stalling)
    with pytest.raises(OSError):  # A publishes nothing: its staging folder went with B's clean-up
        run(workdir, recipe)
    [published] = taken_over
    assert published_versions(f"s3://{bucket}/out", "docs") == [published.manifest.version]
    assert verify_checksums(published.version_uri, read_manifest(published.version_uri)) == []
    # v1 was left to A (B published v2), and A, its copies failing, took away what it had there and its claim.
    left = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/docs/").get("Contents", [])]
    assert [key for key in left if key.startswith("out/docs/v1/") or key.endswith(".claim")] == []


def test_an_s3_landing_folder_emptied_once_taken_has_nothing_new(workdir: Path, bucket: str, aws_env: str) -> None:
    from connectors.storage import StorageError

    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.put_object(Bucket=bucket, Key="landing/a.jsonl", Body=b'{"text": "Parcel 1 left the depot."}\n')
    spec = docs_recipe(f"s3://{bucket}/landing/")
    run(workdir, spec)
    s3.delete_object(Bucket=bucket, Key="landing/a.jsonl")  # taken: the folder is gone with it
    assert "nothing new since docs v1" in run(workdir, spec).message
    with pytest.raises(StorageError, match="no input files match"):  # never gave a file: a wrong path
        run(workdir, {**spec, "dataset": "other", "sources": [{"path": f"s3://{bucket}/landin/"}]})


def test_s3_listing_finds_files_folders_and_globs_and_carries_each_etag(bucket: str, aws_env: str) -> None:
    from connectors.state import file_fingerprints
    from connectors.storage import list_files

    s3 = boto3.client("s3", endpoint_url=aws_env)
    keys = ["in/a.jsonl", "in/deep/b.jsonl", "in/c.csv", "in/_staging/d.jsonl", "in/.hidden.jsonl", "inbox/e.jsonl"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=f"{key}\n".encode())
    s3.put_object(Bucket=bucket, Key="in/empty/", Body=b"")  # a console-made folder marker
    uri = f"s3://{bucket}"

    def names(entries: list) -> list[str]:
        return [e.uri.removeprefix(f"{uri}/") for e in entries]

    # A folder: everything under it (not under a folder whose name starts the same), hidden and
    # staging files skipped, suffixes applied.
    assert names(list_files(f"{uri}/in", (".jsonl",))) == ["in/a.jsonl", "in/deep/b.jsonl"]
    assert names(list_files(f"{uri}/in/")) == ["in/a.jsonl", "in/c.csv", "in/deep/b.jsonl"]
    assert names(list_files(f"{uri}/in/a.jsonl")) == ["in/a.jsonl"]
    assert names(list_files(f"{uri}/in/*.csv")) == ["in/c.csv"]
    # A glob as a shell reads it: * within a folder, ** across folders; hidden and staging files skipped.
    assert names(list_files(f"{uri}/in*/*.jsonl")) == ["in/a.jsonl", "inbox/e.jsonl"]
    assert names(list_files(f"{uri}/in/**/*.jsonl")) == ["in/a.jsonl", "in/deep/b.jsonl"]
    assert names(list_files(f"{uri}/in/**")) == ["in/a.jsonl", "in/c.csv", "in/deep/b.jsonl"]
    # A glob ending in / names folders: the files under them, as a folder source reads them.
    assert names(list_files(f"{uri}/in*/", (".jsonl",))) == ["in/a.jsonl", "in/deep/b.jsonl", "inbox/e.jsonl"]
    assert list_files(f"{uri}/missing") == []  # on S3 an empty folder is no folder: the source decides

    # Each entry holds its object's ETag, and the fingerprints are those: no second listing (an entry
    # in a bucket that does not exist would fail one).
    entries = list_files(f"{uri}/in/")
    for entry in entries:
        etag = s3.head_object(Bucket=bucket, Key=entry.uri.removeprefix(f"{uri}/"))["ETag"].strip('"')
        assert entry.etag == etag
    assert list_files(f"{uri}/in/a.jsonl") == [e for e in entries if e.uri.endswith("/in/a.jsonl")]
    ghost = replace(entries[0], uri="s3://no-such-bucket-here/a.jsonl")
    assert file_fingerprints([*entries, ghost]) == {e.uri: e.etag for e in [*entries, ghost]}


def test_check_reads_the_head_of_each_object_as_a_run_does(workdir: Path, bucket: str, aws_env: str) -> None:
    from tests.helpers import write_recipe
    from tests.test_cli import curation

    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.put_object(Bucket=bucket, Key="raw/a.jsonl", Body=b'{"q": "Where?", "a": "Here."}\n')
    s3.put_object(Bucket=bucket, Key="raw/b.csv", Body=b"q,a,q\nWhere?,Here.,Why?\n")
    s3.put_object(Bucket=bucket, Key="raw/c.jsonl", Body=b'{"question": "Where?", "a": "Here."}\n')
    spec = {
        "dataset": "qa",
        "sources": [{"path": f"s3://{bucket}/raw/"}],
        "record": {"kind": "instruction", "prompt": "Q: {{ q }}", "completion": "a"},
        "output": {"dest": f"s3://{bucket}/curated"},
    }
    checked = curation("check", str(write_recipe(workdir, spec)), cwd=workdir)
    problems = [line for line in checked.stderr.splitlines() if line.startswith("input error ")]
    assert checked.returncode == 2 and problems == [
        f"input error s3://{bucket}/raw/b.csv: column(s) 'q' appear more than once in the header",
        f"input error s3://{bucket}/raw/c.jsonl:1: prompt: column 'q' is missing (the template uses it)",
    ], checked.stdout + checked.stderr
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="curated/")  # nothing run


def test_an_aws_profile_that_does_not_exist_is_one_line_naming_it(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.helpers import write_recipe
    from tests.test_cli import curation

    config = workdir / "aws-config"
    config.write_text("[profile minio]\nregion = us-east-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "mini0")  # misspelt
    write_recipe(workdir, docs_recipe("s3://some-bucket/in/docs.jsonl", dest="s3://some-bucket/out"))
    for command in ("run", "check"):
        result = curation(command, "recipe.yaml", cwd=workdir)
        assert result.returncode in (1, 2) and "Traceback" not in result.stderr + result.stdout, command
        assert "mini0" in result.stdout + result.stderr, command


def test_a_path_naming_an_empty_folder_marker_object_reads_the_folder_under_it(
    workdir: Path, bucket: str, aws_env: str
) -> None:
    # Spark (and tools such as s3fs) write a folder named like a file, `data.jsonl/part-*`, and some put an
    # empty object under the folder's own name beside it: the path names that folder, not the marker.
    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.put_object(Bucket=bucket, Key="exports/data.jsonl", Body=b"")
    s3.put_object(Bucket=bucket, Key="exports/data.jsonl/part-0.jsonl", Body=b'{"text": "one"}\n{"text": "two"}\n')
    s3.put_object(Bucket=bucket, Key="exports/data.jsonl/_SUCCESS", Body=b"")
    s3.put_object(Bucket=bucket, Key="exports/empty.jsonl", Body=b"")  # an empty file, no folder: itself
    result = run(workdir, docs_recipe(f"s3://{bucket}/exports/data.jsonl", dest=f"s3://{bucket}/out"))
    assert result.manifest.counts.written == 2
    assert [i.uri for i in result.manifest.inputs] == [f"s3://{bucket}/exports/data.jsonl/part-0.jsonl"]

    from connectors.storage import list_files

    assert [e.uri for e in list_files(f"s3://{bucket}/exports/empty.jsonl")] == [f"s3://{bucket}/exports/empty.jsonl"]


def test_objects_uploaded_gzip_compressed_under_a_plain_name_are_read_as_their_text(
    workdir: Path, bucket: str, aws_env: str
) -> None:
    # `aws s3 cp --content-encoding gzip` (as for web assets): S3 keeps the compressed bytes and no S3
    # client unpacks them; read as they are, every line was quarantined as malformed, the page as corrupt.
    import gzip

    import pyarrow.csv as pacsv

    s3 = boto3.client("s3", endpoint_url=aws_env)

    def put(key: str, body: bytes) -> None:
        s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress(body), ContentEncoding="gzip")

    put("raw/a.jsonl", b'{"q": "Where is it?", "a": "Here."}\n{"q": "When?", "a": "Now."}\n')
    put("raw/b.csv", b"q,a\nWho?,Me.\n")
    table = pa.table({"q": ["Why?"], "a": ["Because."]})
    pq.write_table(table, workdir / "c.parquet")
    put("raw/c.parquet", (workdir / "c.parquet").read_bytes())
    pacsv.write_csv(table, workdir / "d.csv")
    s3.put_object(Bucket=bucket, Key="raw/d.csv.gz", Body=gzip.compress((workdir / "d.csv").read_bytes()))
    spec = {
        "dataset": "qa",
        "sources": [{"path": f"s3://{bucket}/raw/"}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        "stages": [],
        "output": {"dest": f"s3://{bucket}/curated"},
    }
    manifest = run(workdir, spec).manifest
    assert (manifest.counts.input, manifest.counts.written) == (5, 5), manifest.counts
    assert "nothing new" in run(workdir, spec).message

    put("docs/policy.html", b"<html><body><h1>Refunds</h1><p>Refunds are paid within thirty days.</p></body></html>")
    docs = {
        "dataset": "kb",
        "sources": [{"type": "documents", "path": f"s3://{bucket}/docs/"}],
        "record": {"kind": "document"},
        "output": {"dest": f"s3://{bucket}/curated"},
    }
    manifest = run(workdir, docs).manifest
    assert (manifest.counts.written, manifest.counts.quarantined) == (1, 0), manifest.counts


def test_a_dest_bucket_that_does_not_exist_fails_the_run_by_name_before_it_reads(
    workdir: Path, bucket: str, aws_env: str
) -> None:
    # It listed as empty: the run read all its input, then failed to publish with Arrow's words for the upload.
    from connectors.storage import StorageError

    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.put_object(Bucket=bucket, Key="in/docs.jsonl", Body=b'{"text": "one"}\n')
    spec = docs_recipe(f"s3://{bucket}/in/docs.jsonl", dest="s3://no-such-bucket-here/out")
    with pytest.raises(StorageError, match=r"^s3://no-such-bucket-here/out: no such bucket$"):
        run(workdir, spec)

    from tests.helpers import write_recipe
    from tests.test_cli import curation

    checked = curation("check", str(write_recipe(workdir, spec)), cwd=workdir)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert "s3://no-such-bucket-here/out: no such bucket" in checked.stdout + checked.stderr


def test_an_object_deleted_between_listing_and_reading_fails_the_run_by_name_and_is_read_when_back(
    workdir: Path, bucket: str, aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import connectors.state
    from connectors.storage import StorageError

    s3 = boto3.client("s3", endpoint_url=aws_env)
    for name in ("a", "b"):
        s3.put_object(Bucket=bucket, Key=f"in/{name}.jsonl", Body=f'{{"text": "{name}"}}\n'.encode())
    listed = connectors.state.list_files

    def list_then_delete(*args: object, **kwargs: object) -> list:
        found = listed(*args, **kwargs)
        s3.delete_object(Bucket=bucket, Key="in/b.jsonl")  # moved away by another job meanwhile
        return found

    monkeypatch.setattr(connectors.state, "list_files", list_then_delete)
    spec = docs_recipe(f"s3://{bucket}/in/", dest=f"s3://{bucket}/out")
    with pytest.raises(StorageError, match=rf"^s3://{bucket}/in/b\.jsonl: gone since the run listed it"):
        run(workdir, spec)
    monkeypatch.undo()
    assert run(workdir, spec).manifest.counts.written == 1
    s3.put_object(Bucket=bucket, Key="in/b.jsonl", Body=b'{"text": "b"}\n')  # back, as it was
    assert [i.uri for i in run(workdir, spec).manifest.inputs] == [f"s3://{bucket}/in/b.jsonl"]


def test_an_object_key_with_an_empty_part_is_named_at_listing(workdir: Path, bucket: str, aws_env: str) -> None:
    # A producer that joined its prefix with one slash too many; read, it failed halfway through the run
    # as "not a readable jsonl file".
    from connectors.storage import StorageError

    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.put_object(Bucket=bucket, Key="in/a.jsonl", Body=b'{"text": "one"}\n')
    s3.put_object(Bucket=bucket, Key="in//b.jsonl", Body=b'{"text": "two"}\n')
    with pytest.raises(StorageError, match=rf"^s3://{bucket}/in//b\.jsonl: an S3 key with an empty part"):
        run(workdir, docs_recipe(f"s3://{bucket}/in/", dest=f"s3://{bucket}/out"))


def test_an_s3_path_naming_an_object_or_folder_with_a_bracket_reads_it_by_its_name(
    workdir: Path, bucket: str, aws_env: str
) -> None:
    from connectors.storage import list_files

    s3 = boto3.client("s3", endpoint_url=aws_env)
    for key in ("exports [2026]/a.jsonl", "exports [2026]/b.jsonl", "exports 2/c.jsonl"):
        s3.put_object(Bucket=bucket, Key=key, Body=f'{{"text": "{key}"}}\n'.encode())
    uri = f"s3://{bucket}"
    assert [e.uri for e in list_files(f"{uri}/exports [2026]/a.jsonl")] == [f"{uri}/exports [2026]/a.jsonl"]
    result = run(workdir, docs_recipe(f"{uri}/exports [2026]/", validation_fraction=0.0))
    texts = sorted(row["text"] for row in read_lines(sorted(Path(result.version_uri).glob("*/*.jsonl"))))
    assert texts == ["exports [2026]/a.jsonl", "exports [2026]/b.jsonl"]
    # No object or folder of the name: a pattern, and the run says it read it as one.
    assert [e.uri for e in list_files(f"{uri}/exports [2]/*.jsonl")] == [f"{uri}/exports 2/c.jsonl"]
    with pytest.raises(StorageError, match=r"no input files match \(read as a pattern"):
        run(workdir, docs_recipe(f"{uri}/exports [1999]/"))
    # Read by its name, a folder holding nothing readable is not said to be read as a pattern.
    s3.put_object(Bucket=bucket, Key="notes [1]/notes.txt", Body=b"to do\n")
    with pytest.raises(StorageError, match=r"no input files match") as refused:
        run(workdir, docs_recipe(f"{uri}/notes [1]/"))
    assert "pattern" not in str(refused.value)


def test_empty_folder_marker_objects_under_a_folder_or_glob_are_folders_not_inputs(
    workdir: Path, bucket: str, aws_env: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Some tools write an empty object named as each folder (`exports/2026` beside `exports/2026/a.jsonl`):
    # a glob matched it and its name told no format (the run failed), a folder named it as a file not read.
    from connectors.storage import list_files

    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.put_object(Bucket=bucket, Key="exports/2026", Body=b"")
    s3.put_object(Bucket=bucket, Key="exports/2026/a.jsonl", Body=b'{"text": "one"}\n')
    s3.put_object(Bucket=bucket, Key="exports/b.jsonl", Body=b'{"text": "two"}\n')
    s3.put_object(Bucket=bucket, Key="exports/empty.jsonl", Body=b"")  # an empty file stays one
    root = f"s3://{bucket}/exports"
    assert [e.uri for e in list_files(f"{root}/*")] == [f"{root}/b.jsonl", f"{root}/empty.jsonl"]
    result = run(workdir, docs_recipe(f"{root}/*", dest=f"s3://{bucket}/out"))
    assert [i.uri for i in result.manifest.inputs] == [f"{root}/b.jsonl", f"{root}/empty.jsonl"]

    listed = list_files(f"{root}/", (".jsonl",), name_unread=True)
    assert [e.uri for e in listed] == [f"{root}/2026/a.jsonl", f"{root}/b.jsonl", f"{root}/empty.jsonl"]
    assert "not read" not in caplog.text


def test_a_store_that_lists_objects_without_an_etag_is_fingerprinted_by_size_and_time(
    workdir: Path, bucket: str, aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Some S3-compatible stores leave the ETag out of a listing: the run failed with a KeyError traceback.
    import connectors.storage as storage

    def without_etags(parsed: dict, **_: object) -> None:  # the real server's answer, less its ETags
        parsed.pop("ETag", None)
        for item in parsed.get("Contents", []):
            item.pop("ETag", None)

    def client() -> object:
        made = boto3.client("s3", endpoint_url=aws_env)
        made.meta.events.register("after-call.s3.ListObjectsV2", lambda parsed, **kw: without_etags(parsed))
        made.meta.events.register("after-call.s3.HeadObject", lambda parsed, **kw: without_etags(parsed))
        return made

    monkeypatch.setattr(storage, "_s3_client", client)
    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.put_object(Bucket=bucket, Key="landing/a.jsonl", Body=b'{"text": "Parcel 1 left the depot."}\n')
    [entry] = storage.list_files(f"s3://{bucket}/landing/a.jsonl")
    assert entry.etag is None and entry.size == 37 and entry.mtime
    assert storage.list_files(f"s3://{bucket}/landing/") == [entry]
    spec = docs_recipe(f"s3://{bucket}/landing/")
    assert run(workdir, spec).manifest.counts.written == 1
    assert "nothing new since docs v1" in run(workdir, spec).message
    s3.put_object(Bucket=bucket, Key="landing/a.jsonl", Body=b'{"text": "Parcel 1 left the depot at noon."}\n')
    assert run(workdir, spec).manifest.counts.written == 1  # changed: its size and time moved


def test_a_manifest_written_meanwhile_into_the_number_is_never_replaced(
    workdir: Path, bucket: str, aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that takes no claim on the number (a release before claims, with another state store) writes
    v1's manifest while this run copies into v1: only one manifest can land, and it is the one there."""
    from connectors.state import HeldLock, LockLost

    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.put_object(Bucket=bucket, Key="in/docs.jsonl", Body=b'{"text": "one"}\n{"text": "two"}\n')
    theirs = b'{"version": 1, "written by": "the other run"}'

    def other_run_writes_its_manifest(_: HeldLock) -> None:  # this run's last step before its manifest
        s3.put_object(Bucket=bucket, Key="out/docs/v1/manifest.json", Body=theirs)

    monkeypatch.setattr(HeldLock, "confirm", other_run_writes_its_manifest)
    with pytest.raises(LockLost, match=r"docs v1 was published at .*out/docs while this run went on"):
        run(workdir, docs_recipe(f"s3://{bucket}/in/docs.jsonl", dest=f"s3://{bucket}/out"))
    assert s3.get_object(Bucket=bucket, Key="out/docs/v1/manifest.json")["Body"].read() == theirs


def test_a_store_without_conditional_writes_publishes_and_says_what_it_cannot_guard(
    workdir: Path, bucket: str, aws_env: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An S3-compatible store that answers 501 to ``If-None-Match`` (conditional writes came to S3 in
    2024) failed every publish: it publishes as before, with a warning that two state stores there are
    not kept apart."""
    import logging

    from botocore.awsrequest import AWSResponse

    import connectors.storage as storage

    class Raw:  # the body of the store's answer, as urllib3 hands it to botocore
        def __init__(self, body: bytes) -> None:
            self.body = body

        def stream(self, **_: object) -> Iterator[bytes]:
            yield self.body

    refusal = (
        b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>NotImplemented</Code>"
        b"<Message>A header you provided implies functionality that is not implemented</Message></Error>"
    )

    def no_conditions(request: object, **_: object) -> AWSResponse | None:
        if "If-None-Match" not in request.headers:
            return None  # sent to the real server
        return AWSResponse(request.url, 501, {"Content-Type": "application/xml"}, Raw(refusal))

    def client() -> object:
        made = boto3.client("s3", endpoint_url=aws_env)
        made.meta.events.register("before-send.s3.PutObject", no_conditions)
        return made

    monkeypatch.setattr(storage, "_s3_client", client)
    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.put_object(Bucket=bucket, Key="in/docs.jsonl", Body=b'{"text": "one"}\n{"text": "two"}\n')
    with caplog.at_level(logging.WARNING, logger="connectors.storage"):
        result = run(workdir, docs_recipe(f"s3://{bucket}/in/docs.jsonl", dest=f"s3://{bucket}/out"))
    assert result.manifest.counts.written == 2
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="out/docs/v1/manifest.json")["Body"].read())
    assert manifest["counts"]["written"] == 2
    assert "does not take conditional writes (If-None-Match)" in caplog.text
    staged = s3.list_objects_v2(Bucket=bucket, Prefix="out/docs/_staging").get("Contents", [])
    assert [o["Key"] for o in staged if o["Size"]] == []  # its claim on v1 removed (an empty folder marker stays)
    # A claim a killed run of this store left on v2 is looked for before the unconditional write: passed by,
    # not written over (the run that left it may wake and write under v2/).
    store = StateStore(f"sqlite:///{workdir / 'state.db'}")
    store.run_started("stalled-run", "docs", "0" * 64)
    store.engine.dispose()
    s3.put_object(Bucket=bucket, Key="out/docs/_staging/v2.claim", Body=b"stalled-run")
    s3.put_object(Bucket=bucket, Key="in/docs.jsonl", Body=b'{"text": "one"}\n{"text": "two"}\n{"text": "three"}\n')
    assert run(workdir, docs_recipe(f"s3://{bucket}/in/docs.jsonl", dest=f"s3://{bucket}/out")).manifest.version == 3
    assert s3.get_object(Bucket=bucket, Key="out/docs/_staging/v2.claim")["Body"].read() == b"stalled-run"


@pytest.mark.parametrize("kind", ["files", "documents"])
def test_an_object_overwritten_between_listing_and_reading_fails_the_run_by_name_and_is_read_when_run_again(
    workdir: Path, bucket: str, aws_env: str, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Listed as one object (its ETag saved as read), read as the one put there meanwhile: that one's records
    were published, and again by the next run (its ETag is not the one saved), the listed one's never."""
    import connectors.state
    from connectors.storage import StorageError

    s3 = boto3.client("s3", endpoint_url=aws_env)
    name = "a.jsonl" if kind == "files" else "a.txt"
    body = (lambda text: f'{{"text": "{text}"}}\n') if kind == "files" else (lambda text: f"{text}\n")
    s3.put_object(Bucket=bucket, Key=f"in/{name}", Body=body("Parcel 1 left the depot.").encode())
    listed = connectors.state.list_files

    def list_then_overwrite(*args: object, **kwargs: object) -> list:
        found = listed(*args, **kwargs)
        s3.put_object(Bucket=bucket, Key=f"in/{name}", Body=body("Parcel 2 reached the shop.").encode())
        return found

    monkeypatch.setattr(connectors.state, "list_files", list_then_overwrite)
    spec = {
        "dataset": "docs",
        "sources": [{"path": f"s3://{bucket}/in/", **({"type": "documents"} if kind == "documents" else {})}],
        "record": {"kind": "document"},
        "stages": [],  # no dedup: a record read twice is published twice
        # All in train: the record's id (and so its side) hangs on the random bucket name.
        "output": {"dest": f"s3://{bucket}/out", "validation_fraction": 0},
    }
    with pytest.raises(StorageError, match=rf"^s3://{bucket}/in/{name}: changed since the run listed it"):
        run(workdir, spec)
    monkeypatch.undo()
    first = run(workdir, spec)
    assert first.manifest.counts.written == 1
    shard = first.manifest.splits["train"].shards[0].path
    published = s3.get_object(Bucket=bucket, Key=f"out/docs/v1/{shard}")["Body"].read().decode()
    assert "Parcel 2 reached the shop." in published
    assert "nothing new since docs v1" in run(workdir, spec).message


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_an_object_overwritten_while_read_in_blocks_is_never_read_half_old_half_new(
    workdir: Path, bucket: str, aws_env: str, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """Read a block (a row group) at a time, an object overwritten after its first block was read on in the
    new one's bytes: records of both were published under the listed one's ETag."""
    import io

    import connectors.files
    import connectors.storage
    from connectors.storage import StorageError

    monkeypatch.setattr(connectors.files, "BLOCK_BYTES", 1024)
    monkeypatch.setattr(connectors.files, "PROBE_BYTES", 1024)  # what a CSV file's header is found in, first
    monkeypatch.setattr(connectors.storage, "READ_AHEAD_BYTES", 1024)  # an object of many requests
    s3 = boto3.client("s3", endpoint_url=aws_env)

    def body(word: str) -> bytes:  # the same length in both: the new one's later lines line up with the old's
        texts = [f"{word} parcel {i:04d} left the depot." for i in range(400)]
        if fmt == "jsonl":
            return "".join(json.dumps({"text": text}) + "\n" for text in texts).encode()
        if fmt == "csv":
            return ("text\n" + "".join(f"{text}\n" for text in texts)).encode()
        out = io.BytesIO()
        pq.write_table(pa.table({"text": texts}), out, row_group_size=20)
        return out.getvalue()

    key = f"in/a.{fmt}"
    s3.put_object(Bucket=bucket, Key=key, Body=body("old"))
    read, parquet_file = connectors.files.FilesSourceReader._steps, pq.ParquetFile

    def overwrite_after_the_first_batch(self: object, *args: object, **kwargs: object) -> Iterator:
        batches = read(self, *args, **kwargs)  # the first block read (and parsed): the rest is read after
        yield next(batches)
        s3.put_object(Bucket=bucket, Key=key, Body=body("new"))
        yield from batches

    def overwrite_after_the_footer(*args: object, **kwargs: object) -> pq.ParquetFile:
        opened = parquet_file(*args, **kwargs)  # its footer read: Arrow reads its row groups in one range
        s3.put_object(Bucket=bucket, Key=key, Body=body("new"))
        return opened

    if fmt == "parquet":
        monkeypatch.setattr(pq, "ParquetFile", overwrite_after_the_footer)
    else:
        monkeypatch.setattr(connectors.files.FilesSourceReader, "_steps", overwrite_after_the_first_batch)
    spec = {
        "dataset": "docs",
        "sources": [{"path": f"s3://{bucket}/in/"}],
        "record": {"kind": "document"},
        "stages": [],
        "output": {"dest": f"s3://{bucket}/out"},
    }
    with pytest.raises(StorageError, match=rf"^s3://{bucket}/{key}: changed since the run listed it"):
        run(workdir, spec)
    monkeypatch.undo()
    manifest = run(workdir, spec).manifest
    assert manifest.counts.written == 400


def test_an_empty_object_overwritten_since_its_listing_is_not_read_as_empty(bucket: str, aws_env: str) -> None:
    # An empty object has no first byte to ask for (S3 answers 416 to the range): it reads as empty, and
    # one listed empty and overwritten since is not read as empty, nor as the bytes put there.
    from connectors.storage import Changed, filesystem, list_files, open_input

    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.put_object(Bucket=bucket, Key="in/a.jsonl", Body=b"")
    [entry] = list_files(f"s3://{bucket}/in/a.jsonl")
    fs, path = filesystem(entry.uri)
    with open_input(fs, path, entry.etag) as stream:
        assert stream.read() == b""
    s3.put_object(Bucket=bucket, Key="in/a.jsonl", Body=b'{"text": "one"}\n')
    with pytest.raises(Changed, match=rf"^s3://{bucket}/in/a\.jsonl: changed since the run listed it"):
        open_input(fs, path, entry.etag).__enter__()


def test_a_store_without_conditional_reads_reads_as_before_and_says_so(
    workdir: Path, bucket: str, aws_env: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A store answering 501 to ``If-Match`` on a read (every listed object is read with it) failed every
    read: it reads without the condition, with a warning, once per store and bucket."""
    import logging

    from botocore.awsrequest import AWSResponse

    import connectors.storage as storage

    class Raw:
        def __init__(self, body: bytes) -> None:
            self.body = body

        def stream(self, **_: object) -> Iterator[bytes]:
            yield self.body

    refused = []

    def no_conditions(request: object, **_: object) -> AWSResponse | None:
        if "If-Match" not in request.headers:
            return None
        refused.append(request.url)
        refusal = b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>NotImplemented</Code></Error>"
        return AWSResponse(request.url, 501, {"Content-Type": "application/xml"}, Raw(refusal))

    client = boto3.client("s3", endpoint_url=aws_env)
    client.meta.events.register("before-send.s3.GetObject", no_conditions)
    monkeypatch.setattr(storage, "_reading_client", lambda *_: client)
    for name in ("a", "b"):
        client.put_object(Bucket=bucket, Key=f"in/{name}.jsonl", Body=f'{{"text": "{name}"}}\n'.encode())
    with caplog.at_level(logging.WARNING, logger="connectors.storage"):
        result = run(workdir, docs_recipe(f"s3://{bucket}/in/"))
    assert result.manifest.counts.written == 2
    assert len(refused) == 1  # asked once: the store's answer is remembered
    assert [r.message for r in caplog.records].count(
        f"s3://{bucket}/in/a.jsonl: this S3 store does not take conditional reads (If-Match): objects are read "
        "without; one overwritten while a run reads it is not told apart"
    ) == 1


@pytest.fixture
def deletes_denied(bucket: str, aws_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """``deny(keys)``: from then on, the test server checks each request against the policy of the user whose
    keys sign it: one that may do anything in ``bucket`` but delete the objects whose keys match ``keys`` (a
    pattern such as ``*.claim``), as a store's permissions can refuse."""
    import urllib.request

    import connectors.storage as storage

    def checked_after(requests: str) -> None:
        urllib.request.urlopen(
            urllib.request.Request(f"{aws_env}/moto-api/reset-auth", requests.encode(), {"Content-Type": "text/plain"})
        ).close()

    def deny(keys: str) -> None:
        denied = {"Effect": "Deny", "Action": ["s3:DeleteObject"], "Resource": f"arn:aws:s3:::{bucket}/{keys}"}
        # The bucket's policy as well as the user's: the server checks a delete of many objects at once
        # (DeleteObjects, how a folder is deleted) against the bucket's only.
        bucket_policy = {"Version": "2012-10-17", "Statement": [{**denied, "Principal": "*"}]}
        boto3.client("s3", endpoint_url=aws_env).put_bucket_policy(Bucket=bucket, Policy=json.dumps(bucket_policy))
        iam = boto3.client("iam", endpoint_url=aws_env)
        user = f"publisher-{bucket}"
        iam.create_user(UserName=user)
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["s3:*"], "Resource": "*"}, denied],
        }
        iam.put_user_policy(UserName=user, PolicyName="no-deletes", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # a new process's, which reads the keys above
        storage._s3_filesystem.cache_clear()  # pyarrow's too (cached per endpoint, not per key)
        checked_after("0")

    try:
        yield deny
    finally:
        checked_after("inf")  # the server is the session's: every other test's requests go unchecked again
        storage._s3_filesystem.cache_clear()


def test_a_claim_the_store_refuses_to_delete_is_named_with_how_to_delete_it_and_the_run_stands(
    workdir: Path, bucket: str, deletes_denied: Callable[[str], None], caplog: pytest.LogCaptureFixture
) -> None:
    """The claim on v1 is removed once its manifest is written (or once a failed run took its copies away);
    what the store refused (a permission) went unheard, though a claim left after a failed run keeps the
    number from other state stores' runs until it is deleted."""
    import logging

    deletes_denied("*.claim")
    write_jsonl(workdir / "in" / "docs.jsonl", [{"text": "one"}, {"text": "two"}])
    with caplog.at_level(logging.WARNING, logger="curation.writer"):
        result = run(workdir, docs_recipe(str(workdir / "in"), dest=f"s3://{bucket}/out"))
    assert result.manifest.version == 1 and result.manifest.counts.written == 2
    assert verify_checksums(result.version_uri, result.manifest) == []
    claim = f"s3://{bucket}/out/docs/_staging/v1.claim"
    assert f"aws s3 rm {claim}" in caplog.text
    assert caplog.text.count(claim) == 2
    listed = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix="out/docs/_staging/")["Contents"]
    assert "out/docs/_staging/v1.claim" in [o["Key"] for o in listed]


def test_a_claim_already_gone_is_no_warning(
    workdir: Path, bucket: str, aws_env: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Deleted meanwhile (by a run of this store that took it over from a run it knew was over): nothing to say."""
    import logging

    from connectors.state import HeldLock

    s3 = boto3.client("s3", endpoint_url=aws_env)

    def claim_deleted(_: HeldLock) -> None:  # the last step before the manifest
        s3.delete_object(Bucket=bucket, Key="out/docs/_staging/v1.claim")

    monkeypatch.setattr(HeldLock, "confirm", claim_deleted)
    write_jsonl(workdir / "in" / "docs.jsonl", [{"text": "one"}, {"text": "two"}])
    with caplog.at_level(logging.WARNING, logger="curation.writer"):
        result = run(workdir, docs_recipe(str(workdir / "in"), dest=f"s3://{bucket}/out"))
    assert result.manifest.version == 1 and verify_checksums(result.version_uri, result.manifest) == []
    assert "claim" not in caplog.text
    assert "staging folder" not in caplog.text  # deleted, as it is when the store lets it


def test_a_staging_folder_the_store_refuses_to_delete_is_named_with_how_to_delete_it_and_the_run_stands(
    workdir: Path, bucket: str, deletes_denied: Callable[[str], None], caplog: pytest.LogCaptureFixture
) -> None:
    """The run's staging folder is deleted once its files are copied into v1/; what the store refused (a
    permission) went unheard, though every staged file stays there, taking space."""
    import logging

    deletes_denied("out/docs/_staging/*/*")  # the run's own folder's files, not the claim beside them
    write_jsonl(workdir / "in" / "docs.jsonl", [{"text": "one"}, {"text": "two"}])
    with caplog.at_level(logging.WARNING, logger="curation.writer"):
        result = run(workdir, docs_recipe(str(workdir / "in"), dest=f"s3://{bucket}/out", validation_fraction=0))
    assert result.manifest.version == 1 and result.manifest.counts.written == 2
    assert verify_checksums(result.version_uri, result.manifest) == []
    listed = [
        o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix="out/docs/_staging/")["Contents"]
    ]
    assert "out/docs/_staging/v1.claim" not in listed  # the claim, which the store lets go, went
    (run_id,) = {key.split("/")[3] for key in listed if key.count("/") > 3}  # and the folder's marker
    assert f"out/docs/_staging/{run_id}/train/part-00000.jsonl" in listed
    folder = f"s3://{bucket}/out/docs/_staging/{run_id}/"
    [warning] = [r.getMessage() for r in caplog.records if folder in r.getMessage()]
    assert warning.startswith(f"this run's staging folder, {folder}, could not be deleted")
    assert warning.endswith(f"(aws s3 rm --recursive {folder})") and "\n" not in warning


def test_copies_the_store_refuses_to_take_away_are_named_with_how_to_delete_them(
    workdir: Path, bucket: str, deletes_denied: Callable[[str], None], caplog: pytest.LogCaptureFixture
) -> None:
    """A run stopped with its copies in v1/ takes them away; what the store refused (a permission) went
    unheard, though they stay there: no version, and all of them taking space."""
    import logging
    import signal

    from connectors.state import HeldLock
    from curation.stopping import Stopped

    def stopped(_: HeldLock) -> None:  # the last step before the manifest
        raise Stopped(signal.SIGTERM)

    deletes_denied("out/docs/v1/*")
    write_jsonl(workdir / "in" / "docs.jsonl", [{"text": "one"}, {"text": "two"}])
    with caplog.at_level(logging.WARNING, logger="curation.writer"), pytest.MonkeyPatch.context() as patch:
        patch.setattr(HeldLock, "confirm", stopped)
        with pytest.raises(Stopped):
            run(workdir, docs_recipe(str(workdir / "in"), dest=f"s3://{bucket}/out", validation_fraction=0))
    folder = f"s3://{bucket}/out/docs/v1/"
    [warning] = [r.getMessage() for r in caplog.records if folder in r.getMessage()]
    assert "could not be deleted" in warning and warning.endswith(f"(aws s3 rm --recursive {folder})")
    assert "\n" not in warning and "such as key 'out/docs/v1/" in warning  # one line, however many failed
    listed = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix="out/docs/")["Contents"]]
    assert "out/docs/v1/train/part-00000.jsonl" in listed
    assert "out/docs/_staging/v1.claim" not in listed  # the claim, which the store lets go, went
    assert published_versions(f"s3://{bucket}/out", "docs") == []


def test_a_first_version_claimed_by_a_run_of_this_store_killed_while_publishing_it_is_passed_by(
    workdir: Path, bucket: str
) -> None:
    # A run killed (or stalled past its lease) after it claimed v1, before its manifest, stayed "publishing":
    # only a dataset with a version asked the store which such runs were over, so every later run took the
    # claim for another store's and refused to publish, for good.
    import sqlalchemy as sa

    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="in/a.jsonl", Body=b'{"text": "alpha"}\n')
    store = StateStore(f"sqlite:///{workdir / 'state.db'}")
    store.run_started("dead-run", "docs", "0" * 64)
    with store.engine.begin() as db:
        db.execute(sa.text("UPDATE runs SET status = 'publishing', version = 1 WHERE run_id = 'dead-run'"))
    store.engine.dispose()
    s3.put_object(Bucket=bucket, Key="out/docs/_staging/v1.claim", Body=b"dead-run")
    result = run(workdir, docs_recipe(f"s3://{bucket}/in/", dest=f"s3://{bucket}/out", validation_fraction=0.0))
    assert result.manifest.version == 2
    assert published_versions(f"s3://{bucket}/out", "docs") == [2]


def test_a_run_stalled_past_its_lease_as_its_manifest_is_written_records_nothing(
    workdir: Path, bucket: str, aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run A (a full refresh) confirms its lock, then stalls past its lease (a paused VM) just before it writes
    v1's manifest. Run B takes the lock over, reads a.jsonl and b.jsonl, and publishes v2 (v1 is A's claim).
    A wakes and makes v1 visible, as no run can stop it, but it recorded its watermarks too: its full refresh
    forgot b.jsonl, which the next run read again and published a second time beside B's copy."""

    from curation import pipeline
    from curation.pipeline import NotRecorded

    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.put_object(Bucket=bucket, Key="in/a.jsonl", Body=b"".join(b'{"text": "a%d"}\n' % i for i in range(5)))
    recipe = docs_recipe(f"s3://{bucket}/in/", dest=f"s3://{bucket}/out", validation_fraction=0)
    taken_over: list = []
    stalled: list[bool] = []
    raise_if_stopped = pipeline.raise_if_stopped

    def stalls() -> None:  # right after A's lock.confirm()
        if not stalled:
            stalled.append(True)
            taken_over.append(lease_lapses_and_another_run_takes_over(s3, bucket, workdir, recipe))
        raise_if_stopped()

    monkeypatch.setattr(pipeline, "raise_if_stopped", stalls)
    with pytest.raises(NotRecorded, match="lock was taken over by another run as it published"):
        run(workdir, recipe, full_refresh=True)  # A
    assert taken_over[0].manifest.version == 2
    assert published_versions(f"s3://{bucket}/out", "docs") == [1, 2]
    latest = run(workdir, recipe)  # reads everything again: v1 is visible, and its run recorded nothing
    texts = [
        json.loads(line)["text"]
        for split in latest.manifest.splits.values()
        for shard in split.shards
        for line in s3.get_object(Bucket=bucket, Key=f"out/docs/v{latest.manifest.version}/{shard.path}")["Body"]
        .read()
        .splitlines()
    ]
    assert sorted(texts) == ["a0", "a1", "a2", "a3", "a4", "b0"]


def _refused(ending: str, landed: bool) -> Callable[[str, bytes], bool]:
    """``put_if_absent``, with the write of a key ending ``ending`` answered as refused, as to boto3's retry
    of a PUT whose answer was lost: after its first try ``landed`` (412), or while that is in flight (409)."""
    from curation import writer

    put_if_absent = writer.put_if_absent

    def refused(uri: str, body: bytes) -> bool:
        if not uri.endswith(ending):
            return put_if_absent(uri, body)
        if not landed:
            return False  # the first try still in flight: no object there yet
        put_if_absent(uri, body)  # the first try, whose answer is lost
        return put_if_absent(uri, body)

    return refused


def test_a_manifest_write_that_landed_though_its_retry_was_refused_is_this_runs_version(
    workdir: Path, bucket: str, aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """boto3 retries a PUT whose answer was lost (a 500, a read timeout): the first try landed, the retry is
    refused (412, or 409 while the first is in flight). The version there is this run's: recorded failed, the
    next run trusted the watermarks and published v2's records again."""

    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.put_object(Bucket=bucket, Key="in/a.jsonl", Body=b'{"text": "one"}\n{"text": "two"}\n')
    recipe = docs_recipe(f"s3://{bucket}/in/", dest=f"s3://{bucket}/out", validation_fraction=0)
    run(workdir, recipe)
    s3.put_object(Bucket=bucket, Key="in/b.jsonl", Body=b'{"text": "three"}\n')
    with monkeypatch.context() as patch:
        patch.setattr("curation.writer.put_if_absent", _refused("/manifest.json", landed=True))
        second = run(workdir, recipe)
    assert second.manifest.version == 2 and second.manifest.counts.written == 1
    staged = s3.list_objects_v2(Bucket=bucket, Prefix="out/docs/_staging").get("Contents", [])
    assert [o["Key"] for o in staged if o["Key"].endswith(".claim")] == []
    s3.put_object(Bucket=bucket, Key="in/c.jsonl", Body=b'{"text": "four"}\n')
    third = run(workdir, recipe)
    texts = [
        json.loads(line)["text"]
        for shard in third.manifest.splits["train"].shards
        for line in s3.get_object(Bucket=bucket, Key=f"out/docs/v3/{shard.path}")["Body"].read().splitlines()
    ]
    assert sorted(texts) == ["four", "one", "three", "two"]


def _one_file_published_from(bucket: str, aws_env: str) -> tuple[Any, dict[str, Any]]:
    """An S3 client, and a recipe publishing ``in/a.jsonl`` (one record, written now) to ``out/``."""
    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.put_object(Bucket=bucket, Key="in/a.jsonl", Body=b'{"text": "one"}\n')
    return s3, docs_recipe(f"s3://{bucket}/in/", dest=f"s3://{bucket}/out", validation_fraction=0)


def test_a_manifest_write_refused_while_none_is_there_yet_is_said_and_leaves_the_run_publishing(
    workdir: Path, bucket: str, aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 409 to boto3's retry while this run's first PUT is still in flight: no manifest is there yet. The run
    # read it all the same and failed on pyarrow's "Path does not exist".
    import sqlalchemy as sa

    _, recipe = _one_file_published_from(bucket, aws_env)
    with monkeypatch.context() as patch:
        patch.setattr("curation.writer.put_if_absent", _refused("/manifest.json", landed=False))
        with pytest.raises(StorageError) as failed:
            run(workdir, recipe)
    assert str(failed.value).startswith(f"s3://{bucket}/out/docs/v1/manifest.json: this run's write of it was")
    assert "whether docs v1 is this run's is not known" in str(failed.value)
    with sa.create_engine("sqlite:///state.db").connect() as db:  # as its version may yet appear
        assert db.execute(sa.text("SELECT status, version FROM runs")).tuples().all() == [("publishing", 1)]
    assert run(workdir, recipe).manifest.version == 1  # it never appeared: the number is free


def test_a_claim_write_that_landed_though_its_retry_was_refused_is_this_runs_claim(
    workdir: Path, bucket: str, aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # boto3 retries a claim PUT whose answer was lost after it landed; the retry is refused (412). The claim
    # named this run, yet it took it for another run's: it failed, left the claim, and v1 was never published.

    s3, recipe = _one_file_published_from(bucket, aws_env)
    monkeypatch.setattr("curation.writer.put_if_absent", _refused(".claim", landed=True))
    assert run(workdir, recipe).manifest.version == 1
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/").get("Contents", [])]
    assert not [key for key in keys if key.endswith(".claim")]
