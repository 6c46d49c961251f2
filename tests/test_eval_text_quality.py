"""The text quality comparison (scripts/eval_text_quality.py) and the cache replay it stands on
(audiokv_edge/runtime/cache_replay.py): a restored prefix + the replayed tail gives the answer of a whole prefill,
for method full and for an evicting method; the label-free metrics on known distributions; the script's smoke run on
a tiny random model (its JSON / PNG / markdown and its resumption). The figures themselves come from the real run
(docs/text-quality.md)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audiokv_edge.runtime.cache_replay import compare_logprobs
from tests.text_fixtures import FILLER, text_model  # noqa: F401 - text_model is a fixture

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "eval_text_quality.py"


def _passkey():
    spec = importlib.util.spec_from_file_location("bench_passkey_text", REPO / "scripts" / "bench_passkey_text.py")
    sys.path.insert(0, str(REPO / "scripts"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    return x - np.log(np.exp(x - x.max(axis=1, keepdims=True)).sum(axis=1, keepdims=True)) - x.max(axis=1, keepdims=True)


def test_compare_logprobs_on_known_distributions():
    full = _log_softmax([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    assert compare_logprobs(full, full) == {"top1": 1.0, "kl": 0.0, "prefix": 3, "steps": 3}
    other = full.copy()
    other[1] = _log_softmax([[2.0, 0.0, 0.0]])[0]   # step 1 prefers token 0 instead of 1
    q = compare_logprobs(full, other)
    p = np.exp(full[1])
    expected_kl = float(np.sum(p * (full[1] - other[1]))) / 3
    assert q["top1"] == round(2 / 3, 4) and q["prefix"] == 1 and q["steps"] == 3
    assert q["kl"] == pytest.approx(expected_kl, abs=1e-5) and q["kl"] > 0.1
    with pytest.raises(ValueError, match="different shapes"):
        compare_logprobs(full, full[:2])


def test_multikey_document():
    pk = _passkey()
    keys = pk.multikey_keys(40, 0)
    assert len(set(keys.values())) == 3 and keys == pk.multikey_keys(40, 0) != pk.multikey_keys(40, 1)
    doc = pk.multikey_document(40, (0.2, 0.5, 0.8), keys)
    positions = [doc.index(f"pass key for {name} is {keys[name]}") for name in pk.KEY_NAMES]
    assert positions == sorted(positions) and doc.count(pk.FILLER.strip()) == 40
    assert len(doc) * 0.1 < positions[0] < len(doc) * 0.3 < positions[1] < len(doc) * 0.6 < positions[2]


PROBE_REPLAY = r"""
import json, sys
from audiokv_edge.runtime import cache_replay as cr
from audiokv_edge.runtime.session import Session, SessionConfig
model, filler, method = sys.argv[1:4]
method, _, scope = method.partition(":")
doc = filler * 3 + "The pass key is 51234. " + filler * 2
question = "What is the pass key?"
out = {}
cfg = SessionConfig(method=method, keep=None if method == "full" else 0.4, max_tokens=8, threads=2, ctx=1024,
                    sss_scope=scope or "all")
with Session(model, config=cfg, audio=False) as first:
    whole = first.answer_text(doc, question)
    tokens, span, _ = first.text_prompt_tokens(doc, question)
with Session(model, config=SessionConfig(method="full", threads=2, ctx=1024), audio=False) as full:
    prefix = cr.save_prefix(full, tokens[:-40])
with Session(model, config=cfg, audio=False) as s:     # a fresh session, as eval_text_quality opens per configuration
    replayed = cr.greedy(s, prefix, tokens[-40:], 8)
    out["prompt_tokens"] = len(tokens)
    out["whole"] = list(whole.tokens)
    out["replayed"] = replayed
    out["kv_kept_whole"] = whole.stats.kv_bytes_kept / whole.stats.kv_bytes_full
    logprobs, record = cr.replay(s, prefix, tokens[-40:], list(whole.tokens) or [0])
    out["record"] = record
    out["spans"] = s._evictor._spans.get(0) if s._evictor is not None else None   # audio positions it smoothed
    out["top1_self"] = cr.compare_logprobs(logprobs, logprobs)["top1"]
    out["argmax"] = [int(i) for i in logprobs.argmax(axis=1)]
    try:
        cr.replay(s, prefix, tokens[-8:], [0])
        out["short_tail"] = None
    except cr.ReplayError as exc:
        out["short_tail"] = str(exc)
print(json.dumps(out))
"""


@pytest.mark.native
@pytest.mark.parametrize("method", ["full", "snapkv", "audiokv", "audiokv:audio"])
def test_replayed_prefix_answers_as_a_whole_prefill(text_model, method):
    """Restoring the saved prefix and decoding the last 40 tokens, then evicting, gives the greedy answer of
    Session.answer_text on the whole prompt token for token (same observation window, same kept entries); the
    teacher-forced argmax is that answer; a tail shorter than the observation window is refused (evicting methods).
    ``audiokv:audio``: SSS restricted to audio tokens, so none over the document, in the replay as in the prefill."""
    proc = subprocess.run([sys.executable, "-c", PROBE_REPLAY, str(text_model), FILLER, method], capture_output=True,
                          text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["prompt_tokens"] > 200 and len(out["whole"]) >= 4
    assert out["replayed"] == out["whole"]
    assert out["argmax"] == out["whole"]
    assert out["top1_self"] == 1.0
    if method == "audiokv:audio":
        assert out["spans"] == []       # told there is no audio (else it smooths every token, as scope "all")
    if method == "full":
        assert out["record"] == {} and out["short_tail"] is None
    else:
        assert out["kv_kept_whole"] < 0.5
        assert 0.3 < out["record"]["kept_entries"] / out["record"]["full_entries"] < 0.5
        assert "shorter than the observation window" in out["short_tail"]


@pytest.mark.native
def test_eval_text_quality_smoke(text_model, tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--model", str(text_model), "--out", str(tmp_path / "out"),
           "--name", "smoke"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads((tmp_path / "out" / "smoke.json").read_text())
    for key in ("machine", "versions", "command", "seed"):
        assert out[key] is not None
    cells = {(r["config"], r["keep"], r["placement"]) for r in out["summary"]}
    assert cells == {(c, k, p) for c, k in (("full", 1.0), ("snapkv", 0.4), ("audiokv", 0.4))
                     for p in ("after", "before", "follow-up")}
    for r in out["rows"]:
        assert 0 <= r["top1"] <= 1 and r["kl"] >= 0 and r["steps"] >= 1
        if r["config"] == "full":
            assert r["top1"] == 1.0 and r["kl"] == 0.0 and r["prompt_tokens"] > 200
        else:
            assert 0.3 < r["kv_kept_ratio"] < 0.5
    assert {n for n, _, _ in out["ranking"]["top1"]} == {"snapkv", "audiokv"}
    assert (tmp_path / "out" / "smoke.png").stat().st_size > 10_000
    table = (tmp_path / "out" / "smoke.md").read_text()
    assert "| 256 | before | snapkv | 0.4 |" in table
    labels = out["full_cache_labels"]   # whether the full cache's own answer holds the key, per item
    assert sorted(r["placement"] for r in labels) == ["after", "before", "follow-up"]
    full_rows = {r["placement"]: r for r in out["rows"] if r["config"] == "full"}
    assert all(r["found"] == full_rows[r["placement"]]["found"] for r in labels)
    assert f"The full cache finds the pass key in {sum(r['found'] for r in labels)} of 3 " in table
    assert not (tmp_path / "out" / "smoke.work").exists()
    # resumable: a re-run finds every row and runs nothing
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(json.loads((tmp_path / "out" / "smoke.json").read_text())["rows"]) == 9
    assert len((tmp_path / "out" / "smoke.jsonl").read_text().splitlines()) == 9


def test_text_profile_configurations():
    """With a text profile each keep gets audiokv-text with and without the smoothing over the (text) tokens."""
    spec = importlib.util.spec_from_file_location("eval_text_quality", SCRIPT)
    sys.path.insert(0, str(REPO / "scripts"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("eval_text_quality", mod)     # its dataclasses look their module up
    spec.loader.exec_module(mod)
    got = mod.configs([0.4], ["full", "snapkv", "audiokv"], has_profile=False, text_profile=True)
    assert [(c.name, c.method, c.keep, c.model, c.sss_scope) for c in got] == [
        ("full", "full", 1.0, "stored", "all"), ("snapkv", "snapkv", 0.4, "stored", "all"),
        ("audiokv", "audiokv", 0.4, "stored", "all"), ("audiokv-text", "audiokv", 0.4, "text", "all"),
        ("audiokv-text-sss-audio", "audiokv", 0.4, "text", "audio")]
