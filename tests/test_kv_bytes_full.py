"""The runner's ``kv_bytes_full`` is what llama.cpp allocates for the cached positions in the cache eviction works
on: that KV cache's own size (the ``llama_kv_cache: size = ... MiB (N cells, L layers ...)`` line it logs; an iSWA
model logs its full-attention cache first, then the SWA one, which holds the window) per cell, times the positions.
Layers without K/V of their own add nothing: LFM2's short convolutions (tiny lfm2-lfm2a: 2 attention layers of 6),
Gemma 4's layers reading another layer's K/V (tiny gemma4-gemma4a: 4 of 8, of the 4 owning ones 2 full attention).
Counting every layer (the code before) gave 3x (lfm2) and 4x (gemma4) the real size."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest

from audiokv_edge.testing.tiny_models import write_tiny_pair

pytestmark = pytest.mark.native

_SIZE = re.compile(r"llama_kv_cache: size = +([0-9.]+) MiB \( *(\d+) cells, +(\d+) layers")
MIB = 1024 * 1024


@pytest.mark.parametrize("name, kv_layers", [("lfm2-lfm2a", 2), ("gemma4-gemma4a", 2)])
def test_full_cache_bytes_are_llama_cpps(tmp_path, caplog, name, kv_layers):
    from audiokv_edge.runtime.session import Session, SessionConfig

    model, mmproj = write_tiny_pair(tmp_path, name)
    caplog.set_level(logging.DEBUG, logger="audiokv_edge.native")
    with Session(model, mmproj, SessionConfig(method="full", ctx=1024, threads=1, max_tokens=1)) as s:
        caches = [(float(m[1]), int(m[2]), int(m[3])) for m in map(_SIZE.search, caplog.messages) if m]
        assert len(caches) == (2 if name.startswith("gemma4") else 1), caches
        mib, n_cells, layers = caches[0]  # the cache holding every position
        assert layers == kv_layers, caches
        allocated = mib * MIB
        tolerance = 0.005 * MIB  # the log's 2 decimals
        assert abs(s.geometry.full_bytes(n_cells) - allocated) <= tolerance
        rate = s.sample_rate
        audio = (0.1 * np.random.default_rng(0).standard_normal(rate)).astype(np.float32)
        answer = s.answer(audio, sample_rate=rate)
    stats = answer.stats
    assert stats.kv_bytes_kept == stats.kv_bytes_full
    positions = stats.prompt_tokens
    assert abs(stats.kv_bytes_full - positions * allocated / n_cells) <= positions * tolerance / n_cells + 1
