"""Read an offline W&B run back: the records of its .wandb file (wandb's LevelDB-style log of protobuf Records).

wandb >= 0.19 writes the file from its Go core and ships no Python reader, so this parses the log format: a 7-byte
header (":W&B", magic, version), then 32 KiB blocks of chunks (crc32 4, length 2, type 1: full/first/middle/last).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a .wandb file"
    out, pos, pending = [], HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the rest of a block too small for a chunk header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:  # zero padding: the end of what was written
            break
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, FIRST):
            pending = chunk
        elif kind in (MIDDLE, LAST):
            pending += chunk
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(pending)
            out.append(rec)
    return out


def history(path: str | Path) -> list[dict]:
    """The logged rows (key -> value) of one offline run, in order."""
    rows = []
    for rec in records(path):
        if rec.WhichOneof("record_type") == "history":
            items = rec.history.item
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items})
    return rows
