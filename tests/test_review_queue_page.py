"""A queue larger than one page of the list: every item can be listed, and the item pages count their
place among the filtered items without listing them all."""

from __future__ import annotations

import html
import re
import uuid
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from curation.review.app import MAX_LISTED, _neighbours, create_app
from curation.review.auth import add_user
from curation.review.queue import add_items, note_read, review_items
from schemas.records import FLAG_SCHEMA

PASSWORD = "correct horse battery"


def queue_of(state_url: str, dataset: str, records: int) -> None:
    flags = [
        {
            "id": f"{dataset}-{n}",
            "source": {"connector": "files", "uri": "in.jsonl", "line": n + 1, "page": None},
            "stage": "read",
            "kind": "quarantined",
            "detail": f"row {n}",
            "payload": "{}",
        }
        for n in range(records)
    ]
    add_items(sa.create_engine(state_url), dataset, 1, "run", pa.Table.from_pylist(flags, schema=FLAG_SCHEMA))


def rita_on(state_url: str) -> TestClient:
    """A reviewer signed in to a review page over ``state_url``."""
    add_user(sa.create_engine(state_url), "rita", "reviewer", PASSWORD)
    client = TestClient(create_app(state_url), base_url="https://testserver")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    client.post("/login", data={"username": "rita", "password": PASSWORD, "csrf_token": csrf})
    return client


def listed(page: str) -> list[int]:
    """The items a queue page lists, in order."""
    return [int(n) for n in re.findall(r'<tr class="status-\w+">\s*<td><a href="/items/(\d+)', page)]


def test_a_queue_longer_than_a_page_is_listed_page_by_page(tmp_path: Path) -> None:
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    queue_of(state_url, "other", 3)  # items 1-3, left out by the filter
    queue_of(state_url, "big", 2 * MAX_LISTED + 100)  # items 4-1103
    client = rita_on(state_url)

    first = client.get("/?dataset=big").text
    assert listed(first) == list(range(4, 4 + MAX_LISTED)) and "1100 item(s), 1 to 500 listed" in first
    last = client.get("/?dataset=big&page=3").text
    assert listed(last) == list(range(1004, 1104)) and "1001 to 1100 listed" in last
    assert 'href="/?dataset=big&amp;page=2&amp;before=1004"' in last and 'id="next-page"' not in last
    assert listed(client.get("/?dataset=big&page=2&before=1004").text) == list(range(504, 1004))
    assert listed(client.get("/?dataset=big&page=99").text) == listed(last)  # past the end: the last page
    # Not a page: refused saying what a page is (tests/test_review_errors.py), not shown as the first.
    assert client.get("/?dataset=big&page=x").status_code == 400
    assert client.get("/?dataset=big&page=²").status_code == 400  # a digit to isdigit(), not to int()
    # An item page counts its place among the filtered items, and links its neighbours there.
    page = client.get("/items/1004?dataset=big").text
    assert "<span>1001 of 1100</span>" in page
    assert 'href="/items/1003?dataset=big"' in page and 'href="/items/1005?dataset=big"' in page
    assert "<span>1 of 1100</span>" in client.get("/items/4?dataset=big").text
    # The filter leaves item 2 out: not "0 of 1100", which reads as a place among them, but that it is not
    # there, with the filters to clear; next still goes on through the filtered items (it was item 4).
    left_out = client.get("/items/2?dataset=big").text
    assert "0 of 1100" not in left_out and 'id="not-listed">not among the 1100 item(s) these filters match' in left_out
    assert 'id="clear-filters" href="/items/2"' in left_out
    assert 'id="next" href="/items/4?dataset=big"' in left_out and 'id="previous"' not in left_out
    # Its Queue link goes back to the page of the list that holds it.
    assert 'id="queue" href="/?dataset=big&amp;page=3"' in page
    assert 'id="queue" href="/?dataset=big"' in client.get("/items/503?dataset=big").text
    assert 'id="queue" href="/?dataset=big&amp;page=2"' in client.get("/items/504?dataset=big").text
    assert 'id="queue" href="/?dataset=big"' in client.get("/items/2?dataset=big").text


def test_filters_that_match_nothing_say_so_and_offer_clearing_them(tmp_path: Path) -> None:
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    queue_of(state_url, "small", 2)  # items 1-2, quarantined and open
    client = rita_on(state_url)

    # No item is rejected: the item page is not "1 of 1" among them, and offers the item unfiltered.
    page = client.get("/items/1?status=rejected").text
    assert "1 of 1" not in page and 'id="no-match">no items match these filters' in page
    assert 'id="clear-filters" href="/items/1"' in page
    assert 'id="previous"' not in page and 'id="next"' not in page
    queue = client.get("/?status=rejected").text
    assert "no items match these filters" in queue and 'id="clear-filters" href="/"' in queue
    # Unfiltered, nothing is offered to clear.
    assert "<span>1 of 2</span>" in client.get("/items/1").text and 'id="clear-filters"' not in client.get("/").text


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_an_item_page_finds_its_place_and_neighbours_in_one_query(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}" if store == "sqlite" else request.getfixturevalue("postgres_url")
    dataset = f"ds-{uuid.uuid4().hex[:8]}"  # the PostgreSQL server is shared by the session's tests
    queue_of(url, dataset, 5)
    engine = sa.create_engine(url)
    with engine.connect() as db:
        ids = list(db.execute(sa.select(review_items.c.item_id).where(review_items.c.dataset == dataset)).scalars())
    note_read(engine, dataset, "again", {f"{dataset}-{n}" for n in (0, 1, 3, 4)}, {"in.jsonl"})  # the third gone
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    every, shown = {"dataset": dataset}, {"dataset": dataset, "gone": "hide"}
    a, b, c, d, e = ids
    expected = [
        (a, every, ((1, 5), None, b)),
        (c, every, ((3, 5), b, d)),
        (e, every, ((5, 5), d, None)),
        (b, shown, ((2, 4), a, d)),
        (c, shown, ((0, 4), b, d)),  # left out by the filters: its neighbours among them
        (d, shown, ((3, 4), b, e)),
        (c, {"dataset": dataset, "status": "rejected"}, ((0, 0), None, None)),
    ]
    for item_id, filters, neighbours in expected:
        statements.clear()
        assert _neighbours(engine, item_id, filters) == neighbours
        assert len(statements) == 1, statements


def test_the_next_page_goes_on_after_the_last_item_listed_though_items_before_it_were_decided(tmp_path: Path) -> None:
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    queue_of(state_url, "bulk", MAX_LISTED + 100)  # items 1-600, all open
    client = rita_on(state_url)

    first = client.get("/?dataset=bulk&status=open").text
    assert listed(first) == list(range(1, MAX_LISTED + 1))
    with sa.create_engine(state_url).begin() as db:  # the annotator works ten items of the first page
        db.execute(review_items.update().where(review_items.c.item_id <= 10).values(status="approved"))
    (next_page,) = re.findall(r'id="next-page" href="([^"]+)"', first)
    second = client.get(html.unescape(next_page)).text
    assert listed(second) == list(range(MAX_LISTED + 1, MAX_LISTED + 101))  # 501 on: none skipped
    assert "590 item(s), 491 to 590 listed" in second and "<span>page 2 of 2</span>" in second
    (previous,) = re.findall(r'id="previous-page" href="([^"]+)"', second)
    assert listed(client.get(html.unescape(previous)).text) == list(range(11, MAX_LISTED + 1))
    assert client.get("/?dataset=bulk&after=x").status_code == 400


def test_pages_are_numbered_by_where_they_start_among_the_items_now(tmp_path: Path) -> None:
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    queue_of(state_url, "big", 3 * MAX_LISTED)  # items 1-1500, open
    client = rita_on(state_url)

    def numbered(page: str) -> tuple[str, ...]:
        return re.search(r"<span>page (\d+) of (\d+)</span>", page).groups()

    first = client.get("/?dataset=big&status=open").text
    (link,) = re.findall(r'id="next-page" href="([^"]+)"', first)
    with sa.create_engine(state_url).begin() as db:  # the annotator works through the whole first page
        db.execute(review_items.update().where(review_items.c.item_id <= MAX_LISTED).values(status="approved"))
    # The page the link calls 2 is now the first of the list: page 1 of 2 (it said 2 of 3), no previous.
    second = client.get(html.unescape(link)).text
    assert listed(second) == list(range(501, 1001)) and "1000 item(s), 1 to 500 listed" in second
    assert numbered(second) == ("1", "2") and 'id="previous-page"' not in second
    (link,) = re.findall(r'id="next-page" href="([^"]+)"', second)
    assert numbered(client.get(html.unescape(link)).text) == ("2", "2")
