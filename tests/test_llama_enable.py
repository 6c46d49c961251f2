"""``audiokv_edge.enable(llm, ...)`` on a ``llama_cpp.Llama`` (audiokv_edge/runtime/llama_hook.py).

Greedy output of an enabled Llama == the Session's eviction machinery on the same text prompt (the low-level path:
LlamaModel + one context + KVEvictor after the prompt + llama.cpp's greedy sampler, as a Session drives it),
for flash attention on / off, f32 / f16 / q8_0 caches, offload_kqv off, a GQA and an iSWA model, several methods;
``method="full"`` == a plain Llama. The statistics report the KV bytes kept vs full. A repeated prompt is decoded from
an empty cache again (no prefix reuse of an evicted cache) and llama.cpp logs no refused removal. A recurrent model
(Mamba), an unpatched libllama and misuse give one clear error each.

Each probe runs in a child process so that a native abort fails the test instead of killing pytest.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from audiokv_edge.runtime.llama_hook import EvictionConfig, enable
from tests.evict_fixtures import child_env, run_python

N_TOKENS = 16

PROBE = r"""
import dataclasses, json, logging, sys
from audiokv_edge.native import libs
llama_cpp = libs.load_llama_cpp()
lc = llama_cpp.llama_cpp
import audiokv_edge
from audiokv_edge.runtime.kv_eviction import KVEvictor, choose_keep
from audiokv_edge.runtime.llama import ContextParams, LlamaModel

PROMPT = "Transcribe the audio. What is said in this recording? " * 3
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")  # enable()'s log on stderr
models, cases, n = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])


def llama(case):
    kw = dict(n_ctx=256, n_threads=1, n_threads_batch=1, flash_attn=case["flash_attn"], verbose=False)
    if case.get("type") is not None:
        kw.update(type_k=case["type"], type_v=case["type"])
    if "offload_kqv" in case:
        kw["offload_kqv"] = case["offload_kqv"]
    return llama_cpp.Llama(model_path=models[case["arch"]], **kw)


def greedy(llm, tokens):
    out = []
    for t in llm.generate(tokens, temp=0.0, repeat_penalty=1.0):
        out.append(int(t))
        if len(out) == n:
            break
    return out


def reference(case, tokens):
    # the Session's path: one context, the prompt decoded, KVEvictor.evict, llama.cpp's greedy sampler
    path = models[case["arch"]]
    m = LlamaModel(path)
    ctx = m.new_context(ContextParams(n_ctx=256, n_batch=256, n_threads=1, flash_attn=case["flash_attn"],
                                      type_k=case.get("type"), type_v=case.get("type")))
    evictor, record = None, None
    if case["method"] != "full":
        evictor = KVEvictor(m.model, ctx, method=case["method"], keep=choose_keep(path, case["method"], case["keep"]),
                            n_threads=1, n_ctx=int(lc.llama_n_ctx(ctx)), n_headroom=256, label=path)
    arr = (lc.llama_token * len(tokens))(*tokens)
    assert lc.llama_decode(ctx, lc.llama_batch_get_one(arr, len(tokens))) == 0
    if evictor is not None:
        record = dataclasses.asdict(evictor.evict(len(tokens)))
    smpl = lc.llama_sampler_init_greedy()
    one, out = (lc.llama_token * 1)(), []
    for _ in range(n):
        out.append(int(lc.llama_sampler_sample(smpl, ctx, -1)))
        one[0] = out[-1]
        assert lc.llama_decode(ctx, lc.llama_batch_get_one(one, 1)) == 0
    lc.llama_sampler_free(smpl)
    m.close()
    if evictor is not None:
        evictor.close()
    return out, record


results = []
for case in cases:
    llm = llama(case)
    tokens = llm.tokenize(PROMPT.encode())
    ev = audiokv_edge.enable(llm, method=case["method"], keep=case["keep"])
    first = greedy(llm, tokens)
    first_stats = dataclasses.asdict(ev.last)
    again = greedy(llm, tokens)
    text = llm(PROMPT, max_tokens=4, temperature=0.0)["choices"][0]["text"]
    out = {"case": case, "llama": first, "again": again, "stats": first_stats, "n_prompts": ev.n_prompts,
           "keep": ev.keep, "keep_source": ev.keep_source, "settings": ev.settings, "prompt_tokens": len(tokens),
           "text": text, "offload_kqv": bool(llm.context_params.offload_kqv)}
    llm.close()
    out["reference"], out["record"] = reference(case, tokens)
    if case["method"] == "full":
        plain = llama(case)
        out["plain"], out["plain_again"] = greedy(plain, tokens), greedy(plain, tokens)
        plain.close()
    results.append(out)
print(json.dumps(results))
"""


def run_probe(code: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_python("-c", code, *args, timeout=timeout)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from audiokv_edge.testing import tiny_models as tm

    directory = tmp_path_factory.mktemp("enable_models")
    specs = {
        "qwen2": tm.TextModelSpec("qwen2", tm.CHATML, n_embd=128, n_head=4, n_head_kv=2, head_dim=32),
        # head_dim 64: a q8_0 K cache is Hadamard-rotated (attn_rot_k), and so are the captured queries
        "qwen3": tm.TextModelSpec("qwen3", tm.CHATML, n_head=4, n_head_kv=2, head_dim=64),
        "gemma3": tm.TextModelSpec("gemma3", tm.GEMMA, n_head=4, n_head_kv=2, head_dim=32, sliding_window=16),
    }
    paths = {}
    for name, spec in specs.items():
        paths[name] = str(directory / f"{name}.gguf")
        tm.write_text_model(paths[name], spec, seed=3)
    return paths


GGML_F32, GGML_Q8_0 = 0, 8

CASES = [
    {"arch": "qwen2", "flash_attn": False, "type": None, "method": "audiokv", "keep": 0.4},
    {"arch": "qwen2", "flash_attn": True, "type": None, "method": "audiokv", "keep": 0.4},
    {"arch": "qwen2", "flash_attn": False, "type": GGML_F32, "method": "snapkv", "keep": 0.5},
    {"arch": "qwen2", "flash_attn": True, "type": None, "method": "h2o", "keep": 0.3, "offload_kqv": False},
    {"arch": "qwen3", "flash_attn": True, "type": GGML_Q8_0, "method": "audiokv", "keep": 0.4},
    {"arch": "gemma3", "flash_attn": True, "type": None, "method": "pyramidkv", "keep": 0.4},
    {"arch": "qwen2", "flash_attn": False, "type": None, "method": "full", "keep": None},
    {"arch": "qwen3", "flash_attn": True, "type": GGML_Q8_0, "method": "full", "keep": None},
]


@pytest.fixture(scope="module")
def probe(models):
    proc = run_probe(PROBE, json.dumps(models), json.dumps(CASES), str(N_TOKENS))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def _case_id(case: dict) -> str:
    fa = "fa" if case["flash_attn"] else "nofa"
    kv = {None: "f16", GGML_F32: "f32", GGML_Q8_0: "q8_0"}[case["type"]]
    extra = "-no-offload" if case.get("offload_kqv") is False else ""
    return f"{case['arch']}-{case['method']}-{fa}-{kv}{extra}"


@pytest.mark.native
@pytest.mark.parametrize("index", range(len(CASES)), ids=[_case_id(c) for c in CASES])
def test_greedy_output_equals_the_session_path(probe, index):
    out = probe[0][index]
    assert len(out["llama"]) == N_TOKENS
    assert out["llama"] == out["reference"], out["case"]
    assert out["again"] == out["llama"], "the same prompt again must give the same answer"
    assert out["n_prompts"] == 3  # two generate() calls and one completion


@pytest.mark.native
@pytest.mark.parametrize("index", [i for i, c in enumerate(CASES) if c["method"] != "full"],
                         ids=[_case_id(c) for c in CASES if c["method"] != "full"])
def test_stats_report_kv_bytes_kept_vs_full(probe, index):
    out = probe[0][index]
    stats, record, case = out["stats"], out["record"], out["case"]
    assert stats["prompt_tokens"] == out["prompt_tokens"]
    assert stats["kv_bytes_kept"] == record["bytes_kept_after"]  # llama.cpp's own count of the kept K + V bytes
    assert stats["kv_bytes_kept"] < stats["kv_bytes_full"]
    assert out["keep"] == case["keep"] and out["keep_source"] == "config"
    assert out["settings"]["method"] == case["method"] and out["settings"]["keep"] == case["keep"]
    assert abs(stats["kv_bytes_kept"] / stats["kv_bytes_full"] - case["keep"]) <= 0.05, stats


@pytest.mark.native
@pytest.mark.parametrize("index", [i for i, c in enumerate(CASES) if c["method"] != "full"],
                         ids=[_case_id(c) for c in CASES if c["method"] != "full"])
def test_evicting_keeps_the_kv_cache_in_host_memory(probe, index):
    """enable() re-creates a context made with offload_kqv on (llama_cpp's default) with it off, and says so: on a
    GPU build the KV cache and attention stay in host memory, where the eviction rewrites them (the greedy output of
    the re-created context is test_greedy_output_equals_the_session_path's)."""
    out = probe[0][index]
    assert out["offload_kqv"] is False
    re_created = "offload_kqv" not in out["case"]
    assert ("the KV cache and attention stay in host memory (offload_kqv = False)" in probe[1]) or not re_created


@pytest.mark.native
@pytest.mark.parametrize("index", [i for i, c in enumerate(CASES) if c["method"] == "full"],
                         ids=[_case_id(c) for c in CASES if c["method"] == "full"])
def test_full_is_a_plain_llama(probe, index):
    out = probe[0][index]
    assert out["llama"] == out["plain"] == out["plain_again"] == out["reference"]
    assert out["settings"] is None and out["keep"] == 1.0 and out["keep_source"] == "full"
    assert out["offload_kqv"] is True  # nothing to evict: the context stays as it was made
    assert out["stats"]["kv_bytes_kept"] == out["stats"]["kv_bytes_full"] > 0
    assert out["stats"]["evict_ms"] == 0.0


VERBOSE = r"""
import sys
from audiokv_edge.native import libs
llama_cpp = libs.load_llama_cpp()
import audiokv_edge
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, n_threads=1, verbose=True)  # llama.cpp's log on stderr
audiokv_edge.enable(llm, method="snapkv", keep=0.4)
for _ in range(2):
    llm("Transcribe the audio. What is said in this recording? " * 3, max_tokens=4, temperature=0.0)
"""


@pytest.mark.native
def test_llama_cpp_logs_no_refused_removal(models):
    """Llama.eval removes the positions from n_tokens on before every decode; on an evicted sequence that range holds
    none of its positions, which llama.cpp takes as a no-op (only the removal of held positions is refused)."""
    proc = run_probe(VERBOSE, models["qwen2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "llama_kv_evict" not in proc.stderr and "refused" not in proc.stderr, proc.stderr[-3000:]


# --- errors ----------------------------------------------------------------------------------------------------------

MISUSE = r"""
import json, sys
from audiokv_edge.native import libs
llama_cpp = libs.load_llama_cpp()
import audiokv_edge
from audiokv_edge.runtime.llama_hook import EvictionError
out = {}
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=128, n_threads=1, verbose=False)
llm.set_cache(llama_cpp.LlamaRAMCache())
try:
    audiokv_edge.enable(llm)
except ValueError as exc:
    out["cache"] = str(exc)
llm.set_cache(None)
audiokv_edge.enable(llm, method="snapkv")
try:
    audiokv_edge.enable(llm, method="snapkv")
except ValueError as exc:
    out["twice"] = str(exc)
llm.set_cache(llama_cpp.LlamaRAMCache())
try:
    llm("Transcribe the audio.", max_tokens=2)
except EvictionError as exc:
    out["cache_later"] = str(exc)
print(json.dumps(out))
"""

UNPATCHED = r"""
import sys
import llama_cpp
import audiokv_edge
from audiokv_edge.runtime.llama_hook import EvictionError
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=128, n_threads=1, verbose=False)
try:
    audiokv_edge.enable(llm)
except EvictionError as exc:
    print("ERROR", exc)
"""

RECURRENT = r"""
import sys
from audiokv_edge.native import libs
llama_cpp = libs.load_llama_cpp()
import audiokv_edge
from audiokv_edge.runtime.llama_hook import EvictionUnsupportedError
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=128, n_threads=1, verbose=False)
try:
    audiokv_edge.enable(llm, method="audiokv", keep=0.4)
except EvictionUnsupportedError as exc:
    print("ERROR", exc)
full = audiokv_edge.enable(llm, method="full")   # reports only: the model still runs
print("TEXT", repr(llm("Hello", max_tokens=3, temperature=0.0)["choices"][0]["text"]), full.last.kv_bytes_full > 0)
"""


@pytest.mark.parametrize("bad", [dict(method="magic"), dict(keep=0), dict(keep=1.5), dict(keep=True),
                                 dict(n_headroom=-1)])
def test_bad_options(bad):
    with pytest.raises(ValueError):
        EvictionConfig(**bad)


def test_only_a_llama_can_be_enabled():
    with pytest.raises(ValueError, match="takes a llama_cpp.Llama"):
        enable(object())


@pytest.mark.native
def test_misuse_is_refused(models):
    proc = run_probe(MISUSE, models["qwen2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "prompt cache" in out["cache"] and "set_cache(None)" in out["cache"]
    assert "already enabled" in out["twice"]
    assert "prompt cache" in out["cache_later"]


@pytest.mark.native
def test_an_unpatched_libllama_is_named(models):
    from audiokv_edge.native import libs as native_libs

    unpatched = native_libs.lib_dir() / "unpatched"
    assert (unpatched / native_libs.shared_library_name("llama")).is_file(), "the build has no unpatched libllama"
    proc = run_python("-c", UNPATCHED, models["qwen2"], timeout=120, env=child_env(LLAMA_CPP_LIB_PATH=str(unpatched)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("ERROR ") and "has no llama_kv_evict_init" in line and "unpatched" in line, line


@pytest.mark.native
def test_a_recurrent_model_cannot_evict(tmp_path):
    """A recurrent memory (Mamba) has no KV cache to evict (a hybrid one such as LFM2's evicts its attention layers:
    tests/test_lfm2_hybrid.py)."""
    from test_llama_cpp_own_tests import run_program

    run_program("test-llama-archs", "-a", "^mamba$", "-s", "1", "-o", str(tmp_path))
    model = tmp_path / "mamba-dense.gguf"
    assert model.is_file(), sorted(p.name for p in tmp_path.iterdir())
    proc = run_probe(RECURRENT, str(model))
    assert proc.returncode == 0, proc.stderr[-3000:]
    error = next(line for line in proc.stdout.splitlines() if line.startswith("ERROR "))
    assert "per-head eviction cannot run on" in error and "LLAMA_KV_EVICT_ERR_UNSUPPORTED" in error, error
    assert "memory is recurrent" in error, error
    text = next(line for line in proc.stdout.splitlines() if line.startswith("TEXT "))
    assert text.endswith(" True"), text
