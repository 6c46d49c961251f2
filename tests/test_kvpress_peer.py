"""Peer check against kvpress 0.5.5 (pip `kvpress`, NVIDIA): same queries and keys, same kept tokens.

kvpress presses are driven on raw tensors through a minimal attention module: q_proj is the identity, so the
last w rows of hidden_states ARE the window queries, and RoPE is the identity (cos = 1, sin = 0), so keys and
queries are used as given. Agreement is exact (token for token) wherever the two definitions agree; the tests
named *difference* pin down where they differ on purpose. kvpress's softmax runs in float32: inputs are random
normal so that no two scores lie within float32 noise of each other at the cut.

Needs the `peer` extra (torch 2.13.0 CPU, kvpress 0.5.5). Skipped outside CI when missing; in CI (env CI set) a
missing kvpress is an error, never a silent skip.
"""

import os
from types import SimpleNamespace

import numpy as np
import pytest

from audiokv_edge import plan
from audiokv_edge.methods import AdaKV, SnapKV
from audiokv_edge.methods.base import PlanInputs
from audiokv_edge.keep_plan import uniform_budget
from audiokv_edge.reference.select import select_kept

if os.environ.get("CI"):
    import kvpress  # noqa: F401  (CI installs the peer extra: fail loudly if it is missing)
    import torch
else:
    kvpress = pytest.importorskip("kvpress", reason="peer extra (torch, kvpress) not installed")
    import torch

from kvpress import AdaKVPress, PyramidKVPress, ScorerPress, SnapKVPress, StreamingLLMPress  # noqa: E402

pytestmark = pytest.mark.slow  # importing kvpress (transformers) alone takes 10-20 s on 2 cores

N_LAYER, N_HEAD, N_HEAD_KV, HEAD_DIM, N_TOKENS, WINDOW = 3, 8, 2, 16, 256, 8
KEEPS = [0.125, 0.25, 0.5, 0.75]  # N * keep is exact: kvpress's int() and our round agree on C


class RawAttention(torch.nn.Module):
    """The attributes kvpress reads from an attention layer, with identity projections."""

    def __init__(self, layer_idx, n_layer=N_LAYER, n_head=N_HEAD, n_head_kv=N_HEAD_KV, head_dim=HEAD_DIM):
        super().__init__()
        self.q_proj = torch.nn.Identity()
        self.head_dim = head_dim
        self.layer_idx = layer_idx
        self.config = SimpleNamespace(num_attention_heads=n_head, num_key_value_heads=n_head_kv,
                                      num_hidden_layers=n_layer, _attn_implementation="sdpa")


def make_qk(seed, n_tokens=N_TOKENS, window=WINDOW):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((N_LAYER, N_HEAD, window, HEAD_DIM))
    k = rng.standard_normal((N_LAYER, N_HEAD_KV, n_tokens, HEAD_DIM))
    return q, k


def press_call(press, q, k, layer, method="compress"):
    """Run press.compress on layer `layer`; return the kept token indices per KV head (sorted)."""
    n_tokens = k.shape[2]
    w = q.shape[2]
    hidden = torch.zeros(1, n_tokens, N_HEAD * HEAD_DIM, dtype=torch.float64)
    hidden[0, -w:] = torch.from_numpy(q[layer].transpose(1, 0, 2).reshape(w, N_HEAD * HEAD_DIM))
    keys = torch.from_numpy(k[layer][None].copy())
    # values carry the token index, so the compressed values tell which tokens were kept
    values = torch.arange(n_tokens, dtype=torch.float64).view(1, 1, n_tokens, 1).expand(1, N_HEAD_KV, n_tokens,
                                                                                        HEAD_DIM).contiguous()
    kwargs = {"position_embeddings": (torch.ones(1, n_tokens, HEAD_DIM, dtype=torch.float64),
                                      torch.zeros(1, n_tokens, HEAD_DIM, dtype=torch.float64))}
    module = RawAttention(layer)
    _, kept_values = press.compress(module, hidden, keys, values, None, kwargs)
    if hasattr(module, "masked_key_indices"):  # AdaKV: the pruned (head, token) pairs
        _, heads, tokens = (t.numpy() for t in module.masked_key_indices)
        keep_mask = np.ones((N_HEAD_KV, n_tokens), dtype=bool)
        keep_mask[heads, tokens] = False
        return [np.flatnonzero(keep_mask[h]) for h in range(N_HEAD_KV)]
    return [np.sort(kept_values[0, h, :, 0].numpy().astype(np.int64)) for h in range(N_HEAD_KV)]


def assert_same_plan(ours, theirs_per_layer):
    for layer, theirs in enumerate(theirs_per_layer):
        for head in range(N_HEAD_KV):
            np.testing.assert_array_equal(ours.indices[layer][head], theirs[head],
                                          err_msg=f"layer {layer}, KV head {head}")


@pytest.mark.parametrize("keep", KEEPS)
@pytest.mark.parametrize("seed", [0, 1])
def test_snapkv_same_tokens(seed, keep):
    q, k = make_qk(seed)
    ours = plan("snapkv", q, k, keep, window=WINDOW)
    press = SnapKVPress(compression_ratio=1 - keep, window_size=WINDOW, kernel_size=5)
    assert_same_plan(ours, [press_call(press, q, k, layer) for layer in range(N_LAYER)])


@pytest.mark.parametrize("keep", KEEPS)
def test_streamingllm_same_tokens(keep):
    q, k = make_qk(2)
    ours = plan("streamingllm", q, k, keep, window=WINDOW)
    press = StreamingLLMPress(compression_ratio=1 - keep, n_sink=4)
    assert_same_plan(ours, [press_call(press, q, k, layer) for layer in range(N_LAYER)])


def test_streamingllm_difference_tiny_budget():
    # C < w + n_sink: we keep the whole window and C - w sinks; kvpress keeps all 4 sinks and drops window tokens.
    q, k = make_qk(3)
    keep = 10 / N_TOKENS  # C = 10 = w + 2
    ours = plan("streamingllm", q, k, keep, window=WINDOW)
    theirs = press_call(StreamingLLMPress(compression_ratio=1 - keep, n_sink=4), q, k, 0)
    assert ours.indices[0][0].tolist() == [0, 1] + list(range(N_TOKENS - 8, N_TOKENS))
    assert theirs[0].tolist() == [0, 1, 2, 3] + list(range(N_TOKENS - 6, N_TOKENS))


@pytest.mark.parametrize("keep", KEEPS)
def test_adakv_without_safeguard_same_tokens(keep):
    q, k = make_qk(4)
    ours = plan("adakv", q, k, keep, window=WINDOW, safeguard=0.0)
    assert len(np.unique(ours.budgets)) > 1  # the comparison covers really uneven heads
    press = AdaKVPress(SnapKVPress(compression_ratio=1 - keep, window_size=WINDOW, kernel_size=5),
                       alpha_safeguard=0.0)
    assert_same_plan(ours, [press_call(press, q, k, layer) for layer in range(N_LAYER)])


class FixedScorePress(ScorerPress):
    """A kvpress scorer returning given scores [1, n_head_kv, n_tokens] (to compare budget rules alone)."""

    def __init__(self, scores, compression_ratio):
        super().__init__(compression_ratio=compression_ratio)
        self.fixed = scores

    def score(self, module, hidden_states, keys, values, attentions, kwargs):
        return self.fixed.clone()


def test_adakv_difference_safeguard():
    # One strong head, one weak head. Ours (AdaKV code): cap_h = n_h (1 - a) + floor(a B') on top of the window:
    # B' = 120, strong n = 240 -> 216 + 8, weak n = 0 -> 24 + 8. kvpress: every head first protects its top
    # int(a C) = 25 tokens (window included), the rest goes by global rank: strong 25 + 206 = 231, weak 25.
    rng = np.random.default_rng(5)
    n_tokens, window, keep = 256, 8, 0.5
    prefix = np.stack([1 + rng.random(n_tokens - window), 0.5 * rng.random(n_tokens - window)])
    inputs = PlanInputs(q_window=None, keys=np.zeros((1, 2, n_tokens, 1)), keep=keep, window=window,
                        budget=uniform_budget(keep, n_tokens))
    ours = AdaKV(window=window, safeguard=0.2).budgets(inputs, prefix[None])
    assert ours.tolist() == [[224, 32]]
    full = torch.from_numpy(np.concatenate([prefix, np.full((2, window), 10.0)], axis=1)[None])
    press = AdaKVPress(FixedScorePress(full, 1 - keep), alpha_safeguard=0.2)
    module = RawAttention(0, n_head=2, n_head_kv=2, head_dim=1)
    press.compress(module, torch.zeros(1, n_tokens, 2), torch.zeros(1, 2, n_tokens, 1),
                   torch.zeros(1, 2, n_tokens, 1), None, {})
    pruned_per_head = np.bincount(module.masked_key_indices[1].numpy(), minlength=2)
    assert (n_tokens - pruned_per_head).tolist() == [231, 25]


@pytest.mark.parametrize("keep", KEEPS)
def test_pyramidkv_scores_and_selection_agree(keep):
    # Same scores and the same selection: with kvpress's own per-layer budgets, our selection keeps its tokens.
    q, k = make_qk(6)
    inputs = PlanInputs(q_window=q, keys=k, keep=keep, window=WINDOW, budget=uniform_budget(keep, N_TOKENS))
    scores = SnapKV(window=WINDOW).score(inputs)
    press = PyramidKVPress(compression_ratio=1 - keep, window_size=WINDOW, kernel_size=5)
    theirs = [press_call(press, q, k, layer) for layer in range(N_LAYER)]
    budgets = np.array([[len(t[h]) for h in range(N_HEAD_KV)] for t in theirs])
    kept = select_kept(scores, budgets, N_TOKENS, WINDOW)
    for layer in range(N_LAYER):
        for head in range(N_HEAD_KV):
            np.testing.assert_array_equal(kept[layer][head], theirs[layer][head])


@pytest.mark.parametrize("keep", [0.5, 0.75])
def test_pyramidkv_difference_window_on_top(keep):
    # kvpress's pyramid is sized so that it INCLUDES the window (its budget averages C); ours (KVCache-Factory)
    # puts the window on top of a pyramid averaging C - w. With kvpress's ratio set to (C - w) / N both pyramids
    # are the same, and our budgets exceed kvpress's by w (within 1 token of integerisation), our kept tokens
    # containing theirs. (w = 4 keeps kvpress off its uniform fallback, taken when lo = (C - w) / beta < w.)
    window = 4
    q, k = make_qk(7, window=window)
    ours = plan("pyramidkv", q, k, keep, window=window)
    c = uniform_budget(keep, N_TOKENS)
    press = PyramidKVPress(compression_ratio=1 - (c - window) / N_TOKENS, window_size=window, kernel_size=5)
    for layer in range(N_LAYER):
        theirs = press_call(press, q, k, layer)
        for head in range(N_HEAD_KV):
            assert abs(ours.budgets[layer, head] - len(theirs[head]) - window) <= 1
            assert np.all(np.isin(theirs[head], ours.indices[layer][head]))
    assert len(np.unique(ours.budgets[:, 0])) == N_LAYER


def test_pyramidkv_difference_kvpress_uniform_fallback():
    # kvpress falls back to uniform SnapKV budgets when its smallest layer budget lo would be below w
    # (here (C - w) / beta = 120 / 20 = 6 < 8); ours stays a pyramid (lo may be anything >= 0).
    q, k = make_qk(8)
    keep = 0.5
    c = uniform_budget(keep, N_TOKENS)
    press = PyramidKVPress(compression_ratio=1 - (c - WINDOW) / N_TOKENS, window_size=WINDOW, kernel_size=5)
    assert {len(press_call(press, q, k, layer)[0]) for layer in range(N_LAYER)} == {c - WINDOW}
    ours = plan("pyramidkv", q, k, keep, window=WINDOW)
    assert ours.budgets[0, 0] > c > ours.budgets[-1, 0]
