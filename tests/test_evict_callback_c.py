"""libaudiokv's llama.cpp eviction callback (libaudiokv/include/audiokv_llama.h) plans exactly like the NumPy reference.

llama.cpp (COMPACT mode) hands the callback the captured window queries and every head's keys; a Python wrapper
records those inputs, calls the C callback with them and records the plan it wrote. The NumPy reference then plans
the same inputs (``plan`` for the first, uniform eviction; ``plan_ragged`` for the second and third, ragged ones) and
the kept entries must be identical for every head: all seven methods, f16 and q8_0 keys (read through ggml's
to_float), a plain and an iSWA model (Gemma 3: only its full-attention layers come in, kq_scale = 1), with and without
a head profile stored in the GGUF. Also: the stored (skewed) profile gives skewed budgets, a model without one
gives uniform budgets and exactly one warning, and a profile of the wrong shape is a clear error.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest

from audiokv_edge.profile import gguf_keys as gp
from audiokv_edge.methods import METHODS
from tests.evict_fixtures import GGML_TYPE_F16, GGML_TYPE_Q8_0
from tests.gguf_testfiles import patch_u32
from audiokv_edge.profile.head_profile import HeadProfile

pytestmark = pytest.mark.native
REPO = Path(__file__).resolve().parent.parent
WINDOW, KEEP, N_PROMPT, N_MORE = 16, 0.4, 160, (40, 40)


def _skewed(n_layer: int, n_head_kv: int) -> HeadProfile:
    scores = np.full((n_layer, n_head_kv), 0.02)
    scores[0, -1] = 1.0
    scores[-1, 0] = 0.4
    scores[n_layer // 2, 0] = 0.1
    return HeadProfile(scores, source={"calibration": "skewed profile planted for the callback test"})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> model path: qwen2 (2 KV heads, no profile), qwen3 (head_dim 64), each also with a skewed stored
    profile, gemma3 iSWA (2 KV
    heads, sliding and full-attention layers alternating) with a skewed stored profile."""
    from audiokv_edge.testing import tiny_models as tm

    d = tmp_path_factory.mktemp("evict_c")
    specs = {
        "qwen2": tm.TextModelSpec("qwen2", tm.CHATML, n_embd=128, n_head=4, n_head_kv=2, head_dim=32),
        # head_dim 64: llama.cpp Hadamard-rotates the queries and a q8_0 K cache (attn_rot_k)
        "qwen3": tm.TextModelSpec("qwen3", tm.CHATML, n_embd=128, n_head=4, n_head_kv=2, head_dim=64),
        "gemma3": tm.TextModelSpec("gemma3", tm.GEMMA, n_layer=6, n_head=4, n_head_kv=2, head_dim=32,
                                   sliding_window=32),
    }
    out = {}
    for name, spec in specs.items():
        path = d / f"{name}.gguf"
        tm.write_text_model(path, spec, seed=3)
        out[name] = path
        shape = gp.model_shape(gp.open_gguf(path))
        profiled = d / f"{name}-profiled.gguf"
        gp.write_profile(path, _skewed(shape.n_layer, shape.n_head_kv), profiled)
        out[f"{name}-profiled"] = profiled
    return out


class _Context:
    """A model and a one-sequence COMPACT context whose eviction goes through a recording wrapper of the C callback."""

    def __init__(self, path, method: str, type_k: int, flash: bool, keep: float = KEEP):
        from audiokv_edge.native import audiokv
        from audiokv_edge.native import audiokv_llama
        from audiokv_edge.native import llama_kv_evict as E
        from audiokv_edge.runtime.llama import ContextParams, LlamaModel, init_llama_cpp

        self.E = E
        self.lc = init_llama_cpp()
        self.lib = E.load_library()
        self.akv = audiokv_llama.load_adapter()
        self.llm = LlamaModel(path)
        self.model = self.llm.model
        self.ctx = self.llm.new_context(ContextParams(n_ctx=512, flash_attn=flash, type_k=type_k,
                                                      type_v=GGML_TYPE_F16))
        self.n_vocab = self.llm.n_vocab
        params = self.akv.audiokv_default_params(audiokv.method_id(method))
        params.window = WINDOW
        params.n_threads = 1
        status, err = ctypes.c_int(0), ctypes.create_string_buffer(256)
        self.evictor = self.akv.audiokv_llama_evictor_new(self.model, ctypes.byref(params), keep,
                                                          ctypes.byref(status), err, len(err))
        assert self.evictor, err.value
        self.c_callback = audiokv_llama.c_callback(self.akv)
        self.records: list[dict] = []
        self.wrapper = E.llama_kv_evict_callback(self._record_and_plan)
        ep = self.lib.llama_kv_evict_default_params()
        ep.n_window = WINDOW
        ep.mode = E.LLAMA_KV_EVICT_MODE_COMPACT
        ep.n_headroom = 8
        ep.callback = self.wrapper
        assert self.lib.llama_kv_evict_init(self.ctx, ep) == 0

    def _keys(self, lv, h: int) -> np.ndarray:
        if lv.type_k == GGML_TYPE_F16:
            return lv.keys(h)
        head = lv._layer.heads[h]
        out = np.empty((head.n_kv, lv.head_dim), np.float32)
        for j in range(head.n_kv):      # ggml's own dequantisation, as the C callback reads them
            self.akv.audiokv_ggml_to_float(head.k + j * head.nb_entry,
                                           out[j].ctypes.data_as(ctypes.POINTER(ctypes.c_float)), lv.head_dim,
                                           lv.type_k)
        return out

    def _record_and_plan(self, info_p, _user_data):
        try:
            info = info_p.contents
            views = self.E.layer_views(info)
            rec = {
                "uniform": bool(info.uniform),
                "il": [lv.il for lv in views],
                "kq_scale": [lv.kq_scale for lv in views],
                "q": np.stack([lv.q * np.float32(lv.kq_scale * np.sqrt(lv.head_dim)) for lv in views]),
                "q_pos": views[0].q_pos.copy(),
                "keys": [[self._keys(lv, h) for h in range(lv.n_head_kv)] for lv in views],
                "pos": [[lv.pos[h].copy() for h in range(lv.n_head_kv)] for lv in views],
            }
            rc = int(self.c_callback(info_p, self.evictor))
            rec["rc"] = rc
            rec["kept"] = [[np.ctypeslib.as_array(lv._layer.heads[h].keep, shape=(lv._layer.heads[h].n_keep,)).copy()
                            for h in range(lv.n_head_kv)] for lv in views]
            self.records.append(rec)
            return rc
        except Exception:  # noqa: BLE001 - reported through the records, never across C
            self.records.append({"error": traceback.format_exc()})
            return -1

    def decode(self, tokens) -> None:
        arr = (self.lc.llama_token * len(tokens))(*tokens)
        assert self.lc.llama_decode(self.ctx, self.lc.llama_batch_get_one(arr, len(tokens))) == 0

    def evict(self) -> None:
        rc = self.lib.llama_kv_evict_seq(self.ctx, 0)
        assert rc == 0, (self.E.status_name(self.lib, rc), self.records[-1:],
                         self.akv.audiokv_llama_evictor_last_error(self.evictor))

    def close(self) -> None:
        self.llm.close()
        self.akv.audiokv_llama_evictor_free(self.evictor)


def _run(path, method, type_k=GGML_TYPE_F16, flash=False, keep=KEEP) -> list[dict]:
    c = _Context(path, method, type_k, flash, keep)
    try:
        rng = np.random.default_rng(7)
        c.decode(rng.integers(5, c.n_vocab, size=N_PROMPT).tolist())
        c.evict()
        for n in N_MORE:                 # new tokens go to every head; the next eviction re-plans a ragged cache
            c.decode(rng.integers(5, c.n_vocab, size=n).tolist())
            c.evict()
        assert c.akv.audiokv_llama_evictor_n_plans(c.evictor) == 1 + len(N_MORE)
        return c.records
    finally:
        c.close()


def _numpy_plan(rec: dict, method: str, keep: float, profile: HeadProfile | None):
    from audiokv_edge.keep_plan import plan, plan_ragged

    if profile is not None and profile.n_layer != len(rec["il"]):     # iSWA: the full-attention layers' rows
        profile = HeadProfile(profile.scores[rec["il"]], profile.source)
    q = rec["q"]
    n_positions = int(rec["q_pos"][-1]) + 1
    if rec["uniform"] and len(rec["keys"][0][0]) == n_positions:      # nothing evicted yet: the dense contract
        return plan(method, q, np.stack([np.stack(k) for k in rec["keys"]]), keep, profile, window=q.shape[2])
    return plan_ragged(method, q, rec["keys"], keep, profile, n_positions=n_positions, positions=rec["pos"],
                       window=q.shape[2])


def _assert_same_plans(records, method, keep, profile):
    assert [r.get("error") for r in records] == [None] * len(records)
    # full and streamingllm plan the same entries for every head: the cache stays uniform (but evicted)
    assert [r["uniform"] for r in records] == [True] + [method in ("full", "streamingllm")] * len(N_MORE)
    for k, rec in enumerate(records):
        assert rec["rc"] == 0
        ref = _numpy_plan(rec, method, keep, profile)
        for i, row in enumerate(rec["kept"]):
            for h, kept in enumerate(row):
                np.testing.assert_array_equal(kept, np.asarray(ref.indices[i][h]),
                                              err_msg=f"eviction {k}, layer {rec['il'][i]}, KV head {h}")


CASES = {  # model, K type, flash attention
    "qwen2-f16": ("qwen2", GGML_TYPE_F16, False),
    "qwen2-q8_0": ("qwen2", GGML_TYPE_Q8_0, False),
    "qwen2-profiled-f16-fa": ("qwen2-profiled", GGML_TYPE_F16, True),
    "qwen3-rotated-q8_0": ("qwen3", GGML_TYPE_Q8_0, False),
    "gemma3-profiled-q8_0-fa": ("gemma3-profiled", GGML_TYPE_Q8_0, True),
}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_c_callback_equals_numpy_plan(models, case, method):
    """Three evictions (uniform, then two ragged): the C callback keeps exactly the NumPy reference's entries."""
    name, type_k, flash = CASES[case]
    path = models[name]
    records = _run(path, method, type_k, flash=flash)
    _assert_same_plans(records, method, KEEP, gp.read_profile(path))
    if name.startswith("gemma3"):
        il = records[0]["il"]                       # the full-attention layers only (the tiny model alternates)
        assert il == [1, 3, 5] and records[0]["kq_scale"] == [1.0] * len(il)
    kept_total = sum(len(k) for row in records[-1]["kept"] for k in row)
    n_positions = int(records[-1]["q_pos"][-1]) + 1
    if method != "full":                 # the ragged plan keeps about keep x the positions seen in every head
        heads = len(records[-1]["kept"]) * len(records[-1]["kept"][0])
        assert abs(kept_total / (heads * n_positions) - KEEP) <= 0.05 * KEEP


def test_stored_skewed_profile_drives_the_budgets(models):
    """The GGUF's skewed profile gives skewed per-head budgets (the planted head keeps the most), equal to the
    NumPy plan with that profile; the same model without a profile gets uniform budgets."""
    from audiokv_edge.keep_plan import uniform_budget

    profiled = _run(models["qwen2-profiled"], "audiokv")
    stored = gp.read_profile(models["qwen2-profiled"])
    _assert_same_plans(profiled, "audiokv", KEEP, stored)
    budgets = np.array([[len(k) for k in row] for row in profiled[0]["kept"]])
    c = uniform_budget(KEEP, N_PROMPT)
    assert budgets.sum() == c * budgets.size and budgets[0, -1] == budgets.max() > c
    assert len(set(budgets.ravel().tolist())) > 2
    plain = _run(models["qwen2"], "audiokv")
    assert np.all(np.array([[len(k) for k in row] for row in plain[0]["kept"]]) == c)


PROBE_WARNINGS = r"""
import ctypes, json, logging, sys
from audiokv_edge.native import audiokv
from audiokv_edge.native import audiokv_llama
from audiokv_edge.runtime.llama import LlamaModel
lines = []
class H(logging.Handler):
    def emit(self, record):
        lines.append((record.levelname, record.getMessage()))
logging.getLogger("audiokv_edge").addHandler(H())
logging.getLogger("audiokv_edge").setLevel(logging.DEBUG)
akv = audiokv_llama.load_adapter()
out = {"status": [], "errors": [], "has_profile": []}
for path in sys.argv[1:]:
    for method in ("audiokv", "audiokv", "snapkv"):
        llm = LlamaModel(path)
        model = llm.model
        p = akv.audiokv_default_params(audiokv.method_id(method))
        st, err = ctypes.c_int(0), ctypes.create_string_buffer(256)
        ev = akv.audiokv_llama_evictor_new(model, ctypes.byref(p), 0.4, ctypes.byref(st), err, len(err))
        out["status"].append(st.value)
        out["errors"].append(err.value.decode())
        out["has_profile"].append(akv.audiokv_llama_evictor_has_profile(ev) if ev else None)
        akv.audiokv_llama_evictor_free(ev)
        llm.close()
out["warnings"] = [m for level, m in lines if level == "WARNING"]
print(json.dumps(out))
"""



def _probe(*paths) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE_WARNINGS, *map(str, paths)], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_no_profile_gives_exactly_one_warning(models):
    """Two audiokv evictors on a model without a profile (and one snapkv) in one process: uniform budgets, ONE
    warning; a profiled model: none."""
    out = _probe(models["qwen2"], models["qwen2"])
    assert out["status"] == [0] * 6 and out["has_profile"] == [0] * 6
    assert len(out["warnings"]) == 1 and "no head profile" in out["warnings"][0], out["warnings"]
    out = _probe(models["qwen2-profiled"])
    assert out["warnings"] == [] and out["has_profile"] == [1, 1, 0]


def test_profile_of_the_wrong_shape_is_a_clear_error(models, tmp_path):
    bad = tmp_path / "wrong-shape.gguf"
    bad.write_bytes(models["qwen2-profiled"].read_bytes())
    patch_u32(bad, gp.KEY_N_LAYER, 7)
    out = _probe(bad)
    profile_error = -4  # AUDIOKV_ERR_PROFILE
    assert out["status"] == [profile_error, profile_error, 0]   # snapkv does not use the profile
    assert "head profile" in out["errors"][0] and "layers" in out["errors"][0], out["errors"][0]
