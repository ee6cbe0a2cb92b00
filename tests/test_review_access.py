"""The review app over plain HTTP: who may do what. No session, a bad CSRF token or the wrong role
is refused; raw PII reaches only pii-reviewers and admins."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from curation.review import decisions as dec
from curation.review.app import create_app
from curation.review.auth import SignInLimits
from curation.review.labelstudio import LabelStudioError, export_tasks, import_annotations, label_config
from curation.review.queue import list_items
from tests.review_seed import NAME, PASSWORD, PHONE, PII_COMPLETION, USERS, Seeded, seed
from tests.review_server import review_server
from tests.test_review_cli import review

PII_ITEM, NEAR_DUP_ITEM, VQA_ITEM = 2, 3, 4


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return seed(tmp_path_factory.mktemp("review"))


@pytest.fixture
def app(seeded: Seeded):
    return create_app(seeded.state_url, [seeded.recipe])


def token(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def signed_in(app, name: str) -> tuple[TestClient, str]:
    client = TestClient(app, base_url="https://testserver")
    csrf = token(client.get("/login").text)
    response = client.post(
        "/login", data={"username": name, "password": PASSWORD, "csrf_token": csrf}, follow_redirects=False
    )
    assert response.status_code == 303
    return client, token(client.get("/").text)


def status(seeded: Seeded, item_id: int) -> str:
    return dec.get_item(sa.create_engine(seeded.state_url), item_id)["status"]


def seen(seeded: Seeded, item_id: int) -> str:
    """What the item's page posts as ``seen``: the revision of its decisions it showed."""
    return dec.revision(sa.create_engine(seeded.state_url), item_id)


def test_no_session_is_refused(app, seeded: Seeded) -> None:
    client = TestClient(app, base_url="https://testserver")
    page = client.get(f"/items/{PII_ITEM}?kind=pii&status=open", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    # Signed in, the annotator is back on the page asked for, its filters with it.
    next_page = parse_qs(urlsplit(page.headers["location"]).query)["next"]
    assert next_page == [f"/items/{PII_ITEM}?kind=pii&status=open"]
    assert client.get(f"/items/{VQA_ITEM}/image", follow_redirects=False).status_code == 303
    # A CSRF token from the sign-in page is not a session: deciding still needs a user.
    csrf = token(client.get("/login").text)
    response = client.post(f"/items/{PII_ITEM}/decide", data={"action": "reject", "csrf_token": csrf})
    assert response.status_code == 401
    assert status(seeded, PII_ITEM) == "open"


def test_wrong_password_gets_no_session(app) -> None:
    client = TestClient(app, base_url="https://testserver")
    csrf = token(client.get("/login").text)
    response = client.post("/login", data={"username": "rita", "password": "wrong password", "csrf_token": csrf})
    assert response.status_code == 401 and "Wrong name or password" in response.text
    assert client.get("/", follow_redirects=False).status_code == 303


def test_session_cookie_is_signed_secure_httponly(app) -> None:
    client = TestClient(app, base_url="https://testserver")
    csrf = token(client.get("/login").text)
    response = client.post(
        "/login", data={"username": "rita", "password": PASSWORD, "csrf_token": csrf}, follow_redirects=False
    )
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "secure" in cookie and "samesite=lax" in cookie
    # A forged cookie (another user's name, no valid signature) is not a session.
    forged = TestClient(app, base_url="https://testserver", cookies={"curation_review": "eyJ1c2VyIjogImFkYSJ9.x.y"})
    assert forged.get("/", follow_redirects=False).status_code == 303


def test_signing_out_or_a_new_password_ends_the_session_whatever_the_cookie(app, seeded: Seeded) -> None:
    from curation.review.auth import add_user

    client, csrf = signed_in(app, "rita")
    kept = dict(client.cookies)  # what a copied or stolen cookie would be
    assert client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    replayed = TestClient(app, base_url="https://testserver", cookies=kept)
    assert replayed.get("/", follow_redirects=False).status_code == 303
    assert replayed.post(f"/items/{PII_ITEM}/decide", data={"action": "reject", "csrf_token": csrf}).status_code == 401
    assert status(seeded, PII_ITEM) == "open"
    # A password set again (or a role changed) signs the user out everywhere.
    client, _ = signed_in(app, "rita")
    add_user(sa.create_engine(seeded.state_url), "rita", "reviewer", PASSWORD)
    assert client.get("/", follow_redirects=False).status_code == 303


def test_bad_csrf_token_is_refused(app, seeded: Seeded) -> None:
    client, csrf = signed_in(app, "rita")
    for sent in ("", "not-the-token", csrf[:-1] + ("A" if csrf[-1] != "A" else "B")):
        response = client.post(f"/items/{NEAR_DUP_ITEM}/decide", data={"action": "reject", "csrf_token": sent})
        assert response.status_code == 403
        assert status(seeded, NEAR_DUP_ITEM) == "open"
    # The header works as well as the form field (for scripts), and the right token is accepted.
    response = client.post(
        f"/items/{NEAR_DUP_ITEM}/decide",
        data={"action": "reject", "seen": seen(seeded, NEAR_DUP_ITEM)},
        headers={"X-CSRF-Token": csrf},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert status(seeded, NEAR_DUP_ITEM) == "rejected"
    assert client.post("/undo", data={"csrf_token": csrf}).status_code == 200
    assert status(seeded, NEAR_DUP_ITEM) == "open"


def test_every_post_route_checks_csrf(app) -> None:
    client, _ = signed_in(app, "ada")
    posts = [route.path for route in app.routes if "POST" in getattr(route, "methods", set())]
    assert {"/login", "/logout", "/undo", "/items/{item_id}/decide"} <= set(posts)
    for path in posts:
        url = path.replace("{item_id}", str(PII_ITEM)).replace("{dataset}", "support").replace("{version}", "1")
        assert client.post(url, data={"action": "approve"}).status_code == 403, url


def test_raw_pii_only_for_pii_reviewers(app, seeded: Seeded) -> None:
    reviewer, _ = signed_in(app, "rita")
    page = reviewer.get(f"/items/{PII_ITEM}").text
    assert NAME not in page and PHONE not in page
    assert "Call &lt;PERSON&gt; at &lt;PHONE_NUMBER&gt; about the refund." in page
    assert "PERSON" in page and "0.62" in page  # entity and score, without the text
    # The edit form holds the text each role may see, without the page's script.
    assert re.search(r'<textarea name="value" id="edit-value"[^>]*>Call &lt;PERSON&gt; at', page)
    for role_user in ("pia", "ada"):
        client, _ = signed_in(app, role_user)
        page = client.get(f"/items/{PII_ITEM}").text
        assert f'<mark class="pii" title="PERSON 0.62">{NAME}</mark>' in page
        assert f'<mark class="pii" title="PHONE_NUMBER 0.55">{PHONE}</mark>' in page
        assert re.search(rf'<textarea name="value" id="edit-value"[^>]*>Call {NAME} at', page)


def test_only_pii_reviewers_restore_redactions(app, seeded: Seeded) -> None:
    engine = sa.create_engine(seeded.state_url)
    reviewer, csrf = signed_in(app, "rita")
    key = "completion:5:16"
    marked = {"action": "edit", "not_pii": key, "csrf_token": csrf, "seen": seen(seeded, PII_ITEM)}
    response = reviewer.post(f"/items/{PII_ITEM}/decide", data=marked)
    assert response.status_code == 403
    assert dec.run_decisions(engine, "support").undone == {}
    client, csrf = signed_in(app, "pia")
    response = client.post(f"/items/{PII_ITEM}/decide", data={**marked, "csrf_token": csrf}, follow_redirects=False)
    assert response.status_code == 303
    assert dec.run_decisions(engine, "support").undone == {seeded.ids[1]: {("completion", 5, 16)}}
    # A reviewer now sees, and edits, the text as the next run publishes it: that span in clear.
    page = reviewer.get(f"/items/{PII_ITEM}").text
    assert re.search(rf'<textarea name="value" id="edit-value"[^>]*>Call {NAME} at &lt;PHONE_NUMBER&gt;', page)
    assert PHONE not in page
    (decision,) = [d for d in dec.history(engine, PII_ITEM) if d["undone_at"] is None]
    assert (decision["user"], decision["action"]) == ("pia", "edit")
    assert json.loads(decision["before"]) == {"status": "open", "fields": {}}
    assert json.loads(decision["after"])["not_pii"] == [["completion", 5, 16]]
    dec.undo_last(engine, "pia")
    assert dec.run_decisions(engine, "support").undone == {}
    for bad in ("garbage", "completion:a:b"):
        response = client.post(
            f"/items/{PII_ITEM}/decide",
            data={**marked, "not_pii": bad, "csrf_token": csrf, "seen": seen(seeded, PII_ITEM)},
        )
        assert response.status_code == 400 and "a span is field:start:end" in response.text


def test_edit_checks_field_and_value(app, seeded: Seeded) -> None:
    client, csrf = signed_in(app, "rita")
    for data, message in (
        ({"field": "id", "value": "x"}, "cannot be edited on this item; it has prompt, completion, label"),
        ({"field": "completion", "value": "   "}, "must not be empty"),
        ({"field": "completion", "value": "Call <PERSON> at <PHONE_NUMBER> about the refund."}, "an edit needs"),
    ):
        data = {"action": "edit", "csrf_token": csrf, "seen": seen(seeded, PII_ITEM), **data}
        response = client.post(f"/items/{PII_ITEM}/decide", data=data)
        assert response.status_code == 400 and message in response.text
    response = client.post(
        "/items/1/decide",
        data={"action": "edit", "field": "prompt", "value": "x", "csrf_token": csrf, "seen": seen(seeded, 1)},
    )
    assert response.status_code == 400 and "no fields" in response.text
    assert status(seeded, PII_ITEM) == "open" and status(seeded, 1) == "open"
    # The history shows an edit's characters, not JSON escapes.
    client, csrf = signed_in(app, "pia")
    edit = {"action": "edit", "field": "completion", "value": "Rückruf morgen 📞", "csrf_token": csrf}
    edit["seen"] = seen(seeded, PII_ITEM)
    assert client.post(f"/items/{PII_ITEM}/decide", data=edit).status_code in (200, 303)
    page = client.get(f"/items/{PII_ITEM}").text
    assert "Rückruf morgen 📞" in page.split('class="history"')[1] and "\\u00fc" not in page
    dec.undo_last(sa.create_engine(seeded.state_url), "pia")  # the other tests see the queue as seeded


def test_reviewer_cannot_launch_training(app) -> None:
    client, csrf = signed_in(app, "rita")
    page = client.get("/datasets/support/v1").text
    assert "Only an admin can launch training" in page and 'id="launch"' not in page
    response = client.post("/datasets/support/v1/training", data={"csrf_token": csrf, "confirm": "yes"})
    assert response.status_code == 403 and "only an admin" in response.text
    assert client.get("/training/some-job").status_code == 403


def test_label_studio_round_trip(seeded: Seeded) -> None:
    engine = sa.create_engine(seeded.state_url)
    redacted = export_tasks(engine, {"dataset": "support", "kind": "pii"})
    assert len(redacted) == 1 and NAME not in json.dumps(redacted) and "predictions" not in redacted[0]
    (task,) = export_tasks(engine, {"dataset": "support", "kind": "pii"}, include_pii=True)
    assert task["data"]["text"][5:16] == NAME
    spans = task["predictions"][0]["result"]
    assert [s["value"]["labels"] for s in spans] == [["PERSON"], ["PHONE_NUMBER"]]
    # The annotator keeps the phone number labelled, removes the name (not PII), and approves.
    task["annotations"] = [
        {
            "id": 1,
            "result": [
                spans[1],
                {"from_name": "decision", "to_name": "text", "type": "choices", "value": {"choices": ["approve"]}},
            ],
        }
    ]
    (vqa,) = export_tasks(engine, {"kind": "vqa"})
    vqa["annotations"] = [
        {"id": 2, "result": [{"from_name": "answer", "type": "textarea", "value": {"text": ["the orange one"]}}]}
    ]
    # As on the page: the user must exist, and only a role that sees PII marks spans not PII.
    with pytest.raises(LabelStudioError, match="no review user 'ghost'"):
        import_annotations(engine, [task, vqa], "ghost")
    with pytest.raises(LabelStudioError, match=r"task 1 .*rita is a reviewer; only a pii-reviewer"):
        import_annotations(engine, [vqa, task], "rita")
    assert dec.run_decisions(engine, "charts").edits == {}  # nothing of a refused import is recorded
    blank = {**vqa, "annotations": [{"id": 3, "result": [{"from_name": "answer", "value": {"text": ["  "]}}]}]}
    with pytest.raises(LabelStudioError, match=r"task 1 .*must not be empty. Nothing was imported"):
        import_annotations(engine, [task, blank], "pia")
    assert dec.run_decisions(engine, "support").undone == {}  # task 0's decision was not recorded either
    counts = import_annotations(engine, [task, vqa], "pia")
    assert counts == {
        "approve": 0,
        "reject": 0,
        "edit": 2,
        "keep": 0,
        "skipped": 0,
        "already in force": 0,
        "changed since export": 0,
        "same as another task": 0,
        "tasks disagree": 0,
    }
    assert dec.run_decisions(engine, "support").undone == {seeded.ids[1]: {("completion", 5, 16)}}
    assert dec.run_decisions(engine, "charts").edits == {"vqa-record-1": {"answer": "the orange one"}}
    # Imported again, the same edits are in force already: nothing is decided twice.
    assert import_annotations(engine, [task, vqa], "pia")["already in force"] == 2
    dec.undo_last(engine, "pia")
    dec.undo_last(engine, "pia")
    assert dec.run_decisions(engine, "support").undone == {}
    # A label whose edges the annotator moved still covers its span: it stays redacted. Label Studio
    # exports the text at its new edges.
    start, end = spans[0]["value"]["start"], spans[0]["value"]["end"] + 1
    moved = {**spans[0], "value": {**spans[0]["value"], "end": end, "text": task["data"]["text"][start:end]}}
    task["annotations"] = [{"id": 4, "result": [moved, spans[1]]}]
    assert import_annotations(engine, [task], "pia")["skipped"] == 1  # no decision, no span removed
    assert dec.run_decisions(engine, "support").undone == {}


@pytest.mark.parametrize(
    ("task", "said"),
    [
        ("not a task", "'str' object has no attribute 'get'"),
        ({"data": {"item_id": "abc"}, "annotations": [{"result": []}]}, "data.item_id 'abc' is not a whole number"),
        (
            {"data": {"item_id": 1}, "annotations": [{"result": [{"from_name": "decision", "value": {}}]}]},
            "no 'choices'",
        ),
    ],
)
def test_a_task_not_as_label_studio_exports_them_is_named(seeded: Seeded, task: object, said: str) -> None:
    engine = sa.create_engine(seeded.state_url)
    with pytest.raises(LabelStudioError, match=r"task 1 \(Label Studio id None\) is not a task as Label Studio"):
        import_annotations(engine, [{"data": {"item_id": 1}}, task], "pia")
    with pytest.raises(LabelStudioError, match=re.escape(said)):
        import_annotations(engine, [task], "pia")
    maybe = {
        "data": {"item_id": 1},
        "annotations": [{"result": [{"from_name": "decision", "value": {"choices": ["maybe"]}}]}],
    }
    with pytest.raises(LabelStudioError, match="unknown decision 'maybe'"):
        import_annotations(engine, [maybe], "pia")
    gone = {"data": {"item_id": 999}, "annotations": [{"result": []}]}
    with pytest.raises(LabelStudioError, match=r"task 0 \(Label Studio id None\): review item 999 does not exist"):
        import_annotations(engine, [gone], "pia")


def test_filters_and_counts_left(app, seeded: Seeded) -> None:
    client, _ = signed_in(app, "rita")
    page = client.get("/?kind=pii").text
    assert page.count('<tr class="status-') == 1 and "PERSON 0.62" in page
    assert client.get("/?dataset=charts").text.count('<tr class="status-') == 1
    assert client.get("/?dataset=support&version=1").text.count('<tr class="status-') == 3
    assert client.get("/?dataset=support&version=2").text.count('<tr class="status-') == 0
    # A version that is not a version number is refused (not every version listed), saying why.
    for unknown in ("v2", "²", "99999999999999999999"):
        page = client.get(f"/?dataset=support&version={unknown}")
        assert page.status_code == 400 and f"no version &#39;{unknown}&#39;" in page.text
    counts = re.findall(r'data-kind="(\w+)">\s*<strong>(\d+)</strong>', client.get("/?dataset=support").text)
    assert dict(counts) == {"pii": "1", "near_duplicate": "1", "quarantined": "1", "vqa": "0"}


def test_report_is_served_sandboxed(app, seeded: Seeded) -> None:
    client, _ = signed_in(app, "rita")
    report = Path(seeded.first.version_uri) / "report.html"
    original = report.read_bytes()  # every published version has one
    report.unlink()
    try:
        assert "No data-quality report" in client.get("/datasets/support/v1").text
        report.write_text("<html><body><h1>quality</h1><script>alert(1)</script></body></html>")
        assert 'id="report-link"' in client.get("/datasets/support/v1").text
        response = client.get("/datasets/support/v1/report.html")
        assert response.status_code == 200 and "<h1>quality</h1>" in response.text
        assert "sandbox" in response.headers["content-security-policy"]
    finally:
        report.write_bytes(original)


def test_repeated_wrong_passwords_lock_the_name_then_the_address(seeded: Seeded) -> None:
    limits = SignInLimits(per_name="3 per 15 minutes", per_address="5 per 15 minutes")
    client = TestClient(
        create_app(seeded.state_url, [seeded.recipe], sign_in_limits=limits), base_url="https://testserver"
    )

    def sign_in(name: str, password: str):
        csrf = token(client.get("/login").text)
        data = {"username": name, "password": password, "csrf_token": csrf}
        return client.post("/login", data=data, follow_redirects=False)

    rita, other = "rita", next(name for name in USERS if name != "rita")
    assert [sign_in(rita, "guess").status_code for _ in range(3)] == [401, 401, 401]
    refused = sign_in(rita, PASSWORD)  # the right password, after too many wrong ones
    assert refused.status_code == 429 and "Too many failed sign-ins: try again in 15 minutes" in refused.text
    assert 0 < int(refused.headers["Retry-After"]) <= 15 * 60
    assert client.get("/", follow_redirects=False).status_code == 303  # no session came of it
    # Another name from the same address may still sign in; a success clears only its own failures.
    assert sign_in(other, "guess").status_code == 401
    assert sign_in(other, PASSWORD).status_code == 303
    # The address has failed 4 times; one more and every name from it waits.
    assert sign_in("nobody", "guess").status_code == 401
    assert sign_in(other, PASSWORD).status_code == 429


def test_behind_a_proxy_failed_sign_ins_count_per_forwarded_address(seeded: Seeded) -> None:
    # The real server, told which proxy to trust: the address limit (30) falls on the client the
    # proxy names, not on the proxy, which every client shares.
    with review_server(seeded, options=["--proxy", "127.0.0.1"]) as base:

        def sign_in(name: str, password: str, client: str) -> int:
            forwarded = {"X-Forwarded-For": client}
            page = httpx.get(f"{base}/login", headers=forwarded)
            # The session cookie is Secure, which an HTTP client keeps off plain HTTP: send it by hand.
            session = page.headers["set-cookie"].split(";", 1)[0]
            data = {"username": name, "password": password, "csrf_token": token(page.text)}
            answer = httpx.post(f"{base}/login", data=data, headers={**forwarded, "Cookie": session})
            return answer.status_code

        assert {sign_in(f"guess-{n}", "guess", "203.0.113.7") for n in range(30)} == {401}
        assert sign_in("rita", PASSWORD, "203.0.113.7") == 429
        assert sign_in("rita", PASSWORD, "198.51.100.2") == 303


def test_a_proxy_of_any_address_is_refused_unless_asked_for(seeded: Seeded) -> None:
    # Trusted from anyone, X-Forwarded-For lets each guess claim a new address: the limit per address
    # (30 failures) would never be reached.
    # Networks that hold every address together count as one that does (0.0.0.0/1 and 128.0.0.0/1).
    for proxy in ("*", "0.0.0.0/0", "10.0.0.5, ::/0", "0.0.0.0/1,128.0.0.0/1", "::/1, 8000::/1"):
        done = review("serve", "--proxy", proxy, "--recipe", str(seeded.recipe_path), cwd=seeded.folder)
        assert done.returncode == 2, (proxy, done.stderr)
        assert f"error --proxy {proxy} trusts every client's X-Forwarded-For" in done.stderr, done.stderr
        assert "--trust-any-proxy" in done.stderr and "Traceback" not in done.stderr
    log = seeded.folder / "review-server.log"
    before = log.stat().st_size if log.exists() else 0
    with review_server(seeded, options=["--proxy", "*", "--trust-any-proxy"]) as base:
        assert httpx.get(f"{base}/login").status_code == 200
    said = log.read_text()[before:]
    assert "warning --proxy * trusts every client's X-Forwarded-For" in " ".join(said.split()), said


def test_a_proxy_that_is_not_an_address_or_network_is_refused(seeded: Seeded) -> None:
    # uvicorn took a host name (or a typo) as a literal no client's address equals: the proxy was not
    # trusted, and every client behind it counted as one address, without a word.
    done = review(
        "serve", "--proxy", "10.0.0.5, proxy.internal", "--recipe", str(seeded.recipe_path), cwd=seeded.folder
    )
    assert done.returncode == 2, done.stderr
    said = " ".join(done.stderr.split())
    assert "error --proxy 10.0.0.5, proxy.internal: 'proxy.internal' is not an IP address or network" in said, said
    assert "Traceback" not in said


def test_the_history_shows_a_pii_again_as_what_it_says(app, seeded: Seeded) -> None:
    # It showed the edit's copy of all that stood: ada's mark as pia's, and no word of the span made PII again.
    engine = sa.create_engine(seeded.state_url)
    at_name, at_phone = PII_COMPLETION.index(NAME), PII_COMPLETION.index(PHONE)
    name, phone = ("completion", at_name, at_name + len(NAME)), ("completion", at_phone, at_phone + len(PHONE))
    dec.decide(engine, PII_ITEM, "ada", "edit", dec.Edit(not_pii=[phone]))
    dec.decide(engine, PII_ITEM, "pia", "edit", dec.Edit(not_pii=[name]))
    current = dec.in_force_on(engine, [PII_ITEM])[PII_ITEM]
    own = dec.Edit(fields={"completion": "Call <b>them</b> back."})
    dec.decide(engine, PII_ITEM, "pia", "edit", dec.pii_again(current, [name], own))
    client, _ = signed_in(app, "pia")
    row = client.get(f"/items/{PII_ITEM}").text.split('class="history"')[1].split("</tbody>")[0].split("<tr")[-1]
    assert f"PII again: completion[{name[1]}:{name[2]}]" in row
    assert "Call &lt;b&gt;them&lt;/b&gt; back." in row and "<b>" not in row
    assert f"{phone[1]}, {phone[2]}" not in row  # ada's mark, which stands, is not pia's
    reviewer, _ = signed_in(app, "rita")
    row = reviewer.get(f"/items/{PII_ITEM}").text.split('class="history"')[1].split("</tbody>")[0].split("<tr")[-1]
    assert "(hidden)" in row and "PII again" not in row and "them" not in row
    for user in ("pia", "pia", "ada"):  # the other tests see the queue as seeded
        dec.undo_last(engine, user)


def history_rows(page: str) -> list[list[str]]:
    """The cells of each row of an item page's history, oldest first."""
    body = page.split('class="history"')[1].split("</tbody>")[0]
    return [re.findall(r"<td>(.*?)</td>", row) for row in body.split("<tr")[2:]]


def test_the_history_lists_a_pii_again_once_not_beside_an_approve_nobody_took(app, seeded: Seeded) -> None:
    # A PII again is stored as an approve and an edit (``decisions.pii_again``): the history listed the
    # approve too, an approve pia never clicked, between her marks and her PII again.
    engine = sa.create_engine(seeded.state_url)
    at_name, at_phone = PII_COMPLETION.index(NAME), PII_COMPLETION.index(PHONE)
    name, phone = ("completion", at_name, at_name + len(NAME)), ("completion", at_phone, at_phone + len(PHONE))
    client, _ = signed_in(app, "pia")
    earlier = len(history_rows(client.get(f"/items/{PII_ITEM}").text)) if dec.history(engine, PII_ITEM) else 0
    dec.decide(engine, PII_ITEM, "pia", "approve")  # approves taken, before and after it, are listed as such
    dec.decide(engine, PII_ITEM, "ada", "edit", dec.Edit(not_pii=[phone]))
    dec.decide(engine, PII_ITEM, "pia", "edit", dec.Edit(not_pii=[name]))
    dec.decide(engine, PII_ITEM, "pia", "edit", dec.pii_again(dec.in_force_on(engine, [PII_ITEM])[PII_ITEM], [name]))
    dec.decide(engine, PII_ITEM, "pia", "approve")
    rows = history_rows(client.get(f"/items/{PII_ITEM}").text)[earlier:]
    assert [(user, action) for _, user, action, *_ in rows] == [
        ("pia", "approve"),
        ("ada", "edit"),
        ("pia", "edit"),
        ("pia", "edit"),
        ("pia", "approve"),
    ]
    assert rows[3][3] == f"PII again: completion[{name[1]}:{name[2]}]"
    # Undone (one undo takes both rows), it is still one entry, undone.
    dec.undo_last(engine, "pia")
    dec.undo_last(engine, "pia")
    rows = history_rows(client.get(f"/items/{PII_ITEM}").text)[earlier:]
    assert [(action, undone) for _, _, action, _, undone in rows][2:] == [
        ("edit", ""),
        ("edit", "undone by pia"),
        ("approve", "undone by pia"),
    ]
    for user in ("pia", "ada", "pia"):  # the other tests see the queue as seeded
        dec.undo_last(engine, user)


def test_a_near_duplicate_shown_redacted_hides_the_values_edits_put_in_its_history(tmp_path: Path) -> None:
    from curation.review.queue import add_items, list_items
    from tests.review_seed import _flags, _source

    seeded = seed(tmp_path)
    engine = sa.create_engine(seeded.state_url)
    raw, published = f"Call {NAME} at {PHONE}.", "Call <PERSON> at <PHONE_NUMBER>."
    side = {"id": seeded.ids[5], "text": raw, "published_text": published}
    flag = {
        "id": seeded.ids[5],
        "source": _source(str(tmp_path / "tickets.jsonl"), 5),
        "stage": "near_dedup",
        "kind": "near_duplicate",
        "detail": "near duplicate, similarity 0.93",
        "payload": {"cluster": seeded.ids[2], "kept": side, "member": side, "similarity": 0.93},
    }
    add_items(engine, "support", 1, "seed", _flags([flag]))
    (item,) = [i["item_id"] for i in list_items(engine, kind="near_duplicate") if i["record_id"] == seeded.ids[5]]
    app = create_app(seeded.state_url, [seeded.recipe])
    client, csrf = signed_in(app, "pia")  # sees the raw texts, and types a fix holding the name
    edit = {"action": "edit", "field": "completion", "value": f"Call {NAME} tomorrow.", "csrf_token": csrf}
    edit["seen"] = dec.revision(engine, item)
    assert client.post(f"/items/{item}/decide", data=edit).status_code in (200, 303)
    assert f"Call {NAME} tomorrow." in client.get(f"/items/{item}").text
    reviewer, _ = signed_in(app, "rita")  # sees the texts as published: redacted
    page = reviewer.get(f"/items/{item}").text
    assert published.replace("<", "&lt;").replace(">", "&gt;") in page
    assert NAME not in page and PHONE not in page  # nor in the edit's values, in its history


def test_an_edit_of_a_near_duplicate_starts_from_the_set_aside_records_fields(tmp_path: Path) -> None:
    from curation.review.queue import list_items
    from tests.helpers import outputs, run, write_jsonl
    from tests.review_seed import USERS

    base = "Please update the billing details on my account, I want the yearly plan from next month, thanks a lot"
    rows = [{"q": f"{base}.", "a": "Done."}, {"q": f"{base}!", "a": f"Done, {NAME} updated it."}]
    write_jsonl(tmp_path / "in.jsonl", rows)
    spec = {
        "dataset": "support",
        "sources": [{"path": "in.jsonl"}],
        "record": {"kind": "instruction", "prompt": "{{ q }}", "completion": "{{ a }}"},
        "stages": [{"type": "near_dedup", "threshold": 0.7}, {"type": "pii"}],
        "output": {"validation_fraction": 0.0},
        "state": f"sqlite:///{tmp_path / 'state.db'}",
    }
    assert run(tmp_path, spec).manifest.counts.duplicate == 1
    engine = sa.create_engine(spec["state"])
    for name, role in USERS.items():
        from curation.review.auth import add_user

        add_user(engine, name, role, PASSWORD)
    (item,) = list_items(engine, kind="near_duplicate")
    app = create_app(spec["state"], [])

    def editor(page: str) -> dict[str, str]:
        options = re.findall(r'<option value="([^"]+)" data-value="([^"]*)" data-shown="1"', page)
        return {name: value.replace("&lt;", "<").replace("&gt;", ">") for name, value in options}

    # Each role's editor holds the set-aside record's fields as that role sees its text: raw PII only
    # for a pii-reviewer, the published (redacted) text for a reviewer.
    reviewer, csrf = signed_in(app, "rita")
    page = reviewer.get(f"/items/{item['item_id']}").text
    assert editor(page) == {"prompt": f"{base}!", "completion": "Done, <PERSON> updated it."}
    assert NAME not in page
    client, _ = signed_in(app, "pia")
    assert editor(client.get(f"/items/{item['item_id']}").text)["completion"] == f"Done, {NAME} updated it."

    # The reviewer rewrites the prompt and leaves the completion as shown: only the prompt is edited,
    # and the next run publishes the record with its own completion, redacted.
    edit = {"action": "edit", "field": "prompt", "value": "How do I change my e-mail address?", "csrf_token": csrf}
    edit["seen"] = dec.revision(engine, item["item_id"])
    assert reviewer.post(f"/items/{item['item_id']}/decide", data=edit).status_code in (200, 303)
    (decision,) = dec.history(engine, item["item_id"])
    assert json.loads(decision["after"])["fields"] == {"prompt": "How do I change my e-mail address?"}
    assert json.loads(decision["before"])["fields"] == {"prompt": f"{base}!"}
    second = run(tmp_path, spec)
    published = {row["prompt"]: row["completion"] for row in outputs(Path(second.version_uri))}
    assert published["How do I change my e-mail address?"] == "Done, <PERSON> updated it."
    assert len(published) == 2


def test_not_a_duplicate_on_the_page_and_through_label_studio(seeded: Seeded, app) -> None:
    engine = sa.create_engine(seeded.state_url)
    (item,) = list_items(engine, dataset="support", kind="near_duplicate", status="open")
    assert '<Choice value="keep"' in label_config("near_duplicate", [])
    assert '"keep"' not in label_config("quarantined", [])
    (task,) = export_tasks(engine, {"dataset": "support", "kind": "near_duplicate"})
    decision = {"from_name": "decision", "to_name": "member", "type": "choices", "value": {"choices": ["keep"]}}
    task["annotations"] = [{"id": 7, "result": [decision]}]
    (quarantined,) = export_tasks(engine, {"dataset": "support", "kind": "quarantined"})
    quarantined["annotations"] = [{"id": 8, "result": [{**decision, "to_name": "raw"}]}]
    with pytest.raises(LabelStudioError, match="only a near-duplicate item can be marked not a duplicate"):
        import_annotations(engine, [task, quarantined], "rita")
    assert import_annotations(engine, [task], "rita")["keep"] == 1
    assert dec.run_decisions(engine, "support").kept_apart == {item["record_id"]}
    assert import_annotations(engine, [task], "rita")["already in force"] == 1
    dec.undo_last(engine, "rita")
    # On the page: the item's form posts the action; another kind of item refuses it.
    client, csrf = signed_in(app, "rita")
    assert 'value="keep" id="keep"' in client.get(f"/items/{item['item_id']}").text
    response = client.post(
        f"/items/{quarantined['data']['item_id']}/decide",
        data={"csrf_token": csrf, "action": "keep", "seen": dec.revision(engine, quarantined["data"]["item_id"])},
    )
    assert response.status_code == 400 and "only a near-duplicate item" in response.text
    response = client.post(
        f"/items/{item['item_id']}/decide",
        data={"csrf_token": csrf, "action": "keep", "seen": dec.revision(engine, item["item_id"])},
        follow_redirects=False,
    )
    assert response.status_code == 303 and dec.get_item(engine, item["item_id"])["status"] == "kept"
    dec.undo_last(engine, "rita")
    assert dec.get_item(engine, item["item_id"])["status"] == "open"


@pytest.mark.parametrize("utf16", [False, True])
def test_label_studio_labels_after_emoji_are_read_in_characters_or_utf16_units(tmp_path: Path, utf16: bool) -> None:
    """Label Studio releases count a label's offsets after an emoji in characters or in UTF-16 units;
    either way the labels the annotator kept stay redacted and only the removed one is not PII."""
    import pyarrow as pa

    from curation.review.auth import add_user
    from curation.review.queue import add_items
    from schemas.records import FLAG_SCHEMA

    text = "🙂🙂🙂🙂🙂🙂 thanks! Ask Dana Lee (555-0142) or Omar Haddad"
    names = ["Dana Lee", "555-0142", "Omar Haddad"]
    spans = [
        {"start": text.index(n), "end": text.index(n) + len(n), "entity": e, "score": 0.5, "placeholder": f"<{e}>"}
        for n, e in zip(names, ["PERSON", "PHONE_NUMBER", "PERSON"], strict=True)
    ]
    payload = {"field": "prompt", "original": text, "redacted": "", "spans": spans}
    flag = {"id": "r1", "source": {"connector": "files", "uri": "/in.jsonl", "line": 1, "page": None}}
    flag |= {"stage": "pii", "kind": "pii", "detail": "prompt: PERSON 0.5", "payload": json.dumps(payload)}
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    add_items(engine, "support", 1, "run", pa.Table.from_pylist([flag], schema=FLAG_SCHEMA))
    add_user(engine, "pia", "pii-reviewer", PASSWORD)
    (task,) = export_tasks(engine, {"kind": "pii"}, include_pii=True)
    labels = task["predictions"][0]["result"]
    assert [label["value"]["text"] for label in labels] == names
    if utf16:  # each emoji before a label counts twice
        for label in labels:
            label["value"] = {k: v + 6 if k in ("start", "end") else v for k, v in label["value"].items()}
    # The annotator removes the second name's label, keeps the others, and approves.
    choice = {"from_name": "decision", "to_name": "text", "type": "choices", "value": {"choices": ["approve"]}}
    task["annotations"] = [{"id": 1, "result": [labels[0], labels[1], choice]}]
    assert import_annotations(engine, [task], "pia")["edit"] == 1
    omar = spans[2]
    assert dec.run_decisions(engine, "support").undone == {"r1": {("prompt", omar["start"], omar["end"])}}


def both_fields_flagged(tmp_path: Path) -> tuple[sa.Engine, dict[str, dict]]:
    """A run whose one record holds a name in its prompt and its completion: a PII item for each field
    (by field name), and the users of ``USERS``."""
    from curation.review.auth import add_user
    from tests.helpers import run, write_jsonl

    write_jsonl(tmp_path / "in.jsonl", [{"q": f"Ask {NAME} about it?", "a": f"Transfers, says {NAME}."}])
    spec = {
        "dataset": "support",
        "sources": [{"path": "in.jsonl"}],
        "record": {"kind": "instruction", "prompt": "{{ q }}", "completion": "{{ a }}", "label": "kind"},
        "stages": [{"type": "pii", "entities": ["PHONE_NUMBER", "PERSON"], "review_below": 1.0}],
        "output": {"validation_fraction": 0.0},
        "state": f"sqlite:///{tmp_path / 'state.db'}",
    }
    run(tmp_path, spec)
    engine = sa.create_engine(spec["state"])
    for name, role in USERS.items():
        add_user(engine, name, role, PASSWORD)
    return engine, {json.loads(i["payload"])["field"]: i for i in list_items(engine, kind="pii")}


def editor(page: str) -> tuple[str, dict[str, str]]:
    """The field the item page's editor opens on, and the value it holds for each field it shows."""
    options = re.findall(r'<option value="([^"]+)" data-value="([^"]*)" data-shown="1" ?(selected)?', page)
    values = {name: value.replace("&lt;", "<").replace("&gt;", ">") for name, value, _ in options}
    return next(name for name, _, selected in options if selected), values


def test_an_edit_of_a_pii_items_other_field_starts_from_its_value_as_the_role_sees_it(tmp_path: Path) -> None:
    engine, items = both_fields_flagged(tmp_path)
    item = items["prompt"]
    app = create_app(str(engine.url), [])

    # The editor opens on the flagged prompt, and holds the completion as the role sees it: raw for a
    # pii-reviewer, as published (redacted) for a reviewer.
    client, _ = signed_in(app, "pia")
    assert editor(client.get(f"/items/{item['item_id']}").text) == (
        "prompt",
        {"prompt": f"Ask {NAME} about it?", "completion": f"Transfers, says {NAME}."},
    )
    reviewer, csrf = signed_in(app, "rita")
    page = reviewer.get(f"/items/{item['item_id']}").text
    assert editor(page) == (
        "prompt",
        {"prompt": "Ask <PERSON> about it?", "completion": "Transfers, says <PERSON>."},
    )
    assert NAME not in page and PHONE not in page
    # The completion left as shown is no edit of it (nothing else changed: refused).
    same = {"action": "edit", "field": "completion", "value": "Transfers, says <PERSON>.", "csrf_token": csrf}
    same["seen"] = dec.revision(engine, item["item_id"])
    assert reviewer.post(f"/items/{item['item_id']}/decide", data=same).status_code == 400


def test_a_pii_items_editor_holds_the_other_fields_as_the_records_other_items_decide_them(tmp_path: Path) -> None:
    # The prompt item's editor held the completion as first flagged, though the completion's item had an
    # edit in force (or its name marked not PII): an edit of the completion from there put the name back.
    engine, items = both_fields_flagged(tmp_path)
    prompt, completion = items["prompt"]["item_id"], items["completion"]["item_id"]
    app = create_app(str(engine.url), [])
    pii_reviewer, csrf = signed_in(app, "pia")
    reviewer, _ = signed_in(app, "rita")
    fixed = {"action": "edit", "field": "completion", "value": "Transfers, says the bank.", "csrf_token": csrf}
    fixed["seen"] = dec.revision(engine, completion)
    assert pii_reviewer.post(f"/items/{completion}/decide", data=fixed, follow_redirects=False).status_code == 303
    assert editor(pii_reviewer.get(f"/items/{prompt}").text)[1]["completion"] == "Transfers, says the bank."
    # The edit is stored as typed (a pii-reviewer's may hold PII): a reviewer is told of it, not shown it.
    page = reviewer.get(f"/items/{prompt}").text
    assert "Transfers, says the bank." not in page and NAME not in page
    assert re.search(r'id="edit-hidden">An edit in force sets completion;', page)
    # Posted again unchanged from the prompt's editor, the completion is no edit.
    again = {**fixed, "value": "Transfers, says the bank.", "field": "completion", "seen": dec.revision(engine, prompt)}
    assert pii_reviewer.post(f"/items/{prompt}/decide", data=again).status_code == 400
    # Undone, and the completion's name marked not PII instead: published in clear, to every role.
    dec.undo_last(engine, "pia")
    span = json.loads(items["completion"]["payload"])["spans"][0]
    marked = {"action": "edit", "not_pii": f"completion:{span['start']}:{span['end']}", "csrf_token": csrf}
    marked["seen"] = dec.revision(engine, completion)
    assert pii_reviewer.post(f"/items/{completion}/decide", data=marked, follow_redirects=False).status_code == 303
    assert editor(reviewer.get(f"/items/{prompt}").text) == (
        "prompt",
        {"prompt": "Ask <PERSON> about it?", "completion": f"Transfers, says {NAME}."},
    )


def test_a_pii_items_editor_takes_another_items_field_only_as_the_current_flag_shows_it(tmp_path: Path) -> None:
    # Another version's item of the record showed the completion as that version redacted it: with its
    # name marked not PII, the v2 prompt item's editor showed a reviewer the phone v2 redacts.
    import pyarrow as pa

    from curation.review.auth import add_user
    from curation.review.queue import add_items
    from schemas.records import FLAG_SCHEMA

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    for name, role in USERS.items():
        add_user(engine, name, role, PASSWORD)
    prompt, completion = f"Ask {NAME} about it?", f"Transfers, says {NAME}, {PHONE}."

    def flag(stage: str, field: str, spans: list[dict], redacted: str, other: str, other_redacted: str) -> pa.Table:
        original = prompt if field == "prompt" else completion
        payload = {"field": field, "original": original, "redacted": redacted, "spans": spans, "redactions": spans}
        payload |= {"fields": {other: completion if other == "completion" else prompt}}
        payload |= {"redacted_fields": {other: other_redacted}}
        src = {"connector": "files", "uri": "a.jsonl", "line": 1, "page": None}
        row = {"id": "r0", "source": src, "stage": stage, "kind": "pii", "detail": "d", "payload": json.dumps(payload)}
        return pa.Table.from_pylist([row], schema=FLAG_SCHEMA)

    def person(start: int) -> dict:
        return {"start": start, "end": start + len(NAME), "entity": "PERSON", "score": 0.6, "placeholder": "<PERSON>"}

    # v1 (one PII stage, names): the completion's item, its name then marked not PII.
    v1 = flag(
        "pii", "completion", [person(16)], f"Transfers, says <PERSON>, {PHONE}.", "prompt", "Ask <PERSON> about it?"
    )
    add_items(engine, "d", 1, "one", v1)
    dec.decide(engine, 1, "pia", "edit", dec.Edit(not_pii=[("completion", 16, 16 + len(NAME))]))
    # v2 adds a phone stage, which flags the prompt: the completion it publishes has the phone redacted.
    v2 = flag(
        "pii2", "prompt", [person(4)], "Ask <PERSON> about it?", "completion", f"Transfers, says {NAME}, <PHONE>."
    )
    add_items(engine, "d", 2, "two", v2)
    reviewer, _ = signed_in(create_app(str(engine.url), []), "rita")
    page = reviewer.get("/items/2").text
    assert PHONE not in page
    assert editor(page)[1]["completion"] == f"Transfers, says {NAME}, <PHONE>."


def test_a_reviewer_sees_no_pii_that_a_later_pii_stage_redacts(tmp_path: Path) -> None:
    from curation.review.auth import add_user
    from tests.helpers import outputs, run, write_jsonl

    phone = "+1 415 555 0132"
    rows = [
        {"q": f"Ask {NAME} about it?", "a": f"Call {phone} for transfers."},
        {"q": f"Ask {NAME} on {phone}?", "a": "Transfers."},  # the flagged field holds what the second redacts
    ]
    write_jsonl(tmp_path / "in.jsonl", rows)
    spec = {
        "dataset": "support",
        "sources": [{"path": "in.jsonl"}],
        "record": {"kind": "instruction", "prompt": "{{ q }}", "completion": "{{ a }}", "label": "kind"},
        "stages": [
            {"type": "pii", "entities": ["PERSON"], "review_below": 1.0},
            {"type": "pii", "entities": ["PHONE_NUMBER"], "threshold": 0, "review_below": 0},
        ],
        "output": {"validation_fraction": 0.0},
        "state": f"sqlite:///{tmp_path / 'state.db'}",
    }
    result = run(tmp_path, spec)
    published = sorted((r["prompt"], r["completion"]) for r in outputs(Path(result.version_uri)))
    assert published == [
        ("Ask <PERSON> about it?", "Call <PHONE_NUMBER> for transfers."),
        ("Ask <PERSON> on <PHONE_NUMBER>?", "Transfers."),
    ]
    engine = sa.create_engine(spec["state"])
    for name, role in USERS.items():
        add_user(engine, name, role, PASSWORD)
    items = list_items(engine, kind="pii")
    assert len(items) == 2
    app = create_app(spec["state"], [])
    reviewer, _ = signed_in(app, "rita")
    pii_reviewer, csrf = signed_in(app, "pia")
    raw = [NAME, phone, "415 555", "0132"]

    def no_raw_pii() -> None:
        for item in items:
            page = reviewer.get(f"/items/{item['item_id']}").text
            assert not [text for text in raw if text in page], item
        for task in export_tasks(engine, {"kind": "pii"}):
            assert not [text for text in raw if text in json.dumps(task)], task

    no_raw_pii()
    # The reviewer's editor holds each field as published.
    page = reviewer.get(f"/items/{items[0]['item_id']}").text
    options = re.findall(r'<option value="([^"]+)" data-value="([^"]*)" data-shown="1"', page)
    shown = tuple(
        dict((n, v.replace("&lt;", "<").replace("&gt;", ">")) for n, v in options)[f] for f in ("prompt", "completion")
    )
    assert shown in published
    # A span of the first stage marked not PII is shown in clear no more than a later stage leaves it.
    for item in items:
        span = json.loads(item["payload"])["spans"][0]
        key = f"prompt:{span['start']}:{span['end']}"
        response = pii_reviewer.post(
            f"/items/{item['item_id']}/decide",
            data={"action": "edit", "not_pii": key, "csrf_token": csrf, "seen": dec.revision(engine, item["item_id"])},
        )
        assert response.status_code in (200, 303)
    assert NAME not in raw[1:]
    raw.remove(NAME)  # marked not PII: published in clear by the next run
    no_raw_pii()


def test_a_version_the_page_cannot_show_is_not_found(app, seeded: Seeded) -> None:
    client, _ = signed_in(app, "rita")
    for path, said in (
        ("/datasets/nosuch/v1", "the server does not know where nosuch is published: start it with --recipe"),
        ("/datasets/support/v99", "support v99 has no manifest under"),
    ):
        response = client.get(path)
        assert response.status_code == 404, path
        assert said in response.text and 'id="version-queue"' in response.text, path  # the version's page, saying why
        assert "<h2>Manifest</h2>" not in response.text, path
    assert client.get("/datasets/support/v1").status_code == 200


def test_a_version_the_store_will_not_give_is_no_missing_manifest(
    app, seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any error reading it was taken for "support v1 has no manifest" (404) for a published version.
    import connectors.storage

    class Denying:
        def open_input_stream(self, path: str) -> object:
            raise PermissionError(13, "Permission denied", path)

    found = connectors.storage.filesystem
    client, _ = signed_in(app, "rita")
    monkeypatch.setattr(connectors.storage, "filesystem", lambda uri: (Denying(), found(uri)[1]))
    response = client.get("/datasets/support/v1")
    assert response.status_code == 502 and "cannot read manifest.json of support v1" in response.text, response.text
    assert "has no manifest" not in response.text
