"""A head profile stored in a model's GGUF drives the per-head budgets of llama.cpp's eviction callback.

Chain: profile -> convert/add_profile.py -> model copy -> llama.cpp loads it -> read_profile(model) -> the eviction
callback (llama_cpp_ext/include/llama-kv-evict.h) plans with method "audiokv" and that profile -> llama.cpp applies it.
Checked: the callback's per-head kept counts are the AudioKV budgets of the stored profile (not uniform), llama.cpp
reports that many entries, and the plan changes the next logits compared with uniform SnapKV budgets.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audiokv_edge.profile import gguf_keys as gp
from audiokv_edge.profile.head_profile import HeadProfile
from audiokv_edge.profile.side_file import save_profile_file

pytestmark = pytest.mark.native
REPO = Path(__file__).resolve().parent.parent
N_PROMPT, WINDOW, KEEP = 96, 8, 0.4


@pytest.fixture(scope="module")
def profiled_model(tmp_path_factory):
    from audiokv_edge.testing import tiny_models as tm

    d = tmp_path_factory.mktemp("evict_profile")
    spec = tm.TextModelSpec("qwen2", tm.CHATML, n_embd=128, n_head=4, n_head_kv=2, head_dim=32)
    model = d / "model.gguf"
    tm.write_text_model(model, spec, seed=5)
    shape = gp.model_shape(gp.open_gguf(model))
    scores = np.full((shape.n_layer, shape.n_head_kv), 0.01)
    scores[0, 1] = 1.0                                        # one head follows the audio strongly
    scores[-1, 0] = 0.5
    pj = d / "profile.json"
    save_profile_file(pj, HeadProfile(scores, source={"calibration": "planted for the eviction test"}))
    out = d / "model-audiokv.gguf"
    res = subprocess.run([sys.executable, str(REPO / "convert" / "add_profile.py"), str(model), str(pj), "-o",
                          str(out), "--no-progress"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return out


class _Context:
    def __init__(self, path):
        from audiokv_edge.runtime.llama import ContextParams, LlamaModel, init_llama_cpp
        from tests.evict_fixtures import GGML_TYPE_F32

        self.lc = init_llama_cpp()
        self.llm = LlamaModel(path)
        self.model = self.llm.model
        self.ctx = self.llm.new_context(ContextParams(n_ctx=256, flash_attn=None,
                                                      type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32))  # keys in NumPy
        self.n_vocab = self.llm.n_vocab
        self.keep_alive = []

    def decode(self, tokens):
        arr = (self.lc.llama_token * len(tokens))(*tokens)
        assert self.lc.llama_decode(self.ctx, self.lc.llama_batch_get_one(arr, len(tokens))) == 0
        ptr = self.lc.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def close(self):
        self.llm.close()


def _planning_callback(method, profile, record):
    """Eviction callback planning with audiokv_edge.keep_plan.plan on the data llama.cpp hands over."""
    from audiokv_edge.keep_plan import plan

    def fn(seq_id, layers, uniform):
        assert uniform                                          # first eviction: every head holds every token
        orders = [[np.argsort(lv.pos[h], kind="stable") for h in range(lv.n_head_kv)] for lv in layers]
        keys = np.stack([np.stack([lv.keys(h)[orders[i][h]] for h in range(lv.n_head_kv)])
                         for i, lv in enumerate(layers)])
        q = np.stack([lv.q for lv in layers])                   # [L, H, w, d]
        p = plan(method, q, keys, KEEP, profile, window=q.shape[2])
        record["budgets"] = p.budgets.copy()
        for i, lv in enumerate(layers):
            for h in range(lv.n_head_kv):
                lv.set_keep(h, np.sort(orders[i][h][np.asarray(p.indices[i][h])]))
        return 0

    return fn


def _evict_and_continue(path, method, profile):
    from audiokv_edge.native import llama_kv_evict as E

    lib = E.load_library()
    c = _Context(path)
    try:
        params = lib.llama_kv_evict_default_params()
        params.n_window = WINDOW
        record = {}
        cb = E.make_callback(_planning_callback(method, profile, record))
        c.keep_alive.append(cb)
        params.callback = cb
        assert lib.llama_kv_evict_init(c.ctx, params) == 0
        toks = np.random.default_rng(11).integers(5, c.n_vocab, size=N_PROMPT).tolist()
        c.decode(toks)
        rc = lib.llama_kv_evict_seq(c.ctx, 0)
        assert rc == 0, E.status_name(lib, rc)
        stats = E.llama_kv_evict_stats()
        assert lib.llama_kv_evict_get_stats(c.ctx, 0, ctypes.byref(stats)) == 0
        logits = c.decode([int(toks[-1])])
        return record["budgets"], int(stats.n_entries), logits
    finally:
        c.close()


def test_eviction_callback_uses_the_stored_budgets(profiled_model):
    from audiokv_edge.keep_plan import uniform_budget
    from audiokv_edge.methods.audiokv import audiokv_real_budgets

    stored = gp.read_profile(profiled_model)                    # what an app loading this model finds
    assert stored is not None and stored.source["calibration"].startswith("planted")
    budgets, n_entries, logits = _evict_and_continue(profiled_model, "audiokv", stored)
    c = uniform_budget(KEEP, N_PROMPT)
    real = audiokv_real_budgets(stored.scores, c, WINDOW, N_PROMPT)
    assert budgets.sum() == c * budgets.size == n_entries       # llama.cpp holds exactly the plan's entries
    assert np.all(np.abs(budgets - real) < 1.0)                 # the stored profile's budgets, integerised
    assert budgets[0, 1] == budgets.max() and budgets[0, 1] > c  # the planted head gets the most
    assert len(set(budgets.ravel().tolist())) > 1               # not uniform

    uniform, n_uniform, logits_u = _evict_and_continue(profiled_model, "snapkv", None)
    assert np.all(uniform == c) and n_uniform == n_entries
    assert float(np.max(np.abs(logits - logits_u))) > 1e-4      # the stored budgets change what the model sees
