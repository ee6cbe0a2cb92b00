"""VQA records over plain JSONL (a files source whose ``image`` column names a path or URI): one whose
image is not there, cannot be read or is not an image is quarantined, and the rest published, where
the format's failure to read it at write time failed the whole run."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import sqlite3
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
from PIL import Image

import connectors.files
import connectors.hf
import curation.stages.image_check as image_check
from connectors.storage import StorageError, filesystem
from curation.pipeline import RunResult
from tests.helpers import lineage_rows, refusing, run, set_aside, sqlite_db, write_jsonl


def png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def pictures(folder: Path, count: int = 8) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        (folder / f"c{n}.png").write_bytes(png((30 * n, 255 - 30 * n, 7 * n)))
    return [str(folder / f"c{n}.png") for n in range(count)]


def asks(images: list[str]) -> list[dict[str, str]]:
    return [
        {"image": image, "question": f"Which colour? ({i})", "answer": Path(image).stem}
        for i in range(2)
        for image in images
    ]


def recipe(dest: str, state: str, **output: Any) -> dict[str, Any]:
    return {
        "dataset": "scans",
        "sources": [{"path": "qa.jsonl"}],
        "record": {"kind": "vqa"},
        "stages": [{"type": "exact_dedup"}],
        "output": {"dest": dest, "validation_fraction": 0.5, **output},
        "state": f"sqlite:///{state}",
    }


def published(result: RunResult) -> dict[str, Any]:
    """Each written record's split, output line and image bytes, by id."""
    version = Path(result.version_uri)
    records: dict[str, Any] = {}
    for row in lineage_rows(version):
        split = row["shard"].split("/")[0]
        line = json.loads((version / row["shard"]).read_text().splitlines()[row["line"] - 1])
        records[row["id"]] = (split, line, (version / split / line["file_name"]).read_bytes())
    return records


def test_a_vqa_row_whose_image_is_missing_or_not_an_image_is_quarantined_and_the_rest_published(
    workdir: Path,
) -> None:
    good = pictures(workdir / "scans")
    rows = [*asks(good), asks(good)[0]]  # an exact duplicate too: dedup keys stay as they were
    write_jsonl(workdir / "qa.jsonl", rows)
    before = run(workdir, recipe("out-good", "good.db"))
    (workdir / "scans" / "notes.png").write_text("not an image")
    (workdir / "scans" / "folder.png").mkdir()
    bad = {
        str(workdir / "scans" / "gone.png"): ("missing_image", "cannot read", "No such file or directory"),
        str(workdir / "scans" / "folder.png"): ("missing_image", "cannot read", "is a directory"),
        str(workdir / "scans" / "notes.png"): ("unsupported", "not an image Pillow can read", ""),
    }
    extra = [{"image": image, "question": "Which colour?", "answer": "none"} for image in bad]
    # The bad rows among the good ones (a record's id does not take its line).
    write_jsonl(workdir / "qa.jsonl", rows[:3] + extra[:2] + rows[3:9] + extra[2:] + rows[9:])
    after = run(workdir, recipe("out-all", "all.db"))

    counts = after.manifest.counts
    assert counts.input == len(rows) + 3 and counts.duplicate == 1 and counts.quarantined == 3
    assert counts.reasons["quarantined"] == {"missing_image": 2, "unsupported": 1}
    aside = {row["id"]: row for row in set_aside(Path(after.version_uri)) if row["outcome"] == "quarantined"}
    lines = {line: n for n, line in enumerate((workdir / "qa.jsonl").read_text().splitlines(), 1)}
    for row in aside.values():
        image = json.loads(row["record"])["image"]
        reason, says, why = bad[image]
        line = lines[json.dumps({"image": image, "question": "Which colour?", "answer": "none"})]
        assert row["stage"] == "image_check" and row["reason"] == reason
        assert row["detail"].startswith(f"{workdir / 'qa.jsonl'}:{line}: image: {image}: {says}")
        assert why in row["detail"]
    # The records with a good image are published as they were without the bad rows: same ids, same sides
    # (by their image), same lines and images, the same duplicate set aside.
    assert published(after) == published(before) and len(published(after)) == len(rows) - 1
    assert {split for split, _, _ in published(after).values()} == {"train", "validation"}
    duplicates = [(r["id"], r["duplicate_of"]) for r in set_aside(Path(before.version_uri))]
    assert [(r["id"], r["duplicate_of"]) for r in set_aside(Path(after.version_uri)) if r["id"] not in aside] == (
        duplicates
    )


def test_a_relative_image_path_that_is_not_there_is_named_with_the_path_tried(workdir: Path) -> None:
    # "scans/a.png: cannot read" did not say from which folder: a run started elsewhere could not tell why.
    (workdir / "scans").mkdir()
    (workdir / "scans" / "b.png").write_bytes(png((0, 0, 255)))
    rows = [{"image": f"scans/{name}.png", "question": "Which colour?", "answer": name} for name in "ab"]
    rows.append({"image": str(workdir / "scans" / "c.png"), "question": "Which colour?", "answer": "c"})
    path = write_jsonl(workdir / "qa.jsonl", rows)
    result = run(workdir, {**recipe("out", "state.db"), "stages": []})
    assert sorted(row["detail"] for row in set_aside(Path(result.version_uri))) == [
        f"{path}:1: image: scans/a.png ({workdir / 'scans' / 'a.png'}): cannot read (No such file or directory)",
        f"{path}:3: image: {workdir / 'scans' / 'c.png'}: cannot read (No such file or directory)",  # as the row says
    ]
    assert result.manifest.counts.written == 1


def test_a_vqa_row_whose_s3_image_is_missing_is_quarantined(workdir: Path, bucket: str) -> None:
    s3 = boto3.client("s3")
    for name, color in (("a.png", (255, 0, 0)), ("b.png", (0, 0, 255))):
        s3.put_object(Bucket=bucket, Key=f"scans/{name}", Body=png(color))
    s3.put_object(Bucket=bucket, Key="scans/readme.png", Body=b"not an image")
    images = [f"s3://{bucket}/scans/{name}" for name in ("a.png", "gone.png", "b.png", "readme.png")]
    write_jsonl(workdir / "qa.jsonl", [{"image": image, "question": "Colour?", "answer": "x"} for image in images])
    result = run(workdir, recipe(f"s3://{bucket}/out", "state.db", validation_fraction=0.0))
    assert result.manifest.counts.written == 2
    assert result.manifest.counts.reasons["quarantined"] == {"missing_image": 1, "unsupported": 1}
    aside = [json.loads(line) for line in _s3_text(bucket, result, "set_aside/").splitlines()]
    detail = {json.loads(row["record"])["image"]: row["detail"] for row in aside}
    assert detail[images[1]].startswith(f"{workdir / 'qa.jsonl'}:2: image: {images[1]}: cannot read (")
    assert detail[images[3]].startswith(f"{workdir / 'qa.jsonl'}:4: image: {images[3]}: not an image")
    written = [json.loads(line) for line in _s3_text(bucket, result, "train/metadata.jsonl").splitlines()]
    assert len(written) == 2 and all(line["file_name"].endswith(".png") for line in written)


def test_an_s3_image_uri_is_its_key_as_written_not_a_path_to_another_object(workdir: Path, bucket: str) -> None:
    # Arrow's S3 reader took "x/../b.png" as the path to "b.png" and published that object's picture (the
    # object "x/../b.png", another picture, is there too); one with an empty part ("//") failed the run. A "." or
    # empty part spells the same key another way ("./b.png" is "b.png"), which the earlier release read.
    s3 = boto3.client("s3")
    for key, color in (("x/../b.png", (7, 7, 7)), ("b.png", (8, 8, 8)), ("c/d.png", (9, 9, 9))):
        s3.put_object(Bucket=bucket, Key=f"scans/{key}", Body=png(color))
    images = [f"s3://{bucket}/scans/{key}" for key in ("x/../b.png", "b.png", "./b.png", "c//d.png", "e//f.png")]
    write_jsonl(workdir / "qa.jsonl", [{"image": image, "question": "Colour?", "answer": "x"} for image in images])
    result = run(workdir, recipe(f"s3://{bucket}/out", "state.db", validation_fraction=0.0))
    assert result.manifest.counts.written == 3
    assert result.manifest.counts.reasons["quarantined"] == {"missing_image": 2}
    aside = [json.loads(line) for line in _s3_text(bucket, result, "set_aside/").splitlines()]
    detail = {json.loads(row["record"])["image"]: row["detail"] for row in aside}
    assert detail[images[0]] == (
        f"{workdir / 'qa.jsonl'}:1: image: {images[0]}: cannot read (S3 keys are taken as written, and one with a "
        f"'..' part is not read as written: this is not s3://{bucket}/scans/b.png)"
    )
    assert detail[images[4]].startswith(f"{workdir / 'qa.jsonl'}:5: image: {images[4]}: cannot read (")
    written = [json.loads(line) for line in _s3_text(bucket, result, "train/metadata.jsonl").splitlines()]
    published = sorted(line["file_name"].rsplit("/", 1)[-1] for line in written)
    read = [png(color) for color in ((8, 8, 8), (8, 8, 8), (9, 9, 9))]  # b.png twice, then c/d.png
    assert published == sorted(f"{hashlib.sha256(data).hexdigest()}.png" for data in read)


def test_an_s3_image_key_with_an_empty_or_dot_part_that_exists_as_written_is_not_read_as_another_object(
    workdir: Path, bucket: str
) -> None:
    # S3 keys are literal: "c//d.png" and "c/d.png" are two objects, two pictures. The writer reads through Arrow,
    # which reads "c/d.png" in the place of "c//d.png" (and "b.png" in the place of "./b.png"): another picture
    # was published. Only where no object has the key as written is it read as the key without the part.
    s3 = boto3.client("s3")
    for key, color in (("c//d.png", (1, 1, 1)), ("c/d.png", (9, 9, 9)), ("./b.png", (2, 2, 2)), ("b.png", (8, 8, 8))):
        s3.put_object(Bucket=bucket, Key=f"scans/{key}", Body=png(color))
    s3.put_object(Bucket=bucket, Key="scans/e/f.png", Body=png((5, 5, 5)))  # "e//f.png" is not there as written
    images = [f"s3://{bucket}/scans/{key}" for key in ("c//d.png", "./b.png", "e//f.png")]
    write_jsonl(workdir / "qa.jsonl", [{"image": image, "question": "Colour?", "answer": "x"} for image in images])
    result = run(workdir, recipe(f"s3://{bucket}/out", "state.db", validation_fraction=0.0))
    assert result.manifest.counts.reasons["quarantined"] == {"missing_image": 2}
    aside = [json.loads(line) for line in _s3_text(bucket, result, "set_aside/").splitlines()]
    detail = {json.loads(row["record"])["image"]: row["detail"] for row in aside}
    assert detail == {
        image: f"{workdir / 'qa.jsonl'}:{line}: image: {image}: cannot read (S3 keys are taken as written, and one "
        f"with a '.' or empty part is not read as written: this is not s3://{bucket}/scans/{normal})"
        for line, image, normal in ((1, images[0], "c/d.png"), (2, images[1], "b.png"))
    }
    written = [json.loads(line) for line in _s3_text(bucket, result, "train/metadata.jsonl").splitlines()]
    assert [line["file_name"].rsplit("/", 1)[-1] for line in written] == [
        f"{hashlib.sha256(png((5, 5, 5))).hexdigest()}.png"
    ]


def _s3_text(bucket: str, result: RunResult, prefix: str) -> str:
    """The text of the version's objects under ``prefix``, in key order."""
    s3 = boto3.client("s3")
    under = f"{result.version_uri.removeprefix(f's3://{bucket}/')}/{prefix}"
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=under)["Contents"])
    return "".join(s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode() for key in keys)


def test_an_image_path_quoted_in_a_detail_is_scrubbed_by_the_pii_stage(workdir: Path) -> None:
    # The image check's detail quotes the path, which can hold PII (a folder per customer): scanned as the
    # reader's and the template's are (all but its file:line), as the set-aside record is.
    good = pictures(workdir / "scans", 1)
    gone = "scans/receipt - jane.doe@example.com - 2024.png"
    rows = [{"image": image, "question": "Total?", "answer": "12 USD"} for image in [*good, gone]]
    write_jsonl(workdir / "qa.jsonl", rows)
    spec = {**recipe("out", "state.db", validation_fraction=0.0), "stages": [{"type": "pii"}]}
    result = run(workdir, spec)
    assert result.manifest.counts.reasons["quarantined"] == {"missing_image": 1}
    (row,) = [row for row in set_aside(Path(result.version_uri)) if row["stage"] == "image_check"]
    assert "jane.doe" not in row["detail"] + row["record"]
    # The file:line and the path the run tried are compared past the temporary folder, which the stage scans
    # too: a number in its name (pytest-1686) can be taken for a phone number there.
    assert re.fullmatch(
        r".*qa\.jsonl:2: image: scans/receipt - <EMAIL_ADDRESS> - 2024\.png \(.*/scans/receipt - <EMAIL_ADDRESS> - "
        r"2024\.png\): cannot read.*",
        row["detail"],
        re.DOTALL,
    )


def png_chunks(width: int, height: int, bit_depth: int, idat: bytes = b"") -> bytes:
    """A greyscale PNG of ``width`` x ``height`` as its header says, with ``idat`` (compressed rows) as its data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    data = chunk(b"IDAT", idat) if idat else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + data + chunk(b"IEND", b"")


def black_one_bit_png(side: int) -> bytes:
    """A square of ``side`` black pixels, 1 bit each: a few KB of file whatever its size."""
    rows = zlib.compressobj(9)
    return png_chunks(side, side, 1, b"".join(rows.compress(bytes(1 + side // 8)) for _ in range(side)) + rows.flush())


@pytest.mark.parametrize(
    ("image", "detail"),
    [
        # Its header claims 20000x20000: Pillow refuses to open it (DecompressionBombError), which the writer
        # did not catch, failing the run with a traceback from inside Pillow.
        (png_chunks(20000, 20000, 8), "Image size (400000000 pixels) exceeds limit of 178956970 pixels"),
        # 8 KB of file. Under Pillow's own limit it was decoded whole and published (a 13000x13000 RGBA one:
        # 3.3 s and 817 MB, per Ray worker); now refused before it is decoded, as an images source refuses it.
        (black_one_bit_png(8000), "8000x8000 is 64000000 pixels, over max_pixels 50000000"),
    ],
    ids=["past_pillows_limit", "past_max_pixels"],
)
def test_an_image_of_more_pixels_than_an_images_source_takes_is_quarantined_not_a_traceback(
    workdir: Path, image: bytes, detail: str
) -> None:
    (workdir / "bomb.png").write_bytes(image)
    images = [*pictures(workdir / "scans", 1), "bomb.png"]
    write_jsonl(workdir / "qa.jsonl", [{"image": image, "question": "Colour?", "answer": "x"} for image in images])
    result = run(workdir, recipe("out", "state.db", validation_fraction=0.0))
    assert result.manifest.counts.written == 1
    assert result.manifest.counts.reasons["quarantined"] == {"decompression_bomb": 1}
    (row,) = set_aside(Path(result.version_uri))
    assert row["detail"].startswith(f"{workdir / 'qa.jsonl'}:2: image: bomb.png: {detail}")


def noise(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((200, 200), 50).convert("RGB").save(buffer, fmt)
    return buffer.getvalue()


def test_an_image_cut_short_or_damaged_is_quarantined_not_published(workdir: Path) -> None:
    # Only its header was read: a JPEG cut in half was published, and any loader of the dataset raised
    # "image file is truncated" (the images source quarantines it). A PNG whose text chunk Pillow will not
    # decompress was "not an image Pillow can read", without Pillow's reason.
    from PIL import PngImagePlugin

    jpeg, png_data = noise("JPEG"), bytearray(noise("PNG"))
    png_data[300:500] = bytes(b ^ 0xFF for b in png_data[300:500])  # in its pixel data: a broken stream
    texts = PngImagePlugin.PngInfo()
    texts.add_text("notes", "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 1), zip=True)
    buffer = io.BytesIO()
    Image.new("RGB", (12, 8)).save(buffer, "PNG", pnginfo=texts)
    bad = {"cut.jpg": jpeg[: len(jpeg) // 2], "broken.png": bytes(png_data), "notes.png": buffer.getvalue()}
    for name, data in bad.items():
        (workdir / name).write_bytes(data)
    images = [*pictures(workdir / "scans", 1), *bad]
    write_jsonl(workdir / "qa.jsonl", [{"image": image, "question": "Colour?", "answer": "x"} for image in images])
    result = run(workdir, recipe("out", "state.db", validation_fraction=0.0))
    assert result.manifest.counts.written == 1
    details = sorted(row["detail"] for row in set_aside(Path(result.version_uri)))
    path = workdir / "qa.jsonl"
    said = [
        f"{path}:2: image: cut.jpg: JPEG image does not decode: image file is truncated",  # (N bytes not processed)
        f"{path}:3: image: broken.png: PNG image does not decode: broken data stream when reading image file",
        f"{path}:4: image: notes.png: not an image Pillow can read "
        "(Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK)",
    ]
    assert len(details) == 3 and all(d.startswith(s) for d, s in zip(details, said, strict=True))
    assert result.manifest.counts.reasons["quarantined"] == {"truncated": 1, "corrupt": 1, "unsupported": 1}


def test_a_phone_photo_written_as_mpo_is_published_as_a_jpeg(workdir: Path) -> None:
    # Many phone cameras write a JPEG as MPO (Multi-Picture Format: the photo, then a second picture);
    # Pillow names its format MPO, which the format took for no image: quarantined as `unsupported`.
    photo = workdir / "scans" / "phone.jpg"
    photo.parent.mkdir()
    first, second = Image.new("RGB", (12, 8), (200, 10, 10)), Image.new("RGB", (6, 4), (10, 10, 200))
    first.save(photo, format="MPO", save_all=True, append_images=[second])
    assert Image.open(photo).format == "MPO"
    write_jsonl(workdir / "qa.jsonl", [{"image": str(photo), "question": "Which colour?", "answer": "red"}])
    result = run(workdir, recipe("out", "state.db", validation_fraction=0.0))
    assert result.manifest.counts.written == 1
    [(side, line, data)] = published(result).values()
    assert side == "train"
    assert line["file_name"].endswith(".jpg") and data == photo.read_bytes()
    assert Image.open(io.BytesIO(data)).convert("RGB").getpixel((0, 0))[0] > 150  # the photo, as it came


def taken_with_one_image_refused(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, spec: dict[str, Any]
) -> tuple[list[str], dict[str, Any], RunResult]:
    """Four pictures asked about twice each in qa.jsonl, and a first run of ``spec`` that may not read the
    second picture (refused until the test puts ``image_check.filesystem`` back)."""
    good = pictures(workdir / "scans", 4)
    write_jsonl(workdir / "qa.jsonl", asks(good))
    monkeypatch.setattr(image_check, "filesystem", refusing(Path(good[1]), filesystem))
    return good, spec, run(workdir, spec)


def test_a_row_whose_image_cannot_be_read_for_now_has_its_input_read_again_by_the_next_run(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An image it may not read (a permission, a share away, S3 throttling) is there: quarantined as
    # `unreadable`, as the images connector has it, and its rows read again by the next run, the JSONL changed or
    # not. It was `missing_image` for good: the JSONL's watermark moved on, the next run found nothing new.
    # Unchanged, the JSONL gives the next runs only those rows: its others stay as published. Read whole, each
    # scheduled run published a version rewriting them while the image stayed unreadable ("nothing new" never).
    _good, spec, first = taken_with_one_image_refused(workdir, monkeypatch, recipe("out", "state.db"))
    assert first.manifest.counts.reasons["quarantined"] == {"unreadable": 2}
    details = [row["detail"] for row in set_aside(Path(first.version_uri))]
    assert all("cannot read (Permission denied); the next run reads it again" in d for d in details), details
    for _ in range(2):  # still refused: its two rows read again, quarantined again, nothing published
        refused = run(workdir, spec)
        assert refused.manifest is None and refused.message.startswith("nothing new since scans v1")
        assert "2 input(s) (files, image rows) still cannot be read" in refused.message
    monkeypatch.setattr(image_check, "filesystem", filesystem)  # the share is back
    second = run(workdir, spec)
    counts = second.manifest.counts
    assert (second.manifest.version, counts.input, counts.written, counts.carried) == (2, 2, 2, 6)
    # The two not read before published, the others carried as they were (same ids, sides, lines and images).
    now = published(second)
    assert len(now) == 8 and {i: now[i] for i in published(first)} == published(first)
    assert len(lineage_rows(Path(second.version_uri))) == 8
    assert run(workdir, spec).manifest is None  # read, nothing is left to read again


def test_a_delta_version_holds_only_the_rows_read_again_once_their_image_can_be_read(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With carry_forward false, the JSONL read again for its unreadable rows was read whole: each run's delta
    # version held the six readable records again (18 copies of 6 records after three runs).
    spec = {**recipe("out", "state.db", carry_forward=False), "stages": []}
    _good, spec, first = taken_with_one_image_refused(workdir, monkeypatch, spec)
    assert first.manifest.counts.written == 6
    assert [run(workdir, spec).manifest for _ in range(2)] == [None, None]
    monkeypatch.setattr(image_check, "filesystem", filesystem)  # the share is back
    second = run(workdir, spec)
    assert (second.manifest.extends, second.manifest.counts.input, second.manifest.counts.written) == (1, 2, 2)
    ids = [row["id"] for result in (first, second) for row in lineage_rows(Path(result.version_uri))]
    assert len(ids) == len(set(ids)) == 8


def test_a_published_record_whose_image_cannot_be_read_for_now_stays_when_its_jsonl_is_read_again(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A line appended, the JSONL is read whole again while the share holding c1 refuses it (a permission, an
    # I/O error): c1's two published records were quarantined as `unreadable` and left the new version. They
    # stay as published (carried), as a record whose image was moved away does; only rows never published are
    # quarantined.
    good = pictures(workdir / "scans", 4)
    rows = asks(good)
    write_jsonl(workdir / "qa.jsonl", rows)
    spec = recipe("out", "state.db")
    first = run(workdir, spec)
    never = {"image": good[1], "question": "Never read?", "answer": "c1"}
    write_jsonl(workdir / "qa.jsonl", [*rows, {"image": good[2], "question": "New?", "answer": "c2"}, never])
    monkeypatch.setattr(image_check, "filesystem", refusing(Path(good[1]), filesystem))
    second = run(workdir, spec)
    counts = second.manifest.counts
    assert (counts.input, counts.carried, counts.reasons["quarantined"]) == (8, 2, {"unreadable": 1})
    (aside,) = set_aside(Path(second.version_uri))
    assert json.loads(aside["record"])["question"] == "Never read?"
    now = published(second)
    assert len(now) == 9 and {i: now[i] for i in published(first)} == published(first)


def test_a_moved_image_record_of_a_file_read_again_for_a_duplicate_it_holds_stays(workdir: Path) -> None:
    # qa.jsonl changes: its record is replaced, and qb.jsonl, which held its duplicate (set aside), is read again
    # so that the content stays. qb's other record, whose image was moved away since, was quarantined as
    # `missing_image` and left the dataset: the moved-away records were looked for before qb was added.
    good = pictures(workdir / "scans", 3)
    a = [{"image": good[0], "question": "Colour?", "answer": "c0"}]
    b = [dict(a[0]), {"image": good[1], "question": "Colour?", "answer": "c1"}]
    write_jsonl(workdir / "in" / "qa.jsonl", a)
    write_jsonl(workdir / "in" / "qb.jsonl", b)
    spec = {**recipe("out", "state.db", validation_fraction=0.0), "sources": [{"path": "in"}]}
    first = run(workdir, spec)
    assert len(published(first)) == 2  # qa's row, qb's c1 row (qb's first row a duplicate)
    Path(good[1]).unlink()
    write_jsonl(workdir / "in" / "qa.jsonl", [*a, {"image": good[2], "question": "Colour?", "answer": "c2"}])
    second = run(workdir, spec)
    counts = second.manifest.counts
    assert "quarantined" not in counts.reasons and counts.carried == 1
    now = published(second)
    assert len(now) == 3 and {i: now[i] for i in published(first)} == published(first)


def test_a_sql_row_whose_image_cannot_be_read_for_now_says_what_reads_it_again(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Only a files source reads a marked input's rows again. A SQL table read by its cursor never did: its detail
    # said "the next run reads it again", a mark nothing used was kept, and the next run warned of review
    # decisions on the table's rows. It says what does read it again: --full-refresh.
    good = pictures(workdir / "scans", 2)
    url = sqlite_db(
        workdir / "qa.db",
        "CREATE TABLE t (id INTEGER, image TEXT, question TEXT, answer TEXT, u INTEGER)",
        f"INSERT INTO t VALUES (1, '{good[0]}', 'q?', 'a', 1)",
        f"INSERT INTO t VALUES (2, '{good[1]}', 'q?', 'b', 2)",
    )
    spec = recipe("out", "state.db", validation_fraction=0.0)
    spec["sources"] = [{"type": "sql", "url": url, "table": "t", "cursor": "u", "key": ["id"]}]
    monkeypatch.setattr(image_check, "filesystem", refusing(Path(good[1]), filesystem))
    first = run(workdir, spec)
    (aside,) = set_aside(Path(first.version_uri))
    assert aside["reason"] == "unreadable"
    assert aside["detail"].endswith(": cannot read (Permission denied); --full-refresh reads it again")
    with sqlite3.connect(workdir / "state.db") as db:
        assert db.execute("SELECT item FROM watermarks WHERE source = 'read-again'").fetchall() == []
    monkeypatch.setattr(image_check, "filesystem", filesystem)  # the share is back
    assert run(workdir, spec).manifest is None and "review decisions" not in caplog.text
    assert run(workdir, spec, full_refresh=True).manifest.counts.written == 2


def test_a_full_refresh_of_a_files_source_that_reads_no_image_says_a_run_with_full_refresh_reads_them_again(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # v1 holds the two rows of c0. A full refresh that may not read c0 now fails having taken nothing: the rows'
    # detail said "the next run reads it again", but a plain run reads on from v1's watermarks (the JSONL is as
    # it was): only another full refresh reads them.
    spec = {**recipe("out", "state.db", validation_fraction=0.0), "stages": []}
    good = pictures(workdir / "scans", 1)
    write_jsonl(workdir / "qa.jsonl", asks(good))
    assert run(workdir, spec).manifest.counts.written == 2
    monkeypatch.setattr(image_check, "filesystem", refusing(Path(good[0]), filesystem))
    with pytest.raises(StorageError) as failed:
        run(workdir, spec, full_refresh=True)
    said = str(failed.value)
    assert said.startswith("scans: 2 input(s) (files, image rows) cannot be read, e.g. ")
    assert said.endswith(
        f"image: {good[0]}: cannot read (Permission denied); the next run with --full-refresh reads it again"
    )
    monkeypatch.setattr(image_check, "filesystem", filesystem)  # the share is back
    assert run(workdir, spec).manifest is None  # nothing new since v1
    again = run(workdir, spec, full_refresh=True).manifest
    assert (again.version, again.counts.input, again.counts.written) == (2, 2, 2)


def test_a_file_read_again_for_its_marked_rows_that_cannot_be_read_fails_the_run_and_keeps_the_mark(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run that reads a file for the rows an earlier run could not take found the file itself unreadable
    # (a share away): quarantined whole and staged unread, its mark went, and the next run read it whole as
    # new: its six published records were written again beside their carried copies.
    import connectors.files as files
    import connectors.state as state

    _good, spec, first = taken_with_one_image_refused(workdir, monkeypatch, recipe("out", "state.db"))
    assert first.manifest.counts.written == 6
    for module in (files, state):
        monkeypatch.setattr(module, "filesystem", refusing(workdir / "qa.jsonl", filesystem))
    with pytest.raises(StorageError, match=r"qa\.jsonl: cannot read"):
        run(workdir, spec)
    for module in (files, state, image_check):
        monkeypatch.setattr(module, "filesystem", filesystem)
    third = run(workdir, spec)
    counts = third.manifest.counts
    assert (counts.input, counts.written, counts.carried) == (2, 2, 6)
    ids = [row["id"] for row in lineage_rows(Path(third.version_uri))]
    assert len(ids) == len(set(ids)) == 8


def test_a_run_whose_lock_was_taken_over_records_nothing_when_it_finds_nothing_new(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stalled past its lease on its way to "nothing new"; B took the lock, published v2 and left a mark for
    # rows whose image it could not read for now. A woke and committed its watermarks unchecked: that commit
    # replaced the marks with its own (none), said success, and B's rows were never read again.
    import sqlalchemy as sa

    from connectors.state import _READ_AGAIN, LockLost
    from curation import pipeline

    good = pictures(workdir / "scans", 4)
    write_jsonl(workdir / "qa" / "one.jsonl", asks(good[:2]))
    spec = {**recipe("out", "state.db"), "sources": [{"path": "qa"}]}
    assert run(workdir, spec).manifest.version == 1
    nothing_new, taken_over, stalled = pipeline._nothing_new, [], []

    def stalls(*args: Any, **kwargs: Any) -> bool:
        if not stalled:  # A's; B's own passes straight on
            stalled.append(True)
            with sa.create_engine(f"sqlite:///{workdir}/state.db").begin() as db:
                db.execute(sa.text("DELETE FROM run_locks"))  # A's lease lapsed
            write_jsonl(workdir / "qa" / "two.jsonl", asks(good[2:]))
            monkeypatch.setattr(image_check, "filesystem", refusing(Path(good[3]), filesystem))
            taken_over.append(run(workdir, spec))  # B
            monkeypatch.setattr(image_check, "filesystem", filesystem)
        return nothing_new(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_nothing_new", stalls)
    with pytest.raises(LockLost, match="taken over by another run"):
        run(workdir, spec)  # A
    monkeypatch.setattr(pipeline, "_nothing_new", nothing_new)
    assert taken_over[0].manifest.counts.reasons["quarantined"] == {"unreadable": 2}
    with sa.create_engine(f"sqlite:///{workdir}/state.db").connect() as db:
        marked = db.execute(sa.text("SELECT item FROM watermarks WHERE source = :s"), {"s": _READ_AGAIN}).scalars()
        assert [Path(item).name for item in marked] == ["two.jsonl"]
    assert run(workdir, spec).manifest.counts.written == 2  # B's rows, read again


def asks_in_jsonl(workdir: Path, images: list[str], key: bool) -> dict[str, Any]:
    write_jsonl(
        workdir / "qa.jsonl",
        [{"image": i, "question": "Which colour?", "answer": f"c{n}"} for n, i in enumerate(images)],
    )
    return {"path": "qa.jsonl"}


def asks_in_sql(workdir: Path, images: list[str], key: bool) -> dict[str, Any]:
    rows = ", ".join(f"({n}, '{image}', 'Which colour?', 'c{n}')" for n, image in enumerate(images))
    url = sqlite_db(
        workdir / "qa.db",
        "DROP TABLE IF EXISTS t",
        "CREATE TABLE t (n INTEGER, image TEXT, question TEXT, answer TEXT)",
        f"INSERT INTO t VALUES {rows}",
    )
    return {"type": "sql", "url": url, "table": "t", **({"key": ["n"]} if key else {})}


def asks_in_hf(workdir: Path, images: list[str], key: bool) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"image": image, "question": "Which colour?", "answer": f"c{n}"} for n, image in enumerate(images)]
    (workdir / "hub" / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), workdir / "hub" / "data" / "train-00000-of-00001.parquet")
    return {"type": "hf", "path": "hub"}


@pytest.mark.parametrize(
    ("source", "key"),
    [(asks_in_jsonl, False), (asks_in_sql, False), (asks_in_hf, False)],
    ids=["jsonl", "sql", "hf"],
)
def test_a_published_record_whose_image_was_moved_away_stays_when_its_input_is_read_again(
    workdir: Path, source: Callable[[Path, list[str], bool], dict[str, Any]], key: bool
) -> None:
    # Inputs are often moved away once taken. Rows added, the JSONL file, SQL table without a cursor or Hugging
    # Face data file is read whole again: the unchanged row whose image is gone was quarantined as
    # `missing_image`, and its published record left the dataset (a SQL or HF source's still did). It stays as
    # published (carried, its image with it), as the images connector keeps such a row's record; a row never
    # published whose image is not there is quarantined as ever.
    good = pictures(workdir / "scans", 3)
    spec = {**recipe("out", "state.db", validation_fraction=0.0), "sources": [source(workdir, good[:2], key)]}
    first = run(workdir, spec)
    assert first.manifest.counts.written == 2
    Path(good[0]).unlink()
    gone = str(workdir / "scans" / "never.png")
    source(workdir, [*good, gone], key)
    second = run(workdir, spec)
    counts = second.manifest.counts
    assert (counts.input, counts.written, counts.carried) == (3, 2, 1)
    assert counts.reasons["quarantined"] == {"missing_image": 1}
    (aside,) = set_aside(Path(second.version_uri))
    assert json.loads(aside["record"])["image"] == gone
    now = published(second)
    assert len(now) == 3 and {i: now[i] for i in published(first)} == published(first)
    carried = [row for row in lineage_rows(Path(second.version_uri)) if row["carried_from"] == 1]
    assert [row["source"]["line"] for row in carried] == [1]


def test_a_keyed_sql_row_whose_image_was_moved_away_is_quarantined_edited_or_not(workdir: Path) -> None:
    # A keyed SQL source's row keeps its id (its key) when edited: a row corrected after its image was moved
    # away was kept as its stale published record. Its rows are quarantined as the image is gone, and their
    # records leave the dataset, whether edited or not (nothing tells an unchanged row here).
    good = pictures(workdir / "scans", 3)
    spec = {**recipe("out", "state.db", validation_fraction=0.0), "sources": [asks_in_sql(workdir, good, True)]}
    assert run(workdir, spec).manifest.counts.written == 3
    Path(good[0]).unlink()
    Path(good[1]).unlink()
    url = spec["sources"][0]["url"]
    sqlite_db(workdir / "qa.db", "UPDATE t SET answer = 'CORRECTED' WHERE n = 0")
    assert spec["sources"][0]["url"] == url
    second = run(workdir, spec)
    counts = second.manifest.counts
    assert (counts.input, counts.written, counts.carried) == (3, 1, 0)
    assert counts.reasons["quarantined"] == {"missing_image": 2}
    assert sorted(json.loads(row["record"])["answer"] for row in set_aside(Path(second.version_uri))) == [
        "CORRECTED",
        "c1",
    ]
    [(_, line, _)] = published(second).values()
    assert "c2" in json.dumps(line) and "c0" not in json.dumps(line)


@pytest.mark.parametrize("source", [asks_in_jsonl, asks_in_sql, asks_in_hf], ids=["jsonl", "sql", "hf"])
def test_a_first_run_that_can_read_no_image_publishes_nothing_and_the_next_reads_them(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, source: Callable[[Path, list[str], bool], dict[str, Any]]
) -> None:
    # Every row of a first run names an image it may not read for now. A files source's run fails and publishes
    # nothing; a SQL or Hugging Face source's published an empty version, holding only the quarantine, as if
    # the source held nothing. It fails alike, and the next run reads the rows again.
    good = pictures(workdir / "scans", 1)
    spec = {**recipe("out", "state.db", validation_fraction=0.0), "sources": [source(workdir, good * 2, False)]}
    monkeypatch.setattr(image_check, "filesystem", refusing(Path(good[0]), filesystem))
    with pytest.raises(StorageError, match=r"^scans: 2 input\(s\) \(files, image rows\) cannot be read, e\.g\. "):
        run(workdir, spec)
    monkeypatch.setattr(image_check, "filesystem", filesystem)  # the share is back
    counts = run(workdir, spec).manifest.counts
    assert (counts.input, counts.written, counts.quarantined) == (2, 2, 0)


@pytest.mark.parametrize("source", [asks_in_sql, asks_in_hf], ids=["sql", "hf"])
def test_a_first_run_that_publishes_nothing_with_a_row_it_cannot_read_for_now_fails(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, source: Callable[[Path, list[str], bool], dict[str, Any]]
) -> None:
    # One row's image may not be read for now, the other's is gone. Published, the empty first version's table
    # or data file was taken: the first row was read again only by --full-refresh, once the share was back.
    good = pictures(workdir / "scans", 1)
    spec = {
        **recipe("out", "state.db", validation_fraction=0.0),
        "sources": [source(workdir, [good[0], str(workdir / "scans" / "gone.png")], False)],
    }
    monkeypatch.setattr(image_check, "filesystem", refusing(Path(good[0]), filesystem))
    with pytest.raises(StorageError) as failed:
        run(workdir, spec)
    # Why the whole run fails, and one way on: its row's detail says --full-refresh reads it again, but any run
    # does here, as nothing was taken.
    said = str(failed.value)
    assert said.startswith(
        "scans: 1 input(s) (files, image rows) cannot be read and the other 1 were set aside: the first version "
        "would hold no record, e.g. "
    )
    assert said.endswith(": cannot read (Permission denied); nothing was taken: the next run reads them again")
    monkeypatch.setattr(image_check, "filesystem", filesystem)  # the share is back
    counts = run(workdir, spec).manifest.counts
    assert (counts.input, counts.written, counts.quarantined) == (2, 1, 1)
    assert counts.reasons["quarantined"] == {"missing_image": 1}


def test_a_full_refresh_that_would_publish_no_record_says_a_run_with_full_refresh_reads_them_again(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # v1 holds a record. A full refresh that cannot read that row's image now fails: it said "the first
    # version", and "the next run reads them again", which a plain run does not (v1's cursor is past the row).
    good = pictures(workdir / "scans", 1)
    spec = {
        **recipe("out", "state.db", validation_fraction=0.0),
        "sources": [asks_in_sql(workdir, [good[0], str(workdir / "scans" / "gone.png")], False)],
    }
    assert run(workdir, spec).manifest.counts.written == 1
    monkeypatch.setattr(image_check, "filesystem", refusing(Path(good[0]), filesystem))
    with pytest.raises(StorageError) as failed:
        run(workdir, spec, full_refresh=True)
    said = str(failed.value)
    assert "the other 1 were set aside: the new version (it extends none) would hold no record, e.g. " in said
    assert said.endswith("; nothing was taken: the next run with --full-refresh reads them again")
    monkeypatch.setattr(image_check, "filesystem", filesystem)  # the share is back
    assert run(workdir, spec).manifest is None  # nothing new since v1
    assert run(workdir, spec, full_refresh=True).manifest.counts.written == 1


def reads_of_t(workdir: Path, spec: dict[str, Any], caplog: pytest.LogCaptureFixture) -> tuple[RunResult, int, int]:
    """A run, how many times it read table ``t`` of qa.db (SELECT ... FROM t), and how many times it warned of
    its row without a cursor value."""
    statements: list[str] = []

    def note(conn: sa.Connection, _cursor: Any, statement: str, *_: Any) -> None:
        if conn.engine.url.database == str(workdir / "qa.db") and re.search(r"\bFROM t\b", statement):
            statements.append(statement)

    caplog.clear()
    sa.event.listen(sa.engine.Engine, "before_cursor_execute", note)
    try:
        with caplog.at_level(logging.WARNING):
            result = run(workdir, spec)
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", note)
    said = [r for r in caplog.records if "no value (NULL, or NaN)" in r.getMessage()]
    return result, len(statements), len(said)


def test_a_sql_table_new_to_the_dataset_is_read_once_and_its_warnings_said_once(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A table added to a VQA recipe is read whole (nothing of it was taken). It was read before the run too, for
    # published records whose image moved away (``keep_archived``), though the dataset holds none of its rows:
    # the table was queried twice and its warnings (a row without a cursor value) said twice.
    good = pictures(workdir / "scans", 3)
    spec = {**recipe("out", "state.db", validation_fraction=0.0), "sources": [asks_in_jsonl(workdir, good[:1], False)]}
    assert run(workdir, spec).manifest.counts.written == 1
    url = sqlite_db(
        workdir / "qa.db",
        "CREATE TABLE t (n INTEGER, image TEXT, question TEXT, answer TEXT, u INTEGER)",
        f"INSERT INTO t VALUES (1, '{good[1]}', 'Which colour?', 'c1', 1), (2, '{good[2]}', 'Which colour?', 'c2', NULL)",
    )
    spec["sources"].append({"type": "sql", "url": url, "table": "t", "cursor": "u"})
    second, reads, said = reads_of_t(workdir, spec, caplog)
    counts = second.manifest.counts
    assert (counts.input, counts.written, counts.carried) == (2, 1, 1)
    assert counts.reasons["quarantined"] == {"no_cursor_value": 1}
    assert (reads, said) == (1, 1)


def test_a_sql_table_given_a_cursor_keeps_a_record_whose_image_moved_and_says_its_warnings_once(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A cursor given to a table the dataset holds records of: its settings changed, it is read whole, and a
    # published record whose image was moved away since stays. Those rows are read before the run for that,
    # which also said the run's warnings (a row without a cursor value) and staged its watermark: said twice.
    good = pictures(workdir / "scans", 4)
    url = sqlite_db(
        workdir / "qa.db",
        "CREATE TABLE t (n INTEGER, image TEXT, question TEXT, answer TEXT, u INTEGER)",
        f"INSERT INTO t VALUES (0, '{good[0]}', 'Which colour?', 'c0', 1), (1, '{good[1]}', 'Which colour?', 'c1', 2)",
    )
    table = {"type": "sql", "url": url, "table": "t"}
    spec = {
        **recipe("out", "state.db", validation_fraction=0.0),
        "sources": [asks_in_jsonl(workdir, good[3:], False), table],
    }
    first = run(workdir, spec)
    assert first.manifest.counts.written == 3
    Path(good[0]).unlink()
    sqlite_db(workdir / "qa.db", f"INSERT INTO t VALUES (2, '{good[2]}', 'Which colour?', 'c2', NULL)")
    table["cursor"] = "u"
    second, reads, said = reads_of_t(workdir, spec, caplog)
    counts = second.manifest.counts
    # The JSONL line and the table's row whose image moved carried; its other row written again, as it was.
    assert (counts.input, counts.written, counts.carried) == (2, 1, 2)
    assert counts.reasons["quarantined"] == {"no_cursor_value": 1}
    now = published(second)
    assert len(now) == 3 and {i: now[i] for i in published(first)} == published(first)
    # Read for the record kept, and by the run; said once.
    assert (reads, said) == (2, 1)
    # The watermark the run staged: a third run finds nothing new, and says the row set aside before.
    third, reads, said = reads_of_t(workdir, spec, caplog)
    assert third.manifest is None and (reads, said) == (1, 1)
    assert "quarantined by an earlier run" in caplog.text


@pytest.mark.parametrize("source", [asks_in_jsonl, asks_in_hf], ids=["jsonl", "hf"])
def test_a_file_new_to_the_dataset_is_read_once(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, source: Callable[[Path, list[str], bool], dict[str, Any]]
) -> None:
    # As a SQL table new to the dataset: read before the run too, for records the dataset does not hold.
    good = pictures(workdir / "scans", 3)
    spec = {**recipe("out", "state.db", validation_fraction=0.0), "sources": [asks_in_sql(workdir, good[:1], False)]}
    assert run(workdir, spec).manifest.counts.written == 1
    spec["sources"].append(source(workdir, good[1:], False))
    opened: list[str] = []
    for module in (connectors.files, connectors.hf):

        def noted(fs: Any, path: str, *args: Any, read: Callable[..., Any] = module.open_input) -> Any:
            opened.append(path)
            return read(fs, path, *args)

        monkeypatch.setattr(module, "open_input", noted)
    counts = run(workdir, spec).manifest.counts
    assert (counts.input, counts.written, counts.carried) == (2, 2, 1)
    assert len(opened) == 1


def test_a_csv_file_read_again_keeps_a_record_whose_image_moved_and_says_its_header_once(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Read before the run for its records whose image moved away, the file's header that is not UTF-8 was said
    # by that read too.
    good = pictures(workdir / "scans", 3)

    def table(images: list[str]) -> None:
        rows = "".join(f"{image},Which colour?,c{n},x\n" for n, image in enumerate(images))
        (workdir / "qa.csv").write_bytes("image,question,answer,réponse\n".encode("latin-1") + rows.encode())

    table(good[:2])
    spec = {**recipe("out", "state.db", validation_fraction=0.0), "sources": [{"path": "qa.csv"}]}
    first = run(workdir, spec)
    Path(good[0]).unlink()
    table(good)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        second = run(workdir, spec)
    counts = second.manifest.counts
    assert (counts.input, counts.written, counts.carried) == (2, 2, 1)
    now = published(second)
    assert len(now) == 3 and {i: now[i] for i in published(first)} == published(first)
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records if "header" in r.getMessage()] == [
        "the header is not UTF-8: byte 0xe9 at column 24; its column names hold U+FFFD for such bytes (save the "
        "file as UTF-8)"
    ]


def test_the_sides_a_run_holds_of_an_input_read_again_are_ids_and_sides_alone(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Held from the plan to the run's end to keep each record on its side, they held each record's input uri
    # too (read for ``keep_archived`` alone): a string per record of the inputs read again, tens of MB at 1M.
    import curation.pipeline as pipeline

    good = pictures(workdir / "scans", 3)
    write_jsonl(workdir / "qa.jsonl", asks(good[:2]))
    spec = recipe("out", "state.db")
    first = published(run(workdir, spec))
    plans: list[Any] = []
    plan_of = pipeline._plan
    monkeypatch.setattr(pipeline, "_plan", lambda *args: plans.append(plan_of(*args)) or plans[-1])
    Path(good[0]).unlink()  # moved away once taken: its records stay as published
    write_jsonl(workdir / "qa.jsonl", asks(good))
    second = run(workdir, spec)
    [sides] = [plan.published_sides for plan in plans]
    assert sides.columns == ["id", "validation"]
    assert dict(zip(sides["id"], sides["validation"], strict=True)) == {
        record: split == "validation" for record, (split, _, _) in first.items()
    }
    now = published(second)
    assert len(now) == 6 and {record: now[record] for record in first} == first
