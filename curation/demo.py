"""The demo: synthetic bank transactions become categorisation instructions, as in the talk's
QuickBooks case. The data is generated (seeded, so every demo run sees the same input) with a few
rows of the kinds real exports carry: a truncated line, an amount that is not a number, repeated
transactions, stray whitespace and HTML entities, and person-to-person transfers that name a
customer and a phone number (the PII stage redacts them)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

CATEGORIES: dict[str, list[str]] = {
    "Dining": ["Starbucks", "Chipotle", "Pret A Manger", "Joe's Diner", "Sushi Go"],
    "Groceries": ["Whole Foods", "Trader Joe's", "Safeway", "Kroger", "Aldi"],
    "Transport": ["Uber", "Lyft", "Shell", "Chevron", "Metro Transit"],
    "Software": ["GitHub", "Atlassian", "Slack", "Figma", "Notion Labs"],
    "Travel": ["Delta Air Lines", "Marriott", "Airbnb", "Hertz", "United Airlines"],
    "Office Supplies": ["Staples", "Office Depot", "Amazon Business", "Uline", "Costco"],
    "Utilities": ["PG&E", "Comcast", "Verizon", "AT&T", "Con Edison"],
}
# Person-to-person transfers name people: the PII stage must keep them out of the training set.
PAYEES = ["Maria Lopez", "James Carter", "Aisha Khan", "Robert Nguyen", "Emily Fischer", "David Okafor"]
PHONES = ["415-555-0134", "212-555-0187", "312-555-0122", "617-555-0199"]
DESCRIPTIONS = ["POS PURCHASE", "CARD PAYMENT", "ONLINE PMT", "RECURRING DEBIT", "CONTACTLESS", "ACH DEBIT"]
AMOUNTS = {
    "Dining": (4, 80),
    "Groceries": (15, 250),
    "Transport": (8, 90),
    "Software": (10, 600),
    "Travel": (90, 1800),
    "Office Supplies": (12, 400),
    "Utilities": (40, 300),
    "Transfers": (20, 900),
}

RECIPE = """\
# The demo recipe: each transaction becomes an instruction to categorise it.
dataset: transactions
sources:
  - path: input/transactions.csv
input_schema:
  columns: {{date: str, description: str, merchant: str, amount: float, category: str}}
record:
  kind: instruction
  prompt: >-
    Categorise this bank transaction into one of: {categories}.
    Transaction: {{{{ description }}}} at {{{{ merchant }}}}, {{{{ "%.2f" | format(amount) }}}} USD on {{{{ date }}}}.
  completion: "{{{{ category }}}}"
  label: category
stages:
  - type: clean               # whitespace, control characters, HTML remnants, mojibake
  - type: instruction_filter  # empty or trivial completions
  - type: exact_dedup         # the same transaction exported twice
  - type: pii                 # names and phone numbers in transfers become <PERSON>, <PHONE_NUMBER>
    entities: [PERSON, PHONE_NUMBER, EMAIL_ADDRESS, CREDIT_CARD, US_BANK_NUMBER]
    recognizers:              # the payee of a transfer: a name the small NER model can miss
      - entity: PAYEE
        patterns: [{{regex: "(?<=PAYMENT TO at )[A-Z][a-z]+(?: [A-Z][a-z]+)+", score: 0.9}}]
    allow: {merchants}  # merchants are not people, though "Sushi Go" looks like a name to the model
output:
  dest: output
  validation_fraction: 0.1
  stratify_by: label          # every category on both sides of the split
state: sqlite:///state.db
"""


def write_transactions(path: Path, rows: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["date", "description", "merchant", "amount", "category"])
        previous: list[str] | None = None
        for index in range(rows):
            if previous is not None and index % 50 == 0:
                out.writerow(previous)  # the same transaction exported twice
                continue
            if index % 397 == 0 and index:
                handle.write("2026-03-01,POS PURCHASE,Starbucks\n")  # a truncated line
                continue
            category = rng.choice([*CATEGORIES, "Transfers"])
            low, high = AMOUNTS[category]
            amount = f"{rng.uniform(low, high):.2f}" if index % 211 else "n/a"  # an unreadable amount
            if category == "Transfers":
                description = "ZELLE PAYMENT TO"
                merchant = f"{rng.choice(PAYEES)} {rng.choice(PHONES)}"
            else:
                description = rng.choice(DESCRIPTIONS)
                merchant = rng.choice(CATEGORIES[category])
            if index % 97 == 5:
                description = f"  {description}&amp;\t"  # export noise the clean stage repairs
            row = [
                f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                description,
                merchant,
                amount,
                category,
            ]
            out.writerow(row)
            previous = row


def write_demo(folder: Path, rows: int = 5000) -> Path:
    """Generate the demo input and its recipe under ``folder``; returns the recipe's path."""
    write_transactions(folder / "input" / "transactions.csv", rows)
    recipe = folder / "recipe.yaml"
    merchants = json.dumps([name for names in CATEGORIES.values() for name in names])
    recipe.write_text(RECIPE.format(categories=", ".join([*CATEGORIES, "Transfers"]), merchants=merchants))
    return recipe
