"""The container around the tensors: magic, header, section table — and :func:`info`.

No torch here (nor numba): :func:`info` and :func:`is_container` serve ``edl info``,
which must start fast.  See :mod:`efficientdl.format.container` for the layout.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

from ..errors import FormatError
from ..report.results import LayerRecord
from .kinds import ALIAS, MAX_TOTAL_ELEMENTS, Decoded, check_record, kind_of

MAGIC = b"EDLZ"
FORMAT_VERSION = 1
#: magic, version, reserved, header_len, header_crc
PREFIX = struct.Struct("<4sHHII")
MAX_HEADER_BYTES = 64 << 20


def is_container(path: str | os.PathLike) -> bool:
    """Whether the file at ``path`` is a compressed file (begins with the magic bytes).

    Raises:
        FormatError: ``PATH: cannot read (reason)`` — missing, a directory, no permission.
    """
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror or e})") from None


def read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of the file at ``path``, or a one-line :class:`FormatError` saying why not."""
    p = Path(path)
    if not p.exists():
        raise FormatError(f"{p}: no such file")
    if p.is_dir():
        raise FormatError(f"{p}: is a directory, expected a compressed file")
    if not p.is_file():
        raise FormatError(f"{p}: is not a regular file")
    try:
        return p.read_bytes()
    except OSError as e:
        raise FormatError(f"{p}: cannot read ({e.strerror})") from None


def header_bytes(header: dict) -> bytes:
    """The prefix and the compressed header of a file with ``header``."""
    raw = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    return PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(raw), zlib.crc32(raw)) + raw


def parse_header(data: bytes, where: str) -> tuple[dict, memoryview]:
    """Check the prefix and parse the header; return ``(header, blob)``."""
    if len(data) < PREFIX.size or data[:4] != MAGIC:
        raise FormatError(f"{where}: not an efficientdl compressed file (bad magic)")
    _, version, reserved, header_len, header_crc = PREFIX.unpack_from(data)
    if version != FORMAT_VERSION:
        raise FormatError(f"{where}: format version {version} is not supported (this reader knows {FORMAT_VERSION})")
    if reserved != 0:
        raise FormatError(f"{where}: reserved field is {reserved}, expected 0 (corrupted file)")
    end = PREFIX.size + header_len
    if header_len > MAX_HEADER_BYTES or end > len(data):
        raise FormatError(f"{where}: truncated file (header declares {header_len} bytes)")
    raw = data[PREFIX.size:end]
    if zlib.crc32(raw) != header_crc:
        raise FormatError(f"{where}: header checksum mismatch (corrupted file)")
    try:
        d = zlib.decompressobj()
        text = d.decompress(raw, MAX_HEADER_BYTES)
        if d.unconsumed_tail:
            raise FormatError(f"{where}: header too large")
        header = json.loads(text)
    except (zlib.error, ValueError, UnicodeDecodeError):
        raise FormatError(f"{where}: header is not valid (corrupted file)") from None
    if (not isinstance(header, dict) or header.get("format") != "efficientdl"
            or header.get("version") != version or not isinstance(header.get("tensors"), list)):
        raise FormatError(f"{where}: header lacks the efficientdl fields")
    return header, memoryview(data)[end:]


def check_section_table(header: dict, blob: memoryview, where: str) -> None:
    """The sections of all records must tile the blob exactly: no gap, no overlap, nothing after.

    The writer lays sections back to back, so a section moved or resized — even with its
    checksum recomputed — is refused.
    """
    spans = []
    for rec in header["tensors"]:
        secs = rec.get("sections") if isinstance(rec, dict) else None
        for sec in secs.values() if isinstance(secs, dict) else ():
            if isinstance(sec, list) and len(sec) == 3 and all(isinstance(x, int) and not isinstance(x, bool)
                                                               for x in sec[:2]):
                spans.append((sec[0], sec[1]))
    blob_end = max((off + length for off, length in spans), default=0)
    if blob_end > len(blob):
        raise FormatError(f"{where}: truncated file ({len(blob)} data bytes, sections need {blob_end})")
    position = 0
    for off, length in sorted(spans):
        if off != position:
            raise FormatError(f"{where}: sections {'overlap' if off < position else 'leave a gap'} at byte {off} "
                              "(corrupted file)")
        position += length
    if position < len(blob):
        raise FormatError(f"{where}: {len(blob) - position} unexpected bytes after the last section")


def read_records(data: bytes, where: str, values: bool = True) -> tuple[dict, list[tuple[dict, Decoded | LayerRecord]]]:
    """Validate a whole file and read its tensors, each through its kind.

    Args:
        data: the whole file.
        where: name used in error messages (the path).
        values: decode every tensor (:meth:`~.kinds.FileTensorKind.decode`, a
            :class:`~.kinds.Decoded` each); with False only its size record
            (:meth:`~.kinds.FileTensorKind.size`, numpy only).

    Returns:
        ``(header, [(record, decoded or size record), ...])``: the stored tensors in file
        order, then the aliases (whose entry is their size record).
    """
    header, blob = parse_header(data, where)
    check_section_table(header, blob, where)
    out: list[tuple[dict, Decoded | LayerRecord]] = []
    stored: dict[str, dict] = {}
    aliases = []
    budget = [MAX_TOTAL_ELEMENTS]
    for rec in header["tensors"]:
        if isinstance(rec, dict) and rec.get("kind") == ALIAS.name:
            ALIAS.validate(rec, blob, where)
            aliases.append(rec)
            continue
        check_record(rec, where, budget)
        kind = kind_of(rec, where)
        kind.validate(rec, blob, where)
        out.append((rec, kind.decode(rec, blob, where) if values else kind.size(rec, blob, where)))
        if rec["name"] in stored:
            raise FormatError(f"{where}: tensor '{rec['name']}' appears twice")
        stored[rec["name"]] = rec
    for rec in aliases:  # tied parameters: the same tensor under another name
        if rec["name"] in stored:
            raise FormatError(f"{where}: tensor '{rec['name']}' appears twice")
        out.append((rec, ALIAS.resolve(rec, stored, where)))
        stored[rec["name"]] = rec
    return header, out


def info(path: str | os.PathLike) -> dict[str, Any]:
    """Describe a compressed file: architecture, metadata, per-tensor sizes and ratio.

    The file is validated as :func:`~efficientdl.format.read` does, but no tensor is
    built: sizes come from the header and the section lengths, counts of nonzero
    weights and Huffman bit counts from the streams, read with numpy (no torch).

    Returns:
        A JSON-serialisable dict with ``size_bytes``, ``original_bytes`` (fp32 bytes
        of all floating tensors), ``ratio``, ``arch``, ``meta`` and ``tensors`` (one
        size record each, :class:`~efficientdl.report.results.LayerRecord`).
    """
    data = read_bytes(path)
    header, entries = read_records(data, str(path), values=False)
    layers = [layer for _, layer in entries]
    original = sum(4 * layer.weights for (rec, layer) in entries      # a tied tensor counts once
                   if layer.kind != ALIAS.name and rec["dtype"].startswith("float"))
    return {
        "path": str(path),
        "format_version": header["version"],
        "size_bytes": len(data),
        "original_bytes": original,
        "ratio": original / len(data),
        "arch": header.get("arch"),
        "meta": header.get("meta"),
        "tensors": [layer.to_dict() for layer in layers],
    }
