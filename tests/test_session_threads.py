"""Two Sessions answering at once in two threads, each evicting (audiokv, keep 0.4): each answer, and each
eviction record, equals what that Session gives alone; no crash, no cross-talk between the two contexts' eviction
callbacks (their state is per context: llama.cpp passes each context's own user data to libaudiokv's callback).
A Session's error message quotes the native error lines of its own thread, never those of a Session failing in
another thread at the same time.

The two Sessions load different tiny models (other architectures, other weights), so that a plan, a cache or a
callback state of one context reaching the other would change its tokens.
"""

from __future__ import annotations

import logging
import struct
import threading
from pathlib import Path

import pytest

from audiokv_edge.runtime.session import Session, SessionConfig, SessionError
from audiokv_edge.testing.tiny_models import write_tiny_pair

pytestmark = pytest.mark.native

JFK = Path(__file__).resolve().parents[1] / "audiokv_edge" / "data" / "jfk.wav"
PAIRS = ("qwen2-qwen2a", "qwen3-qwen2a")
ROUNDS = 2


def _config(stream: bool) -> SessionConfig:
    # jfk.wav (11 s) is one audio chunk: stream=False evicts once after the prompt, stream=True after every chunk
    return SessionConfig(method="audiokv", keep=0.4, stream=stream, max_tokens=8, ctx=1024, threads=1)


def _result(session: Session) -> tuple:
    answer = session.answer(JFK)
    evictions = [(e["entries_before"], e["entries_after"], e["keep"]) for e in session.last_evictions]
    return answer.text, answer.tokens, evictions


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    d = tmp_path_factory.mktemp("threads")
    return [write_tiny_pair(d / name, name, seed=i) for i, name in enumerate(PAIRS)]


@pytest.mark.parametrize("stream", [False, True], ids=["once", "stream"])
def test_two_sessions_in_two_threads_answer_as_alone(pairs, stream):
    sessions = [Session(model, mmproj, _config(stream)) for model, mmproj in pairs]
    try:
        alone = [_result(s) for s in sessions]
        assert all(evictions for _, _, evictions in alone), alone  # eviction really ran
        assert alone[0][0] != alone[1][0]  # the two models answer differently: cross-talk would show

        barrier = threading.Barrier(2)
        together: list[list] = [[], []]
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                for _ in range(ROUNDS):
                    barrier.wait(timeout=120)  # both answers start together, every round
                    together[i].append(_result(sessions[i]))
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert not errors, errors
        for i in range(2):
            assert together[i] == [alone[i]] * ROUNDS, (PAIRS[i], together[i], alone[i])
    finally:
        for s in sessions:
            s.close()


# Two broken GGUF files that libllama refuses with different last error lines (gguf_init_from_reader's)
BAD_MODELS = {
    "failed to read header": b"GGUF" + struct.pack("<I", 99) + bytes(64),  # version 99
    "failed to read key-value pairs": b"GGUF" + struct.pack("<Iqq", 3, 0, 5) + bytes(8),  # 5 pairs, none there
}


class _PauseThread(logging.Filter):
    """A logger filter (it runs under no handler lock) holding the thread named ``thread`` in its native log
    callback, at the first line containing ``text``, until ``go`` is set: the other thread's whole failed load then
    runs between this thread's error lines and its error message."""

    def __init__(self, thread: str, text: str):
        super().__init__()
        self.thread, self.text, self.go, self.held = thread, text, threading.Event(), False

    def filter(self, record):
        if threading.current_thread().name == self.thread and not self.held and self.text in record.getMessage():
            self.held = True
            self.go.wait(timeout=60)
        return True


def test_error_messages_quote_their_own_threads_native_errors(tmp_path):
    (first, first_bytes), (second, second_bytes) = BAD_MODELS.items()
    paths = {first: tmp_path / "first.gguf", second: tmp_path / "second.gguf"}
    paths[first].write_bytes(first_bytes)
    paths[second].write_bytes(second_bytes)
    native = logging.getLogger("audiokv_edge.native")
    pause = _PauseThread("first", "failed to load model")  # libllama's last line, after the reason
    level = native.level
    native.setLevel(logging.DEBUG)
    native.addFilter(pause)
    messages: dict[str, str] = {}

    def load(reason: str) -> None:
        try:
            Session(paths[reason], None, SessionConfig(ctx=256, threads=1))
        except SessionError as exc:
            messages[reason] = str(exc)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            messages[reason] = repr(exc)
        else:
            messages[reason] = "loaded"

    try:
        t1 = threading.Thread(target=load, args=(first,), name="first")
        t1.start()
        for _ in range(600):  # the first thread has logged its reason and waits in the log callback
            if pause.held or not t1.is_alive():
                break
            t1.join(timeout=0.1)
        assert pause.held, messages
        t2 = threading.Thread(target=load, args=(second,), name="second")
        t2.start()
        t2.join(timeout=120)
        pause.go.set()
        t1.join(timeout=120)
    finally:
        pause.go.set()
        native.removeFilter(pause)
        native.setLevel(level)
    for reason in BAD_MODELS:
        assert messages.get(reason, "").endswith(f"{paths[reason]}: {reason}"), messages
