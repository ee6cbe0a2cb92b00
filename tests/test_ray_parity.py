"""More recipes the Ray executor must run as the embedded one does: the same records, the same errors."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa

from curation import pipeline
from curation.executors.local import LocalExecutor
from curation.executors.ray_executor import RayExecutor
from curation.pipeline import run_recipe
from curation.review.queue import list_items
from curation.stages.base import StageResult
from schemas.config import Recipe, load_recipe
from schemas.records import FLAG_SCHEMA, set_aside_rows
from tests.helpers import BILLING, outputs, set_aside, write_jsonl, write_recipe
from tests.test_ray import local_ray, published, run_both  # noqa: F401  (the session's Ray instance)
from tests.test_split_sides import days_tickets

ray = pytest.importorskip("ray")


def test_language_filter_decides_as_on_the_embedded_executor(workdir: Path, local_ray: Any) -> None:  # noqa: F811
    # Short texts of a few English words: langdetect's guesses for them move with its random sampling,
    # so only a fixed seed in the process that detects gives both executors the same verdicts.
    rng = random.Random(1)
    words = [
        "account",
        "card",
        "payment",
        "refund",
        "travel",
        "notice",
        "settings",
        "security",
        "password",
        "reset",
        "branch",
        "loan",
        "rate",
    ]
    rows = [{"q": " ".join(rng.choice(words) for _ in range(rng.randint(3, 8))), "a": "Done."} for _ in range(200)]
    write_jsonl(workdir / "in" / "a.jsonl", rows)
    recipe = {
        "dataset": "langs",
        "sources": [{"path": str(workdir / "in")}],
        "record": {"kind": "instruction", "prompt": "{{ q }}", "completion": "a"},
        "stages": [{"type": "language_filter", "languages": ["en"], "min_confidence": 0.8}],
        "batch_rows": 50,
        "output": {"dest": str(workdir / "out")},
    }
    local, distributed = run_both(workdir, recipe)
    expected, actual = published(local), published(distributed)
    assert 0 < expected["counts"]["filtered"] < 200
    assert actual["set_aside"] == expected["set_aside"]
    assert actual["stats"] == expected["stats"]
    assert actual["shards"] == expected["shards"]


def test_a_column_no_record_has_is_the_same_recipe_error_on_ray(
    workdir: Path,
    local_ray: Any,  # noqa: F811
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A column the split and a dedup stage go by, in no file: each file's records are set aside in Ray
    tasks (``missing_column``, before the dedup stage's signatures are computed there), and the run
    fails as the embedded executor's does, with no Ray notes or traceback."""
    from typer.testing import CliRunner

    from curation.cli import app

    write_jsonl(workdir / "in" / "a.jsonl", [{"q": f"question {i}", "a": "answer"} for i in range(30)])
    outputs = {}
    for engine in ("local", "ray"):
        recipe = {
            "dataset": "fields",
            "sources": [{"path": str(workdir / "in")}],
            "record": {"kind": "instruction", "prompt": "{{ q }}", "completion": "a"},
            # A column the split carries, so the recipe cannot tell at load that no record has it.
            "stages": [{"type": "near_dedup", "fields": ["customer"]}],
            "output": {"dest": str(workdir / engine), "group_by": "customer"},
        }
        path = write_recipe(workdir, recipe, name=f"{engine}.yaml")
        capfd.readouterr()
        result = CliRunner().invoke(app, ["run", str(path), "--engine", engine, "--quiet"])
        printed = capfd.readouterr()
        shown = printed.out + printed.err + result.output
        assert "Traceback" not in shown and "Failed to apply" not in shown  # Ray's notes on a failed task
        # The message names the recipe file, which is each engine's own.
        outputs[engine] = (result.exit_code, result.output.splitlines()[-1].replace(f"{engine}.yaml", "RECIPE"))
    assert outputs["local"][0] == 2 and "column 'customer' is missing (output.group_by names it)" in outputs["local"][1]
    assert outputs["ray"] == outputs["local"]
    assert not (workdir / "ray" / "fields" / "v1").exists()


class Flagging:
    """Flags every record for review (as the PII stage flags uncertain detections)."""

    name = "flagging"

    def __call__(self, batch: pa.Table) -> StageResult:
        flags = pa.table(
            {
                "id": batch["id"],
                "source": batch["source"],
                "stage": pa.array([self.name] * batch.num_rows, pa.string()),
                "kind": pa.array(["pii"] * batch.num_rows, pa.string()),
                "detail": pa.array(["uncertain"] * batch.num_rows, pa.string()),
                "payload": pa.array(["{}"] * batch.num_rows, pa.string()),
            },
            schema=FLAG_SCHEMA,
        )
        return StageResult(kept=batch, flags=flags)


class QuarantiningEvens:
    """Quarantines every other record (as an expectation after the PII stage does): each is queued too."""

    name = "quarantining"

    def __call__(self, batch: pa.Table) -> StageResult:
        keep = pa.array([n % 2 == 1 for n in range(batch.num_rows)])
        out = batch.filter(pc.invert(keep))
        aside = set_aside_rows(out["id"], out["source"], self.name, "quarantined", "even")
        return StageResult(kept=batch.filter(keep), set_aside=aside)


def test_review_queue_holds_the_flags_in_the_embedded_executors_order(
    workdir: Path,
    local_ray: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stage's flags come before those of a later stage that quarantines records of the same batch, as
    the embedded executor queues them: the review page lists the items in that order."""
    write_jsonl(workdir / "in" / "a.jsonl", [{"q": f"question {i}", "a": "answer"} for i in range(12)])
    build = pipeline.build_stages
    monkeypatch.setattr(
        pipeline, "build_stages", lambda recipe, *more: [*build(recipe, *more), Flagging(), QuarantiningEvens()]
    )
    queued = {}
    for name, executor in (("local", LocalExecutor()), ("ray", RayExecutor())):
        recipe = {
            "dataset": "queue",
            "sources": [{"path": str(workdir / "in")}],
            "record": {"kind": "instruction", "prompt": "{{ q }}", "completion": "a"},
            "batch_rows": 4,
            "output": {"dest": str(workdir / name)},
            "state": f"sqlite:///{workdir}/{name}.db",  # a flag already queued is not queued again
        }
        loaded = load_recipe(write_recipe(workdir, recipe, name=f"{name}.yaml"))
        run_recipe(loaded, executor=executor)
        queued[name] = [(item["record_id"], item["kind"]) for item in list_items(sa.create_engine(loaded.state))]
    assert [kind for _, kind in queued["local"][:6]] == ["pii"] * 4 + ["quarantined"] * 2  # the first batch's
    assert queued["ray"] == queued["local"]


def test_the_runs_sigterm_handler_is_armed_again_after_ray_shuts_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ray.shutdown()`` puts SIGTERM's default action back in the C library, though Python still names
    the run's handler: a SIGTERM while the run then publishes killed it outright (its staging files left,
    its run unrecorded) instead of stopping it as on the embedded executor. (The stand-in for Ray below
    resets the handler where Python sees it.)"""
    import signal

    from curation.executors import ray_executor

    class Ray:
        initialized = False

        @classmethod
        def is_initialized(cls) -> bool:
            return cls.initialized

        @classmethod
        def init(cls, **_: Any) -> None:
            cls.initialized = True
            signal.signal(signal.SIGTERM, lambda *_: None)  # Ray's own, replaced once connected

        @classmethod
        def shutdown(cls) -> None:
            cls.initialized = False
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def the_runs(signum: int, frame: Any) -> None:
        raise AssertionError("not called here")

    monkeypatch.setattr(ray_executor, "_ray", lambda: Ray)
    monkeypatch.setattr(RayExecutor, "_run", lambda *_: None)
    before = signal.signal(signal.SIGTERM, the_runs)
    try:
        RayExecutor().run([], [], writer=None, tally=None)  # type: ignore[arg-type]
        assert signal.getsignal(signal.SIGTERM) is the_runs
    finally:
        signal.signal(signal.SIGTERM, before)


def near_duplicates_queued(folder: Path, executor: Any, rows: list[dict], duplicates: int) -> tuple[Recipe, list]:
    """``rows`` run through near_dedup by ``executor`` (``duplicates`` set aside): the recipe and the
    near-duplicate items it queued."""
    write_jsonl(folder / "in" / "a.jsonl", rows)
    spec = near_dedup_of_folder(folder / "in")
    spec |= {"output": {"dest": str(folder / "out")}, "state": f"sqlite:///{folder}/state.db"}
    loaded = load_recipe(write_recipe(folder, spec))
    assert run_recipe(loaded, executor=executor).manifest.counts.duplicate == duplicates
    return loaded, near_duplicate_items(loaded)


def near_dedup_of_folder(folder: Path) -> dict[str, Any]:
    """A recipe reading the JSONL files of ``folder`` (q, a) through near_dedup."""
    return {
        "dataset": "near",
        "sources": [{"path": str(folder)}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        "stages": [{"type": "near_dedup", "threshold": 0.7}],
    }


def near_duplicate_items(recipe: Recipe) -> list[Any]:
    from curation.review.queue import review_items

    engine = sa.create_engine(recipe.state)
    with engine.connect() as db:
        items = db.execute(sa.select(review_items).where(review_items.c.kind == "near_duplicate")).all()
    engine.dispose()
    return items


def decide(recipe: Recipe, item: Any, action: str) -> None:
    from curation.review import decisions

    engine = sa.create_engine(recipe.state)
    decisions.decide(engine, item.item_id, "rita", action)
    engine.dispose()


def test_a_rejected_record_never_published_teaches_its_content_on_ray_as_on_the_embedded_executor(
    workdir: Path,
    local_ray: Any,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A near duplicate set aside (never published) that an annotator rejects is read again; the review
    stage learns its content key in the Ray workers, and the driver keeps it as the embedded executor
    does: the same content read later from another input is filtered by the rejection, with no warning."""
    import logging

    rows = [{"q": f"{BILLING}.", "a": "Done."}, {"q": f"{BILLING}!", "a": "Done, updated."}]
    rows += [{"q": f"Where was parcel {i} on day {i}?", "a": f"Parcel {i} arrived."} for i in range(3)]
    outcomes = {}
    for name, executor in (("local", LocalExecutor()), ("ray", RayExecutor())):
        folder = workdir / name
        loaded, (item,) = near_duplicates_queued(folder, executor, rows, duplicates=1)
        decide(loaded, item, "reject")  # the set-aside one: never published
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            second = run_recipe(loaded, executor=executor)  # reads a.jsonl again for the decision
        assert "content key was not stored" not in caplog.text, name
        write_jsonl(folder / "in" / "c.jsonl", [rows[1]])  # the rejected content, from another input
        third = run_recipe(loaded, executor=executor)
        outcomes[name] = (second.manifest.counts.reasons, third.manifest.counts.reasons, third.manifest.stats)
    assert outcomes["local"][1] == {"filtered": {"review": 1}}
    assert outcomes["ray"] == outcomes["local"]


def test_a_readers_warning_in_a_ray_worker_is_logged_by_the_driver_once(
    workdir: Path,
    local_ray: Any,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The SQL reader says, in the worker that reads, how many rows have no cursor value: the driver logs
    it (its logging, the CLI's console, with --quiet too), as the embedded executor does, and only once."""
    import logging

    from tests.test_sql import recipe as sql_recipe
    from tests.test_sql import small_table

    url = small_table(workdir / "crm.db", [(1, "a", "x", None), (2, "b", "y", 2), (3, "c", "z", None)])
    said = (
        f"{url}#t: 2 rows have no value (NULL, or NaN), or one Python cannot hold (infinity), in the cursor column 'u'"
    )
    for name, executor in (("local", LocalExecutor()), ("ray", RayExecutor())):
        spec = {**sql_recipe(url, table="t", cursor="u", key=["id"]), "state": f"sqlite:///{workdir}/{name}.db"}
        spec["output"] = {**spec["output"], "dest": str(workdir / name)}
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            result = run_recipe(load_recipe(write_recipe(workdir, spec)), executor=executor)
        assert result.manifest.counts.reasons == {"quarantined": {"no_cursor_value": 2}}
        assert [r.name for r in caplog.records if said in r.getMessage()] == ["connectors.sql"], name


def test_a_cross_run_stages_signatures_are_computed_once_and_carried_to_the_recorder(tmp_path: Path) -> None:
    """On Ray a cross-run dedup stage computes each record's signature once, before its global step: the
    step reads it from the column that carries it, and the rows it keeps go on with it (not hashed again)."""
    from curation.executors.envelope import Letter, open_all, seal_all
    from curation.executors.ray_duplicates import attach_signatures, drop_rows, signatures_of
    from curation.stages.dedup_index import CrossRunDedup, SignatureIndex
    from curation.stages.neardup import NearDedup
    from schemas.records import source_array

    class Counting(NearDedup):
        hashed = 0

        def signatures(self, batch: pa.Table) -> pa.Table:
            Counting.hashed += batch.num_rows
            return super().signatures(batch)

    stage = CrossRunDedup(Counting(fields=["text"]), SignatureIndex(f"sqlite:///{tmp_path}/s.db", "d"))
    texts = [f"a note about parcel {i} that went to the depot on day {i}" for i in range(6)]
    rows = pa.table(
        {
            "id": [f"r{i}" for i in range(6)],
            "source": source_array("files", "in.jsonl", list(range(1, 7))),
            "text": texts,
        }
    )
    envelopes = seal_all([Letter(rows=rows.slice(0, 4)), Letter(rows=rows.slice(4))])
    signed = attach_signatures(envelopes, stage)
    found = pa.concat_tables(signatures_of(signed, stage))
    assert found.equals(Counting(fields=["text"]).signatures(rows))
    kept = drop_rows(signed, pa.array(["r1"]), stage)
    assert Counting.hashed == 6 + 6  # attach_signatures, and the check just above: no more
    recorded, written = stage.to_record(pa.concat_tables(letter.rows for letter in open_all(kept)))
    assert written["id"].to_pylist() == ["r0", "r2", "r3", "r4", "r5"]
    assert recorded.equals(
        stage.signatures(rows.filter(pc.is_in(rows["id"], value_set=written["id"]))).drop_columns(["source"])
    )


def test_a_near_duplicate_marked_not_a_duplicate_is_published_on_ray_as_on_the_embedded_executor(
    workdir: Path,
    local_ray: Any,  # noqa: F811
) -> None:
    """Ray's distributed resolve runs the stage's own: a record an annotator kept apart is not set aside,
    and the other near duplicate of its cluster still names the record the cluster kept."""

    base = BILLING
    rows = [{"q": f"{base}.", "a": "Done."}, {"q": f"{base}!", "a": "Done, updated."}, {"q": f"{base}?", "a": "Ok."}]
    outcomes = {}
    for name, executor in (("local", LocalExecutor()), ("ray", RayExecutor())):
        folder = workdir / name
        loaded, items = near_duplicates_queued(folder, executor, rows, duplicates=2)
        (item,) = [row for row in items if json.loads(row.source)["line"] == 2]
        decide(loaded, item, "keep")
        second = run_recipe(loaded, executor=executor)  # reads a.jsonl again for the decision
        prompts = sorted(line["prompt"] for line in outputs(Path(second.version_uri)))
        outcomes[name] = (second.manifest.counts.reasons, second.manifest.stats["stages"]["review"], prompts)
    assert outcomes["local"][0] == {"duplicate": {"near_duplicate": 1}} and outcomes["local"][1] == {"kept_apart": 1}
    assert outcomes["local"][2] == [f"{base}!", f"{base}."]
    assert outcomes["ray"] == outcomes["local"]


def test_two_near_copies_marked_not_duplicates_of_one_record_resolve_on_ray_as_on_the_embedded_executor(
    workdir: Path,
    local_ray: Any,  # noqa: F811
) -> None:
    """The decision is on a pair: both marked not a duplicate of the first record, the third is still a
    near copy of the second, which Ray's distributed resolve finds as the embedded executor does."""
    base = BILLING
    rows = [{"q": f"{base}.", "a": "Done."}, {"q": f"{base}!", "a": "Done, updated."}, {"q": f"{base}?", "a": "Ok."}]
    outcomes = {}
    for name, executor in (("local", LocalExecutor()), ("ray", RayExecutor())):
        folder = workdir / name
        loaded, items = near_duplicates_queued(folder, executor, rows, duplicates=2)
        for item in items:
            decide(loaded, item, "keep")
        second = run_recipe(loaded, executor=executor)
        line_of = {item.record_id: json.loads(item.source)["line"] for item in items} | {None: None}
        aside = [
            (row["source"]["line"], row["reason"], line_of.get(row["duplicate_of"], "first"))
            for row in set_aside(Path(second.version_uri))
        ]
        prompts = sorted(line["prompt"] for line in outputs(Path(second.version_uri)))
        outcomes[name] = (aside, prompts)
    # The third is set aside beside the second (line 2), not the first: asked about that pair next.
    assert outcomes["local"] == ([(3, "near_duplicate", 2)], [f"{base}!", f"{base}."])
    assert outcomes["ray"] == outcomes["local"]


def side_by_side(folder: Path, spec: dict[str, Any]) -> dict[str, Recipe]:
    """``spec`` for each executor, on the same inputs (so the same record ids), each with its own output
    and state store."""
    recipes = {}
    for name in EXECUTORS:
        own = {**spec, "output": {**spec.get("output", {}), "dest": str(folder / name)}}
        own["state"] = f"sqlite:///{folder}/{name}.db"
        recipes[name] = load_recipe(write_recipe(folder, own, name=f"{name}.yaml"))
    return recipes


EXECUTORS = {"local": LocalExecutor, "ray": RayExecutor}


def test_a_copy_of_rejected_content_read_later_in_the_same_run_is_filtered_on_ray_as_on_the_embedded_executor(
    workdir: Path,
    local_ray: Any,  # noqa: F811
) -> None:
    """A near duplicate set aside (never published) that an annotator rejects is read again; its content
    key is learned in the run that reads it. The embedded executor then filters a copy read later in that
    same run (in another input after it), though not one read before it. On Ray each input is read and
    reviewed by its own task: the copy read after it is filtered too, and the one before is not."""

    rows = [{"q": f"{BILLING}.", "a": "Done."}, {"q": f"{BILLING}!", "a": "Done, updated."}]
    rows += [{"q": f"Where was parcel {i} on day {i}?", "a": f"Parcel {i} arrived."} for i in range(6)]
    write_jsonl(workdir / "in" / "a.jsonl", [*rows, rows[1]])
    recipes = side_by_side(workdir, near_dedup_of_folder(workdir / "in"))
    for name, recipe in recipes.items():
        assert run_recipe(recipe, executor=EXECUTORS[name]()).manifest.counts.duplicate == 2
        items = near_duplicate_items(recipe)
        (item,) = [item for item in items if json.loads(item.source)["line"] == 2]
        decide(recipe, item, "reject")  # the set-aside one: never published
    write_jsonl(workdir / "in" / "0.jsonl", [rows[1], {"q": "Is the branch open on Sunday?", "a": "No."}])
    write_jsonl(workdir / "in" / "c.jsonl", [{"q": "Where is my card?", "a": "On its way."}, rows[1]])
    outcomes = {}
    for name, recipe in recipes.items():
        second = run_recipe(recipe, executor=EXECUTORS[name]())  # reads a.jsonl again for the decision
        found = published(second)
        outcomes[name] = (found["ids"], found["set_aside"], found["counts"]["reasons"], found["stats"])
    # a.jsonl's rejected record and its copy on line 9, c.jsonl's copy (0.jsonl's came before them)
    assert outcomes["local"][2]["filtered"] == {"review": 3}
    assert outcomes["ray"] == outcomes["local"]


def test_copies_of_two_rejected_records_of_one_content_name_the_first_read_on_ray_as_on_the_embedded_executor(
    workdir: Path,
    local_ray: Any,  # noqa: F811
) -> None:
    """Two near duplicates of one content, in two inputs, both rejected (never published): the embedded
    executor's review stage learns the content from the first it reads, and a copy read later names that
    record, in its set-aside row and in the copies the state store keeps for undoing the rejection. On
    Ray the task reading the second input learned it from its own rejected record, and named that one."""
    from curation.review.rejected_content import rejected_copies

    first, again = {"q": f"{BILLING}.", "a": "Done."}, {"q": f"{BILLING}!", "a": "Done, updated."}
    write_jsonl(workdir / "in" / "a.jsonl", [first, again, {"q": "Where is parcel 1?", "a": "Here."}])
    write_jsonl(workdir / "in" / "b.jsonl", [{"q": "Where is parcel 2?", "a": "There."}, again])
    recipes = side_by_side(workdir, near_dedup_of_folder(workdir / "in"))
    for name, recipe in recipes.items():
        assert run_recipe(recipe, executor=EXECUTORS[name]()).manifest.counts.duplicate == 2
        items = near_duplicate_items(recipe)
        assert len(items) == 2
        for item in items:
            decide(recipe, item, "reject")
    write_jsonl(workdir / "in" / "b.jsonl", [{"q": "Where is parcel 2?", "a": "There."}, again, again])
    outcomes = {}
    for name, recipe in recipes.items():
        second = run_recipe(recipe, executor=EXECUTORS[name]())
        engine = sa.create_engine(recipe.state)
        with engine.connect() as db:
            kept = {tuple(row) for row in db.execute(sa.select(rejected_copies.c.record_id, rejected_copies.c.copy_id))}
        engine.dispose()
        aside = {
            (row["id"], row["detail"], row["duplicate_of"])
            for path in Path(second.version_uri, "set_aside").glob("*.jsonl")
            for row in map(json.loads, path.read_text().splitlines())
        }
        outcomes[name] = (aside, kept, second.manifest.counts.reasons)
    assert outcomes["local"][2] == {"filtered": {"review": 3}}  # the two rejected records, b.jsonl's line 3
    assert outcomes["ray"] == outcomes["local"]


def test_two_near_dedup_stages_of_one_recipe_run_on_ray_as_on_the_embedded_executor(
    workdir: Path,
    local_ray: Any,  # noqa: F811
) -> None:
    """The second is named near_dedup_2 on both executors: its signatures, items and statistics its own."""
    from curation.review.queue import review_items

    answer = "We updated the billing address on your account, and the next invoice goes to the new one"
    rows = [
        {"q": f"{BILLING}.", "a": "Done."},
        {"q": "Where is it?", "a": answer},
        {"q": f"{BILLING}!", "a": "Ok."},
        {"q": "And now?", "a": f"{answer}."},
    ]
    outcomes = {}
    for name, executor in (("local", LocalExecutor()), ("ray", RayExecutor())):
        folder = workdir / name
        write_jsonl(folder / "in" / "a.jsonl", rows)
        spec = {
            "dataset": "near",
            "sources": [{"path": str(folder / "in")}],
            "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
            "stages": [{"type": "near_dedup", "fields": ["prompt"]}, {"type": "near_dedup", "fields": ["completion"]}],
            "output": {"dest": str(folder / "out")},
            "state": f"sqlite:///{folder}/state.db",
        }
        loaded = load_recipe(write_recipe(folder, spec))
        first = run_recipe(loaded, executor=executor)
        engine = sa.create_engine(loaded.state)
        with engine.connect() as db:
            stages = sorted(db.execute(sa.select(review_items.c.stage)).scalars())
        engine.dispose()
        write_jsonl(folder / "in" / "b.jsonl", [{"q": f"{BILLING}?", "a": "Fine."}])
        second = run_recipe(loaded, executor=executor)
        outcomes[name] = (first.manifest.counts.reasons, stages, second.manifest.counts.reasons)
    assert outcomes["local"] == (
        {"duplicate": {"near_duplicate": 2}},
        ["near_dedup", "near_dedup_2"],
        {"duplicate": {"earlier_version": 1}},
    )
    assert outcomes["ray"] == outcomes["local"]


def test_the_first_of_a_pages_near_copies_is_kept_on_ray_as_on_the_embedded_executor(
    workdir: Path,
    local_ray: Any,  # noqa: F811
) -> None:
    """A page's sections share their source (URI, no line, no page): the one kept is the first in the
    page on both executors, not the one whose id sorts first."""
    words = "Passwords are rotated every ninety days and never sent by email to anyone"
    for name in ("a", "b"):
        sections = "".join(f"<h2>Part {n}</h2><p>{words}{'.' * n}</p>" for n in range(1, 7))
        page = f"<main><h1>{name}</h1><p>What the security team asks of everyone.</p>{sections}</main>"
        (workdir / "docs").mkdir(exist_ok=True)
        (workdir / "docs" / f"{name}.html").write_text(page)
    recipe = {
        "dataset": "pages",
        "sources": [{"type": "documents", "path": str(workdir / "docs")}],
        "record": {"kind": "document"},
        "stages": [{"type": "exact_dedup"}, {"type": "near_dedup", "threshold": 0.5}],
        "output": {"dest": str(workdir / "out"), "format": "text"},
    }
    local, distributed = run_both(workdir, recipe)
    texts = [line["text"] for line in outputs(Path(local.version_uri))]
    assert sorted(texts) == ["# a\n\nWhat the security team asks of everyone.", f"## Part 1\n\n{words}."]
    assert published(distributed)["set_aside"] == published(local)["set_aside"]
    assert published(distributed)["ids"] == published(local)["ids"]


def test_two_filter_and_expectations_stages_of_one_recipe_keep_their_names_on_ray(
    workdir: Path,
    local_ray: Any,  # noqa: F811
) -> None:
    """Each stage's statistics and set-aside rows under its own name (length_filter_2, expectations_2),
    a global stage (unique) included, on both executors."""
    rows = [
        {"q": "Summarise the call", "a": "The quarterly report shows revenue grew in every region."},
        {"q": "Too short?", "a": "ok"},
        {"q": "Why " * 20, "a": "Because the report says so, in every region."},
        {"q": "Repeat it", "a": "Fine and done, thanks."},
        {"q": "Repeat it", "a": "Fine and done."},
        {"q": "Say it twice", "a": "Twice as nice."},
        {"q": "Say it again", "a": "Twice as nice."},
    ]
    outcomes = {}
    for name, executor in (("local", LocalExecutor()), ("ray", RayExecutor())):
        folder = workdir / name
        write_jsonl(folder / "in" / "a.jsonl", rows)
        spec = {
            "dataset": "named",
            "sources": [{"path": str(folder / "in")}],
            "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
            "stages": [
                {"type": "length_filter", "fields": ["completion"], "min_chars": 3},
                {"type": "length_filter", "fields": ["prompt"], "max_chars": 60},
                {"type": "expectations", "expect": [{"column": "prompt", "check": "unique"}]},
                {"type": "expectations", "expect": [{"column": "completion", "check": "unique"}]},
            ],
            "output": {"dest": str(folder / "out")},
            "state": f"sqlite:///{folder}/state.db",
        }
        result = run_recipe(load_recipe(write_recipe(folder, spec)), executor=executor)
        stages = {k: v for k, v in result.manifest.stats["stages"].items() if k.startswith("length_filter")}
        aside = sorted((row["source"]["line"], row["stage"]) for row in set_aside(Path(result.version_uri)))
        outcomes[name] = (stages, aside)
    assert outcomes["local"] == (
        {
            "length_filter": {"checked": 7, "removed:length": 1},
            "length_filter_2": {"checked": 6, "removed:length": 1},
        },
        [
            (2, "length_filter"),
            (3, "length_filter_2"),
            (4, "expectations"),
            (5, "expectations"),
            (6, "expectations_2"),
            (7, "expectations_2"),
        ],
    )
    assert outcomes["ray"] == outcomes["local"]


def test_partition_folders_are_read_as_on_the_embedded_executor(workdir: Path, local_ray: Any) -> None:  # noqa: F811
    # One read task per file: each must find the keys of every file the source lists, so a flat
    # file beside ``year=2025/`` holds null in ``year`` there too (grouped by it, as its own group).
    for category, year in (("Dining", "2024"), ("Dining", "2025"), ("Travel", "2025")):
        rows = [{"q": f"{category} question {i} of {year}", "a": f"Answer {i}."} for i in range(6)]
        write_jsonl(workdir / "tx" / f"category={category}" / f"year={year}" / "part-0.jsonl", rows)
    write_jsonl(workdir / "tx" / "category=Bills%2FUtilities" / "old.jsonl", [{"q": "Power bill?", "a": "Paid."}] * 3)
    recipe = {
        "dataset": "lake",
        "sources": [{"path": str(workdir / "tx"), "hive_partitioning": True}],
        "record": {"kind": "instruction", "prompt": "{{ q }} ({{ category }})", "completion": "a"},
        "output": {"dest": str(workdir / "out"), "validation_fraction": 0.3, "group_by": "year"},
    }
    local, distributed = run_both(workdir, recipe)
    expected, actual = published(local), published(distributed)
    assert expected["counts"]["written"] == 19 and expected["counts"]["duplicate"] == 2
    assert local.manifest.split["groups"] == distributed.manifest.split["groups"]
    assert actual == expected


def test_a_parquet_file_of_0_bytes_holds_no_records_on_ray_as_on_the_embedded_executor(
    workdir: Path,
    local_ray: Any,  # noqa: F811
) -> None:
    # A writer that stopped leaves a 0-byte part file: each executor reads it as empty, neither fails the run.
    import pyarrow.parquet as pq

    (workdir / "tx").mkdir()
    pq.write_table(
        pa.table({"q": [f"Question {i}?" for i in range(6)], "a": ["Yes."] * 6}), workdir / "tx" / "a.parquet"
    )
    (workdir / "tx" / "b.parquet").write_bytes(b"")
    recipe = {
        "dataset": "lake",
        "sources": [{"path": str(workdir / "tx")}],
        "record": {"kind": "instruction", "prompt": "{{ q }}", "completion": "a"},
        "output": {"dest": str(workdir / "out")},
    }
    local, distributed = run_both(workdir, recipe)
    expected, actual = published(local), published(distributed)
    assert expected["counts"]["written"] == 6 and expected["set_aside"] == set()
    assert actual == expected


def test_a_jsonl_key_only_later_lines_have_is_null_before_them_on_ray_as_on_the_embedded_executor(
    workdir: Path,
    local_ray: Any,  # noqa: F811
) -> None:
    # A Ray read task reads a file as the embedded executor does: the first lines, without the key the
    # split goes by, are split as ones with no value (their batch lacked the column: set aside before).
    rows = [{"q": f"Question {i}?", "a": "Yes.", **({"segment": f"s{i % 2}"} if i >= 5 else {})} for i in range(10)]
    write_jsonl(workdir / "in" / "a.jsonl", rows)
    write_jsonl(workdir / "in" / "b.jsonl", [{"q": "Other question?", "a": "No."}])  # no line has it
    recipe = {
        "dataset": "segments",
        "sources": [{"path": str(workdir / "in")}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        "batch_rows": 5,
        "output": {"dest": str(workdir / "out"), "validation_fraction": 0.3, "group_by": "segment"},
    }
    local, distributed = run_both(workdir, recipe)
    expected, actual = published(local), published(distributed)
    assert expected["counts"]["written"] == 10 and expected["counts"]["quarantined"] == 1
    assert actual == expected


def test_a_stratified_split_deals_on_across_scheduled_runs_on_ray_as_on_the_embedded_executor(
    workdir: Path,
    local_ray: Any,  # noqa: F811
) -> None:
    """Each run's label counters go on from the version it extends on Ray too: the same records on the same
    sides, the same counts dealt, run after run."""
    spec: dict[str, Any] = {
        "dataset": "tickets",
        "sources": [{"path": str(workdir / "in")}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a", "label": "label"},
        "output": {"validation_fraction": 0.1, "stratify_by": "label"},
        "stages": [],
    }
    recipes = side_by_side(workdir, spec)
    for day in range(1, 5):
        write_jsonl(workdir / "in" / f"day{day}.jsonl", days_tickets(day, 1))
        local, distributed = (run_recipe(recipes[name], executor=EXECUTORS[name]()) for name in EXECUTORS)
        assert published(distributed) == published(local)
        assert distributed.manifest.split == local.manifest.split
    assert sum(units for units, _ in local.manifest.split["dealt"].values()) == 60
