"""The Ray Data executor publishes what the embedded executor publishes, record for record.

Ray runs locally with 2 CPUs (a session fixture), its workers importing this checkout's code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pytest
import sqlalchemy as sa
import xxhash

import connectors.storage as storage
from bench.corpus import generate
from connectors.storage import filesystem
from curation import pipeline
from curation.executors.local import AccountingError, LocalExecutor
from curation.pipeline import RunResult, run_recipe
from curation.published import verify_checksums
from curation.review.queue import list_items
from curation.stages.base import StageError, StageResult
from curation.stages.duplicates import resolve_duplicates
from schemas.config import load_recipe
from tests.helpers import lineage_rows, outputs, processed, read_lines, run, watermark_values, write_jsonl, write_recipe

ray = pytest.importorskip("ray")
from curation.executors.ray_executor import RayExecutor  # noqa: E402  (needs ray)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def local_ray(aws_env: str) -> Any:
    # Started with the AWS settings in the environment, so its workers, like a cluster's with their
    # own role, reach S3 (here the test server) by the standard settings.
    started = not ray.is_initialized()
    if started:
        ray.init(
            # A new instance of its own, as the executor starts one: without it, Ray joins a cluster that
            # `ray start` left on this machine (or the one it last named, gone since) and refuses num_cpus.
            address="local",
            num_cpus=2,
            include_dashboard=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
            logging_level="WARNING",
        )
    yield ray
    if started:
        ray.shutdown()


def run_both(folder: Path, recipe: dict[str, Any]) -> tuple[RunResult, RunResult]:
    loaded = load_recipe(write_recipe(folder, recipe))
    # Both read all input afresh (a rerun would otherwise take only what is new, which is nothing).
    local = run_recipe(loaded, executor=LocalExecutor(), full_refresh=True)
    distributed = run_recipe(loaded, executor=RayExecutor(), full_refresh=True)
    return local, distributed


def published(result: RunResult) -> dict[str, Any]:
    """What a version says about each record: output ids per split, set-aside rows, counts."""
    fs, root = filesystem(result.version_uri)  # on disk or on S3

    def rows(shards: list[Any]) -> list[dict[str, Any]]:
        return [
            json.loads(line)
            for shard in shards
            for line in fs.open_input_stream(f"{root}/{shard.path}").read().splitlines()
        ]

    by_split: dict[str, set[str]] = {}
    for row in lineage_rows(result.version_uri):
        by_split.setdefault(row["shard"].split("/")[0], set()).add(row["id"])
    aside = rows(result.manifest.set_aside)
    return {
        "ids": by_split,
        "set_aside": {(r["id"], r["outcome"], r["reason"], r["duplicate_of"]) for r in aside},
        "counts": result.manifest.counts.model_dump(),
        "stats": result.manifest.stats,
        "shard_records": sum(s.records for split in result.manifest.splits.values() for s in split.shards),
        "shards": [(s.path, s.sha256) for split in result.manifest.splits.values() for s in split.shards],
    }


def instruction_rows(count: int) -> list[Any]:
    rows: list[Any] = []
    for i in range(count):
        topic = i % (count * 2 // 3)  # a third of the rows repeat an earlier one
        question = f"How do I reset my password for account {topic}?"
        if i != topic and i % 2:
            question = question.upper().replace(" ", "  ")  # a normalised variant is still a duplicate
        rows.append({"q": question, "a": f"Open settings, choose security, then reset ({topic})."})
    rows[7] = "{not json"
    rows[11] = {"q": "an empty answer", "a": ""}
    rows[13] = {"question": "the template's column is missing"}
    return rows


def test_same_records_counts_and_clusters_with_both_executors(workdir: Path, local_ray: Any) -> None:
    rows = [
        {**row, "label": f"topic {n % 7}"} if isinstance(row, dict) else row
        for n, row in enumerate(instruction_rows(900))
    ]
    # Duplicates span files and batches: the later files repeat topics of the first.
    write_jsonl(workdir / "in" / "a.jsonl", rows[:300])
    write_jsonl(workdir / "in" / "b.jsonl", rows[300:600])
    write_jsonl(workdir / "in" / "c.jsonl", rows[600:])
    recipe = {
        "dataset": "support",
        "sources": [{"path": str(workdir / "in")}],
        "record": {"kind": "instruction", "prompt": "{{ q }}", "completion": "a"},
        "batch_rows": 64,
        # A stratified split deals each label's records out in the order they come: the same sides
        # only if Ray hands the writer the records in the embedded executor's order.
        "output": {"dest": str(workdir / "out"), "shard_max_bytes": 16384, "stratify_by": "label"},
    }
    local, distributed = run_both(workdir, recipe)
    expected, actual = published(local), published(distributed)

    counts = expected["counts"]
    assert counts["input"] == 900 and counts["duplicate"] > 250 and counts["quarantined"] == 3
    assert {r[2] for r in expected["set_aside"]} == {"exact_duplicate", "malformed_json", "schema", "template"}
    assert actual["ids"] == expected["ids"]
    assert actual["counts"] == counts
    assert actual["set_aside"] == expected["set_aside"]  # the same duplicate_of: the same clusters
    assert actual["stats"] == expected["stats"]
    assert actual["shard_records"] == counts["written"]
    assert actual["shards"] == expected["shards"]  # the same lines in the same order: the same checksums


def test_a_global_check_that_is_not_dedup_gives_the_same_records_on_ray(workdir: Path, local_ray: Any) -> None:
    rows = [{"q": f"Question {n}?", "a": "Yes.", "ref": f"T-{n % 90}"} for n in range(100)]
    write_jsonl(workdir / "in" / "a.jsonl", rows)
    recipe = {
        "dataset": "refs",
        "sources": [{"path": str(workdir / "in")}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a", "label": "ref"},
        "stages": [{"type": "expectations", "expect": [{"column": "label", "check": "unique"}]}],
        "batch_rows": 16,
        "output": {"dest": str(workdir / "out")},
    }
    local, distributed = run_both(workdir, recipe)
    expected, actual = published(local), published(distributed)
    assert expected["counts"]["reasons"] == {"quarantined": {"expect_column_values_to_be_unique:label": 20}}
    assert actual["set_aside"] == expected["set_aside"] and actual["ids"] == expected["ids"]


def second_version(folder: Path, executor: LocalExecutor | RayExecutor) -> dict[str, Any]:
    """v1 of some notes, then v2 whose new input repeats them (some with small edits): what v2 holds
    (by content: ids name the input path, which differs per folder), and v1's near-duplicate flags."""
    texts = generate(60, duplicate_share=0.0, seed=8, related_share=0.0).texts
    first, fresh = texts[:40], texts[40:]
    near = [t.replace(t.split()[3], "changed", 1) + " Thanks." for t in first[:8]]
    # Five notes come with HTML that the clean stage, after the dedup stages, takes off before publishing.
    marked = [f"<b>{t}</b>" if n < 5 else t for n, t in enumerate(first)]
    write_jsonl(folder / "in" / "a.jsonl", [{"text": t} for t in marked + near[:4]])
    recipe = {
        "dataset": "notes",
        "sources": [{"path": str(folder / "in")}],
        "record": {"kind": "document"},
        "stages": [{"type": "exact_dedup"}, {"type": "near_dedup"}, {"type": "clean"}],
        "output": {"dest": str(folder / "out")},
        "batch_rows": 16,
    }
    loaded = load_recipe(write_recipe(folder, recipe))
    v1 = run_recipe(loaded, executor=executor)
    write_jsonl(folder / "in" / "b.jsonl", [{"text": t} for t in marked[:10] + near[4:] + fresh])
    v2 = run_recipe(loaded, executor=executor)
    root = Path(v2.version_uri)
    aside = read_lines(sorted((root / "set_aside").glob("*.jsonl")))
    flags = list_items(sa.create_engine(loaded.state), "notes", kind="near_duplicate")
    return {
        "counts": v2.manifest.counts.model_dump(),
        "texts": sorted(row["text"] for row in processed(root)),  # what the second run wrote
        "whole": sorted(row["text"] for row in outputs(root)),  # and with v1's records carried
        "v1": sorted(row["text"] for row in outputs(Path(v1.version_uri))),
        "set_aside": sorted((row["stage"], row["reason"], row["detail"].rsplit(" ", 1)[-1]) for row in aside),
        "flags": sorted((json.loads(f["payload"])["member"]["text"], f["version"]) for f in flags),
    }


def test_cross_run_dedup_and_review_flags_are_the_same_on_ray(workdir: Path, local_ray: Any) -> None:
    expected = second_version(workdir / "local", LocalExecutor())
    actual = second_version(workdir / "ray", RayExecutor())
    assert expected["counts"]["reasons"]["duplicate"] == {"earlier_version": 14}
    # Repeats are found by the stage that found them in v1: exact ones too when a later stage changed
    # the text it published (the signatures kept are those the dedup stage saw).
    assert Counter(stage for stage, _, _ in expected["set_aside"]) == {"exact_dedup": 10, "near_dedup": 4}
    assert len(expected["texts"]) == 20
    assert expected["whole"] == sorted(expected["v1"] + expected["texts"])
    assert len(expected["flags"]) == 4 and {version for _, version in expected["flags"]} == {1}
    assert actual == expected


def test_the_signature_index_is_written_on_the_driver(
    workdir: Path, local_ray: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Workers on other nodes would write a SQLite state store of their own, and the signatures would
    # be lost to later runs: they are stored where the writer is. (Workers import the module afresh,
    # so this patch sees only what the driver stores.)
    from curation.stages.dedup_index import SignatureIndex

    stored: list[str] = []
    stage_pending = SignatureIndex.stage_pending

    def noted(self: SignatureIndex, stage: str, params: str, signatures: pa.Table) -> None:
        stored.extend(signatures["id"].to_pylist())
        stage_pending(self, stage, params, signatures)

    monkeypatch.setattr(SignatureIndex, "stage_pending", noted)
    write_jsonl(workdir / "in" / "a.jsonl", [{"q": f"Question {n}?", "a": "Yes."} for n in range(60)])
    recipe = {
        "dataset": "notes",
        "sources": [{"path": str(workdir / "in")}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        "batch_rows": 16,
        "output": {"dest": str(workdir / "out")},
    }
    result = run_recipe(load_recipe(write_recipe(workdir, recipe)), executor=RayExecutor())
    assert sorted(stored) == sorted(row["id"] for row in lineage_rows(result.version_uri))
    assert result.manifest.counts.written == 60


def test_cross_run_exact_dedup_on_ray_loads_only_the_published_rows_of_its_keys(
    workdir: Path, local_ray: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded executor loads only the published signatures that hold one of the run's content
    hashes; Ray loaded every one (a scheduled run adding a few records to millions unpacked millions)."""
    from curation.stages.dedup_index import SignatureIndex

    loaded: list[int] = []
    load = SignatureIndex.load

    def counted(self: SignatureIndex, stage: str, params: str, keys: pa.Array | None = None) -> pa.Table | None:
        table = load(self, stage, params, keys)
        loaded.append(0 if table is None else table.num_rows)
        return table

    monkeypatch.setattr(SignatureIndex, "load", counted)
    write_jsonl(workdir / "in" / "a.jsonl", [{"q": f"Question {n}?", "a": "Yes."} for n in range(50)])
    recipe = {
        "dataset": "repeats",
        "sources": [{"path": str(workdir / "in")}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        "stages": [{"type": "exact_dedup"}],
        "batch_rows": 16,
        "output": {"dest": str(workdir / "out")},
        "engine": "ray",
    }
    run(workdir, recipe)
    write_jsonl(workdir / "in" / "b.jsonl", [{"q": "Question 7?", "a": "Yes."}, {"q": "Anything new?", "a": "No."}])
    loaded.clear()
    second = run(workdir, recipe)
    assert second.manifest.counts.input == 2 and second.manifest.counts.reasons["duplicate"] == {"earlier_version": 1}
    assert loaded == [1]  # the one published row that holds a key of this run, not all 50


def words(text: str) -> set[str]:
    return set(text.lower().split())


class WordOverlap:
    """A near-duplicate stage in the DuplicateStage shape: several keys per row, pairs confirmed by
    word overlap, so clusters form through chains (a~b, b~c) that share no single key."""

    name = "word_overlap"
    reason = "near_duplicate"

    def signatures(self, batch: pa.Table) -> pa.Table:
        texts = batch["prompt"].to_pylist()
        keys = [sorted({xxhash.xxh3_64_intdigest(w.encode()) for w in words(t) if len(w) > 6}) for t in texts]
        return pa.table(
            {
                "id": batch["id"],
                "source": batch["source"],
                "keys": pa.array(keys, pa.list_(pa.uint64())),
                "text": batch["prompt"],
            }
        )

    def pairs(self, group: pa.Table) -> pa.Table:
        ids, texts = group["id"].to_pylist(), [words(t) for t in group["text"].to_pylist()]
        found = [
            (ids[i], ids[j])
            for i in range(len(ids))
            for j in range(i + 1, len(ids))
            if len(texts[i] & texts[j]) / len(texts[i] | texts[j]) >= 0.6
        ]
        return pa.table(
            {"a": [a for a, _ in found], "b": [b for _, b in found]},
            schema=pa.schema([("a", pa.string()), ("b", pa.string())]),
        )

    def resolve(self, signatures: Any) -> pa.Table:
        return resolve_duplicates(self, signatures)


def test_any_duplicate_stage_runs_distributed_with_the_same_clusters(
    workdir: Path, local_ray: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chains: each prompt shares most words with the next one, so a long chain is one cluster.
    vocabulary = [f"wordnumber{n:03d}" for n in range(400)]
    rows = []
    for i in range(300):
        start = (i // 30) * 40 + (i % 30) // 3  # 10 chains; neighbours overlap by 7 of 8 words
        rows.append({"q": " ".join(vocabulary[start : start + 8]), "a": "ok"})
    write_jsonl(workdir / "in" / "chains.jsonl", rows)
    build = pipeline.build_stages
    monkeypatch.setattr(pipeline, "build_stages", lambda recipe, *more: [*build(recipe, *more), WordOverlap()])
    recipe = {
        "dataset": "chains",
        "sources": [{"path": str(workdir / "in")}],
        "record": {"kind": "instruction", "prompt": "{{ q }}", "completion": "a"},
        "stages": [],
        "batch_rows": 50,
        "output": {"dest": str(workdir / "out")},
    }
    local, distributed = run_both(workdir, recipe)
    expected, actual = published(local), published(distributed)
    clusters = Counter(r[3] for r in expected["set_aside"])
    assert len(clusters) >= 10 and expected["counts"]["reasons"]["duplicate"]["near_duplicate"] > 150
    assert actual["set_aside"] == expected["set_aside"]
    assert actual["ids"] == expected["ids"]
    assert actual["counts"] == expected["counts"]
    assert actual["shards"] == expected["shards"]


def test_the_shuffle_on_keys_moves_sixteen_bytes_a_key_and_keeps_every_row_that_shares_one() -> None:
    """The shuffle that finds candidates moved each near-duplicate row's whole signature once per band
    (about 19 KB a record at 32 bands): it moves a key and a hash of the id, and the rows of every key
    held twice (and only those) come back as candidates."""
    from curation.executors.ray_duplicates import KEY, ROW, candidates_in_partition, row_hashes, row_keys
    from curation.stages.neardup import NearDedup

    texts = [f"the invoice {n} was paid twice by the customer in march" for n in range(40)]
    texts += [texts[3].replace("march", "april"), "something else entirely, nothing like the rest", ""]
    batch = pa.table({"id": [f"r{n}" for n in range(len(texts))], "text": texts})
    batch = batch.append_column("source", pa.array([{"uri": "a", "line": n} for n in range(len(texts))]))
    signatures = NearDedup(["text"]).signatures(batch)
    exploded = row_keys(signatures)
    assert exploded.column_names == [KEY, ROW]
    assert exploded.nbytes == 16 * exploded.num_rows == 16 * 32 * (len(texts) - 1)  # the empty text has no keys
    found = set(candidates_in_partition(exploded)[ROW].to_pylist())
    shared = NearDedup(["text"]).confirmed_pairs(signatures)
    paired = set(shared["a"].to_pylist()) | set(shared["b"].to_pylist())
    hashes = dict(zip(signatures["id"].to_pylist(), row_hashes(signatures).to_pylist(), strict=True))
    assert {"r3", "r40"} <= paired and {hashes[i] for i in paired} <= found
    assert hashes["r41"] not in found and hashes["r42"] not in found


class CountingModel:
    """A stage with a model to load: it counts, in its stats, how often the model was loaded."""

    name = "model_stage"
    loads_model = True

    def __init__(self) -> None:
        self._model: object | None = None

    def __call__(self, batch: pa.Table) -> StageResult:
        loads = 0
        if self._model is None:
            self._model = object()
            loads = 1
        return StageResult(kept=batch, stats={"model_loads": loads, "batches": 1})

    def __getstate__(self) -> dict[str, Any]:
        return {"_model": None}  # a model is never shipped; each worker loads its own


def test_model_stage_loads_once_per_worker(workdir: Path, local_ray: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    write_jsonl(workdir / "in" / "a.jsonl", [{"q": f"question {i}", "a": "answer"} for i in range(400)])
    build = pipeline.build_stages
    monkeypatch.setattr(pipeline, "build_stages", lambda recipe, *more: [*build(recipe, *more), CountingModel()])
    recipe = {
        "dataset": "models",
        "sources": [{"path": str(workdir / "in")}],
        "record": {"kind": "instruction", "prompt": "{{ q }}", "completion": "a"},
        "batch_rows": 40,
        "output": {"dest": str(workdir / "out")},
    }
    result = run_recipe(load_recipe(write_recipe(workdir, recipe)), executor=RayExecutor(workers=1))
    stats = result.manifest.stats["stages"]["model_stage"]
    assert stats["batches"] == 10
    assert stats["model_loads"] == 1  # one actor, one load, for ten batches
    assert result.manifest.counts.written == 400


class Failing:
    name = "failing"

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __call__(self, batch: pa.Table) -> StageResult:
        raise self.error


class Losing:
    name = "losing"

    def __call__(self, batch: pa.Table) -> StageResult:
        return StageResult(kept=batch.slice(1))


@pytest.mark.parametrize(
    ("stage", "error", "message"),
    [
        (Failing(StageError("column 'text' is not a string")), StageError, "column 'text' is not a string"),
        (Losing(), AccountingError, "stage losing took"),
        # A library's ValueError (Arrow's), which the command line says as "run failed" as it does when
        # the embedded executor raises it: it came back as Ray's task error, with a traceback.
        (Failing(pa.ArrowInvalid("Invalid UTF8 payload")), pa.ArrowInvalid, "Invalid UTF8 payload"),
    ],
)
def test_worker_errors_come_back_as_the_projects_errors(
    workdir: Path, local_ray: Any, monkeypatch: pytest.MonkeyPatch, stage: Any, error: type, message: str
) -> None:
    write_jsonl(workdir / "in" / "a.jsonl", [{"q": "question", "a": "answer"}])
    build = pipeline.build_stages
    monkeypatch.setattr(pipeline, "build_stages", lambda recipe, *more: [*build(recipe, *more), stage])
    recipe = {
        "dataset": "broken",
        "sources": [{"path": str(workdir / "in")}],
        "record": {"kind": "instruction", "prompt": "{{ q }}", "completion": "a"},
        "output": {"dest": str(workdir / "out")},
    }
    with pytest.raises(error) as raised:
        run_recipe(load_recipe(write_recipe(workdir, recipe)), executor=RayExecutor())
    assert type(raised.value) is error
    assert message in str(raised.value) and "Traceback" not in str(raised.value)
    assert not (workdir / "out" / "broken" / "v1").exists()


def test_cli_engine_ray(workdir: Path, local_ray: Any) -> None:
    from typer.testing import CliRunner

    from curation.cli import app

    write_jsonl(workdir / "in" / "a.jsonl", [{"q": f"question {i % 50}", "a": "answer"} for i in range(120)])
    recipe = {
        "dataset": "cli",
        "sources": [{"path": str(workdir / "in")}],
        "record": {"kind": "instruction", "prompt": "{{ q }}", "completion": "a"},
        "output": {"dest": str(workdir / "out")},
    }
    path = write_recipe(workdir, recipe)
    result = CliRunner().invoke(app, ["run", str(path), "--engine", "ray", "--quiet"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((workdir / "out" / "cli" / "v1" / "manifest.json").read_text())
    assert manifest["counts"]["written"] == 50 and manifest["counts"]["duplicate"] == 70
    bad = CliRunner().invoke(app, ["run", str(path), "--engine", "spark"])
    assert bad.exit_code == 2


def test_s3_in_and_out_on_ray(workdir: Path, local_ray: Any, bucket: str) -> None:
    # The cluster set-up of docs/ray.md: workers read the objects, the driver publishes to S3.
    s3 = boto3.client("s3")
    rows = instruction_rows(300)
    for part, start in enumerate(range(0, 300, 100)):
        body = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows[start : start + 100])
        s3.put_object(Bucket=bucket, Key=f"in/part-{part}.jsonl", Body=body.encode())
    base = {
        "dataset": "s3ray",
        "sources": [{"path": f"s3://{bucket}/in/"}],
        "record": {"kind": "instruction", "prompt": "{{ q }}", "completion": "a"},
        "stages": [{"type": "exact_dedup"}],
    }

    def on(executor: Any, name: str) -> RunResult:
        recipe = {**base, "output": {"dest": f"s3://{bucket}/{name}"}, "state": f"sqlite:///{workdir}/{name}.db"}
        (workdir / name).mkdir()
        return run_recipe(load_recipe(write_recipe(workdir / name, recipe)), executor=executor)

    distributed, local = on(RayExecutor(), "ray"), on(LocalExecutor(), "local")
    assert distributed.version_uri == f"s3://{bucket}/ray/s3ray/v1"
    assert published(distributed) == published(local)
    assert distributed.manifest.counts.duplicate > 0 and distributed.manifest.counts.quarantined == 3
    assert verify_checksums(distributed.version_uri, distributed.manifest) == []


@pytest.mark.parametrize(
    ("address", "ray_address", "expected"),
    [
        (None, None, {"address": "local", "num_cpus": 3}),  # a new local instance, whatever else runs here
        (None, "10.0.0.1:6379", {}),  # inside a job submitted to a cluster: that cluster
        ("auto", None, {"address": "auto"}),
    ],
)
def test_which_ray_a_run_joins(
    monkeypatch: pytest.MonkeyPatch, address: str | None, ray_address: str | None, expected: dict[str, Any]
) -> None:
    calls: list[dict[str, Any]] = []

    class Ray:
        @staticmethod
        def is_initialized() -> bool:
            return False

        @staticmethod
        def init(**options: Any) -> None:
            calls.append(options)

    if ray_address:
        monkeypatch.setenv("RAY_ADDRESS", ray_address)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert RayExecutor(address=address, workers=3)._connect(Ray) is True
    (options,) = calls
    assert {key: options[key] for key in ("address", "num_cpus") if key in options} == expected


def test_a_ray_address_where_no_cluster_answers_is_said_with_what_was_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ray's own ray.init, finding no cluster: not this machine's processes (another test's local instance
    # would answer), nor the address file `ray start` leaves.
    monkeypatch.setattr("ray._private.services._find_address_from_flag", lambda _flag: [])
    monkeypatch.setattr("ray._private.services.find_bootstrap_address", lambda _temp_dir: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    class NotJoined:  # this session's tests may have joined a local instance already
        is_initialized = staticmethod(lambda: False)
        init = staticmethod(ray.init)

    with pytest.raises(ConnectionError) as raised:
        RayExecutor(address="auto")._connect(NotJoined)
    assert str(raised.value) == (
        "no Ray cluster answers at --address auto: start one with `ray start --head`, "
        "or leave out --address to start a local instance"
    )


class RecordedRay:
    """Stands in for ray: records what ``init`` is given, joins nothing."""

    calls: list[dict[str, Any]]
    is_initialized = staticmethod(lambda: False)

    def __init__(self) -> None:
        self.calls = []

    def init(self, **options: Any) -> None:
        self.calls.append(options)


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_a_ray_host_and_port_where_nothing_listens_is_said_before_ray_init(
    monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    # ray.init retried the GCS at an explicit host:port for minutes before failing (Ray Client at a ray://host:port,
    # which went unprobed, too); a port that answers is joined.
    import socket

    ray_ = RecordedRay()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket.create_server(("127.0.0.1", 0)) as listening:
        open_port = listening.getsockname()[1]
        with socket.create_server(("127.0.0.1", 0)) as closed:
            closed_port = closed.getsockname()[1]  # closed below: nothing listens there
        with pytest.raises(ConnectionError) as raised:
            RayExecutor(address=f"{scheme}127.0.0.1:{closed_port}")._connect(ray_)
        assert str(raised.value) == (
            f"no Ray cluster answers at --address {scheme}127.0.0.1:{closed_port} (Connection refused): start one "
            "with `ray start --head`, or leave out --address to start a local instance"
        )
        assert ray_.calls == []
        assert RayExecutor(address=f"{scheme}127.0.0.1:{open_port}")._connect(ray_) is True
    assert [options["address"] for options in ray_.calls] == [f"{scheme}127.0.0.1:{open_port}"]


def test_a_ray_address_whose_host_cannot_be_looked_up_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    # The probe's reason was dropped: a mistyped host read as a cluster to start with `ray start --head`.
    import socket

    def unknown(at: tuple[str, int], timeout: float) -> socket.socket:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", unknown)
    ray_ = RecordedRay()
    with pytest.raises(
        ConnectionError, match=r"^no Ray cluster answers at --address hed:6379 \(Name or service not"
    ) as said:
        RayExecutor(address="hed:6379")._connect(ray_)
    assert "check the host name" in str(said.value) and "ray start" not in str(said.value)
    assert ray_.calls == []


@pytest.mark.parametrize(
    ("refusal", "said"),
    [
        (
            'AuthenticationError("RPC error: InvalidAuthToken: Authentication token is missing or incorrect")',
            "the Ray cluster at --address 127.0.0.1:{port} wants token authentication: set RAY_AUTH_MODE=token "
            "(its token in ~/.ray/auth_token on the head node, or RAY_AUTH_TOKEN)",
        ),
        (
            'RpcError("Timed out while waiting for GCS to become available.")',
            "--address 127.0.0.1:{port} answers on its port, but Ray would not connect (Timed out while waiting "
            "for GCS to become available.): check that it is the head node's GCS port (6379 by default; 10001 for ray://)",
        ),
    ],
)
def test_a_ray_cluster_that_answers_but_refuses_the_driver_is_not_said_to_be_missing(refusal: str, said: str) -> None:
    # Ray 2.60's `ray start --head` wants a token: joining without one was said as "no Ray cluster answers ...
    # start one", of a cluster that was up. Ray's own ray.init, its GCS client refusing as Ray's raises it; in a
    # process of its own, as ray.init refuses to run again where an earlier test of this worker started Ray.
    script = textwrap.dedent(
        f"""
        import socket
        import ray, ray.exceptions, ray._private.node
        from curation.executors.ray_executor import RayExecutor

        def refused(**_):
            raise ray.exceptions.{refusal}

        ray._private.node.GcsClient = refused

        class NotJoined:
            is_initialized = staticmethod(lambda: False)
            init = staticmethod(ray.init)

        with socket.create_server(("127.0.0.1", 0)) as listening:
            port = listening.getsockname()[1]
            try:
                RayExecutor(address=f"127.0.0.1:{{port}}")._connect(NotJoined)
            except ConnectionError as error:
                print(port, error, sep="\\n")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_gcs_server_port_wait_time_s": "1"}  # one try, not twenty
    env.pop("RAY_AUTH_MODE", None)
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    port, _, message = done.stdout.partition("\n")
    assert message.strip() == said.format(port=port), done.stderr[-2000:]


def test_a_ray_client_address_without_a_port_is_probed_at_ray_clients_port(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    tried: list[tuple[str, int]] = []
    monkeypatch.setattr(socket, "create_connection", lambda at, timeout: tried.append(at) or socket.socket())
    ray_ = RecordedRay()
    assert RayExecutor(address="ray://head.example")._connect(ray_) is True
    assert tried == [("head.example", 10001)] and ray_.calls[0]["address"] == "ray://head.example"


def test_a_sql_cursor_and_vqa_rows_taken_on_ray_workers_are_committed(workdir: Path, local_ray: Any) -> None:
    """Sources that note what they took while they read (a SQL cursor, VQA rows) do it in a worker's
    copy: the driver commits it, so the next run takes only what is new, as the embedded executor does."""
    from tests.test_neardup import FORMS, _image
    from tests.test_sql import fill
    from tests.test_sql import recipe as sql_recipe

    url = f"sqlite:///{workdir}/crm.db"
    fill(url, 1, 5)
    spec = {**sql_recipe(url, table="tickets", cursor="updated_at", key=["id"]), "engine": "ray"}
    spec["stages"] = [{"type": "exact_dedup"}]
    run(workdir, spec)
    fill(url, 6, 2)
    second = run(workdir, spec)
    assert second.manifest.counts.input == 2 and second.manifest.extends == 1 and second.manifest.counts.carried == 5

    (workdir / "img").mkdir()
    for index, name in enumerate(("a.jpg", "b.jpg")):
        (workdir / "img" / name).write_bytes(_image(0, index + 1))
    rows = [{"image": "a.jpg", "question": "What is the total?", "answer": "10 USD"}]
    write_jsonl(workdir / "qa.jsonl", rows)
    forms = {**FORMS, "engine": "ray"}
    run(workdir, forms)
    write_jsonl(workdir / "qa.jsonl", [*rows, {"image": "b.jpg", "question": "What is the total?", "answer": "20 USD"}])
    again = run(workdir, forms)
    assert again.manifest.counts.input == 1 and again.manifest.counts.carried == 1


def test_files_and_images_touched_are_compared_by_their_bytes_on_ray(workdir: Path, local_ray: Any) -> None:
    """A touched image is compared in a worker's copy of its watermark: the new mtime it keeps comes back
    to the driver, so the run after is not hashed again for it; a touched file is compared at planning."""
    import os

    from tests.test_neardup import FORMS, _image

    (workdir / "img").mkdir()
    (workdir / "img" / "a.jpg").write_bytes(_image(0, 1))
    write_jsonl(workdir / "qa.jsonl", [{"image": "a.jpg", "question": "What is the total?", "answer": "10 USD"}])
    write_jsonl(workdir / "in" / "a.jsonl", [{"text": "alpha"}])
    forms = {**FORMS, "engine": "ray"}
    docs = {"dataset": "d", "sources": [{"path": "in"}], "record": {"kind": "document"}, "engine": "ray"}
    run(workdir, forms), run(workdir, docs)
    os.utime(workdir / "img" / "a.jpg", (1, 1))
    os.utime(workdir / "in" / "a.jsonl", (1, 1))
    assert run(workdir, forms).message.startswith("nothing new")
    assert run(workdir, docs).message.startswith("nothing new")
    engine = sa.create_engine(f"sqlite:///{workdir}/state.db")
    with engine.connect() as db:
        values = [json.loads(value) for (value,) in db.execute(sa.text("SELECT value FROM watermarks"))]
    engine.dispose()
    assert (
        sum(isinstance(value, dict) and "1970-01-01T00:00:01" in value.get("fingerprint", "") for value in values) == 2
    )


# Write-only to everyone: the kernel refuses to open it for reading, to root too, in any process (the
# workers, which a test's monkeypatch does not reach): an input its run may not read.
WRITE_ONLY = Path("/sys/bus/pci/rescan")


def unreadable_file() -> Path:
    """A file that exists and that no process may read (even as root), or the test is skipped."""
    try:
        WRITE_ONLY.open("rb").close()
    except PermissionError:
        pass
    except OSError:
        pytest.skip(f"{WRITE_ONLY} is not here")
    else:
        pytest.skip(f"{WRITE_ONLY} can be read here")
    return WRITE_ONLY


def keep_links_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the listing (in this process, the driver's) keep a link out of the source's folder, which it
    refuses: a link to ``unreadable_file()`` is the only way to put a file no process may read in a folder; and
    two links to it, which it lists once, as two inputs."""
    monkeypatch.setattr(storage, "_within", lambda uri, root, found, *_: found)
    monkeypatch.setattr(storage, "_once", lambda uri, root, found, *rest: found)


def test_read_tasks_of_one_source_send_back_only_the_unreadable_inputs_each_found(
    workdir: Path, local_ray: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two read tasks of one source, each given a file no process may read: the driver adds what each
    found, to the embedded executor's count. A task sent its copy's whole count: where that copy held
    counts already (one call reading both parts, which share the source's watermark), they came twice."""
    import cloudpickle

    from connectors.state import Watermarks
    from curation.executors.envelope import open_all
    from curation.executors.ray_executor import read_sources, split_sources

    keep_links_out(monkeypatch)
    write_jsonl(workdir / "in" / "a.jsonl", [{"text": "alpha notes"}])
    for name in ("b.jsonl", "c.jsonl"):
        (workdir / "in" / name).symlink_to(unreadable_file())
    docs = {"dataset": "d", "sources": [{"path": "in"}], "record": {"kind": "document"}}
    local, distributed = run_both(workdir, docs)
    assert published(local) == published(distributed)
    assert distributed.manifest.counts.reasons["quarantined"] == {"unreadable": 2}

    watermarks = Watermarks(sa.create_engine("sqlite://"), "d", full_refresh=True)
    parts = split_sources(pipeline.build_sources(load_recipe(write_recipe(workdir, docs)), watermarks))
    assert len(parts) == 3
    driver = RayExecutor()
    driver._parts = parts
    shipped = cloudpickle.loads(cloudpickle.dumps(parts))  # as a read task gets them
    for envelopes in read_sources(pa.table({"task": list(range(len(parts)))}), shipped):
        for letter in open_all(envelopes):
            if letter.watermark:
                driver._take_watermark(json.loads(letter.watermark))
    assert watermarks.unread() == 2


def test_a_file_that_cannot_be_read_is_quarantined_on_ray_as_embedded_and_read_again(
    workdir: Path, local_ray: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    keep_links_out(monkeypatch)
    write_jsonl(workdir / "in" / "a.jsonl", [{"text": "alpha notes"}, {"text": "beta notes"}])
    (workdir / "in" / "b.jsonl").symlink_to(unreadable_file())
    docs = {"dataset": "d", "sources": [{"path": "in"}], "record": {"kind": "document"}}
    local, distributed = run_both(workdir, docs)
    assert published(local) == published(distributed)
    assert distributed.manifest.counts.reasons["quarantined"] == {"unreadable": 1}
    # Its ``UNREAD`` watermark came back from the worker: the next run reads it again, and says so.
    again = run(workdir, {**docs, "engine": "ray"})
    assert again.manifest is None and "1 input(s) (files, image rows) still cannot be read" in again.message
    (workdir / "in" / "b.jsonl").unlink()
    write_jsonl(workdir / "in" / "b.jsonl", [{"text": "gamma notes"}])
    taken = run(workdir, {**docs, "engine": "ray"})
    assert [line["text"] for line in processed(Path(taken.version_uri))] == ["gamma notes"]


def test_a_new_file_read_on_a_ray_worker_is_hashed_there_and_its_hash_committed(
    workdir: Path, local_ray: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file new to its source is hashed as a worker reads it, not read for it apart: the hash comes back
    with the worker's record of what it took (were it lost, the driver would read the file at commit)."""
    import os

    import connectors.state as state

    write_jsonl(workdir / "in" / "a.jsonl", [{"text": "alpha"}, {"text": "beta"}])
    (workdir / "in" / "b.csv").write_text("text\ngamma\n")
    hashed: list[str] = []
    hash_of = state.content_hash
    monkeypatch.setattr(state, "content_hash", lambda uri: hashed.append(Path(uri).name) or hash_of(uri))
    docs = {"dataset": "d", "sources": [{"path": "in"}], "record": {"kind": "document"}, "engine": "ray"}
    assert run(workdir, docs).manifest.counts.written == 3
    assert hashed == []
    values = watermark_values(workdir / "state.db")
    for name in ("a.jsonl", "b.csv"):
        path = workdir / "in" / name
        (entry,) = state.list_files(str(path))
        expected = {"fingerprint": state.fingerprint(entry), "xxh3": xxhash.xxh3_128_hexdigest(path.read_bytes())}
        assert json.loads(values[entry.uri]) == expected
    os.utime(workdir / "in" / "a.jsonl", (1, 1))
    assert run(workdir, docs).message.startswith("nothing new")
    assert hashed == ["a.jsonl"]


def test_a_queued_record_no_longer_in_a_file_read_again_on_ray_is_marked_gone(workdir: Path, local_ray: Any) -> None:
    """The records a run read reach the driver's tally from Ray's workers as from the embedded executor:
    the one removed from its input is marked no longer in the input, the others not."""
    from curation.review.decisions import get_item
    from curation.review.queue import gone_records
    from tests.test_carry import notes, recipe
    from tests.test_review_gone import flag_records

    rows = notes(0, 6)
    write_jsonl(workdir / "in" / "a.jsonl", rows)
    on_ray = {**recipe("out"), "engine": "ray"}
    one = Path(run(workdir, on_ray).version_uri)
    state_url = load_recipe(workdir / "recipe.yaml").state
    engine = sa.create_engine(state_url)
    items = flag_records(state_url, one, [rows[2]["q"], rows[4]["q"]])
    records = {q: get_item(engine, item)["record_id"] for q, item in items.items()}
    write_jsonl(workdir / "in" / "a.jsonl", [row for row in rows if row["q"] != rows[2]["q"]])
    run(workdir, on_ray)
    assert gone_records(engine, "notes", list(records.values())) == {records[rows[2]["q"]]}


def test_a_file_renamed_since_it_was_taken_is_not_published_again_on_ray(workdir: Path) -> None:
    # The sources travel to the workers: what their watermarks keep of earlier runs must pickle.
    a = write_jsonl(workdir / "in" / "a.jsonl", [{"text": "alpha"}, {"text": "beta"}])
    docs = {"dataset": "d", "sources": [{"path": "in"}], "record": {"kind": "document"}, "stages": []}
    docs |= {"engine": "ray", "output": {"validation_fraction": 0.0}}
    run(workdir, docs)
    a.rename(workdir / "in" / "renamed.jsonl")
    write_jsonl(workdir / "in" / "c.jsonl", [{"text": "delta"}])
    second = run(workdir, docs)
    assert sorted(line["text"] for line in outputs(Path(second.version_uri))) == ["alpha", "beta", "delta"]
    assert second.manifest.stats["same_bytes"] == {str(workdir / "in" / "renamed.jsonl"): str(a)}
