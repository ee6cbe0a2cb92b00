"""The review page in a real browser: sign in, work through the queue with the mouse and the
keys, edit a record, undo; then the next run of the recipe honours every decision."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pyarrow as pa
import pytest
import sqlalchemy as sa
from playwright.sync_api import Browser, Page, expect

from curation.review import decisions as dec
from curation.review.queue import add_items, list_items
from schemas.records import FLAG_SCHEMA
from tests.conftest import chromium
from tests.helpers import outputs, set_aside
from tests.review_seed import NAME, PII_COMPLETION, Seeded, publish_to_s3, run_again, seed
from tests.review_server import review_server, sign_in

pytestmark = pytest.mark.slow


def press(page: Page, key: str) -> None:
    """A key pressed once the page shown has run its script (deferred: its key listener is attached before
    DOMContentLoaded): a key pressed just after a click's navigation could reach the page before it."""
    page.wait_for_load_state("domcontentloaded")
    page.keyboard.press(key)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return seed(tmp_path_factory.mktemp("review-browser"))


ROLE = "arn:aws:iam::123456789012:role/curation-training"


@pytest.fixture(scope="module")
def base(seeded: Seeded, aws_env: str) -> Iterator[str]:
    # The server process takes the AWS settings (pointed at the moto server) for the training handoff,
    # and also serves a copy of the dataset published to S3, which a launch needs.
    bucket = f"review-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=aws_env).create_bucket(Bucket=bucket)
    recipes = [publish_to_s3(seeded, bucket)]
    with review_server(seeded, recipes, env={"SAGEMAKER_ROLE_ARN": ROLE, "CURATION_JUMPSTART_SPECS": "pinned"}) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def test_work_through_the_queue_and_the_next_run_honours_it(base: str, browser: Browser, seeded: Seeded) -> None:
    page = sign_in(browser, base, "rita")
    expect(page.locator(".count[data-kind=pii] strong")).to_have_text("1")
    expect(page.locator(".count[data-kind=quarantined] strong")).to_have_text("1")

    # Quarantined record: its reason and raw input; approved with the key.
    page.click("text=malformed_json")
    expect(page.locator("pre.raw")).to_contain_text('{"question": "broken')
    press(page, "a")

    # The queue moves on to the PII item: a reviewer sees it redacted, and fixes the completion.
    expect(page.locator("h1")).to_contain_text("pii")
    expect(page.locator("#redacted-text")).to_have_text("Call <PERSON> at <PHONE_NUMBER> about the refund.")
    assert NAME not in page.content()
    press(page, "e")
    expect(page.locator("#edit-value")).to_be_focused()
    expect(page.locator("#edit-value")).to_have_value("Call <PERSON> at <PHONE_NUMBER> about the refund.")
    page.fill("#edit-value", "Please call our support line about the refund.")
    press(page, "Control+Enter")

    # Near-duplicate: both texts side by side, differences marked; rejected with the key.
    expect(page.locator("h1")).to_contain_text("near duplicate")
    expect(page.locator(".side-by-side del").first).to_have_text("do")
    expect(page.locator(".side-by-side ins").first).to_have_text("can")
    # The editor holds the set-aside record's completion; a field the item does not show (its label)
    # starts from an empty box that says so, not that the field is empty.
    expect(page.locator("#edit-value")).to_have_value("Use the reset link on the sign in page.")
    page.select_option("#edit-field", "label")
    expect(page.locator("#edit-value")).to_have_value("")
    expect(page.locator("#edit-value")).to_have_attribute("placeholder", re.compile("does not show the field's"))
    press(page, "Escape")
    press(page, "r")

    # VQA: image, question, answer; approved with the mouse, undone with the key, then edited.
    expect(page.locator("#question")).to_have_text("Which bar is tallest?")
    # Read once the image has loaded, or failed to (``complete`` either way): a busy machine showed the
    # question before the image arrived, and its width read 0.
    page.wait_for_function("() => document.querySelector('.vqa img')?.complete")
    assert page.locator(".vqa img").evaluate("img => img.naturalWidth") == 240
    page.click("#approve")
    expect(page.locator(".count[data-kind=vqa] strong")).to_have_text("0")
    press(page, "u")
    expect(page.locator("#status")).to_have_text("open")
    expect(page.locator(".message")).to_contain_text("undid approve")
    page.select_option("#edit-field", "answer")
    page.fill("#edit-value", "the orange one")
    page.click("#save-edit")

    for kind in ("pii", "near_duplicate", "quarantined", "vqa"):
        expect(page.locator(f".count[data-kind={kind}] strong")).to_have_text("0")
    expect(page.locator("tr.status-rejected")).to_have_count(1)
    expect(page.locator("tr.status-edited")).to_have_count(2)

    # Every decision is stored with who and when; the undone one stays in the history.
    engine = sa.create_engine(seeded.state_url)
    history = [d for item in range(1, 5) for d in dec.history(engine, item)]
    assert [(d["user"], d["action"], d["undone_at"] is not None) for d in history] == [
        ("rita", "approve", False),
        ("rita", "edit", False),
        ("rita", "reject", False),
        ("rita", "approve", True),
        ("rita", "edit", False),
    ]
    pii_edit = history[1]
    assert json.loads(pii_edit["before"]) == {"status": "open", "fields": {"completion": PII_COMPLETION}}
    assert json.loads(pii_edit["after"])["fields"] == {"completion": "Please call our support line about the refund."}

    # The next run: the rejected record is filtered with reason `review`, the edit is applied.
    second = run_again(seeded.recipe)
    counts = second.manifest.counts
    assert counts.reasons["filtered"] == {"review": 1}
    assert counts.input == 6 and counts.written == 4
    assert second.manifest.stats["stages"]["review"] == {"edited": 1, "rejected": 1}
    rows = outputs(Path(second.version_uri))
    assert "Please call our support line about the refund." in {row["completion"] for row in rows}
    assert all(NAME not in row["completion"] for row in rows)
    assert "How can I reset my password?" not in {row["prompt"] for row in rows}
    (review,) = [row for row in set_aside(Path(second.version_uri)) if row["reason"] == "review"]
    assert (review["id"], review["outcome"], review["stage"]) == (seeded.ids[3], "filtered", "review")

    # The run read the input again: its flag on the decided record was not queued again. Another flag
    # on that record (another payload) says the record already has a decision; j / k move through the queue.
    assert list_items(engine, dataset="support", kind="quarantined", status="open") == []
    (decided,) = list_items(engine, dataset="support", kind="quarantined")
    other = {**decided, "id": decided["record_id"], "source": json.loads(decided["source"]), "payload": "{}"}
    add_items(engine, "support", 2, "another-run", pa.Table.from_pylist([other], schema=FLAG_SCHEMA))
    (again,) = list_items(engine, dataset="support", kind="quarantined", status="open")
    page.goto(f"{base}/?dataset=support&version=2")
    page.click(f"a[href^='/items/{again['item_id']}']")
    expect(page.locator("#earlier")).to_contain_text("approve by rita on item 1")
    page.goto(f"{base}/items/2")
    press(page, "j")
    page.wait_for_url(f"{base}/items/3")
    press(page, "k")
    page.wait_for_url(f"{base}/items/2")


def test_a_near_duplicate_can_be_marked_not_a_duplicate_with_the_key_and_undone(
    base: str, browser: Browser, seeded: Seeded
) -> None:
    page = sign_in(browser, base, "pia")
    page.goto(f"{base}/items/1")  # a quarantined record is no one's duplicate: no such button
    expect(page.locator("#approve")).to_be_visible()
    expect(page.locator("#keep")).to_have_count(0)
    (item,) = list_items(sa.create_engine(seeded.state_url), dataset="support", kind="near_duplicate")
    page.goto(f"{base}/items/{item['item_id']}")
    expect(page.locator("#keep")).to_have_text(re.compile("Not a duplicate"))
    press(page, "d")
    expect(page.locator("p[role=status]")).to_contain_text(f"item {item['item_id']}: kept")
    page.goto(f"{base}/items/{item['item_id']}")
    expect(page.locator("#status")).to_have_text("kept")
    expect(page.locator("table.history tbody tr:last-child")).to_contain_text("keep")
    press(page, "u")  # undone: the item is as the other decisions in force leave it
    expect(page.locator("p[role=status]")).to_contain_text("undid keep")
    actions = [
        (d["user"], d["action"], d["undone_at"] is not None)
        for d in dec.history(sa.create_engine(seeded.state_url), item["item_id"])
    ]
    assert actions[-1] == ("pia", "keep", True)


def test_a_kept_item_offers_no_second_keep_and_its_editor_starts_from_the_edit_in_force(
    base: str, browser: Browser, seeded: Seeded
) -> None:
    engine = sa.create_engine(seeded.state_url)
    (item,) = list_items(engine, dataset="support", kind="near_duplicate")
    page = sign_in(browser, base, "pia")
    page.goto(f"{base}/items/{item['item_id']}")
    page.click("#keep")
    page.goto(f"{base}/items/{item['item_id']}")
    # Already marked: the page says so, and offers no button (nor key) to mark it again.
    expect(page.locator("#status")).to_have_text("kept")
    expect(page.locator("#kept-note")).to_contain_text("not a duplicate")
    expect(page.locator("#keep")).to_have_count(0)
    press(page, "d")
    expect(page.locator("#status")).to_have_text("kept")

    # An edit after the keep: the editor starts from it when the annotator comes back, so saving the
    # box as shown changes nothing and a further edit does not lose it.
    page.select_option("#edit-field", "completion")
    page.fill("#edit-value", "Use the reset link on the sign-in page, then sign in again.")
    page.click("#save-edit")
    page.goto(f"{base}/items/{item['item_id']}")
    expect(page.locator("#edit-value")).to_have_value("Use the reset link on the sign-in page, then sign in again.")
    page.click("#save-edit")
    expect(page.locator("p[role=alert]")).to_contain_text("at least one changed field")
    # A keep posted anyway (a second tab) takes no decision: it would set aside the edit made after it.
    page.goto(f"{base}/items/{item['item_id']}")
    csrf = page.locator("#undo-form input[name=csrf_token]").get_attribute("value")
    seen = page.locator("#approve-form input[name=seen]").get_attribute("value")
    page.request.post(
        f"{base}/items/{item['item_id']}/decide", form={"csrf_token": csrf, "action": "keep", "seen": seen}
    )
    record = item["record_id"]
    assert [d["action"] for d in dec.history(engine, item["item_id"]) if d["user"] == "pia"][-2:] == ["keep", "edit"]
    decisions = dec.run_decisions(engine, "support")
    assert record in decisions.kept_apart
    assert decisions.edits[record] == {"completion": "Use the reset link on the sign-in page, then sign in again."}
    while dec.undo_last(engine, "pia") is not None:  # leave the queue as the other tests found it
        pass


def test_a_span_marked_not_pii_can_be_marked_pii_again_with_the_keys_and_undone(
    base: str, browser: Browser, seeded: Seeded
) -> None:
    engine = sa.create_engine(seeded.state_url)
    (item,) = list_items(engine, dataset="support", kind="pii")
    start = PII_COMPLETION.index(NAME)
    name = ("completion", start, start + len(NAME))
    key = ":".join(map(str, name))
    fields = dec.fields_in_force(engine, item["item_id"])  # another annotator's edit, which stands throughout
    page = sign_in(browser, base, "pia")
    page.goto(f"{base}/items/{item['item_id']}")
    expect(page.locator("#pii-again")).to_have_count(0)
    page.check(f"input[name=not_pii][value='{key}']")
    page.click("#save-edit")
    expect(page.locator("p[role=status]")).to_contain_text(f"item {item['item_id']}: edited")
    assert dec.not_pii_in_force(engine, item["item_id"]) == {name}

    # Marked not PII, the span is offered "PII again" (not a second "not PII"), reached and saved with the keys.
    page.goto(f"{base}/items/{item['item_id']}")
    expect(page.locator(f"input[name=not_pii][value='{key}']")).to_have_count(0)
    again = page.locator(f"#pii-again input[name=pii_again][value='{key}']")
    expect(page.locator("#pii-again")).to_contain_text(NAME)
    again.focus()
    press(page, "Space")
    expect(again).to_be_checked()
    press(page, "Control+Enter")
    expect(page.locator("p[role=status]")).to_contain_text(f"item {item['item_id']}:")
    assert dec.not_pii_in_force(engine, item["item_id"]) == set()
    assert dec.fields_in_force(engine, item["item_id"]) == fields
    decided = [(d["action"], d["undone_at"]) for d in dec.history(engine, item["item_id"]) if d["user"] == "pia"]
    # As the Label Studio import stores it: an approve and the edit with what stands after it (or the approve alone).
    assert [action for action, _ in decided] == ["edit", "approve", *(["edit"] if fields else [])]
    page.goto(f"{base}/items/{item['item_id']}")
    expect(page.locator("#pii-again")).to_have_count(0)
    expect(page.locator(f"input[name=not_pii][value='{key}']")).to_have_count(1)

    # Undone (`u`), both go: the span is not PII again.
    press(page, "u")
    expect(page.locator("p[role=status]")).to_contain_text(f"on item {item['item_id']}")
    assert dec.not_pii_in_force(engine, item["item_id"]) == {name}
    expect(page.locator("#pii-again input[name=pii_again]")).to_have_count(1)
    while dec.undo_last(engine, "pia") is not None:  # leave the queue as the other tests found it
        pass


def test_reviewer_is_refused_launch(base: str, browser: Browser) -> None:
    page = sign_in(browser, base, "rita")
    page.goto(f"{base}/datasets/support/v1")
    expect(page.locator(".launch")).to_contain_text("Only an admin can launch training")
    expect(page.locator("#launch")).to_have_count(0)
    csrf = page.locator("#undo-form input[name=csrf_token]").get_attribute("value")
    response = page.request.post(f"{base}/datasets/support/v1/training", form={"csrf_token": csrf, "confirm": "yes"})
    assert response.status == 403
    assert "only an admin can launch training" in response.text()


def test_admin_dry_run_then_launch(base: str, browser: Browser) -> None:
    page = sign_in(browser, base, "ada")
    # A version published locally: the dry run shows the request and says what a launch still needs.
    page.goto(f"{base}/datasets/support/v1")
    page.click("#launch")
    request = json.loads(page.locator("#training-request").inner_text())
    assert {"Key": "curation:dataset", "Value": "support"} in request["Tags"]
    assert request["RoleArn"] == ROLE
    expect(page.locator("#training-needs")).to_contain_text("on S3")
    # Published without validation records: the page says, as the CLI does, what JumpStart holds out.
    ratio = request["HyperParameters"]["validation_split_ratio"]
    expect(page.locator("#training-held-out")).to_contain_text(f"holds out validation_split_ratio={ratio}")
    expect(page.locator("#confirm-launch")).to_have_count(0)  # nothing to confirm: it cannot launch
    csrf = page.locator("#undo-form input[name=csrf_token]").get_attribute("value")
    posted = page.request.post(f"{base}/datasets/support/v1/training", form={"csrf_token": csrf, "confirm": "yes"})
    assert posted.status == 400  # and a form posted anyway is refused (it holds no signed request)

    # The version on S3: dry run, confirm, launched; its status is shown.
    page.goto(f"{base}/datasets/support-s3/v1")
    page.click("#launch")
    request = json.loads(page.locator("#training-request").inner_text())
    training = request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"]
    assert training.startswith("s3://") and training.endswith("/datasets/support-s3/v1/train/")
    expect(page.locator("#training-needs")).to_have_count(0)
    page.click("#confirm-launch")
    page.wait_for_url(f"{base}/training/{request['TrainingJobName']}")
    described = json.loads(page.locator("#job-status").inner_text())
    assert described["TrainingJobName"] == request["TrainingJobName"]
    assert described["TrainingJobStatus"] in {"InProgress", "Completed"}
