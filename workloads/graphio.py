"""Edge-list input: open a local path or a pyarrow URI, split it into byte ranges, parse one range.

Every worker calls :func:`read_range` on its own byte range, so the driver never reads the whole
file (a cluster's driver may hold none of it).  A range ``[start, end)`` owns exactly the lines
whose first byte lies in it; the reader looks one byte back to decide whether ``start`` begins a
line and reads past ``end`` to finish the last line it owns.  Parsing is pyarrow's C++ CSV reader
with typed integer columns: int32 when every id of the range fits (a third faster to parse, half the
memory), else int64, so node ids stay exact however large they are (the seed's float32 ids were not).

``hdfs://`` URIs are read over WebHDFS (HTTP range reads from the NameNode's web address, which
redirects each read to a DataNode holding the block): it needs no libhdfs or JVM on the reading host,
and each worker reads only its own range.  ``webhdfs://HOST:HTTP_PORT/path`` names the web address
directly.

The format is the seed's: an optional header line (``node1,node2``) and one ``a,b`` integer pair per
line.  A malformed line is reported with the file, the 1-based line number and the byte offset.
"""
from __future__ import annotations

import getpass
import http.client
import io
import json
import os
import re
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs

from workloads.record import UserError

_READ_BLOCK = 1 << 24  # most bytes read per call when scanning for a line end
_FIRST_SCAN = 1 << 16  # first read of that scan: a line is short, and a remote read costs what it moves
_LINE_OK = re.compile(rb"^\s*-?\d+\s*,\s*-?\d+\s*$")
_NUMBER = re.compile(rb"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_PARSE_BLOCK = 1 << 23  # bytes of CSV per parsed block (its Arrow memory, freed before the next: ~3 MB of columns)


@dataclass(frozen=True)
class InputInfo:
    """What the driver learns about an input without reading it: size and where the data starts."""

    uri: str
    size: int
    data_start: int  # byte offset of the first data line (after the header, if any)


def open_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """Return (filesystem, path) for a local path, ``file://``, ``hdfs://`` or ``webhdfs://`` URI."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().absolute())
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme in ("hdfs", "webhdfs"):
        if not parts.hostname:
            raise UserError(f"cannot open {uri}: no host (expected {parts.scheme}://HOST:PORT/path)")
        web = f"{parts.hostname}:{parts.port}" if parts.scheme == "webhdfs" else namenode_http_address(parts.hostname)
        return pafs.PyFileSystem(WebHdfs(web)), parts.path
    if parts.scheme != "file":  # Arrow would try its S3 or GCS client (a minute's wait for gs://)
        raise UserError(f"cannot open {uri}: {parts.scheme}:// is not supported; give a local path, or a "
                        "file://, hdfs:// or webhdfs:// URI")
    try:
        return pafs.FileSystem.from_uri(uri)
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"cannot open {uri}: {_first_line(exc)}") from None


# --- WebHDFS ----------------------------------------------------------------------------------------

_NAMENODE_HTTP_PORT = 9870  # Hadoop 3's default dfs.namenode.http-address port


def namenode_http_address(host: str) -> str:
    """``host:port`` of the NameNode's web server: dfs.namenode.http-address from the node's
    hdfs-site.xml ($HADOOP_CONF_DIR, default /etc/hadoop) when it names one, else ``host:9870``."""
    site = Path(os.environ.get("HADOOP_CONF_DIR", "/etc/hadoop")) / "hdfs-site.xml"
    try:
        root = ET.parse(site).getroot()
    except (OSError, ET.ParseError):
        return f"{host}:{_NAMENODE_HTTP_PORT}"
    for prop in root.iter("property"):
        if prop.findtext("name") == "dfs.namenode.http-address" and prop.findtext("value"):
            addr = prop.findtext("value").strip()
            return addr if not addr.startswith("0.0.0.0:") else f"{host}:{addr.rsplit(':', 1)[1]}"
    return f"{host}:{_NAMENODE_HTTP_PORT}"


class WebHdfs(pafs.FileSystemHandler):
    """Read-only pyarrow filesystem over WebHDFS (simple authentication: ``user.name``)."""

    CONNECT_TIMEOUT = 5.0  # a power-cut host does not refuse, it stays silent

    def __init__(self, address: str, timeout: float = 300.0) -> None:
        self.address, self.timeout, self.user = address, timeout, getpass.getuser()

    def url(self, path: str, op: str, **params: int | str) -> str:
        query = urllib.parse.urlencode({"op": op, "user.name": self.user, **params})
        return f"http://{self.address}/webhdfs/v1{urllib.parse.quote(path)}?{query}"

    def get(self, path: str, op: str, **params: int | str) -> bytes:
        """One WebHDFS GET to the NameNode; HTTP errors become OSError."""
        return self.fetch(self.url(path, op, **params), path, op)

    def read(self, path: str, offset: int, length: int, tries: int = 3) -> bytes:
        """``length`` bytes at ``offset``: the NameNode names a DataNode holding the block (the local
        one first); one that does not answer (a power-cut host the NameNode still counts live) is
        excluded and the NameNode asked again, as Hadoop's own WebHDFS client does."""
        excluded: list[str] = []
        while True:
            params = {"offset": offset, "length": length, "noredirect": "true"}
            if excluded:
                params["excludedatanodes"] = ",".join(excluded)
            location = json.loads(self.get(path, "OPEN", **params))["Location"]
            try:
                return self.fetch(location, path, "OPEN")
            except ConnectionError:
                excluded.append(urllib.parse.urlsplit(location).netloc)
                if len(excluded) >= tries:
                    raise

    def fetch(self, url: str, path: str, op: str) -> bytes:
        """GET ``url``: the body, FileNotFoundError/OSError for an HTTP error, ConnectionError when the
        server cannot be reached."""
        parts = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=self.CONNECT_TIMEOUT)
        try:
            try:
                conn.connect()
                conn.sock.settimeout(self.timeout)
                conn.request("GET", f"{parts.path}?{parts.query}")
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                raise ConnectionError(f"webhdfs at {parts.netloc} not answering: {exc}") from None
        finally:
            conn.close()
        if resp.status == 200:
            return body
        try:
            why = json.loads(body)["RemoteException"]["message"].splitlines()[0]
        except (ValueError, KeyError, TypeError, IndexError):
            why = f"HTTP {resp.status}"
        raise (FileNotFoundError if resp.status == 404 else OSError)(f"webhdfs {op} {path}: {why}")

    def get_type_name(self) -> str:
        return "webhdfs"

    def normalize_path(self, path: str) -> str:
        return path

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        infos = []
        for path in paths:
            try:
                st = json.loads(self.get(path, "GETFILESTATUS"))["FileStatus"]
            except FileNotFoundError:
                infos.append(pafs.FileInfo(path, pafs.FileType.NotFound))
                continue
            kind = pafs.FileType.File if st["type"] == "FILE" else pafs.FileType.Directory
            infos.append(pafs.FileInfo(path, kind, size=st["length"] if kind == pafs.FileType.File else None))
        return infos

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        """A directory's entries (LISTSTATUS), recursively when the selector asks for it."""
        base = selector.base_dir.rstrip("/")
        try:
            listing = json.loads(self.get(base or "/", "LISTSTATUS"))["FileStatuses"]["FileStatus"]
        except FileNotFoundError:
            if selector.allow_not_found:
                return []
            raise
        infos = []
        for st in listing:
            path = f"{base}/{st['pathSuffix']}"
            kind = pafs.FileType.File if st["type"] == "FILE" else pafs.FileType.Directory
            infos.append(pafs.FileInfo(path, kind, size=st["length"] if kind == pafs.FileType.File else None))
            if selector.recursive and kind == pafs.FileType.Directory:
                infos += self.get_file_info_selector(pafs.FileSelector(path, recursive=True))
        return infos

    def open_input_file(self, path: str) -> pa.NativeFile:
        [info] = self.get_file_info([path])
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(f"webhdfs: no file {path}")
        return pa.PythonFile(_WebHdfsFile(self, path, info.size), mode="r")

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self.open_input_file(path)

    def _read_only(self, *args: object) -> None:
        raise OSError("webhdfs: this reader is read-only (write with `hdfs dfs -put`)")

    create_dir = delete_dir = delete_dir_contents = _read_only
    delete_root_dir_contents = delete_file = move = copy_file = _read_only
    open_output_stream = open_append_stream = _read_only


class _WebHdfsFile(io.RawIOBase):
    """A seekable file whose every read is one ranged WebHDFS OPEN (served by a DataNode)."""

    def __init__(self, fs: WebHdfs, path: str, size: int) -> None:
        super().__init__()
        self.fs, self.path, self.size, self.pos = fs, path, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n is None or n < 0 else min(n, self.size - self.pos)
        if n <= 0:
            return b""
        data = self.fs.read(self.path, self.pos, n)
        if len(data) != n:
            raise OSError(f"webhdfs: short read of {self.path} at {self.pos}: {len(data)} of {n} bytes")
        self.pos += n
        return data

    def readinto(self, buf) -> int:  # noqa: ANN001 (a writable buffer)
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)


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
    data_start = 3 if head.startswith(b"\xef\xbb\xbf") else 0  # a UTF-8 byte-order mark (a spreadsheet's CSV) is not data
    first, _, _ = head[data_start:].partition(b"\n")
    if first.strip() and not _LINE_OK.match(first):
        cols = first.split(b",")
        if len(cols) != 2 or not all(c.strip() for c in cols) or any(_NUMBER.match(c) for c in cols):
            # only a line with no number in it is a header: '1,2.5' is a bad edge, not a header
            raise UserError(f"{uri}: line 1 (byte offset 0): expected a 'node1,node2' header or two integers "
                            f"'node1,node2', got {first[:60].decode('utf-8', 'replace').strip()!r}")
        data_start += len(first) + 1
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


def rank_blocks(info: InputInfo, block_bytes: int, rank: int, world: int) -> list[tuple[int, tuple[int, int]]]:
    """Rank ``rank`` of ``world``'s contiguous share of :func:`block_ranges`: (block index, its range)."""
    blocks = block_ranges(info, block_bytes)
    cut = np.linspace(0, len(blocks), world + 1).round().astype(int)
    return [(b, blocks[b]) for b in range(cut[rank], cut[rank + 1])]


def _line_end(f: pa.NativeFile, pos: int, size: int) -> int:
    """Offset just past the newline at or after ``pos`` (or ``size``)."""
    step = _FIRST_SCAN
    while pos < size:
        chunk = f.read_at(min(step, size - pos), pos)
        i = chunk.find(b"\n")
        if i >= 0:
            return pos + i + 1
        pos += len(chunk)
        step = min(step * 4, _READ_BLOCK)
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
    lines = count_lines(buf)
    for dtype in (pa.int32(), pa.int64()):
        try:
            return _parse_into(buf, dtype, lines)
        except pa.ArrowInvalid as exc:
            why = _first_line(exc)
        except _EmptyField:
            why = "empty field"
            break
    raise bad_line_error(info, bytes(buf), offset, why) from None


class _EmptyField(Exception):
    """A line with a field left empty (Arrow reads it as a null)."""


def count_lines(buf: bytes | pa.Buffer) -> int:
    """At most how many lines ``buf`` holds (its newlines, plus a last line without one), counted a
    slice at a time (a comparison of the whole range would be as large as the range)."""
    view = np.frombuffer(buf, np.uint8)
    step = 1 << 20
    newline = np.empty(step, dtype=bool)
    count = 1
    for i in range(0, len(view), step):
        part = view[i:i + step]
        count += int(np.count_nonzero(np.equal(part, 10, out=newline[:len(part)])))
    return count


def _parse_into(buf: bytes | pa.Buffer, dtype: pa.DataType, lines: int) -> tuple[np.ndarray, np.ndarray]:
    """The two columns, parsed one block at a time (:func:`_read_csv`) into arrays of numpy's own
    memory sized from the line count, each block's Arrow memory freed before the next.  Parsed whole
    and then copied out, a rank held its edges twice (~16 B per edge: 3.1 GiB per rank on ``data``)."""
    out = [np.empty(lines, dtype=dtype.to_pandas_dtype()) for _ in range(2)]
    at = 0
    for batch in _read_csv(buf, dtype):
        k = batch.num_rows
        for col, into in zip(batch.columns, out, strict=True):
            if col.null_count:
                raise _EmptyField
            into[at:at + k] = col.to_numpy()
        at += k
        del batch
    pa.default_memory_pool().release_unused()
    return truncate(out[0], at), truncate(out[1], at)


def truncate(a: np.ndarray, n: int) -> np.ndarray:
    """``a[:n]``; when ``a`` owns its memory it is shrunk in place (realloc gives the tail's pages back
    to the system), so no caller may keep a view of it."""
    if a.base is None and a.flags.owndata:
        a.resize(n, refcheck=False)
        return a
    return a[:n]


def _read_csv(buf: bytes | pa.Buffer, dtype: pa.DataType) -> pacsv.CSVStreamingReader:
    """The parse, in the calling thread, a block of :data:`_PARSE_BLOCK` bytes at a time.  A rank has
    one CPU (Ray sets OMP_NUM_THREADS=1 in a 1-CPU actor, spawn_torch in its ranks, and Arrow sizes its
    thread pool by it), so Arrow's threads bought nothing but a handoff, and the memory they parsed
    into stayed with them: Arrow's pool (mimalloc here) gives a thread's freed pages back when that
    thread releases, or every thread's from the main thread, and a Ray rank runs in an actor thread,
    where half of data_1 left 0.8-1.3 GiB resident after its load against 0.31 GiB (its two columns
    and the interpreter)."""
    return pacsv.open_csv(
        pa.BufferReader(buf),
        read_options=pacsv.ReadOptions(column_names=["node1", "node2"], block_size=_PARSE_BLOCK, use_threads=False),
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
