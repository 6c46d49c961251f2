"""Head profile side files: readable JSON and NumPy NPZ next to the GGUF keys (docs/gguf-keys.md).

JSON layout (``format_version`` 1)::

    {"format": "audiokv-head-profile", "format_version": 1, "n_layer": L, "n_head_kv": H,
     "scores": [[S[0,0], ..., S[0,H-1]], ..., [S[L-1,0], ...]],
     "source": {"calibration": "...", "date": "...", "tool_version": "...", ...},
     "defaults": {"window": 32, "sss_alpha": 0.5, "sss_gamma": 0.7, "keep": 0.4},   # optional, any subset
     "details": {...}}                                                             # optional, free-form

The NPZ holds ``scores`` (float64 [L, H]) and ``meta``, the same JSON without "scores".
"""

from __future__ import annotations

import json
import os
import tokenize
import zipfile
import zlib

import numpy as np

from audiokv_edge.profile.head_profile import HeadProfile
from audiokv_edge.profile.defaults import ProfileDefaults

FILE_FORMAT = "audiokv-head-profile"
FILE_FORMAT_VERSION = 1


def _meta(profile: HeadProfile, defaults: ProfileDefaults | None, details: dict | None) -> dict:
    meta = {"format": FILE_FORMAT, "format_version": FILE_FORMAT_VERSION,
            "n_layer": profile.n_layer, "n_head_kv": profile.n_head_kv, "source": dict(profile.source)}
    if defaults is not None and not defaults.is_empty():
        meta["defaults"] = defaults.as_dict()
    if details:
        meta["details"] = details
    return meta


def save_profile_file(path: str | os.PathLike, profile: HeadProfile, defaults: ProfileDefaults | None = None,
                      details: dict | None = None) -> None:
    """Write ``profile`` as JSON (``.json``) or NPZ (``.npz``), atomically (temporary file + rename)."""
    path = os.fspath(path)
    meta = _meta(profile, defaults, details)
    tmp = path + ".tmp"
    try:
        if path.endswith(".npz"):
            with open(tmp, "wb") as f:
                np.savez(f, scores=profile.scores, meta=np.array(json.dumps(meta)))
        elif path.endswith(".json"):
            meta["scores"] = profile.scores.tolist()
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=1)
                f.write("\n")
        else:
            raise ValueError(f"{path}: profile file name must end in .json or .npz")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_npz(path: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
    """Every array of an NPZ file (no pickled objects), read at once.

    Parameters
    ----------
    path : path
    what : str
        What the file should hold, for the message ("head profile", "LoRA weights" ...).

    Raises
    ------
    ValueError
        Not an NPZ (any other file, a lone .npy, a damaged zip, an array that needs pickle); one line naming the file.
    FileNotFoundError
        No such file.
    """
    path = os.fspath(path)
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):  # a lone .npy
            raise ValueError("a single array, not an archive")
        with archive:
            return {name: np.array(archive[name]) for name in archive.files}
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error,
            NotImplementedError, RuntimeError, tokenize.TokenError) as exc:
        # NotImplementedError: a zip compression method Python lacks; RuntimeError: a member flagged as encrypted;
        # TokenError: a member's .npy header that NumPy's header filter cannot tokenize
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"{path}: not a {what} NPZ ({reason[:200]})") from None


def _check_meta(meta, path: str) -> None:
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: not a head profile (top level is not an object)")
    if meta.get("format") != FILE_FORMAT:
        raise ValueError(f"{path}: not a head profile (\"format\" is {meta.get('format')!r}, "
                         f"expected {FILE_FORMAT!r})")
    if meta.get("format_version") != FILE_FORMAT_VERSION:
        raise ValueError(f"{path}: profile format_version {meta.get('format_version')!r} is not supported "
                         f"(this reader knows {FILE_FORMAT_VERSION})")


def load_profile_file(path: str | os.PathLike) -> tuple[HeadProfile, ProfileDefaults | None]:
    """Read a JSON or NPZ head profile; raise ValueError naming the problem (shape, NaN, types, format)."""
    path = os.fspath(path)
    if path.endswith(".npz"):
        arrays = read_npz(path, "head profile")
        if "scores" not in arrays or "meta" not in arrays:
            raise ValueError(f"{path}: not a head profile NPZ (it needs the arrays scores and meta)")
        scores = arrays["scores"]
        try:
            meta = json.loads(str(arrays["meta"]))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not a head profile NPZ (meta is not JSON: {exc})") from None
        _check_meta(meta, path)
    else:
        try:
            with open(path, encoding="utf-8") as f:
                meta = json.load(f)  # NaN / Infinity literals parse; rejected below
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        _check_meta(meta, path)
        raw = meta.get("scores")
        if not isinstance(raw, list) or not all(isinstance(r, list) for r in raw):
            raise ValueError(f"{path}: \"scores\" must be a list of rows [n_layer][n_head_kv]")
        if len({len(r) for r in raw}) > 1:
            raise ValueError(f"{path}: \"scores\" rows have different lengths")
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for r in raw for v in r):
            raise ValueError(f"{path}: \"scores\" must hold numbers only")
        scores = np.array(raw, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"{path}: scores must be 2-D [n_layer, n_head_kv], got shape {scores.shape}")
    if (meta.get("n_layer"), meta.get("n_head_kv")) != scores.shape:
        raise ValueError(f"{path}: n_layer/n_head_kv ({meta.get('n_layer')}, {meta.get('n_head_kv')}) "
                         f"disagree with the scores' shape {scores.shape}")
    if np.issubdtype(scores.dtype, np.number) and not np.all(np.isfinite(scores.astype(np.float64))):
        bad = np.argwhere(~np.isfinite(scores.astype(np.float64)))[0]
        raise ValueError(f"{path}: NaN or infinite score at layer {bad[0]}, KV head {bad[1]}")
    source = meta.get("source", {})
    if not isinstance(source, dict):
        raise ValueError(f"{path}: \"source\" must be an object")
    try:
        profile = HeadProfile(scores.astype(np.float64), source=source)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    defaults = None
    if meta.get("defaults") is not None:
        d = meta["defaults"]
        if not isinstance(d, dict) or set(d) - {"window", "sss_alpha", "sss_gamma", "keep"}:
            raise ValueError(f"{path}: \"defaults\" may only hold window, sss_alpha, sss_gamma, keep")
        try:
            defaults = ProfileDefaults(**d)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    return profile, defaults


__all__ = ["save_profile_file", "load_profile_file", "read_npz", "FILE_FORMAT", "FILE_FORMAT_VERSION"]
