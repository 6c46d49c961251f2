"""Replay one prefilled prompt through many eviction configurations: the prompt's full cache is decoded once, saved
(``llama_state_seq_get_data``), and restored into each configuration's :class:`Session` before its eviction, so that
comparing N methods x keeps costs one prefill instead of N.

Only the last ``tail`` prompt tokens are decoded after the restore: they fill the observation window whose queries
llama.cpp captures for the eviction (``tail`` must be at least the session's ``n_window``), so every method plans on
the same queries as after a whole prefill. The prefix state holds the uncompacted cache, which any session of the
same model can load (loading a state clears the sequence first and leaves it uncompacted, docs/per-head-eviction.md).

Measurements after the eviction are teacher-forced on reference tokens (the full cache's answer): the next-token
log-probabilities at every step, from which the label-free quality (top-1 agreement, KL divergence to the full
cache's distribution, length of the greedy prefix equal to the full cache's) is computed; :func:`greedy` generates
the configuration's own answer.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass

import numpy as np

from audiokv_edge.runtime.llama import LlamaError
from audiokv_edge.runtime.session import Session, SessionError

__all__ = ["PrefixState", "ReplayError", "save_prefix", "replay", "greedy", "compare_logprobs"]

logger = logging.getLogger(__name__)


class ReplayError(SessionError):
    """A prefix state cannot be saved or restored, or the replayed tokens do not fit."""


@dataclass(frozen=True)
class PrefixState:
    """The full (uncompacted) cache of sequence 0 after decoding ``n_tokens`` prompt tokens."""

    n_tokens: int
    blob: bytes


def save_prefix(session: Session, tokens: list[int]) -> PrefixState:
    """Decode ``tokens`` into an empty cache of ``session`` (no eviction) and save sequence 0's state.

    Raises
    ------
    ReplayError
        llama.cpp cannot decode the tokens or returns no state (e.g. a compacted sequence).
    """
    session._check_open()
    session._begin_answer()
    lc = session._lc
    if len(tokens) + 1 > session.n_ctx:
        raise ReplayError(f"a prefix of {len(tokens)} tokens does not fit the context ({session.n_ctx})")
    _decode(session, tokens, 0)
    size = int(lc.llama_state_seq_get_size(session._ctx, 0))
    if size <= 0:
        raise ReplayError("llama.cpp returned no state for sequence 0 (see the log)")
    buf = (ctypes.c_uint8 * size)()
    n = int(lc.llama_state_seq_get_data(session._ctx, buf, size, 0))
    if n <= 0:
        raise ReplayError("llama.cpp could not save the state of sequence 0 (see the log)")
    return PrefixState(n_tokens=len(tokens), blob=bytes(buf[:n]))


def _restore(session: Session, prefix: PrefixState) -> None:
    session._begin_answer()
    lc = session._lc
    buf = (ctypes.c_uint8 * len(prefix.blob)).from_buffer_copy(prefix.blob)
    if int(lc.llama_state_seq_set_data(session._ctx, buf, len(prefix.blob), 0)) == 0:
        raise ReplayError("llama.cpp could not load the saved state into this context (see the log)")


def _decode(session: Session, tokens: list[int], pos0: int, all_logits: bool = False) -> None:
    """Decode ``tokens`` at ``pos0`` on; logits of every token (``all_logits``, one batch) or of the last one."""
    if not tokens:
        return
    if not all_logits:
        try:
            session._llm.decode_tokens(session._ctx, tokens, pos0, session.config.batch)
        except LlamaError as exc:
            raise ReplayError(str(exc)) from None
        return
    lc = session._lc
    batch = lc.llama_batch_init(len(tokens), 0, 1)
    try:
        batch.n_tokens = len(tokens)
        for i, token in enumerate(tokens):
            batch.token[i] = int(token)
            batch.pos[i] = pos0 + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = True
        rc = lc.llama_decode(session._ctx, batch)
        if rc != 0:
            raise ReplayError(f"llama_decode failed at position {pos0} (code {rc})")
    finally:
        lc.llama_batch_free(batch)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max()
    return x - np.log(np.exp(x).sum())


def _logprobs(session: Session, i: int) -> np.ndarray:
    lc = session._lc
    n_vocab = int(lc.llama_vocab_n_tokens(session._vocab))
    ptr = lc.llama_get_logits_ith(session._ctx, i)
    return _log_softmax(np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy())


def _prepare(session: Session, prefix: PrefixState, tail: list[int], between: list[int]) -> tuple[int, dict]:
    """Restore ``prefix``, decode ``tail``, evict (the session's method), decode ``between`` (not evicted).
    Returns the positions decoded and the eviction record (``{}`` for method full)."""
    n_window = (session.evict_settings or {}).get("n_window", 0)
    if session.evict_settings is not None and len(tail) < n_window:
        raise ReplayError(f"the replayed tail ({len(tail)} tokens) is shorter than the observation window "
                          f"({n_window}): the eviction would see other queries than after a whole prefill")
    _restore(session, prefix)
    n_past = prefix.n_tokens
    _decode(session, tail, n_past)
    n_past += len(tail)
    record = {}
    if session._needs_eviction():
        if session.config.sss_scope == "audio":
            session._set_audio_spans([])    # a text prompt holds no audio: no smoothing (as Session's own prefill)
        kept, full, ms = session._evict(n_past)
        record = {"kept_entries": kept, "full_entries": full, "evict_ms": round(ms, 2)}
    _decode(session, between, n_past)
    return n_past + len(between), record


def replay(session: Session, prefix: PrefixState, tail: list[int], forced: list[int], *,
           between: list[int] = ()) -> tuple[np.ndarray, dict]:
    """Next-token log-probabilities of ``session``'s configuration teacher-forced on ``forced``.

    Parameters
    ----------
    session : Session
        The configuration (method, keep); a model of the same GGUF as the one that saved ``prefix``.
    prefix : PrefixState
    tail : list of int
        The prompt's tokens after the prefix (at least the observation window); the eviction follows them.
    forced : list of int
        Reference tokens (e.g. the full cache's answer): row ``i`` of the result is the distribution of token ``i``
        given the prompt and ``forced[:i]``.
    between : list of int
        Tokens decoded after the eviction and before ``forced`` (a follow-up turn), not evicted.

    Returns
    -------
    logprobs : numpy.ndarray
        float64 [len(forced), n_vocab].
    eviction : dict
        kept_entries, full_entries, evict_ms (empty for method full).
    """
    n_past, record = _prepare(session, prefix, tail, list(between))
    rows = [_logprobs(session, -1)]
    if len(forced) > 1:
        _decode(session, list(forced[:-1]), n_past, all_logits=True)
        rows += [_logprobs(session, i) for i in range(len(forced) - 1)]
    return np.stack(rows[:len(forced)]), record


def greedy(session: Session, prefix: PrefixState, tail: list[int], n_tokens: int, *,
           between: list[int] = ()) -> list[int]:
    """The configuration's own greedy answer (at most ``n_tokens``, stops at an end-of-generation token)."""
    n_past, _ = _prepare(session, prefix, tail, list(between))
    lc = session._lc
    out: list[int] = []
    while len(out) < n_tokens:
        token = int(np.argmax(_logprobs(session, -1)))
        if lc.llama_vocab_is_eog(session._vocab, token):
            break
        out.append(token)
        if len(out) < n_tokens:
            _decode(session, [token], n_past)
            n_past += 1
    return out


def compare_logprobs(full: np.ndarray, other: np.ndarray) -> dict:
    """Label-free quality of ``other`` against the full cache on the same teacher-forced tokens.

    Returns
    -------
    dict
        ``top1``: fraction of steps whose most likely token is the full cache's; ``kl``: mean KL(full || other) in
        nats; ``prefix``: steps before the first disagreement of the most likely tokens (= the length of the greedy
        answer equal to the full cache's, when the reference is the full cache's greedy answer); ``steps``.
    """
    if full.shape != other.shape or full.ndim != 2 or not len(full):
        raise ValueError(f"log-probabilities of different shapes: {full.shape} vs {other.shape}")
    agree = np.argmax(full, axis=1) == np.argmax(other, axis=1)
    kl = np.sum(np.exp(full) * (full - other), axis=1)
    first_miss = int(np.argmin(agree)) if not agree.all() else len(agree)
    return {"top1": round(float(agree.mean()), 4), "kl": round(float(np.maximum(kl, 0).mean()), 5),
            "prefix": first_miss, "steps": len(agree)}
