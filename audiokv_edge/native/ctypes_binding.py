"""The part every ctypes module of this package shares: a table of C declarations set on a loaded library.

A binding module writes its header as a table of :data:`Declaration` rows, the C declaration as a comment above each
row, and either sets it on a library it loads itself (:func:`declare`) or on a library another package loaded, on
first use and once per library (:class:`LazyBinding`, so that the handles of that package can be passed). Nothing is
loaded at import time.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence

__all__ = ["Declaration", "declare", "LazyBinding", "WITHOUT_PATCHES"]

#: Why a llama.cpp library lacks an API of patches/, for :class:`LazyBinding`'s ``why_missing``.
WITHOUT_PATCHES = "it was built without the patches of patches/ (run scripts/setup.sh)"

#: ``(name, restype, argtypes)`` of one C function.
Declaration = tuple[str, object, list]


def declare(lib: ctypes.CDLL, declarations: Sequence[Declaration]) -> None:
    """Set ``restype`` and ``argtypes`` of every function of ``declarations`` on ``lib``.

    Raises
    ------
    AttributeError
        The library has no function of that name.
    """
    for name, restype, argtypes in declarations:
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


class LazyBinding:
    """Declarations set on a loaded library on first use, once per library object (thread-safe).

    Parameters
    ----------
    declarations : sequence of Declaration
        The functions to declare.
    probe : str
        A function only a library with this API exports; when it is missing, :meth:`bind` raises ``missing_error``.
    missing_error : type of Exception
        Raised as ``missing_error("<library> has no <probe>: <why_missing>")``.
    why_missing : str
        The rest of that message: how the library came to lack the API and what builds one that has it.
    """

    def __init__(self, declarations: Sequence[Declaration], probe: str, missing_error: type[Exception],
                 why_missing: str) -> None:
        self.declarations = list(declarations)
        self.probe = probe
        self.missing_error = missing_error
        self.why_missing = why_missing
        self._lock = threading.Lock()
        self._bound: dict[int, ctypes.CDLL] = {}  # holds the library, so that its id is not reused

    def bind(self, lib: ctypes.CDLL) -> ctypes.CDLL:
        """``lib`` with the declarations set (the first call for this library sets them).

        Raises
        ------
        Exception
            ``missing_error`` when the library has no :attr:`probe` function.
        """
        with self._lock:
            if id(lib) not in self._bound:
                try:
                    getattr(lib, self.probe)
                except AttributeError as exc:
                    raise self.missing_error(
                        f"{getattr(lib, '_name', lib)} has no {self.probe}: {self.why_missing}") from exc
                declare(lib, self.declarations)
                self._bound[id(lib)] = lib
        return lib
