"""What an annotator gets for a request the page cannot serve: the page's own error page saying what
went wrong, never the framework's JSON."""

from __future__ import annotations

import html
import re
from pathlib import Path

import sqlalchemy as sa
from fastapi.testclient import TestClient

from curation.review import decisions as dec
from curation.review.app import create_app
from curation.review.auth import add_user
from tests.test_review_queue_page import queue_of, rita_on

PASSWORD = "correct horse battery"


def test_unknown_pages_bad_paths_and_oversized_forms_get_the_error_page(tmp_path: Path) -> None:
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    app = create_app(state_url)
    add_user(sa.create_engine(state_url), "rita", "reviewer", PASSWORD)
    client = TestClient(app, base_url="https://testserver")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    client.post("/login", data={"username": "rita", "password": PASSWORD, "csrf_token": csrf})
    for method, path, data, status, said in (
        ("GET", "/nothing-here", None, 404, "there is no page /nothing-here"),
        ("GET", "/items/abc", None, 404, "/items/abc: no item abc: an item is a number from 1 to 2147483647"),
        ("GET", "/datasets/support/vx", None, 404, "no version x: a version is a number, such as 2"),
        ("GET", "/logout", None, 405, "/logout takes no GET: use the page's links and buttons"),
        # An edit over the page's limit for a form (4 MiB), refused before it is read.
        ("POST", "/items/1/decide", {"csrf_token": csrf, "value": "x" * 5 * 2**20}, 413, "too large to take"),
    ):
        response = client.request(method, path, data=data)
        assert response.status_code == status, path
        assert response.headers["content-type"].startswith("text/html"), path
        assert said in html.unescape(response.text) and "rita" in response.text, path  # the page, signed in
        assert "Input should be" not in response.text and "Not Found" not in response.text, path  # not pydantic's
    assert client.get("/logout").headers["allow"] == "POST"  # what it takes, as HTTP says it


def test_a_filter_the_page_does_not_take_is_refused_saying_what_it_takes(tmp_path: Path) -> None:
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    queue_of(state_url, "support", 2)  # items 1-2, quarantined and open
    app = create_app(state_url)
    add_user(sa.create_engine(state_url), "rita", "reviewer", PASSWORD)
    client = TestClient(app, base_url="https://testserver")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    client.post("/login", data={"username": "rita", "password": PASSWORD, "csrf_token": csrf})
    for query, said in (
        # Ignored, these listed every item (or stepped through them all); matched, none.
        ("gone=maybe", "no gone filter 'maybe': it is hide, only or show"),
        ("kind=pi", "no kind 'pi': the kinds are near_duplicate, pii, quarantined, vqa"),
        ("status=done", "no status 'done': the statuses are open, approved, rejected, edited, kept"),
        ("version=v2", "no version 'v2': a version is a number, such as 2"),
        ("version=99999999999999999999", "no version '99999999999999999999': a version is a number"),
        ("knd=pii", "no filter 'knd': the filters are dataset, version, kind, status, gone (and page)"),
        # Taken as the first page, without a word.
        ("page=abc", "no page 'abc': a page is a number from 1, such as 2"),
        ("page=0", "no page '0': a page is a number from 1"),
        ("page=%C2%B2", "no page '²': a page is a number from 1"),
        ("page=" + "9" * 5000, "a page is a number from 1"),  # more digits than int() reads
    ):
        for path in ("/", "/items/1"):
            response = client.get(f"{path}?{query}")
            assert response.status_code == 400, (path, query)
            assert response.headers["content-type"].startswith("text/html"), (path, query)
            text = html.unescape(response.text)
            assert said in text and "rita" in text, (path, query)  # the page, signed in
    # What the page's own forms and links send is taken: an empty value is "all".
    taken = ("kind=quarantined&status=open&gone=hide&version=1&dataset=support&page=1", "kind=&gone=&page=", "")
    for query in (*taken, "page=7"):  # a page past the last (its items decided meanwhile): the last
        assert client.get(f"/?{query}").status_code == 200, query
        assert client.get(f"/items/1?{query}").status_code == 200, query


def test_a_decision_with_a_malformed_seen_is_refused_as_malformed_not_as_stale(tmp_path: Path) -> None:
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    queue_of(state_url, "support", 1)
    engine = sa.create_engine(state_url)
    dec.decide(engine, 1, "bob", "reject")  # a change a malformed seen was taken to be behind
    client = rita_on(state_url)
    page = client.get("/items/1").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    for seen in ("zzz", "", "3", "1.0.0", "١.٠"):  # not as dec.revision makes it (nor digits int() would take)
        form = {"action": "approve", "csrf_token": csrf, "seen": seen}
        response = client.post("/items/1/decide", data=form, follow_redirects=False)
        assert response.status_code == 400, seen
        text = html.unescape(response.text)
        assert f"no seen {seen!r}" in text and "reload the item's page" in text and "changed since" not in text, seen
    assert dec.get_item(engine, 1)["status"] == "rejected"  # bob's decision stands
    seen = re.search(r'name="seen" value="([^"]+)"', page).group(1)  # what the page sends is taken
    form = {"action": "approve", "csrf_token": csrf, "seen": seen}
    assert client.post("/items/1/decide", data=form, follow_redirects=False).status_code == 303
    assert dec.get_item(engine, 1)["status"] == "approved"


def test_a_decision_without_seen_is_refused_not_taken_over_another_annotators(tmp_path: Path) -> None:
    # Without a seen the two-annotator check was skipped: an old page or a script decided over bob's
    # rejection without the 409 a page's post gets.
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    queue_of(state_url, "support", 1)
    engine = sa.create_engine(state_url)
    client = rita_on(state_url)
    page = client.get("/items/1").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    dec.decide(engine, 1, "bob", "reject")
    response = client.post("/items/1/decide", data={"action": "approve", "csrf_token": csrf}, follow_redirects=False)
    assert response.status_code == 400
    text = html.unescape(response.text)
    assert "no seen:" in text and "the item's revision its page showed" in text and "reload the item's page" in text
    assert [d["user"] for d in dec.history(engine, 1)] == ["bob"] and dec.get_item(engine, 1)["status"] == "rejected"
