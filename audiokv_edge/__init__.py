"""audiokv-edge: AudioKV per-head KV-cache eviction for audio-language models on llama.cpp.

Nothing is loaded or computed at import time; native libraries are found on first use.
"""

__version__ = "0.1.0"
