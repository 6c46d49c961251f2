"""The audiokv.* GGUF keys: the one module that reads and writes a head profile stored in a model file.

AudioKV (arXiv 2604.06694, Sec. 3) sizes per-head KV budgets from an offline head score S[l, h]. Storing it in the
model's GGUF metadata lets every program that loads the model find the right budgets. The keys, their types and
the C-side reading rules are documented in docs/gguf-keys.md; every key name lives in this module only (and in
its C twin, libaudiokv/src/gguf_profile.c).

``write_profile`` writes a COPY of a GGUF: the header and metadata are rebuilt with the audiokv.* keys replaced,
every other metadata entry and the tensor-info table are copied byte for byte, and the tensor data region is
streamed in chunks (memory use does not grow with the model size). The result goes to a temporary file next to
the destination, is verified (re-parsed, tensor table and metadata compared, data hash compared, profile read
back) and only then renamed over the destination. The input is opened read-only.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import logging
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from typing import Callable

import numpy as np
from gguf import GGUFValueType

from audiokv_edge import __version__
from audiokv_edge.profile.gguf_header import GGUFFormatError, GGUFHeader
from audiokv_edge.profile.head_profile import HeadProfile
from audiokv_edge.profile.defaults import ProfileDefaults

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
PREFIX = "audiokv."
KEY_FORMAT_VERSION = "audiokv.format_version"          # UINT32
KEY_N_LAYER = "audiokv.head_scores.n_layer"            # UINT32
KEY_N_HEAD_KV = "audiokv.head_scores.n_head_kv"        # UINT32
KEY_SCORES = "audiokv.head_scores"                     # ARRAY[FLOAT32], n_layer * n_head_kv, layer-major
KEY_SCORES_HEX = "audiokv.head_scores.hex"             # STRING, the same float32 values as C99 hex floats
SOURCE_PREFIX = "audiokv.source."                      # STRING values
SOURCE_REQUIRED = ("calibration", "date", "tool_version")
KEY_DEFAULTS = {                                       # field of ProfileDefaults -> (key, GGUF type)
    "window": ("audiokv.defaults.window", GGUFValueType.UINT32),
    "sss_alpha": ("audiokv.defaults.sss_alpha", GGUFValueType.FLOAT64),
    "sss_gamma": ("audiokv.defaults.sss_gamma", GGUFValueType.FLOAT64),
    "keep": ("audiokv.defaults.keep", GGUFValueType.FLOAT64),
}
KNOWN_KEYS = frozenset(
    [KEY_FORMAT_VERSION, KEY_N_LAYER, KEY_N_HEAD_KV, KEY_SCORES, KEY_SCORES_HEX]
    + [key for key, _ in KEY_DEFAULTS.values()])

_SOURCE_NAME = re.compile(r"^[a-z0-9_]+$")
_COPY_CHUNK = 16 << 20      # bytes per streamed read


class GGUFProfileError(ValueError):
    """A GGUF file, a stored profile or a write request is invalid; the message names the problem."""


@dataclass(frozen=True)
class ModelShape:
    """What a head profile must fit: the model's architecture, layer count and KV-head count."""

    arch: str
    n_layer: int
    n_head_kv: int


# ---------------------------------------------------------------------------------------------------- reading

def open_gguf(path: str | os.PathLike) -> GGUFHeader:
    """Parse a GGUF's header, metadata and tensor table and check the tensor data is complete.

    Raises
    ------
    GGUFProfileError
        Not a GGUF (magic), unsupported version, truncated or corrupt header, tensor data past the end.
    OSError
        The file cannot be opened.
    """
    try:
        return GGUFHeader(path)
    except GGUFFormatError as exc:
        raise GGUFProfileError(str(exc)) from None


def _scalar(header: GGUFHeader, key: str, types: tuple[GGUFValueType, ...]):
    try:
        return header.scalar(key, types)
    except GGUFFormatError as exc:
        raise GGUFProfileError(str(exc)) from None


_INT_TYPES = (GGUFValueType.UINT8, GGUFValueType.INT8, GGUFValueType.UINT16, GGUFValueType.INT16,
              GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.UINT64, GGUFValueType.INT64)


def model_shape(header: GGUFHeader) -> ModelShape:
    """The model's (arch, block_count, head_count_kv) from its own architecture keys.

    head_count_kv defaults to head_count when absent (as in llama.cpp); a per-layer array must be constant
    (zeros, used by llama.cpp for layers without attention, are ignored).
    """
    path = header.path
    arch = _scalar(header, "general.architecture", (GGUFValueType.STRING,))
    if not arch:
        raise GGUFProfileError(f"{path}: no general.architecture key; cannot check the profile shape")
    n_layer = _scalar(header, f"{arch}.block_count", _INT_TYPES)
    if n_layer is None or n_layer < 1:
        raise GGUFProfileError(f"{path}: missing or invalid {arch}.block_count; cannot check the profile shape")
    n_head_kv = None
    for key in (f"{arch}.attention.head_count_kv", f"{arch}.attention.head_count"):
        entry = header.entries.get(key)
        if entry is None:
            continue
        if entry.type == GGUFValueType.ARRAY:
            try:
                arr = header.array(key, _INT_TYPES)
            except GGUFFormatError as exc:
                raise GGUFProfileError(str(exc)) from None
            values = sorted({int(v) for v in arr} - {0})
            if len(values) != 1:
                raise GGUFProfileError(
                    f"{path}: {key} varies per layer ({values}); per-layer KV-head counts are not supported")
            n_head_kv = values[0]
        else:
            n_head_kv = _scalar(header, key, _INT_TYPES)
        break
    if n_head_kv is None or n_head_kv < 1:
        raise GGUFProfileError(f"{path}: missing or invalid {arch}.attention.head_count_kv / head_count")
    return ModelShape(str(arch), int(n_layer), int(n_head_kv))


def _parse_hex_scores(text: str, key: str, path: str) -> np.ndarray:
    try:
        return np.array([float.fromhex(tok) for tok in text.split()], dtype=np.float32)
    except ValueError:
        raise GGUFProfileError(f"{path}: {key} is not a list of hex floats") from None


def _read_stored(header: GGUFHeader, check_model: bool = True
                 ) -> tuple[HeadProfile | None, ProfileDefaults | None]:
    path = header.path
    keys = [k for k in header.entries if k.startswith(PREFIX)]
    if not keys:
        return None, None
    version = _scalar(header, KEY_FORMAT_VERSION, (GGUFValueType.UINT32,))
    if version is None:
        raise GGUFProfileError(f"{path}: has audiokv.* keys but no {KEY_FORMAT_VERSION}")
    if version != FORMAT_VERSION:
        raise GGUFProfileError(
            f"{path}: {KEY_FORMAT_VERSION} = {version} is not supported (this reader knows {FORMAT_VERSION})")
    unknown = sorted(k for k in keys if k not in KNOWN_KEYS and not k.startswith(SOURCE_PREFIX))
    if unknown:
        raise GGUFProfileError(f"{path}: unknown key(s) for format version {FORMAT_VERSION}: {', '.join(unknown)}")

    n_layer = _scalar(header, KEY_N_LAYER, (GGUFValueType.UINT32,))
    n_head_kv = _scalar(header, KEY_N_HEAD_KV, (GGUFValueType.UINT32,))
    for key, v in ((KEY_N_LAYER, n_layer), (KEY_N_HEAD_KV, n_head_kv)):
        if v is None:
            raise GGUFProfileError(f"{path}: missing {key}")
        if v < 1:
            raise GGUFProfileError(f"{path}: {key} must be >= 1, got {v}")

    try:
        scores = header.array(KEY_SCORES, (GGUFValueType.FLOAT32,))
    except GGUFFormatError as exc:
        raise GGUFProfileError(str(exc)) from None
    if scores is None:
        raise GGUFProfileError(f"{path}: missing {KEY_SCORES}")
    if scores.size != n_layer * n_head_kv:
        raise GGUFProfileError(
            f"{path}: {KEY_SCORES} has {scores.size} values but {KEY_N_LAYER} x {KEY_N_HEAD_KV} = "
            f"{n_layer} x {n_head_kv} = {n_layer * n_head_kv}")
    hex_text = _scalar(header, KEY_SCORES_HEX, (GGUFValueType.STRING,))
    if hex_text is None:
        raise GGUFProfileError(f"{path}: missing {KEY_SCORES_HEX}")
    hex_scores = _parse_hex_scores(hex_text, KEY_SCORES_HEX, path)
    if hex_scores.size != scores.size or not np.array_equal(
            hex_scores.view(np.uint32), scores.view(np.uint32)):
        raise GGUFProfileError(f"{path}: {KEY_SCORES_HEX} does not hold the same values as {KEY_SCORES}")
    if not np.all(np.isfinite(scores)):
        bad = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise GGUFProfileError(
            f"{path}: {KEY_SCORES} has a NaN or infinite score at layer {bad // n_head_kv}, "
            f"KV head {bad % n_head_kv}")
    if np.any(scores < 0):
        bad = int(np.flatnonzero(scores < 0)[0])
        raise GGUFProfileError(
            f"{path}: {KEY_SCORES} has a negative score at layer {bad // n_head_kv}, KV head {bad % n_head_kv}")
    if not np.any(scores > 0):
        raise GGUFProfileError(f"{path}: {KEY_SCORES} are all zero")

    source = {}
    for key in keys:
        if key.startswith(SOURCE_PREFIX):
            name = key[len(SOURCE_PREFIX):]
            if not _SOURCE_NAME.match(name):
                raise GGUFProfileError(f"{path}: invalid source key {key!r} (allowed: [a-z0-9_]+ after the prefix)")
            source[name] = _scalar(header, key, (GGUFValueType.STRING,))
    missing = [SOURCE_PREFIX + n for n in SOURCE_REQUIRED if n not in source]
    if missing:
        raise GGUFProfileError(f"{path}: missing {', '.join(missing)}")

    if check_model:
        shape = model_shape(header)
        if (shape.n_layer, shape.n_head_kv) != (n_layer, n_head_kv):
            raise GGUFProfileError(
                f"{path}: stored profile is {n_layer} layers x {n_head_kv} KV heads but the model "
                f"({shape.arch}) has {shape.n_layer} x {shape.n_head_kv}")
    profile = HeadProfile(scores.reshape(n_layer, n_head_kv), source=source)

    values = {}
    for name, (key, gtype) in KEY_DEFAULTS.items():
        values[name] = _scalar(header, key, (gtype,))
    if all(v is None for v in values.values()):
        return profile, None
    try:
        defaults = ProfileDefaults(**values)
    except ValueError as exc:
        raise GGUFProfileError(f"{path}: invalid audiokv.{exc}") from None
    return profile, defaults


def read_stored(path: str | os.PathLike) -> tuple[HeadProfile | None, ProfileDefaults | None]:
    """Read the head profile and the optional defaults stored in a GGUF.

    Returns
    -------
    (HeadProfile or None, ProfileDefaults or None)
        (None, None) when the file has no audiokv.* key. Scores have shape [n_layer, n_head_kv] and are the
        stored float32 values widened to float64.

    Raises
    ------
    GGUFProfileError
        Invalid GGUF, or audiokv.* keys that are incomplete, mistyped, of an unknown format version, of the
        wrong shape for the model, NaN, negative or all zero.
    """
    return _read_stored(open_gguf(path))


def read_profile(path: str | os.PathLike) -> HeadProfile | None:
    """The head profile stored in a GGUF, or None if it has none (see ``read_stored``)."""
    return read_stored(path)[0]


def read_defaults(path: str | os.PathLike) -> ProfileDefaults | None:
    """The per-model defaults stored in a GGUF, or None (see ``read_stored``)."""
    return read_stored(path)[1]


# ---------------------------------------------------------------------------------------------------- writing

def _kv_bytes(key: str, gtype: GGUFValueType, value, e: str) -> bytes:
    kb = key.encode("utf-8")
    out = [struct.pack(e + "Q", len(kb)), kb, struct.pack(e + "I", int(gtype))]
    if gtype == GGUFValueType.STRING:
        vb = value.encode("utf-8")
        out += [struct.pack(e + "Q", len(vb)), vb]
    elif gtype == GGUFValueType.UINT32:
        out.append(struct.pack(e + "I", int(value)))
    elif gtype == GGUFValueType.FLOAT64:
        out.append(struct.pack(e + "d", float(value)))
    elif gtype == GGUFValueType.ARRAY:   # only ARRAY[FLOAT32] is written
        arr = np.asarray(value, dtype=np.dtype(np.float32).newbyteorder(e))
        out += [struct.pack(e + "IQ", int(GGUFValueType.FLOAT32), arr.size), arr.tobytes()]
    else:
        raise AssertionError(f"unexpected GGUF type {gtype}")
    return b"".join(out)


def _complete_source(source: dict) -> dict:
    for name, value in source.items():
        if not isinstance(name, str) or not _SOURCE_NAME.match(name):
            raise GGUFProfileError(f"profile source key {name!r} must match [a-z0-9_]+")
        if not isinstance(value, str):
            raise GGUFProfileError(f"profile source {name!r} must be a string, got {type(value).__name__}")
    if not source.get("calibration"):
        raise GGUFProfileError("profile source must name its calibration set (source['calibration'])")
    out = dict(source)
    out.setdefault("date", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    out.setdefault("tool_version", f"audiokv-edge {__version__}")
    return out


def profile_kv_bytes(profile: HeadProfile, defaults: ProfileDefaults | None, e: str = "<") -> list[bytes]:
    """Serialised audiokv.* metadata entries for ``profile`` (source completed) and ``defaults``.

    Scores are stored as float32; they must stay finite, non-negative and not all zero after the rounding.
    """
    scores32 = profile.scores.astype(np.float32)
    if not np.all(np.isfinite(scores32)):
        raise GGUFProfileError("head profile scores overflow float32")
    if not np.any(scores32 > 0):
        raise GGUFProfileError("head profile scores underflow to zero in float32")
    source = _complete_source(profile.source)
    entries = [
        _kv_bytes(KEY_FORMAT_VERSION, GGUFValueType.UINT32, FORMAT_VERSION, e),
        _kv_bytes(KEY_N_LAYER, GGUFValueType.UINT32, profile.n_layer, e),
        _kv_bytes(KEY_N_HEAD_KV, GGUFValueType.UINT32, profile.n_head_kv, e),
        _kv_bytes(KEY_SCORES, GGUFValueType.ARRAY, scores32.ravel(), e),
        _kv_bytes(KEY_SCORES_HEX, GGUFValueType.STRING,
                  " ".join(float(v).hex() for v in scores32.ravel()), e),
    ]
    for name in sorted(source):
        entries.append(_kv_bytes(SOURCE_PREFIX + name, GGUFValueType.STRING, source[name], e))
    if defaults is not None:
        for name, value in defaults.as_dict().items():
            key, gtype = KEY_DEFAULTS[name]
            entries.append(_kv_bytes(key, gtype, value, e))
    return entries


def _kept_entries(header: GGUFHeader) -> list[bytes]:
    """Raw bytes of every metadata entry that is not an audiokv.* key, in file order."""
    return [header.raw(m.start, m.end) for m in header.entries.values() if not m.key.startswith(PREFIX)]


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _same_path(a: str, b: str) -> bool:
    if os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


#: Write errors that mean "the file system is full" (ENOSPC), "over quota" (EDQUOT), "over the file size limit" (EFBIG).
_NO_SPACE_ERRNOS = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG") if hasattr(errno, name))


def _free_bytes(directory: str) -> int | None:
    """Bytes an unprivileged writer may still use on the file system of ``directory``; None where unknown."""
    try:
        st = os.statvfs(directory)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _hash_range(path: str, offset: int, length: int, *, out=None, progress: Callable[[int], None] | None = None,
                stop_short: bool = False) -> str:
    """SHA-256 of ``length`` bytes of ``path`` from ``offset``, read in chunks; each chunk is also written to ``out``
    and its size passed to ``progress`` when they are given. A file that ends early raises GGUFProfileError, unless
    ``stop_short``: then the hash is of the bytes that are there."""
    h = hashlib.sha256()
    buf = bytearray(min(_COPY_CHUNK, max(length, 1)))
    view = memoryview(buf)
    done = 0
    with open(path, "rb") as f:
        f.seek(offset)
        while done < length:
            n = f.readinto(view[:min(len(buf), length - done)])
            if not n:
                if stop_short:
                    break
                raise GGUFProfileError(f"{path}: file shrank while copying (at byte {offset + done})")
            h.update(view[:n])
            if out is not None:
                out.write(view[:n])
            done += n
            if progress is not None:
                progress(n)
    return h.hexdigest()


def _verify(tmp: str, src: GGUFHeader, src_hash: str, profile: HeadProfile,
            defaults: ProfileDefaults | None, dst: str) -> None:
    """Re-read the written file and compare it with the source and the profile; raise on any difference."""
    try:
        out = open_gguf(tmp)
        got_profile, got_defaults = _read_stored(out)
    except GGUFProfileError as exc:
        raise GGUFProfileError(f"verification of {dst} failed: {exc}") from None
    problems = []
    if _kept_entries(out) != _kept_entries(src):
        problems.append("metadata differs from the input")
    if out.raw(*out.tensor_table) != src.raw(*src.tensor_table) or out.tensors != src.tensors:
        problems.append("tensor table differs from the input")
    if out.size - out.data_offset != src.size - src.data_offset:
        problems.append("tensor data size differs from the input")
    elif _hash_range(tmp, out.data_offset, out.size - out.data_offset, stop_short=True) != src_hash:
        problems.append("tensor data differs from the input")
    if got_profile is None or not np.array_equal(
            got_profile.scores, profile.scores.astype(np.float32).astype(np.float64)):
        problems.append("stored scores differ from the profile")
    elif got_profile.source != profile.source:
        problems.append("stored source differs from the profile")
    want_defaults = None if defaults is None or defaults.is_empty() else defaults
    if got_defaults != want_defaults:
        problems.append("stored defaults differ")
    if problems:
        raise GGUFProfileError(f"verification of {dst} failed: {'; '.join(problems)}")


def write_profile(src: str | os.PathLike, profile: HeadProfile, dst: str | os.PathLike,
                  defaults: ProfileDefaults | None = None,
                  progress: Callable[[int], None] | None = None) -> HeadProfile:
    """Write a copy of the GGUF ``src`` to ``dst`` with ``profile`` (and ``defaults``) as audiokv.* keys.

    Any audiokv.* keys already in ``src`` are replaced. All other metadata, the tensor table and the tensor data
    are copied byte for byte. Missing ``source['date']`` and ``source['tool_version']`` are filled in;
    ``source['calibration']`` is required.

    Parameters
    ----------
    src, dst : path
        Input GGUF (opened read-only) and output path (must not be the input, also via links).
    profile : HeadProfile
        Scores of shape [n_layer, n_head_kv] matching the model's block_count and head_count_kv.
    defaults : ProfileDefaults, optional
    progress : callable(int), optional
        Called with the number of tensor-data bytes copied after every chunk.

    Returns
    -------
    HeadProfile
        The profile as stored (float32 scores, completed source).

    Raises
    ------
    GGUFProfileError
        Invalid input, shape mismatch, dst equal to src, verification failure. Nothing is left at ``dst``.
    OSError
        The destination cannot be written (read-only directory, disk full); nothing is left at ``dst``.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if not isinstance(profile, HeadProfile):
        raise GGUFProfileError(f"profile must be a HeadProfile, got {type(profile).__name__}")
    if defaults is not None and not isinstance(defaults, ProfileDefaults):
        raise GGUFProfileError(f"defaults must be ProfileDefaults, got {type(defaults).__name__}")
    if not os.path.isfile(src):
        raise GGUFProfileError(f"{src}: no such file")
    if os.path.isdir(dst):
        raise GGUFProfileError(f"{dst}: is a directory; give an output file name")
    if _same_path(src, dst):
        raise GGUFProfileError(f"output {dst} is the input file; write to another path")
    if os.path.exists(dst) and (not os.access(dst, os.W_OK) or not os.stat(dst).st_mode & 0o222):
        raise GGUFProfileError(f"{dst}: exists and is read-only; not replaced")

    header = open_gguf(src)
    shape = model_shape(header)
    try:
        profile.check_shape(shape.n_layer, shape.n_head_kv)
    except ValueError as exc:
        raise GGUFProfileError(f"{src} ({shape.arch}): {exc}") from None
    if any(k.startswith(PREFIX) for k in header.entries):
        logger.info("%s already holds a head profile; it is replaced in the copy", src)
    kept = _kept_entries(header)
    e = header.endian
    stored = HeadProfile(profile.scores.astype(np.float32), source=_complete_source(profile.source))
    new_kv = profile_kv_bytes(stored, defaults, e)

    dst_dir = os.path.dirname(os.path.abspath(dst))
    free_before = _free_bytes(dst_dir)
    try:
        fd, tmp = tempfile.mkstemp(dir=dst_dir, prefix="." + os.path.basename(dst) + ".", suffix=".tmp")
    except OSError as exc:
        raise OSError(exc.errno, f"cannot create a file in {dst_dir}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(header.raw(0, 16))                                      # magic, version, tensor count
            out.write(struct.pack(e + "Q", len(kept) + len(new_kv)))
            for entry in kept + new_kv:
                out.write(entry)
            out.write(header.raw(*header.tensor_table))
            out.write(b"\0" * (-out.tell() % header.alignment))
            src_hash = _hash_range(src, header.data_offset, header.size - header.data_offset, out=out,
                                   progress=progress)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())
        _verify(tmp, header, src_hash, stored, defaults, dst)
        os.replace(tmp, dst)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE_ERRNOS:
            needed = header.size + sum(map(len, new_kv))
            free = "unknown" if free_before is None else _mb(free_before)
            raise OSError(exc.errno, f"not enough space for {dst}: the copy needs about {_mb(needed)}, "
                                     f"{free} was free ({exc.strerror}); nothing written") from None
        raise
    logger.info("wrote %s: head profile %d x %d (%s)", dst, stored.n_layer, stored.n_head_kv,
                stored.source.get("calibration"))
    return stored
