"""Screenshots of the review page's main pages into docs/screenshots/, made with the test fixtures
(a seeded queue, `curation review serve`, Debian's Chromium through Playwright).

    .venv/bin/python scripts/screenshots.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import chromium  # noqa: E402
from tests.review_seed import seed  # noqa: E402
from tests.review_server import review_server, sign_in  # noqa: E402

OUT = ROOT / "docs" / "screenshots"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        seeded = seed(Path(folder) / "review")
        with review_server(seeded) as base, chromium() as browser:
            page = browser.new_context(viewport={"width": 1200, "height": 800}).new_page()
            page.goto(f"{base}/login")
            page.screenshot(path=OUT / "login.png")
            reviewer = sign_in(browser, base, "rita")
            reviewer.screenshot(path=OUT / "queue.png", full_page=True)
            reviewer.goto(f"{base}/items/2")
            reviewer.screenshot(path=OUT / "pii-reviewer-view.png", full_page=True)
            pii = sign_in(browser, base, "pia")
            for item, name in ((2, "pii"), (3, "near-duplicate"), (1, "quarantined"), (4, "vqa")):
                pii.goto(f"{base}/items/{item}")
                pii.screenshot(path=OUT / f"{name}.png", full_page=True)
            admin = sign_in(browser, base, "ada")
            admin.goto(f"{base}/datasets/support/v1")
            admin.screenshot(path=OUT / "version.png", full_page=True)
    for path in sorted(OUT.glob("*.png")):
        print(path.relative_to(ROOT))


if __name__ == "__main__":
    main()
