"""Newline-delimited framing with a hard cap on message size.

At most `max_bytes` of any one line is held in memory: the rest of a longer line is discarded as it
arrives and the line is reported as `Oversized`, so the server answers it and carries on.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LineFramer", "Oversized"]


@dataclass(frozen=True)
class Oversized:
    """A line longer than the cap; only its size is kept."""

    size: int


class LineFramer:
    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self._buffer = bytearray()
        self._discarding = False
        self._discarded = 0

    def feed(self, chunk: bytes) -> list[bytes | Oversized]:
        """Frames completed by `chunk`, in order. Blank lines are skipped; a trailing CR is removed."""
        frames: list[bytes | Oversized] = []
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            piece = chunk[start:] if newline < 0 else chunk[start:newline]
            self._take(piece)
            if newline < 0:
                return frames
            frame = self._end_line()
            if frame is not None:
                frames.append(frame)
            start = newline + 1

    def finish(self) -> list[bytes | Oversized]:
        """The last line when the stream ends without a newline (a truncated message still gets an answer)."""
        frame = self._end_line()
        return [frame] if frame is not None else []

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def _take(self, piece: bytes) -> None:
        if self._discarding:
            self._discarded += len(piece)
            return
        if len(self._buffer) + len(piece) > self.max_bytes:
            self._discarding = True
            self._discarded = len(self._buffer) + len(piece)
            self._buffer.clear()
            return
        self._buffer += piece

    def _end_line(self) -> bytes | Oversized | None:
        if self._discarding:
            frame: bytes | Oversized | None = Oversized(self._discarded)
            self._discarding = False
            self._discarded = 0
            return frame
        line = bytes(self._buffer).rstrip(b"\r")
        self._buffer.clear()
        return line if line.strip() else None
