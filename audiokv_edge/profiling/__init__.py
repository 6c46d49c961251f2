"""Head profiling: attention capture on llama.cpp, the audio hit ratio, the calibration set, synthetic speech.
Imports runtime/ and everything below it."""
