"""Bad arguments to libaudiokv return documented status codes (ValueError in Python), never a crash."""

import ctypes

import numpy as np
import pytest

from audiokv_edge.native import audiokv as C
from audiokv_edge.native.plan import AudioKVContext, c_params, plan_c
from tests.libaudiokv_build import ensure_libaudiokv

pytestmark = pytest.mark.native


@pytest.fixture(scope="module")
def lib():
    return ensure_libaudiokv()


def inputs(n_tokens=64):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((2, 4, 32, 8)).astype(np.float32),
            rng.standard_normal((2, 2, n_tokens, 8)).astype(np.float32))


@pytest.mark.parametrize("keep", [0.0, -0.1, 1.5, float("nan"), float("inf")])
def test_keep_outside_range(lib, keep):
    q, k = inputs()
    with pytest.raises(ValueError, match="AUDIOKV_ERR_KEEP"):
        plan_c("snapkv", q, k, keep, None, {})


@pytest.mark.parametrize("shape", [(2, 3), (3, 2), (1, 4), (4,)])
def test_profile_of_wrong_shape(lib, shape):
    q, k = inputs()
    with pytest.raises(ValueError, match="AUDIOKV_ERR_PROFILE|2-D"):
        plan_c("audiokv", q, k, 0.5, np.ones(shape), {})


@pytest.mark.parametrize("bad", [[[1.0, -1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]], [[np.nan, 1.0], [1.0, 1.0]]])
def test_profile_bad_values(lib, bad):
    q, k = inputs()
    with pytest.raises(ValueError, match="AUDIOKV_ERR_PROFILE"):
        plan_c("audiokv", q, k, 0.5, np.array(bad), {})


@pytest.mark.parametrize("shape", [(0, 4, 2, 8, 64), (2, 0, 2, 8, 64), (2, 4, 0, 8, 64), (2, 4, 3, 8, 64),
                                   (2, 4, 2, 0, 64), (2, 4, 2, 8, 0), (2, 4, 2, 8, -1), (-2, 4, 2, 8, 64)])
def test_zero_or_negative_sizes(lib, shape):
    with pytest.raises(ValueError, match="AUDIOKV_ERR_SIZE"):
        AudioKVContext(c_params("snapkv", {}), *shape)


@pytest.mark.parametrize("params", [{"pool_kernel": 4}, {"window": 0}, {"sss_gamma": 0.0}, {"safeguard": 2.0},
                                    {"beta": 0.5}, {"sss_taper": -0.1}, {"pool_type": "median"}])
def test_bad_params(lib, params):
    with pytest.raises(ValueError):
        AudioKVContext(c_params("audiokv", params), 2, 4, 2, 8, 64)


def test_null_buffers_and_state(lib):
    ctx = ctypes.c_void_p()
    p = c_params("snapkv", {})
    assert lib.audiokv_init(None, 2, 4, 2, 8, 64, ctypes.byref(ctx)) == C.AUDIOKV_ERR_NULL
    assert lib.audiokv_init(ctypes.byref(p), 2, 4, 2, 8, 64, None) == C.AUDIOKV_ERR_NULL
    assert lib.audiokv_init(ctypes.byref(p), 2, 4, 2, 8, 64, ctypes.byref(ctx)) == C.AUDIOKV_OK
    try:
        counts = np.zeros(4, dtype=np.int32)
        idx = np.zeros(256, dtype=np.int32)
        cp = counts.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        ip = idx.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        assert lib.audiokv_plan(None, 0.5, None, 0, 0, cp, ip, 256, None) == C.AUDIOKV_ERR_NULL
        assert lib.audiokv_plan(ctx, 0.5, None, 0, 0, None, ip, 256, None) == C.AUDIOKV_ERR_NULL
        assert lib.audiokv_plan(ctx, 0.5, None, 0, 0, cp, None, 256, None) == C.AUDIOKV_ERR_NULL
        assert lib.audiokv_plan(ctx, 0.5, None, 0, 0, cp, ip, 0, None) == C.AUDIOKV_ERR_SIZE
        assert lib.audiokv_plan(ctx, 0.75, None, 0, 0, cp, ip, 256, None) == C.AUDIOKV_ERR_STATE  # no scores yet
        q, k = inputs()
        assert lib.audiokv_add_layer(ctx, 0, None, 0, 1024, 32, k.ctypes.data, 0, 32, 2048,
                                     C.audiokv_to_float_fn(), None) == C.AUDIOKV_ERR_NULL
        assert lib.audiokv_add_layer(ctx, 5, q.ctypes.data, 0, 1024, 32, k.ctypes.data, 0, 32, 2048,
                                     C.audiokv_to_float_fn(), None) == C.AUDIOKV_ERR_SIZE
        assert lib.audiokv_add_layer(ctx, 0, q.ctypes.data, 0, 1024, 32, k.ctypes.data, C.AUDIOKV_TYPE_OTHER, 32,
                                     2048, C.audiokv_to_float_fn(), None) == C.AUDIOKV_ERR_TYPE
        assert lib.audiokv_plan(ctx, 0.75, None, 0, 0, cp, ip, 10, None) == C.AUDIOKV_ERR_STATE
        dp = ctypes.POINTER(ctypes.c_double)
        assert lib.audiokv_rfft(None, 4, None) == C.AUDIOKV_ERR_NULL
        x = np.zeros(4)
        assert lib.audiokv_rfft(x.ctypes.data_as(dp), -3, x.ctypes.data_as(dp)) == C.AUDIOKV_ERR_SIZE
    finally:
        lib.audiokv_free(ctx)


def test_nan_and_overflow_inputs(lib):
    q, k = inputs()
    k[0, 0, 5, 0] = np.nan
    with pytest.raises(ValueError, match="AUDIOKV_ERR_NONFINITE"):
        plan_c("snapkv", q, k, 0.75, None, {})
    q, k = inputs()
    q64, k64 = q.astype(np.float64) * 1e160, k.astype(np.float64) * 1e160   # logits overflow float64
    with pytest.raises(ValueError, match="AUDIOKV_ERR_NONFINITE"):
        plan_c("snapkv", q64, k64, 0.75, None, {})


def test_capacity_error_reports_counts(lib):
    q, k = inputs()
    with AudioKVContext(c_params("snapkv", {}), 2, 4, 2, 8, 64) as ctx:
        for layer in range(2):
            ctx.add_layer(layer, q[layer], k[layer])
        counts = np.zeros(4, dtype=np.int32)
        idx = np.zeros(8, dtype=np.int32)
        total = ctypes.c_int64(0)
        status = ctx._lib.audiokv_plan(ctx._handle, 0.75, None, 0, 0,
                                       counts.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
                                       idx.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)), 8, ctypes.byref(total))
        assert status == C.AUDIOKV_ERR_CAPACITY
        assert total.value == 4 * 48 and list(counts) == [48] * 4
