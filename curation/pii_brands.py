"""Well-known brands and payees that read as people's names: no name is found inside one.

Bank transactions and support notes name the shop paid ("Payee Wells Fargo", "Dr Pepper", "Home
Depot", "paid to Tim Hortons"), and the name rule of ``pii_roles`` (a capitalised word after "Dr" or
"Payee") or the model itself takes it for a person. A detection of a person inside one of these is
dropped (``pii_roles.Lexicon.brands``).

What is listed, and what is not:
- a chain named after a person is listed where its name is not how a person is written: "Tim Hortons"
  (the man was Tim Horton), "Ben & Jerry's", "Trader Joe's", "Wendy's". "Wendy's" and the other
  single names with a possessive count only where no word follows ("paid Wendy's $12", not "Wendy's
  card was declined", which is Wendy's);
- "Dr Pepper" is the drink: a doctor named Pepper is taken for it (the one person-like entry kept, as
  the drink is far more common in transactions);
- no firm that is also a plausible person's full name ("Edward Jones", "John Lewis", "Charles
  Schwab", "Calvin Klein", "Morgan Stanley") nor a common surname or first name ("Chase", "Sears"):
  leaking a customer so named costs more than a flagged brand, which an annotator marks not PII;
- single words that are English verbs or adjectives ("Target", "Square", "Shell") need no entry for
  the rule, which takes none for a lone name; nouns do ("Apple", "Delta", "Vanguard": the tables the
  rule reads English from list people's surnames among the nouns, so it cannot ask them).

Matched by spaCy's ``PhraseMatcher`` on the tokens' norms: any case, straight or curly apostrophes.
"""

from __future__ import annotations

BRANDS: tuple[str, ...] = (
    # Banks, cards, payments
    "Wells Fargo", "Bank of America", "Citibank", "American Express", "Capital One", "JPMorgan Chase",
    "Goldman Sachs", "Ally Bank", "PayPal", "Venmo", "Zelle", "Cash App", "Western Union", "MoneyGram",
    # Food and drink
    "Dr Pepper", "Dr. Pepper", "Tim Hortons", "Ben & Jerry's", "McDonald's", "Wendy's", "Arby's",
    "Denny's", "Hardee's", "Carl's Jr", "Carl's Jr.", "Papa John's", "Chick-fil-A", "Taco Bell",
    "Dairy Queen", "Burger King", "Pizza Hut", "Little Caesars", "Jack in the Box", "Panera Bread",
    "Olive Garden", "Red Lobster", "Dunkin Donuts", "Krispy Kreme", "Starbucks", "Chipotle", "Popeyes",
    "Domino's", "Five Guys", "Shake Shack", "Panda Express", "Baskin Robbins", "Dollar General",
    # Shops
    "Home Depot", "The Home Depot", "Office Depot", "Best Buy", "Whole Foods", "Trader Joe's", "Macy's",
    "Kohl's", "Lowe's", "Dillard's", "Dick's Sporting Goods", "Sam's Club", "Dollar Tree",
    "Family Dollar", "Bed Bath & Beyond", "Bath & Body Works", "Barnes & Noble", "Marks & Spencer",
    "Sainsbury's", "TJ Maxx", "T.J. Maxx", "Ross Dress for Less", "Sherwin-Williams", "Dr. Scholl's",
    "Dr Martens", "Walmart", "Walgreens", "Kroger", "Albertsons", "Safeway", "Publix", "Costco", "Aldi",
    "Lidl", "Tesco", "Nordstrom", "JCPenney", "Sephora", "Ulta", "Petco", "PetSmart", "Wayfair", "Etsy",
    "eBay", "Amazon", "Ikea",
    # Services, fuel, telecoms
    "Netflix", "Spotify", "Hulu", "Uber", "Lyft", "DoorDash", "Grubhub", "Instacart", "Airbnb", "Exxon",
    "ExxonMobil", "Chevron", "Sunoco", "Valero", "Citgo", "Wawa", "Verizon", "Comcast", "Xfinity",
    "T-Mobile", "Google", "Microsoft", "Apple", "Adobe", "Dropbox", "Nintendo", "Peloton", "Delta",
    "JetBlue", "Expedia", "Geico", "Allstate", "Aetna", "Cigna", "Humana", "Vanguard", "Robinhood",
    "Coinbase", "Kmart",
)  # fmt: skip
