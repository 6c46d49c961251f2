"""convert/profile_heads.py: token-to-word mapping, projector geometry, CLI errors, and the end-to-end run on a tiny
model pair: profile -> GGUF -> read back -> AudioKV keep plans use the stored budgets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from audiokv_edge.profile import gguf_keys as gp
from audiokv_edge.profiling.attention_capture import CaptureError, projector_type, token_words
from audiokv_edge.testing.tiny_models import write_tiny_pair
from tests.profile_fixtures import calibration_set_fixture, run_profile_heads


def test_token_words_bpe_and_punctuation():
    pieces = ["The", " bir", "ch", " canoe", ".", " Four", " ", "hours"]
    words = ["The", "birch", "canoe.", "Four", "hours"]
    np.testing.assert_array_equal(token_words(pieces, words), [0, 1, 1, 2, 2, 3, 4, 4])


def test_token_words_refuses_other_text():
    with pytest.raises(CaptureError, match="do not spell"):
        token_words(["Hello", " there"], ["Hello", "world"])


def test_projector_type_of_tiny_pair(tmp_path):
    _, mmproj = write_tiny_pair(tmp_path, "qwen2-qwen2a")
    assert projector_type(str(mmproj)) == "qwen2a"


def test_cli_missing_calibration_dir(tmp_path):
    model, mmproj = write_tiny_pair(tmp_path, "qwen2-qwen2a")
    res = run_profile_heads(model, "--mmproj", mmproj, "--calib", tmp_path / "nope", "-o", tmp_path / "p.json")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"profile_heads: error: {tmp_path / 'nope'}: not a directory"]
    assert not (tmp_path / "p.json").exists()


def test_cli_missing_output_folder_is_refused_before_profiling(tmp_path):
    model, _ = write_tiny_pair(tmp_path, "qwen2-qwen2a")
    out = tmp_path / "nope" / "m.gguf"
    res = run_profile_heads(model, "--retrieval", "-o", tmp_path / "p.json", "--gguf-out", out)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"profile_heads: error: {out}: no folder {tmp_path / 'nope'} to write it in"]
    assert not (tmp_path / "p.json").exists()


calib = calibration_set_fixture(clips=2)


@pytest.mark.native
@pytest.mark.slow
def test_end_to_end_profile_write_load_plan(tmp_path, calib):
    from audiokv_edge.keep_plan import plan, uniform_budget
    from audiokv_edge.methods.audiokv import audiokv_real_budgets

    model, mmproj = write_tiny_pair(tmp_path, "qwen2-qwen2a")
    pj = tmp_path / "profile.json"
    out = tmp_path / "model-profiled.gguf"
    res = run_profile_heads(model, "--mmproj", mmproj, "--calib", calib, "-o", pj, "--gguf-out", out, "--npz",
                            "--threads", "2", "--window", "8")
    assert res.returncode == 0, res.stderr
    meta = json.loads(pj.read_text())
    shape = gp.model_shape(gp.open_gguf(model))
    assert (meta["n_layer"], meta["n_head_kv"]) == (shape.n_layer, shape.n_head_kv)
    assert meta["details"]["n_steps"] > 10
    assert all(c["timed"] and c["audio_tokens"] > 0 for c in meta["details"]["clips"])
    scores = np.array(meta["scores"])
    assert scores.sum() == pytest.approx(1.0) and np.all(scores >= 0)
    assert (tmp_path / "profile.npz").exists()

    stored, dflt = gp.read_stored(out)                       # load: the profile travels with the model
    np.testing.assert_array_equal(stored.scores, scores.astype(np.float32).astype(np.float64))
    assert dflt.window == 8 and "calib" in stored.source["calibration"]

    # the AudioKV keep plan of this model uses the stored budgets
    rng = np.random.default_rng(0)
    n_tok, d, n_head, w = 200, 8, 4, 8
    keys = rng.standard_normal((shape.n_layer, shape.n_head_kv, n_tok, d))
    q = rng.standard_normal((shape.n_layer, n_head, w, d))
    p = plan("audiokv", q, keys, 0.4, stored, window=w)
    budgets = p.budgets
    want = audiokv_real_budgets(stored.scores, uniform_budget(0.4, n_tok), w, n_tok)
    assert budgets.sum() == uniform_budget(0.4, n_tok) * shape.n_layer * shape.n_head_kv
    assert np.all(np.abs(budgets - want) < 1.0)              # integerised real budgets of the stored profile
    if not np.allclose(stored.scores, stored.scores.mean()):
        assert len(set(budgets.ravel().tolist())) > 1        # not uniform


@pytest.mark.native
def test_teacher_forced_tokens_follow_the_whole_prompt(tmp_path, calib):
    """The transcript is forced after the WHOLE prompt: libmtmd's eval helper adds a text chunk's tokens to the
    n_past it is handed (in/out), so a zero start left the prompt at the text's length and the forced tokens
    overwrote the audio. Regression: every forced row attends to every audio cell, positions follow the prompt."""
    from audiokv_edge.profiling.attention_capture import TeacherForcedAttention
    from audiokv_edge.profiling.calibration_set import load_calibration_dir

    model, mmproj = write_tiny_pair(tmp_path, "qwen2-qwen2a")
    item = load_calibration_dir(str(calib))[0]
    with TeacherForcedAttention(model, mmproj, n_ctx=2048, n_batch=512, n_threads=2) as cap:
        rows, spans, info = cap.capture_rows(item)
    a0, a1 = info.audio_start, info.audio_start + info.audio_tokens
    assert info.prompt_positions > a1                     # the instruction after the audio is part of the prompt
    assert rows.shape[3] >= info.prompt_positions + info.steps - 1
    assert np.all(rows[:, :, :, a0:a1] > 0)               # softmax rows over cells that hold the audio
    assert np.all(spans[:, 1] <= a1)


@pytest.mark.native
@pytest.mark.slow
def test_batched_teacher_forcing_equals_step_by_step_decoding(tmp_path, calib):
    """Rows captured from one teacher-forced batch equal those of real one-token decode steps."""
    from audiokv_edge.profiling.attention_capture import TeacherForcedAttention
    from audiokv_edge.profiling.calibration_set import load_calibration_dir

    model, mmproj = write_tiny_pair(tmp_path, "qwen2-qwen2a")
    item = load_calibration_dir(str(calib))[0]
    with TeacherForcedAttention(model, mmproj, n_ctx=2048, n_batch=512, n_threads=2) as cap:
        batched, spans_b, info = cap.capture_rows(item)
        stepped, spans_s, _ = cap.capture_rows(item, forced_batch=1)
    assert batched.shape[:3] == stepped.shape[:3] == (info.steps, cap.n_layer, cap.n_head)
    n = min(batched.shape[3], stepped.shape[3])
    assert not batched[..., n:].any() and not stepped[..., n:].any()
    # float32 rows; batched and one-token matmul kernels sum in different orders: |diff| <= 2e-4 measured 6e-5
    np.testing.assert_allclose(batched[..., :n], stepped[..., :n], rtol=1e-2, atol=2e-4)
    np.testing.assert_array_equal(spans_b, spans_s)
    assert spans_b[0, 0] >= info.audio_start and spans_b[-1, 1] <= info.audio_start + info.audio_tokens


@pytest.mark.native
def test_captured_rows_equal_attention_recomputed_from_queries_and_keys(tmp_path):
    """The eval-callback rows (kq_soft_max) equal softmax(kq_scale * q . k) recomputed in NumPy from the post-RoPE
    queries and cached keys that the eviction API hands over: heads, tokens and positions are read correctly."""
    from audiokv_edge.native import llama_kv_evict as E
    from audiokv_edge.profiling.attention_capture import TeacherForcedAttention

    model, mmproj = write_tiny_pair(tmp_path, "qwen2-qwen2a")
    n_tok, w = 40, 8
    with TeacherForcedAttention(model, mmproj, n_ctx=256, n_batch=64, n_threads=1) as cap:
        lib = E.load_library()
        seen = {}

        def record(seq_id, layers, uniform):
            seen["q"] = [lv.q.copy() for lv in layers]                         # [H, w, d]
            seen["k"] = [[lv.keys(h) for h in range(lv.n_head_kv)] for lv in layers]
            seen["pos"] = [[lv.pos[h].copy() for h in range(lv.n_head_kv)] for lv in layers]
            seen["q_pos"] = layers[0].q_pos.copy()
            seen["scale"] = [lv.kq_scale for lv in layers]
            return 1                                                            # keep everything

        cb = E.make_callback(record)
        params = lib.llama_kv_evict_default_params()
        params.n_window = w
        params.callback = cb
        assert lib.llama_kv_evict_init(cap._ctx, params) == 0
        lc = cap._lc
        toks = np.random.default_rng(2).integers(5, 200, size=n_tok).tolist()
        cap._captured, cap._capture_failed, cap._capturing = {}, False, True
        arr = (lc.llama_token * n_tok)(*toks)
        assert lc.llama_decode(cap._ctx, lc.llama_batch_get_one(arr, n_tok)) == 0
        cap._capturing = False
        assert lib.llama_kv_evict_seq(cap._ctx, 0) == E.LLAMA_KV_EVICT_DECLINED
        assert not cap._capture_failed and sorted(cap._captured) == list(range(cap.n_layer))
        g = cap.n_head // cap.n_head_kv
        np.testing.assert_array_equal(seen["q_pos"], np.arange(n_tok - w, n_tok))
        for il in range(cap.n_layer):
            rows = cap._captured[il][0]                                         # [n_tok, H, n_kv]
            for h in range(cap.n_head):
                k = seen["k"][il][h // g]
                order = np.argsort(seen["pos"][il][h // g])
                logits = seen["scale"][il] * (seen["q"][il][h] @ k[order].T)    # [w, n_tok]
                logits = np.where(np.arange(n_tok)[None, :] <= seen["q_pos"][:, None], logits, -np.inf)
                ref = np.exp(logits - logits.max(axis=1, keepdims=True))
                ref /= ref.sum(axis=1, keepdims=True)
                got = rows[n_tok - w:, h, :n_tok]
                # f16 cache: llama.cpp multiplies q rounded to f16; the reference uses f32 q
                np.testing.assert_allclose(got, ref, atol=2e-3)
                assert not rows[n_tok - w:, h, n_tok:].any()
