"""A fixed KV budget (``--kv-budget`` / ``SessionConfig.kv_budget``): every eviction plans at keep min(keep, budget /
positions seen), so with --stream the kept entries per (layer, KV head) never exceed the budget on average however
long the audio; it combines with --keep (the smaller wins), plans exactly like the equivalent keep ratio (AudioKV
by its head profile), is reported in the answer statistics, and bad values are refused. The budget lives in the
shared evictor (runtime/kv_eviction.py): text documents, SSS restricted to the audio and ``enable()`` get it too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audiokv_edge.runtime.kv_eviction import budget_keep
from audiokv_edge.runtime.session import SessionConfig
from tests.evict_fixtures import run_python
from tests.text_fixtures import FILLER, text_model  # noqa: F401 - text_model is a fixture

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "audiokv_edge" / "data"


@pytest.mark.parametrize("bad", [0, -5, 1.5, 64.0, "64", True])
def test_config_refuses_a_bad_budget(bad):
    with pytest.raises(ValueError, match="kv_budget"):
        SessionConfig(kv_budget=bad)


def test_config_budget_needs_an_evicting_method():
    with pytest.raises(ValueError, match="full"):
        SessionConfig(method="full", kv_budget=64)
    config = SessionConfig(kv_budget=np.int64(64))
    assert config.kv_budget == 64 and type(config.kv_budget) is int


def test_budget_keep_is_the_smaller_ratio():
    assert budget_keep(0.4, None, 3000) == 0.4
    assert budget_keep(0.4, 300, 3000) == pytest.approx(0.1)
    assert budget_keep(0.4, 2000, 3000) == 0.4    # the keep ratio is smaller
    assert budget_keep(1.0, 5000, 3000) == 1.0    # a budget above the prompt keeps everything


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return run_python("-m", "audiokv_edge.run", *args, timeout=600)


@pytest.mark.parametrize("value", ["0", "-3", "2.5", "many"])
def test_runner_refuses_a_bad_budget(value):
    proc = run_cli("m.gguf", str(DATA / "jfk.wav"), "--kv-budget", value)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("audiokv-run: error: argument --kv-budget: must be an integer >= 1"), lines[0]


def test_runner_refuses_a_budget_with_method_full():
    proc = run_cli("m.gguf", str(DATA / "jfk.wav"), "--kv-budget", "64", "--method", "full")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "audiokv-run: error: kv_budget needs an evicting method: method 'full' keeps every cache entry"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny model with a planted AudioKV head profile (unequal budgets per head), and 140 s of real speech
    (five 30 s chunks)."""
    import soundfile as sf

    from audiokv_edge.profile import gguf_keys as gp
    from audiokv_edge.profile.head_profile import HeadProfile
    from audiokv_edge.testing.tiny_models import write_tiny_pair

    d = tmp_path_factory.mktemp("kv_budget")
    model, _ = write_tiny_pair(d, "qwen2-qwen2a")
    shape = gp.model_shape(gp.open_gguf(model))
    scores = np.linspace(0.05, 1.0, shape.n_layer * shape.n_head_kv).reshape(shape.n_layer, shape.n_head_kv)
    profiled = model.parent / "profiled.gguf"
    gp.write_profile(model, HeadProfile(scores, source={"calibration": "planted for the kv-budget test"}), profiled)
    speech, rate = sf.read(DATA / "jfk.wav", dtype="float32")
    long_audio = d / "speech_140s.flac"
    sf.write(long_audio, np.tile(speech, 14)[: 140 * rate], rate)
    return profiled, long_audio


PROBE = r"""
import json, sys
from audiokv_edge.runtime.session import Session, SessionConfig
model, long_audio, short_audio = sys.argv[1:4]
out = {}
def run(name, audio, **options):
    cfg = SessionConfig(max_tokens=4, threads=1, **options)
    with Session(model, config=cfg) as s:
        a = s.answer(audio)
        g = s.geometry
        out[name] = {"stats": a.to_dict(), "evictions": s.last_evictions, "heads": g.n_layer * g.n_head_kv}
for method in ("audiokv", "snapkv"):
    run(f"stream-{method}", long_audio, method=method, keep=1.0, kv_budget=300, stream=True, ctx=1024)
run("stream-combined", long_audio, method="audiokv", keep=0.3, kv_budget=1000, stream=True, ctx=1024)
run("budget", short_audio, method="audiokv", keep=1.0, kv_budget=200, ctx=2048)
P = out["budget"]["stats"]["prompt_tokens"]
run("same-keep", short_audio, method="audiokv", keep=200 / P, ctx=2048)
run("keep-wins", short_audio, method="audiokv", keep=0.1, kv_budget=5000, ctx=2048)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def probe(models):
    profiled, long_audio = models
    proc = subprocess.run([sys.executable, "-c", PROBE, str(profiled), str(long_audio), str(DATA / "arctic_a0007.wav")],
                          capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.native
@pytest.mark.parametrize("method", ["audiokv", "snapkv"])
def test_stream_never_keeps_more_than_the_budget(probe, method):
    """140 s of speech (3,750 audio tokens) in a 1,024-token context with --stream and a budget of 300 entries per
    (layer, KV head): after every eviction the heads hold at most 300 entries on average (exactly 300 once the
    positions seen pass it: the budget is the whole plan's total), and each eviction planned at min(1, 300 / P)."""
    run = probe[f"stream-{method}"]
    stats, evictions, heads = run["stats"], run["evictions"], run["heads"]
    assert stats["audio_tokens"] == 5 * 750 and len(evictions) == 5 + 1   # each audio chunk, the question
    for e in evictions:
        assert e["entries_after"] <= 300 * heads, e
        assert e["entries_after"] == min(300, e["n_past"]) * heads, e
        assert e["keep"] == pytest.approx(min(1.0, 300 / e["n_past"])), e
    assert stats["kv_budget"] == 300 and stats["keep"] == 1.0
    assert stats["keep_effective"] == pytest.approx(300 / stats["prompt_tokens"])
    assert stats["kv_bytes_kept"] / stats["kv_bytes_full"] == pytest.approx(300 / stats["prompt_tokens"], rel=1e-9)
    used = [e["bytes_used_before"] for e in evictions[1:-1]]  # between the first chunk and the question
    assert max(used) / min(used) < 1.1, used  # the memory in use stays flat however long the audio


@pytest.mark.native
def test_stream_budget_and_keep_combine(probe):
    """keep 0.3 and a budget of 1,000: keep rules while 0.3 x the positions seen is smaller, then the budget."""
    run = probe["stream-combined"]
    heads = run["heads"]
    ruled_by = set()
    for e in run["evictions"]:
        assert e["keep"] == pytest.approx(min(0.3, 1000 / e["n_past"])), e
        assert e["entries_after"] <= 1000 * heads
        ruled_by.add("keep" if 0.3 * e["n_past"] < 1000 else "budget")
    assert ruled_by == {"keep", "budget"}
    assert run["stats"]["keep"] == 0.3 and run["stats"]["kv_budget"] == 1000


@pytest.mark.native
def test_budget_plans_exactly_like_the_same_keep_ratio(probe):
    """AudioKV with its head profile: a budget of 200 entries plans what keep 200 / P plans (same kept entries, same
    greedy answer); a budget above keep x P leaves keep in charge."""
    budget, same = probe["budget"], probe["same-keep"]
    assert budget["evictions"][-1]["entries_after"] == same["evictions"][-1]["entries_after"] == 200 * budget["heads"]
    assert budget["stats"]["text"] == same["stats"]["text"]
    assert budget["stats"]["kv_bytes_kept"] == same["stats"]["kv_bytes_kept"]
    assert same["stats"]["kv_budget"] is None and same["stats"]["keep_effective"] == same["stats"]["keep"]
    keep_wins = probe["keep-wins"]["stats"]
    assert keep_wins["keep_effective"] == 0.1 and keep_wins["kv_budget"] == 5000


@pytest.mark.native
def test_runner_reports_the_budget(models):
    profiled, _ = models
    proc = run_cli(str(profiled), str(DATA / "arctic_a0007.wav"), "--kv-budget", "100", "--keep", "1",
                   "--max-tokens", "3", "--threads", "1", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout)
    assert record["kv_budget"] == 100 and record["keep_effective"] == pytest.approx(100 / record["prompt_tokens"])
    text = run_cli(str(profiled), str(DATA / "arctic_a0007.wav"), "--kv-budget", "100", "--keep", "1",
                   "--max-tokens", "3", "--threads", "1")
    assert text.returncode == 0, text.stderr[-3000:]
    assert "keep 1, budget 100 tokens per head -> keep 0.12" in text.stderr, text.stderr


# --- the same budget on the other users of the shared evictor: text documents, SSS on the audio, enable() ---------


def test_enable_refuses_a_bad_budget():
    from audiokv_edge.runtime.llama_hook import EvictionConfig

    for bad in (0, -1, 2.5, "8", True):
        with pytest.raises(ValueError, match="kv_budget"):
            EvictionConfig(kv_budget=bad)
    with pytest.raises(ValueError, match="full"):
        EvictionConfig(method="full", kv_budget=8)
    assert EvictionConfig(kv_budget=np.int32(8)).kv_budget == 8


PROBE_TEXT = r"""
import json, sys
from audiokv_edge.runtime.session import Session, SessionConfig
model, filler = sys.argv[1:3]
cfg = SessionConfig(method="snapkv", keep=1.0, kv_budget=100, stream=True, text_block=64, max_tokens=4, threads=1,
                    ctx=1024)
with Session(model, config=cfg) as s:
    a = s.answer_text(filler * 12, "Who walks on the moon?")
    g = s.geometry
    evictions = s.last_evictions
    f = s.follow_up("And what do they plant?")
    print(json.dumps({"answer": a.to_dict(), "evictions": evictions, "heads": g.n_layer * g.n_head_kv,
                      "follow_up": f.to_dict(), "follow_up_evictions": s.last_evictions}))
"""


@pytest.mark.native
def test_text_document_stream_keeps_the_budget(text_model):
    """A text document with --stream in blocks of 64 tokens and a budget of 100 entries: every eviction keeps
    min(100, positions seen) entries per (layer, KV head); the follow-up (not evicted) reports the conversation's
    last ratio and the budget."""
    proc = subprocess.run([sys.executable, "-c", PROBE_TEXT, str(text_model), FILLER], capture_output=True, text=True,
                          cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    answer, evictions, heads = out["answer"], out["evictions"], out["heads"]
    assert len(evictions) >= 3 and evictions[-1]["n_past"] > 300
    for e in evictions:
        assert e["entries_after"] == min(100, e["n_past"]) * heads, e
        assert e["keep"] == pytest.approx(min(1.0, 100 / e["n_past"])), e
    assert answer["kv_budget"] == 100 and answer["keep_effective"] == pytest.approx(100 / answer["prompt_tokens"])
    assert out["follow_up_evictions"] == []
    assert out["follow_up"]["kv_budget"] == 100 and out["follow_up"]["keep_effective"] == answer["keep_effective"]


PROBE_SPANS = r"""
import json, sys
import numpy as np
import soundfile as sf
from audiokv_edge.native import llama_kv_evict as E
from audiokv_edge.runtime import kv_eviction
from audiokv_edge.runtime.session import Session, SessionConfig
from tests.test_sss_audio_spans import _kept_equal, _mask_of, _reference
model, jfk, long_path = sys.argv[1:4]
speech, rate = sf.read(jfk, dtype="float32")
sf.write(long_path, np.tile(speech, 4)[: 40 * rate], rate)      # 40 s: two audio chunks (30 s + 10 s)
records = []
real = kv_eviction.KVEvictor._plan_within_budget


def recording(self, info_p, user_data):   # what the budget's callback is handed and what it keeps
    views = E.layer_views(info_p.contents)
    rec = {"uniform": bool(info_p.contents.uniform),
           "q": np.stack([lv.q * np.float32(lv.kq_scale * np.sqrt(lv.head_dim)) for lv in views]),
           "q_pos": views[0].q_pos.copy(),
           "keys": [[lv.keys(h) for h in range(lv.n_head_kv)] for lv in views],
           "pos": [[lv.pos[h].copy() for h in range(lv.n_head_kv)] for lv in views]}
    rc = real(self, info_p, user_data)
    rec["kept"] = [[np.ctypeslib.as_array(lv._layer.heads[h].keep, shape=(lv._layer.heads[h].n_keep,)).copy()
                    for h in range(lv.n_head_kv)] for lv in views]
    rec["keep"] = self.last_keep
    records.append(rec)
    return rc


kv_eviction.KVEvictor._plan_within_budget = recording
cfg = SessionConfig(method="audiokv", keep=1.0, kv_budget=150, stream=True, max_tokens=2, threads=1, ctx=1024,
                    sss_scope="audio")
with Session(model, config=cfg) as s:
    s.answer(long_path)
    spans = s.last_audio_spans
    evictions = s.last_evictions
out = {"spans": spans, "keeps": [r["keep"] for r in records], "n_past": [e["n_past"] for e in evictions],
       "equal_masked": [_kept_equal(r, _reference(r, "audiokv", r["keep"], _mask_of(spans, int(r["q_pos"][-1]) + 1)))
                        for r in records],
       "equal_unmasked": [_kept_equal(r, _reference(r, "audiokv", r["keep"], None)) for r in records]}
print(json.dumps(out))
"""


@pytest.mark.native
def test_budget_keeps_the_audio_spans(tmp_path):
    """SSS scope "audio" with a budget: each eviction's evictor (made for its own ratio) smooths within the audio
    chunks, i.e. plans exactly like the NumPy reference at min(1, 150 / P) with the audio mask, not without it."""
    from audiokv_edge.testing.tiny_models import write_tiny_pair

    model, _ = write_tiny_pair(tmp_path, "qwen2-qwen2a")
    proc = subprocess.run([sys.executable, "-c", PROBE_SPANS, str(model), str(DATA / "jfk.wav"),
                           str(tmp_path / "speech_40s.flac")], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["spans"]) == 2 and len(out["keeps"]) == 3              # after chunk 1, chunk 2, the question
    for keep, n_past in zip(out["keeps"], out["n_past"]):
        assert keep == pytest.approx(min(1.0, 150 / n_past)) and keep < 1.0
    assert out["equal_masked"] == [True] * 3
    assert out["equal_unmasked"] != [True] * 3


PROBE_ENABLE = r"""
import dataclasses, json, sys
from audiokv_edge.native import libs
llama_cpp = libs.load_llama_cpp()
import audiokv_edge
model, prompt = sys.argv[1:3]
out = {}
for name, options in (("budget", dict(keep=0.5, kv_budget=20)), ("keep-wins", dict(keep=0.2, kv_budget=500))):
    llm = llama_cpp.Llama(model_path=model, n_ctx=256, n_threads=1, verbose=False)
    ev = audiokv_edge.enable(llm, method="snapkv", **options)
    text = llm(prompt, max_tokens=4, temperature=0.0)["choices"][0]["text"]
    out[name] = dict(dataclasses.asdict(ev.last), text=text)
    llm.close()
P = out["budget"]["prompt_tokens"]
llm = llama_cpp.Llama(model_path=model, n_ctx=256, n_threads=1, verbose=False)
ev = audiokv_edge.enable(llm, method="snapkv", keep=20 / P)
text = llm(prompt, max_tokens=4, temperature=0.0)["choices"][0]["text"]
out["same-keep"] = dict(dataclasses.asdict(ev.last), text=text)
llm.close()
print(json.dumps(out))
"""


@pytest.mark.native
def test_enable_takes_the_budget(text_model):
    """enable(llm, kv_budget=20): the prompt is planned at keep 20 / P, as enable(keep=20 / P) plans it (same kept
    bytes, same greedy text); a larger budget leaves keep in charge."""
    prompt = "Transcribe the audio. What is said in this recording? " * 3
    proc = subprocess.run([sys.executable, "-c", PROBE_ENABLE, str(text_model), prompt], capture_output=True,
                          text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    budget, same, keep_wins = out["budget"], out["same-keep"], out["keep-wins"]
    assert budget["prompt_tokens"] > 40
    assert budget["keep_effective"] == pytest.approx(20 / budget["prompt_tokens"])
    assert budget["kv_bytes_kept"] == same["kv_bytes_kept"] and budget["text"] == same["text"]
    assert same["keep_effective"] == pytest.approx(20 / budget["prompt_tokens"])
    assert keep_wins["keep_effective"] == 0.2
