"""libaudiokv and the patched llama.cpp from Python: library loading (libs), one ctypes module per C header
(audiokv.h -> audiokv, audiokv_ggml.h -> audiokv_ggml, audiokv_llama.h -> audiokv_llama, llama-kv-evict.h ->
llama_kv_evict) and the C-backed plan (plan). Imports profile/ and reference/."""
