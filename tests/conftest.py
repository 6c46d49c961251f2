"""Shared test data: the one method x parameter-set matrix every plan test runs (NumPy invariants, ragged plans,
C-vs-NumPy parity). Import it as ``from tests.conftest import METHOD_PARAMS, METHOD_CASES``."""

from __future__ import annotations

#: method -> parameter sets (the window is added per case where a test varies it). Every method of
#: audiokv_edge.methods.METHODS has an entry (tests/test_methods_invariants.py checks it); a new method adds its row.
METHOD_PARAMS: dict[str, list[dict]] = {
    "full": [{}],
    "streamingllm": [{}, {"n_sink": 0}, {"n_sink": 9}, {"n_sink": 50}],
    "h2o": [{}, {"gqa_reduce": "max"}],
    "snapkv": [{}, {"pool_kernel": 1}, {"pool_kernel": 7, "pool_type": "max", "gqa_reduce": "max"},
               {"pool_kernel": 7, "pool_type": "max"}, {"gqa_reduce": "max"}],
    "pyramidkv": [{}, {"beta": 1.0}, {"beta": 3.5}],
    "adakv": [{}, {"safeguard": 0.0}, {"safeguard": 0.5}, {"safeguard": 1.0}],
    "audiokv": [{}, {"sss_alpha": 0.0}, {"sss_alpha": 1.0, "sss_gamma": 0.2, "uniform_share": 0.0, "sss_taper": 0.0},
                {"redistribute_surplus": False}, {"sss_alpha": 1.0, "sss_gamma": 0.3}, {"uniform_share": 0.0},
                {"uniform_share": 1.0}, {"sss_gamma": 0.95}, {"sss_taper": 0.0}, {"sss_taper": 0.5}],
}

#: (method, parameter set) pairs of :data:`METHOD_PARAMS`, in its order.
METHOD_CASES: list[tuple[str, dict]] = [(m, p) for m, sets in METHOD_PARAMS.items() for p in sets]
