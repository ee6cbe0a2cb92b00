"""The review page attacked as a security reviewer would, through `curation review serve` and
`curation review import` as users run them: record content that is not what it claims to be, ids
past the store's range, and crafted Label Studio exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from curation.review import decisions as dec
from curation.review.app import MAX_FORM_BYTES, MAX_FORM_FIELDS, MAX_PICTURE_BYTES
from curation.review.cli import MAX_EXPORT_BYTES
from curation.review.queue import add_items
from tests.conftest import chromium
from tests.review_seed import NAME, PASSWORD, PII_COMPLETION, Seeded, _flags, _source, seed
from tests.review_server import review_server, sign_in
from tests.test_review_cli import review

PII_ITEM, VQA_ITEM = 2, 4  # the seed's own PII item; its VQA item: a real PNG


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return seed(tmp_path_factory.mktemp("review-security"))


@pytest.fixture(scope="module")
def server(seeded: Seeded) -> Iterator[str]:
    with review_server(seeded) as base:
        yield base


class Session:
    """An annotator signed in over plain HTTP: the session cookie is Secure, which an HTTP client
    keeps off plain HTTP, so it is sent by hand."""

    def __init__(self, base: str, name: str) -> None:
        self.base = base
        page = httpx.get(f"{base}/login")
        self.cookie = page.headers["set-cookie"].split(";", 1)[0]
        data = {"username": name, "password": PASSWORD, "csrf_token": _token(page.text)}
        answer = httpx.post(f"{base}/login", data=data, headers={"Cookie": self.cookie})
        assert answer.status_code == 303, answer.text
        self.cookie = answer.headers["set-cookie"].split(";", 1)[0]
        self.csrf = _token(self.get("/").text)

    def get(self, path: str) -> httpx.Response:
        return self._kept(httpx.get(f"{self.base}{path}", headers={"Cookie": self.cookie}))

    def post(self, path: str, data: dict[str, str]) -> httpx.Response:
        data = {**data, "csrf_token": self.csrf}
        return self._kept(httpx.post(f"{self.base}{path}", data=data, headers={"Cookie": self.cookie}))

    def _kept(self, answer: httpx.Response) -> httpx.Response:
        # The session (its CSRF token, a message) travels in the cookie: keep what the server sets.
        if "set-cookie" in answer.headers:
            self.cookie = answer.headers["set-cookie"].split(";", 1)[0]
        return answer


def _token(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def _vqa_items(seeded: Seeded, images: dict[str, Path | str], dataset: str = "charts") -> dict[str, int]:
    """One VQA item per image (its name as the record's ``image``), as a stage would queue them."""
    engine = sa.create_engine(seeded.state_url)
    flags = [
        {
            "id": f"vqa-{label}",
            "source": _source(str(seeded.folder / "charts.jsonl"), line),
            "stage": "vqa",
            "kind": "vqa",
            "detail": "answer not checked yet",
            "payload": {"image": str(path), "question": "What is shown?", "answer": "a chart"},
        }
        for line, (label, path) in enumerate(images.items(), start=10)
    ]
    add_items(engine, dataset, 1, "security", _flags(flags))
    with engine.connect() as db:
        query = "SELECT record_id, item_id FROM review_items WHERE run_id = 'security' AND dataset = :dataset"
        rows = db.execute(sa.text(query), {"dataset": dataset}).all()
    engine.dispose()
    return {record.removeprefix("vqa-"): item for record, item in rows if record.removeprefix("vqa-") in images}


def test_a_records_image_is_served_only_as_a_picture_that_runs_nothing(seeded: Seeded, server: str) -> None:
    # A record's "image" is customer data: served on the page's origin as its name says (SVG, HTML,
    # script), an annotator opening it would run the attacker's script there, with their session.
    script = "<script>fetch('/undo', {method: 'POST'})</script>"
    hostile = {
        "svg": ("chart.svg", f'<svg xmlns="http://www.w3.org/2000/svg">{script}</svg>'),
        "html": ("chart.html", f"<html><body>{script}</body></html>"),
        "js": ("chart.js", "fetch('/undo', {method: 'POST'})"),
        "html-named-png": ("scan.png", f"<html><body>{script}</body></html>"),
    }
    for label, (name, body) in hostile.items():
        (seeded.folder / label).mkdir(exist_ok=True)
        (seeded.folder / label / name).write_text(body)
    items = _vqa_items(seeded, {label: seeded.folder / label / name for label, (name, _) in hostile.items()})
    rita = Session(server, "rita")
    for label, item_id in items.items():
        answer = rita.get(f"/items/{item_id}/image")
        assert answer.status_code == 404, label
        assert answer.headers["content-type"].startswith("text/html"), label  # the page's own error page
        assert "is not a picture" in answer.text and "<script>fetch" not in answer.text, label
        # The item page still shows the item, to be decided on.
        assert rita.get(f"/items/{item_id}").status_code == 200, label
    picture = rita.get(f"/items/{VQA_ITEM}/image")
    assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")
    assert picture.headers["content-type"] == "image/png"
    assert picture.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in picture.headers["content-security-policy"]


HOSTILE = "\"'><img src=x onerror=alert(1)><script>document.title='pwned'</script><svg onload=alert(2)>"


def test_hostile_record_content_runs_nothing_in_the_browser(seeded: Seeded, server: str) -> None:
    """Customer text in every place the page shows it, and a record whose image is an SVG that loads
    a script (another record's image, a .js file) from the page's origin, opened as an annotator would."""
    (seeded.folder / "hostile").mkdir(exist_ok=True)
    script = seeded.folder / "hostile" / "payload.js"
    script.write_text("document.title = 'pwned';")
    script_item = _vqa_items(seeded, {"payload-js": script})["payload-js"]
    svg = seeded.folder / "hostile" / "picture.svg"
    svg.write_text(f'<svg xmlns="http://www.w3.org/2000/svg"><script href="/items/{script_item}/image"/></svg>')
    svg_item = _vqa_items(seeded, {"picture-svg": svg})["picture-svg"]
    engine = sa.create_engine(seeded.state_url)
    source = _source(f"/in/{HOSTILE}.jsonl", 1)
    text = f"pay {HOSTILE} now"
    pii = {
        "field": "completion",
        "original": text,
        "redacted": text.replace(HOSTILE, "<PERSON>"),
        "spans": [{"start": 4, "end": 4 + len(HOSTILE), "entity": HOSTILE, "score": 0.5, "placeholder": HOSTILE}],
    }
    side = {"id": HOSTILE, "text": text, "fields": {"completion": text}}
    flags = [
        {"id": "hostile-pii", "kind": "pii", "payload": pii},
        {"id": "hostile-dup", "kind": "near_duplicate", "payload": {"kept": side, "member": side, "similarity": 1}},
        {"id": "hostile-bad", "kind": "quarantined", "payload": {"reason": HOSTILE, "detail": text, "record": text}},
    ]
    add_items(
        engine,
        "support",
        1,
        "hostile",
        _flags([{**flag, "source": source, "stage": "pii", "detail": text} for flag in flags]),
    )
    with engine.connect() as db:
        items = (
            db.execute(sa.text("SELECT item_id FROM review_items WHERE run_id = 'hostile' ORDER BY item_id"))
            .scalars()
            .all()
        )
    engine.dispose()
    with chromium() as browser:
        for name in ("rita", "pia"):
            page = sign_in(browser, server, name)
            dialogs: list[str] = []
            page.on("dialog", lambda dialog, said=dialogs: (said.append(dialog.message), dialog.dismiss()))
            for path in ["/", *(f"/items/{item}" for item in items), f"/items/{svg_item}/image"]:
                page.goto(f"{server}{path}")
                page.wait_for_load_state("load")
                assert page.title() != "pwned", (name, path)
                # No element the text could have made: it is text, not markup.
                injected = page.locator("img[src=x], svg[onload], [onerror], script:not([src='/static/review.js'])")
                assert injected.count() == 0, (name, path)
            assert dialogs == [], name
            page.goto(f"{server}/items/{items[0]}")
            assert HOSTILE in page.locator("main").inner_text(), name  # shown as the text it is
            page.context.close()


def test_a_records_image_is_read_only_to_a_limit(seeded: Seeded, server: str) -> None:
    # A record's image name could be any file the server can read, endless ones included.
    large = seeded.folder / "large.png"
    with large.open("wb") as sparse:
        sparse.truncate(MAX_PICTURE_BYTES + 1)
    endless = seeded.folder / "endless.png"
    endless.symlink_to("/dev/zero")
    items = _vqa_items(seeded, {"large": large, "endless": endless})
    rita = Session(server, "rita")
    answer = rita.get(f"/items/{items['large']}/image")
    assert answer.status_code == 404 and "is over 64 MiB: too large to show" in answer.text
    # A link in the folder to /dev/zero is not read at all: it leads out of the folder.
    answer = rita.get(f"/items/{items['endless']}/image")
    assert answer.status_code == 404 and "is a link to a file outside the images folder" in answer.text


def test_a_records_image_is_served_only_from_its_sources_folder(seeded: Seeded, server: str, tmp_path: Path) -> None:
    # A record's "image" is customer data: it could name any picture the server can read (another
    # dataset's, one of the server's own). The seed's charts recipe reads images from the seed's folder.
    elsewhere = tmp_path / "private.png"
    elsewhere.write_bytes((seeded.folder / "chart.png").read_bytes())
    assert not elsewhere.is_relative_to(seeded.folder)
    names = {
        "absolute": elsewhere,
        "uri": f"file://{elsewhere}",
        "climbing": f"../{tmp_path.name}/private.png",
        "dotted": f"{seeded.folder}/../{tmp_path.name}/private.png",
        "nul": "chart\x00.png",
    }
    items = _vqa_items(seeded, names)
    rita = Session(server, "rita")
    for label, item_id in items.items():
        answer = rita.get(f"/items/{item_id}/image")
        assert answer.status_code == 404, label
        assert "is not in the images folder of a source of charts" in answer.text, label
        assert not answer.content.startswith(b"\x89PNG"), label
    # The name as the images source writes it (relative to its folder), and a path inside the folder.
    inside = _vqa_items(seeded, {"relative": "chart.png", "within": f"{seeded.folder}/./chart.png"})
    for label, item_id in inside.items():
        answer = rita.get(f"/items/{item_id}/image")
        assert answer.status_code == 200 and answer.content.startswith(b"\x89PNG"), label
    # A dataset the server has no recipe for: where its images are is not known.
    (unknown,) = _vqa_items(seeded, {"unknown": seeded.folder / "chart.png"}, dataset="scans").values()
    answer = rita.get(f"/items/{unknown}/image")
    assert answer.status_code == 404 and "does not know the image folders of scans" in answer.text


def test_a_link_in_the_sources_folder_is_served_only_when_it_stays_inside(
    seeded: Seeded, server: str, tmp_path: Path
) -> None:
    # The name is inside the folder, as written; the file system would follow the link to wherever it
    # points (a picture of another dataset, one of the server's own).
    elsewhere = tmp_path / "private.png"
    elsewhere.write_bytes((seeded.folder / "chart.png").read_bytes())
    (seeded.folder / "leaving.png").symlink_to(elsewhere)
    (seeded.folder / "away").symlink_to(tmp_path, target_is_directory=True)
    (seeded.folder / "staying.png").symlink_to(seeded.folder / "chart.png")
    items = _vqa_items(seeded, {"leaving": "leaving.png", "folder": "away/private.png", "staying": "staying.png"})
    rita = Session(server, "rita")
    for label in ("leaving", "folder"):
        answer = rita.get(f"/items/{items[label]}/image")
        assert answer.status_code == 404, label
        assert "is a link to a file outside the images folder of a source of charts" in answer.text, label
        assert not answer.content.startswith(b"\x89PNG"), label
    # A link that stays in the folder is the folder's picture.
    answer = rita.get(f"/items/{items['staying']}/image")
    assert answer.status_code == 200 and answer.content.startswith(b"\x89PNG")


def test_item_ids_past_the_stores_range_are_not_found(seeded: Seeded, server: str) -> None:
    rita = Session(server, "rita")
    huge = 10**20  # past SQLite's and PostgreSQL's integers: a database error (500) before
    for answer in (
        rita.get(f"/items/{huge}"),
        rita.get(f"/items/{huge}/image"),
        rita.post(f"/items/{huge}/decide", {"action": "reject"}),
    ):
        assert answer.status_code == 404, answer.request.url
        assert answer.headers["content-type"].startswith("text/html"), answer.request.url
        assert f"no item {huge}: an item is a number from 1 to 2147483647" in answer.text
        assert "rita" in answer.text  # the page, signed in
    assert rita.get("/items/2").status_code == 200


def test_pii_again_is_posted_as_every_decision_is(seeded: Seeded, server: str) -> None:
    engine = sa.create_engine(seeded.state_url)
    item = dec.get_item(engine, PII_ITEM)
    decide = f"/items/{item['item_id']}/decide"
    start = PII_COMPLETION.index(NAME)
    key = f"completion:{start}:{start + len(NAME)}"
    pia = Session(server, "pia")
    seen = dec.revision(engine, item["item_id"])  # what the item's page posts
    assert pia.post(decide, {"action": "edit", "not_pii": key, "seen": seen}).status_code == 303
    taken = dec.history(engine, item["item_id"])
    # Not signed in, or without the session's CSRF token: refused, as every post is.
    assert httpx.post(f"{server}{decide}", data={"action": "edit", "pii_again": key}).status_code == 401
    forged = {"action": "edit", "pii_again": key, "csrf_token": "forged"}
    assert httpx.post(f"{server}{decide}", data=forged, headers={"Cookie": pia.cookie}).status_code == 403
    # A span not marked not PII, no span at all, or one marked both ways at once: refused, saying why.
    for form, said in (
        ({"pii_again": "completion:0:4"}, "only a span that the decisions in force mark not PII"),
        ({"pii_again": "Maria"}, "a span is field:start:end"),
        ({"pii_again": key, "not_pii": key}, "not PII and PII again at once"),
    ):
        refused = pia.post(decide, {"action": "edit", "seen": dec.revision(engine, item["item_id"]), **form})
        assert refused.status_code == 400 and said in refused.text
    assert dec.history(engine, item["item_id"]) == taken
    # A reviewer, who may not mark a span not PII, may mark it PII again: it only redacts more.
    rita = Session(server, "rita")
    assert f'name="pii_again" value="{key}"' in rita.get(f"/items/{item['item_id']}").text
    marked = {"action": "edit", "pii_again": key, "seen": dec.revision(engine, item["item_id"])}
    assert rita.post(decide, marked).status_code == 303
    assert dec.not_pii_in_force(engine, item["item_id"]) == set()
    for name in ("rita", "pia"):  # leave the queue as the other tests found it
        dec.undo_last(engine, name)


def test_a_burst_of_guesses_gets_no_more_than_the_limit(server: str) -> None:
    # Sent at once, each guess was checked against the limit before any of them was counted: 20
    # concurrent guesses at one name were all tried, where the limit is 5 per 15 minutes.
    forms = []
    for _ in range(20):
        page = httpx.get(f"{server}/login")
        cookie = page.headers["set-cookie"].split(";", 1)[0]
        forms.append(({"username": "ada", "password": "a guess", "csrf_token": _token(page.text)}, cookie))

    def guess(form: tuple[dict[str, str], str]) -> int:
        data, cookie = form
        return httpx.post(f"{server}/login", data=data, headers={"Cookie": cookie}, timeout=60).status_code

    with ThreadPoolExecutor(len(forms)) as pool:
        answers = list(pool.map(guess, forms))
    assert sorted(answers) == [401] * 5 + [429] * 15


def test_a_file_posted_to_a_form_is_refused_before_it_is_stored(server: str) -> None:
    # Anyone who reaches the page may post to sign-in; no form of the page takes a file.
    page = httpx.get(f"{server}/login")
    cookie = page.headers["set-cookie"].split(";", 1)[0]
    data = {"username": "rita", "password": PASSWORD, "csrf_token": _token(page.text)}
    files = {"upload": ("big.bin", b"\0" * 2**20)}  # within the form's size: refused for being a file
    answer = httpx.post(f"{server}/login", data=data, files=files, headers={"Cookie": cookie})
    assert answer.status_code == 400 and "no form of this page takes a file" in answer.text
    assert "Maximum number of files" not in answer.text
    # The same form as the page sends it (multipart, without a file) signs in.
    answer = httpx.post(
        f"{server}/login", files={name: (None, value) for name, value in data.items()}, headers={"Cookie": cookie}
    )
    assert answer.status_code == 303


def _import(seeded: Seeded, tmp_path: Path, body: str) -> str:
    """``review import`` of ``body`` as a file: it must refuse it in one line naming the file, no traceback."""
    export = tmp_path / "export.json"
    export.write_text(body)
    return _refused(seeded, export)


def _refused(seeded: Seeded, export: Path) -> str:
    before = _decisions(seeded)
    done = review("import", str(export), "--user", "ada", "--recipe", str(seeded.recipe_path), cwd=seeded.folder)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"error {export}: ") and done.stderr.count("\n") <= 2, done.stderr
    assert _decisions(seeded) == before  # nothing recorded
    return " ".join(done.stderr.split())


def _decisions(seeded: Seeded) -> int:
    engine = sa.create_engine(seeded.state_url)
    with engine.connect() as db:
        count = db.execute(sa.select(sa.func.count()).select_from(dec.decisions)).scalar_one()
    engine.dispose()
    return count


def _task(data: dict, result: list[dict]) -> str:
    return json.dumps([{"id": 7, "data": data, "annotations": [{"id": 1, "result": result}]}])


def test_a_crafted_label_studio_export_is_refused_in_one_line(seeded: Seeded, tmp_path: Path) -> None:
    approve = [{"from_name": "decision", "type": "choices", "value": {"choices": ["approve"]}}]
    # Nested deeper than Python's JSON reader goes (a RecursionError before).
    assert "nested too deeply" in _import(seeded, tmp_path, "[" * 100_000 + "]" * 100_000)
    # An item id past the store's integers (an OverflowError from the database driver before).
    said = _import(seeded, tmp_path, _task({"item_id": 10**24}, approve))
    assert "task 0 (Label Studio id 7): data.item_id 1000000000000000000000000 is no review item's id" in said
    # true is 1 to Python: it named the store's first item.
    assert "data.item_id True is not a whole number" in _import(seeded, tmp_path, _task({"item_id": True}, approve))
    # An answer that is not text (an AttributeError from deep in the decisions before).
    answer = [{"from_name": "answer", "type": "textarea", "value": {"text": {"nested": "object"}}}]
    said = _import(seeded, tmp_path, _task({"item_id": VQA_ITEM}, answer))
    assert "is not a task as Label Studio exports them: the answer is a dict, not text" in said
    # A label's offset that is no number of characters (1e400 is infinity to Python's JSON reader).
    label = {"from_name": "label", "type": "labels", "value": {"start": 1e400, "end": 3, "text": "x"}}
    text = json.loads(dec.get_item(sa.create_engine(seeded.state_url), 2)["payload"])["original"]
    said = _import(seeded, tmp_path, _task({"item_id": 2, "text": text}, [label]).replace("Infinity", "1e400"))
    assert "is not a task as Label Studio exports them: cannot convert float infinity to integer" in said


def test_a_form_past_the_pages_own_is_refused_before_it_is_parsed(server: str) -> None:
    # Anyone who reaches the page may post to sign-in, and the form is read before its CSRF token is
    # checked: Starlette's own limits took 1,000 fields of 1 MB each.
    page = httpx.get(f"{server}/login")
    cookie = page.headers["set-cookie"].split(";", 1)[0]
    data = {"username": "rita", "password": PASSWORD, "csrf_token": _token(page.text)}
    headers = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
    many = [*data.items(), *((f"f{n}", "x") for n in range(MAX_FORM_FIELDS))]
    answer = httpx.post(f"{server}/login", content=str(httpx.QueryParams(many)), headers=headers)
    assert answer.status_code == 400 and f"the form has more than {MAX_FORM_FIELDS} fields" in answer.text
    assert "Maximum number of fields" not in answer.text  # Starlette's words
    # A multipart body without its boundary: said as the page says things, naming what is wrong.
    answer = httpx.post(
        f"{server}/login", content=b"x", headers={"Cookie": cookie, "Content-Type": "multipart/form-data"}
    )
    assert answer.status_code == 400 and "the form cannot be read (Missing boundary" in answer.text
    # Fields each under Starlette's 1 MB, together past the page's limit: with their length said, and
    # sent in chunks without it.
    large = [*data.items(), *((f"f{n}", "x" * 2**19) for n in range(2 * MAX_FORM_BYTES // 2**19))]
    body = str(httpx.QueryParams(large))
    answer = httpx.post(f"{server}/login", content=body, headers=headers)
    assert answer.status_code == 413 and "the form is over 4 MiB: too large to take" in answer.text
    chunks = (body[start : start + 2**16].encode() for start in range(0, len(body), 2**16))
    answer = httpx.post(f"{server}/login", content=chunks, headers=headers)
    assert answer.status_code == 413 and "the form is over 4 MiB: too large to take" in answer.text
    # The form as the page sends it still signs in.
    assert httpx.post(f"{server}/login", data=data, headers={"Cookie": cookie}).status_code == 303


def test_a_label_studio_export_is_read_only_to_a_limit(seeded: Seeded, tmp_path: Path) -> None:
    # The export is read whole and its tasks take a few times its size in memory: a larger one (sparse
    # here: its size is the file system's word) is refused before it is read, an endless one once the
    # limit is read.
    large = tmp_path / "large-export.json"
    with large.open("wb") as sparse:
        sparse.write(b"[")
        sparse.truncate(MAX_EXPORT_BYTES + 1)
    said = f"over {MAX_EXPORT_BYTES // 2**20} MiB: too large to import at once; export fewer tasks"
    assert said in _refused(seeded, large)
    assert said in _refused(seeded, Path("/dev/zero"))  # this order: without a limit, read until memory runs out
