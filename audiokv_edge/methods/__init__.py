"""Keep-plan methods, one per file, registered once in METHODS (name -> method class)."""

from __future__ import annotations

from audiokv_edge.methods.adakv import AdaKV
from audiokv_edge.methods.audiokv import AudioKV
from audiokv_edge.methods.base import KeepMethod, PlanInputs
from audiokv_edge.methods.full import Full
from audiokv_edge.methods.h2o import H2O
from audiokv_edge.methods.pyramidkv import PyramidKV
from audiokv_edge.methods.snapkv import SnapKV
from audiokv_edge.methods.streamingllm import StreamingLLM

__all__ = ["METHODS", "KeepMethod", "PlanInputs", "make_method"]

METHODS: dict[str, type[KeepMethod]] = {
    cls.name: cls for cls in (Full, StreamingLLM, H2O, SnapKV, PyramidKV, AdaKV, AudioKV)
}


def make_method(method: str | KeepMethod, **params) -> KeepMethod:
    """The method object for a registered name and its parameters (or a ready method object, without params).

    Raises
    ------
    ValueError
        Unknown name, unknown or invalid parameter, or params given together with a method object.
    """
    if isinstance(method, KeepMethod):
        if params:
            raise ValueError(f"parameters {sorted(params)} given together with a ready {method.name} object")
        return method
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {sorted(METHODS)}")
    try:
        return METHODS[method](**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for {method}: {exc}") from None
