"""The torch-free TensorBoard writer against tensorboardX: its protocol buffers parse our
records, its CRC-32C checks our framing, and its own writer gives the same events."""

import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboardX import SummaryWriter
from tensorboardX.crc32c import crc32c as reference_crc32c
from tensorboardX.proto import event_pb2

from lopd_jax.training import tensorboard


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(path: Path) -> list[event_pb2.Event]:
    """Every record of an event file, its two CRCs checked with tensorboardX's CRC-32C."""
    data, offset, events = path.read_bytes(), 0, []
    while offset < len(data):
        header = data[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
        body = data[offset + 12 : offset + 12 + length]
        (body_crc,) = struct.unpack("<I", data[offset + 12 + length : offset + 16 + length])
        assert header_crc == _masked(reference_crc32c(header))
        assert body_crc == _masked(reference_crc32c(body))
        events.append(event_pb2.Event.FromString(body))
        offset += 16 + length
    assert offset == len(data)
    return events


def summary(events):
    """(step, tag, value) of the scalars; (step, 'START') of the restart markers."""
    out = []
    for e in events:
        if e.HasField("summary"):
            out += [(e.step, v.tag, v.simple_value) for v in e.summary.value]
        if e.session_log.status == event_pb2.SessionLog.START:
            out.append((e.step, "START"))
    return out


def test_crc32c_matches_tensorboardx():
    for data in (b"", b"a", b"123456789", bytes(range(256)) * 3):
        assert tensorboard.crc32c(data) == reference_crc32c(data)
    assert tensorboard.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value


SCALARS = [
    (0, "eval/loss", 2.5), (1, "train/loss", 1.25), (1, "train/lr", 3e-4),
    (2, "train/loss", float("nan")), (2, "train/grad_norm", float("inf")),
    (300, "train/tokens_per_s", 123456.7),
]  # fmt: skip


@pytest.mark.parametrize("purge_step", [None, 0, 7])
def test_events_equal_tensorboardx_events(tmp_path, purge_step):
    ours = tensorboard.EventWriter(tmp_path / "ours", purge_step=purge_step)
    reference = SummaryWriter(str(tmp_path / "reference"), purge_step=purge_step)
    for step, tag, value in SCALARS:
        ours.add_scalar(tag, value, step)
        reference.add_scalar(tag, value, step)
    ours.close()
    reference.close()
    (ours_file,) = (tmp_path / "ours").iterdir()
    (reference_file,) = (tmp_path / "reference").iterdir()
    assert "tfevents" in ours_file.name
    got, want = read_events(ours_file), read_events(reference_file)
    assert got[0].file_version == want[0].file_version == "brain.Event:2"

    def comparable(rows):  # NaN != NaN
        return [tuple("nan" if isinstance(x, float) and math.isnan(x) else x for x in r)
                for r in rows]  # fmt: skip

    assert comparable(summary(got)) == comparable(summary(want))
    assert all(e.wall_time > 1e9 for e in got)


def test_writing_tensorboard_imports_no_torch(tmp_path):
    code = (
        "import sys; from lopd_jax.training import metrics; "
        f"w = metrics.MetricsWriter({str(tmp_path)!r}); w.write(1, {{'loss': 1.0}}, 'train'); "
        "w.close(); assert 'torch' not in sys.modules and 'tensorboardX' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert len(list((tmp_path / "tb").iterdir())) == 1
