"""Window scores, GQA reduction and pooling against direct per-element definitions (docs/semantics.md)."""

import math

import numpy as np
import pytest

from audiokv_edge.reference.scores import pool1d, reduce_gqa, window_attention_layer, window_scores


def direct_window_scores(q, k, row_reduce="mean"):
    """Loop transcription: softmax over the causally visible keys, mean over window rows, prefix columns."""
    n_head, w, d = q.shape
    n_head_kv, n_tokens, _ = k.shape
    g = n_head // n_head_kv
    out = np.zeros((n_head, n_tokens - w))
    for h in range(n_head):
        for i in range(w):
            p = n_tokens - w + i
            z = np.array([q[h, i] @ k[h // g, j] / math.sqrt(d) for j in range(p + 1)])
            a = np.exp(z - z.max())
            a /= a.sum()
            out[h] += a[: n_tokens - w]
    return out / w if row_reduce == "mean" else out


@pytest.mark.parametrize("n_head,n_head_kv,w,n_tokens", [(1, 1, 1, 2), (4, 2, 3, 10), (6, 2, 5, 5), (4, 4, 4, 20)])
@pytest.mark.parametrize("row_reduce", ["mean", "sum"])
def test_window_attention_matches_loops(n_head, n_head_kv, w, n_tokens, row_reduce):
    rng = np.random.default_rng(n_head * 100 + n_tokens)
    q = rng.standard_normal((n_head, w, 8)).astype(np.float32)
    k = rng.standard_normal((n_head_kv, n_tokens, 8)).astype(np.float32)
    np.testing.assert_allclose(window_attention_layer(q, k, row_reduce),
                               direct_window_scores(q.astype(float), k.astype(float), row_reduce),
                               rtol=1e-12, atol=1e-15)


def test_causal_mask_matters():
    # A huge logit on the last key must not leak into earlier window rows.
    q = np.ones((1, 2, 1))
    k = np.ones((1, 4, 1))
    k[0, 3, 0] = 50.0
    s = window_attention_layer(q, k)
    # row 0 sees keys 0..2 (uniform 1/3 each on the prefix 0..1); row 1 puts ~all weight on key 3
    np.testing.assert_allclose(s[0], [(1 / 3 + 0) / 2, (1 / 3 + 0) / 2], atol=1e-12)


def test_window_scores_per_layer_and_overflow():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((3, 2, 4, 8))
    k = rng.standard_normal((3, 1, 12, 8))
    out = window_scores(q, k)
    assert out.shape == (3, 2, 8)
    for layer in range(3):
        np.testing.assert_allclose(out[layer], window_attention_layer(q[layer], k[layer]), rtol=1e-15)
    with pytest.raises(ValueError, match="overflow"):
        window_attention_layer(np.full((1, 1, 2), 1e200), np.full((1, 3, 2), 1e200))


def test_reduce_gqa_groups_consecutive_heads():
    s = np.arange(2 * 6 * 3, dtype=float).reshape(2, 6, 3)
    mean = reduce_gqa(s, 2, "mean")
    np.testing.assert_allclose(mean[1, 1], s[1, 3:6].mean(axis=0))
    assert np.array_equal(reduce_gqa(s, 2, "max")[0, 0], s[0, 2])
    with pytest.raises(ValueError):
        reduce_gqa(s, 4)
    with pytest.raises(ValueError):
        reduce_gqa(s, 2, "median")


def direct_pool(x, k, kind):
    n = len(x)
    out = []
    for i in range(n):
        vals = [x[j] if 0 <= j < n else (0.0 if kind == "avg" else -np.inf) for j in range(i - k // 2, i + k // 2 + 1)]
        out.append(sum(vals) / k if kind == "avg" else max(vals))
    return np.array(out)


@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("n", [1, 2, 6, 17])
def test_pool_matches_definition(k, kind, n):
    x = np.random.default_rng(n + k).random((2, n))
    out = pool1d(x, k, kind)
    for r in range(2):
        np.testing.assert_allclose(out[r], direct_pool(list(x[r]), k, kind), rtol=1e-14)


@pytest.mark.parametrize("k,kind", [(4, "avg"), (0, "avg"), (3, "min"), (2.0, "max")])
def test_pool_bad_parameters(k, kind):
    with pytest.raises(ValueError):
        pool1d(np.ones(5), k, kind)
