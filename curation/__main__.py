"""The ``curation`` command's entry point (``python -m curation`` runs it too).

The stop signals' handler is taken here for the commands that read a recipe's sources (``run``, ``demo``,
``check``), before ``curation.cli`` imports what they run with (a second or more): a SIGTERM or ^C then is
said as any stop before reading is, not a silent exit 143. The other commands keep Python's and typer's
handling: ^C ends a served review page, and ``train wait`` with exit 130 (the training job goes on)."""

from __future__ import annotations

import sys

from curation.stopping import Stopped, stop_name, take_stop_signals

STOPPED_AS_A_RUN = ("run", "demo", "check")


def main() -> int:
    # The command as click finds it: the first word that is no option (the app's own options take no value).
    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
    if command in STOPPED_AS_A_RUN:
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
