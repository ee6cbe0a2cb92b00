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

from PIL import Image, UnidentifiedImageError

from curation.pii_engine import LANGUAGE, EngineSpec, PiiEngineError, build_analyzer

if TYPE_CHECKING:
    from presidio_image_redactor import ImageRedactorEngine


class BadImage(ValueError):
    """The bytes are not an image Pillow can open; the message holds no content."""


def check_tesseract() -> None:
    if shutil.which("tesseract") is None:
        raise PiiEngineError(
            "OCR redaction of images needs the tesseract program: install Debian's tesseract-ocr "
            "(`apt-get install tesseract-ocr`; it is listed in scripts/system-packages.txt)"
        )


@lru_cache(maxsize=4)
def _redactor(spec: EngineSpec) -> ImageRedactorEngine:
    from presidio_image_redactor import ImageAnalyzerEngine, ImageRedactorEngine

    return ImageRedactorEngine(ImageAnalyzerEngine(analyzer_engine=build_analyzer(spec)))


def redact_image(data: bytes, spec: EngineSpec, threshold: float) -> tuple[bytes, Counter[str]]:
    """The image with every PII box filled black, re-encoded in its own format, and what was found."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            image_format = opened.format or "PNG"
            image = opened.convert("L" if opened.mode in ("1", "L") else "RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise BadImage(f"not a readable image ({type(error).__name__})") from None
    fill = 0 if image.mode == "L" else (0, 0, 0)
    redacted, boxes = _redactor(spec).redact_and_return_bbox(
        image, fill=fill, entities=list(spec.entities), score_threshold=threshold, language=LANGUAGE
    )
    if not boxes:
        return data, Counter()
    out = io.BytesIO()
    redacted.save(out, format=image_format)
    return out.getvalue(), Counter(box.entity_type for box in boxes)
