"""audiokv_edge.native.ctypes_binding, the binding code every ctypes module of audiokv_edge/native shares, on this
process's C library: a declaration table is set once per library object, and a library without the probed function
is refused with one line naming the library and the reason."""

from __future__ import annotations

import ctypes
import ctypes.util

import pytest

from audiokv_edge.native.ctypes_binding import LazyBinding, declare


class _ApiMissing(RuntimeError):
    pass


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"))


def test_declare_sets_result_and_argument_types():
    lib = _libc()
    declare(lib, [("strlen", ctypes.c_size_t, [ctypes.c_char_p])])
    assert lib.strlen.restype is ctypes.c_size_t and lib.strlen.argtypes == [ctypes.c_char_p]
    assert lib.strlen(b"audio") == 5
    with pytest.raises(AttributeError):
        declare(lib, [("audiokv_no_such_function", None, [])])


def test_lazy_binding_declares_once_per_library():
    binding = LazyBinding([("labs", ctypes.c_long, [ctypes.c_long])], "labs", _ApiMissing, "unused")
    lib = _libc()
    assert binding.bind(lib) is lib
    assert lib.labs.restype is ctypes.c_long and lib.labs(-3) == 3
    lib.labs.restype = ctypes.c_int              # a second bind of the same library leaves it alone
    binding.bind(lib)
    assert lib.labs.restype is ctypes.c_int
    other = _libc()                              # another library object is bound on its own
    binding.bind(other)
    assert other.labs.restype is ctypes.c_long


def test_lazy_binding_refuses_a_library_without_the_probe():
    lib = _libc()
    binding = LazyBinding([("labs", ctypes.c_long, [ctypes.c_long])], "audiokv_no_such_function", _ApiMissing,
                          "it was built without the patches")
    with pytest.raises(_ApiMissing) as info:
        binding.bind(lib)
    assert str(info.value) == f"{lib._name} has no audiokv_no_such_function: it was built without the patches"
    assert lib.labs.argtypes is None             # nothing declared on a refused library
