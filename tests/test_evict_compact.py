"""Per-head KV eviction inside llama.cpp, COMPACT mode: patches/0002-kv-evict-compact.patch.

After an eviction the kept entries of each (layer, KV head) live in their own region of a per-layer pool sized for
the plan's budget plus a fixed headroom, and attention runs one op per KV head over them (docs/per-head-eviction.md,
section 4). The ORACLE is the MASK mode of the same library (tests/test_evict_mask.py shows it equals seq_rm and
follows the KV head): with the same plans, the compacted context must give the same logits.

- oracle: 32 greedy tokens after eviction (a second eviction in the middle, pools growing past their headroom),
  llama / qwen2 / qwen3 / gemma3 (iSWA), two plans each, f32 cache: max abs logit diff < 1e-4 without flash
  attention, < 1e-2 with it (the CPU flash-attention kernel accumulates in f16 and depends on the cell order,
  docs section 6) and the same tokens; f16 and q8_0 caches the same way;
- memory: the bytes llama.cpp reports after compaction equal the plan's sum of budgets (K and V rows) plus the
  stated headroom plus the one main-cache cell kept for the sequence's last position;
- streaming: 7,680 tokens through a context whose KV allocation is 4,096 cells, evicting after every 256-token
  chunk; the result equals the MASK-mode oracle run in an 8,192-cell context;
- keep-all is bitwise identical to eviction off; refused operations on a compacted sequence.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from test_evict_mask import (  # noqa: E402 - the shared harness of the eviction tests
    GGML_TYPE_F16, GGML_TYPE_F32, GGML_TYPE_Q8_0, Runner, enable, evict_lib, greedy, keep_all, models, prompt,
)

pytestmark = pytest.mark.native

MASK, COMPACT = 0, 1

__all__ = ["models"]  # the fixture, re-exported for pytest


def ragged_plan(seed, keep=0.5, protect=4, hold_all=False):
    """Plan function keeping a different random ``keep`` share of the entries in every (layer, KV head); the last
    ``protect`` entries are always kept. ``hold_all``: the first (layer, head) keeps everything, so that no token
    leaves the MASK-mode oracle's cells (its cell order then stays the position order, as in the pools).
    Returns (fn, record) where record['budgets'] lists the kept counts."""
    record = {"budgets": []}

    def fn(seq_id, layers, uniform):
        rng = np.random.default_rng([seed, len(record["budgets"])])
        budgets = []
        for li, lv in enumerate(layers):
            for h in range(lv.n_head_kv):
                n = len(lv.pos[h])
                share = float(np.clip(keep + rng.normal(0, 0.15), 0.1, 1.0))
                if hold_all and li == 0 and h == 0:
                    share = 1.0
                prefix = max(n - protect, 0)
                k = int(round(share * prefix))
                chosen = np.sort(rng.choice(prefix, size=k, replace=False)) if k else np.zeros(0, int)
                idx = np.concatenate([chosen, np.arange(prefix, n)])
                lv.set_keep(h, idx)
                budgets.append(len(idx))
        record["budgets"].append(budgets)
        return 0

    return fn, record


def stats(runner):
    from audiokv_edge import llama_evict_cpp as E

    st = E.llama_kv_evict_stats()
    assert evict_lib().llama_kv_evict_get_stats(runner.ctx, 0, ctypes.byref(st)) == 0
    return st


def run_pair(path, plan_seed, flash_attn, type_kv=GGML_TYPE_F32, n_prompt=64, steps=32, headroom=4, hold_all=False):
    """Same prompt and plans in a COMPACT and a MASK context; returns (tokens, compact logits, mask logits)."""
    fc, _ = ragged_plan(plan_seed, hold_all=hold_all)
    fm, _ = ragged_plan(plan_seed, hold_all=hold_all)
    c = Runner(path, flash_attn=flash_attn, type_kv=type_kv)
    m = Runner(path, flash_attn=flash_attn, type_kv=type_kv)
    try:
        assert enable(c, fc, mode=COMPACT, n_headroom=headroom) == 0
        assert enable(m, fm, mode=MASK) == 0
        toks = prompt(n_prompt, 12, c.n_vocab)
        lc, lm = c.decode(toks), m.decode(toks)
        np.testing.assert_array_equal(lc, lm)
        lib = evict_lib()
        assert lib.llama_kv_evict_seq(c.ctx, 0) == 0
        assert lib.llama_kv_evict_seq(m.ctx, 0) == 0
        t1, yc1 = greedy(c, lc, steps // 2)
        _, ym1 = greedy(m, lm, steps // 2, forced=t1)
        assert lib.llama_kv_evict_seq(c.ctx, 0) == 0  # second round: entries from the pools and the new tokens
        assert lib.llama_kv_evict_seq(m.ctx, 0) == 0
        t2, yc2 = greedy(c, yc1[-1], steps - steps // 2)
        _, ym2 = greedy(m, ym1[-1], steps - steps // 2, forced=t2)
        return t1 + t2, np.concatenate([yc1, yc2]), np.concatenate([ym1, ym2])
    finally:
        c.close()
        m.close()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma3"])
@pytest.mark.parametrize("flash_attn", [True, False], ids=["fa", "nofa"])
@pytest.mark.parametrize(("plan_seed", "hold_all"), [(0, True), (1, True), (2, False)], ids=["p0", "p1", "p2-reuse"])
def test_compact_equals_mask_oracle(models, arch, flash_attn, plan_seed, hold_all):
    """Compacted logits == masked-oracle logits for the next 32 greedy tokens (f32 cache).

    With ``hold_all`` no token leaves the oracle's cells and both sum in position order: the logits agree to
    < 1e-3 (measured: bitwise). ``p2-reuse`` lets the oracle reuse the cells of tokens dropped by every head for new
    tokens: without flash attention the order does not matter (< 1e-4); with it the f16 accumulation of the CPU
    kernel makes the result depend on the cell order (measured 4-7e-3, docs section 6), so only < 1e-2 is asserted.
    """
    toks, yc, ym = run_pair(models[arch], plan_seed, flash_attn, hold_all=hold_all)
    diff = float(np.max(np.abs(yc - ym)))
    print(f"{arch} fa={flash_attn} plan={plan_seed} hold_all={hold_all}: max abs logit diff over 32 tokens {diff:.2e}")
    if flash_attn and not hold_all:
        assert diff < 1e-2
    else:
        assert diff < (1e-3 if flash_attn else 1e-4)
        np.testing.assert_array_equal(np.argmax(yc, axis=1), np.argmax(ym, axis=1))


@pytest.mark.parametrize(("arch", "type_kv"), [("qwen3", GGML_TYPE_Q8_0), ("llama", GGML_TYPE_F16)],
                         ids=["qwen3-q8_0", "llama-f16"])
def test_compact_quantized_and_f16_caches(models, arch, type_kv):
    """q8_0 K/V (head_dim 64: Hadamard-rotated keys and queries) and f16, flash attention on."""
    toks, yc, ym = run_pair(models[arch], 0, True, type_kv=type_kv, hold_all=True)
    diff = float(np.max(np.abs(yc - ym)))
    print(f"{arch} type {type_kv}: max abs logit diff {diff:.2e}")
    assert diff < 1e-3
    assert np.all(np.argmax(yc, axis=1) == np.argmax(ym, axis=1))


def test_compact_memory_is_the_sum_of_budgets(models):
    """Bytes of KV storage in use after compaction == plan's budgets + the stated headroom (+ 1 main cell)."""
    headroom = 16
    fn, record = ragged_plan(5, keep=0.4)
    r = Runner(models["llama"], n_ctx=512, type_kv=GGML_TYPE_F16)
    try:
        assert enable(r, fn, mode=COMPACT, n_headroom=headroom) == 0
        r.decode(prompt(400, 2, r.n_vocab))
        before = stats(r)
        assert evict_lib().llama_kv_evict_seq(r.ctx, 0) == 0
        after = stats(r)
    finally:
        r.close()
    n_layer, n_head_kv, d = 4, 2, 32
    row = 2 * d * 2  # one K row + one V row of one head, f16
    budget_rows = sum(record["budgets"][0])
    headroom_bytes = n_layer * n_head_kv * headroom * row
    main_cell_bytes = n_layer * n_head_kv * row  # the sequence's last position stays in the main cache
    print(f"full {before.bytes_used} B, plan {budget_rows * row} B, in use {after.bytes_used} B "
          f"(headroom {after.bytes_headroom} B, last cell {main_cell_bytes} B)")
    assert before.bytes_used == 400 * n_layer * n_head_kv * row and before.bytes_headroom == 0
    assert after.n_entries == budget_rows
    assert after.bytes_kept == budget_rows * row
    assert after.bytes_headroom == headroom_bytes
    assert after.bytes_used == budget_rows * row + headroom_bytes + main_cell_bytes
    assert after.bytes_used - headroom_bytes <= 1.05 * budget_rows * row
    assert after.bytes_used < 0.5 * before.bytes_used


def keep_ratio_plan(keep=0.4, protect=8):
    """Keep a head-dependent share around ``keep`` of the entries, favouring different entries per head."""
    def fn(seq_id, layers, uniform):
        for li, lv in enumerate(layers):
            for h in range(lv.n_head_kv):
                n = len(lv.pos[h])
                prefix = max(n - protect, 0)
                share = keep * (0.75 + 0.5 * ((li + h) % 2))
                k = int(round(share * prefix))
                step = prefix / max(k, 1)
                chosen = np.unique(np.minimum((np.arange(k) * step + (li + 2 * h) % 3).astype(int), prefix - 1))
                lv.set_keep(h, np.concatenate([chosen, np.arange(prefix, n)]) if prefix else np.arange(n))
        return 0
    return fn


@pytest.mark.slow
def test_streaming_7680_tokens_in_a_4096_cell_context(models):
    """Evict after every 256-token chunk: 7,680 tokens run in a context allocated for 4,096 cells and give the
    logits of the MASK-mode oracle (8,192 cells)."""
    chunk, n_chunks = 256, 30
    c = Runner(models["qwen2"], n_ctx=4096, flash_attn=False)
    m = Runner(models["qwen2"], n_ctx=8192, flash_attn=False)
    try:
        c.llama.llama_batch_free(c.batch)
        c.batch = c.llama.llama_batch_init(chunk, 0, 1)
        assert enable(c, keep_ratio_plan(), mode=COMPACT, n_headroom=chunk) == 0
        assert enable(m, keep_ratio_plan(), mode=MASK) == 0
        lib = evict_lib()
        toks = prompt(chunk * n_chunks, 30, c.n_vocab)
        for i in range(n_chunks):
            part = toks[i * chunk:(i + 1) * chunk]
            lc, lm = c.decode(part), m.decode(part)
            assert lib.llama_kv_evict_seq(c.ctx, 0) == 0
            assert lib.llama_kv_evict_seq(m.ctx, 0) == 0
        assert float(np.max(np.abs(lc - lm))) < 1e-4
        tc, yc = greedy(c, lc, 16)
        _, ym = greedy(m, lm, 16, forced=tc)
        diff = float(np.max(np.abs(yc - ym)))
        st = stats(c)
        print(f"streamed {st.n_tokens} positions held, {st.n_entries} entries of {st.n_entries_full}; "
              f"{st.bytes_used} B in use; max abs logit diff {diff:.2e}")
        assert diff < 1e-4
        assert c.n_past[0] == chunk * n_chunks + 16 > 4096
    finally:
        c.close()
        m.close()


@pytest.mark.parametrize("flash_attn", [True, False], ids=["fa", "nofa"])
def test_compact_keep_all_is_bitwise_identical(models, flash_attn):
    """keep = 1: nothing to evict, nothing moves; bitwise equal to eviction off."""
    a = Runner(models["qwen2"], flash_attn=flash_attn, type_kv=GGML_TYPE_F16)
    b = Runner(models["qwen2"], flash_attn=flash_attn, type_kv=GGML_TYPE_F16)
    try:
        assert enable(a, keep_all, mode=COMPACT) == 0
        toks = prompt(60, 5, a.n_vocab)
        la, lb = a.decode(toks), b.decode(toks)
        np.testing.assert_array_equal(la, lb)
        assert evict_lib().llama_kv_evict_seq(a.ctx, 0) == 0
        ta, ya = greedy(a, la, 32)
        tb, yb = greedy(b, lb, 32)
        assert ta == tb
        np.testing.assert_array_equal(ya, yb)
    finally:
        a.close()
        b.close()


def test_compact_refuses_what_would_be_wrong(models):
    from audiokv_edge import llama_evict_cpp as E

    lib = evict_lib()
    two = Runner(models["qwen2"], n_seq_max=2)
    try:
        assert enable(two, keep_all, mode=COMPACT) == E.LLAMA_KV_EVICT_ERR_UNSUPPORTED
    finally:
        two.close()

    fn, _ = ragged_plan(3)
    r = Runner(models["qwen2"])
    fresh = Runner(models["qwen2"])
    try:
        llama = r.llama
        mem = llama.llama_get_memory(r.ctx)
        assert enable(r, fn, mode=COMPACT) == 0
        r.decode(prompt(40, 1, r.n_vocab))
        assert llama.llama_state_seq_get_size(r.ctx, 0) > 0  # not compacted yet: state works
        assert lib.llama_kv_evict_seq(r.ctx, 0) == 0
        assert llama.llama_memory_seq_pos_max(mem, 0) == 39
        assert not llama.llama_memory_seq_rm(mem, 0, 10, 20)  # partial removal refused
        llama.llama_memory_seq_add(mem, 0, 0, -1, 5)  # K-shift refused (logged), positions unchanged
        assert llama.llama_memory_seq_pos_max(mem, 0) == 39
        assert llama.llama_state_seq_get_size(r.ctx, 0) == 0  # state save refused
        assert llama.llama_state_get_size(r.ctx) == 0
        y = r.decode([3, 4, 5])
        assert np.all(np.isfinite(y))
        # removing the whole sequence drops the pools: the context works like a fresh one
        assert llama.llama_memory_seq_rm(mem, 0, -1, -1)
        r.n_past[0] = 0
        toks = prompt(20, 2, r.n_vocab)
        np.testing.assert_array_equal(r.decode(toks), fresh.decode(toks))
        assert llama.llama_state_seq_get_size(r.ctx, 0) > 0
    finally:
        r.close()
        fresh.close()


@pytest.mark.parametrize("flash_attn", [True, False], ids=["fa", "nofa"])
def test_compact_graph_fits_a_30_layer_model(tmp_path, flash_attn):
    """SmolLM2's depth and head layout (30 layers, 9 query / 3 KV heads): the per-KV-head attention of the compact
    path must fit the graph llama.cpp reserves (it aborted with GGML_ASSERT(obj_new) before patch 0003)."""
    from audiokv_edge import tiny_models as tm

    path = tmp_path / "deep.gguf"
    tm.write_text_model(path, tm.TextModelSpec("llama", tm.LLAMA3, n_embd=144, n_layer=30, n_head=9, n_head_kv=3,
                                               head_dim=16, n_ff=64), seed=1)
    fn, _ = ragged_plan(4)
    r = Runner(path, flash_attn=flash_attn, type_kv=GGML_TYPE_F32)
    try:
        assert enable(r, fn, mode=COMPACT, n_headroom=8) == 0
        first = r.decode(prompt(64, 3, r.n_vocab))
        assert evict_lib().llama_kv_evict_seq(r.ctx, 0) == 0
        y = r.decode(prompt(20, 4, r.n_vocab))  # a multi-token ubatch on the compact path
        _, ys = greedy(r, y, 4)
        assert np.all(np.isfinite(ys)) and np.all(np.isfinite(first))
    finally:
        r.close()
