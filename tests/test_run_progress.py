"""Runner helpers without native code: the progress bar (tqdm, drawn only on a terminal) and KV-byte accounting."""

from __future__ import annotations

import io

import pytest

from audiokv_edge.run import progress_bar
from audiokv_edge.runtime.stats import KVGeometry, AnswerStats


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_only_on_a_terminal():
    def draw(stream, show=True):
        bar = progress_bar(show, stream)
        bar.total = 10
        bar.n = 5
        bar.refresh()
        bar.close()
        return stream.getvalue()

    assert draw(io.StringIO()) == ""
    text = draw(FakeTTY())
    assert "encoding + prefill" in text and "5/10" in text and "positions" in text and text.endswith("\n")
    assert draw(FakeTTY(), show=False) == ""


def test_kv_geometry_bytes():
    g = KVGeometry(n_layer=4, n_head_kv=2, head_dim_k=16, head_dim_v=16, kv_type="f16")
    # n_layer * n_tokens * (n_embd_k_gqa + n_embd_v_gqa) * 2 bytes
    assert g.full_bytes(100) == 4 * 100 * (32 + 32) * 2
    assert g.kept_bytes(4 * 2 * 40) == g.full_bytes(40)
    q8 = KVGeometry(4, 2, 32, 32, "q8_0")
    assert q8.full_bytes(32) == 4 * 2 * 32 * 64 * 34 // 32
    with pytest.raises(ValueError, match="KV type"):
        KVGeometry(4, 2, 16, 16, "q4_0")
    with pytest.raises(ValueError, match="n_head_kv"):
        KVGeometry(4, 0, 16, 16)
    # 3 evictable layers of 1 KV head of 512 + 256, V transposed and padded to a 512-wide layer's
    padded = KVGeometry(3, 1, 512, 256, "f16", other_values=3 * 256)
    assert padded.full_bytes(100) == 100 * 3 * 1024 * 2
    assert padded.held_bytes(3 * 40, 100) == 3 * 40 * 768 * 2 + 100 * 3 * 256 * 2
    assert padded.held_bytes(3 * 100, 100) == padded.full_bytes(100)
    assert KVGeometry(0, 1, 1, 1).full_bytes(100) == 0  # a recurrent model


def test_summary_shows_the_kept_share():
    stats = AnswerStats(audio_seconds=11.0, audio_tokens=750, prompt_tokens=770, generated_tokens=3, method="snapkv",
                        keep=0.4, eviction_applied=True, kv_bytes_full=1000, kv_bytes_kept=400,
                        prefill_tokens_per_s=100.0, decode_tokens_per_s=10.0, prefill_s=7.7, decode_s=0.3,
                        evict_ms=1.0, peak_rss_bytes=1 << 20, finish_reason="length")
    lines = stats.summary_lines()
    assert any("kept 0.00 MiB (40.0%)" in line for line in lines)
    assert stats.to_dict()["kv_bytes_kept"] == 400
