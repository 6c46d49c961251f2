"""Retrieval-head profile of a text model (convert/profile_heads.py --retrieval): planted copying heads rank first,
the calibration documents (needle placement, a haystack that is not the evaluation's text), and the end-to-end run
on a tiny text model: profile -> GGUF -> read back, with the forced needle tokens copied from the prompt."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audiokv_edge.profile import gguf_keys as gp
from audiokv_edge.profiling import retrieval_heads as rh
from audiokv_edge.profiling.hit_ratio import HitRatioAccumulator, profile_from_hits
from audiokv_edge.testing.tiny_models import write_tiny_pair

REPO = Path(__file__).resolve().parent.parent
PROFILE_HEADS = REPO / "convert" / "profile_heads.py"
sys.path.insert(0, str(REPO / "scripts"))

L, H, HKV = 4, 8, 4
COPYING = [(2, 5), (3, 0)]          # query heads whose top attention lands on the token being copied
OFF_BY_ONE = (1, 6)                 # attends the token before it (the one the query holds): not a copy


class _PlantedRows:
    """Stands for the captured model: a prompt of one token per 4 characters, and attention rows [L, H, n_kv] in
    which the planted heads put their peak on the copied needle token, the others on sinks, recent and random
    tokens (the rows themselves are the data of this test, as in tests/test_hit_ratio.py)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def chat_prompt(self, content: str, chars: tuple[int, int]):
        n = len(content) // 4 + 6
        return list(range(n)), (3 + chars[0] // 4, 3 + chars[1] // 4)

    def capture_answer(self, prompt: list[int], answer: list[int]) -> np.ndarray:
        a = prompt.index(answer[0])
        rows = np.empty((len(answer), L, H, len(prompt) + len(answer) - 1), dtype=np.float32)
        for j in range(len(answer)):
            n_kv = len(prompt) + j
            logits = self.rng.normal(0, 1.0, (L, H, rows.shape[-1]))
            logits[:, :, :4] += 4.0                                        # attention sinks
            logits[:, :, n_kv - 6:n_kv] += 3.5                             # recent tokens
            noise = self.rng.integers(0, n_kv, (L, H, 6))
            for layer in range(L):
                for h in range(H):
                    logits[layer, h, noise[layer, h]] += 3.0
            for layer, h in COPYING:
                logits[layer, h, a + j] += 8.0
            logits[OFF_BY_ONE[0], OFF_BY_ONE[1], a + j - 1] += 8.0
            logits[:, :, n_kv:] = -np.inf                                  # causal
            e = np.exp(logits - logits.max(axis=-1, keepdims=True))
            rows[j] = e / e.sum(axis=-1, keepdims=True)
        return rows


def test_planted_retrieval_heads_rank_first():
    docs = rh.needle_documents(rh.default_haystack(), 6, 1200, seed=3)
    acc = HitRatioAccumulator(L, H, top_k=1)
    cap = _PlantedRows(0)
    steps = sum(rh.score_document(cap, d, acc).steps for d in docs)
    assert acc.n_steps == steps > 40
    s = acc.head_scores()
    order = [divmod(int(i), H) for i in np.argsort(-s.ravel(), kind="stable")]
    assert set(order[:2]) == set(COPYING)
    assert min(s[c] for c in COPYING) > 0.8                    # top-1 on the copied token at most steps
    assert s[OFF_BY_ONE] < 0.1                                 # a strong head one token off is no retrieval head
    prof = profile_from_hits(acc, HKV, {"calibration": "planted"})
    kv_order = [divmod(int(i), HKV) for i in np.argsort(-prof.scores.ravel(), kind="stable")]
    assert set(kv_order[:2]) == {(2, 2), (3, 0)}               # the KV heads of the planted query heads (g = 2)


def test_needle_documents_place_one_needle_per_document():
    hay = rh.default_haystack()
    docs = rh.needle_documents(hay, 5, 3000, seed=1)
    assert docs == rh.needle_documents(hay, 5, 3000, seed=1)   # deterministic
    assert sorted(round(d.depth, 3) for d in docs) == [0.05, 0.275, 0.5, 0.725, 0.95]
    for d in docs:
        assert d.needle.startswith("The special magic ") and d.needle.endswith(".")
        assert d.content.count(d.needle) == 1
        thing = d.needle.split()[3]
        assert d.content.endswith(rh.QUESTION.format(thing=thing))
        where = d.needle_start / (len(d.content) - len(rh.QUESTION.format(thing=thing)))
        assert abs(where - d.depth) < 0.2                      # at a sentence boundary near its depth
    with pytest.raises(ValueError, match="fewer than"):
        rh.needle_documents("short text. " * 10, 2, 1000)
    with pytest.raises(ValueError, match="at least 1 document"):
        rh.needle_documents(hay, 0, 1000)


def test_calibration_text_is_not_the_evaluation_text():
    import bench_passkey_text as task

    hay = rh.default_haystack()
    assert len(hay) > 20000
    assert task.FILLER.strip()[:30] not in hay and "pass key" not in hay.lower()
    assert "pass key" not in rh.QUESTION.lower()


def _run(*args):
    return subprocess.run([sys.executable, str(PROFILE_HEADS), *map(str, args), "--no-progress"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)


def test_cli_retrieval_refuses_a_projector_and_a_missing_text(tmp_path):
    model, mmproj = write_tiny_pair(tmp_path, "qwen2-qwen2a")
    res = _run(model, "--retrieval", "--mmproj", mmproj, "-o", tmp_path / "p.json")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["profile_heads: error: --retrieval profiles a text model: no --mmproj"]
    res = _run(model, "--retrieval", "--calib", tmp_path / "nope.txt", "-o", tmp_path / "p.json")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "nope.txt" in res.stderr
    assert not (tmp_path / "p.json").exists()


@pytest.mark.native
def test_end_to_end_retrieval_profile_write_load(tmp_path):
    """A tiny random text model: every needle token is forced and scored, the profile is stored and read back."""
    model, _ = write_tiny_pair(tmp_path, "qwen2-qwen2a")
    pj, out = tmp_path / "profile.json", tmp_path / "model-text-profile.gguf"
    res = _run(model, "--retrieval", "--docs", "2", "--doc-tokens", "200", "--threads", "1", "-o", pj,
               "--gguf-out", out)
    assert res.returncode == 0, res.stderr
    meta = json.loads(pj.read_text())
    docs = meta["details"]["documents"]
    assert len(docs) == 2 and meta["details"]["top_k"] == 1
    assert meta["details"]["n_steps"] == sum(d["steps"] for d in docs)
    for d in docs:
        a, b = d["needle_span"]
        assert d["steps"] == b - a >= 5 and b < d["prompt_tokens"]
    scores = np.array(meta["scores"])
    assert scores.sum() == pytest.approx(1.0) and np.all(scores >= 0)
    stored, _ = gp.read_stored(out)
    np.testing.assert_array_equal(stored.scores, scores.astype(np.float32).astype(np.float64))
    assert stored.source["calibration"].startswith("needle copy: 2 documents")
    assert stored.source["method"].startswith("retrieval score")


@pytest.mark.native
def test_forced_needle_rows_equal_step_by_step_decoding(tmp_path):
    """The text capture's teacher-forced batch gives the rows of real one-token decode steps, and the forced
    answer is the needle's own prompt tokens."""
    from audiokv_edge.profiling.attention_capture import TextTeacherForcedAttention

    model, _ = write_tiny_pair(tmp_path, "qwen2-qwen2a")
    doc = rh.needle_documents(rh.default_haystack(), 1, 400, seed=0)[0]
    with TextTeacherForcedAttention(model, n_ctx=512, n_batch=64, n_threads=1) as cap:
        tokens, (a, b) = cap.chat_prompt(doc.content, (doc.needle_start, doc.needle_stop))
        assert doc.needle.strip() in "".join(cap._piece(t) for t in tokens[a:b])
        batched = cap.capture_answer(tokens, tokens[a:b])
        stepped = cap.capture_answer(tokens, tokens[a:b], forced_batch=1)
    assert batched.shape[:3] == (b - a, cap.n_layer, cap.n_head)
    n = min(batched.shape[3], stepped.shape[3])
    # float32 rows, batched and one-token kernels sum in different orders (as the audio capture's test)
    np.testing.assert_allclose(batched[..., :n], stepped[..., :n], rtol=1e-2, atol=2e-4)
    assert np.all(batched[0].sum(axis=-1) > 0.99) and not batched[0, :, :, len(tokens):].any()  # row 0: the prompt
