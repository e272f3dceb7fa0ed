"""Reading a PNG screenshot in pure Python (no Pillow): size and pixels, for layout checks."""
from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Image(NamedTuple):
    width: int
    height: int
    channels: int  # 3 (RGB) or 4 (RGBA)
    rows: list  # bytes per row, unfiltered

    def pixel(self, x: int, y: int) -> tuple:
        start = x * self.channels
        return tuple(self.rows[y][start:start + 3])


def read_png(data: bytes) -> Image:
    """8-bit RGB or RGBA, not interlaced (what Chromium writes); ValueError otherwise."""
    if not data.startswith(SIGNATURE):
        raise ValueError("not a PNG file")
    position, header, compressed = len(SIGNATURE), None, []
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            compressed.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise ValueError("no IHDR chunk")
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in (2, 6) or interlace:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour}, interlace {interlace}")
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(compressed))
    stride = width * channels
    rows: list = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        _unfilter(kind, line, previous, channels)
        rows.append(bytes(line))
        previous = line
    return Image(width, height, channels, rows)


def _unfilter(kind: int, line: bytearray, previous: bytearray, bpp: int) -> None:
    """Undo one row's filter (PNG specification, section 9.2), in place."""
    if kind == 0:
        return
    if kind == 2:
        for i, up in enumerate(previous):
            line[i] = (line[i] + up) & 0xFF
        return
    for i in range(len(line)):
        left = line[i - bpp] if i >= bpp else 0
        if kind == 1:
            line[i] = (line[i] + left) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif kind == 4:
            up, corner = previous[i], previous[i - bpp] if i >= bpp else 0
            estimate = left + up - corner
            da, db, dc = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
            line[i] = (line[i] + (left if da <= db and da <= dc else up if db <= dc else corner)) & 0xFF
        else:
            raise ValueError(f"unknown PNG filter type {kind}")
