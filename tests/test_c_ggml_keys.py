"""Keys stored in ggml cache types (Q8_0, Q4_0, F16) and read through ggml's to_float give the plan of the NumPy
reference on the dequantized keys (gguf-py dequantizes bit-exactly like ggml). Needs the libaudiokv of the combined
build, which links ggml; the standalone build has no ggml and this module is skipped with that reason."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from audiokv_edge import HeadProfile, plan
from audiokv_edge.native import audiokv as C
from audiokv_edge.native import audiokv_ggml
from audiokv_edge.native.plan import AudioKVContext, c_params
from audiokv_edge.keep_plan import KeepPlan
from tests.libaudiokv_build import ensure_libaudiokv

pytestmark = pytest.mark.native


@pytest.fixture(scope="module")
def lib():
    lib = ensure_libaudiokv()
    if not audiokv_ggml.has_ggml(lib):
        pytest.skip(f"{C.library_path()} was built without ggml (standalone build); the combined build links it")
    return lib


@pytest.mark.parametrize("qtype", [GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_0, GGMLQuantizationType.F16])
@pytest.mark.parametrize("method", ["snapkv", "adakv", "audiokv"])
def test_quantized_keys_match_reference_on_dequantized(lib, qtype, method):
    n_layer, n_head, n_head_kv, n_tokens, d = 2, 4, 2, 300, 64
    rng = np.random.default_rng(int(qtype))
    q = rng.standard_normal((n_layer, n_head, 32, d)).astype(np.float32)
    k = rng.standard_normal((n_layer, n_tokens, n_head_kv, d)).astype(np.float32)   # llama.cpp: token-major
    packed = [quantize(k[layer], qtype).view(np.uint8) for layer in range(n_layer)]  # [N, Hkv, row bytes]
    keys = np.stack([np.asarray(dequantize(p, qtype), dtype=np.float32).reshape(n_tokens, n_head_kv, d)
                     for p in packed]).transpose(0, 2, 1, 3)
    profile = HeadProfile(rng.random((n_layer, n_head_kv)))
    want = plan(method, q, keys, 0.4, profile)
    with AudioKVContext(c_params(method, {}), n_layer, n_head, n_head_kv, d, n_tokens) as ctx:
        for layer in range(n_layer):
            rows = packed[layer].reshape(n_tokens, -1)
            ctx.add_layer_ggml(layer, q[layer], rows, int(qtype), packed[layer].shape[-1])
        counts, flat = ctx.plan(0.4, profile.scores if method == "audiokv" else None)
    assert KeepPlan.from_flat(counts, flat, n_tokens, method) == want
