"""msgpack encoding of typed messages. A frame that does not decode to an expected type is dropped and counted."""

from __future__ import annotations

import logging
from typing import Any

import msgspec

log = logging.getLogger("pyoomd.ipc")


class Channel:
    """Encoder and validating decoder for one kind of traffic (a union of message types)."""

    def __init__(self, name: str, message_type: Any) -> None:
        self.name = name
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(message_type)
        self.dropped = 0
        self._reasons_logged: set[str] = set()

    def encode(self, message: msgspec.Struct) -> bytes:
        return self._encoder.encode(message)

    def decode(self, frame: bytes) -> Any | None:
        """The message, or None after counting the frame as dropped (and logging each new reason once)."""
        try:
            return self._decoder.decode(frame)
        # msgspec lets two errors of malformed frames through as they are: RecursionError for nesting past its
        # depth limit (a few bytes per level: nested one-entry maps) and UnicodeDecodeError for a field name that
        # is not UTF-8. Both are a malformed frame like any other.
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError, UnicodeDecodeError) as e:
            self.dropped += 1
            reason = str(e)
            if reason not in self._reasons_logged and len(self._reasons_logged) < 100:
                self._reasons_logged.add(reason)
                log.warning("%s: dropped a malformed frame (%d bytes): %s", self.name, len(frame), reason)
            return None
