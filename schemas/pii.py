"""The PII stage's recipe settings (``stages: - type: pii``); see README "PII redaction"."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


PiiOperator = Literal["mask", "replace", "pseudonym", "drop"]
PII_DEFAULT_ENTITIES = (
    "PERSON",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "US_SSN",
    "IBAN_CODE",
    "IP_ADDRESS",
    "LOCATION",
)
_ENTITY_NAME = r"^[A-Z][A-Z0-9_]*$"

# The stage's statistics that count the PII found: an entity's name (PERSON), or ``image_`` and it for what
# OCR found in images; the others count records, images or places (records_scanned, review_flagged).
PII_FOUND = re.compile(rf"(?:image_)?{_ENTITY_NAME.strip('^$')}")

# What the PII stage finds with the same settings (curation/pii_engine.py and its rules) changes with a
# release now and then: counted here and kept in the recipe's fingerprint, so the first scheduled run
# after such a release says the recipe changed (records it carries were redacted by the old rules).
# 2: names after a salutation or role word ("Dear Sophie Smith", "Payee Maria Garcia").
# 3: such names on the next line ("Regards," over a signature) and in capitals ("DEAR SOPHIE SMITH");
#    no name in a heading ("Customer Satisfaction Survey").
# 4: no person or place inside a well-known brand ("Payee Wells Fargo", "Dr Pepper"); a surname alone as
#    a form's value ("Payee: Okafor"); a past tense ends a name in capitals ("MR OKAFOR CALLED"); no
#    name of "Email" and the address after it.
DETECTION_RULES = 4


class PiiPattern(Strict):
    regex: str
    score: float = Field(default=0.5, gt=0.0, le=1.0)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class PiiRecognizerConfig(Strict):
    """A custom entity found by regex; context words near a match raise its score."""

    entity: str = Field(pattern=_ENTITY_NAME)
    patterns: list[PiiPattern] = Field(min_length=1)
    context: list[str] = Field(default_factory=list)


class PiiConfig(Strict):
    """Find PII with presidio and redact it; uncertain detections are redacted and flagged for review."""

    type: Literal["pii"]
    fields: list[str] | None = None  # default: the record kind's free-text fields (table rows: must be set)
    ner_fields: list[str] | None = None  # fields where names can occur (NER runs); default: all of ``fields``
    entities: list[str] = Field(default_factory=lambda: list(PII_DEFAULT_ENTITIES))
    recognizers: list[PiiRecognizerConfig] = Field(default_factory=list)
    operators: dict[str, PiiOperator] = Field(default_factory=dict)  # entity (or "default") -> operator
    # Values that are not PII though a recognizer takes them for some (merchant or product names): a
    # detection whose whole text is one of these, in any case, is left as it is.
    allow: list[str] = Field(default_factory=list)
    threshold: float = Field(default=0.3, ge=0.0, le=1.0)  # detections scoring less are ignored
    review_below: float = Field(default=0.6, ge=0.0, le=1.0)  # [threshold, review_below): redact and flag
    secret: SecretStr | None = None  # pseudonym key (never printed); better kept out of the recipe, in ``secret_env``
    secret_env: str = "CURATION_PII_SECRET"
    mask_char: str = Field(default="*", min_length=1, max_length=1)
    ocr: bool = False  # also redact text in document images (the ``image_bytes`` column), with tesseract OCR
    workers: int | None = Field(default=None, ge=1)  # processes; default: one per core
    batch_size: int = Field(default=64, ge=1)  # texts per spaCy ``pipe`` batch

    def secret_key(self) -> str | None:
        """The pseudonym key: ``secret``, else the environment variable ``secret_env``."""
        return self.secret.get_secret_value() if self.secret else os.environ.get(self.secret_env) or None

    def pseudonym_key_id(self) -> str | None:
        """What tells one pseudonym key from another, without revealing it (an HMAC of a fixed text);
        None unless an operator is ``pseudonym``. In the recipe's fingerprint, so a run whose key
        changed says the recipe changed: its new records' pseudonyms differ from those of the
        records it carries (the same person under two names in one version)."""
        key = self.secret_key()
        if "pseudonym" not in self.operators.values() or not key:
            return None
        return hmac.new(key.encode(), b"curation pseudonym key", hashlib.sha256).hexdigest()[:16]

    def scanned_entities(self) -> list[str]:
        """Every entity the stage looks for: the listed ones, then the recipe's own recognizers'."""
        return list(dict.fromkeys([*self.entities, *(r.entity for r in self.recognizers)]))

    @model_validator(mode="after")
    def _consistent(self) -> PiiConfig:
        if self.review_below < self.threshold:
            raise ValueError("review_below must be at least threshold")
        for name in (*self.entities, *self.operators):
            if name != "default" and not re.match(_ENTITY_NAME, name):
                raise ValueError(f"{name!r} is not an entity name (upper case, like PERSON or US_SSN)")
        unknown = sorted(set(self.operators) - set(self.scanned_entities()) - {"default"})
        if unknown:
            raise ValueError(f"operators set for entities that are not scanned: {unknown}")
        if self.ner_fields is not None and self.fields is not None:
            extra = sorted(set(self.ner_fields) - set(self.fields))
            if extra:
                raise ValueError(f"ner_fields names fields that are not scanned: {extra}")
        return self
