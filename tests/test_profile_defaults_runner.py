"""Per-model AudioKV defaults stored with the head profile (audiokv.defaults.*, docs/gguf-keys.md) are applied by the
runner and the Session API when the user did not choose a value, for method audiokv only.

Checked on a tiny model pair with a stored profile: without --keep the JSON keep is the stored default and the kept KV
bytes follow it; an explicit --keep wins; snapkv ignores the stored defaults; a model without defaults keeps 0.4;
the stored window / SSS alpha / gamma reach libaudiokv's parameters and llama.cpp captures the whole window; a
malformed stored value is a one-line error.
"""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audiokv_edge.profile import gguf_keys as gp
from audiokv_edge.profile.head_profile import HeadProfile
from audiokv_edge.profile.defaults import ProfileDefaults
from audiokv_edge.runtime.session import DEFAULT_KEEP, EVICT_WINDOW, SessionConfig
from tests.evict_fixtures import run_python

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "audiokv_edge" / "data"
AUDIO = DATA / "arctic_a0007.wav"
STORED = ProfileDefaults(window=48, sss_alpha=0.25, sss_gamma=0.8, keep=0.35)


def _profile(path: Path) -> HeadProfile:
    shape = gp.model_shape(gp.open_gguf(path))
    scores = np.full((shape.n_layer, shape.n_head_kv), 0.05)
    scores[0, -1] = 1.0
    scores[-1, 0] = 0.4
    return HeadProfile(scores, source={"calibration": "planted for the stored-defaults test"})


def _patch_f64(path: Path, key: str, value: float) -> None:
    data = bytearray(path.read_bytes())
    kb = key.encode()
    i = data.index(struct.pack("<Q", len(kb)) + kb)
    off = i + 8 + len(kb)
    assert struct.unpack_from("<I", data, off)[0] == 12  # GGUF FLOAT64
    data[off + 4:off + 12] = struct.pack("<d", value)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """model.gguf (no profile), profiled.gguf (profile, no defaults), defaults.gguf (profile + STORED),
    bad-keep.gguf (defaults.keep patched to 1.5); all beside one mmproj.gguf."""
    from audiokv_edge.testing.tiny_models import write_tiny_pair

    d = tmp_path_factory.mktemp("profile_defaults")
    model, mmproj = write_tiny_pair(d, "qwen2-qwen2a")
    out = {"plain": model, "mmproj": mmproj}
    profile = _profile(model)
    out["profiled"] = model.parent / "profiled.gguf"
    gp.write_profile(model, profile, out["profiled"])
    out["defaults"] = model.parent / "defaults.gguf"
    gp.write_profile(model, profile, out["defaults"], defaults=STORED)
    assert gp.read_defaults(out["defaults"]) == STORED and gp.read_defaults(out["profiled"]) is None
    out["bad-keep"] = model.parent / "bad-keep.gguf"
    out["bad-keep"].write_bytes(out["defaults"].read_bytes())
    _patch_f64(out["bad-keep"], "audiokv.defaults.keep", 1.5)
    return out


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return run_python("-m", "audiokv_edge.run", *args, timeout=600)


def _run_json(models, name: str, *extra: str) -> tuple[dict, str]:
    proc = run_cli(str(models[name]), str(AUDIO), "--mmproj", str(models["mmproj"]), "--max-tokens", "3",
                   "--threads", "2", "--ctx", "1024", "--json", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["eviction_applied"] is True
    return record, proc.stderr


def _assert_kept(record: dict, keep: float) -> None:
    assert record["keep"] == keep
    ratio = record["kv_bytes_kept"] / record["kv_bytes_full"]
    assert abs(ratio - keep) <= 0.05 * keep, (ratio, keep)


# --- configuration: no native code ---------------------------------------------------------------------------------


def test_config_keep_defaults_to_none_and_explicit_values_are_checked():
    assert SessionConfig().keep is None and SessionConfig(method="snapkv").keep is None
    assert SessionConfig(keep=0.35).keep == 0.35
    for bad in (0, -1, 1.5, math.nan, "abc", True):
        with pytest.raises(ValueError, match=r"keep must be a number in \(0, 1\]"):
            SessionConfig(keep=bad)


def test_runner_keep_option_defaults_to_none():
    from audiokv_edge.run import build_parser

    args = build_parser().parse_args(["m.gguf", "a.wav"])
    assert args.keep is None
    assert build_parser().parse_args(["m.gguf", "a.wav", "--keep", "0.5"]).keep == 0.5


# --- the runner ------------------------------------------------------------------------------------------------------


@pytest.mark.native
def test_runner_uses_the_stored_keep(models):
    record, stderr = _run_json(models, "defaults")
    assert record["method"] == "audiokv" and record["keep_source"] == "profile"
    _assert_kept(record, 0.35)
    assert "keep 0.35 (model's head profile default)" in stderr, stderr


@pytest.mark.native
def test_runner_explicit_keep_wins(models):
    record, stderr = _run_json(models, "defaults", "--keep", "0.5")
    assert record["keep_source"] == "config"
    _assert_kept(record, 0.5)
    assert "head profile default" not in stderr


@pytest.mark.native
def test_runner_snapkv_ignores_the_stored_defaults(models):
    record, _ = _run_json(models, "defaults", "--method", "snapkv")
    assert record["method"] == "snapkv" and record["keep_source"] == "default"
    _assert_kept(record, DEFAULT_KEEP)
    assert DEFAULT_KEEP == 0.4


@pytest.mark.native
def test_runner_model_without_defaults_keeps_0_4(models):
    record, stderr = _run_json(models, "profiled")
    assert record["method"] == "audiokv" and record["keep_source"] == "default"
    _assert_kept(record, 0.4)
    assert "head profile default" not in stderr


@pytest.mark.native
def test_runner_malformed_stored_default_is_a_one_line_error(models):
    proc = run_cli(str(models["bad-keep"]), str(AUDIO), "--mmproj", str(models["mmproj"]), "--max-tokens", "3",
                   "--threads", "2", "--ctx", "1024")
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("audiokv-run: error: cannot plan evictions for "), lines[0]
    assert "head profile" in lines[0] and "audiokv.defaults.keep" in lines[0] and "1.5" in lines[0], lines[0]


# --- the Session API: what reaches libaudiokv and llama.cpp --------------------------------------------------------

PROBE = r"""
import json, sys
from audiokv_edge.runtime.session import Session, SessionConfig
model, mmproj, audio = sys.argv[1:4]
out = {}
for name, cfg in (("audiokv", SessionConfig(method="audiokv", max_tokens=2, threads=2, ctx=1024)),
                  ("audiokv-keep", SessionConfig(method="audiokv", keep=0.6, max_tokens=2, threads=2, ctx=1024)),
                  ("snapkv", SessionConfig(method="snapkv", max_tokens=2, threads=2, ctx=1024))):
    with Session(model, mmproj, config=cfg) as s:
        a = s.answer(audio)
        out[name] = {"settings": s.evict_settings, "keep": s.keep, "keep_source": s.keep_source,
                     "defaults": s.profile_defaults.as_dict() if s.profile_defaults else None,
                     "answer": a.to_dict()}
print(json.dumps(out))
"""


@pytest.mark.native
def test_session_passes_stored_window_and_sss_to_the_evictor(models):
    proc = subprocess.run([sys.executable, "-c", PROBE, str(models["defaults"]), str(models["mmproj"]), str(AUDIO)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    akv = out["audiokv"]
    assert akv["defaults"] == STORED.as_dict()
    assert akv["keep"] == 0.35 and akv["keep_source"] == "profile"
    assert akv["settings"] == {"method": "audiokv", "keep": 0.35, "keep_source": "profile", "window": 48,
                               "n_window": 48, "n_headroom": 3, "sss_alpha": 0.25, "sss_gamma": 0.8,
                               "sss_scope": "all"}  # headroom: max_tokens + 1
    assert akv["answer"]["keep"] == 0.35 and akv["answer"]["keep_source"] == "profile"
    ratio = akv["answer"]["kv_bytes_kept"] / akv["answer"]["kv_bytes_full"]
    assert abs(ratio - 0.35) <= 0.05 * 0.35, ratio

    explicit = out["audiokv-keep"]     # an explicit keep wins; the other stored defaults still apply
    assert explicit["keep"] == 0.6 and explicit["keep_source"] == "config"
    assert explicit["settings"]["window"] == 48 and explicit["settings"]["sss_alpha"] == 0.25

    snap = out["snapkv"]               # other methods keep their own defaults
    assert snap["defaults"] is None and snap["keep"] == 0.4 and snap["keep_source"] == "default"
    assert snap["settings"]["window"] == EVICT_WINDOW == snap["settings"]["n_window"]
    assert snap["settings"]["sss_alpha"] == 0.0
