"""Every window-score kernel of libaudiokv gives the NumPy reference's plans, and the same scores as the others.

libaudiokv picks its logits/softmax kernel once per process (AVX-512F+FMA, AVX2, 2-wide vectors, plain C); the
environment variable AUDIOKV_SCORE_KERNEL forces one, so each kernel this CPU runs is checked in a subprocess:
plans of the scoring methods on shapes that leave partial row blocks and key tiles (w, N, head_dim not multiples
of the tile sizes), float32 / float16 / float64 inputs, must equal plan(backend="numpy") token for token, and the
plans of float32 and float16 inputs must be identical across kernels (there the scores are bitwise equal too:
every product of two floats is exact in double, so even the FMA kernel rounds like the others).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.libaudiokv_build import ensure_libaudiokv

pytestmark = pytest.mark.native

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import hashlib, json, logging, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
from audiokv_edge import HeadProfile, plan
from audiokv_edge.native.plan import plan_c

out = {"mismatches": [], "digest": None}
digest = hashlib.sha256()
rng = np.random.default_rng(5)
shapes = [  # n_layer, n_head, n_head_kv, n_tokens, window, head_dim, dtype
    (2, 6, 2, 33, 32, np.float32), (1, 7, 1, 100, 5, np.float16), (2, 4, 4, 1001, 13, np.float32),
    (1, 14, 2, 250, 32, np.float64), (1, 3, 1, 57, 9, np.float32), (1, 2, 1, 300, 32, np.float16),
]
for n_layer, n_head, n_head_kv, n_tokens, window, dtype in shapes:
    for head_dim in (17, 64):
        q = rng.standard_normal((n_layer, n_head, window, head_dim)).astype(dtype)
        k = rng.standard_normal((n_layer, n_head_kv, n_tokens, head_dim)).astype(dtype)
        profile = HeadProfile(rng.random((n_layer, n_head_kv)) + 0.01)
        for method in ("h2o", "snapkv", "adakv", "audiokv"):
            ref = plan(method, q, k, 0.3, profile, window=window)
            got = plan_c(method, q, k, 0.3, profile, {"window": window}, n_threads=2)
            if ref != got:
                out["mismatches"].append([method, n_tokens, window, head_dim, str(np.dtype(dtype))])
            if dtype != np.float64:
                for idx in got.indices:
                    for row in idx:
                        digest.update(np.asarray(row, dtype=np.int64).tobytes())
out["digest"] = digest.hexdigest()
print(json.dumps(out))
"""


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def available_kernels() -> list:
    import platform

    kernels = ["plain"]
    if sys.platform != "win32":
        kernels.append("v2")
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags = cpu_flags()
        if "avx2" in flags:
            kernels.append("avx2")
        if {"avx512f", "fma"} <= flags:
            kernels.append("avx512")
    return kernels


@pytest.fixture(scope="module")
def results():
    ensure_libaudiokv()
    found = {}
    for kernel in available_kernels():
        env = dict(os.environ, AUDIOKV_SCORE_KERNEL=kernel)
        proc = subprocess.run([sys.executable, "-c", CHILD, str(REPO)], capture_output=True, text=True, env=env,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert "AUDIOKV_SCORE_KERNEL" not in proc.stderr, proc.stderr  # the kernel asked for was the one used
        found[kernel] = json.loads(proc.stdout.strip().splitlines()[-1])
    return found


def test_every_kernel_matches_the_reference(results):
    for kernel, res in results.items():
        assert res["mismatches"] == [], f"kernel {kernel}"


def test_kernels_agree_with_each_other(results):
    digests = {kernel: res["digest"] for kernel, res in results.items()}
    assert len(set(digests.values())) == 1, digests


def test_unknown_kernel_name_warns_and_falls_back():
    ensure_libaudiokv()
    env = dict(os.environ, AUDIOKV_SCORE_KERNEL="no-such-kernel")
    code = ("import sys, logging, numpy as np; sys.path.insert(0, sys.argv[1]); "
            "logging.basicConfig(level=logging.WARNING, stream=sys.stderr); "
            "from audiokv_edge.native.plan import plan_c; "
            "q = np.ones((1, 2, 4, 8), np.float32); k = np.ones((1, 1, 40, 8), np.float32); "
            "print(plan_c('snapkv', q, k, 0.5, None, {'window': 4}).kept_total)")
    proc = subprocess.run([sys.executable, "-c", code, str(REPO)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "AUDIOKV_SCORE_KERNEL=no-such-kernel: unknown" in proc.stderr
    assert proc.stdout.strip() == "20"
