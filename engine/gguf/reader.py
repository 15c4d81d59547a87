"""A thin GGUF reader over a memory map.

gguf-py's `GGUFReader` builds one numpy view per vocabulary string (seconds for a 262k-token
vocab); this reader parses the header with `struct` and keeps tensor data as zero-copy views,
so opening a multi-GB file costs milliseconds and no memory beyond its metadata.

Every length and count read from the file is checked against the bytes that remain before it
is used, so a corrupt header raises `GGUFError` instead of allocating gigabytes.
"""

from __future__ import annotations

import mmap
import operator
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from engine.errors import GGUFError, UnsupportedTypeError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # ggml tensors have at most four dimensions

# GGUF metadata value types -> (name, struct format or None for compound types).
_SCALAR_FORMATS: dict[int, tuple[str, str]] = {
    0: ("uint8", "B"),
    1: ("int8", "b"),
    2: ("uint16", "H"),
    3: ("int16", "h"),
    4: ("uint32", "I"),
    5: ("int32", "i"),
    6: ("float32", "f"),
    7: ("bool", "?"),
    10: ("uint64", "Q"),
    11: ("int64", "q"),
    12: ("float64", "d"),
}
_STRING, _ARRAY = 8, 9
_NUMPY_DTYPES = {
    0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
    6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64,
}


def type_name_of(value_type: int) -> str:
    if value_type == _STRING:
        return "string"
    if value_type == _ARRAY:
        return "array"
    return _SCALAR_FORMATS[value_type][0]


def ggml_type_name(ggml_type: int) -> str:
    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"type {ggml_type}"


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in the file. `shape` is in PyTorch order (GGUF's ne reversed)."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    type_name: str
    n_elements: int
    n_bytes: int
    offset: int  # absolute byte offset in the file
    index: int  # position in GGUFFile.tensors

    @property
    def ne(self) -> tuple[int, ...]:
        """GGUF's own dimension order: ne[0] is the contiguous (row) dimension."""
        return tuple(reversed(self.shape))


def _utf8(raw: bytes) -> str:
    # Some vocabularies hold invalid UTF-8 pieces; keep them readable (U+FFFD), not fail.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace")


class _Cursor:
    """Sequential, bounds-checked reads over the mapped header."""

    def __init__(self, buf: memoryview, path: Path):
        self.buf = buf
        self.pos = 0
        self.path = path

    def fail(self, problem: str) -> GGUFError:
        return GGUFError(f"{self.path}: {problem}")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.fail(f"truncated file: {what} at byte {self.pos} needs {n} bytes, "
                            f"only {len(self.buf) - self.pos} remain")

    def unpack(self, fmt: str, what: str) -> Any:
        size = struct.calcsize("<" + fmt)
        self.need(size, what)
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self, what: str) -> str:
        length = self.unpack("Q", f"length of {what}")
        self.need(length, what)
        raw = bytes(self.buf[self.pos:self.pos + length])
        self.pos += length
        return _utf8(raw)

    def count(self, what: str, min_item_size: int) -> int:
        n = self.unpack("Q", what)
        # A count can never exceed the bytes left divided by the smallest encoding of one item.
        if n * min_item_size > len(self.buf) - self.pos:
            raise self.fail(f"{what} is {n}, more than the file could hold")
        return n


def _min_value_size(value_type: int) -> int:
    if value_type == _STRING:
        return 8
    if value_type == _ARRAY:
        return 12
    return struct.calcsize("<" + _SCALAR_FORMATS[value_type][1])


_U64 = struct.Struct("<Q")


class StringArray(Sequence[str]):
    """An array of UTF-8 strings kept as one bytes blob and its offsets, decoded on access.

    A 262k-token vocabulary held as Python strings costs ~22 MiB (a str object per token and a
    list slot); as one blob plus an int64 offset per item it is ~4 MiB. Indexing returns a
    `str` (undecodable bytes become U+FFFD, as the list did); a slice returns a list, and the
    array compares equal to a list or tuple of the same strings.
    """

    __slots__ = ("_blob", "_offsets")

    def __init__(self, blob: bytes, offsets: np.ndarray):
        self._blob = blob
        self._offsets = offsets  # int64 [n + 1]: item i is blob[offsets[i]:offsets[i + 1]]

    @classmethod
    def from_strings(cls, items: Sequence[str]) -> StringArray:
        raw = [s.encode("utf-8", "surrogatepass") for s in items]
        offsets = np.zeros(len(raw) + 1, np.int64)
        np.cumsum([len(r) for r in raw], out=offsets[1:])
        return cls(b"".join(raw), offsets)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def _item(self, i: int) -> str:
        return _utf8(self._blob[self._offsets[i]:self._offsets[i + 1]])

    def __getitem__(self, index):  # int -> str, slice -> list[str]
        n = len(self)
        if isinstance(index, slice):
            return [self._item(i) for i in range(*index.indices(n))]
        i = operator.index(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"string array index {index} out of range ({n} items)")
        return self._item(i)

    def __iter__(self) -> Iterator[str]:
        offsets, blob = self._offsets.tolist(), self._blob
        for a, b in zip(offsets, offsets[1:]):
            yield _utf8(blob[a:b])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StringArray) and self._blob == other._blob:
            return np.array_equal(self._offsets, other._offsets)
        if isinstance(other, (list, tuple, StringArray)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # unhashable, like the list it stands in for

    @property
    def nbytes(self) -> int:
        return len(self._blob) + self._offsets.nbytes

    def __repr__(self) -> str:
        head = ", ".join(repr(s) for s in self[:4])
        return f"StringArray([{head}{', …' if len(self) > 4 else ''}], n={len(self)})"


def _read_string_array(cur: _Cursor, n: int, key: str) -> StringArray:
    """The hot loop of opening a file (a vocabulary is 30k-260k strings), kept tight."""
    buf, pos, end, unpack = cur.buf, cur.pos, len(cur.buf), _U64.unpack_from
    base = pos
    lengths: list[int] = []
    append = lengths.append
    for _ in range(n):
        if pos + 8 > end:
            cur.pos = pos
            cur.need(8, f"length of an item of {key}")
        (length,) = unpack(buf, pos)
        pos += 8
        if length > end - pos:
            cur.pos = pos
            cur.need(length, f"item of {key}")
        append(length)
        pos += length
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.asarray(lengths, np.int64), out=offsets[1:])
    # One copy of the items' bytes, the 8-byte length prefix before each one left out.
    keep = np.ones(pos - base, bool)
    prefix_at = 8 * np.arange(n, dtype=np.int64) + offsets[:-1]
    for k in range(8):
        keep[prefix_at + k] = False
    blob = np.frombuffer(buf, np.uint8, count=pos - base, offset=base)[keep].tobytes()
    cur.pos = pos
    return StringArray(blob, offsets)


def _read_value(cur: _Cursor, value_type: int, key: str) -> tuple[Any, str]:
    if value_type in _SCALAR_FORMATS:
        name, fmt = _SCALAR_FORMATS[value_type]
        return cur.unpack(fmt, f"value of {key}"), name
    if value_type == _STRING:
        return cur.string(f"value of {key}"), "string"
    if value_type == _ARRAY:
        item_type = cur.unpack("I", f"array type of {key}")
        if item_type not in _SCALAR_FORMATS and item_type not in (_STRING, _ARRAY):
            raise cur.fail(f"metadata key {key!r} has unknown array item type {item_type}")
        n = cur.count(f"array length of {key!r}", _min_value_size(item_type))
        if item_type in _NUMPY_DTYPES:
            dtype = np.dtype(_NUMPY_DTYPES[item_type]).newbyteorder("<")
            cur.need(n * dtype.itemsize, f"array {key}")
            arr = np.frombuffer(cur.buf, dtype=dtype, count=n, offset=cur.pos).copy()
            cur.pos += n * dtype.itemsize
            return arr, f"array[{type_name_of(item_type)}]"
        if item_type == _STRING:
            return _read_string_array(cur, n, key), "array[string]"
        items = [_read_value(cur, item_type, key)[0] for _ in range(n)]
        return items, "array[array]"
    raise cur.fail(f"metadata key {key!r} has unknown value type {value_type}")


class GGUFFile:
    """An open GGUF file: parsed metadata and tensor directory over a read-only memory map."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).resolve()
        try:
            self._fh = open(self.path, "rb")
        except OSError as exc:
            raise GGUFError(f"{self.path}: cannot open ({exc.strerror or exc})") from None
        try:
            self.file_size = os.fstat(self._fh.fileno()).st_size
            if self.file_size < 4:
                raise GGUFError(f"{self.path}: not a GGUF file (only {self.file_size} bytes)")
            self._mmap = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)
            self._parse()
        except BaseException:
            self.close()
            raise

    # -- parsing ------------------------------------------------------------------------------

    def _parse(self) -> None:
        cur = _Cursor(memoryview(self._mmap), self.path)
        magic = bytes(cur.buf[:4])
        if magic != GGUF_MAGIC:
            raise cur.fail(f"not a GGUF file (magic {magic!r}, expected b'GGUF')")
        cur.pos = 4
        self.version = cur.unpack("I", "version")
        if self.version not in SUPPORTED_VERSIONS:
            raise cur.fail(f"unsupported GGUF version {self.version} "
                           f"(supported: {', '.join(map(str, SUPPORTED_VERSIONS))})")
        n_tensors = cur.count("tensor count", 24)
        n_kv = cur.count("metadata count", 12)

        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, str] = {}
        for _ in range(n_kv):
            key = cur.string("metadata key")
            value_type = cur.unpack("I", f"type of {key}")
            value, type_name = _read_value(cur, value_type, key)
            if key in self.metadata:
                raise cur.fail(f"duplicated metadata key {key!r}")
            self.metadata[key] = value
            self.metadata_types[key] = type_name

        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise cur.fail(f"general.alignment {alignment!r} is not a power of two")
        self.alignment = alignment

        raw_infos = []
        seen: set[str] = set()
        for i in range(n_tensors):
            name = cur.string(f"name of tensor {i}")
            if name in seen:
                raise cur.fail(f"duplicated tensor name {name!r}")
            seen.add(name)
            n_dims = cur.unpack("I", f"dimension count of {name}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise cur.fail(f"tensor {name!r} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
            ne = tuple(cur.unpack("Q", f"shape of {name}") for _ in range(n_dims))
            ggml_type = cur.unpack("I", f"type of {name}")
            rel_offset = cur.unpack("Q", f"offset of {name}")
            raw_infos.append((name, ne, ggml_type, rel_offset))

        data_start = -(-cur.pos // alignment) * alignment
        self.data_offset = data_start
        self.tensors: list[TensorInfo] = []
        for index, (name, ne, ggml_type, rel_offset) in enumerate(raw_infos):
            self.tensors.append(self._tensor_info(index, name, ne, ggml_type, rel_offset))
        self._by_name = {t.name: t for t in self.tensors}

    def _tensor_info(self, index: int, name: str, ne: tuple[int, ...], ggml_type: int,
                     rel_offset: int) -> TensorInfo:
        fail = lambda problem: GGUFError(f"{self.path}: tensor {name!r} {problem}")  # noqa: E731
        if ggml_type not in GGML_QUANT_SIZES:
            raise UnsupportedTypeError(f"{self.path}: tensor {name!r} has unknown ggml type {ggml_type}")
        block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        if any(d <= 0 for d in ne):
            raise fail(f"has an empty or negative dimension {list(ne)}")
        n_elements = 1
        for d in ne:
            n_elements *= d
            if n_elements > self.file_size * 64:  # no type packs more than 64 values per byte
                raise fail(f"declares {list(ne)} elements, far more than the file holds")
        if ne[0] % block_size:
            raise fail(f"row length {ne[0]} is not a multiple of the {ggml_type_name(ggml_type)} "
                       f"block size {block_size}")
        n_bytes = n_elements // block_size * type_size
        if rel_offset % self.alignment:
            raise fail(f"data offset {rel_offset} is not aligned to {self.alignment}")
        offset = self.data_offset + rel_offset
        if offset + n_bytes > self.file_size:
            raise fail(f"data (bytes {offset}..{offset + n_bytes}) runs past the end of the "
                       f"file ({self.file_size} bytes): the file is truncated")
        return TensorInfo(name=name, shape=tuple(reversed(ne)), ggml_type=ggml_type,
                          type_name=ggml_type_name(ggml_type), n_elements=n_elements,
                          n_bytes=n_bytes, offset=offset, index=index)

    # -- access -------------------------------------------------------------------------------

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def tensor(self, name: str) -> TensorInfo:
        return self._by_name[name]

    def has_tensor(self, name: str) -> bool:
        return name in self._by_name

    def raw(self, info: TensorInfo) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 view over the map (no copy)."""
        return np.frombuffer(self._mmap, dtype=np.uint8, count=info.n_bytes, offset=info.offset)

    def close(self) -> None:
        mm = getattr(self, "_mmap", None)
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                # Views handed out are still alive; the map is released when they are.
                pass
        fh = getattr(self, "_fh", None)
        if fh is not None:
            fh.close()

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"GGUFFile({str(self.path)!r}, arch={self.architecture!r}, "
                f"tensors={len(self.tensors)}, metadata={len(self.metadata)})")


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    """Open and parse a GGUF file; raises `GGUFError` with the file name and the problem."""
    return GGUFFile(path)
