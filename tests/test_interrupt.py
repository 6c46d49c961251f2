"""Interrupting a run: SIGINT / SIGTERM end ``python -m audiokv_edge.run`` at every stage within about a second with
one line on stderr and status 128 + the signal (no traceback, no record); ``Session.interrupt()`` and Ctrl-C stop
an answer with ``Interrupted`` (never swallowed inside a ctypes callback) and the session answers the next prompt
as before."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiokv_edge.runtime.interrupt import STAGES, Interrupted, StopFlag
from audiokv_edge.testing.tiny_models import write_tiny_pair
from tests.evict_fixtures import child_env
from tests.text_fixtures import FILLER, text_model  # noqa: F401 - text_model is a fixture

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "audiokv_edge" / "data"
#: What "about a second" allows on a 2-core machine, interpreter teardown included.
EXIT_WITHIN_S = 2.5


def exit_limit_s() -> float:
    """EXIT_WITHIN_S, stretched by how oversubscribed the CPUs are now (load average / CPUs, at least 1): the run's
    own stop takes a few tokens or one audio chunk, but a starved process also waits for every time slice."""
    return EXIT_WITHIN_S * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


# --- the flag, without native code ----------------------------------------------------------------------------------


def test_flag_raises_once_with_stage_and_signal():
    flag = StopFlag()
    flag.raise_if_requested("decode")  # nothing requested: no-op
    flag.request(signal.SIGTERM)
    with pytest.raises(Interrupted) as info:
        flag.raise_if_requested("prefill")
    assert isinstance(info.value, KeyboardInterrupt)  # `except Exception` does not swallow it
    assert (info.value.stage, info.value.signum) == ("prefill", signal.SIGTERM)
    assert "prefill" in str(info.value) and "SIGTERM" in str(info.value)
    assert not flag.requested
    flag.raise_if_requested("decode")  # cleared: the next answer runs
    assert set(STAGES) == {"loading", "audio", "prefill", "eviction", "decode"}


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler, as in an interactive run (a background job starts with SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_sigint_during_native_work_requests_a_stop_instead_of_raising(python_sigint):
    flag = StopFlag()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with flag.sigint_requests_stop():
        signal.raise_signal(signal.SIGINT)  # the handler runs here; it must not raise
        assert flag.requested and flag.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(Interrupted):
        flag.raise_if_requested("decode")


def test_a_program_handler_is_left_alone():
    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: seen.append(signum))
    try:
        flag = StopFlag()
        with flag.sigint_requests_stop():
            signal.raise_signal(signal.SIGINT)
        assert seen == [signal.SIGINT] and not flag.requested
    finally:
        signal.signal(signal.SIGINT, previous)


# --- the runner as a subprocess ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny model and 100 s of real speech (four 30 s chunks: prefill, evictions with --stream, then decoding)."""
    d = tmp_path_factory.mktemp("interrupt")
    model, _ = write_tiny_pair(d, "qwen2-qwen2a")
    speech, rate = sf.read(DATA / "jfk.wav", dtype="float32")
    audio = d / "speech_100s.flac"
    sf.write(audio, np.tile(speech, 10)[: 100 * rate], rate)
    return model, audio


def _default_signals() -> None:
    """In the child before exec: SIGINT / SIGTERM back to their defaults, as a terminal's foreground job has them
    (a test run started in the background inherits SIGINT ignored, and Python keeps an ignored SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "audiokv_edge.run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=child_env(), preexec_fn=_default_signals)


def _run_args(model: Path, audio: Path, *extra: str) -> list[str]:
    # snapkv: no head-profile warning; --ctx 1024 with --stream: ~1,000 tokens of decoding before the context is full
    return [str(model), str(audio), "--method", "snapkv", "--stream", "--ctx", "1024", "--max-tokens", "5000",
            "--threads", "1", *extra]


def _signal_and_wait(proc: subprocess.Popen, signum: int) -> tuple[str, str, float]:
    proc.send_signal(signum)
    start = time.monotonic()
    out, err = proc.communicate(timeout=60)
    elapsed = time.monotonic() - start
    print(f"exit {elapsed:.3f} s after {signal.Signals(signum).name} (limit {exit_limit_s():.1f} s)")
    return out, err, elapsed


#: stage -> (debug line that announces it, stages where the stop may be seen: a short step ends before the flag is
#: checked, and the next check names the next step)
TRIGGERS = {
    "loading": (r"runtime\.session: loading ", {"loading", "audio", "prefill"}),
    "prefill": (r"runtime\.session: prompt chunk 2/", {"prefill"}),
    "eviction": (r"runtime\.session: evicting: ", {"eviction", "prefill"}),
    "decode": (r"runtime\.session: decoding: ", {"decode"}),
}


@pytest.mark.native
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("stage", list(TRIGGERS))
def test_signal_at_each_stage_ends_the_run(assets, stage, signum):
    """With -v the Session logs each stage: the signal is sent when the stage's line appears. The run stops through
    the flag (the debug line "interrupted during <stage>", not the forced exit), within exit_limit_s(), with status
    128 + signal, one line besides the log, no traceback, no "Exception ignored" from a ctypes callback, no JSON record."""
    pattern, seen_in = TRIGGERS[stage]
    proc = _spawn(*_run_args(*assets, "--json", "-v"))
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if re.search(pattern, line):
            break
    else:
        pytest.fail("the run ended before the stage: " + "".join(lines[-20:]))
    time.sleep(0.05)  # into the stage's C code
    out, err, elapsed = _signal_and_wait(proc, signum)
    err = "".join(lines) + err
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, (proc.returncode, err[-3000:])
    assert elapsed < exit_limit_s(), elapsed
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    # the debug log holds multi-line llama.cpp messages: every line of the runner's own is a log record or the one
    assert err.splitlines()[-1] == f"audiokv-run: interrupted ({name})", err[-2000:]
    own = [line for line in err.splitlines() if line.startswith("audiokv-run: ")
           and not re.match(r"audiokv-run: (DEBUG|INFO): ", line)]
    assert own == [f"audiokv-run: interrupted ({name})"], own
    caught = re.findall(r"interrupt: interrupted during (\w+)", err)
    assert len(caught) == 1 and caught[0] in seen_in, (caught, err[-2000:])
    assert "did not stop in time" not in err
    assert out == ""  # --json: no record of a run cut short
    print(f"{stage} {name}: exit after {elapsed:.3f} s (seen in {caught[0]})")


@pytest.mark.native
def test_ctrl_c_while_text_streams_is_one_line(assets):
    """Without -v: Ctrl-C once the answer streams to stdout gives exactly one line on stderr; the text cut short
    ends with a newline."""
    proc = _spawn(*_run_args(*assets))
    first = proc.stdout.read(1)  # the first generated character: decoding
    assert first, proc.stderr.read()[-2000:]
    out, err, elapsed = _signal_and_wait(proc, signal.SIGINT)
    assert proc.returncode == 130, err[-2000:]
    assert err.splitlines() == ["audiokv-run: interrupted (SIGINT)"], err[-2000:]
    assert (first + out).endswith("\n") and elapsed < exit_limit_s(), elapsed


@pytest.mark.native
def test_sigterm_without_verbose_is_one_line(assets, tmp_path):
    """SIGTERM 3 s into a run on ten minutes of speech (loading or prefill, wherever the machine has got to)."""
    model, speech = assets
    long_speech = tmp_path / "speech_600s.flac"
    samples, rate = sf.read(speech, dtype="float32")
    sf.write(long_speech, np.tile(samples, 6), rate)
    proc = _spawn(*_run_args(model, long_speech, "--json"))
    time.sleep(3.0)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    out, err, elapsed = _signal_and_wait(proc, signal.SIGTERM)
    assert proc.returncode == 143 and out == "", err[-2000:]
    assert err.splitlines() == ["audiokv-run: interrupted (SIGTERM)"], err[-2000:]
    assert elapsed < exit_limit_s(), elapsed


STUCK = r"""
import time
from audiokv_edge.run import SignalStop
from audiokv_edge.runtime.interrupt import StopFlag
SignalStop(StopFlag()).install()
print("ready", flush=True)
while True:  # a step that never checks the flag (as one long call of the audio encoder)
    time.sleep(0.05)
"""


def _spawn_stuck() -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", STUCK], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env=child_env(), preexec_fn=_default_signals)
    assert proc.stdout.readline() == "ready\n", proc.stderr.read()
    return proc


def test_a_run_that_does_not_stop_is_ended():
    """The forced exit: FORCE_EXIT_S after the first signal, with the same line and status."""
    from audiokv_edge.run import FORCE_EXIT_S

    proc = _spawn_stuck()
    out, err, elapsed = _signal_and_wait(proc, signal.SIGTERM)
    assert proc.returncode == 143 and err.splitlines() == ["audiokv-run: interrupted (SIGTERM)"], err
    assert FORCE_EXIT_S <= elapsed < FORCE_EXIT_S + exit_limit_s(), elapsed


def test_a_second_signal_ends_at_once():
    from audiokv_edge.run import FORCE_EXIT_S

    proc = _spawn_stuck()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.1)
    out, err, elapsed = _signal_and_wait(proc, signal.SIGINT)
    assert proc.returncode == 130 and err.splitlines() == ["audiokv-run: interrupted (SIGINT)"], err
    assert elapsed < FORCE_EXIT_S - 0.1 or os.getloadavg()[0] > (os.cpu_count() or 1), elapsed


# --- the Session API ---------------------------------------------------------------------------------------------

PROBE = r"""
import json, os, signal, sys, threading, time
from audiokv_edge.runtime.interrupt import Interrupted
from audiokv_edge.runtime.session import Session, SessionConfig
model, speech_100s, arctic = sys.argv[1:4]
out = {}
cfg = SessionConfig(method="snapkv", keep=0.4, stream=True, max_tokens=600, threads=1, ctx=2048)
with Session(model, config=cfg) as s:
    ref = s.answer(arctic).to_dict()
    out["ref"] = {k: ref[k] for k in ("text", "generated_tokens")}

    def attempt(name, answer):
        try:
            answer()
            out[name] = "completed"
        except Interrupted as exc:
            out[name] = ["Interrupted", exc.stage]
        except KeyboardInterrupt:
            out[name] = ["KeyboardInterrupt", ""]
        again = s.answer(arctic).to_dict()
        out[name + "_then"] = {k: again[k] for k in ("text", "generated_tokens")}

    # from the progress callback, after the first audio chunk: seen before the next chunk
    def progress(done, total):
        if done > 0:
            s.interrupt()
    attempt("progress", lambda: s.answer(speech_100s, progress=progress))

    def from_a_thread_at_token(n, action):  # on_token: action on another thread once n pieces have streamed
        count = []
        def on_token(piece):
            count.append(piece)
            if len(count) == n:
                threading.Thread(target=action).start()
        return on_token

    # from another thread while tokens are decoded
    attempt("thread", lambda: s.answer(arctic, on_token=from_a_thread_at_token(20, s.interrupt)))

    # Ctrl-C (Python's default SIGINT handler) during prefill and decoding: while C code runs it must not be
    # raised inside a ctypes callback (where ctypes would print it and go on)
    def ctrl_c():
        os.kill(os.getpid(), signal.SIGINT)
    def ctrl_c_later():
        time.sleep(0.5)
        ctrl_c()
    threading.Thread(target=ctrl_c_later).start()
    attempt("sigint_prefill", lambda: s.answer(speech_100s))
    attempt("sigint_decode", lambda: s.answer(arctic, on_token=from_a_thread_at_token(20, ctrl_c)))
    out["handler_restored"] = signal.getsignal(signal.SIGINT) is signal.default_int_handler
print(json.dumps(out))
"""


@pytest.mark.native
def test_session_interrupted_then_answers_again(tmp_path, assets):
    """Session.interrupt() from the progress callback (stage prefill) and from another thread (decode), and Ctrl-C
    with Python's default handler during prefill and decoding: each answer stops with Interrupted (a
    KeyboardInterrupt), nothing is printed as "Exception ignored", and the next answer is the same as before."""
    model, speech = assets
    proc = subprocess.run([sys.executable, "-c", PROBE, str(model), str(speech), str(DATA / "arctic_a0007.wav")],
                          capture_output=True, text=True, cwd=REPO, timeout=600, preexec_fn=_default_signals)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ref"]["generated_tokens"] > 100, out["ref"]  # long enough to be interrupted while decoding
    assert out["progress"] == ["Interrupted", "prefill"]
    assert out["thread"] == ["Interrupted", "decode"]
    assert out["sigint_prefill"][0] in ("Interrupted", "KeyboardInterrupt"), out["sigint_prefill"]
    assert out["sigint_decode"][0] in ("Interrupted", "KeyboardInterrupt"), out["sigint_decode"]
    for name in ("progress", "thread", "sigint_prefill", "sigint_decode"):
        assert out[name + "_then"] == out["ref"], name
    assert out["handler_restored"] is True


# --- text documents, follow-ups and enable() ---------------------------------------------------------------------

PROBE_TEXT = r"""
import json, sys
from audiokv_edge.runtime.interrupt import Interrupted
from audiokv_edge.runtime.session import Session, SessionConfig, SessionError
model, filler = sys.argv[1:3]
doc, question, again = filler * 12, "Who walks on the moon?", "And what do they plant?"
out = {}
cfg = SessionConfig(method="snapkv", keep=0.4, stream=True, text_block=64, max_tokens=12, threads=1, ctx=1024)
with Session(model, config=cfg) as s:
    def both():
        a = s.answer_text(doc, question)
        f = s.follow_up(again)
        return [a.text, a.stats.generated_tokens, f.text, f.stats.generated_tokens]
    out["ref"] = both()

    def attempt(name, call):
        try:
            call()
            out[name] = "completed"
        except Interrupted as exc:
            out[name] = ["Interrupted", exc.stage]

    def progress(done, total):   # after the first block of the document
        if done > 0:
            s.interrupt()
    attempt("text_prefill", lambda: s.answer_text(doc, question, progress=progress))
    out["text_prefill_then"] = both()

    def at_token(n):
        count = []
        def on_token(piece):
            count.append(piece)
            if len(count) == n:
                s.interrupt()
        return on_token
    attempt("text_decode", lambda: s.answer_text(doc, question, on_token=at_token(2)))
    out["text_decode_then"] = both()

    s.answer_text(doc, question)
    attempt("follow_up", lambda: s.follow_up(again, on_token=at_token(2)))
    try:
        s.follow_up(again)
        out["follow_up_after"] = "answered"
    except SessionError as exc:
        out["follow_up_after"] = str(exc)
    out["follow_up_then"] = both()
print(json.dumps(out))
"""


@pytest.mark.native
def test_text_answers_and_follow_ups_are_interrupted(text_model):
    """A text document in --stream blocks: Session.interrupt() from the progress callback stops the prefill, from
    on_token the decoding of an answer and of a follow-up; each time the next answer (and its follow-up) is the same
    as before, and an interrupted follow-up leaves no conversation to continue."""
    proc = subprocess.run([sys.executable, "-c", PROBE_TEXT, str(text_model), FILLER], capture_output=True, text=True,
                          cwd=REPO, timeout=600, preexec_fn=_default_signals)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ref"][1] > 2 and out["ref"][3] > 2, out["ref"]  # long enough to be interrupted while decoding
    assert out["text_prefill"] == ["Interrupted", "prefill"]
    assert out["text_decode"] == ["Interrupted", "decode"]
    assert out["follow_up"] == ["Interrupted", "decode"]
    assert "no answer to follow up" in out["follow_up_after"]
    for name in ("text_prefill", "text_decode", "follow_up"):
        assert out[name + "_then"] == out["ref"], name


@pytest.mark.native
def test_sigint_while_a_text_answer_streams(text_model, tmp_path):
    """The runner's --text: SIGINT while the answer decodes gives the one line and status 130."""
    doc = tmp_path / "doc.txt"
    doc.write_text(FILLER * 12)
    proc = _spawn(str(text_model), "--text", str(doc), "--method", "snapkv", "--stream", "--text-block", "64",
                  "--ctx", "1024", "--max-tokens", "5000", "--threads", "1", "--json", "-v")
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if re.search(r"runtime\.session: decoding: ", line):
            break
    else:
        pytest.fail("the run ended before decoding: " + "".join(lines[-20:]))
    time.sleep(0.05)
    out, err, elapsed = _signal_and_wait(proc, signal.SIGINT)
    err = "".join(lines) + err
    assert proc.returncode == 130, (proc.returncode, err[-3000:])
    assert err.splitlines()[-1] == "audiokv-run: interrupted (SIGINT)", err[-2000:]
    assert re.findall(r"interrupt: interrupted during (\w+)", err) == ["decode"], err[-2000:]
    assert "Traceback" not in err and out == "" and elapsed < exit_limit_s(), elapsed


PROBE_ENABLE = r"""
import json, sys
from audiokv_edge.native import libs
llama_cpp = libs.load_llama_cpp()
import audiokv_edge
from audiokv_edge import Interrupted
model, prompt = sys.argv[1:3]
out = {}
llm = llama_cpp.Llama(model_path=model, n_ctx=512, n_threads=1, verbose=False)
eviction = audiokv_edge.enable(llm, method="snapkv", keep=0.4)
def complete(**kw):
    return llm(prompt, max_tokens=12, temperature=0.0, **kw)["choices"][0]["text"]
out["ref"] = complete()

def attempt(name, **kw):
    try:
        complete(**kw)
        out[name] = "completed"
    except Interrupted as exc:
        out[name] = ["Interrupted", exc.stage]
    out[name + "_then"] = complete()

eviction.interrupt()   # before the call: seen at the prompt
attempt("prompt")
count = []
def stop_after_two(ids, logits):   # a stopping criterion called after every sampled token
    count.append(1)
    if len(count) == 2:
        eviction.interrupt()
    return False
attempt("decode", stopping_criteria=llama_cpp.StoppingCriteriaList([stop_after_two]))
out["n_prompts"] = eviction.n_prompts
print(json.dumps(out))
"""


@pytest.mark.native
def test_enable_interrupt(text_model):
    """enable(): LlamaEviction.interrupt() before a completion stops it at the prompt, from a stopping criterion
    while it decodes; both raise Interrupted and the next completion is the same as before."""
    prompt = "Transcribe the audio. What is said in this recording? " * 3
    proc = subprocess.run([sys.executable, "-c", PROBE_ENABLE, str(text_model), prompt], capture_output=True,
                          text=True, cwd=REPO, timeout=600, preexec_fn=_default_signals)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Exception ignored" not in proc.stderr, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["prompt"] == ["Interrupted", "prefill"]
    assert out["decode"] == ["Interrupted", "decode"]
    assert out["prompt_then"] == out["decode_then"] == out["ref"]
    assert out["n_prompts"] == 4  # the reference, the one evicted before decoding was stopped, the two after
