"""PII in document images: OCR with Debian's tesseract, presidio on the text, the boxes filled.

presidio-image-redactor does the OCR-to-box mapping; the analysis is the same presidio analyzer the
text stage uses (same model, entities and recognizers), so an image is redacted by the same rules.
"""

from __future__ import annotations

import io
import shutil
from collections import Counter
from functools import lru_cache
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, UnidentifiedImageError

from connectors.images import eight_bit, encode_options, shows_through
from curation.pii_engine import LANGUAGE, EngineSpec, PiiEngineError, build_analyzer

if TYPE_CHECKING:
    from presidio_image_redactor import ImageAnalyzerEngine


class BadImage(ValueError):
    """The bytes are not an image Pillow can open; the message holds no content."""


def check_tesseract() -> None:
    if shutil.which("tesseract") is None:
        raise PiiEngineError(
            "OCR redaction of images needs the tesseract program: install Debian's tesseract-ocr "
            "(`apt-get install tesseract-ocr`; it is listed in scripts/system-packages.txt)"
        )


@lru_cache(maxsize=4)
def _analyzer(spec: EngineSpec) -> ImageAnalyzerEngine:
    from presidio_image_redactor import ImageAnalyzerEngine

    return ImageAnalyzerEngine(analyzer_engine=build_analyzer(spec))


# Modes the boxes are drawn in as they are (a 16-bit scan stays 16-bit); any other is drawn in RGB(A).
_KEPT_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "RGB", "RGBA", "CMYK")
_BLACK = {"RGB": (0, 0, 0), "CMYK": (0, 0, 0, 255)}  # else 0


def _drawable(image: Image.Image) -> Image.Image:
    if image.mode in _KEPT_MODES:
        return image
    return image.convert("RGBA" if shows_through(image) else "RGB")


def _as_seen(image: Image.Image) -> Image.Image:
    """What OCR reads: 8-bit samples, a transparent part shown on white as a viewer would show it
    (its hidden colour may be black, as the text is)."""
    if image.mode in ("LA", "RGBA"):
        return Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA")).convert("RGB")
    image = eight_bit(image)
    return image.convert("L" if image.mode in ("1", "L") else "RGB")


def redact_image(data: bytes, spec: EngineSpec, threshold: float) -> tuple[bytes, Counter[str]]:
    """The image with every PII box filled black, re-encoded in its own format and mode (a 16-bit
    scan stays 16-bit, an alpha channel is kept), and what was found."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            image_format = opened.format or "PNG"
            opened.load()
            image = _drawable(opened)
    except (UnidentifiedImageError, OSError) as error:
        raise BadImage(f"not a readable image ({type(error).__name__})") from None
    boxes = _analyzer(spec).analyze(
        _as_seen(image), entities=list(spec.entities), score_threshold=threshold, language=LANGUAGE
    )
    if not boxes:
        return data, Counter()
    # The colour channels are filled; the alpha channel is put back as it was.
    alpha = image.getchannel("A") if image.mode in ("LA", "RGBA") else None
    colour = image.convert(image.mode[:-1]) if alpha is not None else image.copy()
    draw = ImageDraw.Draw(colour)
    for box in boxes:
        draw.rectangle((box.left, box.top, box.left + box.width, box.top + box.height), fill=_BLACK.get(colour.mode, 0))
    if alpha is not None:
        colour.putalpha(alpha)
    out = io.BytesIO()
    colour.save(out, format=image_format, **encode_options(image_format))
    return out.getvalue(), Counter(box.entity_type for box in boxes)
