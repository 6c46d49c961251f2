"""SSS restricted to the audio tokens (docs/semantics.md, "SSS restricted to the audio tokens"): the runs of audio
tokens are smoothed one by one, text tokens keep their raw window scores.

Layers: the NumPy reference's semantics (runs, identities, independence of the runs); input errors of plan /
plan_ragged (ValueError) and of libaudiokv (status codes, the earlier mask kept); the evictor's audio spans on a
tiny llama.cpp model (errors; the C callback's plans equal the NumPy reference with the mask built from the spans);
and a Session with ``sss_scope="audio"`` and ``stream=True`` on a tiny audio model: it hands the positions of the
audio chunks to the evictor, every eviction equals the NumPy plan with that mask, and the plans differ from
``sss_scope="all"`` (which equals the plan without a mask). C-vs-NumPy parity over every method and mask:
tests/test_c_parity.py and tests/test_ragged_c_parity.py (test_*audio_mask*).
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audiokv_edge import plan
from audiokv_edge.keep_plan import plan_ragged
from audiokv_edge.reference.scores import smooth_row
from audiokv_edge.reference.sss import audio_runs, smooth_audio_runs, snap_to_row_grid, spectral_smooth
from audiokv_edge.runtime.session import SessionConfig

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "audiokv_edge" / "data"


def _row(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((2, 3, n)) ** 4   # spiky rows of non-negative scores, any leading shape


# ---- reference semantics --------------------------------------------------------------------------------------

def test_audio_runs():
    assert audio_runs(np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 1], bool)) == [(1, 3), (4, 5), (7, 10)]
    assert audio_runs(np.ones(4, bool)) == [(0, 4)]
    assert audio_runs(np.zeros(4, bool)) == []
    assert audio_runs(np.zeros(0, bool)) == []
    assert audio_runs(np.array([2, 0, 7], np.uint8)) == [(0, 1), (2, 3)]


def test_each_run_is_smoothed_on_its_own_and_text_stays_raw():
    x = _row(60)
    mask = np.zeros(60, bool)
    mask[5:30] = True           # a long run
    mask[33] = True             # a run of one: unchanged
    mask[40:42] = True          # a run of two
    mask[50:] = True            # a run up to the end of the prefix
    out = smooth_audio_runs(x, mask, 0.5, 0.7, 0.05)
    text = ~mask
    text[33] = True
    assert np.array_equal(out[..., text], x[..., text])
    for start, stop in ((5, 30), (40, 42), (50, 60)):
        want = snap_to_row_grid(spectral_smooth(x[..., start:stop], 0.5, 0.7, 0.05))
        assert np.array_equal(out[..., start:stop], want)
    # a run does not see the scores outside it
    y = x.copy()
    y[..., :5] *= 7.0
    y[..., 30:40] += 1.0
    assert np.array_equal(smooth_audio_runs(y, mask, 0.5, 0.7, 0.05)[..., 5:30], out[..., 5:30])


@pytest.mark.parametrize("n", [0, 1, 2, 17, 64])
@pytest.mark.parametrize("params", [(0.5, 0.7, 0.05), (1.0, 0.3, 0.0), (0.25, 0.95, 0.5)])
def test_all_audio_is_sss_and_no_audio_is_raw(n, params):
    x = _row(n, n)
    alpha, gamma, taper = params
    unmasked = smooth_row(x, 5, "avg", alpha, gamma, taper)
    assert np.array_equal(smooth_row(x, 5, "avg", alpha, gamma, taper, np.ones(n, bool)), unmasked)
    assert np.array_equal(smooth_row(x, 5, "avg", alpha, gamma, taper, np.zeros(n, bool)), x)
    # pooling (alpha 0) ignores the mask
    assert np.array_equal(smooth_row(x, 5, "avg", 0.0, gamma, taper, np.zeros(n, bool)), smooth_row(x, 5, "avg"))


def test_smooth_audio_runs_rejects_bad_input():
    with pytest.raises(ValueError, match="audio mask"):
        smooth_audio_runs(_row(10), np.ones(9, bool))
    with pytest.raises(ValueError, match="NaN"):
        smooth_audio_runs(np.array([1.0, np.nan, 2.0]), np.zeros(3, bool))
    with pytest.raises(ValueError, match="alpha"):
        smooth_audio_runs(_row(10), np.ones(10, bool), alpha=2.0)


def _cache(n_tokens=120, window=16, seed=3):
    from tests.test_c_parity import make_inputs

    return make_inputs("random", 2, 4, 2, n_tokens, window, 16, seed)


def test_plan_rejects_bad_masks():
    q, k, profile = _cache()
    for bad, match in ((np.ones(119, bool), "one flag per position"), (np.ones((2, 60), bool), "one flag"),
                       (np.ones(120), "bool"), ([0.5] * 120, "bool")):
        with pytest.raises(ValueError, match=match):
            plan("audiokv", q, k, 0.4, profile, window=16, audio_mask=bad)
        with pytest.raises(ValueError, match=match):    # checked for every method, whether it reads it or not
            plan("snapkv", q, k, 0.4, window=16, audio_mask=bad, backend="c")


def test_plan_ragged_mask_needs_positions():
    from tests.test_ragged_c_parity import ragged_cache

    rng = np.random.default_rng(4)
    q, keys, positions, profile = ragged_cache(rng, 2, 4, 2, 90, 16, 8)
    mask = np.ones(90, bool)
    with pytest.raises(ValueError, match="needs positions"):
        plan_ragged("audiokv", q, keys, 0.4, profile, n_positions=90, window=16, audio_mask=mask)
    moved = [[p + 1 for p in row] for row in positions]    # the window's last position becomes 90
    with pytest.raises(ValueError, match="n_positions"):
        plan_ragged("audiokv", q, keys, 0.4, profile, n_positions=90, positions=moved, window=16, audio_mask=mask)
    with pytest.raises(ValueError, match="one flag per position"):
        plan_ragged("audiokv", q, keys, 0.4, profile, n_positions=90, positions=positions, window=16,
                    audio_mask=np.ones(91, bool))


# ---- libaudiokv --------------------------------------------------------------------------------------------

@pytest.mark.native
def test_c_mask_errors_keep_the_earlier_mask():
    from audiokv_edge.native import audiokv as C
    from audiokv_edge.native.plan import AudioKVContext, c_params
    from tests.libaudiokv_build import ensure_libaudiokv

    ensure_libaudiokv()
    q, k, profile = _cache()
    mask = np.zeros(120, bool)
    mask[10:80] = True
    want = plan("audiokv", q, k, 0.4, profile, window=16, audio_mask=mask)
    unmasked = plan("audiokv", q, k, 0.4, profile, window=16)
    assert want != unmasked
    with AudioKVContext(c_params("audiokv", {"window": 16}, 1), 2, 4, 2, 16, 120) as ctx:
        for layer in range(2):
            ctx.add_layer(layer, q[layer], k[layer])

        def plan_now():
            from audiokv_edge.reference.plan import KeepPlan

            counts, flat = ctx.plan(0.4, profile.scores)
            return KeepPlan.from_flat(counts, flat, 120, "audiokv")

        ctx.set_audio_mask(mask)
        assert plan_now() == want
        with pytest.raises(C.LibAudioKVInputError, match="AUDIOKV_ERR_SIZE"):
            ctx.set_audio_mask(np.ones(119, bool))                      # not one flag per position
        full = [[np.arange(120)] * 2] * 2
        bad = [[np.arange(120)] * 2, [np.arange(120), np.arange(120)[::-1].copy()]]
        with pytest.raises(C.LibAudioKVInputError, match="AUDIOKV_ERR_SIZE"):
            ctx.set_audio_mask(np.ones(120, bool), bad)                 # decreasing positions
        with pytest.raises(C.LibAudioKVInputError, match="AUDIOKV_ERR_SIZE"):
            ctx.set_audio_mask(np.ones(120, bool), [[np.arange(1, 121)] * 2] * 2)   # position 120 of 120
        assert plan_now() == want                                        # the earlier mask stays
        ctx.set_audio_mask(mask, full)                                   # explicit positions: the same
        assert plan_now() == want
        ctx.clear_audio_mask()
        assert plan_now() == unmasked
    lib = C.load_library()
    assert lib.audiokv_set_audio_mask(None, None, 0, None) == C.AUDIOKV_ERR_NULL
    assert lib.audiokv_clear_audio_mask(None) == C.AUDIOKV_ERR_NULL
    with AudioKVContext(c_params("audiokv", {"window": 16}, 1), 1, 2, 1, 16, 90, np.array([[60]])) as ctx:
        with pytest.raises(C.LibAudioKVInputError, match="AUDIOKV_ERR_NULL"):
            ctx.set_audio_mask(np.ones(90, bool))                       # ragged: entry e is not position e
        with pytest.raises(ValueError, match="59 positions for 60 entries"):
            ctx.set_audio_mask(np.ones(90, bool), [[np.arange(59)]])
        ctx.set_audio_mask(np.ones(90, bool), [[np.arange(30, 90)]])


# ---- the llama.cpp evictor -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    from audiokv_edge.testing import tiny_models as tm

    path = tmp_path_factory.mktemp("sss_spans") / "qwen2.gguf"
    tm.write_text_model(path, tm.TextModelSpec("qwen2", tm.CHATML, n_embd=128, n_head=4, n_head_kv=2, head_dim=32),
                        seed=3)
    return path


@pytest.mark.native
def test_evictor_spans_errors(text_model):
    from audiokv_edge.native import audiokv as C
    from audiokv_edge.native import audiokv_llama
    from audiokv_edge.runtime.llama import LlamaModel

    akv = audiokv_llama.load_adapter()
    llm = LlamaModel(text_model)
    try:
        p = akv.audiokv_default_params(C.method_id("audiokv"))
        status, err = ctypes.c_int(0), ctypes.create_string_buffer(256)
        ev = akv.audiokv_llama_evictor_new(llm.model, ctypes.byref(p), 0.4, ctypes.byref(status), err, len(err))
        assert ev, err.value

        def spans(*pairs):
            flat = [v for pair in pairs for v in pair]
            return (ctypes.c_int32 * max(1, len(flat)))(*flat), len(pairs)

        set_spans = akv.audiokv_llama_evictor_set_audio_spans
        assert set_spans(ev, 0, *spans((3, 10), (0, 2), (5, 40))) == C.AUDIOKV_OK     # any order, overlapping
        assert set_spans(ev, 0, None, 0) == C.AUDIOKV_OK                            # no audio at all
        assert set_spans(ev, 1, *spans((5, 5))) == C.AUDIOKV_ERR_SIZE               # empty span
        assert set_spans(ev, 1, *spans((-1, 5))) == C.AUDIOKV_ERR_SIZE
        assert set_spans(ev, 1, *spans((9, 4))) == C.AUDIOKV_ERR_SIZE
        assert set_spans(ev, -1, *spans((0, 4))) == C.AUDIOKV_ERR_SIZE
        assert set_spans(ev, 1, None, 2) == C.AUDIOKV_ERR_NULL
        assert set_spans(None, 0, *spans((0, 4))) == C.AUDIOKV_ERR_NULL
        assert set_spans(ev, 1, spans((0, 4))[0], -1) == C.AUDIOKV_ERR_SIZE
        assert akv.audiokv_llama_evictor_clear_audio_spans(ev, 0) == C.AUDIOKV_OK
        assert akv.audiokv_llama_evictor_clear_audio_spans(ev, 7) == C.AUDIOKV_OK  # none set
        assert akv.audiokv_llama_evictor_clear_audio_spans(None, 0) == C.AUDIOKV_ERR_NULL
        akv.audiokv_llama_evictor_free(ev)
    finally:
        llm.close()


def _mask_of(spans, n_positions):
    mask = np.zeros(n_positions, bool)
    for start, stop in spans:
        mask[start:min(stop, n_positions)] = True
    return mask


def _reference(rec, method, keep, mask):
    """The NumPy plan of one recorded eviction (docs/semantics.md; dense before the first eviction)."""
    q = rec["q"]
    n_positions = int(rec["q_pos"][-1]) + 1
    if rec["uniform"] and len(rec["keys"][0][0]) == n_positions:
        keys = np.stack([np.stack(k) for k in rec["keys"]])
        return plan(method, q, keys, keep, None, window=q.shape[2], audio_mask=mask)
    return plan_ragged(method, q, rec["keys"], keep, None, n_positions=n_positions, positions=rec["pos"],
                       window=q.shape[2], audio_mask=mask)


def _kept_equal(rec, ref) -> bool:
    return all(np.array_equal(kept, np.asarray(ref.indices[i][h])) for i, row in enumerate(rec["kept"])
               for h, kept in enumerate(row))


@pytest.mark.native
def test_evictor_spans_drive_the_c_plan(text_model):
    """Spans set on the evictor (a text prefix, audio, text, audio): three evictions (dense, then ragged) plan
    exactly like the NumPy reference with the mask of those spans, and differ from the plans without spans."""
    from tests.evict_fixtures import GGML_TYPE_F16
    from tests.test_evict_callback_c import _Context

    spans = [(6, 70), (78, 150), (168, 200)]          # the last span only reached by the third eviction
    flat = (ctypes.c_int32 * 6)(*[v for s in spans for v in s])
    runs = {}
    for scope in ("all", "audio"):
        c = _Context(text_model, "audiokv", GGML_TYPE_F16, False)
        try:
            if scope == "audio":
                assert c.akv.audiokv_llama_evictor_set_audio_spans(c.evictor, 0, flat, len(spans)) == 0
            rng = np.random.default_rng(11)
            for n in (160, 40, 40):
                c.decode(rng.integers(5, c.n_vocab, size=n).tolist())
                c.evict()
            runs[scope] = c.records
        finally:
            c.close()
    for rec_all, rec_audio in zip(runs["all"], runs["audio"]):
        assert rec_all.get("error") is None and rec_audio.get("error") is None
        n_positions = int(rec_audio["q_pos"][-1]) + 1
        assert _kept_equal(rec_all, _reference(rec_all, "audiokv", 0.4, None))
        assert _kept_equal(rec_audio, _reference(rec_audio, "audiokv", 0.4, _mask_of(spans, n_positions)))
    assert not _kept_equal(runs["audio"][0], _reference(runs["all"][0], "audiokv", 0.4, None))


# ---- the Session -------------------------------------------------------------------------------------------


def record_evictions() -> list[dict]:
    """In a probe process: wrap the libaudiokv callback the Session installs so that each eviction's inputs (window
    queries, keys, positions) and the entries it kept are appended to the returned list."""
    from audiokv_edge.native import audiokv_llama
    from audiokv_edge.native import llama_kv_evict as E

    records, real, keep_alive = [], audiokv_llama.c_callback, []

    def recording(akv):
        c_fn = real(akv)

        def wrapper(info_p, user_data):
            info = info_p.contents
            views = E.layer_views(info)
            rec = {"uniform": bool(info.uniform),
                   "q": np.stack([lv.q * np.float32(lv.kq_scale * np.sqrt(lv.head_dim)) for lv in views]),
                   "q_pos": views[0].q_pos.copy(),
                   "keys": [[lv.keys(h) for h in range(lv.n_head_kv)] for lv in views],
                   "pos": [[lv.pos[h].copy() for h in range(lv.n_head_kv)] for lv in views]}
            rc = int(c_fn(info_p, user_data))
            rec["kept"] = [[np.ctypeslib.as_array(lv._layer.heads[h].keep, shape=(lv._layer.heads[h].n_keep,)).copy()
                            for h in range(lv.n_head_kv)] for lv in views]
            records.append(rec)
            return rc

        cb = E.llama_kv_evict_callback(wrapper)
        keep_alive.append(cb)
        return cb

    audiokv_llama.c_callback = recording
    return records


PROBE_SESSION = r"""
import json, sys
import numpy as np, soundfile as sf
from audiokv_edge.runtime.session import Session, SessionConfig
from tests.test_sss_audio_spans import record_evictions
model, jfk, long_path, scope = sys.argv[1:5]
speech, rate = sf.read(jfk, dtype="float32")
sf.write(long_path, np.tile(speech, 4)[: 40 * rate], rate)      # 40 s: two audio chunks (30 s + 10 s)
records = record_evictions()
cfg = SessionConfig(method="audiokv", keep=0.4, stream=True, max_tokens=2, threads=2, ctx=1024, sss_scope=scope)
with Session(model, config=cfg) as s:
    a = s.answer(long_path)
    spans = s.last_audio_spans
    settings = s.evict_settings
from tests.test_sss_audio_spans import _kept_equal, _mask_of, _reference
out = {"spans": spans, "settings": settings, "audio_tokens": a.stats.audio_tokens, "n_evictions": len(records),
       "n_positions": [int(r["q_pos"][-1]) + 1 for r in records],
       "equal_masked": [_kept_equal(r, _reference(r, "audiokv", 0.4, _mask_of(spans, int(r["q_pos"][-1]) + 1)))
                        for r in records],
       "equal_unmasked": [_kept_equal(r, _reference(r, "audiokv", 0.4, None)) for r in records]}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def session_runs(tmp_path_factory):
    from audiokv_edge.testing.tiny_models import write_tiny_pair

    d = tmp_path_factory.mktemp("sss_session")
    model, _ = write_tiny_pair(d, "qwen2-qwen2a")
    out = {}
    for scope in ("all", "audio"):
        proc = subprocess.run([sys.executable, "-c", PROBE_SESSION, str(model), str(DATA / "jfk.wav"),
                               str(d / "speech_40s.flac"), scope], capture_output=True, text=True, cwd=REPO,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[scope] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


@pytest.mark.native
def test_session_hands_the_audio_chunks_to_the_evictor(session_runs):
    """--stream with sss_scope "audio": the audio chunks' positions (two spans after the chat template's text) go to
    the evictor, and each of the three evictions equals the NumPy plan with that mask; "all" equals the plan
    without a mask; the two scopes keep different entries."""
    run_all, run_audio = session_runs["all"], session_runs["audio"]
    spans = run_audio["spans"]
    assert spans == run_all["spans"] and len(spans) == 2
    assert spans[0][0] > 0 and spans[1][0] == spans[0][1]                  # text first; chunks back to back
    assert sum(stop - start for start, stop in spans) == run_audio["audio_tokens"]
    assert run_audio["settings"]["sss_scope"] == "audio" and run_all["settings"]["sss_scope"] == "all"
    assert run_audio["n_evictions"] == run_all["n_evictions"] == 3         # after chunk 1, chunk 2, the question
    assert run_audio["n_positions"] == run_all["n_positions"]
    assert run_audio["equal_masked"] == [True] * 3
    assert run_all["equal_unmasked"] == [True] * 3
    assert run_audio["equal_unmasked"] != [True] * 3                       # the text tokens' raw scores matter


@pytest.mark.parametrize("bad", [dict(sss_scope="text"), dict(sss_scope="audio", method="snapkv"),
                                 dict(sss_scope="audio", method="full")])
def test_config_rejects_bad_scopes(bad):
    with pytest.raises(ValueError, match="sss_scope"):
        SessionConfig(**bad)
