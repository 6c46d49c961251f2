"""Shared harness of the per-head eviction tests (tests/test_evict_mask.py, tests/test_evict_compact.py): tiny
random-weight models of real architectures written once per test module, one llama_context per :class:`Runner`
driven through the llama_cpp low-level bindings, the eviction API bound by audiokv_edge.native.llama_kv_evict, plan
functions and greedy decoding of one or two sequences; and the start of a child process that initialises eviction in
both modes (:data:`INIT_PROBE_PREAMBLE`, :func:`run_python`: tests/test_evict_families.py,
tests/test_lfm2_hybrid.py). :func:`child_env` and :func:`run_python` start the child Python processes of the
tests that run the package in one (this checkout first on PYTHONPATH)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pytest

from gguf import GGMLQuantizationType

GGML_TYPE_F32 = int(GGMLQuantizationType.F32)
GGML_TYPE_F16 = int(GGMLQuantizationType.F16)
GGML_TYPE_Q8_0 = int(GGMLQuantizationType.Q8_0)

REPO = Path(__file__).resolve().parent.parent

def _specs():
    from audiokv_edge.testing import tiny_models as tm

    return {
        "llama": tm.TextModelSpec("llama", tm.LLAMA3, n_embd=128, n_head=4, n_head_kv=2, head_dim=32),
        "qwen2": tm.TextModelSpec("qwen2", tm.CHATML, n_embd=128, n_head=4, n_head_kv=2, head_dim=32),
        # head_dim 64: a q8_0 K cache is Hadamard-rotated (attn_rot_k), and so are the captured queries
        "qwen3": tm.TextModelSpec("qwen3", tm.CHATML, n_head=4, n_head_kv=2, head_dim=64),
        "gemma3": tm.TextModelSpec("gemma3", tm.GEMMA, n_head=4, n_head_kv=2, head_dim=32, sliding_window=16),
    }


ARCHS = ["llama", "qwen2", "qwen3", "gemma3"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from audiokv_edge.testing import tiny_models as tm

    directory = tmp_path_factory.mktemp("evict_models")
    paths = {}
    for name, spec in _specs().items():
        paths[name] = directory / f"{name}.gguf"
        tm.write_text_model(paths[name], spec, seed=3)
    return paths


_LOG_CB = None


def _llama():
    from audiokv_edge.runtime.llama import init_llama_cpp

    llama = init_llama_cpp()
    global _LOG_CB
    if _LOG_CB is None:
        _LOG_CB = llama.llama_log_callback(lambda level, text, data: None)
        llama.llama_log_set(_LOG_CB, ctypes.c_void_p())
    return llama


class Runner:
    """One model + context (audiokv_edge.runtime.llama.LlamaModel); decode tokens, read logits, edit memory."""

    def __init__(self, path, *, n_ctx=256, n_seq_max=1, flash_attn=True, type_kv=GGML_TYPE_F32, kv_unified=False):
        from audiokv_edge.runtime.llama import ContextParams, LlamaModel

        self.llama = llama = _llama()
        self.llm = LlamaModel(path)
        self.model = self.llm.model
        self.ctx = self.llm.new_context(ContextParams(n_ctx=n_ctx, n_seq_max=n_seq_max, flash_attn=flash_attn,
                                                      type_k=type_kv, type_v=type_kv, kv_unified=kv_unified))
        self.n_vocab = self.llm.n_vocab
        self.batch = llama.llama_batch_init(n_ctx, 0, n_seq_max)
        self.n_past = {}
        self.callbacks = []

    def decode(self, tokens, seq=0):
        """Append ``tokens`` to sequence ``seq``; returns float32 logits [n_vocab] of the last token (a copy)."""
        llama, b = self.llama, self.batch
        p0 = self.n_past.get(seq, 0)
        b.n_tokens = len(tokens)
        for i, t in enumerate(tokens):
            b.token[i] = int(t)
            b.pos[i] = p0 + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = i == len(tokens) - 1
        rc = llama.llama_decode(self.ctx, b)
        assert rc == 0, f"llama_decode returned {rc}"
        self.n_past[seq] = p0 + len(tokens)
        ptr = llama.llama_get_logits_ith(self.ctx, len(tokens) - 1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def seq_rm(self, seq, p0, p1):
        mem = self.llama.llama_get_memory(self.ctx)
        assert self.llama.llama_memory_seq_rm(mem, seq, p0, p1)

    def close(self):
        self.llama.llama_batch_free(self.batch)
        self.llm.close()


def evict_lib():
    from audiokv_edge.native import llama_kv_evict

    return llama_kv_evict.load_library()


def enable(runner, fn, n_window=8, mode=0, n_headroom=None):
    """Enable eviction on ``runner`` with the Python plan function ``fn(seq_id, layers, uniform)``."""
    from audiokv_edge.native import llama_kv_evict as E

    lib = evict_lib()
    params = lib.llama_kv_evict_default_params()
    assert params.n_window == 32 and params.mode == E.LLAMA_KV_EVICT_MODE_COMPACT and params.n_headroom == 256
    params.n_window = n_window
    params.mode = mode
    if n_headroom is not None:
        params.n_headroom = n_headroom
    callback = E.make_callback(fn)
    runner.callbacks.append(callback)  # the context may call any callback it accepted: keep them all alive
    params.callback = callback
    return lib.llama_kv_evict_init(runner.ctx, params)


def drop_positions(dropped):
    """Plan function dropping the entries at positions ``dropped`` from every (layer, KV head)."""
    dropped = set(int(p) for p in dropped)

    def fn(seq_id, layers, uniform):
        for lv in layers:
            for h in range(lv.n_head_kv):
                lv.set_keep(h, [i for i, p in enumerate(lv.pos[h]) if int(p) not in dropped])
        return 0

    return fn


def prompt(n, seed, n_vocab, lo=5):
    return np.random.default_rng(seed).integers(lo, n_vocab, size=n).tolist()


def greedy(runner, first_logits, steps, seq=0, forced=None):
    """Greedy continuation; returns (tokens, logits [steps, n_vocab]). ``forced`` replays given tokens."""
    toks, out = [], []
    logits = first_logits
    for i in range(steps):
        t = int(np.argmax(logits)) if forced is None else int(forced[i])
        toks.append(t)
        logits = runner.decode([t], seq)
        out.append(logits)
    return toks, np.stack(out)


def keep_all(seq_id, layers, uniform):
    return 0  # the plan is preset to "keep every entry"


def check_keep_all_is_bitwise_identical(path, mode, *, flash_attn, type_kv):
    """Eviction enabled in ``mode`` with a keep-all plan, evicting once after a 60-token prompt, then 32 greedy
    tokens == eviction never enabled, bitwise (logits and tokens)."""
    a = Runner(path, flash_attn=flash_attn, type_kv=type_kv)
    b = Runner(path, flash_attn=flash_attn, type_kv=type_kv)
    try:
        assert enable(a, keep_all, mode=mode) == 0
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


def decode_multi(runner, parts, interleave=False):
    """One llama_decode holding the tokens of several sequences, ``parts = {seq: tokens}`` (grouped per sequence, or
    interleaved token by token). Returns {seq: float32 logits [n_vocab] of its last token}."""
    llama, b = runner.llama, runner.batch
    order = []
    if interleave:
        for i in range(max(len(t) for t in parts.values())):
            order += [(s, i) for s, toks in parts.items() if i < len(toks)]
    else:
        for s, toks in parts.items():
            order += [(s, i) for i in range(len(toks))]
    b.n_tokens = len(order)
    rows = {}
    for j, (s, i) in enumerate(order):
        b.token[j] = int(parts[s][i])
        b.pos[j] = runner.n_past.get(s, 0) + i
        b.n_seq_id[j] = 1
        b.seq_id[j][0] = s
        b.logits[j] = i == len(parts[s]) - 1
        if b.logits[j]:
            rows[s] = j
    rc = llama.llama_decode(runner.ctx, b)
    assert rc == 0, f"llama_decode returned {rc}"
    for s, toks in parts.items():
        runner.n_past[s] = runner.n_past.get(s, 0) + len(toks)
    return {s: np.ctypeslib.as_array(llama.llama_get_logits_ith(runner.ctx, j), shape=(runner.n_vocab,)).copy()
            for s, j in rows.items()}


def greedy_both(runners, first, steps, lead=None, extra=(), interleave=True):
    """Greedy continuation of sequences 0 and 1 decoded together in every runner: each llama_decode holds one token
    of each sequence (the first one: also the ``extra`` tokens). The tokens follow ``lead``'s argmax (the first
    runner by default). ``first``: {runner index: {seq: logits}}. Returns ({seq: tokens}, {runner index: {seq:
    logits [steps, n_vocab]}})."""
    lead = 0 if lead is None else lead
    toks = {0: [], 1: []}
    out = {r: {0: [], 1: []} for r in range(len(runners))}
    last = first
    for step in range(steps):
        parts = {}
        for s in (0, 1):
            t = int(np.argmax(last[lead][s]))
            toks[s].append(t)
            parts[s] = [t] + (list(extra) if step == 0 else [])
        last = {r: decode_multi(runner, parts, interleave=interleave) for r, runner in enumerate(runners)}
        for r in out:
            for s in (0, 1):
                out[r][s].append(last[r][s])
    return toks, {r: {s: np.stack(v) for s, v in d.items()} for r, d in out.items()}


#: Start of a child script (``python -c``, model path in ``sys.argv[1]``): llama.cpp's log lines go to ``logged``,
#: ``llm`` is the model, ``lib`` the eviction API, ``out`` the dict to print as JSON; ``init_each_mode(callback)``
#: yields ``(mode name, fresh context, llama_kv_evict_init status)`` for MASK then COMPACT (``logged`` emptied before
#: each init), ``decode(ctx, tokens)`` decodes a list of tokens, ``errors()`` is the logged error lines.
#: A child process, so that its log callback cannot leak into other tests.
INIT_PROBE_PREAMBLE = r"""
import ctypes, json, sys
from audiokv_edge.native import llama_kv_evict as E
from audiokv_edge.runtime.llama import ContextParams, LlamaModel, init_llama_cpp
llama = init_llama_cpp()
logged = []
log_cb = llama.llama_log_callback(lambda level, text, data: logged.append((int(level), (text or b"").decode())))
llama.llama_log_set(log_cb, ctypes.c_void_p())
llm = LlamaModel(sys.argv[1])
lib = E.load_library()
out = {}
def init_each_mode(callback):
    for name, mode in (("mask", E.LLAMA_KV_EVICT_MODE_MASK), ("compact", E.LLAMA_KV_EVICT_MODE_COMPACT)):
        ctx = llm.new_context(ContextParams(n_ctx=128, flash_attn=None))
        params = lib.llama_kv_evict_default_params()
        params.mode = mode
        params.callback = callback
        del logged[:]
        yield name, ctx, lib.llama_kv_evict_init(ctx, params)
def decode(ctx, tokens):
    batch = (llama.llama_token * len(tokens))(*tokens)
    return llama.llama_decode(ctx, llama.llama_batch_get_one(batch, len(tokens)))
def errors():
    return [t for lv, t in logged if lv == 4]
"""


def child_env(base: Mapping[str, str] | None = None, *, drop: Iterable[str] = (), **extra: str) -> dict[str, str]:
    """The environment of a child Python process: ``base`` (this process's environment by default) without the
    variables named in ``drop``, this checkout first on PYTHONPATH, then ``extra`` set."""
    drop = set(drop)
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in drop}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_python(*args: str, timeout: int | None = 300, cwd: str | Path = REPO,
               env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python *args`` in a child process (at the repository root unless ``cwd``), output captured as text, in
    ``env`` (:func:`child_env` by default: this checkout first on PYTHONPATH)."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          env=child_env() if env is None else env, timeout=timeout)
