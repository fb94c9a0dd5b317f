"""Log lines on stderr, with sd-daemon priority prefixes (<3> ...) when stderr goes to the journal."""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"<{_PRIORITY.get(record.levelno, 6)}>{super().format(record)}"


def setup_logging(process: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    fmt = f"pyoomd[{process}:%(process)d] %(levelname)s %(message)s"
    # systemd sets JOURNAL_STREAM when stderr is the journal; the prefix becomes the entry's priority there.
    handler.setFormatter(_JournalFormatter(fmt) if os.environ.get("JOURNAL_STREAM") else logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
