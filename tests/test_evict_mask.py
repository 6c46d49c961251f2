"""Per-head KV eviction inside llama.cpp, ORACLE (mask) mode: llama_cpp_ext/src/llama-kv-evict-state.cpp.

The patched libllama captures the last queries of every sequence, hands them with the cached keys to a callback,
and hides the entries the callback's plan drops from every query head of their KV head (docs/per-head-eviction.md).
What is checked here, on tiny random-weight models of real architectures (llama, qwen2, qwen3, gemma3 iSWA):

- a plan that drops the same tokens from every (layer, head) gives the logits of llama_memory_seq_rm of those
  tokens: the next token and a 32-token greedy continuation, f32 cache, max abs logit difference < 1e-4
  (only the summation order of a few cells differs);
- keep-all through the per-head mask path is bitwise identical to a context without eviction, and to the
  unpatched libllama (subprocess, lib/unpatched of the combined build);
- a ragged per-head plan changes the logits, and plans that differ in one head only give different logits;
- the callback sees what attention uses: window positions, the cached keys (bitwise equal to the keys it is
  handed again after a keep-all round), query rows that reproduce the model's own attention choice;
- bad plans, bad arguments and a failing callback return the documented status and change nothing.
"""

from __future__ import annotations

import ctypes
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from evict_fixtures import (  # the shared harness of the eviction tests (tests/evict_fixtures.py)
    ARCHS, GGML_TYPE_F16, GGML_TYPE_Q8_0, Runner, _specs, drop_positions, enable, evict_lib, greedy,
    check_keep_all_is_bitwise_identical, keep_all, models, prompt,
)

pytestmark = pytest.mark.native

__all__ = ["models"]  # the fixture, re-exported for pytest


# --------------------------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("flash_attn", [True, False], ids=["fa", "nofa"])
@pytest.mark.parametrize("plan_seed", [0, 1])
def test_uniform_plan_equals_seq_rm(models, arch, flash_attn, plan_seed):
    """Dropping the same tokens from every head == removing them with llama_memory_seq_rm (f32 cache)."""
    rng = np.random.default_rng(100 + plan_seed)
    n = 48
    dropped = sorted(rng.choice(np.arange(1, n - 8), size=16 + 8 * plan_seed, replace=False).tolist())

    a = Runner(models[arch], flash_attn=flash_attn)
    b = Runner(models[arch], flash_attn=flash_attn)
    try:
        toks = prompt(n, 7, a.n_vocab)
        assert enable(a, drop_positions(dropped)) == 0
        la = a.decode(toks)
        lb = b.decode(toks)
        np.testing.assert_array_equal(la, lb)  # capture + per-head mask path do not perturb the prompt

        assert evict_lib().llama_kv_evict_seq(a.ctx, 0) == 0
        for p in dropped:
            b.seq_rm(0, p, p + 1)

        ta, ya = greedy(a, la, 32)
        tb, yb = greedy(b, lb, 32, forced=ta)
        diff = float(np.max(np.abs(ya - yb)))
        assert diff < 1e-4, f"max abs logit diff {diff}"
        assert ta == [int(np.argmax(x)) for x in [lb] + list(yb[:-1])]

        # and the eviction did change something
        c = Runner(models[arch], flash_attn=flash_attn)
        try:
            c.decode(toks)
            _, yc = greedy(c, la, 32, forced=ta)
        finally:
            c.close()
        assert float(np.max(np.abs(yc - ya))) > 1e-3
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("kv_unified", [False, True], ids=["streams", "unified"])
def test_two_sequences_each_equal_seq_rm(models, kv_unified):
    """Two sequences with different uniform plans; each equals seq_rm of its own tokens; other seq untouched."""
    n = 40
    drops = {0: list(range(2, 30, 2)), 1: list(range(5, 25))}

    def fn(seq_id, layers, uniform):
        return drop_positions(drops[seq_id])(seq_id, layers, uniform)

    a = Runner(models["qwen2"], n_seq_max=2, kv_unified=kv_unified)
    b = Runner(models["qwen2"], n_seq_max=2, kv_unified=kv_unified)
    try:
        assert enable(a, fn) == 0
        la, lb = {}, {}
        for s in (0, 1):
            toks = prompt(n, 20 + s, a.n_vocab)
            la[s] = a.decode(toks, s)
            lb[s] = b.decode(toks, s)
            np.testing.assert_array_equal(la[s], lb[s])
        lib = evict_lib()
        assert lib.llama_kv_evict_seq(a.ctx, 0) == 0
        for p in drops[0]:
            b.seq_rm(0, p, p + 1)
        # sequence 1 is not evicted yet: it must still equal the reference
        t1, y1 = greedy(a, la[1], 4, seq=1)
        _, z1 = greedy(b, lb[1], 4, seq=1, forced=t1)
        assert float(np.max(np.abs(y1 - z1))) < 1e-4
        assert lib.llama_kv_evict_seq(a.ctx, 1) == 0
        for p in drops[1]:
            b.seq_rm(1, p, p + 1)
        for s in (0, 1):
            last_a = a.decode([3], s)
            last_b = b.decode([3], s)
            ta, ya = greedy(a, last_a, 16, seq=s)
            _, yb = greedy(b, last_b, 16, seq=s, forced=ta)
            assert float(np.max(np.abs(last_a - last_b))) < 1e-4
            assert float(np.max(np.abs(ya - yb))) < 1e-4
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("flash_attn", "type_kv"),
                         [(True, GGML_TYPE_F16), (False, GGML_TYPE_F16), (True, GGML_TYPE_Q8_0)],
                         ids=["fa-f16", "nofa-f16", "fa-q8_0"])  # a quantized V cache needs flash attention
def test_keep_all_is_bitwise_identical(models, arch, flash_attn, type_kv):
    """Eviction enabled with a keep-all plan (per-head mask path active) == eviction never enabled, bitwise."""
    check_keep_all_is_bitwise_identical(models[arch], 0, flash_attn=flash_attn, type_kv=type_kv)


def test_ragged_plans_change_logits_per_head(models):
    """Dropping tokens from KV head 0 only, from KV head 1 only, or from both: three different results."""
    n = 48
    dropped = set(range(4, 40))

    def only(head):
        def fn(seq_id, layers, uniform):
            for lv in layers:
                for h in range(lv.n_head_kv):
                    keep = [i for i, p in enumerate(lv.pos[h]) if head not in (h, -1) or int(p) not in dropped]
                    lv.set_keep(h, keep)
            return 0
        return fn

    results = {}
    for head in (0, 1, -1, None):
        r = Runner(models["llama"], flash_attn=True)
        try:
            if head is not None:
                assert enable(r, only(head)) == 0
            toks = prompt(n, 9, r.n_vocab)
            r.decode(toks)
            if head is not None:
                assert evict_lib().llama_kv_evict_seq(r.ctx, 0) == 0
            results[head] = r.decode([7, 8, 9])
        finally:
            r.close()
    keys = list(results)
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            d = float(np.max(np.abs(results[keys[i]] - results[keys[j]])))
            assert d > 1e-3, f"plans {keys[i]} and {keys[j]} give the same logits ({d})"


def _write_head_swapped(path, spec, seed):
    """Write ``spec``'s model with KV heads 0 and 1 swapped (and their query heads, and attn_output's columns).

    The swapped model computes the same function; evicting from KV head 0 of the original must therefore equal
    evicting the same entries from KV head 1 of the swapped model.
    """
    from audiokv_edge.testing import tiny_models as tm

    g = spec.n_head // spec.n_head_kv
    dh = spec.head_dim
    kv_perm = list(range(spec.n_head_kv))
    kv_perm[0], kv_perm[1] = 1, 0
    q_perm = [kv_perm[i // g] * g + i % g for i in range(spec.n_head)]

    def rows(perm):
        return np.concatenate([np.arange(h * dh, (h + 1) * dh) for h in perm])

    def permuted(name, make):
        kind = name.split(".")[-2] if name.startswith("blk.") else ""
        if kind == "attn_q":
            return lambda: np.ascontiguousarray(make()[rows(q_perm)])
        if kind in ("attn_k", "attn_v"):
            return lambda: np.ascontiguousarray(make()[rows(kv_perm)])
        if kind == "attn_output":
            return lambda: np.ascontiguousarray(make()[:, rows(q_perm)])
        return make

    # the writer makes each tensor when it is written (tiny_models._TensorSink): permute what the makers return
    original = tm._TensorSink._add

    def add(self, name, shape, dtype, maker, raw_dtype=None):
        return original(self, name, shape, dtype, permuted(name, maker), raw_dtype=raw_dtype)

    tm._TensorSink._add = add
    try:
        tm.write_text_model(path, spec, seed=seed)
    finally:
        tm._TensorSink._add = original


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma3"])
@pytest.mark.parametrize("flash_attn", [True, False], ids=["fa", "nofa"])
def test_per_head_mask_follows_the_kv_head(models, tmp_path, arch, flash_attn):
    """Per-head oracle: dropping entries from KV head 0 of a model == dropping them from KV head 1 of the same
    model with heads 0 and 1 swapped (ragged plan: different entries per layer, head 1 / head 0 keep all).
    The comparison can fail: dropping from head 0 of the swapped model gives other logits."""
    swapped = tmp_path / f"{arch}-swapped.gguf"
    _write_head_swapped(swapped, _specs()[arch], seed=3)

    def drop_from(head):
        def fn(seq_id, layers, uniform):
            for li, lv in enumerate(layers):
                dropped = set(range(2 + li, 36, 2 + li))
                for h in range(lv.n_head_kv):
                    lv.set_keep(h, [i for i, p in enumerate(lv.pos[h]) if h != head or int(p) not in dropped])
            return 0
        return fn

    def run(path, head):
        r = Runner(path, flash_attn=flash_attn)
        try:
            assert enable(r, drop_from(head)) == 0
            first = r.decode(prompt(48, 8, r.n_vocab))
            assert evict_lib().llama_kv_evict_seq(r.ctx, 0) == 0
            toks, ys = greedy(r, first, 8)
            return first, toks, ys
        finally:
            r.close()

    f0, t0, y0 = run(models[arch], 0)
    f1, t1, y1 = run(swapped, 1)
    _, _, y_wrong = run(swapped, 0)
    base = float(np.max(np.abs(f0 - f1)))  # the swapped model is the same function, up to round-off
    diff = float(np.max(np.abs(y0 - y1)))
    wrong = float(np.max(np.abs(y0 - y_wrong)))
    print(f"{arch} fa={flash_attn}: before eviction {base:.2e}, after {diff:.2e}, wrong head {wrong:.2e}")
    assert t0 == t1
    # flash attention on the CPU accumulates V in f16: reordering heads already costs ~1e-3 before eviction
    tol = 1e-4 if not flash_attn else 1e-2
    assert base < tol and diff < tol, f"max abs logit diff {diff} (before eviction {base})"
    assert wrong > 10 * tol


def test_gemma3_evicts_full_attention_layers_only(models):
    """iSWA: the callback sees the full-attention layers; SWA layers keep their window; per-head masks apply."""
    seen = {}

    def fn(seq_id, layers, uniform):
        seen["layers"] = [lv.il for lv in layers]
        seen["n_kv"] = [len(p) for lv in layers for p in lv.pos]
        return drop_positions(range(2, 30))(seq_id, layers, uniform)

    a = Runner(models["gemma3"])
    b = Runner(models["gemma3"])
    try:
        assert enable(a, fn) == 0
        toks = prompt(48, 4, a.n_vocab)
        la, lb = a.decode(toks), b.decode(toks)
        np.testing.assert_array_equal(la, lb)
        assert evict_lib().llama_kv_evict_seq(a.ctx, 0) == 0
        # gemma3 tiny model: every second layer is SWA (hparams swa pattern); only the others are handed over
        assert 0 < len(seen["layers"]) < 4
        assert seen["n_kv"] == [48] * len(seen["n_kv"])
        ya = a.decode([5, 6])
        yb = b.decode([5, 6])
        assert float(np.max(np.abs(ya - yb))) > 1e-3
    finally:
        a.close()
        b.close()


def test_callback_sees_window_queries_and_keys(models):
    """Window positions, per-head positions, keys and queries handed to the callback are the model's own."""
    got = []

    def fn(seq_id, layers, uniform):
        got.append({"uniform": uniform, "layers": [
            {"il": lv.il, "q": lv.q, "q_pos": lv.q_pos, "pos": [p.copy() for p in lv.pos],
             "keys": [lv.keys(h) for h in range(lv.n_head_kv)], "scale": lv.kq_scale,
             "n_head": lv.n_head, "n_head_kv": lv.n_head_kv}
            for lv in layers]})
        if len(got) == 1:
            for lv in layers:
                for h in range(lv.n_head_kv):
                    lv.set_keep(h, np.arange(0, len(lv.pos[h]), 2 if h == 0 else 1))
        return 0

    r = Runner(models["qwen2"], flash_attn=False)
    try:
        assert enable(r, fn, n_window=8) == 0
        toks = prompt(30, 11, r.n_vocab)
        r.decode(toks[:20])
        r.decode(toks[20:])
        lib = evict_lib()
        assert lib.llama_kv_evict_seq(r.ctx, 0) == 0
        assert lib.llama_kv_evict_seq(r.ctx, 0) == 0
    finally:
        r.close()

    first, second = got
    assert first["uniform"] and not second["uniform"]
    for l1, l2 in zip(first["layers"], second["layers"]):
        assert l1["n_head"] == 4 and l1["n_head_kv"] == 2
        np.testing.assert_array_equal(l1["q_pos"], np.arange(22, 30))
        assert l1["q"].shape == (4, 8, 32) and np.all(np.isfinite(l1["q"]))
        assert abs(l1["scale"] - 1.0 / np.sqrt(32)) < 1e-7
        for h in range(2):
            np.testing.assert_array_equal(l1["pos"][h], np.arange(30))
            assert l1["keys"][h].shape == (30, 32)
        # second round: head 0 holds every second entry, head 1 everything; keys are the same rows
        np.testing.assert_array_equal(l2["pos"][0], np.arange(0, 30, 2))
        np.testing.assert_array_equal(l2["pos"][1], np.arange(30))
        np.testing.assert_array_equal(l2["keys"][0], l1["keys"][0][::2])
        np.testing.assert_array_equal(l2["keys"][1], l1["keys"][1])
        # the last query attends causally: its own key is the last one; rotated keys differ per position
        assert not np.allclose(l1["keys"][0][0], l1["keys"][0][1])


def test_errors_change_nothing(models):
    from audiokv_edge.native import llama_kv_evict as E

    lib = evict_lib()
    r = Runner(models["qwen2"])
    ref = Runner(models["qwen2"])
    try:
        assert lib.llama_kv_evict_seq(r.ctx, 0) == E.LLAMA_KV_EVICT_ERR_NOT_INIT
        stats = E.llama_kv_evict_stats()
        assert lib.llama_kv_evict_get_stats(r.ctx, 0, ctypes.byref(stats)) == E.LLAMA_KV_EVICT_ERR_NOT_INIT
        assert enable(r, keep_all, n_window=0) == E.LLAMA_KV_EVICT_ERR_ARG
        assert enable(r, keep_all, n_headroom=-1) == E.LLAMA_KV_EVICT_ERR_ARG
        assert enable(r, keep_all, mode=7) == E.LLAMA_KV_EVICT_ERR_ARG

        behaviour = {"mode": "unsorted"}

        def fn(seq_id, layers, uniform):
            m = behaviour["mode"]
            if m == "raise":
                raise RuntimeError("scoring failed")
            if m == "status":
                return 5
            if m == "decline":
                return 1
            lv = layers[-1]
            n = len(lv.pos[1])
            if m == "unsorted":
                lv.set_keep(1, [3, 2, 1])
            elif m == "range":
                lv.set_keep(1, [0, n])
            elif m == "empty":
                lv.set_keep(1, [])
            return 0

        assert enable(r, fn) == 0
        assert enable(r, fn) == E.LLAMA_KV_EVICT_ERR_STATE
        assert lib.llama_kv_evict_seq(r.ctx, 0) == E.LLAMA_KV_EVICT_ERR_SEQ  # empty sequence
        toks = prompt(20, 3, r.n_vocab)
        np.testing.assert_array_equal(r.decode(toks), ref.decode(toks))
        assert lib.llama_kv_evict_seq(r.ctx, 5) == E.LLAMA_KV_EVICT_ERR_SEQ
        assert lib.llama_kv_evict_seq(r.ctx, -1) == E.LLAMA_KV_EVICT_ERR_SEQ
        expected = {"unsorted": E.LLAMA_KV_EVICT_ERR_PLAN, "range": E.LLAMA_KV_EVICT_ERR_PLAN,
                    "empty": E.LLAMA_KV_EVICT_ERR_PLAN, "raise": E.LLAMA_KV_EVICT_ERR_CALLBACK,
                    "status": E.LLAMA_KV_EVICT_ERR_CALLBACK, "decline": E.LLAMA_KV_EVICT_DECLINED}
        for mode, status in expected.items():
            behaviour["mode"] = mode
            assert lib.llama_kv_evict_seq(r.ctx, 0) == status, mode
        assert lib.llama_kv_evict_get_stats(r.ctx, 0, ctypes.byref(stats)) == 0
        assert stats.n_entries == stats.n_entries_full == 20 * 4 * 2
        np.testing.assert_array_equal(r.decode([1, 2]), ref.decode([1, 2]))
        assert lib.llama_kv_evict_get_stats(r.ctx, 0, None) == E.LLAMA_KV_EVICT_ERR_ARG
        for status in list(expected.values()) + [0, -2, -3, -4, -5, -8]:
            assert E.status_name(lib, status).startswith("LLAMA_KV_EVICT_")
        assert E.status_name(lib, 1234) == "unknown status"
    finally:
        r.close()
        ref.close()


def test_stats_count_kept_entries(models):
    from audiokv_edge.native import llama_kv_evict as E

    plan = {}

    def fn(seq_id, layers, uniform):
        total = 0
        for li, lv in enumerate(layers):
            for h in range(lv.n_head_kv):
                keep = np.arange(li + h, len(lv.pos[h]), 1 + li + h)
                lv.set_keep(h, keep)
                total += len(keep)
        plan["total"] = total
        return 0

    r = Runner(models["llama"], type_kv=GGML_TYPE_F16)
    try:
        assert enable(r, fn) == 0
        r.decode(prompt(50, 1, r.n_vocab))
        lib = evict_lib()
        assert lib.llama_kv_evict_seq(r.ctx, 0) == 0
        st = E.llama_kv_evict_stats()
        assert lib.llama_kv_evict_get_stats(r.ctx, 0, ctypes.byref(st)) == 0
        assert st.n_tokens == 50
        assert st.n_entries == plan["total"]
        assert st.n_entries_full == 50 * 4 * 2
        row = 32 * 2 * 2  # K and V rows of one head, f16
        assert st.bytes_kept == plan["total"] * row
        assert st.bytes_used == 50 * 4 * 2 * row  # MASK mode frees nothing
    finally:
        r.close()


# --------------------------------------------------------------------------------------------------------------
# keep-all vs the unpatched libllama (separate processes: two libllama builds cannot share one process)
# --------------------------------------------------------------------------------------------------------------


def _child(model, out, evict, flash_attn):
    r = Runner(model, flash_attn=flash_attn, type_kv=GGML_TYPE_F16)
    if evict:
        assert enable(r, keep_all) == 0
    toks = prompt(60, 5, r.n_vocab)
    first = r.decode(toks)
    if evict:
        assert evict_lib().llama_kv_evict_seq(r.ctx, 0) == 0
    ta, ya = greedy(r, first, 32)
    np.savez(out, first=first, tokens=np.array(ta), logits=ya)
    r.close()


@pytest.mark.parametrize("flash_attn", [True, False], ids=["fa", "nofa"])
def test_keep_all_bitwise_equals_unpatched_libllama(models, tmp_path, flash_attn):
    from audiokv_edge.native import libs as native_libs

    patched = native_libs.lib_dir()
    unpatched = patched / "unpatched"
    assert (unpatched / native_libs.shared_library_name("llama")).is_file(), \
        "the unpatched libllama is not built (AUDIOKV_BUILD_UNPATCHED_LLAMA=OFF?)"
    results = {}
    for name, lib_dir, evict in (("patched", patched, True), ("unpatched", unpatched, False)):
        env = dict(os.environ, LLAMA_CPP_LIB_PATH=str(lib_dir))
        out = tmp_path / f"{name}.npz"
        args = json.dumps({"model": str(models["qwen2"]), "out": str(out), "evict": evict, "fa": flash_attn})
        proc = subprocess.run([sys.executable, __file__, args], env=env, capture_output=True, text=True,
                              timeout=300, cwd=pathlib.Path(__file__).resolve().parent.parent)
        assert proc.returncode == 0, proc.stderr[-3000:]
        with np.load(out) as data:
            results[name] = {k: data[k] for k in data.files}
    for key in ("first", "tokens", "logits"):
        np.testing.assert_array_equal(results["patched"][key], results["unpatched"][key])


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    a = json.loads(sys.argv[1])
    _child(a["model"], a["out"], a["evict"], a["fa"])
