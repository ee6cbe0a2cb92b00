"""Near-duplicate removal: MinHash + LSH finds edited copies and leaves distinct documents alone."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa
from PIL import Image, ImageDraw

from bench.corpus import generate, score
from curation.published import read_manifest
from curation.review import decisions as dec
from curation.review.decisions import RunDecisions
from curation.review.queue import list_items
from curation.stages.base import DuplicateStage
from curation.stages.dedup_index import CrossRunDedup, SignatureIndex, signature_params
from curation.stages.duplicates import resolve_duplicates
from curation.stages.neardup import ImageNearDedup, NearDedup
from curation.stages.review import ReviewDecisions
from curation.state import StateStore
from schemas.config import RecipeError, load_recipe, parse_recipe
from schemas.records import source_array
from tests.helpers import lineage_rows, outputs, processed, run, set_aside, write_jsonl


def _batch(ids: list[str], texts: list[str]) -> pa.Table:
    return pa.table(
        {"id": ids, "source": source_array("files", "/in.jsonl", list(range(1, len(ids) + 1))), "text": texts}
    )


def _removed(stage: NearDedup, batch: pa.Table, size: int) -> dict[str, str]:
    signatures = [stage.signatures(batch.slice(i, size)) for i in range(0, batch.num_rows, size)]
    aside = stage.resolve(signatures)
    return dict(zip(aside["id"].to_pylist(), aside["duplicate_of"].to_pylist(), strict=True))


def test_precision_and_recall_on_a_generated_set_at_the_default_threshold() -> None:
    corpus = generate(400, seed=11)
    stage = NearDedup(["text"])
    assert isinstance(stage, DuplicateStage)
    removed = _removed(stage, _batch(corpus.ids, corpus.texts), size=150)  # clusters span batches
    precision, recall = score(corpus, removed)
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)
    # Each cluster keeps its first record in input order.
    position = {i: n for n, i in enumerate(corpus.ids)}
    assert all(position[kept] < position[member] for member, kept in removed.items())


def test_estimated_similarity_tracks_true_jaccard() -> None:
    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(4000)]
    base = list(rng.choice(words, 300))
    texts, truths = [" ".join(base)], [1.0]
    for changed in (15, 40, 90, 150):
        edited = base[:]
        for i in rng.choice(len(base), changed, replace=False):
            edited[i] = f"new{i}"
        texts.append(" ".join(edited))
        a = {tuple(base[i : i + 3]) for i in range(len(base) - 2)}
        b = {tuple(edited[i : i + 3]) for i in range(len(edited) - 2)}
        truths.append(len(a & b) / len(a | b))
    stage = NearDedup(["text"], num_perm=256, bands=32)
    sig = stage.minhash(_batch([str(i) for i in range(len(texts))], texts))
    estimates = (sig[1:] == sig[0]).mean(axis=1)
    assert np.abs(estimates - np.array(truths[1:])).max() < 0.08, (estimates, truths)


def test_short_and_empty_texts_and_char_shingles() -> None:
    batch = _batch(
        ["a", "b", "c", "d", "e"],
        ["Refund my card", "refund my card!", "", "Where is my parcel", "Where is my parcel?? please"],
    )
    word = _removed(NearDedup(["text"]), batch, size=5)
    assert word == {"b": "a"}  # the empty text is never anyone's duplicate
    char = _removed(NearDedup(["text"], shingle="char", shingle_size=4, threshold=0.5), batch, size=2)
    assert char == {"b": "a", "e": "d"}


def test_words_with_letters_beyond_ascii_stay_whole() -> None:
    # "ü" or "é" must not split a word: "Zürich" and "Zurich" are different words, "Straße" one word.
    texts = [
        "Grüße aus Zürich: die schöne Straße am Fluss ist heute gesperrt, bitte nehmen Sie die Brücke",
        "grüße aus zürich die schöne straße am fluss ist heute gesperrt bitte nehmen sie die brücke!",
        "Grusse aus Zurich: die schone Strasse am Fluss ist heute gesperrt, bitte nehmen Sie die Brucke",
    ]
    assert _removed(NearDedup(["text"]), _batch(["a", "b", "c"], texts), size=3) == {"b": "a"}


def _image(shift: int, pattern: int) -> bytes:
    image = Image.new("RGB", (128, 128), "white")
    draw = ImageDraw.Draw(image)
    rng = np.random.default_rng(pattern)
    for _ in range(12):
        x, y = rng.integers(0, 100, 2)
        draw.rectangle([x + shift, y, x + shift + 25, y + 25], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=60 + shift)
    return out.getvalue()


def test_image_near_duplicates_by_perceptual_hash() -> None:
    images = [_image(0, 1), _image(1, 1), _image(0, 2), b"not an image", _image(0, 3)]
    batch = pa.table(
        {
            "id": ["p", "q", "r", "bad", "s"],
            "source": source_array("files", "/vqa.jsonl", [1, 2, 3, 4, 5]),
            "image_bytes": pa.array(images, pa.binary()),
        }
    )
    stage = ImageNearDedup(max_distance=6)
    aside = stage.resolve([stage.signatures(batch.slice(0, 2)), stage.signatures(batch.slice(2))])
    assert aside["id"].to_pylist() == ["q"] and aside["duplicate_of"].to_pylist() == ["p"]
    assert aside["reason"].to_pylist() == ["near_duplicate_image"]


def _scan_16bit(text: str, shape: str, levels: tuple[int, int] = (4000, 60000)) -> bytes:
    """A 16-bit greyscale scan (dark on light ``levels``), as a stage may be handed it (the images connector
    publishes it as 8-bit grey)."""
    from PIL import ImageFont

    grey = Image.new("L", (400, 400), 255)
    draw = ImageDraw.Draw(grey)
    if shape == "box":
        draw.rectangle((40, 40, 360, 200), fill=0)
    else:
        draw.ellipse((100, 150, 380, 390), fill=0)
    font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", 40)
    draw.text((20, 300 if shape == "box" else 20), text, fill=0, font=font)
    wide = Image.fromarray(np.where(np.asarray(grey) < 128, *levels).astype(np.uint16))
    out = io.BytesIO()
    wide.save(out, format="PNG")
    return out.getvalue()


# The 16-bit range; 8-bit values widened without scaling; a 12-bit scanner's.
@pytest.mark.parametrize("levels", [(4000, 60000), (20, 230), (320, 3680)])
def test_different_16bit_scans_are_not_near_duplicates(levels: tuple[int, int]) -> None:
    # Pillow's conversion to 8 bits clips both levels to 255: every 16-bit scan hashed as a white page
    # (and, shifted by 8 bits, one holding 8-bit values as a black one).
    scans = [_scan_16bit("Invoice 2024", "box", levels), _scan_16bit("Lab report", "circle", levels)]
    assert Image.open(io.BytesIO(scans[0])).mode == "I;16"
    batch = pa.table(
        {
            "id": ["a", "b", "c"],
            "source": source_array("images", "mem://images.jsonl", [1, 2, 3]),
            "image_bytes": pa.array([*scans, scans[0]], pa.binary()),
        }
    )
    stage = ImageNearDedup(max_distance=6)
    aside = stage.resolve([stage.signatures(batch)])
    assert aside["id"].to_pylist() == ["c"] and aside["duplicate_of"].to_pylist() == ["a"]


def test_the_review_thumbnail_of_a_16bit_scan_shows_it() -> None:
    import base64

    from curation.stages.neardup import thumbnail

    shown = thumbnail(_scan_16bit("Invoice 2024", "box"))
    assert shown is not None and shown.startswith("data:image/jpeg;base64,")
    picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(shown.split(",", 1)[1]))).convert("L"))
    assert picture.min() < 64 and picture.max() > 192  # dark box and text on a light page, not all white


def _noise_images(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


@pytest.mark.parametrize("distance", [0, 6, 8, 11, 16, 31, 32])
def test_image_band_keys_hold_bits_so_distinct_images_are_not_all_candidates(
    distance: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import curation.stages.neardup as neardup
    from curation.stages.duplicates import candidate_groups

    n = 60
    ids, source = [f"r{i}" for i in range(n)], source_array("images", "mem://images.jsonl", list(range(1, n + 1)))
    batch = pa.table({"id": ids, "source": source, "image_bytes": pa.array(_noise_images(n), pa.binary())})
    stage = ImageNearDedup(max_distance=distance)
    signatures = stage.signatures(batch)
    # A band past bit 63 was one key every record shared: all n compared pair by pair (at distance
    # 31 or 32 some bands hold one bit, so a group may hold about half of them).
    assert max((group.num_rows for group in candidate_groups(signatures)), default=0) <= 3 * n // 4
    # Pigeonhole still holds: each hash with exactly ``distance`` of its bits flipped shares a band key.
    rng = np.random.default_rng(distance)
    flipped = {}
    for row, phash in enumerate(signatures["phash"].to_pylist()):
        for bit in rng.choice(64, distance, replace=False):
            phash ^= 1 << int(bit)
        flipped[f"flipped {row}".encode()] = phash
    monkeypatch.setattr(neardup, "_phash", flipped.get)
    moved = stage.signatures(batch.set_column(2, "image_bytes", pa.array(list(flipped), pa.binary())))
    for keys, moved_keys in zip(signatures["keys"].to_pylist(), moved["keys"].to_pylist(), strict=True):
        assert set(keys) & set(moved_keys)


def test_image_signatures_stored_before_the_hash_and_band_change_are_not_compared() -> None:
    # The params (``signature_params``) ImageNearDedup(max_distance=6) stored its signatures under
    # before 16-bit images were hashed from their 8-bit rendering and bands were spread evenly.
    assert signature_params(ImageNearDedup(max_distance=6)) != "998a7a0729705f378231934c69f81249"


def test_images_published_in_an_earlier_version_are_not_published_again(workdir: Path) -> None:
    def add(rows: list[tuple[str, bytes, str]]) -> Path:
        (workdir / "img").mkdir(exist_ok=True)
        for name, data, _ in rows:
            (workdir / "img" / name).write_bytes(data)
        with (workdir / "qa.jsonl").open("a") as sidecar:
            sidecar.writelines(json.dumps({"image": n, "question": q, "answer": "Form 12."}) + "\n" for n, _, q in rows)
        recipe = {
            "dataset": "forms",
            "sources": [{"type": "images", "path": "img", "sidecar": "qa.jsonl"}],
            "record": {"kind": "vqa"},
            "stages": [{"type": "image_dedup", "max_distance": 6}],
            "output": {"validation_fraction": 0.0},
        }
        return Path(run(workdir, recipe).version_uri)

    v1 = add([("a.jpg", _image(0, 1), "Which form is this?"), ("b.jpg", _image(0, 2), "Which form is this?")])
    assert len(outputs(v1)) == 2
    # v2: a rescan of a.jpg (shifted a pixel, saved at another quality) asked the same question, and
    # asked a new one; and a new form.
    rescan = _image(1, 1)
    v2 = add(
        [
            ("a-rescan.jpg", rescan, "which form is this? "),
            ("a-rescan.jpg", rescan, "Who signed it?"),
            ("c.jpg", _image(0, 3), "Which form is this?"),
        ]
    )
    assert sorted(line["prompt"] for line in processed(v2)) == ["Which form is this?", "Who signed it?"]
    (row,) = set_aside(v2)
    assert (row["reason"], row["stage"], row["source"]["line"]) == ("earlier_version", "image_near_dedup", 3)
    assert row["detail"].endswith("published in v1")
    lineage = lineage_rows(v1)
    (a,) = [entry["id"] for entry in lineage if entry["source"]["line"] == 1]  # a.jpg's row of the sidecar
    assert row["duplicate_of"] == a
    assert read_manifest(str(v2)).counts.reasons["duplicate"] == {"earlier_version": 1}


def test_an_image_near_duplicate_marked_not_a_duplicate_is_published_by_the_next_run(workdir: Path) -> None:
    (workdir / "img").mkdir()
    rows = [("a.jpg", _image(0, 1), "Which form is this?"), ("a-rescan.jpg", _image(1, 1), "Who signed it?")]
    for name, data, _ in rows:
        (workdir / "img" / name).write_bytes(data)
    (workdir / "qa.jsonl").write_text(
        "".join(json.dumps({"image": n, "question": q, "answer": "Ada."}) + "\n" for n, _, q in rows)
    )
    recipe = {
        "dataset": "forms",
        "sources": [{"type": "images", "path": "img", "sidecar": "qa.jsonl"}],
        "record": {"kind": "vqa"},
        # The images alone are compared: no edit of the question or the answer unmatches the rescan.
        "stages": [{"type": "image_dedup", "max_distance": 6, "match_question": False}],
        "output": {"validation_fraction": 0.0},
    }
    v1 = run(workdir, recipe)
    assert v1.manifest.counts.reasons["duplicate"] == {"near_duplicate_image": 1}
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)
    (item,) = list_items(engine, dataset="forms", kind="near_duplicate")
    dec.decide(engine, item["item_id"], "rita", "keep")
    v2 = run(workdir, recipe)
    assert v2.manifest.stats["stages"]["review"] == {"kept_apart": 1} and "duplicate" not in v2.manifest.counts.reasons
    assert sorted(line["prompt"] for line in outputs(Path(v2.version_uri))) == ["Which form is this?", "Who signed it?"]
    dec.undo_last(engine, "rita")
    engine.dispose()
    v3 = run(workdir, recipe)  # the sidecar is read again: the rescan is set aside again
    assert v3.manifest.counts.reasons["duplicate"] == {"near_duplicate_image": 1}
    assert [line["prompt"] for line in outputs(Path(v3.version_uri))] == ["Which form is this?"]


# Scanned forms from img/ with their questions in qa.jsonl, deduplicated exactly and by image, across runs.
FORMS = {
    "dataset": "forms",
    "sources": [{"type": "images", "path": "img", "sidecar": "qa.jsonl"}],
    "record": {"kind": "vqa"},
    "stages": [{"type": "exact_dedup"}, {"type": "image_dedup"}],
    "output": {"validation_fraction": 0.0},
}


def test_an_image_changed_in_place_replaces_its_published_version(workdir: Path) -> None:
    import os

    (workdir / "img").mkdir()
    (workdir / "img" / "a.jpg").write_bytes(_image(0, 1))
    (workdir / "img" / "b.jpg").write_bytes(_image(0, 2))
    rows = [{"image": n, "question": "Which form is this?", "answer": "Form 12."} for n in ("a.jpg", "b.jpg")]
    write_jsonl(workdir / "qa.jsonl", rows)
    recipe = FORMS
    v1 = run(workdir, recipe)
    (workdir / "img" / "b.jpg").write_bytes(_image(0, 3))  # another picture under the same name
    os.utime(workdir / "img" / "b.jpg", (1, 1))  # a new mtime whatever the clock's resolution
    v2 = run(workdir, recipe)
    assert v2.manifest.counts.written == 1 and v2.manifest.stats["carry"]["replaced"] == 1
    before = {line["file_name"] for line in outputs(Path(v1.version_uri))}
    after = {line["file_name"] for line in outputs(Path(v2.version_uri))}
    assert len(after) == 2 and len(after & before) == 1  # a.jpg's as it was, b.jpg's new picture
    (new,) = after - before
    (old,) = before - after
    assert (Path(v2.version_uri) / "train" / new).read_bytes() != (Path(v1.version_uri) / "train" / old).read_bytes()
    # The old picture is no longer named by any line: it is not carried.
    assert not (Path(v2.version_uri) / "train" / old).exists()
    assert sorted(f.path for f in v2.manifest.files) == sorted(f"train/{name}" for name in after)


@pytest.mark.parametrize("carry_forward", [True, False])
def test_an_image_changed_in_place_near_its_old_picture_is_a_new_version_of_its_own_record(
    workdir: Path, carry_forward: bool
) -> None:
    import os

    recipe = {**FORMS, "output": {"validation_fraction": 0.0, "carry_forward": carry_forward}}
    (workdir / "img").mkdir()
    (workdir / "img" / "a.jpg").write_bytes(_image(0, 1))
    (workdir / "img" / "b.jpg").write_bytes(_image(0, 2))
    rows = [{"image": n, "question": "Which form is this?", "answer": "Form 12."} for n in ("a.jpg", "b.jpg")]
    write_jsonl(workdir / "qa.jsonl", rows)
    v1 = run(workdir, recipe)
    # b.jpg retouched in place (shifted a pixel, saved at another quality): a near copy of its old picture.
    (workdir / "img" / "b.jpg").write_bytes(_image(1, 2))
    os.utime(workdir / "img" / "b.jpg", (1, 1))  # a new mtime whatever the clock's resolution
    # And a new row: another image, a near copy of a.jpg's published picture, asked the same question.
    (workdir / "img" / "c.jpg").write_bytes(_image(1, 1))
    with (workdir / "qa.jsonl").open("a") as sidecar:
        sidecar.write(json.dumps({**rows[0], "image": "c.jpg"}) + "\n")
    v2 = run(workdir, recipe)
    assert v2.manifest.counts.written == 1  # b.jpg's row, with its new picture
    (a, b) = [entry["id"] for entry in sorted(lineage_rows(Path(v1.version_uri)), key=lambda e: e["source"]["line"])]
    assert [entry["id"] for entry in lineage_rows(Path(v2.version_uri)) if entry["carried_from"] is None] == [b]
    (aside,) = set_aside(Path(v2.version_uri))
    assert (aside["reason"], aside["source"]["line"], aside["duplicate_of"]) == ("earlier_version", 3, a)
    if carry_forward:
        assert v2.manifest.stats["carry"]["replaced"] == 1
        before = {line["file_name"] for line in outputs(Path(v1.version_uri))}
        after = {line["file_name"] for line in outputs(Path(v2.version_uri))}
        assert len(after) == 2 and len(after & before) == 1  # a.jpg's as it was, b.jpg's new picture


def test_image_near_duplicates_with_other_questions_are_kept_unless_asked_to_match_images_only() -> None:
    batch = pa.table(
        {
            "id": ["p", "q", "r"],
            "source": source_array("files", "/vqa.jsonl", [1, 2, 3]),
            "image_bytes": pa.array([_image(0, 1), _image(1, 1), _image(0, 1)], pa.binary()),
            "question": ["Who signed it?", "What is the total?", "WHO signed  it?"],
        }
    )
    by_question = ImageNearDedup(max_distance=6, question="question")
    aside = by_question.resolve([by_question.signatures(batch)])
    assert aside["id"].to_pylist() == ["r"] and aside["duplicate_of"].to_pylist() == ["p"]
    images_only = ImageNearDedup(max_distance=6)
    assert sorted(images_only.resolve([images_only.signatures(batch)])["id"].to_pylist()) == ["q", "r"]


def test_a_record_kept_apart_by_an_annotator_is_not_set_aside_and_its_cluster_keeps_its_record(
    tmp_path: Path,
) -> None:
    base = "the parcel left the depot on monday morning and reached the customer two days later without damage"
    batch = _batch(["a", "x", "b", "c"], [base, f"{base} indeed", f"{base} again", "something else entirely here"])
    assert _removed(NearDedup(["text"]), batch, size=2) == {"x": "a", "b": "a"}
    index = SignatureIndex(f"sqlite:///{tmp_path / 'state.db'}", "d")
    params = CrossRunDedup(NearDedup(["text"]), index).params
    stage = NearDedup(["text"], kept_apart={"x": {"a"}})
    cross_run = CrossRunDedup(stage, index)
    review = ReviewDecisions(RunDecisions(kept_apart={"x"}))
    # "Not a duplicate": x is published; b still names the record its cluster kept.
    assert _removed(stage, batch, size=2) == {"b": "a"}
    assert review(batch).stats == {"kept_apart": 1} and review(batch).kept.num_rows == 4
    # What the stage stores across runs is unchanged: the published signatures stay comparable.
    assert signature_params(cross_run.inner) == params
    # Images compared alone (match_question: false): no edit of the text unmatches them, a keep does.
    images = pa.table(
        {
            "id": ["p", "q", "r"],
            "source": source_array("files", "/vqa.jsonl", [1, 2, 3]),
            "image_bytes": pa.array([_image(0, 1), _image(1, 1), _image(0, 1)], pa.binary()),
        }
    )
    images_only = ImageNearDedup(max_distance=6, kept_apart={"q": {"p"}})
    aside = images_only.resolve([images_only.signatures(images)])
    assert aside["id"].to_pylist() == ["r"] and aside["duplicate_of"].to_pylist() == ["p"]


_TEXT = (
    "the parcel left the depot on monday morning and reached the customer two days later without any damage at "
    "all so we closed the ticket and sent a short survey about the delivery and the driver"
)
_WORDS = _TEXT.split(" ")
# A and its near copies: D and E (near each other too), B and C (near A, not near each other).
_PAIRS = {
    "a": " ".join(_WORDS),
    "b": " ".join([*_WORDS[:-5], "was", "wet", "inside", "sadly", "though"]),
    "c": " ".join(["a", "van", "took", "it", "and", *_WORDS[5:]]),
    "d": " ".join(_WORDS) + " indeed",
    "e": " ".join(_WORDS) + " again",
}


def test_not_a_duplicate_is_decided_on_a_pair_not_on_a_record() -> None:
    ids = list(_PAIRS)
    batch = _batch(ids, [_PAIRS[i] for i in ids])
    both = NearDedup(["text"], kept_apart={"d": {"a"}, "e": {"a"}})
    # Nobody said e is not a copy of d: published d is what e is set aside beside (and queued with).
    assert _removed(both, batch.filter(pc.is_in(batch["id"], pa.array(["a", "d", "e"]))), size=2) == {"e": "d"}
    # Said so too (an item e vs d marked not a duplicate): both are published.
    assert _removed(NearDedup(["text"], kept_apart={"d": {"a"}, "e": {"a", "d"}}), batch, size=2) == {
        "b": "a",
        "c": "a",
    }
    # One cluster (connected through a), but c is no near copy of b: both kept apart from a are published.
    chain = batch.filter(pc.is_in(batch["id"], pa.array(["a", "b", "c"])))
    assert _removed(NearDedup(["text"]), chain, size=3) == {"b": "a", "c": "a"}
    assert _removed(NearDedup(["text"], kept_apart={"b": {"a"}, "c": {"a"}}), chain, size=3) == {}


def test_not_a_duplicate_of_images_is_decided_on_a_pair() -> None:
    images = pa.table(
        {
            "id": ["p", "q", "r"],
            "source": source_array("files", "/vqa.jsonl", [1, 2, 3]),
            "image_bytes": pa.array([_image(0, 1), _image(1, 1), _image(2, 1)], pa.binary()),
        }
    )
    stage = ImageNearDedup(max_distance=6, kept_apart={"q": {"p"}, "r": {"p"}})
    aside = stage.resolve([stage.signatures(images)])
    assert aside["id"].to_pylist() == ["r"] and aside["duplicate_of"].to_pylist() == ["q"]


def test_not_a_duplicate_applies_in_the_stage_whose_item_it_was(tmp_path: Path) -> None:
    from curation.review.queue import add_items
    from curation.stages.quality import quality_stages
    from schemas.config import ImageDedupConfig, NearDedupConfig
    from schemas.records import FLAG_SCHEMA

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    source = {"connector": "files", "uri": "/vqa.jsonl", "line": 2, "page": None}
    payload = json.dumps({"kept": {"id": "p", "text": "Which form?"}, "member": {"id": "q", "text": "Which form?"}})
    flag = {"id": "q", "source": source, "kind": "near_duplicate", "detail": "d", "payload": payload}
    add_items(engine, "forms", 1, "run", pa.Table.from_pylist([{**flag, "stage": "near_dedup"}], schema=FLAG_SCHEMA))
    dec.decide(engine, 1, "rita", "keep")  # the texts are not copies: says nothing of the images
    decisions = dec.run_decisions(engine, "forms")
    assert decisions.kept_apart == {"q"} and decisions.kept_apart_in == {"near_dedup": {"q": {"p"}}}
    images = pa.table(
        {
            "id": ["p", "q"],
            "source": source_array("files", "/vqa.jsonl", [1, 2]),
            "image_bytes": pa.array([_image(0, 1), _image(1, 1)], pa.binary()),
            "question": ["Which form?", "Which form?"],
            "answer": ["A tax form.", "A tax form."],
        }
    )
    config = ImageDedupConfig(type="image_dedup", match_question=False)
    (image_stage,) = quality_stages(config, "vqa", decisions.kept_apart_in)
    assert image_stage.resolve([image_stage.signatures(images)])["id"].to_pylist() == ["q"]
    (text_stage,) = quality_stages(NearDedupConfig(type="near_dedup"), "vqa", decisions.kept_apart_in)
    assert text_stage.resolve([text_stage.signatures(images)]).num_rows == 0
    # Kept apart on an image item: the image stage publishes it.
    image_flag = {**flag, "stage": "image_near_dedup", "payload": payload.replace("}}", '}, "similarity": 0.97}')}
    add_items(engine, "forms", 2, "run", pa.Table.from_pylist([image_flag], schema=FLAG_SCHEMA))
    dec.decide(engine, 2, "rita", "keep")
    (image_stage,) = quality_stages(config, "vqa", dec.run_decisions(engine, "forms").kept_apart_in)
    assert image_stage.resolve([image_stage.signatures(images)]).num_rows == 0
    engine.dispose()


def test_a_record_kept_apart_set_aside_as_an_earlier_version_of_another_published_one_is_asked_again(
    tmp_path: Path,
) -> None:
    ids = list(_PAIRS)
    batch = _batch(ids, [_PAIRS[i] for i in ids]).filter(pc.is_in(pa.array(ids), pa.array(["a", "d", "e"])))
    index = SignatureIndex(f"sqlite:///{tmp_path / 'state.db'}", "d")
    published = batch.filter(pc.is_in(batch["id"], pa.array(["a", "d"])))  # d was kept apart from a before
    first = CrossRunDedup(NearDedup(["text"], kept_apart={"d": {"a"}}), index)
    index.stage_pending(first.name, first.params, first.signatures(published).drop_columns(["source"]))
    index.published(1)
    # A later run reads e alone, marked not a duplicate of a; published d is a near copy of it too.
    stage = CrossRunDedup(NearDedup(["text"], kept_apart={"d": {"a"}, "e": {"a"}}), index, kept_from={"a": {}})
    new = batch.filter(pc.equal(batch["id"], "e"))
    signatures = [stage.signatures(new)]
    aside = stage.resolve(signatures)
    assert aside["reason"].to_pylist() == ["earlier_version"] and aside["duplicate_of"].to_pylist() == ["d"]
    (flag,) = stage.review_flags(aside, signatures, [new]).to_pylist()
    payload = json.loads(flag["payload"])
    assert flag["kind"] == "near_duplicate" and payload["kept"]["id"] == "d" and payload["member"]["id"] == "e"
    assert payload["similarity"] >= 0.7


def test_recipe_run_sets_near_duplicates_aside_and_flags_clusters_for_review(workdir: Path) -> None:
    corpus = generate(60, duplicate_share=0.5, seed=5)
    write_jsonl(workdir / "in.jsonl", [{"text": t} for t in corpus.texts])
    result = run(
        workdir,
        {
            "dataset": "docs",
            "sources": [{"path": "in.jsonl"}],
            "record": {"kind": "document"},
            "stages": [{"type": "near_dedup", "threshold": 0.7}],
            "batch_rows": 40,
        },
    )
    version = Path(result.version_uri)
    manifest = read_manifest(str(version))
    aside = set_aside(version)
    near = [row for row in aside if row["reason"] == "near_duplicate"]
    sizes: dict[int, int] = {}
    for c in corpus.cluster:
        sizes[c] = sizes.get(c, 0) + 1
    expected = sum(s - 1 for s in sizes.values())
    assert 0.9 * expected <= len(near) <= expected
    assert manifest.counts.reasons["duplicate"]["near_duplicate"] == len(near)
    assert manifest.counts.written == len(outputs(version)) == len(corpus.texts) - len(near)

    # Every removed record is queued for review with both texts and their similarity.
    store = StateStore(f"sqlite:///{workdir / 'state.db'}")
    with store.engine.connect() as db:
        rows = db.exec_driver_sql("SELECT record_id, kind, payload FROM review_items WHERE kind='near_duplicate'").all()
    assert sorted(r[0] for r in rows) == sorted(row["id"] for row in near)
    payload = json.loads(rows[0][2])
    assert set(payload) == {"cluster", "kept", "member", "similarity"}
    assert payload["kept"]["text"] in corpus.texts and payload["member"]["text"] in corpus.texts
    assert payload["similarity"] >= 0.7


def test_vectorised_resolve_matches_the_shared_group_by_group_step() -> None:
    """The local fast path and the per-key-group path a distributed executor runs agree exactly."""
    corpus = generate(150, duplicate_share=0.6, seed=2)
    batch = _batch(corpus.ids, corpus.texts)
    stage = NearDedup(["text"])
    signatures = [stage.signatures(batch.slice(i, 70)) for i in range(0, batch.num_rows, 70)]
    fast = stage.resolve(signatures)
    assert fast.num_rows > 40
    assert fast.equals(resolve_duplicates(stage, signatures))


def test_a_corrected_answer_in_the_sidecar_replaces_the_old_row_and_appended_rows_read_alone(workdir: Path) -> None:
    (workdir / "img").mkdir()
    for index, name in enumerate(("a.jpg", "b.jpg", "c.jpg")):
        (workdir / "img" / name).write_bytes(_image(0, index + 1))
    rows = [
        {"image": n, "question": "What is the total?", "answer": f"{i}0 USD"} for i, n in enumerate(["a.jpg", "b.jpg"])
    ]
    write_jsonl(workdir / "qa.jsonl", rows)
    recipe = FORMS
    run(workdir, recipe)
    rows.append({"image": "c.jpg", "question": "What is the total?", "answer": "20 USD"})
    write_jsonl(workdir / "qa.jsonl", rows)  # a row appended: only it is read
    v2 = run(workdir, recipe)
    assert v2.manifest.counts.input == 1 and v2.manifest.counts.carried == 2
    rows[1]["answer"] = "15 USD"  # a corrected answer: the sidecar is read again and replaces its rows
    write_jsonl(workdir / "qa.jsonl", rows)
    v3 = run(workdir, recipe)
    answers = sorted(line["completion"] for line in outputs(Path(v3.version_uri)))
    assert answers == ["00 USD", "15 USD", "20 USD"]
    assert v3.manifest.stats["carry"]["replaced"] == 3 and v3.manifest.counts.carried == 0


def test_near_dedup_on_a_field_the_records_lack_is_a_recipe_error_naming_the_setting() -> None:
    with pytest.raises(RecipeError, match=r"near_dedup fields: \['txt'\] are not .* they have \['text'\]"):
        NearDedup(["txt"]).signatures(_batch(["a"], ["Some words here."]))


def test_image_dedup_on_records_without_images_is_a_recipe_error() -> None:
    # Documents (or VQA rows from a JSONL file) have no image bytes: the stage would compare nothing.
    for kind in ("document", "vqa"):
        text = f"dataset: d\nsources: [{{path: x.jsonl}}]\nrecord: {{kind: {kind}}}\nstages:\n  - type: image_dedup\n"
        with pytest.raises(
            RecipeError, match=rf"stages.0 \(line 5\): image_dedup compares images in 'image_bytes', .*{kind}"
        ):
            parse_recipe(text)
    images = "dataset: d\nsources: [{type: images, path: img, sidecar: qa.jsonl}]\nrecord: {kind: vqa}\n"
    assert parse_recipe(images + "stages: [{type: image_dedup}]\n").stages[0].type == "image_dedup"


def test_published_texts_scan_each_text_once_and_a_member_with_its_fields() -> None:
    from curation.stages.neardup import with_published_texts

    def flag(kept: str, member: str, fields: dict[str, str]) -> str:
        return json.dumps({"kept": {"text": kept}, "member": {"text": member, "fields": fields}})

    payloads = [
        flag("shared kept", "member one", {"prompt": "p1", "completion": "c1"}),
        flag("shared kept", "member two", {}),
    ]
    flags = pa.table(
        {"kind": ["near_duplicate"] * 2, "stage": ["near_dedup"] * 2, "payload": payloads},
    )
    scanned: list[tuple[str | None, int]] = []

    def scrub(values: list[str | None], records: list[int]) -> list[str | None]:
        scanned.extend(zip(values, records, strict=True))
        return [f"{value}#{record}" for value, record in zip(values, records, strict=True)]

    out = [json.loads(p) for p in with_published_texts(flags, scrub, made_by={"near_dedup"})["payload"].to_pylist()]
    # Each value is scanned once (the kept text shared by both flags too), and the member's text in
    # the same record as its fields, so a value found in one is redacted in the other.
    assert sorted(value for value, _ in scanned) == sorted(["shared kept", "member one", "p1", "c1", "member two"])
    first = out[0]["member"]
    record = first["published_text"].split("#")[1]
    assert {value.split("#")[1] for value in first["published_fields"].values()} == {record}
    assert out[0]["kept"]["published_text"] == out[1]["kept"]["published_text"] == "shared kept#0"
    assert "published_fields" not in out[1]["member"] and out[1]["member"]["published_text"] == "member two#2"


def test_an_image_dedup_stages_error_is_placed_at_its_entry_in_the_recipe(workdir: Path) -> None:
    """The run names an image_dedup stage ``image_near_dedup`` (a second one ``image_near_dedup_2``):
    ``stage_place`` named stages by their recipe type and placed neither's error."""
    from curation.pipeline import build_stages
    from curation.stages.base import StageError
    from schemas.config import stage_place
    from tests.helpers import write_recipe

    recipe_path = write_recipe(
        workdir,
        {
            "dataset": "pics",
            "sources": [{"type": "images", "path": "img", "sidecar": "qa.jsonl"}],
            "record": {"kind": "vqa"},
            "stages": [{"type": "image_dedup", "across_runs": False}, {"type": "image_dedup", "across_runs": False}],
        },
    )
    recipe = load_recipe(recipe_path)
    second = [stage for stage in build_stages(recipe) if isinstance(stage, ImageNearDedup)][1]
    batch = pa.table({"id": ["a"], "source": source_array("images", "/img", [1]), "image_bytes": [_image(0, 0)]})
    with pytest.raises(StageError) as raised:
        second.signatures(batch)  # the records lack the question column it matches on
    assert str(raised.value).startswith("image_near_dedup_2 ")
    assert stage_place(recipe_path, recipe, str(raised.value)) == "stages.1 (line 11)"


def test_a_key_shared_by_too_many_records_to_compare_all_finds_the_same_pairs_in_any_row_order() -> None:
    # 600 records share one band (more than are compared pair by pair); two of them, far apart in id,
    # are near copies (97 of 128 values alike) that share no other key, so only that crowded group can
    # pair them, through its representatives (every 75th record by id): which records those are must
    # not depend on row order, and a representative is compared with the records before it too.
    from curation.stages.neardup import band_keys

    rows, stage = 600, NearDedup(["text"])
    rng = np.random.default_rng(0)
    sig = rng.integers(1, 1 << 31, size=(rows, 128), dtype=np.uint64)
    sig[:, 0:4] = 7
    sig[450] = sig[80]
    sig[450, 4::4] += 1  # one value differs in every other band
    ids = [f"r{n:03d}" for n in range(rows)]

    def set_aside_when_read(order: np.ndarray) -> set[str]:
        table = pa.table(
            {
                "id": [ids[n] for n in order],
                "source": source_array("files", "mem://in.jsonl", [int(n) + 1 for n in order]),
                "keys": pa.ListArray.from_arrays(
                    pa.array(np.arange(0, 32 * rows + 1, 32, dtype=np.int32)),
                    pa.array(band_keys(sig[order], 32).ravel(), pa.uint64()),
                ),
                "minhash": pa.FixedSizeListArray.from_arrays(pa.array(sig[order].astype(np.uint32).ravel()), 128),
            }
        )
        return set(stage.resolve([table])["id"].to_pylist())

    found = [set_aside_when_read(order) for order in (np.arange(rows), *(rng.permutation(rows) for _ in range(6)))]
    assert all(one == {"r450"} for one in found), found  # r450, a representative, is compared with r080
