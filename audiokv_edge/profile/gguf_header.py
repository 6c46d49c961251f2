"""Fast, validating parser of a GGUF file's header, metadata and tensor table (no tensor data is read).

gguf-py's GGUFReader builds a NumPy object per vocabulary string: on a 150k-token model that is ~30 s and ~0.5 GB.
This parser reads the header region with plain file reads, decodes values only on request, and records the byte
range of every metadata entry and of the tensor table so that a copy can reuse them verbatim.
Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (versions 2 and 3).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np
import gguf
from gguf import GGUFValueType
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

GGUF_MAGIC = struct.pack("<I", gguf.GGUF_MAGIC)  # b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
HEADER_BYTES = 24           # magic, version, tensor count, kv count
MAX_DIMS = 4
_READ_CHUNK = 4 << 20

_SCALAR_FMT = {
    GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H", GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i", GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q", GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d",
}
_NP_TYPE = {
    GGUFValueType.UINT8: np.uint8, GGUFValueType.INT8: np.int8, GGUFValueType.UINT16: np.uint16,
    GGUFValueType.INT16: np.int16, GGUFValueType.UINT32: np.uint32, GGUFValueType.INT32: np.int32,
    GGUFValueType.FLOAT32: np.float32, GGUFValueType.BOOL: np.bool_, GGUFValueType.UINT64: np.uint64,
    GGUFValueType.INT64: np.int64, GGUFValueType.FLOAT64: np.float64,
}


class GGUFFormatError(ValueError):
    """The file is not a GGUF, is truncated or is malformed; the message names the problem and the file."""


@dataclass(frozen=True)
class MetadataEntry:
    """One key/value entry: its type and where it lies in the file ([start, end) covers key, type and value)."""

    key: str
    type: GGUFValueType
    item_type: GGUFValueType | None    # element type of an ARRAY
    count: int                         # elements of an ARRAY, else 1
    value_offset: int                  # first byte of the value (after the key and the type)
    start: int
    end: int


@dataclass(frozen=True)
class TensorEntry:
    """One tensor-table entry; ``offset`` is relative to the data region."""

    name: str
    shape: tuple[int, ...]
    type: GGMLQuantizationType
    offset: int
    n_bytes: int


class _Cursor:
    def __init__(self, f, size: int, path: str) -> None:
        self.f, self.size, self.path = f, size, path
        self.buf = bytearray()
        self.pos = 0

    def need(self, n: int, what: str) -> None:
        end = self.pos + n
        if end > self.size:
            raise GGUFFormatError(f"{self.path}: truncated: {what} at byte {self.pos} runs past the end of the "
                                  f"file ({self.size} bytes)")
        while end > len(self.buf):
            chunk = self.f.read(max(_READ_CHUNK, end - len(self.buf)))
            if not chunk:
                raise GGUFFormatError(f"{self.path}: file shrank while reading")
            self.buf += chunk

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return out

    def string(self, e: str, what: str) -> str:
        (n,) = self.unpack(e + "Q", what)
        self.need(n, what)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFFormatError(f"{self.path}: {what} is not valid UTF-8") from None

    def skip_string(self, e: str, what: str) -> None:
        (n,) = self.unpack(e + "Q", what)
        self.need(n, what)
        self.pos += n


def _value_type(raw: int, path: str, what: str) -> GGUFValueType:
    try:
        return GGUFValueType(raw)
    except ValueError:
        raise GGUFFormatError(f"{path}: {what} has unknown value type {raw}") from None


class GGUFHeader:
    """Parsed header of a GGUF file.

    Attributes
    ----------
    path : str
    size : int
        File size in bytes.
    endian : str
        struct prefix of the file's byte order, "<" or ">".
    version : int
    entries : dict[str, MetadataEntry]
        In file order.
    tensors : list[TensorEntry]
        In file order.
    alignment : int
    tensor_table : (int, int)
        Byte range of the tensor table.
    data_offset : int
        Start of the tensor data region (aligned).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            self.size = os.fstat(f.fileno()).st_size
            magic = f.read(4)
            if magic != GGUF_MAGIC:
                raise GGUFFormatError(f"{self.path}: not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
            f.seek(0)
            cur = _Cursor(f, self.size, self.path)
            cur.pos = 4
            (version,) = cur.unpack("<I", "version")
            self.endian = "<"
            if version & 0xFFFF == 0:
                self.endian = ">"
                version = struct.unpack(">I", struct.pack("<I", version))[0]
            if version not in SUPPORTED_VERSIONS:
                raise GGUFFormatError(f"{self.path}: GGUF version {version} is not supported "
                                      f"(supported: {', '.join(map(str, SUPPORTED_VERSIONS))})")
            self.version = version
            e = self.endian
            n_tensors, n_kv = cur.unpack(e + "QQ", "tensor and metadata counts")
            # every entry needs at least 12 bytes (key length + type), every tensor at least 28
            if n_kv * 12 + n_tensors * 28 > self.size:
                raise GGUFFormatError(f"{self.path}: counts ({n_tensors} tensors, {n_kv} metadata entries) do "
                                      f"not fit in a file of {self.size} bytes: corrupt or truncated")
            self.entries: dict[str, MetadataEntry] = {}
            self._buf = cur.buf
            for i in range(n_kv):
                start = cur.pos
                key = cur.string(e, f"metadata key #{i}")
                if key in self.entries:
                    raise GGUFFormatError(f"{self.path}: duplicate metadata key {key!r}")
                gtype = _value_type(cur.unpack(e + "I", f"type of {key!r}")[0], self.path, repr(key))
                value_offset = cur.pos
                item_type, count = None, 1
                if gtype == GGUFValueType.STRING:
                    cur.skip_string(e, f"value of {key!r}")
                elif gtype == GGUFValueType.ARRAY:
                    raw_item, count = cur.unpack(e + "IQ", f"array header of {key!r}")
                    item_type = _value_type(raw_item, self.path, f"array {key!r}")
                    if item_type == GGUFValueType.ARRAY:
                        raise GGUFFormatError(f"{self.path}: {key!r} is an array of arrays (not supported)")
                    if item_type == GGUFValueType.STRING:
                        if count * 8 > self.size - cur.pos:
                            raise GGUFFormatError(f"{self.path}: truncated or corrupt array {key!r} ({count} items)")
                        for j in range(count):
                            cur.skip_string(e, f"item {j} of {key!r}")
                    else:
                        n = count * struct.calcsize(_SCALAR_FMT[item_type])
                        cur.need(n, f"array {key!r}")
                        cur.pos += n
                else:
                    cur.need(struct.calcsize(_SCALAR_FMT[gtype]), f"value of {key!r}")
                    cur.pos += struct.calcsize(_SCALAR_FMT[gtype])
                self.entries[key] = MetadataEntry(key, gtype, item_type, count, value_offset, start, cur.pos)
            self._buf = cur.buf

            self.alignment = DEFAULT_ALIGNMENT
            if "general.alignment" in self.entries:
                a = self.scalar("general.alignment", (GGUFValueType.UINT32,))
                if a == 0 or a & (a - 1):
                    raise GGUFFormatError(f"{self.path}: general.alignment = {a} is not a power of two")
                self.alignment = a

            ti_start = cur.pos
            self.tensors: list[TensorEntry] = []
            names = set()
            for i in range(n_tensors):
                name = cur.string(e, f"tensor name #{i}")
                if name in names:
                    raise GGUFFormatError(f"{self.path}: duplicate tensor {name!r}")
                names.add(name)
                (n_dims,) = cur.unpack(e + "I", f"dimension count of tensor {name!r}")
                if not 1 <= n_dims <= MAX_DIMS:
                    raise GGUFFormatError(f"{self.path}: tensor {name!r} has {n_dims} dimensions")
                dims = cur.unpack(e + "Q" * n_dims, f"shape of tensor {name!r}")
                raw_type, offset = cur.unpack(e + "IQ", f"type and offset of tensor {name!r}")
                try:
                    ttype = GGMLQuantizationType(raw_type)
                    block, type_size = GGML_QUANT_SIZES[ttype]
                except (ValueError, KeyError):
                    raise GGUFFormatError(f"{self.path}: tensor {name!r} has unknown type {raw_type}") from None
                if dims[0] % block:
                    raise GGUFFormatError(f"{self.path}: tensor {name!r}: row of {dims[0]} is not a multiple of "
                                          f"the {ttype.name} block size {block}")
                if offset % self.alignment:
                    raise GGUFFormatError(f"{self.path}: tensor {name!r} data offset {offset} is not aligned "
                                          f"to {self.alignment}")
                n_el = 1
                for d in dims:
                    n_el *= int(d)
                self.tensors.append(TensorEntry(name, tuple(int(d) for d in dims), ttype, int(offset),
                                                n_el // block * type_size))
            self.tensor_table = (ti_start, cur.pos)
            self._buf = cur.buf
        self.data_offset = cur.pos + (-cur.pos % self.alignment)
        for t in self.tensors:
            end = self.data_offset + t.offset + t.n_bytes
            if end > self.size:
                raise GGUFFormatError(f"{self.path}: truncated: tensor {t.name!r} ends at byte {end} but the file "
                                      f"has {self.size} bytes")

    # ----------------------------------------------------------------------------------------- raw bytes
    def raw(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of the header region (metadata and tensor table)."""
        return bytes(self._buf[start:end])

    # ----------------------------------------------------------------------------------------- values
    def type_name(self, key: str) -> str:
        m = self.entries[key]
        return f"ARRAY of {m.item_type.name}" if m.type == GGUFValueType.ARRAY else m.type.name

    def scalar(self, key: str, types: tuple[GGUFValueType, ...]):
        """Value of a scalar or STRING entry whose type is one of ``types``; None if absent.

        Raises GGUFFormatError naming the key and both types on a type mismatch.
        """
        m = self.entries.get(key)
        if m is None:
            return None
        if m.type not in types:
            want = " or ".join(t.name for t in types)
            raise GGUFFormatError(f"{self.path}: {key} has type {self.type_name(key)}, expected {want}")
        if m.type == GGUFValueType.STRING:
            (n,) = struct.unpack_from(self.endian + "Q", self._buf, m.value_offset)
            raw = bytes(self._buf[m.value_offset + 8:m.value_offset + 8 + n])
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                raise GGUFFormatError(f"{self.path}: {key} is not valid UTF-8") from None
        return struct.unpack_from(self.endian + _SCALAR_FMT[m.type], self._buf, m.value_offset)[0]

    def array(self, key: str, item_types: tuple[GGUFValueType, ...]) -> np.ndarray | None:
        """Elements of a numeric ARRAY entry (host byte order); None if absent."""
        m = self.entries.get(key)
        if m is None:
            return None
        if m.type != GGUFValueType.ARRAY or m.item_type not in item_types:
            want = " or ".join(f"ARRAY of {t.name}" for t in item_types)
            raise GGUFFormatError(f"{self.path}: {key} has type {self.type_name(key)}, expected {want}")
        dt = np.dtype(_NP_TYPE[m.item_type]).newbyteorder(self.endian)
        return np.frombuffer(bytes(self._buf[m.value_offset + 12:m.end]), dtype=dt).astype(dt.newbyteorder("="))
