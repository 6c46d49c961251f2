"""Hit-ratio head scoring: planted audio-aligned heads rank first; spans, top-K, GQA and edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from audiokv_edge.profiling.hit_ratio import (HitRatioAccumulator, WordTiming, profile_from_hits, reduce_gqa,
                                       top_k_hits, uniform_word_timings, word_token_spans)

L, H, HKV, A0, N_AUDIO, T = 4, 8, 4, 16, 250, 10.0
ALIGNED = [(1, 2), (1, 3), (3, 4)]          # query heads that follow the current word's audio
LAGGING = (2, 6)                            # follows the PREVIOUS word: partly aligned


def _timings(rng, n_words=20):
    cuts = np.sort(rng.uniform(0.2, T - 0.2, 2 * n_words))
    return [WordTiming(f"w{i}", float(cuts[2 * i]), float(cuts[2 * i + 1])) for i in range(n_words)]


def _rows(rng, n_kv, span, prev_span):
    """Attention rows [L, H, n_kv] of one decode step: softmax-like, sinks + recency + noise."""
    logits = rng.normal(0, 1.0, (L, H, n_kv))
    logits[:, :, :4] += 4.0                                   # attention sinks
    logits[:, :, n_kv - 8:] += 3.0                            # recent text tokens
    audio_noise = rng.integers(A0, A0 + N_AUDIO, (L, H, 12))  # stray peaks on random audio tokens
    for l in range(L):
        for h in range(H):
            logits[l, h, audio_noise[l, h]] += 3.5
    for l, h in ALIGNED:
        logits[l, h, span[0]:span[1]] += 5.0
    logits[LAGGING[0], LAGGING[1], prev_span[0]:prev_span[1]] += 5.0
    logits[LAGGING[0], LAGGING[1], span[0]:span[1]] += 2.0
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _score_synthetic(seed=0, n_utt=3):
    rng = np.random.default_rng(seed)
    acc = HitRatioAccumulator(L, H, top_k=24)
    for _ in range(n_utt):
        spans = word_token_spans(_timings(rng), T, N_AUDIO, A0)
        n_kv = A0 + N_AUDIO + 10
        for i, span in enumerate(spans):
            prev = spans[max(i - 1, 0)]
            for _tok in range(2):                             # two decode steps (tokens) per word
                acc.add(_rows(rng, n_kv, span, prev), tuple(span))
                n_kv += 1
    return acc


def test_planted_aligned_heads_rank_first():
    acc = _score_synthetic()
    s = acc.head_scores()
    order = [divmod(int(i), H) for i in np.argsort(-s.ravel(), kind="stable")]
    assert set(order[:3]) == set(ALIGNED)
    assert order[3] == LAGGING                                # partly aligned comes next
    # spans are ~6 tokens and K = 24, so an aligned head scores at most ~0.25; the rest score far less
    rest = np.sort(s.ravel())[::-1][4]
    assert min(s[l, h] for l, h in ALIGNED) > 3 * rest


def test_planted_kv_heads_rank_first_after_gqa():
    acc = _score_synthetic(seed=1)
    prof = profile_from_hits(acc, HKV, {"calibration": "synthetic"})
    assert prof.scores.shape == (L, HKV)
    assert prof.scores.sum() == pytest.approx(1.0)
    order = [divmod(int(i), HKV) for i in np.argsort(-prof.scores.ravel(), kind="stable")]
    assert order[0] == (1, 1)                                 # both query heads of KV head 1 of layer 1
    assert order[1] == (3, 2)
    np.testing.assert_allclose(prof.scores, reduce_gqa(acc.head_scores(), HKV) / reduce_gqa(
        acc.head_scores(), HKV).sum())


def test_word_token_spans_uniform_mapping():
    spans = word_token_spans([WordTiming("a", 0.0, 1.0), WordTiming("b", 1.0, 1.05),
                              WordTiming("c", 9.99, 10.0), WordTiming("d", 2.0, 2.0)], 10.0, 250, a0=7)
    # a: floor(0) .. ceil(25) ; b: floor(25) .. ceil(26.25)=27 ; c: floor(249.75)=249 .. 250 ; d: 1 token
    np.testing.assert_array_equal(spans, [[7, 32], [32, 34], [256, 257], [57, 58]])


def test_word_token_spans_refuse_bad_input():
    with pytest.raises(ValueError, match="after the clip"):
        word_token_spans([WordTiming("a", 11.0, 12.0)], 10.0, 250)
    with pytest.raises(ValueError, match="duration"):
        word_token_spans([WordTiming("a", 0.0, 1.0)], 0.0, 250)
    with pytest.raises(ValueError):
        WordTiming("a", 2.0, 1.0)
    with pytest.raises(ValueError):
        WordTiming("a", float("nan"), 1.0)


def test_uniform_word_timings_cover_clip_by_length():
    t = uniform_word_timings(["a", "bbb"], 6.0)
    assert (t[0].start, t[0].end, t[1].start, t[1].end) == (0.0, 2.0, 2.0, 6.0)
    with pytest.raises(ValueError):
        uniform_word_timings([], 1.0)


def test_top_k_hits_counts_and_ties():
    row = np.zeros(40)
    row[[3, 5, 30]] = [0.5, 0.3, 0.2]
    assert top_k_hits(row, 0, 10, top_k=2) == 2
    assert top_k_hits(row, 0, 10, top_k=3) == 2
    flat = np.ones((2, 3, 30))                              # all tied: the lowest positions win
    np.testing.assert_array_equal(top_k_hits(flat, 0, 24, top_k=24), np.full((2, 3), 24))
    np.testing.assert_array_equal(top_k_hits(flat, 24, 30, top_k=24), np.zeros((2, 3)))
    assert top_k_hits(np.ones(10), 0, 5, top_k=24) == 5      # row shorter than K: all positions


def test_short_rows_use_all_positions_in_ratio():
    acc = HitRatioAccumulator(1, 1, top_k=24)
    acc.add(np.ones((1, 1, 10)), (0, 5))
    assert acc.head_scores()[0, 0] == pytest.approx(0.5)


@pytest.mark.parametrize("span", [(5, 5), (-1, 3), (0, 41)])
def test_top_k_hits_bad_span(span):
    with pytest.raises(ValueError, match="span"):
        top_k_hits(np.ones(40), *span)


def test_nan_rows_and_shapes_refused():
    acc = HitRatioAccumulator(2, 2)
    bad = np.ones((2, 2, 30))
    bad[1, 0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        acc.add(bad, (0, 5))
    with pytest.raises(ValueError, match="shape"):
        acc.add(np.ones((2, 3, 30)), (0, 5))
    with pytest.raises(ValueError, match="no decode steps"):
        acc.head_scores()


def test_gqa_sum_and_no_hits():
    np.testing.assert_array_equal(reduce_gqa(np.arange(8.0).reshape(1, 8), 4), [[1, 5, 9, 13]])
    with pytest.raises(ValueError, match="multiple"):
        reduce_gqa(np.ones((1, 6)), 4)
    acc = HitRatioAccumulator(1, 2, top_k=2)
    row = np.zeros((1, 2, 20))
    row[..., 15:] = 1.0
    acc.add(row, (0, 5))
    with pytest.raises(ValueError, match="ever fell inside"):
        profile_from_hits(acc, 1, {"calibration": "x"})


def test_merge_equals_sequential():
    rng = np.random.default_rng(3)
    rows = [rng.random((2, 4, 50)) for _ in range(6)]
    one, a, b = HitRatioAccumulator(2, 4), HitRatioAccumulator(2, 4), HitRatioAccumulator(2, 4)
    for i, r in enumerate(rows):
        one.add(r, (10, 20))
        (a if i < 3 else b).add(r, (10, 20))
    a.merge(b)
    np.testing.assert_allclose(a.head_scores(), one.head_scores())
