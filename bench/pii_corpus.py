"""A labelled PII corpus generated with Faker: support messages and transaction memos.

Each document knows where its PII sits (entity, start, end), so recall and precision can be measured. The
bench uses the full corpus; tests/test_pii.py takes a small slice with the same seed.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field

from faker import Faker

# Message templates: {slot} is filled with a generated value; slots named after presidio entities
# are labelled, the others (merchant, amount, ...) are context only.
TEMPLATES: tuple[str, ...] = (
    "Hi, this is {PERSON}. My card {CREDIT_CARD} was charged twice for {merchant}. "
    "Please call me back on {PHONE_NUMBER} or write to {EMAIL_ADDRESS}.",
    "Customer {PERSON} called about a missing refund of ${amount}. Verified with SSN {US_SSN}; "
    "callback number {PHONE_NUMBER}.",
    "Transfer memo: rent for {month}, paid by {PERSON} from card ending {last4}. Contact: {EMAIL_ADDRESS}",
    "Hello support, I moved and my statement still goes to the old address. "
    "Name on the account: {PERSON}. Email {EMAIL_ADDRESS}, phone {PHONE_NUMBER}.",
    "Dispute opened by {PERSON} for a {merchant} charge of ${amount} on card {CREDIT_CARD}.",
    "Please update my social security number on file to {US_SSN}. Thanks, {PERSON}",
    "Ticket escalated: {PERSON} says card {CREDIT_CARD} was declined at {merchant}. Reach them at {PHONE_NUMBER}.",
    "Payment to {PERSON} for invoice {invoice}, ${amount}. Receipt sent to {EMAIL_ADDRESS}.",
    "I spoke with {PERSON} today; she wants the loan papers mailed and asked us to text {PHONE_NUMBER}.",
    "Fraud alert reviewed for {PERSON} (SSN: {US_SSN}), card {CREDIT_CARD} blocked, new card requested.",
    # Names after a salutation, a role word or a verb, which the model takes for an organisation or
    # misses; and a merchant after a role word, which is no name.
    "Dear {PERSON}, your new card ending {last4} is on its way. Questions? Call us on {PHONE_NUMBER}.",
    "Payee {PERSON} received ${amount} by transfer; receipt sent to {EMAIL_ADDRESS}.",
    "Beneficiary: {PERSON}. Payer: {merchant}. Amount ${amount}.",
    "Call {PERSON} at {PHONE_NUMBER} about the {merchant} dispute.",
    # A signature on the line after the sign-off, and a bank's wire memo in capitals ("{slot:upper}").
    "Hello,\nmy card ending {last4} was declined at {merchant} again. Can you check it?\nThanks,\n{PERSON}",
    "WIRE TRANSFER\nORDERING CUSTOMER: {merchant:upper}\nBENEFICIARY: {PERSON:upper}\nAMOUNT: USD {amount}\nREF: {invoice}",
    # Well-known brands after a role word or a title ("Payee Wells Fargo", "Dr Pepper"), which are no
    # names; a surname alone after a title or a form's label; a verb after a name in capitals.
    "Payee {brand} charged ${amount} to card ending {last4}. Disputed by {PERSON}.",
    "Dear Mr {surname}, your payment of ${amount} to {brand} has cleared.",
    "Payee: {surname}\nAmount: ${amount}\nRef: {invoice}\nPaid to: {brand}",
    "MR {surname:upper} CALLED ABOUT HIS CARD ENDING {last4}. CALL BACK ON {PHONE_NUMBER}.",
)
# Slots labelled as another entity: a surname alone is a person's name.
LABELS = {"surname": "PERSON"}
# Payees of bank statements, chains named after people among them. Written here, apart from the
# shipped list (curation/pii_brands.py), which does not hold all of them: the bench shows what it misses.
BRANDS = (
    "Wells Fargo", "Dr Pepper", "Home Depot", "Tim Hortons", "Ben & Jerry's", "Trader Joe's", "Wendy's",
    "McDonald's", "Dollar General", "Taco Bell", "Bank of America", "Whole Foods", "Best Buy", "Walmart",
    "Netflix", "Starbucks", "Jimmy John's", "Jersey Mike's", "Ruth's Chris Steak House", "Morton Williams",
)  # fmt: skip

# Real US area codes: a number with an unassigned one is not a phone number anyone has.
AREA_CODES = ("202", "206", "212", "303", "305", "312", "404", "415", "512", "617", "646", "718", "773", "818", "972")

ENTITIES: tuple[str, ...] = ("PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN")


@dataclass
class LabelledDoc:
    text: str
    spans: list[tuple[str, int, int]] = field(default_factory=list)  # (entity, start, end)


def _phone(fake: Faker) -> str:
    # US numbers as people write them in messages; Faker's own formats include extensions and
    # 001- prefixes that no phone recogniser (or person) would treat as one number.
    area = random.choice(AREA_CODES)
    exchange, line = str(random.randint(2, 9)) + fake.numerify("##"), fake.numerify("####")  # exchanges start 2-9
    return random.choice((f"({area}) {exchange}-{line}", f"{area}-{exchange}-{line}", f"+1 {area} {exchange} {line}"))


def _values(fake: Faker) -> dict[str, str]:
    return {
        "PERSON": f"{fake.first_name()} {fake.last_name()}",
        "EMAIL_ADDRESS": fake.email(),
        "PHONE_NUMBER": _phone(fake),
        "CREDIT_CARD": fake.credit_card_number(card_type=random.choice(("visa16", "mastercard", "amex", "discover"))),
        "US_SSN": fake.ssn(),
        "surname": fake.last_name(),
        "merchant": fake.company(),
        "brand": random.choice(BRANDS),
        "amount": f"{random.uniform(5, 900):.2f}",
        "month": fake.month_name(),
        "last4": fake.numerify("####"),
        "invoice": "INV-" + "".join(random.choices(string.digits, k=6)),
    }


def generate(count: int, seed: int = 7) -> list[LabelledDoc]:
    """``count`` labelled documents; the same seed gives the same corpus."""
    fake = Faker("en_US")
    fake.seed_instance(seed)
    random.seed(seed)
    docs = []
    for index in range(count):
        template = TEMPLATES[index % len(TEMPLATES)]
        values = _values(fake)
        doc = LabelledDoc(text="")
        pieces: list[str] = []
        position = 0
        for literal, slot, spec, _ in string.Formatter().parse(template):
            pieces.append(literal)
            position += len(literal)
            if slot is None:
                continue
            value = values[slot].upper() if spec == "upper" else values[slot]
            entity = LABELS.get(slot, slot)
            if entity in ENTITIES:
                doc.spans.append((entity, position, position + len(value)))
            pieces.append(value)
            position += len(value)
        doc.text = "".join(pieces)
        docs.append(doc)
    return docs


def recall(docs: list[LabelledDoc], found: list[list[tuple[str, int, int]]]) -> dict[str, float]:
    """Per entity: the share of labelled values fully covered by detections of the same entity.

    Full coverage of the value's letters and digits is required (a name redacted as "<PERSON>
    Smith" still leaks); a detection of another entity type does not count.
    """
    hits: dict[str, int] = dict.fromkeys(ENTITIES, 0)
    totals: dict[str, int] = dict.fromkeys(ENTITIES, 0)
    for doc, detections in zip(docs, found, strict=True):
        for entity, start, end in doc.spans:
            totals[entity] += 1
            needed = {i for i in range(start, end) if doc.text[i].isalnum()}
            for kind, d_start, d_end in detections:
                if kind == entity:
                    needed -= set(range(d_start, d_end))
            hits[entity] += not needed
    return {entity: hits[entity] / totals[entity] for entity in ENTITIES if totals[entity]}


def precision(docs: list[LabelledDoc], found: list[list[tuple[str, int, int]]]) -> dict[str, float]:
    """Per entity: the share of detections that overlap a labelled value of the same entity (a
    merchant's name taken for a person's, a date taken for a phone number, count against it)."""
    hits: dict[str, int] = dict.fromkeys(ENTITIES, 0)
    totals: dict[str, int] = dict.fromkeys(ENTITIES, 0)
    for doc, detections in zip(docs, found, strict=True):
        for kind, start, end in detections:
            if kind in totals:
                totals[kind] += 1
                hits[kind] += any(e == kind and s < end and start < t for e, s, t in doc.spans)
    return {entity: hits[entity] / totals[entity] for entity in ENTITIES if totals[entity]}
