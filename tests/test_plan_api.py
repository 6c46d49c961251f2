"""plan() and KeepPlan: the public contract, input validation, H2O scores, backend dispatch."""

import subprocess
import sys
import types

import numpy as np
import pytest

import audiokv_edge
from audiokv_edge import HeadProfile, KeepPlan, plan
from audiokv_edge.methods import SnapKV


def qk(seed=0, n_layer=2, n_head=4, n_head_kv=2, n_tokens=60, w=8, d=16):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n_layer, n_head, w, d)).astype(np.float32),
            rng.standard_normal((n_layer, n_head_kv, n_tokens, d)).astype(np.float32))


def test_lazy_exports_and_no_import_time_work():
    code = ("import sys, audiokv_edge; assert 'audiokv_edge.keep_plan' not in sys.modules; "
            "import audiokv_edge.keep_plan; assert callable(audiokv_edge.plan); "
            "assert audiokv_edge.KeepPlan is audiokv_edge.keep_plan.KeepPlan")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=audiokv_edge.__path__[0] + "/..")
    with pytest.raises(AttributeError):
        audiokv_edge.no_such_name  # noqa: B018


def test_keep_plan_views():
    q, k = qk()
    p = plan("snapkv", q, k, 0.5, window=8)
    assert p.n_layer == 2 and p.n_head_kv == 2 and p.n_tokens == 60 and p.method == "snapkv"
    assert p.kept_total == 4 * 30 and p.budgets.dtype == np.int64
    m = p.mask()
    assert m.shape == (2, 2, 60) and m.dtype == bool
    assert np.array_equal(np.flatnonzero(m[1, 0]), p.indices[1][0])
    again = KeepPlan.from_flat(p.budgets, p.flat_indices(), 60, "snapkv")
    assert again == p
    assert not p.indices[0][0].flags.writeable
    with pytest.raises(ValueError):
        KeepPlan([[np.array([3, 2])]], 10)
    with pytest.raises(ValueError):
        KeepPlan([[np.array([1, 10])]], 10)
    with pytest.raises(ValueError):
        KeepPlan([[np.array([1])], []], 10)


def test_method_object_and_names():
    q, k = qk()
    assert plan(SnapKV(window=8, pool_kernel=3), q, k, 0.4) == plan("snapkv", q, k, 0.4, window=8, pool_kernel=3)
    with pytest.raises(ValueError, match="unknown method"):
        plan("snapkvv", q, k, 0.4)
    with pytest.raises(ValueError, match="bad parameters"):
        plan("snapkv", q, k, 0.4, window=8, kernel=3)
    with pytest.raises(ValueError, match="together"):
        plan(SnapKV(window=8), q, k, 0.4, window=8)


@pytest.mark.parametrize("keep", [0, -0.5, 1.01, float("nan"), float("inf"), "0.5", None, True])
def test_bad_keep(keep):
    q, k = qk()
    with pytest.raises(ValueError, match="keep"):
        plan("snapkv", q, k, keep, window=8)


def test_bad_shapes_and_values():
    q, k = qk()
    with pytest.raises(ValueError, match="window"):
        plan("snapkv", q, k, 0.5)  # q_window holds 8 queries, the default window is 32
    with pytest.raises(ValueError, match="grouped"):
        plan("snapkv", q[:, :3], k, 0.5, window=8)
    with pytest.raises(ValueError, match="fit"):
        plan("snapkv", q[:1], k, 0.5, window=8)
    with pytest.raises(ValueError, match="dimensions"):
        plan("snapkv", q, k[0], 0.5, window=8)
    with pytest.raises(ValueError, match="floating"):
        plan("snapkv", q, k.astype(np.int32), 0.5, window=8)
    bad = k.copy()
    bad[1, 0, 3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        plan("snapkv", q, bad, 0.5, window=8)
    with pytest.raises(ValueError, match="needs q_window"):
        plan("snapkv", None, k, 0.5, window=8)
    with pytest.raises(ValueError, match="empty"):
        plan("snapkv", q, k[:, :, :0], 0.5, window=8)
    with pytest.raises(ValueError, match="HeadProfile"):
        plan("audiokv", q, k, 0.5, np.ones((2, 2)), window=8)
    with pytest.raises(ValueError, match="does not take"):
        plan("snapkv", q, k, 0.5, window=8, accumulated_scores=np.ones((2, 2, 60)))
    with pytest.raises(ValueError, match="backend"):
        plan("snapkv", q, k, 0.5, window=8, backend="cuda")


def test_float_types_agree():
    q, k = qk()
    a = plan("audiokv", q, k, 0.3, HeadProfile(np.ones((2, 2))), window=8)
    b = plan("audiokv", q.astype(np.float64), k.astype(np.float64), 0.3, HeadProfile(np.ones((2, 2))), window=8)
    assert a == b


def test_queries_not_needed_for_full_and_streamingllm():
    _, k = qk()
    assert plan("full", None, k, 0.3).kept_total == 4 * 60
    p = plan("streamingllm", None, k, 0.5, window=8)
    assert p.indices[0][0].tolist() == [0, 1, 2, 3] + list(range(34, 60))


def test_budget_not_above_window_keeps_last_tokens():
    q, k = qk()
    p = plan("adakv", q, k, 0.1, window=8)  # C = 6 <= w = 8
    assert all(p.indices[layer][head].tolist() == list(range(54, 60)) for layer in range(2) for head in range(2))


def test_h2o_accumulated_scores():
    _, k = qk(n_tokens=20, w=4)
    acc = np.zeros((2, 4, 20))
    acc[:, :, [1, 5, 7]] = 1.0  # the same heavy hitters in every query head
    acc[:, 0, 9] = 4.0  # one query head alone: with the mean (4 / 2 = 2) it still wins for KV head 0
    p = plan("h2o", None, k, 0.4, window=4, accumulated_scores=acc)  # C = 8: 4 heavy hitters + window
    assert p.indices[0][0].tolist() == [1, 5, 7, 9, 16, 17, 18, 19]
    assert p.indices[0][1].tolist() == [0, 1, 5, 7, 16, 17, 18, 19]  # ties at 0: lower index
    kv = plan("h2o", None, k, 0.4, window=4, accumulated_scores=acc[:, ::2])  # already [L, Hkv, N]
    assert kv.indices[1][1] .tolist() == [0, 1, 5, 7, 16, 17, 18, 19]
    with pytest.raises(ValueError, match="accumulated_scores"):
        plan("h2o", None, k, 0.4, window=4, accumulated_scores=acc[:, :3])


def test_h2o_without_accumulated_scores_ranks_like_unpooled_snapkv():
    q, k = qk(3)
    assert plan("h2o", q, k, 0.4, window=8) == plan("snapkv", q, k, 0.4, window=8, pool_kernel=1)


def test_backend_c_dispatch(monkeypatch):
    calls = []
    fake = types.ModuleType("audiokv_edge.native.plan")

    def plan_c(method, q_window, keys, keep, profile, params):
        calls.append((method, keep, profile, params))
        return "from C"

    fake.plan_c = plan_c
    monkeypatch.setitem(sys.modules, "audiokv_edge.native.plan", fake)
    q, k = qk()
    assert plan("pyramidkv", q, k, 0.5, backend="c", window=8, beta=10) == "from C"
    method, keep, profile, params = calls[0]
    assert method == "pyramidkv" and keep == 0.5 and profile is None
    assert params == {"window": 8, "beta": 10}  # window and the non-default parameters
    plan("audiokv", q, k, 0.5, backend="c", window=8, accumulated_scores=None)
    assert calls[1][3] == {"window": 8}
