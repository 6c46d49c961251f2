"""The per-head profile and its storage: HeadProfile, the stored defaults, JSON/NPZ side files, the audiokv.* GGUF
keys and the GGUF header parser. Imports only reference/ (and gguf, NumPy)."""
