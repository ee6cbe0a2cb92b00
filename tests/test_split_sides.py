"""A record published on one side of the split stays there in later versions, whatever moved: a model trained
on v1 must not be scored on its own training rows in v2 (README "Splits")."""

from __future__ import annotations

import io
import logging
import shutil
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa
from PIL import Image

import curation.pipeline as pipeline
import curation.split as split_module
from curation.split import Splitter
from tests.helpers import as_jsonl_lineage, lineage_rows, read_lines, run, write_jsonl

SEED_CHANGED = {"split_seed": "another"}  # a hashed split moves records with its seed


def labelled(dataset: str, output: dict[str, Any]) -> dict[str, Any]:
    """A recipe of instruction records labelled by their ``label`` column, read from ``in``, with ``output``."""
    return {
        "dataset": dataset,
        "sources": [{"path": "in"}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a", "label": "label"},
        "output": output,
        "stages": [],
    }


def side_of_each(version: Path) -> dict[str, str]:
    """record id -> split, from the lineage (carried records too)."""
    return {row["id"]: row["shard"].split("/")[0] for row in lineage_rows(version)}


def kept_sides(before: dict[str, str], after: dict[str, str]) -> dict[str, tuple[str, str]]:
    """The records of ``before`` that ``after`` holds on the other side: (side before, side after)."""
    return {record: (side, after[record]) for record, side in before.items() if after.get(record, side) != side}


@pytest.mark.parametrize("then", [{"stratify_by": "label"}, SEED_CHANGED])
def test_a_delta_version_keeps_the_sides_of_a_changed_files_records(workdir: Path, then: dict[str, Any]) -> None:
    """``carry_forward: false``: a changed file is read again whole and its unchanged records are in the delta
    again; they keep the side the version they were published in holds them on."""

    def notes(numbers: range) -> list[dict[str, str]]:
        return [{"q": f"note {n}", "a": "ok", "label": "xyz"[n % 3]} for n in numbers]

    write_jsonl(workdir / "in" / "notes.jsonl", notes(range(60)))
    recipe: dict[str, Any] = labelled(
        "notes", {"validation_fraction": 0.2, "carry_forward": False, "stratify_by": "label"}
    )  # no stages: with a dedup stage an unchanged record of a changed file is set aside as earlier_version
    before = side_of_each(Path(run(workdir, recipe).version_uri))
    write_jsonl(workdir / "in" / "notes.jsonl", notes(range(60, 73)) + notes(range(60)))  # new notes on top
    recipe["output"] = {**recipe["output"], **then}
    delta = side_of_each(Path(run(workdir, recipe).version_uri))
    assert len(delta) == 73 and before.keys() <= delta.keys()  # a delta: the file's records, read again
    assert kept_sides(before, delta) == {}


def test_a_delta_keeps_the_sides_of_every_version_in_its_chain(workdir: Path) -> None:
    """A delta version holds only its own records: a file changed again takes each record's side from the
    latest version of the chain that holds it, not only from the version before."""
    write_jsonl(workdir / "in" / "a.jsonl", [{"q": f"a {n}", "a": "ok"} for n in range(40)])
    recipe: dict[str, Any] = {
        "dataset": "notes",
        "sources": [{"path": "in"}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        "output": {"validation_fraction": 0.3, "carry_forward": False},
        "stages": [],
    }
    before = side_of_each(Path(run(workdir, recipe).version_uri))
    write_jsonl(workdir / "in" / "b.jsonl", [{"q": "b", "a": "ok"}])
    assert len(side_of_each(Path(run(workdir, recipe).version_uri))) == 1  # v2 holds b.jsonl alone
    write_jsonl(workdir / "in" / "a.jsonl", [{"q": f"a {n}", "a": "ok"} for n in range(-1, 40)])  # a line on top
    recipe["output"] = {**recipe["output"], **SEED_CHANGED}
    third = side_of_each(Path(run(workdir, recipe).version_uri))
    assert before.keys() <= third.keys() and kept_sides(before, third) == {}


LABELS = ("billing", "refund", "login", "shipping", "other")


def days_tickets(day: int, per_customer: int) -> list[dict[str, str]]:
    """A day's export: 3 customers of each label, ``per_customer`` tickets each."""
    return [
        {
            "q": f"day {day:02d} {label} customer {n} ticket {k}",
            "a": "ok",
            "label": label,
            "customer": f"{day}-{label}-{n}",
        }
        for label in LABELS
        for n in range(3)
        for k in range(per_customer)
    ]


def prompt_sides(result: Any) -> dict[str, str]:
    """prompt -> split, from the version's shards (carried ones too)."""
    root = Path(result.version_uri)
    return {
        line["prompt"]: name
        for name, split in result.manifest.splits.items()
        for line in read_lines([root / shard.path for shard in split.shards])
    }


@pytest.mark.parametrize(("grouped", "appended"), [(False, False), (True, False), (False, True)])
def test_scheduled_runs_keep_every_labels_share_of_the_whole_version(
    workdir: Path, grouped: bool, appended: bool
) -> None:
    """Ten runs, each adding 3 records (or customers) of each label: every label's validation share of the
    whole version is within one unit of the fraction, as one run over all the files would split them. Each
    run dealt its few units from counters at 0 before: a label came out with none in validation, or a third.
    Appended to one file, read again whole each run, the records read again keep their sides and are not
    counted twice."""
    recipe: dict[str, Any] = labelled(
        "tickets", {"validation_fraction": 0.1, "stratify_by": "label", **({"group_by": "customer"} if grouped else {})}
    )
    per_customer = 2 if grouped else 1
    for day in range(1, 11):
        if appended:
            write_jsonl(workdir / "in" / "tickets.jsonl", [t for d in range(1, day + 1) for t in days_tickets(d, 1)])
        else:
            write_jsonl(workdir / "in" / f"day{day:02d}.jsonl", days_tickets(day, per_customer))
        scheduled = run(workdir, recipe)
    sides = prompt_sides(scheduled)
    units: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for prompt, side in sides.items():
        _, day, label, _, customer, _, _ = prompt.split()
        units[label][side].add(f"{day} {customer}")  # a customer's tickets are one unit when grouped
    assert len(sides) == 150 * per_customer
    for label in LABELS:
        assert len(units[label]["train"]) + len(units[label]["validation"]) == 30
        assert abs(len(units[label]["validation"]) - 3) <= 1, (label, len(units[label]["validation"]))
    once = run(workdir, {**recipe, "dataset": "tickets_once"})
    assert prompt_sides(once) == sides
    assert prompt_sides(run(workdir, recipe, full_refresh=True)) == sides  # dealt from 0 again, as one run


def test_a_changed_fraction_deals_the_new_records_at_it_without_catching_up(workdir: Path) -> None:
    """The counters go on only at the fraction they were dealt at: at another, the new records of a label
    would all go to one side until the whole version's share reached it."""
    recipe: dict[str, Any] = labelled("tickets", {"validation_fraction": 0.1, "stratify_by": "label"})
    for day in range(1, 11):
        write_jsonl(workdir / "in" / f"day{day:02d}.jsonl", days_tickets(day, 1))
    first = prompt_sides(run(workdir, recipe))
    write_jsonl(workdir / "in" / "day11.jsonl", days_tickets(11, 1) + days_tickets(12, 1))
    recipe["output"] = {**recipe["output"], "validation_fraction": 0.5}
    second = prompt_sides(run(workdir, recipe))
    assert kept_sides(first, second) == {}
    for label in LABELS:
        new = [side for prompt, side in second.items() if prompt not in first and prompt.split()[2] == label]
        assert len(new) == 6 and abs(new.count("validation") - 3) <= 1, (label, new)


def customer_tickets(count: int) -> list[dict[str, str]]:
    return [
        {"q": f"ticket {n} about order {n * 7}", "a": "ok", "label": "ab"[n % 2], "customer": f"c{n % 15}"}
        for n in range(count)
    ]


def test_grouping_a_stratified_split_later_moves_no_published_record(workdir: Path) -> None:
    """``group_by`` set after a stratified version was published: a customer's records are on both sides,
    and read again (their file changed) each keeps its side; its group joins the first one's, not a side
    dealt to it anew (which moved 52 of 120)."""
    write_jsonl(workdir / "in" / "tickets.jsonl", customer_tickets(120))
    recipe: dict[str, Any] = labelled("tickets", {"validation_fraction": 0.3, "stratify_by": "label"})
    before = prompt_sides(run(workdir, recipe))
    appended = {"q": "ticket 120, a new one", "a": "ok", "label": "a", "customer": "c1"}
    write_jsonl(workdir / "in" / "tickets.jsonl", [*customer_tickets(120), appended])
    recipe["output"]["group_by"] = "customer"
    after = prompt_sides(run(workdir, recipe))
    assert len(after) == 121 and kept_sides(before, after) == {}
    assert after[appended["q"]] == before["ticket 1 about order 7"]  # the side of its customer's first record


def test_an_edited_keyed_row_moved_to_another_group_keeps_its_side_in_a_stratified_split(workdir: Path) -> None:
    """Keyed SQL rows edited into another customer's group: each keeps the side it was published on, not
    its new group's (which moved 40 of 120)."""
    url = f"sqlite:///{workdir}/crm.db"
    engine = sa.create_engine(url)
    with engine.begin() as db:
        db.execute(
            sa.text(
                "create table t (id integer primary key, q text, a text, label text, customer text, updated integer)"
            )
        )
        db.execute(
            sa.text("insert into t values (:id, :q, :a, :label, :customer, 1)"),
            [{"id": n, **row} for n, row in enumerate(customer_tickets(120))],
        )
    recipe: dict[str, Any] = {
        "dataset": "tickets",
        "sources": [{"type": "sql", "url": url, "table": "t", "key": ["id"], "cursor": "updated"}],
        "record": {"kind": "instruction", "prompt": "{{ q }}", "completion": "{{ a }}", "label": "label"},
        "output": {"validation_fraction": 0.3, "stratify_by": "label", "group_by": "customer"},
        "stages": [],
    }
    before = side_of_each(Path(run(workdir, recipe).version_uri))
    with engine.begin() as db:  # every customer's tickets moved to c0
        db.execute(sa.text("update t set customer = 'c0', a = 'ok, edited', updated = 2"))
    engine.dispose()
    second = run(workdir, recipe)
    after = side_of_each(Path(second.version_uri))
    assert second.manifest.counts.written == 120 and after.keys() == before.keys()
    assert kept_sides(before, after) == {}


TICKETS = sa.MetaData()
tickets = sa.Table(
    "tickets",
    TICKETS,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("subject", sa.String(200), nullable=False),
    sa.Column("reply", sa.Text),
    sa.Column("queue", sa.String(20), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
START = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("carry_forward", [True, False])
@pytest.mark.parametrize(
    ("first", "then", "queue"),
    [
        ({"stratify_by": "label"}, {}, "billing"),  # the stratified column changed: its label's counter deals it
        ({}, SEED_CHANGED, "cards"),  # the row's id hashes elsewhere under another seed
    ],
)
def test_an_edited_keyed_row_keeps_its_side(
    workdir: Path, carry_forward: bool, first: dict[str, Any], then: dict[str, Any], queue: str
) -> None:
    """A keyed SQL row is the same record across edits (its id comes from its key): read again by its
    cursor, it stays on the side it was published on."""
    url = f"sqlite:///{workdir}/crm.db"
    engine = sa.create_engine(url)
    TICKETS.create_all(engine)
    rows = [
        {
            "id": n,
            "subject": f"Card declined abroad #{n}",
            "reply": f"Travel notice set for ticket {n}.",
            "queue": "cards",
            "updated_at": START + timedelta(minutes=n),
        }
        for n in range(40)
    ]
    with engine.begin() as db:
        db.execute(tickets.insert(), rows)
    recipe: dict[str, Any] = {
        "dataset": "support",
        "sources": [{"type": "sql", "url": url, "table": "tickets", "cursor": "updated_at", "key": ["id"]}],
        "record": {"kind": "instruction", "prompt": "{{ subject }}", "completion": "{{ reply }}", "label": "queue"},
        "output": {"validation_fraction": 0.3, "carry_forward": carry_forward, **first},
    }
    before = side_of_each(Path(run(workdir, recipe).version_uri))
    with engine.begin() as db:  # every other ticket edited: a new reply, and a new queue
        db.execute(
            tickets.update()
            .where(tickets.c.id % 2 == 0)
            .values(reply=tickets.c.reply + " Card reissued.", queue=queue, updated_at=START + timedelta(days=1))
        )
    engine.dispose()
    recipe["output"] = {**recipe["output"], **then}
    second = run(workdir, recipe)
    after = side_of_each(Path(second.version_uri))
    assert second.manifest.counts.written == 20 and before.keys() >= after.keys()
    assert kept_sides(before, after) == {}


def picture(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (shade, 90, 40)).save(buffer, "PNG")
    return buffer.getvalue()


def scans(folder: Path, count: int, redone: bool = False) -> list[str]:
    """``count`` pictures ``scan0.png``... in ``folder``, each its own; ``redone``: each scanned again (other
    pixels under the same name)."""
    folder.mkdir(exist_ok=True)
    names = [f"scan{n}.png" for n in range(count)]
    for n, name in enumerate(names):
        (folder / name).write_bytes(picture(10 * n + (5 if redone else 0)))
    return names


def image_sides(version: Path) -> dict[str, set[str]]:
    """The sides each image's questions are on (by the image's name, which each question carries)."""
    sides: dict[str, set[str]] = defaultdict(set)
    for side in ("train", "validation"):
        for line in read_lines(sorted((version / side).glob("*.jsonl"))):
            sides[line["prompt"].split(" about ")[1]].add(side)
    return sides


def questions(names: list[str], numbers: range) -> list[dict[str, str]]:
    return [
        {"image": name, "question": f"Question {q} about {name}", "answer": "yes"} for name in names for q in numbers
    ]


def vqa_recipe() -> dict[str, Any]:
    return {
        "dataset": "scans",
        "sources": [{"type": "images", "path": "img", "sidecar": "qa.jsonl"}],
        "record": {"kind": "vqa"},
        "output": {"validation_fraction": 0.5},
    }


def test_an_images_later_questions_join_its_earlier_ones_under_another_seed(workdir: Path) -> None:
    """VQA records are split by their image: the state store keeps each image's side, so new questions about
    a picture published before land beside its earlier ones when the seed changed."""
    names = scans(workdir / "img", 16)
    write_jsonl(workdir / "qa.jsonl", questions(names, range(2)))
    recipe = vqa_recipe()
    first = image_sides(Path(run(workdir, recipe).version_uri))
    assert all(len(sides) == 1 for sides in first.values()) and len(first) == 16
    write_jsonl(workdir / "qa.jsonl", questions(names, range(2)) + questions(names, range(2, 4)))  # appended
    recipe["output"] = {**recipe["output"], **SEED_CHANGED}
    second = run(workdir, recipe)
    assert second.manifest.counts.written == 32
    assert {name: sides for name, sides in image_sides(Path(second.version_uri)).items() if sides != first[name]} == {}


def test_a_changed_images_new_questions_join_its_earlier_ones(workdir: Path) -> None:
    """An image changed in place (a better scan under the same name): its questions are read again (the same
    records, keeping their sides), and a new question about it lands beside them, not where the new
    content's hash would put it."""
    names = scans(workdir / "img", 16)
    write_jsonl(workdir / "qa.jsonl", questions(names, range(2)))
    recipe = vqa_recipe()
    first = image_sides(Path(run(workdir, recipe).version_uri))
    scans(workdir / "img", len(names), redone=True)  # every scan redone
    write_jsonl(workdir / "qa.jsonl", questions(names, range(2)) + questions(names, range(2, 3)))
    second = run(workdir, recipe)
    assert second.manifest.counts.written == 48  # the 32 questions read again with their new image, 16 new
    assert {name: sides for name, sides in image_sides(Path(second.version_uri)).items() if sides != first[name]} == {}


def test_a_changed_images_new_questions_met_before_its_questions_read_again_join_them(workdir: Path) -> None:
    """The new questions about images changed in place come first (a sidecar file read before the one holding
    the questions read again): the new content is unknown to the state store, and its questions read again
    were not met yet, so they went where the new content's hash put them. The image's path keeps its side."""
    names = scans(workdir / "img", 16)
    write_jsonl(workdir / "qa" / "b.jsonl", questions(names, range(2)))
    recipe = {**vqa_recipe(), "sources": [{"type": "images", "path": "img", "sidecar": "qa"}]}
    first = image_sides(Path(run(workdir, recipe).version_uri))
    assert {len(sides) for sides in first.values()} == {1} and set().union(*first.values()) == {"train", "validation"}
    scans(workdir / "img", len(names), redone=True)  # every scan redone
    write_jsonl(workdir / "qa" / "a.jsonl", questions(names, range(2, 3)))  # read before b.jsonl
    second = run(workdir, recipe)
    assert second.manifest.counts.written == 48  # the 32 questions read again with their new image, 16 new
    assert {name: sides for name, sides in image_sides(Path(second.version_uri)).items() if sides != first[name]} == {}


def deal(splitter: Splitter, run: int, labels: list[str]) -> list[bool]:
    """The sides the splitter deals the run's records of ``labels`` (one a label, in that order) to."""
    ids = [f"r{run}-{n}" for n in range(len(labels))]
    return splitter.assign(pa.table({"id": ids, "label": labels})).to_pylist()


def test_dealt_is_a_pair_a_label_and_left_out_past_the_cap(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``split.dealt`` is in every manifest, carried from run to run: a label per user (50,000 new a run) grew it
    by megabytes each run. A pair a label, and left out past the cap: the next run deals from zero."""
    labels = ["a", "b", "a", "c", "a", "b", "a", "a"] * 3

    def splitter(split: dict[str, Any] | None = None) -> Splitter:
        dealer = Splitter(0.25, "seed", stratify_by="label")
        dealer.deal_on_from(split or {})
        return dealer

    first = splitter()
    sides = deal(first, 1, labels)
    report = first.report()
    to_validation = {label: sum(s for s, of in zip(sides, labels, strict=True) if of == label) for label in "abc"}
    assert report["dealt"] == {label: [labels.count(label), to_validation[label]] for label in "abc"}
    one_run = splitter()
    as_one = deal(one_run, 1, labels) + deal(one_run, 2, labels)
    assert deal(splitter(report), 2, labels) == as_one[len(labels) :]  # dealt on, as one run over both
    from_zero = deal(splitter(), 2, labels)
    assert from_zero != as_one[len(labels) :]
    monkeypatch.setattr(split_module, "MAX_DEALT_LABELS", 2)
    with caplog.at_level(logging.WARNING, "curation.split"):
        capped = first.report()
    assert "dealt" not in capped and "3 labels in 'label', over 2" in caplog.text
    assert deal(splitter(capped), 2, labels) == from_zero
    caplog.clear()
    # Counts not as this release writes them (another shape, more to validation than dealt): dealt from zero.
    for dealt in [{"a": {"units": 15, "validation": 4}}, {"a": [1, 5]}, {"a": [15]}, {"a": [15, "4"]}, ["a", 15, 4]]:
        with caplog.at_level(logging.WARNING, "curation.split"):
            assert deal(splitter({**report, "dealt": dealt}), 2, labels) == from_zero
        assert "not label: [units, validation]" in caplog.text


def notes_of(numbers: list[int]) -> list[dict[str, str]]:
    return [{"q": f"note {n}", "a": "ok", "label": "xyz"[n % 3]} for n in numbers]


RESTORED_RECIPE: dict[str, Any] = labelled("notes", {"validation_fraction": 0.2, "stratify_by": "label"})


@pytest.mark.parametrize(
    "then", [{}, SEED_CHANGED, {"stratify_by": None, **SEED_CHANGED}], ids=["stratified", "seed", "hashed"]
)
def test_lines_deleted_and_restored_come_back_on_their_side_counted_once(workdir: Path, then: dict[str, Any]) -> None:
    """``carry_forward``: lines deleted from a file leave the next version and come back when restored. The latest
    version lacks them, so a run that looked there alone dealt them as new: the stratified split counted them
    again in ``dealt`` and put some on the other side, as did a hash under another seed."""
    write_jsonl(workdir / "in" / "notes.jsonl", notes_of(list(range(60))))
    recipe = {**RESTORED_RECIPE, "output": dict(RESTORED_RECIPE["output"])}
    v1 = run(workdir, recipe)
    first = prompt_sides(v1)
    write_jsonl(workdir / "in" / "notes.jsonl", notes_of(list(range(0, 60, 2))))  # every odd note deleted
    v2 = run(workdir, recipe)
    assert len(prompt_sides(v2)) == 30 and v2.manifest.split["dealt"] == v1.manifest.split["dealt"]
    write_jsonl(workdir / "in" / "notes.jsonl", notes_of(list(range(60))))  # and restored
    recipe["output"] |= then
    v3 = run(workdir, recipe)
    assert prompt_sides(v3) == first
    if recipe["output"]["stratify_by"]:
        assert v3.manifest.split["dealt"] == v1.manifest.split["dealt"]


@pytest.mark.parametrize("jsonl", [False, True], ids=["parquet", "jsonl-lineage"])
def test_a_restored_line_finds_its_side_in_the_version_that_wrote_it_past_those_that_carried_it(
    workdir: Path, jsonl: bool
) -> None:
    """Of the versions before the latest only the records their own runs wrote are looked in: a record carried
    through v2 is found in v1, which wrote it (a version published before lineage was Parquet too)."""
    write_jsonl(workdir / "in" / "notes.jsonl", notes_of(list(range(60))))
    v1 = run(workdir, RESTORED_RECIPE)
    first = prompt_sides(v1)
    if jsonl:
        as_jsonl_lineage(Path(v1.version_uri))
    write_jsonl(workdir / "in" / "other.jsonl", [{"q": "other", "a": "ok", "label": "x"}])
    v2 = run(workdir, RESTORED_RECIPE)
    assert v2.manifest.counts.carried == 60  # notes.jsonl's records, carried
    write_jsonl(workdir / "in" / "notes.jsonl", notes_of(list(range(0, 60, 2))))
    run(workdir, RESTORED_RECIPE)
    write_jsonl(workdir / "in" / "notes.jsonl", notes_of(list(range(60))))
    v4 = run(workdir, RESTORED_RECIPE)
    assert prompt_sides(v4) == {**first, "other": prompt_sides(v4)["other"]}
    assert v4.manifest.split["dealt"] == v2.manifest.split["dealt"]


def test_a_restored_line_keeps_its_side_where_the_version_that_wrote_it_is_deleted(workdir: Path) -> None:
    """v1 wrote the notes, v2 carried them, and v1 is gone (a retention rule): the chain stops at v2, whose carried
    rows are the notes' only sides left, so v2 is read whole, not its own rows alone (12 of 60 moved then)."""
    recipe = {**RESTORED_RECIPE, "output": {"validation_fraction": 0.5}}
    write_jsonl(workdir / "in" / "notes.jsonl", notes_of(list(range(60))))
    v1 = run(workdir, recipe)
    first = prompt_sides(v1)
    write_jsonl(workdir / "in" / "other.jsonl", [{"q": "other", "a": "ok", "label": "x"}])
    assert run(workdir, recipe).manifest.counts.carried == 60
    shutil.rmtree(v1.version_uri)
    write_jsonl(workdir / "in" / "notes.jsonl", notes_of(list(range(0, 60, 2))))
    run(workdir, recipe)
    write_jsonl(workdir / "in" / "notes.jsonl", notes_of(list(range(60))))
    recipe["output"] |= SEED_CHANGED
    sides = prompt_sides(run(workdir, recipe))
    assert {prompt: sides[prompt] for prompt in first} == first


@pytest.mark.parametrize("fraction", [0, 0.2])
def test_a_growing_file_reads_no_older_version_where_the_split_deals_every_side_anyway(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, fraction: float
) -> None:
    """A log appended to each run is read whole each run: with no split (``validation_fraction`` 0), or a hash split
    under the chain's seed and fraction, a restored line comes back on its side by itself, so no version before the
    latest is looked in (each run walked the chain: the 30th read 29 versions)."""
    recipe = {**RESTORED_RECIPE, "output": {"validation_fraction": fraction}}
    read: list[str] = []
    real = pipeline.records_from_inputs
    monkeypatch.setattr(
        pipeline, "records_from_inputs", lambda version, *args, **kw: read.append(version) or real(version, *args, **kw)
    )
    for runs in range(1, 5):
        write_jsonl(workdir / "in" / "log.jsonl", notes_of(list(range(runs * 10))))
        read.clear()
        result = run(workdir, recipe)
    assert result.manifest.counts.carried == 0 and result.manifest.extends == result.manifest.version - 1
    assert read == [Path(result.version_uri).parent.joinpath(f"v{result.manifest.version - 1}").as_posix()]
    sides = prompt_sides(result)
    write_jsonl(workdir / "in" / "log.jsonl", notes_of(list(range(0, 40, 2))))
    run(workdir, recipe)
    write_jsonl(workdir / "in" / "log.jsonl", notes_of(list(range(40))))
    read.clear()
    assert prompt_sides(run(workdir, recipe)) == sides
    assert len(read) == 1  # the latest's records of the log, replaced


def test_a_restored_line_keeps_its_side_at_fraction_0_where_its_group_was_on_validation_before(workdir: Path) -> None:
    """Groups keep their sides in the state store past a full refresh that split without them: at fraction 0 with
    ``group_by`` a restored line went back to the side its group was dealt before the refresh, though every version
    since published it on train (r73)."""
    recipe: dict[str, Any] = {
        "dataset": "d",
        "sources": [{"path": "in"}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        "stages": [],
    }

    def rows(names: list[str]) -> list[dict[str, str]]:
        return [{"q": name, "a": "ok", "customer": "C" if name == "r" else "A"} for name in names]

    grouped = {"validation_fraction": 0.5, "group_by": "customer"}
    write_jsonl(workdir / "in" / "f.jsonl", rows(["r", "x"]))
    assert prompt_sides(run(workdir, {**recipe, "output": grouped}))["r"] == "validation"
    refreshed = run(workdir, {**recipe, "output": {"validation_fraction": 0.0}}, full_refresh=True)
    assert prompt_sides(refreshed) == {"r": "train", "x": "train"}
    grouped = {**grouped, "validation_fraction": 0.0}
    write_jsonl(workdir / "in" / "f.jsonl", rows(["x"]))
    run(workdir, {**recipe, "output": grouped})
    write_jsonl(workdir / "in" / "f.jsonl", rows(["r", "x"]))
    assert prompt_sides(run(workdir, {**recipe, "output": grouped})) == {"r": "train", "x": "train"}
