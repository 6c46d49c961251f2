"""Benchmarks of the KV-cache eviction on a real model or a real model's shape: ``python -m audiokv_edge.bench``.

header (the machine, versions and command every result carries), kv_fill (a synthetic KV cache: a sequence state of
random keys and values), sweep (methods x keep ratios x cached lengths, side by side), report (markdown, PNG and the
memory projection for long recordings).
"""
