"""``python -m audiokv_edge.run`` as a subprocess: end-to-end runs on tiny models of several architectures with
real speech, the JSON record, the built-in default, and bad input (one-line error, non-zero exit, no traceback)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiokv_edge.methods import METHODS
from audiokv_edge.runtime.session import stacked_projector_problem
from audiokv_edge.testing.tiny_models import TINY_PAIRS, AudioProjectorSpec, write_audio_projector, write_tiny_pair
from tests.audio_cases import BAD_AUDIO_CASES
from tests.evict_fixtures import child_env, run_python

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "audiokv_edge" / "data"
JFK = DATA / "jfk.wav"
JSON_FIELDS = {"text", "audio_seconds", "audio_tokens", "method", "keep", "kv_bytes_full", "kv_bytes_kept",
               "prefill_tokens_per_s", "decode_tokens_per_s", "evict_ms", "peak_rss_bytes"}


def run_cli(*args: str, env_extra: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_python("-m", "audiokv_edge.run", *args, timeout=timeout, env=child_env(**(env_extra or {})))


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode not in (0, None) and proc.returncode > 0, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("audiokv-run: error: "), lines[0]
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    return {name: write_tiny_pair(out, name) for name in TINY_PAIRS}


# --- bad arguments: no native code involved ----------------------------------------------------------------------


@pytest.mark.parametrize("keep", ["0", "-1", "1.5", "abc", "nan"])
def test_bad_keep(keep):
    assert_one_line_error(run_cli("m.gguf", str(JFK), "--keep", keep), "--keep", "(0, 1]")


def test_unknown_method():
    assert_one_line_error(run_cli("m.gguf", str(JFK), "--method", "magic"), "--method", "magic")


def test_sss_scope_choices_and_method():
    assert_one_line_error(run_cli("m.gguf", str(JFK), "--sss-scope", "text"), "--sss-scope", "text")
    assert_one_line_error(run_cli("m.gguf", str(JFK), "--method", "snapkv", "--sss-scope", "audio"),
                          "sss_scope", "audiokv")


def test_missing_model(tmp_path):
    assert_one_line_error(run_cli(str(tmp_path / "nope.gguf"), str(JFK)), "model file not found")


def test_model_that_is_not_gguf(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 definitely not a gguf" * 10)
    assert_one_line_error(run_cli(str(fake), str(JFK)), "not a GGUF file")


def test_model_without_audio_projector(tmp_path, tiny):
    lonely = tmp_path / "alone"
    lonely.mkdir()
    shutil.copy(tiny["qwen2-qwen2a"][0], lonely / "model.gguf")
    assert_one_line_error(run_cli(str(lonely / "model.gguf"), str(JFK)), "no audio projector", "--mmproj")


def test_model_given_without_audio():
    assert_one_line_error(run_cli("m.gguf"), "AUDIO")


@pytest.mark.parametrize("make,needle", BAD_AUDIO_CASES)
def test_bad_audio(tmp_path, tiny, make, needle):
    audio = tmp_path / "bad.wav"
    make(audio)
    model, _ = tiny["qwen2-qwen2a"]
    assert_one_line_error(run_cli(str(model), str(audio), "--method", "full"), needle)


# --- with the native build ------------------------------------------------------------------------------------------


@pytest.mark.native
def test_projector_of_another_model(tmp_path, tiny):
    model, _ = tiny["qwen2-qwen2a"]
    other = tmp_path / "mmproj-other.gguf"
    write_audio_projector(other, AudioProjectorSpec("qwen2a"), n_embd_text=96)
    proc = run_cli(str(model), str(JFK), "--mmproj", str(other), "--method", "full")
    assert_one_line_error(proc, "does not fit", "n_embd")


@pytest.mark.native
def test_audio_longer_than_context(tiny):
    model, _ = tiny["qwen2-qwen2a"]
    proc = run_cli(str(model), str(JFK), "--method", "full", "--ctx", "256")
    assert_one_line_error(proc, "--stream", "--ctx", "750 audio tokens")


#: The tiny pairs libmtmd can encode (voxtral's stack factor 4 is refused: test_projector_that_would_abort...).
RUNNABLE_PAIRS = sorted(name for name, pair in TINY_PAIRS.items()
                        if not stacked_projector_problem(pair.audio.projector, pair.audio.stack_factor))


@pytest.mark.native
@pytest.mark.parametrize("name", RUNNABLE_PAIRS)
def test_end_to_end_full_json(tiny, name):
    model, mmproj = tiny[name]
    proc = run_cli(str(model), str(JFK), "--mmproj", str(mmproj), "--method", "full", "--max-tokens", "6",
                   "--threads", "2", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert JSON_FIELDS <= set(record)
    assert record["method"] == "full" and record["eviction_applied"] is True
    assert record["audio_seconds"] == pytest.approx(11.0)
    assert record["audio_tokens"] > 0 and record["prompt_tokens"] > record["audio_tokens"]
    assert 0 <= record["generated_tokens"] <= 6 and isinstance(record["text"], str)
    assert record["kv_bytes_full"] > 0
    assert abs(record["kv_bytes_kept"] / record["kv_bytes_full"] - record["keep"]) <= 0.05 * record["keep"]
    assert record["prefill_tokens_per_s"] > 0 and record["peak_rss_bytes"] > 0
    assert "kv cache" in proc.stderr  # statistics on stderr


#: Projectors whose published text model has no tiny writer here, each with its audio tokens for n samples at
#: 16 kHz: parakeet (Nemotron Nano VL: nemotron_h, hybrid Mamba2 + attention; its eviction: test_evict_families.py,
#: nemotron_h) and dots3note_a (dots3-note: MLA + iSWA + MoE, no eviction test). The qwen2 text model of the
#: qwen2-qwen2a pair stands in.
STAND_IN_PROJECTORS = {
    "parakeet": (AudioProjectorSpec("parakeet", n_conv=8, conv_kernel=9), lambda n: -(-(n // 160 + 1) // 8)),
    "dots3note_a": (AudioProjectorSpec("dots3note_a", n_conv=8), lambda n: -(-(n // 160) // 8)),  # one 60 s chunk
}


@pytest.mark.native
@pytest.mark.parametrize("projector", sorted(STAND_IN_PROJECTORS))
def test_stand_in_text_model_full_run(tmp_path, tiny, projector):
    """The projector encodes the 11 s clip through the runner at full cache, with the token count its spec gives."""
    spec, tokens = STAND_IN_PROJECTORS[projector]
    model, _ = tiny["qwen2-qwen2a"]
    mmproj = tmp_path / f"mmproj-{projector}.gguf"
    write_audio_projector(mmproj, spec, TINY_PAIRS["qwen2-qwen2a"].text.n_embd)
    proc = run_cli(str(model), str(JFK), "--mmproj", str(mmproj), "--method", "full", "--max-tokens", "6",
                   "--threads", "2", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["audio_tokens"] == tokens(round(record["audio_seconds"] * 16000))
    assert record["prompt_tokens"] > record["audio_tokens"] and 0 <= record["generated_tokens"] <= 6
    assert record["kv_bytes_kept"] == record["kv_bytes_full"] > 0


@pytest.mark.native
def test_text_streams_to_stdout_and_stats_to_stderr(tiny):
    model, _ = tiny["llama-ultravox"]
    proc = run_cli(str(model), str(DATA / "jfk.mp3"), "--method", "full", "--max-tokens", "5", "--threads", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.endswith("\n") and "{" not in proc.stdout[:1]
    assert "audio: 11." in proc.stderr and "prefill:" in proc.stderr and "peak RSS" in proc.stderr
    assert "part2_3_length" not in proc.stderr  # libmpg123 is not restarted between the blocks it decodes
    quiet = run_cli(str(model), str(DATA / "jfk.mp3"), "--method", "full", "--max-tokens", "5", "--quiet")
    assert quiet.returncode == 0 and quiet.stderr.strip() == "" and quiet.stdout == proc.stdout


def _assert_evicted_to_keep(proc: subprocess.CompletedProcess, method: str, keep: float = 0.4) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert JSON_FIELDS <= set(record) and record["method"] == method
    assert record["eviction_applied"] is True
    ratio = record["kv_bytes_kept"] / record["kv_bytes_full"]
    if method == "full":
        assert record["keep"] == 1.0 and ratio == 1.0
    else:
        assert record["keep"] == keep and abs(ratio - keep) <= 0.05 * keep, ratio
        assert record["evict_ms"] > 0
    return record


@pytest.mark.native
@pytest.mark.parametrize("name", ["qwen3-qwen2a", "gemma3-qwen2a"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_evicts_to_keep(tiny, name, method):
    """Every registered method runs through llama.cpp's per-head eviction (COMPACT) with libaudiokv's C callback: the
    kept KV bytes are within 5% of keep (gemma3: over its full-attention layers, the SWA layers being bounded by
    their window)."""
    model, _ = tiny[name]
    proc = run_cli(str(model), str(DATA / "arctic_a0007.wav"), "--method", method, "--keep", "0.4",
                   "--max-tokens", "3", "--threads", "2", "--json")
    _assert_evicted_to_keep(proc, method)


@pytest.mark.native
@pytest.mark.parametrize("name,options", [("qwen3-qwen2a", ("--kv-type", "q8_0")),          # q8_0 keys: ggml to_float
                                          ("gemma3-qwen2a", ("--flash-attn",)),              # f16, flash attention
                                          ("gemma3-qwen2a", ("--kv-type", "q8_0", "--flash-attn"))],
                         ids=["qwen3-q8_0", "gemma3-f16-fa", "gemma3-q8_0-fa"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_evicts_q8_0_and_flash_attention(tiny, name, options, method):
    """q8_0 K/V caches (keys read through ggml's to_float in the C callback) and flash attention on: every method
    evicts to keep."""
    model, _ = tiny[name]
    proc = run_cli(str(model), str(DATA / "arctic_a0007.wav"), "--method", method, "--keep", "0.4",
                   "--max-tokens", "3", "--threads", "2", "--json", *options)
    record = _assert_evicted_to_keep(proc, method)
    assert record["kv_type"] == (options[1] if options[0] == "--kv-type" else "f16")
    assert record["flash_attn"] is True


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """100 s of real speech (jfk.wav tiled): four 30 s audio chunks."""
    speech, rate = sf.read(JFK, dtype="float32")
    path = tmp_path_factory.mktemp("long") / "speech_100s.flac"
    sf.write(path, np.tile(speech, 10)[: 100 * rate], rate)
    return path


@pytest.mark.native
@pytest.mark.parametrize("method", ["audiokv", pytest.param("snapkv", marks=pytest.mark.slow),
                                    pytest.param("adakv", marks=pytest.mark.slow),
                                    pytest.param("streamingllm", marks=pytest.mark.slow)])
def test_stream_runs_audio_longer_than_the_context(tiny, long_clip, method):
    """--stream evicts after every audio chunk (a ragged cache re-planned by the C callback): 100 s of speech (3,000
    audio tokens) run in a 1,024-token context, which without --stream is refused; kept bytes within 5% of keep."""
    model, _ = tiny["qwen2-qwen2a"]
    refused = run_cli(str(model), str(long_clip), "--method", method, "--ctx", "1024", "--max-tokens", "4")
    errors = [line for line in refused.stderr.splitlines() if line.startswith("audiokv-run: error: ")]
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert len(errors) == 1 and "--stream" in errors[0] and "3000 audio tokens" in errors[0], refused.stderr
    proc = run_cli(str(model), str(long_clip), "--method", method, "--keep", "0.4", "--stream", "--ctx", "1024",
                   "--max-tokens", "4", "--threads", "2", "--json")
    record = _assert_evicted_to_keep(proc, method)
    assert record["audio_tokens"] == 3000 and record["stream"] is True


@pytest.mark.native
@pytest.mark.parametrize("options", [(), ("--flash-attn", "--kv-type", "q8_0")], ids=["f16", "q8_0-fa"])
def test_gemma4_audiokv_stream(tiny, long_clip, options):
    """Gemma 4 (tiny, E2B layout: layers sharing another layer's KV, iSWA) + its gemma4a conformer: AudioKV at keep
    0.4 with --stream (eviction after each 30 s audio chunk and after the question): 100 s of speech (2,500 audio
    tokens in four chunks) in a 1,024-token context; kept bytes within 5% of keep (over the layers owning KV)."""
    model, mmproj = tiny["gemma4-gemma4a"]
    proc = run_cli(str(model), str(long_clip), "--mmproj", str(mmproj), "--method", "audiokv", "--keep", "0.4",
                   "--stream", "--ctx", "1024", "--max-tokens", "4", "--threads", "2", "--json", *options)
    record = _assert_evicted_to_keep(proc, "audiokv")
    assert record["audio_tokens"] == 2500 and record["stream"] is True


@pytest.mark.native
@pytest.mark.parametrize("stream", [False, True], ids=["once", "stream"])
def test_soft_capping_model_is_refused_in_one_line(tiny, stream):
    """Gemma 2 (MERaLiON-2's text model) soft-caps its attention logits, which the per-head pools do not: AudioKV
    is refused with one error line naming the reason (llama.cpp's), never a crash."""
    model, mmproj = tiny["gemma2-meralion"]
    proc = run_cli(str(model), str(JFK), "--mmproj", str(mmproj), "--method", "audiokv", "--max-tokens", "2",
                   "--threads", "2", *(["--stream"] if stream else []))
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and ": WARNING: " not in ln]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("audiokv-run: error: "), proc.stderr
    for needle in ("LLAMA_KV_EVICT_ERR_UNSUPPORTED", "soft-capping", "--method full"):
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.native
def test_stream_with_sss_restricted_to_the_audio(tiny, long_clip):
    """--sss-scope audio with --stream: the evictions restrict SSS to the audio chunks (their plans:
    tests/test_sss_audio_spans.py) and still keep keep x the positions."""
    model, _ = tiny["qwen2-qwen2a"]
    proc = run_cli(str(model), str(long_clip), "--sss-scope", "audio", "--keep", "0.4", "--stream", "--ctx", "1024",
                   "--max-tokens", "4", "--threads", "2", "--json")
    record = _assert_evicted_to_keep(proc, "audiokv")
    assert record["sss_scope"] == "audio" and record["stream"] is True


@pytest.mark.native
def test_stream_context_too_small_for_one_chunk(tiny, long_clip):
    model, _ = tiny["qwen2-qwen2a"]
    proc = run_cli(str(model), str(long_clip), "--method", "snapkv", "--stream", "--ctx", "512")
    assert_one_line_error(proc, "--stream", "--ctx", "largest audio chunk")


@pytest.mark.native
def test_builtin_default_without_arguments(tmp_path):
    """Without an assembled demo model the tiny random-weight model stands in, and says so; with one audio argument
    the built-in model runs on it; a lone MODEL.gguf is a usage error."""
    env = {"AUDIOKV_EDGE_CACHE": str(tmp_path), "AUDIOKV_EDGE_DEMO_DIR": str(tmp_path / "no-demo")}
    proc = run_cli("--max-tokens", "4", env_extra=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TINY RANDOM-WEIGHT TEST MODEL" in proc.stderr and "jfk.wav" in proc.stderr
    assert (tmp_path / "tiny-models" / "qwen2-qwen2a" / "model.gguf").is_file()
    proc = run_cli(str(REPO / "audiokv_edge" / "data" / "arctic_a0007.wav"), "--max-tokens", "4", "--json",
                   env_extra=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "arctic_a0007.wav" in proc.stderr and json.loads(proc.stdout)["audio_tokens"] == 750
    assert_one_line_error(run_cli(str(tmp_path / "tiny-models" / "qwen2-qwen2a" / "model.gguf"), env_extra=env),
                          "give AUDIO after MODEL.gguf")


def test_projector_without_an_audio_graph_is_refused(tmp_path, tiny):
    """Gemma 3n's audio projector (gemma3na): this libmtmd names the type but has no audio graph for it (its
    mtmd_init_from_file fails with "unexpected audio projector type"): one error line naming it."""
    import gguf

    model, _ = tiny["qwen2-qwen2a"]
    bad = tmp_path / "mmproj-gemma3na.gguf"
    w = gguf.GGUFWriter(str(bad), "clip")
    w.add_bool("clip.has_audio_encoder", True)
    w.add_string("clip.projector_type", "gemma3na")
    w.add_tensor("a.blk.0.attn_out.weight", np.zeros((64, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert_one_line_error(run_cli(str(model), str(JFK), "--mmproj", str(bad), "--method", "full"),
                          "gemma3na", "not supported")


@pytest.mark.parametrize("projector,stack", [("ultravox", 8), ("voxtral", 4)])
def test_projector_that_would_abort_libmtmd_is_refused(tmp_path, tiny, projector, stack):
    """Ultravox v0.5 (stack 8) and Voxtral (stack 4) make this llama.cpp's clip.cpp abort while encoding (it
    announces one token fewer per chunk than its graph produces): refused with a clear error instead of a crash."""
    model, _ = tiny["llama-ultravox"]
    bad = tmp_path / "mmproj-stacked.gguf"
    write_audio_projector(bad, AudioProjectorSpec(projector, stack_factor=stack), n_embd_text=64)
    assert_one_line_error(run_cli(str(model), str(JFK), "--mmproj", str(bad), "--method", "full"),
                          f"stack factor {stack}", "abort")


@pytest.mark.native
@pytest.mark.slow
def test_five_minutes_of_speech_end_to_end(tmp_path, tiny):
    """300 s of real speech (jfk.wav repeated) through encoding, prefill, eviction and decoding; the token count is
    the qwen3a spec's (tests/test_audio_tokens.py)."""
    speech, rate = sf.read(JFK, dtype="float32")
    long = np.tile(speech, 300 // 11 + 1)[: 300 * rate]
    path = tmp_path / "five_minutes.flac"
    sf.write(path, long, rate)
    model, _ = tiny["qwen3-qwen3a"]
    proc = run_cli(str(model), str(path), "--method", "audiokv", "--max-tokens", "4", "--threads", "2", "--json",
                   timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["audio_seconds"] == pytest.approx(300.0) and record["audio_tokens"] == 3913
    assert record["eviction_applied"] is True and abs(record["kv_bytes_kept"] / record["kv_bytes_full"] - 0.4) < 0.02


@pytest.fixture(scope="module")
def smollm2_with_tiny_projector(tmp_path_factory):
    """A real quantized LLM (SmolLM2-135M-Instruct Q4_1, llama arch, 30 layers, 3 KV heads) with a random qwen2a
    projector of its width: real decoding cost and real chat template, meaningless audio understanding."""
    from audiokv_edge.testing import real_models

    directory = tmp_path_factory.mktemp("smollm2")
    mmproj = directory / "mmproj-tiny-qwen2a.gguf"
    write_audio_projector(mmproj, AudioProjectorSpec("qwen2a"), n_embd_text=576)
    return real_models.smollm2_q4_1_path(), mmproj


def _real_llm_record(model_and_mmproj, method: str) -> dict:
    """The JSON record of 8 tokens answered about jfk.wav by the real LLM with ``method``."""
    model, mmproj = model_and_mmproj
    proc = run_cli(str(model), str(JFK), "--mmproj", str(mmproj), "--method", method, "--max-tokens", "8",
                   "--threads", "2", "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.native
@pytest.mark.slow
def test_real_llm_full_cache(smollm2_with_tiny_projector):
    record = _real_llm_record(smollm2_with_tiny_projector, "full")
    assert record["audio_tokens"] == 750 and record["generated_tokens"] > 0 and record["text"].strip()


@pytest.mark.native
@pytest.mark.slow
def test_real_llm_evicts(smollm2_with_tiny_projector):
    record = _real_llm_record(smollm2_with_tiny_projector, "audiokv")
    assert record["eviction_applied"] is True and abs(record["kv_bytes_kept"] / record["kv_bytes_full"] - 0.4) < 0.02
