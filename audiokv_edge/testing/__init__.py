"""Test models: tiny GGUF models of real architectures written on the fly, and the real models the tests may find."""
