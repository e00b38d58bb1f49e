"""Edge-list input: open a local path or a pyarrow URI, split it into byte ranges, parse one range.

Every worker calls :func:`read_range` on its own byte range, so the driver never reads the whole
file (DESIGN.md).  A range ``[start, end)`` owns exactly the lines whose first byte lies in it; the
reader looks one byte back to decide whether ``start`` begins a line and reads past ``end`` to finish
the last line it owns.  Parsing is pyarrow's C++ CSV reader with typed integer columns: int32 when
every id of the range fits (a third faster to parse, half the memory), else int64, so node ids stay
exact however large they are (the seed's float32 ids were not).

The format is the seed's: an optional header line (``node1,node2``) and one ``a,b`` integer pair per
line.  A malformed line is reported with the file, the 1-based line number and the byte offset.
"""
from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs

from workloads.record import UserError

_READ_BLOCK = 1 << 24  # bytes read per call when scanning for a line end
_LINE_OK = re.compile(rb"^\s*-?\d+\s*,\s*-?\d+\s*$")
_NUMBER = re.compile(rb"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


@dataclass(frozen=True)
class InputInfo:
    """What the driver learns about an input without reading it: size and where the data starts."""

    uri: str
    size: int
    data_start: int  # byte offset of the first data line (after the header, if any)


def open_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """Return (filesystem, path) for a local path, ``file://`` or ``hdfs://`` URI."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().absolute())
    try:
        return pafs.FileSystem.from_uri(uri)
    except (OSError, pa.ArrowException) as exc:
        hint = ""
        if uri.startswith(("hdfs://", "viewfs://")):
            hint = " (HDFS needs libhdfs: set ARROW_LIBHDFS_DIR or HADOOP_HOME, and CLASSPATH from `hadoop classpath --glob`)"
        raise UserError(f"cannot open {uri}: {_first_line(exc)}{hint}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _reason(exc: BaseException) -> str:
    """The OS's reason (``permission denied``) where there is one, else the first line of the error."""
    errno = getattr(exc, "errno", None)
    return os.strerror(errno).lower() if isinstance(errno, int) and errno > 0 else _first_line(exc)


def inspect_input(uri: str) -> InputInfo:
    """Check that ``uri`` exists and is non-empty; find where the data lines start."""
    fs, path = open_fs(uri)
    try:
        info = fs.get_file_info(path)
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"cannot open {uri}: {_first_line(exc)}") from None
    if info.type == pafs.FileType.NotFound:
        raise UserError(f"input file not found: {uri} (generate one with `python -m workloads.data NAME --out DIR`)")
    if info.type != pafs.FileType.File:
        raise UserError(f"input is not a file: {uri} (give --input an edge-list file, not a directory)")
    if info.size == 0:
        raise UserError(f"input file is empty: {uri} (expected a node1,node2 edge list)")
    try:
        with fs.open_input_file(path) as f:
            head = f.read_at(min(info.size, 4096), 0)
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"cannot read {uri}: {_reason(exc)}; check that it is a file this user may read") from None
    first, _, _ = head.partition(b"\n")
    data_start = 0
    if first.strip() and not _LINE_OK.match(first):
        cols = first.split(b",")
        if len(cols) != 2 or not all(c.strip() for c in cols) or any(_NUMBER.match(c) for c in cols):
            # only a line with no number in it is a header: '1,2.5' is a bad edge, not a header
            raise UserError(f"{uri}: line 1 (byte offset 0): expected a 'node1,node2' header or two integers "
                            f"'node1,node2', got {first[:60].decode('utf-8', 'replace').strip()!r}")
        data_start = len(first) + 1
    if data_start >= info.size or not head[data_start:].strip() and info.size <= 4096:
        raise UserError(f"input file has no edges: {uri} (only a header)")
    return InputInfo(uri=uri, size=info.size, data_start=data_start)


def split_ranges(info: InputInfo, parts: int) -> list[tuple[int, int]]:
    """Cut the data bytes into ``parts`` contiguous, nearly equal ranges (line alignment is the reader's job)."""
    if parts < 1:
        raise ValueError("parts must be >= 1")
    edges = np.linspace(info.data_start, info.size, parts + 1).round().astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def block_ranges(info: InputInfo, block_bytes: int) -> list[tuple[int, int]]:
    """Fixed-size blocks of the data bytes (the seed's 20 MiB batches), independent of worker count."""
    starts = list(range(info.data_start, info.size, block_bytes))
    return [(s, min(s + block_bytes, info.size)) for s in starts]


def _line_end(f: pa.NativeFile, pos: int, size: int) -> int:
    """Offset just past the newline at or after ``pos`` (or ``size``)."""
    while pos < size:
        chunk = f.read_at(min(_READ_BLOCK, size - pos), pos)
        i = chunk.find(b"\n")
        if i >= 0:
            return pos + i + 1
        pos += len(chunk)
    return size


def aligned_range(f: pa.NativeFile, size: int, start: int, end: int, data_start: int) -> tuple[int, int]:
    """Map a raw byte range to the byte span of the lines it owns."""
    def align(p: int) -> int:
        if p <= data_start:
            return data_start
        if p >= size:
            return size
        return p if f.read_at(1, p - 1) == b"\n" else _line_end(f, p, size)

    return align(start), align(end)


def read_range(info: InputInfo, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse the lines owned by ``[start, end)``: two integer arrays (node1, node2), int32 or int64."""
    fs, path = open_fs(info.uri)
    try:
        if isinstance(fs, pafs.LocalFileSystem):  # parse the page cache in place: no copy of the range
            with pa.memory_map(path) as f:
                lo, hi = aligned_range(f, info.size, start, end, info.data_start)
                f.seek(lo)
                return parse_edges(f.read_buffer(hi - lo) if hi > lo else b"", info, lo)
        with fs.open_input_file(path) as f:
            lo, hi = aligned_range(f, info.size, start, end, info.data_start)
            buf = f.read_at(hi - lo, lo) if hi > lo else b""
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"cannot read {info.uri}: {_first_line(exc)}") from None
    return parse_edges(buf, info, lo)


def parse_edges(buf: bytes | pa.Buffer, info: InputInfo, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse CSV bytes that start at file offset ``offset``; a bad line raises UserError naming it.

    Returns int32 arrays when every id fits, else int64 (a range with a bigger id is parsed twice).
    """
    if len(buf) == 0:
        return np.empty(0, np.int32), np.empty(0, np.int32)
    for dtype in (pa.int32(), pa.int64()):
        try:
            table = _read_csv(buf, dtype)
            break
        except pa.ArrowInvalid as exc:
            why = _first_line(exc)
    else:
        raise bad_line_error(info, bytes(buf), offset, why) from None
    if table.column(0).null_count or table.column(1).null_count:
        raise bad_line_error(info, bytes(buf), offset, "empty field")
    return table.column(0).to_numpy(zero_copy_only=False), table.column(1).to_numpy(zero_copy_only=False)


def _read_csv(buf: bytes | pa.Buffer, dtype: pa.DataType) -> pa.Table:
    return pacsv.read_csv(
        pa.BufferReader(buf),
        read_options=pacsv.ReadOptions(column_names=["node1", "node2"], block_size=1 << 26),
        parse_options=pacsv.ParseOptions(),
        convert_options=pacsv.ConvertOptions(column_types={"node1": dtype, "node2": dtype},
                                             strings_can_be_null=False, quoted_strings_can_be_null=False),
    )


def first_bad_line(buf: bytes) -> int | None:
    """Byte position (within ``buf``) of the first line that is not an ``a,b`` int64 pair."""
    pos = 0
    for line in io.BytesIO(buf):
        body = line.rstrip(b"\r\n")
        if body.strip():
            if not _LINE_OK.match(body):
                return pos
            a, b = body.split(b",")
            if not (_INT64_MIN <= int(a) <= _INT64_MAX and _INT64_MIN <= int(b) <= _INT64_MAX):
                return pos
        pos += len(line)
    return None


def line_number(info: InputInfo, offset: int) -> int:
    """1-based line number of the byte ``offset`` (counts newlines before it; error path only)."""
    fs, path = open_fs(info.uri)
    count, pos = 0, 0
    with fs.open_input_file(path) as f:
        while pos < offset:
            chunk = f.read_at(min(_READ_BLOCK, offset - pos), pos)
            count += chunk.count(b"\n")
            pos += len(chunk)
    return count + 1


def bad_line_error(info: InputInfo, buf: bytes, offset: int, why: str) -> UserError:
    """Build the one-line error for the first malformed line in ``buf``."""
    rel = first_bad_line(buf)
    if rel is None:
        return UserError(f"{info.uri}: cannot parse bytes {offset}..{offset + len(buf)}: {why}")
    at = offset + rel
    text = buf[rel:rel + 80].split(b"\n", 1)[0].decode("utf-8", "replace")
    return UserError(f"{info.uri}: line {line_number(info, at)} (byte offset {at}): "
                     f"expected two integers 'node1,node2', got {text!r}")
