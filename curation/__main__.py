"""The ``curation`` command's entry point (``python -m curation`` runs it too).

The stop signals' handler is taken here, before ``curation.cli`` imports what the commands run with
(a second or more): a SIGTERM or ^C then is said as any stop before reading is, not a silent exit 143."""

from __future__ import annotations

import sys

from curation.stopping import Stopped, stop_name, take_stop_signals


def main() -> int:
    take_stop_signals()
    try:
        from curation.cli import app

        app()
    except Stopped as stop:  # before a command's own handling of it (its imports, the command line's parsing)
        signum = int(stop.args[0])
        # Plain text: rich, which the commands say it with, may be what was being imported.
        sys.stderr.write(f"stopped by {stop_name(signum)}, nothing published\n")
        return 128 + signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
