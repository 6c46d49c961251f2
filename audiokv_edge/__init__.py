"""audiokv-edge: AudioKV per-head KV-cache eviction for audio-language models on llama.cpp.

Nothing is loaded or computed at import time; native libraries are found on first use.
"""

__version__ = "0.1.0"

_LAZY = {
    "plan": ("audiokv_edge.keep_plan", "plan"),
    "KeepPlan": ("audiokv_edge.keep_plan", "KeepPlan"),
    "HeadProfile": ("audiokv_edge.profile.head_profile", "HeadProfile"),
    "METHODS": ("audiokv_edge.methods", "METHODS"),
    "spectral_smooth": ("audiokv_edge.reference.sss", "spectral_smooth"),
    "Session": ("audiokv_edge.runtime.session", "Session"),
    "SessionConfig": ("audiokv_edge.runtime.session", "SessionConfig"),
    "enable": ("audiokv_edge.runtime.llama_hook", "enable"),
    "Interrupted": ("audiokv_edge.runtime.interrupt", "Interrupted"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    """Import the public names on first use (PEP 562), so that importing the package does no work."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'audiokv_edge' has no attribute {name!r}")
