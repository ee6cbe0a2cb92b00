"""Images with questions and answers: generated with Pillow, read locally and from S3."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import tracemalloc
import unicodedata
from pathlib import Path

import boto3
import pyarrow as pa
import pytest
import sqlalchemy as sa
import xxhash
from PIL import Image

import connectors.images as images
from connectors.files import lines_in
from connectors.images import ImagesSourceReader
from connectors.state import SourceWatermark, Watermarks
from curation.pipeline import RunResult
from curation.stages.shape import Shape
from curation.stages.validate import SchemaValidation
from curation.writer import SPLITS
from schemas.config import ImagesSource, RecipeError, RecordShape, load_recipe
from schemas.records import VQARecord
from tests.helpers import (
    Refusing,
    lineage_rows,
    outputs,
    processed,
    read_lines,
    run,
    set_aside,
    write_jsonl,
    write_recipe,
)

GPS_IFD = 0x8825


def jpeg_with_exif(size: tuple[int, int] = (40, 20), orientation: int | None = None) -> bytes:
    image = Image.new("RGB", size, (200, 30, 30))
    image.paste((30, 30, 200), (0, 0, size[0] // 2, size[1]))  # left half blue: shows the rotation
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x0110] = "Model X"  # Model
    exif.get_ifd(GPS_IFD).update({1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)})
    if orientation:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def png(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 120).save(buffer, "PNG")
    return buffer.getvalue()


def bmp() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "BMP")
    return buffer.getvalue()


def broken_crc_png() -> bytes:
    data = bytearray(png())
    at = data.index(b"IDAT") + 8  # flip a byte of compressed data: the chunk's CRC no longer matches
    data[at] ^= 0xFF
    return bytes(data)


IMAGES = {
    "receipt.jpg": jpeg_with_exif(),
    "rotated.jpg": jpeg_with_exif(orientation=6),
    "form.png": png(),
    "truncated.jpg": (lambda data: data[: len(data) * 2 // 3])(jpeg_with_exif((300, 200))),
    "crc.png": broken_crc_png(),
    "huge.png": png((1100, 1000), mode="L"),
    "scan.bmp": bmp(),
    "notes.png": b"these are not image bytes",
}


def sidecar_rows() -> list[dict]:
    rows = [{"image": name, "question": f"What is in {name}?", "answer": f"It shows {name}."} for name in IMAGES]
    rows.append({"image": "receipt.jpg", "question": "What is the total?", "answer": "12.50 USD"})
    rows.append({"image": "missing.jpg", "question": "Where is it?", "answer": "Nowhere."})
    return rows


def receipts() -> dict:
    """The recipe publishing ``write_folder``'s images and their ``qa.jsonl`` questions, all to train."""
    return {
        "dataset": "receipts",
        "sources": [{"type": "images", "path": "img", "sidecar": "qa.jsonl", "max_pixels": 1_000_000}],
        "record": {"kind": "vqa"},
        "output": {"validation_fraction": 0.0},
    }


def taken_then_archived(workdir: Path) -> tuple[dict, RunResult]:
    """``write_folder``'s images and questions taken by a run of ``receipts()``, then form.png moved away
    (archived once taken, as landing folders are): the recipe and that first run."""
    write_folder(workdir)
    spec = receipts()
    first = run(workdir, spec)
    (workdir / "img" / "form.png").rename(workdir / "form.png")
    return spec, first


def write_folder(folder: Path) -> Path:
    (folder / "img").mkdir(parents=True)
    for name, data in IMAGES.items():
        (folder / "img" / name).write_bytes(data)
    lines = [json.dumps(row) for row in sidecar_rows()] + ["{not json"]
    (folder / "qa.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def read(config: ImagesSource, watermark=None) -> tuple[list[dict], list[dict], pa.Table]:
    rows, aside, tables = [], [], []
    for batch in ImagesSourceReader(config, batch_rows=4, watermark=watermark).batches():
        rows += batch.rows.to_pylist()
        aside += batch.set_aside.to_pylist()
        if batch.rows.num_rows:
            tables.append(batch.rows)
    return rows, aside, pa.concat_tables(tables, promote_options="default")


def config_for(folder: str, sidecar: str, **settings: object) -> ImagesSource:
    return ImagesSource(type="images", path=folder, sidecar=sidecar, max_pixels=1_000_000, **settings)


def test_bad_images_are_quarantined_with_reasons_and_good_ones_kept(tmp_path: Path) -> None:
    write_folder(tmp_path)
    rows, aside, _ = read(config_for(str(tmp_path / "img"), str(tmp_path / "qa.jsonl")))
    assert [r["image"] for r in rows] == ["receipt.jpg", "rotated.jpg", "form.png", "receipt.jpg"]
    reasons = {a["detail"].split(": ")[1]: a["reason"] for a in aside if a["reason"] != "malformed_json"}
    assert reasons == {
        "truncated.jpg": "truncated",
        "crc.png": "corrupt",
        "huge.png": "decompression_bomb",
        "scan.bmp": "unsupported",
        "notes.png": "unsupported",
        "missing.jpg": "missing_image",
    }
    assert [a["source"]["line"] for a in aside if a["reason"] == "malformed_json"] == [11]
    assert all(a["source"]["connector"] == "images" and a["outcome"] == "quarantined" for a in aside)
    assert {a["source"]["line"] for a in aside} | {r["source"]["line"] for r in rows} == set(range(1, 12))
    huge = next(a for a in aside if a["reason"] == "decompression_bomb")
    assert "1100x1000 is 1100000 pixels, over max_pixels 1000000" in huge["detail"]
    assert json.loads(huge["record"])["question"] == "What is in huge.png?"


def test_exif_is_stripped_and_orientation_applied(tmp_path: Path) -> None:
    write_folder(tmp_path)
    rows, _, _ = read(config_for(str(tmp_path / "img"), str(tmp_path / "qa.jsonl")))
    original = Image.open(io.BytesIO(IMAGES["receipt.jpg"]))
    assert original.getexif().get_ifd(GPS_IFD)  # the input does carry a GPS position
    for row in rows:
        cleaned = Image.open(io.BytesIO(row["image_bytes"]))
        assert cleaned.format == "JPEG" if row["image"].endswith(".jpg") else cleaned.format == "PNG"
        assert dict(cleaned.getexif()) == {} and "exif" not in cleaned.info
        assert b"PhoneMaker" not in row["image_bytes"]
    rotated = Image.open(io.BytesIO(next(r for r in rows if r["image"] == "rotated.jpg")["image_bytes"]))
    assert rotated.size == (20, 40)  # orientation 6 turned the 40x20 image upright
    top = rotated.getpixel((10, 5))
    assert top[2] > 150 and top[0] < 100  # the blue left half is on top after the turn


def test_resize_to_max_side(tmp_path: Path) -> None:
    write_folder(tmp_path)
    rows, _, _ = read(config_for(str(tmp_path / "img"), str(tmp_path / "qa.jsonl"), max_side=32))
    sizes = {r["image"]: Image.open(io.BytesIO(r["image_bytes"])).size for r in rows}
    assert sizes["form.png"] == (32, 24) and sizes["receipt.jpg"] == (32, 16)


def test_sidecar_csv_with_other_column_names(tmp_path: Path) -> None:
    write_folder(tmp_path)
    (tmp_path / "qa.csv").write_text('file,q,a\nform.png,"Which form is it?","Form W-9"\nreceipt.jpg,Total?,12.50\n')
    config = config_for(
        str(tmp_path / "img"), str(tmp_path / "qa.csv"), image_column="file", question_column="q", answer_column="a"
    )
    rows, aside, _ = read(config)
    assert aside == []
    assert [(r["image"], r["question"], r["answer"]) for r in rows] == [
        ("form.png", "Which form is it?", "Form W-9"),
        ("receipt.jpg", "Total?", "12.50"),
    ]


def tiff(mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (12, 8)).save(buffer, "TIFF")
    return buffer.getvalue()


def test_tiff_scans_in_modes_png_cannot_hold_are_converted_not_fatal(tmp_path: Path) -> None:
    # A print shop's CMYK scan, a 32-bit or float sample TIFF: re-encoding them as PNG failed the run.
    (tmp_path / "img").mkdir()
    modes = ["CMYK", "YCbCr", "I", "F", "LAB", "PA", "RGB"]
    for mode in modes:
        (tmp_path / "img" / f"{mode}.tif").write_bytes(tiff(mode))
    rows = [{"image": f"{mode}.tif", "question": "What is it?", "answer": mode} for mode in modes]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = config_for(str(tmp_path / "img"), str(tmp_path / "qa.jsonl"), formats=["TIFF"])
    read_rows, aside, _ = read(config)
    assert aside == []
    cleaned = {r["answer"]: Image.open(io.BytesIO(r["image_bytes"])) for r in read_rows}
    assert list(cleaned) == modes
    assert {image.format for image in cleaned.values()} == {"PNG"}
    assert {answer: image.mode for answer, image in cleaned.items() if answer != "RGB"} == {
        "CMYK": "RGB",
        "YCbCr": "RGB",
        "I": "L",
        "F": "L",
        "LAB": "RGB",
        "PA": "RGBA",
    }
    assert all(image.size == (12, 8) for image in cleaned.values())


@pytest.mark.parametrize(
    ("mode", "samples", "kept"),
    [
        ("I", [0, 4000, 60000], [0, 16, 233]),  # a 16-bit scan kept as 32-bit samples
        ("I", [0, 70000, 140000], [0, 128, 255]),  # past 16 bits: scaled into them
        ("F", [0.0, 0.5, 1.0], [0, 128, 255]),  # a float image of 0-1
        ("I", [0, 20, 230], [0, 20, 230]),  # 8-bit values widened: kept
        ("I", [-500, 2000, 4095], [0, 125, 255]),  # a 12-bit scan; a negative sample taken as 0
    ],
)
def test_a_tiff_of_32_bit_or_float_grey_samples_is_kept_as_8_bit_grey_not_clipped_white(
    mode: str, samples: list[float], kept: list[int]
) -> None:
    import numpy as np

    from connectors.images import clean_image

    values = np.array([samples * 4] * 3, dtype=np.int32 if mode == "I" else np.float32)
    buffer = io.BytesIO()
    Image.fromarray(values, mode=mode).save(buffer, "TIFF")
    cleaned = Image.open(io.BytesIO(clean_image(buffer.getvalue(), ["TIFF"], 10**6).data))
    assert cleaned.format == "PNG" and cleaned.mode == "L"
    assert np.asarray(cleaned.convert("RGB"))[0, :3, 0].tolist() == kept


@pytest.mark.parametrize(
    ("fmt", "mode", "levels", "kept"),
    [
        ("PNG", "I;16", (5140, 60000), (20, 233)),  # a 16-bit scanner's page
        ("TIFF", "I;16B", (5140, 60000), (20, 233)),
        ("PNG", "I;16", (20, 230), (20, 230)),  # 8-bit values widened, which RGB never clipped
        # Scaled by the 16-bit range alone, a 12-bit scan (0-4095) came out 0-16 and one of 9 bits near black.
        ("PNG", "I;16", (400, 4000), (25, 249)),
        ("TIFF", "I;16B", (100, 300), (50, 150)),
    ],
)
def test_a_16_bit_grey_scan_is_kept_as_8_bit_grey_that_a_trainers_rgb_conversion_shows(
    fmt: str, mode: str, levels: tuple[int, int], kept: tuple[int, int]
) -> None:
    # Kept 16-bit, it reached the trainer white: its processor's convert("RGB") clips every sample over 255.
    import numpy as np

    from connectors.images import clean_image

    page = np.full((40, 60), levels[1], dtype=np.uint16)
    page[10:30, 10:50] = levels[0]  # dark text on it
    buffer = io.BytesIO()
    big_endian = mode == "I;16B"  # Pillow's convert to I;16B clips at 255 itself
    Image.frombytes(mode, (60, 40), page.astype(">u2" if big_endian else "<u2").tobytes()).save(buffer, fmt)
    cleaned = Image.open(io.BytesIO(clean_image(buffer.getvalue(), ["PNG", "TIFF"], 10**6).data))
    assert cleaned.format == "PNG" and cleaned.mode == "L"
    seen = np.asarray(cleaned.convert("RGB"))
    assert (seen[20, 20].tolist(), seen[2, 2].tolist()) == ([kept[0]] * 3, [kept[1]] * 3)


def grey16(fmt: str, value: int, mode: str = "I;16") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (120, 80), value).save(buffer, fmt)
    return buffer.getvalue()


def test_16_bit_grey_scans_are_resized_to_max_side_as_8_bit_grey_not_failing_the_run(workdir: Path) -> None:
    # Pillow's shrinking refuses I;16 and I;16B: "image has wrong mode" failed the whole run, naming no file.
    (workdir / "img").mkdir()
    scans = {"scan.png": grey16("PNG", 40000), "scan.tif": grey16("TIFF", 50000, "I;16B"), "form.png": png((120, 80))}
    for name, data in scans.items():
        (workdir / "img" / name).write_bytes(data)
    write_jsonl(workdir / "qa.jsonl", [{"image": name, "question": "What is it?", "answer": name} for name in scans])
    spec = {
        **receipts(),
        "sources": [
            {"type": "images", "path": "img", "sidecar": "qa.jsonl", "max_side": 24, "formats": ["PNG", "TIFF"]}
        ],
    }
    result = run(workdir, spec)
    assert result.manifest.counts.written == 3 and result.manifest.counts.quarantined == 0
    kept = {
        line["completion"]: Image.open(Path(result.version_uri) / "train" / line["file_name"])
        for line in outputs(Path(result.version_uri))
    }
    assert {name: image.size for name, image in kept.items()} == dict.fromkeys(scans, (24, 16))
    # As 8-bit grey, its samples scaled from the 16-bit range (not clipped white).
    assert kept["scan.png"].mode == kept["scan.tif"].mode == "L"
    assert kept["scan.png"].getextrema() == (156, 156) and kept["scan.tif"].getextrema() == (195, 195)


def test_an_image_pillow_cannot_resize_quarantines_its_row_naming_it_not_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "big.png").write_bytes(png((64, 48)))
    (tmp_path / "img" / "small.png").write_bytes(png((8, 8)))  # within max_side: not resized
    rows = [{"image": name, "question": "What is it?", "answer": name} for name in ("big.png", "small.png")]
    write_jsonl(tmp_path / "qa.jsonl", rows)

    def refused(image: Image.Image, *args: object, **kwargs: object) -> None:
        raise ValueError("image has wrong mode")  # as Pillow refuses a mode it does not resample

    monkeypatch.setattr(Image.Image, "thumbnail", refused)
    kept, aside, _ = read(config_for(str(tmp_path / "img"), str(tmp_path / "qa.jsonl"), max_side=32))
    assert [row["image"] for row in kept] == ["small.png"]
    [problem] = aside
    assert problem["reason"] == "unsupported"
    assert problem["detail"] == (
        f"{tmp_path}/qa.jsonl:1: big.png: PNG image in mode RGB cannot be resized or re-encoded: image has wrong mode"
    )


def test_max_pixels_past_pillows_own_limit_is_a_recipe_error() -> None:
    # Pillow refuses an image past twice its MAX_IMAGE_PIXELS (about 179 million pixels) before the source's own
    # check: a larger max_pixels never took effect. Raising Pillow's module-wide limit instead lowered every other
    # image check in the process (a Ray worker's stages kept Pillow's own), so a larger value is refused.
    from schemas.config import ImagesSource

    assert ImagesSource(type="images", path="i", sidecar="s.jsonl", max_pixels=2 * Image.MAX_IMAGE_PIXELS)
    with pytest.raises(ValueError, match=r"at most 178956970 .*Pillow"):
        ImagesSource(type="images", path="i", sidecar="s.jsonl", max_pixels=2 * Image.MAX_IMAGE_PIXELS + 1)


def noise(fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((200, 200), 50).convert("RGB").save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["WEBP", "PNG", "JPEG"])
def test_an_image_cut_short_is_quarantined_as_truncated(fmt: str) -> None:
    # Pillow does not open a WebP cut short at all: it was reported as not an image (unsupported).
    from connectors.images import clean_image

    data = noise(fmt)
    with pytest.raises(images.ImageProblem) as problem:
        clean_image(data[: len(data) // 2], ["JPEG", "PNG", "WEBP"], 10**6)
    assert problem.value.reason == "truncated" and fmt in problem.value.detail
    with pytest.raises(images.ImageProblem, match="WEBP images are not accepted") as problem:
        clean_image(noise("WEBP")[:500], ["PNG"], 10**6)  # a format the source does not take: that first
    assert problem.value.reason == "unsupported"


def test_a_png_pillow_will_not_open_says_pillows_reason() -> None:
    # "not an image Pillow can read" alone did not say the file was a PNG whose text chunk was too large.
    from PIL import PngImagePlugin

    from connectors.images import clean_image

    texts = PngImagePlugin.PngInfo()
    texts.add_text("notes", "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 1), zip=True)
    buffer = io.BytesIO()
    Image.new("RGB", (12, 8)).save(buffer, "PNG", pnginfo=texts)
    with pytest.raises(images.ImageProblem) as problem:
        clean_image(buffer.getvalue(), ["PNG"], 10**6)
    assert problem.value.reason == "unsupported"
    assert problem.value.detail == (
        "not an image Pillow can read (Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK)"
    )
    with pytest.raises(images.ImageProblem, match=r"^not an image Pillow can read$"):  # no format found: no more said
        clean_image(b"plain text", ["PNG"], 10**6)


def test_a_tiff_of_several_pages_is_kept_as_its_first_page() -> None:
    from connectors.images import clean_image

    pages = [Image.new("L", (100, 140), 255), Image.new("L", (80, 60), 128), Image.new("L", (100, 140), 0)]
    buffer = io.BytesIO()
    pages[0].save(buffer, "TIFF", save_all=True, append_images=pages[1:])
    kept = Image.open(io.BytesIO(clean_image(buffer.getvalue(), ["TIFF"], 10**6).data))
    assert kept.format == "PNG" and getattr(kept, "n_frames", 1) == 1
    assert kept.size == (100, 140) and kept.getextrema() == (255, 255)


def test_a_sidecar_cannot_name_an_image_outside_the_images_folder(tmp_path: Path) -> None:
    write_folder(tmp_path)
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "id-card.png").write_bytes(png())  # a real image, beside the folder
    names = ["../private/id-card.png", str(tmp_path / "private" / "id-card.png"), "sub/../form.png", "form.png"]
    rows = [{"image": name, "question": "What is it?", "answer": "A form."} for name in names]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    read_rows, aside, _ = read(config_for(str(tmp_path / "img"), str(tmp_path / "qa.jsonl")))
    assert [r["image"] for r in read_rows] == ["sub/../form.png", "form.png"]
    assert [(a["source"]["line"], a["reason"]) for a in aside] == [(1, "missing_image"), (2, "missing_image")]
    assert all(a["detail"].endswith(f"names a file outside {tmp_path / 'img'}") for a in aside)


def test_an_image_name_holding_a_nul_is_quarantined_naming_its_line(tmp_path: Path) -> None:
    # No file system takes such a name: Python raised ValueError ("embedded null byte"), and the run failed.
    write_folder(tmp_path)
    rows = [{"image": name, "question": "What is it?", "answer": "A form."} for name in ("form\u0000.png", "form.png")]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    read_rows, aside, _ = read(config_for(str(tmp_path / "img"), str(tmp_path / "qa.jsonl")))
    assert [r["image"] for r in read_rows] == ["form.png"]
    assert [(a["source"]["line"], a["reason"]) for a in aside] == [(1, "missing_image")]
    assert aside[0]["detail"].endswith("names no file: the name holds a NUL character")


def test_a_link_out_of_the_images_folder_is_quarantined_and_one_inside_it_read(workdir: Path) -> None:
    # The source followed a link in its folder to a file or folder elsewhere and published that file,
    # which the recipe never pointed at (and which the review page, checking the path as the file system
    # finds it, refuses to show). The folder itself reached through a link is fine.
    real, private = workdir / "scans", workdir / "private"
    (real / "sub").mkdir(parents=True)
    private.mkdir()
    for path in (real / "form.png", real / "sub" / "chart.png", private / "id-card.png", private / "other.png"):
        path.write_bytes(png())
    (workdir / "img").symlink_to(real, target_is_directory=True)
    (real / "staying.png").symlink_to("form.png")
    (real / "inner").symlink_to("sub", target_is_directory=True)
    (real / "leaving.png").symlink_to(private / "id-card.png")
    (real / "away").symlink_to(private, target_is_directory=True)
    names = ["form.png", "staying.png", "inner/chart.png", "leaving.png", "away/other.png"]
    write_jsonl(workdir / "qa.jsonl", [{"image": n, "question": f"What is {n}?", "answer": "A form."} for n in names])
    result = run(workdir, receipts())
    assert sorted(line["prompt"] for line in outputs(Path(result.version_uri))) == [
        "What is form.png?",
        "What is inner/chart.png?",
        "What is staying.png?",
    ]
    assert result.manifest.counts.reasons["quarantined"] == {"missing_image": 2}
    assert [row["detail"] for row in set_aside(Path(result.version_uri))] == [
        f"{workdir / 'qa.jsonl'}:4: leaving.png: is a link to {(private / 'id-card.png').resolve()}, outside {workdir / 'img'}",
        f"{workdir / 'qa.jsonl'}:5: away/other.png: is a link to {(private / 'other.png').resolve()}, outside {workdir / 'img'}",
    ]


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_a_transparent_palette_colour_stays_transparent(tmp_path: Path, fmt: str) -> None:
    # Black text on a transparent background (a logo, a signature): rebuilt from its pixels, the image
    # lost its transparent colour and came out black on black.
    image = Image.new("P", (24, 24), 0)
    image.putpalette([0, 0, 0, 0, 0, 0] + [0] * 762)  # 0: the background, transparent; 1: black ink
    image.paste(1, (4, 10, 20, 14))
    buffer = io.BytesIO()
    image.save(buffer, fmt, transparency=0)
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / f"sign.{fmt.lower()}").write_bytes(buffer.getvalue())
    row = {"image": f"sign.{fmt.lower()}", "question": "What is drawn?", "answer": "A line."}
    (tmp_path / "qa.jsonl").write_text(json.dumps(row) + "\n")
    [read_row], aside, _ = read(config_for(str(tmp_path / "img"), str(tmp_path / "qa.jsonl"), formats=[fmt]))
    cleaned = Image.open(io.BytesIO(read_row["image_bytes"])).convert("RGBA")
    assert aside == []
    assert cleaned.getpixel((1, 1)) == (0, 0, 0, 0) and cleaned.getpixel((10, 12)) == (0, 0, 0, 255)


def test_image_bytes_survive_shape_and_validation(tmp_path: Path) -> None:
    write_folder(tmp_path)
    _, _, table = read(config_for(str(tmp_path / "img"), str(tmp_path / "qa.jsonl")))
    shaped = Shape(RecordShape(kind="vqa"))(table).kept
    valid = SchemaValidation(VQARecord, name="validate_record")(shaped).kept
    assert valid.num_rows == 4
    assert valid["image_bytes"].to_pylist() == table["image_bytes"].to_pylist()


def test_rerun_takes_new_rows_and_changed_images_only(tmp_path: Path) -> None:
    write_folder(tmp_path)
    config = config_for(str(tmp_path / "img"), str(tmp_path / "qa.jsonl"))
    engine = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    first = Watermarks(engine, "vqa")
    rows, aside, _ = read(config, first.for_source(config))
    assert len(rows) == 4
    first.commit("r1")
    with (tmp_path / "qa.jsonl").open("a") as sidecar:
        sidecar.write(json.dumps({"image": "form.png", "question": "Signed?", "answer": "Yes"}) + "\n")
    (tmp_path / "img" / "rotated.jpg").write_bytes(jpeg_with_exif((30, 30)))
    os.utime(tmp_path / "img" / "rotated.jpg", (1, 1))  # a different mtime whatever the clock's resolution
    second = Watermarks(engine, "vqa")
    rows, aside, _ = read(config, second.for_source(config))
    assert sorted((r["image"], r["question"]) for r in rows) == [
        ("form.png", "Signed?"),
        ("rotated.jpg", "What is in rotated.jpg?"),
    ]
    assert aside == []  # rows already quarantined (a bad image, a malformed line) are not counted again


@pytest.mark.s3
def test_images_from_s3(bucket: str) -> None:
    s3 = boto3.client("s3")
    for name in ("receipt.jpg", "truncated.jpg"):
        s3.put_object(Bucket=bucket, Key=f"vqa/img/{name}", Body=IMAGES[name])
    rows = [
        {"image": "receipt.jpg", "question": "Total?", "answer": "12.50"},
        {"image": "truncated.jpg", "question": "?", "answer": "!"},
    ]
    s3.put_object(Bucket=bucket, Key="vqa/qa.jsonl", Body="".join(json.dumps(r) + "\n" for r in rows).encode())
    got, aside, _ = read(config_for(f"s3://{bucket}/vqa/img", f"s3://{bucket}/vqa/qa.jsonl"))
    assert [r["image"] for r in got] == ["receipt.jpg"]
    assert Image.open(io.BytesIO(got[0]["image_bytes"])).getexif().get_ifd(GPS_IFD) == {}
    assert [(a["reason"], a["source"]["uri"]) for a in aside] == [("truncated", f"s3://{bucket}/vqa/qa.jsonl")]


def grey(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 6), (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.s3
def test_an_s3_image_is_named_by_its_key_as_written_not_as_a_path(bucket: str) -> None:
    # "x/../b.png" was normalised to "b.png" and that object's picture published, though S3 keys are literal
    # (the object "x/../b.png", another picture, is there too); Arrow's reader normalises it the same way.
    s3 = boto3.client("s3")
    for key, value in (("x/../b.png", 7), ("b.png", 8), ("scans//c.png", 9), ("d.png", 10)):
        s3.put_object(Bucket=bucket, Key=f"vqa/img/{key}", Body=grey(value))
    names = ["x/../b.png", "b.png", "scans//c.png", "./d.png"]
    rows = [{"image": name, "question": "Grey?", "answer": "Yes"} for name in names]
    s3.put_object(Bucket=bucket, Key="vqa/qa.jsonl", Body="".join(json.dumps(r) + "\n" for r in rows).encode())
    got, aside, _ = read(config_for(f"s3://{bucket}/vqa/img", f"s3://{bucket}/vqa/qa.jsonl"))
    pixels = {r["image"]: Image.open(io.BytesIO(r["image_bytes"])).getpixel((0, 0)) for r in got}
    # A listed key is read as written; "./d.png", no key of the listing, spells the listed "d.png" another way.
    assert pixels == {"b.png": (8, 8, 8), "scans//c.png": (9, 9, 9), "./d.png": (10, 10, 10)}
    assert [(a["source"]["line"], a["reason"]) for a in aside] == [(1, "missing_image")]
    assert aside[0]["detail"] == (
        f"s3://{bucket}/vqa/qa.jsonl:1: x/../b.png: cannot read s3://{bucket}/vqa/img/x/../b.png (S3 keys are "
        f"taken as written: this is not s3://{bucket}/vqa/img/b.png): {images.NOT_LISTED}"
    )


@pytest.mark.s3
def test_an_s3_image_named_as_the_earlier_release_read_it_still_sees_its_image_change(
    bucket: str, tmp_path: Path
) -> None:
    # The earlier release read "./a.png" and "scans//c.png" as the keys "a.png" and "scans/c.png"; taken as
    # written (no such keys), its rows were quarantined after the upgrade, and an overwritten a.png went unseen.
    s3 = boto3.client("s3")
    for key, value in (("a.png", 1), ("scans/c.png", 2), ("x/b.png", 3)):
        s3.put_object(Bucket=bucket, Key=f"vqa/img/{key}", Body=grey(value))
    names = ["./a.png", "scans//c.png", "x/../x/b.png"]
    rows = [{"image": name, "question": "Grey?", "answer": "Yes"} for name in names]
    s3.put_object(Bucket=bucket, Key="vqa/qa.jsonl", Body="".join(json.dumps(r) + "\n" for r in rows).encode())
    config = config_for(f"s3://{bucket}/vqa/img", f"s3://{bucket}/vqa/qa.jsonl")
    engine = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    first = Watermarks(engine, "vqa")
    got, aside, _ = read(config, first.for_source(config))
    pixels = {r["image"]: Image.open(io.BytesIO(r["image_bytes"])).getpixel((0, 0)) for r in got}
    assert pixels == {"./a.png": (1, 1, 1), "scans//c.png": (2, 2, 2)}
    assert [a["reason"] for a in aside] == ["missing_image"]  # a '..' part still names another object
    first.commit("r1")
    s3.put_object(Bucket=bucket, Key="vqa/img/a.png", Body=grey(4))
    got, aside, _ = read(config, Watermarks(engine, "vqa").for_source(config))
    assert [(r["image"], Image.open(io.BytesIO(r["image_bytes"])).getpixel((0, 0))) for r in got] == [
        ("./a.png", (4, 4, 4))
    ]
    assert aside == []


@pytest.mark.parametrize("written", ["NFC", "NFD"])
def test_an_image_named_in_another_unicode_form_than_its_file_says_so(tmp_path: Path, written: str) -> None:
    # macOS names files decomposed (NFD), an editor types names composed (NFC): the row said only that the
    # file, which looks named the same, was not in the listing. A name is read as written: it is said, not matched.
    on_disk = "NFD" if written == "NFC" else "NFC"
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / unicodedata.normalize(on_disk, "café.png")).write_bytes(png())
    row = {"image": unicodedata.normalize(written, "café.png"), "question": "Menu?", "answer": "Yes"}
    (tmp_path / "qa.jsonl").write_text(json.dumps(row) + "\n")
    reader = ImagesSourceReader(config_for(str(tmp_path / "img"), str(tmp_path / "qa.jsonl")), batch_rows=4)
    [batch] = list(reader.batches())
    aside = batch.set_aside.to_pylist()
    assert batch.rows.num_rows == 0 and [a["reason"] for a in aside] == ["missing_image"]
    other = ascii(unicodedata.normalize(on_disk, "café.png"))
    assert f"(a file named so in another Unicode form is there: {other}): " in aside[0]["detail"]
    assert aside[0]["detail"].endswith(images.NOT_LISTED)  # the row's fault: no run reads it again


def test_vqa_recipe_publishes_clean_images_beside_the_shards(workdir: Path) -> None:
    write_folder(workdir)
    result = run(
        workdir,
        {
            "dataset": "receipts",
            "sources": [{"type": "images", "path": "img", "sidecar": "qa.jsonl", "max_pixels": 1_000_000}],
            "record": {"kind": "vqa"},
            "output": {"validation_fraction": 0.0},
        },
    )
    counts = result.manifest.counts
    assert counts.input == 11 and counts.written == 4
    assert counts.reasons["quarantined"] == {
        "corrupt": 1,
        "decompression_bomb": 1,
        "malformed_json": 1,
        "missing_image": 1,
        "truncated": 1,
        "unsupported": 2,
    }
    version = Path(result.version_uri)
    lines = outputs(version)
    assert sorted(line["prompt"] for line in lines) == sorted(
        ["What is in receipt.jpg?", "What is in rotated.jpg?", "What is in form.png?", "What is the total?"]
    )
    for line in lines:
        published = version / "train" / line["file_name"]
        image = Image.open(published)
        assert dict(image.getexif()) == {} and b"PhoneMaker" not in published.read_bytes()
    assert len({line["file_name"] for line in lines}) == 3  # receipt.jpg asked about twice, stored once


def test_exact_dedup_compares_a_vqa_record_by_its_image_bytes_not_its_path(workdir: Path) -> None:
    (workdir / "img").mkdir()
    for name, data in (("a.png", png()), ("copy-of-a.png", png()), ("other.png", png((32, 32)))):
        (workdir / "img" / name).write_bytes(data)
    rows = [
        ("a.png", "What is the total?", "12.50 USD"),
        ("copy-of-a.png", "What is the total?", "12.50 USD"),  # the same picture under another name
        ("a.png", "  what is the TOTAL? ", " 12.50 usd"),  # case and whitespace at each field's edges
        ("other.png", "What is the total?", "12.50 USD"),  # another picture: a record of its own
    ]
    lines = [json.dumps({"image": i, "question": q, "answer": a}) for i, q, a in rows]
    (workdir / "qa.jsonl").write_text("\n".join(lines) + "\n")
    spec = {
        "dataset": "receipts",
        "sources": [{"type": "images", "path": "img", "sidecar": "qa.jsonl"}],
        "record": {"kind": "vqa"},
        "stages": [{"type": "exact_dedup"}],
        "output": {"validation_fraction": 0.0},
    }
    result = run(workdir, spec)
    assert result.manifest.counts.reasons == {"duplicate": {"exact_duplicate": 2}}
    published = outputs(Path(result.version_uri))
    assert len(published) == 2 and len({line["file_name"] for line in published}) == 2


def test_a_misspelt_image_column_fails_the_run_and_the_fixed_recipe_reads_the_rows(workdir: Path) -> None:
    # Every row was quarantined as missing_image ("the row names no image") and an empty v1 published.
    write_folder(workdir)
    source = {"type": "images", "path": "img", "sidecar": "qa.jsonl", "max_pixels": 1_000_000}
    spec = {"dataset": "receipts", "sources": [{**source, "image_column": "picture"}], "record": {"kind": "vqa"}}
    with pytest.raises(RecipeError, match=r"qa.jsonl:1: column 'picture' \(image_column\) is missing"):
        run(workdir, spec)
    assert not (workdir / "output" / "receipts" / "v1").exists()
    result = run(workdir, {**spec, "sources": [source]})
    assert result.manifest.version == 1 and result.manifest.counts.written == 4


def test_an_images_folder_that_is_not_there_fails_the_run_by_name(workdir: Path) -> None:
    # Every row was quarantined as missing_image and an empty version published, exit 0.
    write_folder(workdir)
    source = {"type": "images", "path": "scans", "sidecar": "qa.jsonl"}
    with pytest.raises(OSError, match=r"scans: no such folder, or no file in it"):
        run(workdir, {"dataset": "receipts", "sources": [source], "record": {"kind": "vqa"}})
    assert not (workdir / "output" / "receipts" / "v1").exists()


def test_near_duplicates_of_vqa_records_are_queued_with_both_images(workdir: Path) -> None:
    from PIL import ImageDraw

    from curation.review.auth import User
    from curation.review.queue import list_items
    from curation.review.views import item_view

    (workdir / "img").mkdir()
    for name, colour in (("blue.png", "blue"), ("orange.png", "orange")):
        picture = Image.new("RGB", (200, 120), "white")
        ImageDraw.Draw(picture).rectangle([20, 20, 120, 100], fill=colour)
        picture.save(workdir / "img" / name)
    (workdir / "img" / "copy-of-blue.png").write_bytes((workdir / "img" / "blue.png").read_bytes())
    said = "The box in the picture is {}, with a black dot beside it."
    rows = [
        ("blue.png", "What colour is the box in this picture?", said.format("blue")),
        ("orange.png", "What colour is the box in this picture?", said.format("orange")),  # other picture, like text
        ("copy-of-blue.png", "Which colour is this box?", "Blue."),  # the same picture, other question
    ]
    (workdir / "qa.jsonl").write_text(
        "".join(json.dumps(dict(zip(("image", "question", "answer"), r, strict=True))) + "\n" for r in rows)
    )
    spec = {
        "dataset": "charts",
        "sources": [{"type": "images", "path": "img", "sidecar": "qa.jsonl"}],
        "record": {"kind": "vqa"},
        "stages": [{"type": "near_dedup", "threshold": 0.5}, {"type": "image_dedup", "match_question": False}],
        "output": {"validation_fraction": 0.0},
    }
    result = run(workdir, spec)
    assert result.manifest.counts.reasons == {"duplicate": {"near_duplicate": 1, "near_duplicate_image": 1}}
    items = {item["stage"]: item for item in list_items(sa.create_engine(f"sqlite:///{workdir / 'state.db'}"))}
    assert set(items) == {"near_dedup", "image_near_dedup"}  # an image near duplicate is queued too

    def shown(data: str) -> tuple[int, int]:
        import base64

        assert data.startswith("data:image/jpeg;base64,")
        with Image.open(io.BytesIO(base64.b64decode(data.split(",", 1)[1]))) as image:
            return image.getpixel((70, 60))

    # Both records' images are on the item, so the annotator sees that the texts ask about two pictures.
    text = json.loads(items["near_dedup"]["payload"])
    assert shown(text["kept"]["thumbnail"])[2] > 200 and shown(text["member"]["thumbnail"])[0] > 200  # blue, orange
    assert text["member"]["fields"] == {"question": rows[1][1], "answer": rows[1][2]}
    image = json.loads(items["image_near_dedup"]["payload"])
    assert image["similarity"] == 1.0 and image["member"]["fields"]["question"] == "Which colour is this box?"
    assert "near duplicate image of" in items["image_near_dedup"]["detail"]
    view = item_view(items["image_near_dedup"], User("rita", "reviewer"))
    assert view["images"] and view["edit_values"] == {"question": "Which colour is this box?", "answer": "Blue."}
    # Shown redacted (a PII stage after the flag's), a reviewer gets neither raw texts nor the images.
    image["member"]["published_text"] = image["kept"]["published_text"] = "<PERSON>"
    view = item_view({**items["image_near_dedup"], "payload": json.dumps(image)}, User("rita", "reviewer"))
    assert not view["images"] and view["images_withheld"]
    assert item_view({**items["image_near_dedup"], "payload": json.dumps(image)}, User("pia", "pii-reviewer"))["images"]
    # The item page shows them.
    from curation.review.app import create_app
    from curation.review.auth import add_user
    from tests.review_seed import PASSWORD
    from tests.test_review_access import signed_in

    add_user(sa.create_engine(f"sqlite:///{workdir / 'state.db'}"), "pia", "pii-reviewer", PASSWORD)
    app = create_app(f"sqlite:///{workdir / 'state.db'}", [load_recipe(workdir / "recipe.yaml")])
    client, csrf = signed_in(app, "pia")
    page = client.get(f"/items/{items['near_dedup']['item_id']}").text
    assert page.count('<img class="record-image"') == 2 and text["member"]["thumbnail"] in page
    # The picture is read before the review stage: its name is not a field an edit could change.
    assert re.findall(r'<option value="([^"]+)"', page) == ["question", "answer"]
    seen = re.search(r'name="seen" value="([^"]+)"', page).group(1)
    edit = {"action": "edit", "field": "image", "value": "orange.png", "csrf_token": csrf, "seen": seen}
    response = client.post(f"/items/{items['near_dedup']['item_id']}/decide", data=edit)
    assert response.status_code == 400 and "cannot be edited on this item" in response.text


def test_a_vqa_record_set_aside_by_validation_keeps_its_image_as_a_size_not_a_bytes_repr(workdir: Path) -> None:
    from curation.review.queue import list_items
    from tests.helpers import set_aside

    (workdir / "img").mkdir()
    (workdir / "img" / "a.png").write_bytes(png((300, 200)))
    rows = [
        {"image": "a.png", "question": "", "answer": "Nothing."},
        {"image": "a.png", "question": "Q?", "answer": "Answer."},
    ]
    (workdir / "qa.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = {
        "dataset": "charts",
        "sources": [{"type": "images", "path": "img", "sidecar": "qa.jsonl"}],
        "record": {"kind": "vqa"},
        "stages": [{"type": "expectations", "expect": [{"column": "answer", "check": "length_between", "max": 3}]}],
        "output": {"validation_fraction": 0.0},
    }
    result = run(workdir, spec)
    assert result.manifest.counts.quarantined == 2 and result.manifest.counts.reasons["quarantined"]["schema"] == 1
    # Python's repr of the image bytes spelt every byte as an escape: megabytes of text for a photo,
    # in set_aside/, the review queue and the page.
    (item_a, item_b) = list_items(sa.create_engine(f"sqlite:///{workdir / 'state.db'}"), kind="quarantined")
    for record in [row["record"] for row in set_aside(Path(result.version_uri))] + [
        json.loads(item["payload"])["record"] for item in (item_a, item_b)
    ]:
        assert json.loads(record)["image_bytes"].endswith(" bytes>") and "\\x" not in record


def test_a_vqa_record_quarantined_by_its_template_keeps_its_image_as_a_size_not_a_bytes_repr(workdir: Path) -> None:
    from curation.review.queue import list_items
    from tests.helpers import set_aside

    (workdir / "img").mkdir()
    (workdir / "img" / "a.png").write_bytes(png((300, 200)))
    rows = [{"image": "a.png", "q": "Q?", "answer": "Answer."}, {"image": "a.png", "answer": "No question."}]
    (workdir / "qa.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = {
        "dataset": "charts",
        "sources": [{"type": "images", "path": "img", "sidecar": "qa.jsonl"}],
        "record": {"kind": "vqa", "question": "{{ q }}"},  # the second row has no q: the template fails
        "output": {"validation_fraction": 0.0},
    }
    result = run(workdir, spec)
    assert result.manifest.counts.reasons["quarantined"] == {"template": 1}
    (row,) = set_aside(Path(result.version_uri))
    (item,) = list_items(sa.create_engine(f"sqlite:///{workdir / 'state.db'}"), kind="quarantined")
    for record in (row["record"], json.loads(item["payload"])["record"]):
        assert json.loads(record)["image_bytes"].endswith(" bytes>") and "\\x" not in record


def test_a_near_dedup_comparing_the_image_name_does_not_offer_it_for_an_edit(workdir: Path) -> None:
    from PIL import ImageDraw

    from curation.review.app import create_app
    from curation.review.auth import add_user
    from curation.review.queue import list_items
    from tests.review_seed import PASSWORD
    from tests.test_review_access import signed_in

    (workdir / "img").mkdir()
    for name, colour in (("blue.png", "blue"), ("orange.png", "orange")):
        picture = Image.new("RGB", (200, 120), "white")
        ImageDraw.Draw(picture).rectangle([20, 20, 120, 100], fill=colour)
        picture.save(workdir / "img" / name)
    rows = [("blue.png", "Blue, with a dot."), ("orange.png", "Orange, with a dot.")]
    question = "What colour is the box in this picture?"
    (workdir / "qa.jsonl").write_text(
        "".join(json.dumps({"image": image, "question": question, "answer": answer}) + "\n" for image, answer in rows)
    )
    spec = {
        "dataset": "charts",
        "sources": [{"type": "images", "path": "img", "sidecar": "qa.jsonl"}],
        "record": {"kind": "vqa"},
        # The stage compares the image's name too: the flag holds it among the set-aside record's fields.
        "stages": [{"type": "near_dedup", "threshold": 0.3, "fields": ["question", "image"]}],
        "output": {"validation_fraction": 0.0},
    }
    assert run(workdir, spec).manifest.counts.duplicate == 1
    url = f"sqlite:///{workdir / 'state.db'}"
    add_user(sa.create_engine(url), "pia", "pii-reviewer", PASSWORD)
    (item,) = list_items(sa.create_engine(url), kind="near_duplicate")
    assert json.loads(item["payload"])["member"]["fields"]["image"] == "orange.png"
    client, csrf = signed_in(create_app(url, [load_recipe(workdir / "recipe.yaml")]), "pia")
    page = client.get(f"/items/{item['item_id']}").text
    assert re.findall(r'<option value="([^"]+)"', page) == ["question", "answer"]
    seen = re.search(r'name="seen" value="([^"]+)"', page).group(1)
    edit = {"action": "edit", "field": "image", "value": "blue.png", "csrf_token": csrf, "seen": seen}
    response = client.post(f"/items/{item['item_id']}/decide", data=edit)
    assert response.status_code == 400 and "cannot be edited on this item" in response.text


@pytest.mark.parametrize("setting", ["question_column", "answer_column"])
def test_a_misspelt_question_or_answer_column_fails_the_run_by_its_setting(workdir: Path, setting: str) -> None:
    # The misspelt name was passed over: the sidecar's own "question" column was published as if named,
    # and for a sidecar without one the error named "question", a column the recipe never mentions.
    write_folder(workdir)
    source = {"type": "images", "path": "img", "sidecar": "qa.jsonl", "max_pixels": 1_000_000}
    spec = {"dataset": "receipts", "sources": [{**source, setting: "qestion"}], "record": {"kind": "vqa"}}
    with pytest.raises(RecipeError, match=rf"qa.jsonl:1: column 'qestion' \({setting}\) is missing"):
        run(workdir, spec)
    assert not (workdir / "output" / "receipts" / "v1").exists()
    # Named as the sidecar has it, the setting is read.
    result = run(workdir, {**spec, "sources": [{**source, setting: setting.split("_")[0]}]})
    assert result.manifest.version == 1 and result.manifest.counts.written == 4


def test_an_image_moved_away_once_taken_keeps_its_record(workdir: Path) -> None:
    # Its row was taken again and quarantined as missing_image, which took its record out of the dataset.
    spec, first = taken_then_archived(workdir)
    assert first.manifest.counts.written == 4
    with (workdir / "qa.jsonl").open("a") as sidecar:
        sidecar.write(json.dumps({"image": "rotated.jpg", "question": "Which way up?", "answer": "Upright."}) + "\n")
    second = run(workdir, spec)
    assert second.manifest.extends == 1 and second.manifest.counts.input == 1
    assert second.manifest.counts.quarantined == 0 and second.manifest.stats["carry"]["replaced"] == 0
    prompts = [line["prompt"] for line in outputs(Path(second.version_uri))]
    assert sorted(prompts) == sorted([*(line["prompt"] for line in outputs(Path(first.version_uri))), "Which way up?"])
    assert "What is in form.png?" in prompts
    # Back again, changed: taken again, and its record is the new image's.
    (workdir / "img" / "form.png").write_bytes(png((20, 20)))
    third = run(workdir, spec)
    assert third.manifest.counts.input == 1 and third.manifest.stats["carry"]["replaced"] == 1


def test_an_image_moved_away_once_taken_keeps_its_record_when_another_row_of_its_sidecar_is_corrected(
    workdir: Path,
) -> None:
    # The edited sidecar was read again whole: the archived image's row was quarantined as missing_image,
    # and its record, as one of the sidecar's, replaced: it left the dataset.
    spec, first = taken_then_archived(workdir)
    sidecar = workdir / "qa.jsonl"
    sidecar.write_text(sidecar.read_text().replace("12.50 USD", "13.50 USD"))  # a corrected answer
    second = run(workdir, spec)
    assert second.manifest.extends == 1
    # missing.jpg only, named but never there: form.png's row is not quarantined.
    assert second.manifest.counts.reasons["quarantined"]["missing_image"] == 1
    published = {line["prompt"]: line["completion"] for line in outputs(Path(second.version_uri))}
    before = {line["prompt"]: line["completion"] for line in outputs(Path(first.version_uri))}
    assert published == {**before, "What is the total?": "13.50 USD"}
    assert "What is in form.png?" in published


def test_an_image_moved_away_keeps_its_record_when_the_corrected_sidecar_holds_a_null(workdir: Path) -> None:
    # A null in a JSONL block hands each row's line on in a hidden column (``INPUT_LINE_COLUMN``): it was
    # in the row's watermark item, so the archived image's row, its item changed, was not known as taken,
    # was quarantined as missing_image and its record left the dataset.
    spec, _ = taken_then_archived(workdir)
    sidecar = workdir / "qa.jsonl"
    unanswered = json.dumps({"image": "receipt.jpg", "question": "Paid by?", "answer": None})
    sidecar.write_text(sidecar.read_text().replace("12.50 USD", "13.50 USD") + unanswered + "\n")
    second = run(workdir, spec)
    assert second.manifest.counts.reasons["quarantined"].get("missing_image") == 1  # missing.jpg only
    assert "What is in form.png?" in {line["prompt"] for line in outputs(Path(second.version_uri))}


@pytest.mark.parametrize("where", ["inserted", "appended"])
def test_an_image_moved_away_keeps_its_record_when_a_line_with_a_new_key_is_added_to_its_sidecar(
    workdir: Path, where: str
) -> None:
    # A row's watermark item held every column of its JSONL block, nulls for keys only other lines have
    # too: a line with a new key ("note") changed every row's item, so the archived image's row was not
    # known as taken, was quarantined as missing_image and its record left the dataset; the rows taken
    # before whose images are still there were taken again.
    spec, first = taken_then_archived(workdir)
    sidecar = workdir / "qa.jsonl"
    noted = json.dumps({"image": "rotated.jpg", "question": "Which way up?", "answer": "Upright.", "note": "checked"})
    text = sidecar.read_text()
    sidecar.write_text(noted + "\n" + text if where == "inserted" else text + noted + "\n")
    second = run(workdir, spec)
    counts = second.manifest.counts
    published = {line["prompt"]: line["completion"] for line in outputs(Path(second.version_uri))}
    before = {line["prompt"]: line["completion"] for line in outputs(Path(first.version_uri))}
    assert published == {**before, "Which way up?": "Upright."}  # form.png's record kept
    if where == "appended":  # the new line alone is read
        assert (counts.input, counts.written, counts.quarantined) == (1, 1, 0)
    else:  # read again whole: every row but form.png's (kept as published), the malformed line counted before
        # (written: the three rows whose images are still there, and the new one).
        assert (counts.input, counts.written, counts.carried) == (len(sidecar_rows()), 4, 1)
        quarantined_before = first.manifest.counts.reasons["quarantined"]  # missing_image: missing.jpg's alone
        assert counts.reasons["quarantined"] == {k: n for k, n in quarantined_before.items() if k != "malformed_json"}
    assert counts.input == counts.written + counts.filtered + counts.duplicate + counts.quarantined
    assert run(workdir, spec).message.startswith("nothing new")


def test_row_watermarks_written_before_nulls_were_left_out_of_them_are_still_honoured(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Items are hashed without the row's nulls now: looked up only so, a row holding one (here "note",
    # which one line has) was taken again on the first run after the upgrade, and the archived image's
    # row was quarantined as missing_image, its record leaving the dataset.
    from connectors import images

    write_folder(workdir)
    sidecar = workdir / "qa.jsonl"
    noted = {"image": "scan.bmp", "question": "Scanned?", "answer": "Yes.", "note": "checked"}
    sidecar.write_text(json.dumps(noted) + "\n" + sidecar.read_text())
    spec = receipts()
    with monkeypatch.context() as old:  # a run before the upgrade
        old.setattr(images, "_row_item", lambda row: images._row_items_before(row)[1])
        first = run(workdir, spec)
    assert run(workdir, spec).message.startswith("nothing new")  # no row taken again
    (workdir / "img" / "form.png").rename(workdir / "form.png")  # archived after the run took it
    sidecar.write_text(sidecar.read_text().replace("12.50 USD", "13.50 USD"))
    second = run(workdir, spec)
    before = {line["prompt"]: line["completion"] for line in outputs(Path(first.version_uri))}
    published = {line["prompt"]: line["completion"] for line in outputs(Path(second.version_uri))}
    assert published == {**before, "What is the total?": "13.50 USD"}  # form.png's record kept
    assert second.manifest.counts.reasons["quarantined"]["missing_image"] == 1  # missing.jpg's alone
    # Staged under its new item by that run: a line with yet another key (its old item changed) keeps it too.
    sidecar.write_text(json.dumps({**noted, "question": "Scanned twice?", "by": "ops"}) + "\n" + sidecar.read_text())
    third = run(workdir, spec)
    assert "What is in form.png?" in {line["prompt"] for line in outputs(Path(third.version_uri))}
    assert third.manifest.counts.reasons["quarantined"]["missing_image"] == 1


@pytest.mark.parametrize("sidecar", ["qa.jsonl", "qa.jsonl.gz"])
def test_a_row_appended_that_repeats_one_taken_before_is_counted_a_duplicate(workdir: Path, sidecar: str) -> None:
    # Rows were told apart by their content alone: the repeat looked taken before and was left out,
    # in no count of the manifest.
    write_folder(workdir)
    if sidecar.endswith(".gz"):  # appended to as gzip allows: another member after the first
        (workdir / sidecar).write_bytes(gzip.compress((workdir / "qa.jsonl").read_bytes()))
        (workdir / "qa.jsonl").unlink()
    spec = {
        "dataset": "receipts",
        "sources": [{"type": "images", "path": "img", "sidecar": sidecar, "max_pixels": 1_000_000}],
        "record": {"kind": "vqa"},
        "output": {"validation_fraction": 0.0},
    }
    run(workdir, spec)
    again = {"image": "receipt.jpg", "question": "What is the total?", "answer": "12.50 USD"}
    assert again in sidecar_rows()
    rows = [again, {"image": "form.png", "question": "Signed?", "answer": "Yes"}]
    appended = "".join(json.dumps(row) + "\n" for row in rows).encode()
    with (workdir / sidecar).open("ab") as file:
        file.write(gzip.compress(appended) if sidecar.endswith(".gz") else appended)
    counts = run(workdir, spec).manifest.counts
    assert (counts.input, counts.written, counts.duplicate) == (2, 1, 1)
    assert counts.reasons == {"duplicate": {"earlier_version": 1}}  # a duplicate of a published record
    assert run(workdir, spec).message.startswith("nothing new")  # and neither is taken a third time


def test_a_phone_jpeg_holding_a_second_picture_is_read_as_the_jpeg_it_is(tmp_path: Path) -> None:
    # Pillow names such a JPEG (CIPA Multi-Picture Format: a depth map, a preview) MPO: it was
    # quarantined as unsupported ("MPO images are not accepted") with JPEG among the formats.
    buffer = io.BytesIO()
    photo = Image.new("RGB", (40, 30), (200, 30, 30))
    photo.save(buffer, "MPO", save_all=True, append_images=[Image.new("RGB", (20, 15), (30, 30, 200))])
    assert Image.open(io.BytesIO(buffer.getvalue())).format == "MPO"
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "portrait.jpg").write_bytes(buffer.getvalue())
    (tmp_path / "qa.jsonl").write_text(json.dumps({"image": "portrait.jpg", "question": "Colour?", "answer": "Red"}))
    rows, aside, _ = read(config_for(str(tmp_path / "img"), str(tmp_path / "qa.jsonl")))
    assert aside == [] and len(rows) == 1
    kept = Image.open(io.BytesIO(rows[0]["image_bytes"]))
    assert (kept.format, kept.size, getattr(kept, "n_frames", 1)) == ("JPEG", (40, 30), 1)  # the photo alone


@pytest.mark.parametrize("name", ["./form.png", "sub/../form.png", "scans//../form.png"])
def test_an_image_named_with_a_leading_dot_slash_is_taken_again_when_it_changes(workdir: Path, name: str) -> None:
    # "./form.png" was looked up as such among the folder's files, which list "form.png": it had no
    # fingerprint, so a run never saw the image change and its old picture stayed published. On local
    # disk such a name stays a path (S3 takes it as a key), so a run after an upgrade finds the image
    # unchanged, and one changed replaces the record under the same id.
    (workdir / "img").mkdir()
    (workdir / "img" / "form.png").write_bytes(png((20, 20)))
    row = {"image": name, "question": "Signed?", "answer": "Yes"}
    (workdir / "qa.jsonl").write_text(json.dumps(row) + "\n")
    spec = {
        "dataset": "forms",
        "sources": [{"type": "images", "path": "img", "sidecar": "qa.jsonl"}],
        "record": {"kind": "vqa"},
        "output": {"validation_fraction": 0.0},
    }
    first = run(workdir, spec)
    assert first.manifest.counts.written == 1
    assert run(workdir, spec).message.startswith("nothing new")
    (workdir / "img" / "form.png").write_bytes(png((30, 30)))
    os.utime(workdir / "img" / "form.png", (1, 1))
    second = run(workdir, spec)
    assert second.manifest.counts.written == 1 and second.manifest.stats["carry"]["replaced"] == 1
    ids = [[r["id"] for r in lineage_rows(result.version_uri)] for result in (first, second)]
    assert ids[0] == ids[1] and len(ids[0]) == 1
    [line] = outputs(Path(second.version_uri))
    assert Image.open(Path(second.version_uri) / "train" / line["file_name"]).size == (30, 30)


def test_images_named_up_a_folder_from_the_recipe_are_taken_again_when_changed_and_kept_when_moved_away(
    workdir: Path,
) -> None:
    # The recipe's "../data/img" kept its "..", the listing did not: no image was found listed, so none had a
    # fingerprint. One changed in place was never read again, and one moved away lost its record.
    (workdir / "data" / "img").mkdir(parents=True)
    (workdir / "data" / "img" / "form.png").write_bytes(png((20, 20)))
    (workdir / "data" / "img" / "scan.png").write_bytes(png((24, 24)))
    rows = [{"image": name, "question": f"What is {name}?", "answer": "A form."} for name in ("form.png", "scan.png")]
    write_jsonl(workdir / "data" / "qa.jsonl", rows)
    (workdir / "recipes").mkdir()
    spec = {
        "dataset": "forms",
        "sources": [{"type": "images", "path": "../data/img", "sidecar": "../data/qa.jsonl"}],
        "record": {"kind": "vqa"},
        "output": {"validation_fraction": 0.0},
    }
    assert run(workdir / "recipes", spec).manifest.counts.written == 2
    (workdir / "data" / "img" / "form.png").write_bytes(png((30, 30)))
    os.utime(workdir / "data" / "img" / "form.png", (1, 1))
    second = run(workdir / "recipes", spec)
    assert second.manifest.counts.input == 1 and second.manifest.stats["carry"]["replaced"] == 1
    files = {line["prompt"]: line["file_name"] for line in outputs(Path(second.version_uri))}
    assert Image.open(Path(second.version_uri) / "train" / files["What is form.png?"]).size == (30, 30)
    (workdir / "data" / "img" / "scan.png").rename(workdir / "scan.png")  # archived once taken
    write_jsonl(workdir / "data" / "qa.jsonl", [rows[0] | {"answer": "A signed form."}, rows[1]])
    third = run(workdir / "recipes", spec)
    assert third.manifest.counts.quarantined == 0
    published = {line["prompt"]: line["completion"] for line in outputs(Path(third.version_uri))}
    assert published == {"What is form.png?": "A signed form.", "What is scan.png?": "A form."}


@pytest.mark.parametrize("sidecar", ["qa.csv", "qa.jsonl"])
def test_an_unchanged_sidecar_with_lines_ending_in_cr_alone_publishes_nothing_new(workdir: Path, sidecar: str) -> None:
    # The lines an earlier run read were counted at LFs only, while the sidecar's rows are numbered at
    # a lone CR too (Excel's "CSV (Macintosh)"): every row past the first looked appended and was taken
    # again on each scheduled run.
    write_folder(workdir)
    rows = sidecar_rows()
    if sidecar.endswith(".csv"):
        lines = ["image,question,answer"] + [f"{r['image']},{r['question']},{r['answer']}" for r in rows]
    else:
        lines = [json.dumps(row) for row in rows]
    (workdir / sidecar).write_bytes(("\r".join(lines) + "\r").encode())
    spec = {
        "dataset": "receipts",
        "sources": [{"type": "images", "path": "img", "sidecar": sidecar, "max_pixels": 1_000_000}],
        "record": {"kind": "vqa"},
        "output": {"validation_fraction": 0.0},
    }
    assert run(workdir, spec).manifest.counts.written == 4
    assert run(workdir, spec).message.startswith("nothing new")
    with (workdir / sidecar).open("ab") as file:  # a row appended is taken, and only it
        file.write(
            b"form.png,Signed?,Yes\r"
            if sidecar.endswith(".csv")
            else b'{"image": "form.png", "question": "Signed?", "answer": "Yes"}\r'
        )
    counts = run(workdir, spec).manifest.counts
    assert (counts.input, counts.written) == (1, 1)


def test_an_unchanged_parquet_sidecar_publishes_nothing_new(workdir: Path) -> None:
    # The rows an earlier run read were counted as the newlines in the file's bytes, which a Parquet
    # file holds by chance: each row numbered past that count was taken again on every scheduled run.
    import pyarrow.parquet as pq

    write_folder(workdir)
    rows = [{"image": "form.png", "question": f"Is box {i} ticked?", "answer": "Yes"} for i in range(300)]
    pq.write_table(pa.Table.from_pylist(rows), workdir / "qa.parquet")
    assert (workdir / "qa.parquet").read_bytes().count(b"\n") < len(rows)
    spec = {
        "dataset": "forms",
        "sources": [{"type": "images", "path": "img", "sidecar": "qa.parquet", "max_pixels": 1_000_000}],
        "record": {"kind": "vqa"},
        "output": {"validation_fraction": 0.0},
    }
    assert run(workdir, spec).manifest.counts.written == 300
    assert run(workdir, spec).message.startswith("nothing new")


def test_a_parquet_sidecars_text_that_is_not_utf8_quarantines_its_row(workdir: Path) -> None:
    # An image name that is not UTF-8 failed the run with "Invalid UTF8 payload" from inside pyarrow.
    import pyarrow.parquet as pq

    def not_checked(values: list[bytes]) -> pa.Array:  # as a Parquet file may hold them: readers do not check
        return pa.array(values, pa.binary()).view(pa.string())

    write_folder(workdir)
    names = not_checked([b"form.png", b"caf\xe9.png", b"form.png", b"form.png"])
    questions = not_checked([b"Signed?", b"Dated?", b"Caf\xe9?", b"Ticked?"])
    meta = pa.StructArray.from_arrays([not_checked([b"ok", b"ok", b"ok", b"caf\xe9"])], names=["note"])
    table = pa.table({"image": names, "question": questions, "answer": ["Yes"] * 4, "meta": meta})
    pq.write_table(table, workdir / "qa.parquet")
    spec = {
        "dataset": "forms",
        "sources": [{"type": "images", "path": "img", "sidecar": "qa.parquet", "max_pixels": 1_000_000}],
        "record": {"kind": "vqa"},
        "output": {"validation_fraction": 0.0},
    }
    result = run(workdir, spec)
    assert [line["prompt"] for line in outputs(Path(result.version_uri))] == ["Signed?"]
    sidecar, problem = workdir / "qa.parquet", "holds bytes that are not UTF-8 text (byte 0xe9 at 4"
    assert sorted(
        (row["source"]["line"], row["reason"], row["detail"]) for row in set_aside(Path(result.version_uri))
    ) == [
        (2, "schema", f"{sidecar}:2: column 'image' {problem})"),
        (3, "schema", f"{sidecar}:3: question: column 'question' {problem})"),
        (4, "schema", f"{sidecar}:4: column 'meta' {problem} of a value)"),
    ]


def _parquet_sidecar(path: Path, rows: list[tuple[bytes, str, str]]) -> None:
    """``rows`` of (image, question, answer) as a Parquet sidecar, the image names written unchecked (a
    Parquet file may hold text that is not UTF-8: its readers do not check)."""
    import pyarrow.parquet as pq

    names = pa.array([name for name, _, _ in rows], pa.binary()).view(pa.string())
    questions, answers = [q for _, q, _ in rows], [a for _, _, a in rows]
    notes = pa.nulls(len(rows), pa.string())  # a null in each row, which its watermark item leaves out
    pq.write_table(pa.table({"image": names, "question": questions, "answer": answers, "note": notes}), path)


def forms(batch_rows: int = 50_000) -> dict:
    """``receipts`` reading the Parquet sidecar ``qa.parquet``."""
    source = {"type": "images", "path": "img", "sidecar": "qa.parquet", "max_pixels": 1_000_000}
    return {**receipts(), "dataset": "forms", "sources": [source], "batch_rows": batch_rows}


def test_a_rows_watermark_does_not_change_with_a_neighbour_whose_image_name_is_not_utf8(workdir: Path) -> None:
    # A bad name made the whole batch's image column bytes: the good rows' watermark items were taken of
    # "b'form.png'", and read in other batches (a recipe's batch_rows changed) they were taken again.
    write_folder(workdir)
    rows = [(b"form.png", "Signed?", "Yes"), (b"caf\xe9.png", "Dated?", "Yes"), (b"receipt.jpg", "Total?", "12.50")]
    _parquet_sidecar(workdir / "qa.parquet", rows)
    first = run(workdir, forms())
    assert (first.manifest.counts.written, first.manifest.counts.reasons["quarantined"]) == (2, {"schema": 1})
    second = run(workdir, forms(batch_rows=1))  # each row alone: the good rows' names are text
    assert second.manifest is None and second.message.startswith("nothing new since forms v1"), second.message


def test_row_watermarks_written_with_bytes_as_python_writes_them_are_still_honoured(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Items read UTF-8 bytes as their text now: looked up only so, the rows a run before the upgrade
    # took as bytes (a neighbour's name not UTF-8) would be taken again and published a second time.
    from connectors import images

    write_folder(workdir)
    rows = [(b"form.png", "Signed?", "Yes"), (b"caf\xe9.png", "Dated?", "Yes"), (b"receipt.jpg", "Total?", "12.50")]
    _parquet_sidecar(workdir / "qa.parquet", rows)
    with monkeypatch.context() as old:  # a run before the upgrade
        old.setattr(images, "_row_item", lambda row: images._row_items_before(row)[0])
        assert run(workdir, forms()).manifest.counts.written == 2
    assert run(workdir, forms()).message.startswith("nothing new since forms v1")
    assert run(workdir, forms(batch_rows=1)).message.startswith("nothing new since forms v1")  # staged anew


def test_an_edited_parquet_sidecar_whose_image_names_are_bytes_takes_a_changed_image_once(workdir: Path) -> None:
    # Its rows' names were looked up as "b'form.png'": a present image read as archived, its record kept
    # beside the one taken again of the image as it is now.
    write_folder(workdir)
    rows = [(b"form.png", "Signed?", "Yes"), (b"caf\xe9.png", "Dated?", "Yes"), (b"receipt.jpg", "Total?", "12.50")]
    _parquet_sidecar(workdir / "qa.parquet", rows)
    run(workdir, forms())
    (workdir / "img" / "form.png").write_bytes(png((20, 20)))  # the image changed
    _parquet_sidecar(workdir / "qa.parquet", [*rows[:2], (b"receipt.jpg", "Total?", "13.50")])  # an answer corrected
    second = run(workdir, forms())
    published = [(line["prompt"], line["completion"]) for line in outputs(Path(second.version_uri))]
    assert sorted(published) == [("Signed?", "Yes"), ("Total?", "13.50")]
    assert second.manifest.stats["carry"]["replaced"] == 2


def test_an_image_that_could_not_be_read_is_read_again_on_the_next_run(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its row's watermark was committed with the image's fingerprint: the image unchanged once readable
    # again (chmod does not move the mtime), no later run read it, and its row was never published.
    import connectors.images as images

    write_folder(workdir)
    spec = receipts()
    listed = images.filesystem

    def refusing(uri: str) -> tuple[object, str]:
        fs, path = listed(uri)
        return Refusing(fs, str(workdir / "img" / "form.png")), path

    monkeypatch.setattr(images, "filesystem", refusing)
    first = run(workdir, spec)
    assert first.manifest.counts.written == 3 and first.manifest.counts.reasons["quarantined"]["unreadable"] == 1
    [refused] = [row for row in set_aside(Path(first.version_uri)) if row["reason"] == "unreadable"]
    assert refused["detail"].endswith("form.png (Permission denied); the next run reads it again")
    monkeypatch.setattr(images, "filesystem", listed)  # readable again, the file untouched
    second = run(workdir, spec)
    assert (second.manifest.counts.input, second.manifest.counts.written) == (1, 1)
    assert "What is in form.png?" in [line["prompt"] for line in outputs(Path(second.version_uri))]
    assert run(workdir, spec).message.startswith("nothing new")


def test_an_image_that_stays_unreadable_does_not_publish_a_version_each_run(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Read again on every scheduled run, it was quarantined again each time, and each run published a
    # version whose only news was that quarantine. It is counted in the version that first met it.
    import connectors.images as images

    write_folder(workdir)
    spec = receipts()
    listed = images.filesystem
    monkeypatch.setattr(
        images, "filesystem", lambda uri: (Refusing(listed(uri)[0], str(workdir / "img" / "form.png")), listed(uri)[1])
    )
    first = run(workdir, spec)
    assert first.manifest.counts.reasons["quarantined"]["unreadable"] == 1
    with caplog.at_level("WARNING"):
        second = run(workdir, spec)
    assert second.manifest is None and second.message.startswith("nothing new since receipts v1")
    assert (
        "1 input(s) (files, image rows) still cannot be read" in second.message
        and "form.png (Permission denied)" in second.message
    )
    assert "form.png (Permission denied)" in caplog.text
    monkeypatch.setattr(images, "filesystem", listed)  # readable at last: the row is taken
    third = run(workdir, spec)
    assert third.manifest.version == 2 and (third.manifest.counts.input, third.manifest.counts.written) == (1, 1)


def test_a_first_run_that_can_read_none_of_its_images_publishes_nothing_and_fails(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It published a v1 holding no record, only the rows quarantined as unreadable: as for files.
    import connectors.images as images
    from connectors.storage import StorageError
    from curation.published import published_versions

    (workdir / "img").mkdir()
    (workdir / "img" / "form.png").write_bytes(png())
    write_jsonl(workdir / "qa.jsonl", [{"image": "form.png", "question": q, "answer": "Yes"} for q in ("A?", "B?")])
    spec = receipts()
    listed = images.filesystem
    monkeypatch.setattr(
        images, "filesystem", lambda uri: (Refusing(listed(uri)[0], str(workdir / "img" / "form.png")), listed(uri)[1])
    )
    for _ in range(2):  # nothing committed: the next run reads them again, and fails alike
        with pytest.raises(StorageError) as error:
            run(workdir, spec)
        assert str(error.value).startswith("receipts: 2 input(s) (files, image rows) cannot be read, e.g. ")
        assert "form.png (Permission denied); the next run reads it again" in str(error.value)
    assert published_versions(str(workdir / "output"), "receipts") == []
    monkeypatch.setattr(images, "filesystem", listed)
    first = run(workdir, spec)
    assert (first.manifest.version, first.manifest.counts.input, first.manifest.counts.written) == (1, 2, 2)


def test_a_full_refresh_that_can_read_none_of_its_images_says_a_run_with_full_refresh_reads_them_again(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The connector's own detail said "the next run reads it again", but a plain run reads on from v1's
    # watermarks (the image is as it was) and finds nothing new.
    from connectors.storage import StorageError

    (workdir / "img").mkdir()
    (workdir / "img" / "form.png").write_bytes(png())
    write_jsonl(workdir / "qa.jsonl", [{"image": "form.png", "question": "Signed?", "answer": "Yes"}])
    spec = receipts()
    assert run(workdir, spec).manifest.counts.written == 1
    listed = images.filesystem
    refused = workdir / "img" / "form.png"
    monkeypatch.setattr(images, "filesystem", lambda uri: (Refusing(listed(uri)[0], str(refused)), listed(uri)[1]))
    with pytest.raises(StorageError) as failed:
        run(workdir, spec, full_refresh=True)
    assert str(failed.value) == (
        f"receipts: 1 input(s) (files, image rows) cannot be read, e.g. {workdir / 'qa.jsonl'}:1: form.png: "
        f"cannot read {refused} (Permission denied); the next run with --full-refresh reads it again"
    )
    monkeypatch.setattr(images, "filesystem", listed)
    assert run(workdir, spec).message.startswith("nothing new since receipts v1")
    again = run(workdir, spec, full_refresh=True).manifest
    assert (again.version, again.counts.input, again.counts.written) == (2, 1, 1)


def test_a_row_naming_a_folder_is_not_said_to_be_read_again(workdir: Path) -> None:
    # Not a file the listing found: the row's fault, which no run mends; an image beside it is published.
    (workdir / "img" / "scans").mkdir(parents=True)
    (workdir / "img" / "form.png").write_bytes(png())
    rows = [{"image": name, "question": "Signed?", "answer": "Yes"} for name in ("form.png", "scans")]
    write_jsonl(workdir / "qa.jsonl", rows)
    spec = receipts()
    first = run(workdir, spec)
    assert (first.manifest.counts.written, first.manifest.counts.reasons["quarantined"]) == (1, {"unreadable": 1})
    [folder] = set_aside(Path(first.version_uri))
    assert folder["detail"] == (
        f"{workdir / 'qa.jsonl'}:2: scans: cannot read {workdir / 'img' / 'scans'}: not a file of the source's listing"
    )
    assert run(workdir, spec).message.startswith("nothing new since receipts v1")


def test_a_listed_image_gone_before_it_is_opened_is_said_to_be_read_again_and_is(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Listed, then moved away before its row was read: for now only, as one it may not read. Its row was
    # `missing_image`, whose detail no longer said that the next run reads it again, though it does.
    (workdir / "img").mkdir()
    (workdir / "img" / "form.png").write_bytes(png())
    (workdir / "img" / "other.png").write_bytes(png((32, 32)))  # not a copy of form.png's record
    rows = [{"image": name, "question": "Signed?", "answer": "Yes"} for name in ("form.png", "other.png")]
    write_jsonl(workdir / "qa.jsonl", rows)
    spec = receipts()
    gone, kept = workdir / "img" / "form.png", workdir / "form.png"
    listed = images.filesystem

    class Vanishing(Refusing):
        def open_input_stream(self, path: str, *args: object, **kwargs: object) -> object:
            if path == self.refused and gone.exists():
                gone.rename(kept)
            return self.fs.open_input_stream(path, *args, **kwargs)

    monkeypatch.setattr(images, "filesystem", lambda uri: (Vanishing(listed(uri)[0], str(gone)), listed(uri)[1]))
    first = run(workdir, spec)
    assert (first.manifest.counts.written, first.manifest.counts.reasons["quarantined"]) == (1, {"unreadable": 1})
    [row] = set_aside(Path(first.version_uri))
    assert row["detail"] == (
        f"{workdir / 'qa.jsonl'}:1: form.png: cannot read {gone} (No such file or directory); "
        "the next run reads it again"
    )
    monkeypatch.setattr(images, "filesystem", listed)
    kept.rename(gone)
    again = run(workdir, spec).manifest
    assert (again.version, again.counts.input, again.counts.written) == (2, 1, 1)


def test_an_image_that_could_not_be_read_and_was_then_moved_away_is_quarantined_as_missing(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Never published, it is not an image taken and archived since: its row is not left out unseen.
    import connectors.images as images

    write_folder(workdir)
    spec = receipts()
    listed = images.filesystem
    monkeypatch.setattr(
        images, "filesystem", lambda uri: (Refusing(listed(uri)[0], str(workdir / "img" / "form.png")), listed(uri)[1])
    )
    run(workdir, spec)
    monkeypatch.setattr(images, "filesystem", listed)
    (workdir / "img" / "form.png").rename(workdir / "form.png")
    counts = run(workdir, spec).manifest.counts
    assert (counts.input, counts.quarantined, counts.reasons["quarantined"]) == (1, 1, {"missing_image": 1})


def test_an_image_restored_with_a_new_mtime_is_not_taken_again(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An image was told changed by its size and mtime alone: one restored from a backup (or touched)
    # had its rows taken again and published as new. Only an image whose mtime moved is hashed, once.
    import connectors.state as state

    write_folder(workdir)
    spec = receipts()
    assert run(workdir, spec).manifest.counts.written == 4
    hashed: list[str] = []
    hash_of = state.content_hash
    monkeypatch.setattr(state, "content_hash", lambda uri: hashed.append(Path(uri).name) or hash_of(uri))
    os.utime(workdir / "img" / "form.png", (1, 1))  # the same bytes, another mtime
    assert run(workdir, spec).message.startswith("nothing new")
    assert hashed == ["form.png"]
    hashed.clear()
    assert run(workdir, spec).message.startswith("nothing new")
    assert hashed == []  # its new mtime was kept


def test_an_image_two_rows_name_is_hashed_once_when_its_mtime_moves(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each row naming the image compared it with its watermark by hashing it: read once per row.
    import connectors.state as state

    write_folder(workdir)
    assert [row["image"] for row in sidecar_rows()].count("receipt.jpg") == 2
    spec = receipts()
    run(workdir, spec)
    hashed: list[str] = []
    hash_of = state.content_hash
    monkeypatch.setattr(state, "content_hash", lambda uri: hashed.append(Path(uri).name) or hash_of(uri))
    os.utime(workdir / "img" / "receipt.jpg", (1, 1))  # the same bytes, another mtime
    assert run(workdir, spec).message.startswith("nothing new")
    assert hashed == ["receipt.jpg"]


def test_sidecars_listed_again_at_planning_are_read_once(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An edited sidecar whose row was the kept copy of another sidecar's has that one read again: the
    # source was listed again, and every sidecar read and hashed again to compare with its watermark.
    import connectors.images as images

    write_folder(workdir)
    (workdir / "qa").mkdir()
    receipt = {"image": "receipt.jpg", "question": "What is the total?", "answer": "12.50 USD"}
    form = {"image": "form.png", "question": "What is it?", "answer": "A form."}
    write_jsonl(workdir / "qa" / "s1.jsonl", [receipt, form])
    write_jsonl(workdir / "qa" / "s2.jsonl", [receipt])
    spec = {
        "dataset": "receipts",
        "sources": [{"type": "images", "path": "img", "sidecar": "qa", "max_pixels": 1_000_000}],
        "record": {"kind": "vqa"},
        "stages": [{"type": "exact_dedup", "across_runs": True}],
        "output": {"validation_fraction": 0.0},
    }
    first = run(workdir, spec)
    assert (first.manifest.counts.written, first.manifest.counts.duplicate) == (2, 1)
    write_jsonl(workdir / "qa" / "s1.jsonl", [receipt, {**form, "answer": "A tax form."}])
    opened: list[str] = []
    listed = images.filesystem
    monkeypatch.setattr(
        images, "filesystem", lambda uri: (uri.endswith(".jsonl") and opened.append(Path(uri).name)) or listed(uri)
    )
    second = run(workdir, spec)
    assert sorted(line["completion"] for line in outputs(Path(second.version_uri))) == ["12.50 USD", "A tax form."]
    assert opened == ["s1.jsonl"]  # once; s2.jsonl, unchanged as listed, is not read for its hash at all


def test_an_edited_sidecar_is_parsed_once_per_run(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # It was parsed at planning (for the rows whose image was taken and moved away since) and again to read.
    from connectors.files import FilesSourceReader

    spec, first = taken_then_archived(workdir)
    sidecar = workdir / "qa.jsonl"
    sidecar.write_text(sidecar.read_text().replace("12.50 USD", "13.50 USD"))
    parsed: list[str] = []
    read = FilesSourceReader._jsonl
    monkeypatch.setattr(
        FilesSourceReader, "_jsonl", lambda self, entry, *a: parsed.append(entry.uri) or read(self, entry, *a)
    )
    second = run(workdir, spec)
    assert parsed == [str(sidecar)]
    published = {line["prompt"]: line["completion"] for line in outputs(Path(second.version_uri))}
    before = {line["prompt"]: line["completion"] for line in outputs(Path(first.version_uri))}
    assert published == {**before, "What is the total?": "13.50 USD"}  # form.png's record kept
    # Every row but form.png's (kept as published), the malformed line quarantined before not counted again.
    assert second.manifest.counts.input == len(sidecar_rows()) - 1


@pytest.mark.parametrize("sidecar", ["qa.csv", "qa.jsonl"])
def test_rows_ending_in_lf_appended_to_a_sidecar_ending_in_cr_alone_are_the_only_rows_taken(
    workdir: Path, sidecar: str
) -> None:
    # The lines an earlier run read were counted at LFs once the file held one, while its rows were
    # numbered at each CR: every row taken before looked appended and was published again on each run
    # (CSV), or the rows before the first LF were read as one malformed line (JSONL).
    write_folder(workdir)
    rows = [{"image": "form.png", "question": f"Is box {i} ticked?", "answer": "Yes"} for i in range(5)]

    def lines(rows: list[dict]) -> list[str]:
        if sidecar.endswith(".csv"):
            return [f"{r['image']},{r['question']},{r['answer']}" for r in rows]
        return [json.dumps(row) for row in rows]

    header = ["image,question,answer"] if sidecar.endswith(".csv") else []
    (workdir / sidecar).write_bytes(("\r".join(header + lines(rows[:3])) + "\r").encode())
    spec = {
        "dataset": "forms",
        "sources": [{"type": "images", "path": "img", "sidecar": sidecar, "max_pixels": 1_000_000}],
        "record": {"kind": "vqa"},
        "output": {"validation_fraction": 0.0},
    }
    assert run(workdir, spec).manifest.counts.written == 3
    with (workdir / sidecar).open("ab") as file:
        file.write(("\n".join(lines(rows[3:])) + "\n").encode())
    second = run(workdir, spec)
    assert (second.manifest.counts.input, second.manifest.counts.written) == (2, 2)
    assert sorted(line["prompt"] for line in outputs(Path(second.version_uri))) == sorted(r["question"] for r in rows)
    assert run(workdir, spec).message.startswith("nothing new")


def test_a_renamed_column_a_sidecar_line_writes_null_is_kept_in_its_quarantined_record(workdir: Path) -> None:
    # With question_column: q, an explicit "q": null was stored as a missing key: the line's keys were
    # matched to the row's columns by name, and the row names the column "question".
    (workdir / "img").mkdir()
    (workdir / "img" / "a.png").write_bytes(png((300, 200)))
    rows = [
        {"image": "a.png", "q": None, "answer": "Nothing."},
        {"image": "a.png", "answer": "No question either."},
        {"image": "a.png", "q": "Q?", "question": None, "answer": "Answer."},  # "question" gives way to q
        {"image": "a.png", "question": None, "answer": "Other."},  # the given-way column alone: no q
    ]
    (workdir / "qa.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = {
        "dataset": "charts",
        "sources": [{"type": "images", "path": "img", "sidecar": "qa.jsonl", "question_column": "q"}],
        "record": {"kind": "vqa", "question": "{{ question }} Answer briefly."},  # a null fails the template
        "output": {"validation_fraction": 0.0},
    }
    result = run(workdir, spec)
    assert result.manifest.counts.written == 1
    aside = set_aside(Path(result.version_uri))
    assert [(row["source"]["line"], row["reason"]) for row in aside] == [
        (1, "template"),
        (2, "template"),
        (4, "template"),
    ]
    stored = [json.loads(row["record"]) for row in aside]
    assert [sorted(key for key in record if key != "image_bytes") for record in stored] == [
        ["answer", "image", "question"],  # the line wrote q: null
        ["answer", "image"],
        ["answer", "image"],  # its "question" is not the column q became
    ]
    assert stored[0]["question"] is None


def test_an_images_folder_that_cannot_be_listed_fails_the_run_by_name(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A listing error was read as "no such folder", so a later run took the folder as emptied (its images
    # moved away) and went on: rows whose image could not be read either were quarantined for good.
    import connectors.storage as storage

    write_folder(workdir)
    spec = receipts()
    assert run(workdir, spec).manifest.version == 1
    with (workdir / "qa.jsonl").open("a") as sidecar:
        sidecar.write(json.dumps({"image": "form.png", "question": "Is it blank?", "answer": "Yes."}) + "\n")
    listed = storage.filesystem
    refused = str(workdir / "img")
    monkeypatch.setattr(storage, "filesystem", lambda uri: (Refusing(listed(uri)[0], refused), listed(uri)[1]))
    with pytest.raises(OSError, match=r"/img: cannot list: .*Permission denied"):
        run(workdir, spec)
    assert not (workdir / "output" / "receipts" / "v2").exists()
    monkeypatch.setattr(storage, "filesystem", listed)  # listable again: the appended row is taken
    second = run(workdir, spec)
    assert (second.manifest.version, second.manifest.counts.input, second.manifest.counts.written) == (2, 1, 1)
    assert "Is it blank?" in [line["prompt"] for line in outputs(Path(second.version_uri))]


@pytest.mark.s3
def test_an_images_bucket_that_cannot_be_listed_fails_the_run_by_name(workdir: Path, bucket: str, aws_env: str) -> None:
    # The bucket gone (renamed, deleted, a policy denying the listing): the row appended meanwhile was
    # quarantined as missing_image and a version published, as if its image had never been there.
    s3 = boto3.client("s3", endpoint_url=aws_env)
    images = f"{bucket}-img"
    s3.create_bucket(Bucket=images)
    for name in ("receipt.jpg", "form.png"):
        s3.put_object(Bucket=images, Key=name, Body=IMAGES[name])
    rows = [{"image": "receipt.jpg", "question": "Total?", "answer": "12.50"}]
    write_jsonl(workdir / "qa.jsonl", rows)
    source = {"type": "images", "path": f"s3://{images}", "sidecar": "qa.jsonl", "max_pixels": 1_000_000}
    spec = {"dataset": "receipts", "sources": [source], "record": {"kind": "vqa"}}
    assert run(workdir, spec).manifest.counts.written == 1
    write_jsonl(workdir / "qa.jsonl", [*rows, {"image": "form.png", "question": "Blank?", "answer": "Yes."}])
    for name in ("receipt.jpg", "form.png"):
        s3.delete_object(Bucket=images, Key=name)
    s3.delete_bucket(Bucket=images)
    with pytest.raises(OSError, match=rf"^s3://{images}: cannot list: .*NoSuchBucket"):
        run(workdir, spec)
    assert not (workdir / "output" / "receipts" / "v2").exists()


@pytest.mark.s3
def test_an_s3_image_overwritten_between_listing_and_reading_is_read_again_on_the_next_run(
    workdir: Path, bucket: str, aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read as it was now, the new image was published and its row staged with the listed ETag: the next
    # run saw another ETag and published the row again, and the listed image was never read.
    import connectors.images as images

    s3 = boto3.client("s3", endpoint_url=aws_env)
    for name in ("receipt.jpg", "form.png"):
        s3.put_object(Bucket=bucket, Key=f"img/{name}", Body=IMAGES[name])
    rows = [
        {"image": "receipt.jpg", "question": "Total?", "answer": "12.50"},
        {"image": "form.png", "question": "Signed?", "answer": "Yes."},
    ]
    write_jsonl(workdir / "qa.jsonl", rows)
    source = {"type": "images", "path": f"s3://{bucket}/img", "sidecar": "qa.jsonl", "max_pixels": 1_000_000}
    spec = {"dataset": "receipts", "sources": [source], "record": {"kind": "vqa"}, "output": {"validation_fraction": 0}}
    listed = images.list_files

    def list_then_overwrite(*args: object, **kwargs: object) -> list:
        found = listed(*args, **kwargs)
        s3.put_object(Bucket=bucket, Key="img/form.png", Body=png((32, 32)))  # re-scanned meanwhile
        return found

    monkeypatch.setattr(images, "list_files", list_then_overwrite)
    first = run(workdir, spec)
    assert first.manifest.counts.written == 1 and first.manifest.counts.reasons["quarantined"]["unreadable"] == 1
    [refused] = [row for row in set_aside(Path(first.version_uri)) if row["reason"] == "unreadable"]
    assert refused["detail"].endswith("form.png (overwritten since the run listed it); the next run reads it again")
    monkeypatch.undo()
    second = run(workdir, spec)
    assert (second.manifest.counts.input, second.manifest.counts.written) == (1, 1)
    assert run(workdir, spec).message.startswith("nothing new")


def test_sidecar_rows_appended_while_a_run_reads_it_are_taken_once(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sidecar is read once to hash it and again for its rows: a row appended between the two was
    # taken, the watermark holding the bytes before it, so the next run took it again (a duplicate).
    write_folder(workdir)
    spec = receipts()
    assert run(workdir, spec).manifest.counts.written == 4

    def append(question: str) -> None:
        with (workdir / "qa.jsonl").open("a") as sidecar:
            sidecar.write(json.dumps({"image": "form.png", "question": question, "answer": "Yes."}) + "\n")

    compare = ImagesSourceReader._compare

    def compare_then_append(self: ImagesSourceReader, *args: object) -> object:
        compared = compare(self, *args)
        append("Appended while hashed?")
        return compared

    append("Appended before?")
    monkeypatch.setattr(ImagesSourceReader, "_compare", compare_then_append)
    second = run(workdir, spec)
    monkeypatch.setattr(ImagesSourceReader, "_compare", compare)
    third = run(workdir, spec)
    taken = [line["prompt"] for result in (second, third) for line in processed(Path(result.version_uri))]
    assert sorted(taken) == ["Appended before?", "Appended while hashed?"]
    assert run(workdir, spec).message.startswith("nothing new")


def test_a_reader_shipped_to_a_ray_task_leaves_the_sidecar_batches_kept_from_planning(workdir: Path) -> None:
    # Up to 256 MiB of an edited sidecar's parsed batches travelled in each Ray read task's arguments.
    import pickle

    spec, _ = taken_then_archived(workdir)  # archived: the edited sidecar is parsed at planning
    sidecar = workdir / "qa.jsonl"
    sidecar.write_text(sidecar.read_text().replace("12.50 USD", "13.50 USD"))
    [config] = load_recipe(write_recipe(workdir, spec)).sources
    watermarks = Watermarks(sa.create_engine(f"sqlite:///{workdir / 'state.db'}"), "receipts")
    reader = ImagesSourceReader(config, 256, watermarks.for_source(config))
    reader.inputs()
    assert reader._parsed, "the planning kept the sidecar's batches (the premise)"
    shipped = pickle.loads(pickle.dumps(reader))
    assert shipped._parsed == {}
    rows = [row for batch in shipped.batches() for row in batch.rows.to_pylist()]
    kept = [row for batch in reader.batches() for row in batch.rows.to_pylist()]
    assert [row["id"] for row in rows] == [row["id"] for row in kept] and rows


def test_the_default_split_keeps_each_image_and_its_copies_on_one_side(workdir: Path) -> None:
    # Split by record, 6 of 8 images had questions on both sides: a model was evaluated on pictures it trained on.
    (workdir / "img").mkdir()
    pictures = {f"scan{n}.png": png((16 + n, 16)) for n in range(8)}
    pictures["scan0-again.png"] = pictures["scan0.png"]  # the same scan under another name
    for name, data in pictures.items():
        (workdir / "img" / name).write_bytes(data)
    rows = [
        {"image": name, "question": f"Question {q}?", "answer": f"{name} {q}"} for name in pictures for q in range(3)
    ]
    write_jsonl(workdir / "qa.jsonl", rows)
    spec = {**receipts(), "output": {"validation_fraction": 0.5}}
    version = Path(run(workdir, spec).version_uri)
    sides = {
        side: {line["file_name"] for line in read_lines(sorted((version / side).glob("*.jsonl")))} for side in SPLITS
    }
    assert len(sides["train"]) + len(sides["validation"]) == 8 and sides["train"] and sides["validation"]
    assert not sides["train"] & sides["validation"]


def test_repeated_rows_that_cannot_be_read_are_each_counted_on_a_first_run_and_a_scheduled_run(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Identical rows (same image, question and answer) share one watermark item: counted as one unread input,
    # a first run whose only rows were two such rows published an empty v1, and a scheduled run whose only
    # rows were such rows, still unreadable, published a version each run.
    import connectors.images as images
    from connectors.storage import StorageError

    (workdir / "img").mkdir()
    (workdir / "img" / "form.png").write_bytes(png())
    (workdir / "img" / "receipt.jpg").write_bytes(jpeg_with_exif())
    same = {"image": "form.png", "question": "Signed?", "answer": "Yes"}
    write_jsonl(workdir / "qa.jsonl", [same, same])
    spec = receipts()
    listed = images.filesystem
    monkeypatch.setattr(
        images, "filesystem", lambda uri: (Refusing(listed(uri)[0], str(workdir / "img" / "form.png")), listed(uri)[1])
    )
    with pytest.raises(StorageError, match=r"^receipts: 2 input\(s\) \(files, image rows\) cannot be read"):
        run(workdir, spec)
    write_jsonl(workdir / "qa.jsonl", [{"image": "receipt.jpg", "question": "Total?", "answer": "12.50"}, same, same])
    first = run(workdir, spec)
    assert (first.manifest.counts.input, first.manifest.counts.written) == (3, 1)
    assert first.manifest.counts.reasons["quarantined"] == {"unreadable": 2}
    second = run(workdir, spec)
    assert second.manifest is None and second.message.startswith("nothing new since receipts v1")
    assert "2 input(s) (files, image rows) still cannot be read" in second.message
    monkeypatch.setattr(images, "filesystem", listed)  # readable at last: both rows are taken, one a copy
    counts = run(workdir, spec).manifest.counts
    assert (counts.input, counts.written, counts.reasons["duplicate"]) == (2, 1, {"exact_duplicate": 1})


def test_an_unchanged_sidecar_is_read_for_its_rows_only(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each run read the whole sidecar into memory at planning to hash it, then again for its rows. Its watermark
    # now keeps the listing's fingerprint too: unchanged, it is read once; one kept before that compares its bytes.
    import connectors.images as images

    write_folder(workdir)
    spec = receipts()
    run(workdir, spec)
    (workdir / "img" / "form.png").write_bytes(png((32, 32)))  # something new to take: its row is read again
    opened: list[str] = []
    listed = images.filesystem
    monkeypatch.setattr(
        images, "filesystem", lambda uri: (uri.endswith(".jsonl") and opened.append(uri)) or listed(uri)
    )
    second = run(workdir, spec)
    assert opened == [] and [line["prompt"] for line in processed(Path(second.version_uri))] == ["What is in form.png?"]
    engine = sa.create_engine(f"sqlite:///{workdir}/state.db")
    with engine.begin() as db:  # as an earlier release kept it: no fingerprint
        db.execute(sa.text('UPDATE watermarks SET value = \'{"bytes": 1, "xxh3": "0"}\' WHERE item LIKE \'sidecar:%\''))
    engine.dispose()
    with (workdir / "qa.jsonl").open("a") as sidecar:  # appended, so this run has a row to take
        sidecar.write(json.dumps({"image": "form.png", "question": "Signed?", "answer": "Yes."}) + "\n")
    # Compared (its bytes differ: told edited), every row is read again, the bad line quarantined before not counted.
    assert run(workdir, spec).manifest.counts.input == len(sidecar_rows()) + 1
    assert len(opened) == 1
    opened.clear()
    assert run(workdir, spec).message.startswith("nothing new") and opened == []


SIDECARS = {
    "lf.jsonl": b'{"image": "a.png"}\n{"image": "b.png"}\n',
    "crlf.jsonl": b'{"image": "a.png"}\r\n{"image": "b.png"}\r\n',
    "cr.jsonl": b'{"image": "a.png"}\r{"image": "b.png"}\r',
    "mixed.jsonl": b'{"image": "a.png"}\r\n\r{"image": "b.png"}\n\r\n{"image": "c.png"}',  # no final newline
    "empty.jsonl": b"",
}
SIDECAR_LINES = {"lf.jsonl": 2, "crlf.jsonl": 2, "cr.jsonl": 2, "mixed.jsonl": 5, "empty.jsonl": 0}  # as stored


def compared(tmp_path: Path, name: str, before: dict | None) -> tuple[tuple[bool, float], dict]:
    """What ``_compare`` finds of the sidecar ``name`` given an earlier run's watermark, and the one it stages."""
    watermark = SourceWatermark({} if before is None else {f"sidecar:{tmp_path / name}": before})
    reader = ImagesSourceReader(config_for(str(tmp_path / "img"), str(tmp_path / name)), 4, watermark)
    (entry,) = reader.sidecar.entries()
    return reader._compare(watermark, entry), watermark.pending[f"sidecar:{entry.uri}"]


@pytest.mark.parametrize("block", [1, 2, 3, 1024 * 1024])
def test_a_sidecar_hashed_a_block_at_a_time_keeps_the_values_it_had_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    # Read whole into memory (stream.read()), an edited, appended or never hashed sidecar could exceed it.
    # Hashed a block at a time, the values kept must be those the whole gave (or every sidecar taken
    # before reads as edited, once): also where a block ends between the CR and LF of a line's end.
    monkeypatch.setattr(images, "HASH_BYTES", block)
    (tmp_path / "img").mkdir()
    for name, data in [*SIDECARS.items(), *((f"{n}.gz", d) for n, d in SIDECARS.items())]:
        (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
        whole = {"bytes": len(data), "xxh3": xxhash.xxh3_128_hexdigest(data), "lines": lines_in(data)}
        assert whole["lines"] == SIDECAR_LINES[name.removesuffix(".gz")]  # the values earlier runs stored
        found, staged = compared(tmp_path, name, None)
        assert found == (False, 0) and {key: staged[key] for key in whole} == whole, name
        for cut in range(len(data) + 1):  # an earlier run took the first ``cut`` bytes: appended since
            taken = {"bytes": cut, "xxh3": xxhash.xxh3_128_hexdigest(data[:cut]), "fingerprint": "", "lines": 0}
            assert compared(tmp_path, name, taken)[0] == (False, lines_in(data[:cut])), (name, cut)
            assert compared(tmp_path, name, {**taken, "xxh3": "0"})[0] == (True, 0), (name, cut)


def test_a_large_sidecar_is_compared_without_holding_it_in_memory(tmp_path: Path) -> None:
    rows = b"".join(b'{"image": "receipt-%08d.jpg", "question": "Total?"}\n' % n for n in range(800_000))
    (tmp_path / "img").mkdir()
    (tmp_path / "qa.jsonl.gz").write_bytes(gzip.compress(rows, compresslevel=1))
    taken = {"bytes": len(rows) // 2, "xxh3": xxhash.xxh3_128_hexdigest(rows[: len(rows) // 2]), "fingerprint": ""}
    tracemalloc.start()
    try:
        found, staged = compared(tmp_path, "qa.jsonl.gz", taken)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found == (False, 400_000) and staged["lines"] == 800_000 and staged["bytes"] == len(rows)
    assert peak < len(rows) // 2, f"{peak:,} bytes held comparing {len(rows):,}"


@pytest.mark.parametrize("batch_rows", [1, 3, 50_000])
def test_a_sidecar_line_lacking_a_key_other_lines_have_has_one_outcome_whatever_batch_rows(
    workdir: Path, batch_rows: int
) -> None:
    # The sidecar was read without the keys the record needs: a line lacking one, batched with lines that
    # lack it too (batch_rows: 1), was set aside as missing_column, and its record with a null in it elsewhere.
    (workdir / "img").mkdir()
    for n in range(6):
        (workdir / "img" / f"s{n}.png").write_bytes(png((16 + n, 16)))
    rows = [
        {"image": f"s{n}.png", "q": f"Q{n}?", "answer": f"A{n}", "customer": f"c{n % 2}", "note": "n"} for n in range(6)
    ]
    for line, key in [(2, "image"), (3, "q"), (4, "customer"), (5, "note")]:
        del rows[line - 1][key]
    write_jsonl(workdir / "qa.jsonl", rows)
    spec = {
        "dataset": "scans",
        "batch_rows": batch_rows,
        "sources": [{"type": "images", "path": "img", "sidecar": "qa.jsonl", "question_column": "q"}],
        "record": {"kind": "vqa", "answer": "{{ answer }} ({{ note }})"},
        "output": {"validation_fraction": 0.0, "group_by": "customer"},
    }
    version = Path(run(workdir, spec).version_uri)
    assert sorted((row["source"]["line"], row["reason"]) for row in set_aside(version)) == [
        (2, "missing_image"),  # the row names no image
        (3, "schema"),  # no question
        (5, "template"),  # the template's note is null
    ]
    assert sorted(line["prompt"] for line in outputs(version)) == [
        "Q0?",
        "Q3?",
        "Q5?",
    ]  # line 4: no customer, split as such


def test_a_new_sidecar_lacking_the_image_column_a_version_was_made_with_is_quarantined(workdir: Path) -> None:
    # A scheduled run whose only new sidecar (a bad export) names its images under another column failed "fix the
    # column name in the recipe", and so did every run after it: the image_column made v1, so the rows are at fault.
    (workdir / "img").mkdir()
    for name, data in IMAGES.items():
        (workdir / "img" / name).write_bytes(data)
    write_jsonl(workdir / "qa" / "a.jsonl", sidecar_rows()[:2])
    source = {"type": "images", "path": "img", "sidecar": "qa", "max_pixels": 1_000_000}
    spec = {"dataset": "receipts", "sources": [source], "record": {"kind": "vqa"}}
    assert run(workdir, spec).manifest.counts.written == 2
    path = write_jsonl(workdir / "qa" / "b.jsonl", [{"picture": "receipt.jpg", "question": "Q?", "answer": "A."}])
    v2 = run(workdir, spec)
    counts = v2.manifest.counts
    assert (v2.manifest.version, counts.input, counts.carried, counts.reasons) == (
        2,
        1,
        2,
        {"quarantined": {"missing_column": 1}},
    )
    assert [row["detail"] for row in set_aside(Path(v2.version_uri))] == [
        f"{path}:1: column 'image' (image_column) is missing"
    ]
    assert run(workdir, spec).manifest is None  # taken: not read again
    # Another image_column is the source read anew, extending no version: on trial, a misspelt name as ever.
    with pytest.raises(RecipeError, match=r"column 'pic' \(image_column\) is missing"):
        run(workdir, {**spec, "sources": [{**source, "image_column": "pic"}]})


def two_sidecars(root: Path) -> tuple[dict, dict, dict]:
    """A recipe of VQA records of the images under ``root``/img, named by two sidecars (qa: two rows, qb: one);
    and its two sources."""
    (root / "img").mkdir()
    for name, data in IMAGES.items():
        (root / "img" / name).write_bytes(data)
    write_jsonl(root / "qa" / "a.jsonl", sidecar_rows()[:2])
    write_jsonl(root / "qb" / "a.jsonl", sidecar_rows()[2:3])
    first = {"type": "images", "path": "img", "sidecar": "qa", "max_pixels": 1_000_000}
    second = {"type": "images", "path": "img", "sidecar": "qb", "max_pixels": 1_000_000}
    return {"dataset": "receipts", "sources": [first, second], "record": {"kind": "vqa"}}, first, second


def test_an_images_source_whose_column_settings_changed_is_on_trial_beside_one_read_before(workdir: Path) -> None:
    # Another image_column keys the source's watermarks anew: the version extended (made by both sources) never
    # read it so, and a misspelt name quarantined its every row and took its sidecar.
    spec, first, second = two_sidecars(workdir)
    assert run(workdir, spec).manifest.counts.written == 3
    with pytest.raises(RecipeError, match=r"column 'imgae' \(image_column\) is missing"):
        run(workdir, {**spec, "sources": [first, {**second, "image_column": "imgae"}]})
