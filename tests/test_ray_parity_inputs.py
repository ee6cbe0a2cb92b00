"""The session's input and split features on Ray as on the embedded executor: the same recipe on the same
inputs publishes the same records on the same sides, with the same counts per reason."""

from __future__ import annotations

import bz2
import gzip
import json
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from connectors.storage import StorageError
from curation.executors.local import LocalExecutor
from curation.pipeline import RunResult, run_recipe
from schemas.config import load_recipe
from tests.helpers import write_jsonl, write_recipe
from tests.test_ray import local_ray, published, run_both  # noqa: F401  (the session's Ray instance)
from tests.test_ray_parity import EXECUTORS, side_by_side
from tests.test_split_sides import image_sides, kept_sides, picture, questions, scans, side_of_each

ray = pytest.importorskip("ray")


@pytest.mark.parametrize("setting", ["group_by", "stratify_by"])
def test_compressed_hive_files_and_a_file_without_the_split_column_on_ray(
    workdir: Path,
    local_ray: Any,  # noqa: F811
    setting: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Hive's compressed text files (``000001_0.gz``, ``.deflate``, ``.bz2``, ``.zst``) read in the declared
    format in the workers, a ``.snappy`` one left out; a file lacking the column the split goes by sets its
    records aside as ``missing_column`` there too."""
    folder = workdir / "tx" / "category=Dining" / "year=2025"
    folder.mkdir(parents=True)

    def table(*rows: str, header: str = "description\x01account") -> bytes:
        return "\n".join([header, *rows, ""]).encode()

    (folder / "000000_0").write_bytes(table(*(f"x{i}\x01c{i % 3}" for i in range(4))))
    (folder / "000001_0.gz").write_bytes(gzip.compress(table(*(f"coffee{i}\x01c{i % 4}" for i in range(5)))))
    (folder / "000002_0.deflate").write_bytes(zlib.compress(table(*(f"lunch{i}\x01c{i % 5}" for i in range(6)))))
    (folder / "000003_0.bz2").write_bytes(bz2.compress(table(*(f"tea{i}\x01c{i}" for i in range(3)))))
    with pa.CompressedOutputStream(str(folder / "000004_0.zst"), "zstd") as out:
        out.write(table(*(f"cake{i}\x01c{i % 2}" for i in range(4))))
    (folder / "000005_0.snappy").write_bytes(b"\x00\x00\x00\x10framed by Hadoop")
    old = workdir / "tx" / "category=Dining" / "year=2024"
    old.mkdir()
    (old / "000000_0.gz").write_bytes(gzip.compress(table("old1", "old2", "old3", header="description")))
    recipe = {
        "dataset": "tx",
        "sources": [{"path": str(workdir / "tx"), "hive_partitioning": True, "format": "csv", "csv_delimiter": "\x01"}],
        "record": {"kind": "instruction", "prompt": "{{ description }} in {{ year }}", "completion": "category"},
        "output": {"dest": str(workdir / "out"), "validation_fraction": 0.3, setting: "account"},
    }
    with caplog.at_level("WARNING"):
        local, distributed = run_both(workdir, recipe)
    said = [r.getMessage() for r in caplog.records if "cannot unpack" in r.getMessage()]
    assert len(said) == 2 and said[0].endswith("000005_0.snappy")  # once by each run, as it lists
    expected = published(local)
    assert expected["counts"]["written"] == 22
    assert expected["counts"]["reasons"] == {"quarantined": {"missing_column": 3}}
    assert set(expected["ids"]) == {"train", "validation"}
    assert published(distributed) == expected
    assert distributed.manifest.split == local.manifest.split


START = datetime(2026, 1, 1, tzinfo=UTC)


def test_sides_kept_in_a_delta_and_for_edited_keyed_rows_of_a_query_with_params_on_ray(
    workdir: Path,
    local_ray: Any,  # noqa: F811
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A delta version (``carry_forward: false``) under another seed: the records of a changed file, read again
    whole, and a query's keyed rows edited since, read again by its timestamptz cursor with the query's
    ``params``, keep the sides they were published on, on both executors alike. This driver reads PostgreSQL
    under another time zone (PGTZ) than the Ray workers, which read it in the server's: both publish the
    timestamptz in UTC, so the rows' text and ids are the same."""
    engine = sa.create_engine(postgres_url)
    with engine.begin() as db:
        db.exec_driver_sql("DROP TABLE IF EXISTS ray_tickets")
        db.exec_driver_sql(
            "CREATE TABLE ray_tickets (id int PRIMARY KEY, subject text, reply text, queue text, at timestamptz)"
        )
        db.execute(
            sa.text("INSERT INTO ray_tickets VALUES (:id, :subject, :reply, :queue, :at)"),
            [
                {
                    "id": n,
                    "subject": f"Card declined abroad #{n}",
                    "reply": f"Travel notice set for ticket {n}.",
                    "queue": "spam" if n % 7 == 6 else "cards",
                    "at": START + timedelta(minutes=n),
                }
                for n in range(40)
            ],
        )

    def notes(numbers: range) -> list[dict[str, str]]:
        return [{"subject": f"note {n}", "reply": "ok", "queue": "xyz"[n % 3], "at": "then"} for n in numbers]

    write_jsonl(workdir / "in" / "notes.jsonl", notes(range(40)))
    query = "SELECT id, subject, reply, queue, at FROM ray_tickets WHERE queue <> :skip"
    spec: dict[str, Any] = {
        "dataset": "support",
        "sources": [
            {
                "type": "sql",
                "url": postgres_url,
                "query": query,
                "params": {"skip": "spam"},
                "cursor": "at",
                "key": ["id"],
            },
            {"path": str(workdir / "in")},
        ],
        "record": {
            "kind": "instruction",
            "prompt": "{{ subject }} (at {{ at }})",
            "completion": "{{ reply }}",
            "label": "queue",
        },
        "output": {"validation_fraction": 0.3, "carry_forward": False, "stratify_by": "label"},
        "stages": [],  # with a dedup stage an unchanged record of a changed file is set aside as earlier_version
    }
    monkeypatch.setenv("PGTZ", "America/St_Johns")  # this driver's sessions only: Ray's workers started before
    recipes = side_by_side(workdir, spec)
    first = {name: run_recipe(recipe, executor=EXECUTORS[name]()) for name, recipe in recipes.items()}
    assert published(first["ray"]) == published(first["local"])
    with engine.begin() as db:  # every other ticket edited: a new reply and queue, a later moment
        db.exec_driver_sql(
            "UPDATE ray_tickets SET reply = reply || ' Card reissued.', queue = 'billing', "
            "at = TIMESTAMPTZ '2026-01-02 00:00+00' WHERE mod(id, 2) = 0"
        )
    engine.dispose()
    write_jsonl(workdir / "in" / "notes.jsonl", notes(range(40, 50)) + notes(range(40)))  # new notes on top
    spec["output"] = {**spec["output"], "split_seed": "another"}
    recipes = side_by_side(workdir, spec)
    second = {name: run_recipe(recipe, executor=EXECUTORS[name]()) for name, recipe in recipes.items()}
    expected = published(second["local"])
    assert expected["counts"]["written"] == 20 + 50  # the even tickets (no longer skipped), the file's notes
    assert published(second["ray"]) == expected
    for name in EXECUTORS:
        before, after = (side_of_each(Path(run.version_uri)) for run in (first[name], second[name]))
        assert kept_sides(before, after) == {}, name


def scans_recipe(workdir: Path) -> dict[str, Any]:
    """VQA records of the pictures in ``img`` and the sidecar files in ``qa``, half to validation."""
    return {
        "dataset": "scans",
        "sources": [{"type": "images", "path": str(workdir / "img"), "sidecar": str(workdir / "qa")}],
        "record": {"kind": "vqa"},
        "output": {"validation_fraction": 0.5},
    }


def test_image_sides_and_unreadable_rows_on_ray(workdir: Path, local_ray: Any, bucket: str) -> None:  # noqa: F811
    """VQA images keep their sides when changed in place, their new questions read before the questions read
    again joining them; two identical rows about an image no process may read count as two unreadable inputs
    (counted in the workers, summed on the driver), in the version and in a scheduled run's message; a
    link out of the images folder is quarantined in the workers too."""
    names = scans(workdir / "img", 12)
    (workdir / "img" / "leaving.png").symlink_to(workdir / "elsewhere.png")
    (workdir / "elsewhere.png").write_bytes(picture(1))
    # An image archived to Glacier is listed and not read until restored (as root, a local file is always
    # read, and one outside the folder is not read at all).
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="img/locked.png", Body=picture(2), StorageClass="GLACIER")
    locked = {"image": "locked.png", "question": "Question 0 about locked.png", "answer": "yes"}
    s3.put_object(Bucket=bucket, Key="qa.jsonl", Body=(json.dumps(locked) + "\n") * 2)
    leaving = {"image": "leaving.png", "question": "Question 0 about leaving.png", "answer": "yes"}
    write_jsonl(workdir / "qa" / "b.jsonl", [*questions(names, range(2)), leaving])
    spec = scans_recipe(workdir)
    spec["sources"].append({"type": "images", "path": f"s3://{bucket}/img", "sidecar": f"s3://{bucket}/qa.jsonl"})
    recipes = side_by_side(workdir, spec)

    def run_each() -> dict[str, RunResult]:
        return {name: run_recipe(recipe, executor=EXECUTORS[name]()) for name, recipe in recipes.items()}

    first = run_each()
    expected = published(first["local"])
    assert expected["counts"]["reasons"] == {"quarantined": {"unreadable": 2, "missing_image": 1}}
    assert published(first["ray"]) == expected
    scans(workdir / "img", len(names), redone=True)  # every scan redone
    write_jsonl(workdir / "qa" / "a.jsonl", questions(names, range(2, 3)))  # read before b.jsonl
    second = run_each()
    expected = published(second["local"])
    assert expected["counts"]["written"] == 36
    assert published(second["ray"]) == expected
    for name in EXECUTORS:
        before, after = (side_of_each(Path(run.version_uri)) for run in (first[name], second[name]))
        assert kept_sides(before, after) == {}, name
        sides, later = (image_sides(Path(run.version_uri)) for run in (first[name], second[name]))
        assert {image: on for image, on in later.items() if on != sides[image]} == {}, name
    third = run_each()
    for name, result in third.items():
        assert result.manifest is None and "2 input(s) (files, image rows) still cannot be read" in result.message, name


def test_an_edited_sidecar_an_archived_image_and_a_changed_one_on_ray(workdir: Path, local_ray: Any) -> None:  # noqa: F811
    """A sidecar parsed at planning (edited: its rows replace what it gave) is parsed again by the Ray task
    reading it; an image moved away keeps its records, one changed in place has its questions read again,
    and its new questions, in a sidecar read before them, join them."""
    names = scans(workdir / "img", 10)
    write_jsonl(workdir / "qa" / "a.jsonl", questions(names[:5], range(2)))
    write_jsonl(workdir / "qa" / "b.jsonl", questions(names[5:], range(2)))
    recipes = side_by_side(workdir, scans_recipe(workdir))
    first = {name: run_recipe(recipe, executor=EXECUTORS[name]()) for name, recipe in recipes.items()}
    assert published(first["ray"]) == published(first["local"])
    edited = questions(names[:5], range(2))
    edited[3] = {**edited[3], "answer": "no"}  # a corrected answer
    write_jsonl(workdir / "qa" / "a.jsonl", edited)
    (workdir / "img" / names[6]).rename(workdir / names[6])  # archived once taken
    (workdir / "img" / names[7]).write_bytes(picture(77))  # redone in place
    write_jsonl(workdir / "qa" / "b.jsonl", questions(names[5:], range(2)) + questions(names[8:], range(2, 3)))
    # New questions about the changed image, met before its questions read again (in b.jsonl).
    write_jsonl(workdir / "qa" / "0.jsonl", questions(names[7:9], range(3, 4)))
    second = {name: run_recipe(recipe, executor=EXECUTORS[name]()) for name, recipe in recipes.items()}
    expected = published(second["local"])
    assert published(second["ray"]) == expected
    assert expected["counts"]["input"] == 10 + 2 + 2 + 2  # a.jsonl's rows, scan7's questions, four new
    for name in EXECUTORS:
        before, after = (side_of_each(Path(run.version_uri)) for run in (first[name], second[name]))
        assert kept_sides(before, after) == {}, name
        sides, later = (image_sides(Path(run.version_uri)) for run in (first[name], second[name]))
        assert {image: on for image, on in later.items() if on != sides[image]} == {}, name


def test_a_query_with_params_read_whole_on_ray(workdir: Path, local_ray: Any) -> None:  # noqa: F811
    """A query without a cursor is read whole, its params bound in the Ray task as at planning (its
    fingerprint): unchanged, nothing new; a row edited, the result replaces what it gave, sides kept."""
    from tests.helpers import sqlite_db

    rows = ", ".join(f"({n}, 'Where is parcel {n}?', 'Here.', '{'ab'[n % 2]}')" for n in range(30))
    url = sqlite_db(
        workdir / "crm.db",
        "CREATE TABLE notes (id int, q text, a text, team text)",
        f"INSERT INTO notes VALUES {rows}",
    )
    spec = {
        "dataset": "notes",
        "sources": [
            {"type": "sql", "url": url, "query": "SELECT q, a FROM notes WHERE team = :team", "params": {"team": "a"}}
        ],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        "output": {"validation_fraction": 0.4},
    }
    recipes = side_by_side(workdir, spec)

    def run_each() -> dict[str, RunResult]:
        return {name: run_recipe(recipe, executor=EXECUTORS[name]()) for name, recipe in recipes.items()}

    first = run_each()
    assert first["local"].manifest.counts.written == 15
    assert published(first["ray"]) == published(first["local"])
    assert all(result.manifest is None for result in run_each().values())
    sqlite_db(
        workdir / "crm.db", "UPDATE notes SET a = 'Gone.' WHERE id = 4", "UPDATE notes SET a = 'No.' WHERE id = 5"
    )
    third = run_each()
    expected = published(third["local"])
    assert published(third["ray"]) == expected
    for name in EXECUTORS:
        before, after = (side_of_each(Path(run.version_uri)) for run in (first[name], third[name]))
        assert kept_sides(before, after) == {}, name


def test_a_parquet_file_of_0_bytes_written_since_is_read_on_ray(workdir: Path, local_ray: Any) -> None:  # noqa: F811
    """A 0-byte part file a Ray task read as empty is taken as it was then (its watermark comes back from the
    task): once its writer finishes it, the next run reads its records, as on the embedded executor."""
    import pyarrow.parquet as pq

    def part(name: str, count: int) -> None:
        rows = {"q": [f"Question {name}{i}?" for i in range(count)], "a": ["Yes."] * count}
        pq.write_table(pa.table(rows), workdir / "tx" / name)

    (workdir / "tx").mkdir()
    part("a.parquet", 6)
    (workdir / "tx" / "b.parquet").write_bytes(b"")
    spec = {
        "dataset": "lake",
        "sources": [{"path": str(workdir / "tx")}],
        "record": {"kind": "instruction", "prompt": "{{ q }}", "completion": "a"},
        "output": {"validation_fraction": 0.3},
    }
    recipes = side_by_side(workdir, spec)
    runs = [{name: run_recipe(recipe, executor=EXECUTORS[name]()) for name, recipe in recipes.items()}]
    part("b.parquet", 4)
    runs.append({name: run_recipe(recipe, executor=EXECUTORS[name]()) for name, recipe in recipes.items()})
    assert [run["local"].manifest.counts.input for run in runs] == [6, 4]
    for run in runs:
        assert published(run["ray"]) == published(run["local"])


def test_an_hf_image_feature_published_as_vqa_images_on_ray(workdir: Path, local_ray: Any) -> None:  # noqa: F811
    """A Hugging Face Image() feature's pictures are checked and published by the Ray workers as by the embedded
    executor: the same records on the same sides, the same pictures, the same rows quarantined."""
    from tests.test_hf import image_rows, png

    images = [{"bytes": png(10 * n), "path": None} for n in range(8)]
    images += [None, {"bytes": b"not an image", "path": "x.png"}, {"bytes": None, "path": "/etc/hostname"}]
    (workdir / "hub" / "data").mkdir(parents=True)
    pq.write_table(image_rows(images), workdir / "hub" / "data" / "train-00000-of-00001.parquet")
    recipe = {
        "dataset": "hub-vqa",
        "sources": [{"type": "hf", "path": str(workdir / "hub")}],
        "record": {"kind": "vqa"},
        "output": {"dest": str(workdir / "out"), "validation_fraction": 0.5},
    }
    local, distributed = run_both(workdir, recipe)
    expected = published(local)
    assert expected["counts"]["written"] == 8
    assert expected["counts"]["reasons"] == {"quarantined": {"missing_image": 2, "unsupported": 1}}
    assert published(distributed) == expected
    pictures = [
        {str(p.relative_to(run.version_uri)): p.read_bytes() for p in Path(run.version_uri).glob("*/images/*")}
        for run in (local, distributed)
    ]
    assert len(pictures[0]) == 8 and pictures[0] == pictures[1]


def test_image_dedup_on_hf_images_named_by_paths_is_refused_by_name_on_ray(workdir: Path, local_ray: Any) -> None:  # noqa: F811
    """Refused when the Ray workers read the file, by file and column as by the embedded executor."""
    from curation.executors.ray_executor import RayExecutor
    from tests.test_hf import path_rows, png

    file = path_rows(workdir, [png(0), png(0)])
    recipe = {
        "dataset": "paths",
        "sources": [{"type": "hf", "path": str(workdir / "hub")}],
        "record": {"kind": "vqa", "question": "{{ 'Which colour?' }}"},
        "stages": [{"type": "image_dedup"}],
        "output": {"dest": str(workdir / "out"), "validation_fraction": 0.0},
    }
    loaded = load_recipe(write_recipe(workdir, recipe))
    for executor in (LocalExecutor(), RayExecutor()):
        with pytest.raises(StorageError) as raised:
            run_recipe(loaded, executor=executor, full_refresh=True)
        assert str(raised.value).startswith(f"{file}: image_dedup needs the images' bytes; column 'image' holds text")
        assert "Traceback" not in str(raised.value)
    assert not (workdir / "out" / "paths").exists()
