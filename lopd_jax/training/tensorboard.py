"""TensorBoard event files of scalars, written without TensorFlow, tensorboardX or torch.

tensorboardX imports torch when it is installed (seconds of every training run's start, for a
few scalars). The format is small enough to write directly: a file of TFRecords, each an
`Event` protocol buffer (tensorflow/core/util/event.proto) framed as

    u64 length | u32 masked CRC-32C of the length | event bytes | u32 masked CRC-32C of them

(little-endian). The first event names the format (`file_version`); a resumed run's writer
then records a `SessionLog.START` at its first new step, which makes TensorBoard hide the
earlier run's events at that step and after (tensorboardX's `purge_step`). Scalars are
`Summary.Value(tag, simple_value)` events, as tensorboardX writes them.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

FILE_VERSION = "brain.Event:2"
_SESSION_START = 1  # SessionLog.SessionStatus.START


class EventWriter:
    """`add_scalar(tag, value, step)` into a new event file in `logdir` (a local directory)."""

    def __init__(self, logdir: str | os.PathLike, *, purge_step: int | None = None):
        directory = Path(logdir)
        directory.mkdir(parents=True, exist_ok=True)
        # TensorBoard reads a directory's event files in name order: the time in ns sorts them.
        name = f"events.out.tfevents.{time.time_ns()}.{socket.gethostname()}"
        self.path = directory / name
        self._file = open(self.path, "wb")
        self._write(_event(step=0, file_version=FILE_VERSION))
        if purge_step is not None:
            self._write(_event(step=purge_step, session_log=_key(1, 0) + _varint(_SESSION_START)))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        summary_value = _string(1, tag) + _key(2, 5) + struct.pack("<f", value)
        self._write(_event(step=step, summary=_field(1, summary_value)))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def _write(self, event: bytes) -> None:
        header = struct.pack("<Q", len(event))
        self._file.write(header + struct.pack("<I", masked_crc32c(header)))
        self._file.write(event + struct.pack("<I", masked_crc32c(event)))


def _event(step: int, *, file_version: str = "", summary=b"", session_log=b"") -> bytes:
    """An `Event`: wall_time = 1 (double), step = 2, file_version = 3, summary = 5,
    session_log = 7."""
    out = _key(1, 1) + struct.pack("<d", time.time()) + _key(2, 0) + _varint(step)
    if file_version:
        out += _string(3, file_version)
    if summary:
        out += _field(5, summary)
    if session_log:
        out += _field(7, session_log)
    return out


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (a string or an embedded message)."""
    return _key(number, 2) + _varint(len(payload)) + payload


def _string(number: int, text: str) -> bytes:
    return _field(number, text.encode())


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64: a negative value is its two's complement
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)  # Castagnoli, reflected
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's mask: a CRC of data that holds CRCs is itself a poor CRC."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
