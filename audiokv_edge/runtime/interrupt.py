"""Stopping a load or an answer part-way: a flag that llama.cpp polls, and :class:`Interrupted` where Python sees it.

A Python exception cannot leave a ctypes callback: ctypes prints "Exception ignored on calling ctypes callback
function" and the C code goes on. And Python runs a signal handler in whatever Python code runs next, which during
``llama_decode`` or a model load is one of llama.cpp's callbacks (its log callback, the abort callback), so Ctrl-C's
default ``KeyboardInterrupt`` is raised there and lost. Hence a :class:`StopFlag`: :meth:`StopFlag.request` (from
``Session.interrupt()``, a signal handler or another thread) only sets it; llama.cpp reads it through the abort
callback of the context (``llama_decode`` then returns 2 after the graph node it is computing) and the progress
callbacks of the model and projector loaders (the load is cancelled); the Session checks it between C calls (audio
chunks, evictions, generated tokens) and raises :class:`Interrupted`.

Usage::

    stop = StopFlag()
    with Session("model.gguf", config=config, stop=stop) as session:   # another thread may call stop.request()
        try:
            session.answer("talk.wav")
        except Interrupted as exc:
            print(exc.stage)                                           # the session stays usable

Not interruptible: one call of the audio encoder (libmtmd has no abort hook; a 30 s chunk finishes first) and one
eviction plan (libaudiokv); the flag is checked right after each.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Iterator

logger = logging.getLogger(__name__)

__all__ = ["Interrupted", "StopFlag", "STAGES"]

#: Where a run can be interrupted (:attr:`Interrupted.stage`).
STAGES = ("loading", "audio", "prefill", "eviction", "decode")


class Interrupted(KeyboardInterrupt):
    """A load or an answer stopped by :meth:`StopFlag.request` (``Session.interrupt()``, Ctrl-C, a signal).

    A ``KeyboardInterrupt``, so that ``except Exception`` does not swallow it and code that stops on Ctrl-C stops on
    it too.

    Parameters
    ----------
    stage : str
        One of :data:`STAGES`: where the flag was seen.
    signum : int or None
        The signal that requested the stop, None for a call of :meth:`StopFlag.request` without one.
    """

    def __init__(self, stage: str, signum: int | None = None) -> None:
        self.stage = stage
        self.signum = signum
        by = f" ({signal.Signals(signum).name})" if signum is not None else ""
        super().__init__(f"interrupted during {stage}{by}")


class StopFlag:
    """A stop request that llama.cpp's callbacks and the Session poll.

    Setting it is one attribute store: safe in a signal handler (no lock a handler could deadlock on) and from any
    thread. A Session clears it when it raises :class:`Interrupted`, so that the next answer runs.
    """

    def __init__(self) -> None:
        self._requested = False
        self.signum: int | None = None
        self._callbacks: dict[str, object] = {}  # the ctypes callback objects, alive as long as the flag

    def request(self, signum: int | None = None) -> None:
        """Ask the running load or answer to stop (the next check raises :class:`Interrupted`)."""
        self.signum = signum
        self._requested = True

    @property
    def requested(self) -> bool:
        return self._requested

    def clear(self) -> None:
        self._requested = False
        self.signum = None

    def raise_if_requested(self, stage: str) -> None:
        """Raise :class:`Interrupted` (and clear the flag) when a stop was requested.

        Parameters
        ----------
        stage : str
            One of :data:`STAGES`.
        """
        if self._requested:
            signum = self.signum
            self.clear()
            logger.debug("interrupted during %s", stage)
            raise Interrupted(stage, signum)

    # ------------------------------------------------------------------ the callbacks llama.cpp polls
    def abort_callback(self, llama_cpp):
        """A ``ggml_abort_callback`` (``llama_set_abort_callback``): true once a stop is requested, which makes
        ``llama_decode`` return 2 after the graph node being computed. Kept alive by the flag."""
        if "abort" not in self._callbacks:
            self._callbacks["abort"] = llama_cpp.ggml_abort_callback(lambda _data: self._requested)
        return self._callbacks["abort"]

    def progress_callback(self, callback_type):
        """A ``llama_progress_callback`` or ``mtmd_progress_callback`` (``callback_type``, the bindings' ctypes
        type) for a loader: false once a stop is requested, which cancels the load. Kept alive by the flag."""
        key = f"progress:{callback_type.__name__}"
        if key not in self._callbacks:
            self._callbacks[key] = callback_type(lambda _progress, _data: not self._requested)
        return self._callbacks[key]

    # ------------------------------------------------------------------ Ctrl-C while C code runs
    @contextlib.contextmanager
    def sigint_requests_stop(self) -> Iterator[None]:
        """While C code runs: turn Ctrl-C into :meth:`request` instead of a ``KeyboardInterrupt`` that a ctypes
        callback would swallow.

        Only on the main thread, and only while Python's default SIGINT handler is installed (a program's own
        handler, e.g. the runner's, is left alone); restored on exit.
        """
        if (threading.current_thread() is not threading.main_thread()
                or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
            yield
            return
        signal.signal(signal.SIGINT, lambda signum, _frame: self.request(signum))
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
