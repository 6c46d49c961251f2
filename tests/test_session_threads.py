"""Two Sessions answering at once in two threads, each evicting (audiokv, keep 0.4): each answer, and each
eviction record, equals what that Session gives alone; no crash, no cross-talk between the two contexts' eviction
callbacks (their state is per context: llama.cpp passes each context's own user data to libaudiokv's callback).

The two Sessions load different tiny models (other architectures, other weights), so that a plan, a cache or a
callback state of one context reaching the other would change its tokens.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from audiokv_edge.runtime.session import Session, SessionConfig
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
