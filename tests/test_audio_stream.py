"""Audio read block by block: the streaming resampler against ``resample_poly`` on the whole signal, file blocks
against the whole-file loader, the same one-line errors, and the cut into libmtmd's 30 s mel windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiokv_edge.runtime.audio import AudioError, load_audio, mix_to_mono, resample
from audiokv_edge.runtime.audio_stream import StreamingResampler, file_blocks, resampled_length
from audiokv_edge.runtime.audio_windows import HOP, LEAD, WINDOW_FRAMES, WINDOW_SAMPLES, n_windows, window_buffers
from tests.audio_cases import BAD_AUDIO_CASES

DATA = Path(__file__).resolve().parents[1] / "audiokv_edge" / "data"
#: Largest difference allowed between the streaming and the whole-signal resampler (float32 samples in [-1, 1]):
#: both sum the same float64 products, in another order. Measured: 0 (bit-identical) at every rate below.
RESAMPLE_TOL = 1e-6


def _stream(resampler: StreamingResampler, x: np.ndarray, block: int) -> np.ndarray:
    outs = [resampler.process(x[i : i + block]) for i in range(0, x.shape[0], block)]
    return np.concatenate(outs + [resampler.flush()])


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 32000, 44100, 48000, 16000, 96000])
@pytest.mark.parametrize("block", [1, 333, 65536])
def test_streaming_resampler_equals_whole_signal(rate, block):
    # one sample per block: a short signal (a Python call per sample)
    x = np.random.default_rng(rate).uniform(-1, 1, 1001 if block == 1 else 2 * rate + 77)
    whole = resample(x, rate, 16000)
    streamed = _stream(StreamingResampler(rate, 16000), x, block)
    assert streamed.dtype == np.float32 and streamed.shape == whole.shape == (resampled_length(x.shape[0], rate,
                                                                                              16000),)
    assert np.max(np.abs(streamed - whole)) <= RESAMPLE_TOL


def test_streaming_resampler_short_signals_and_misuse():
    for n in (1, 2, 5, 40):
        x = np.linspace(-1, 1, n)
        np.testing.assert_allclose(_stream(StreamingResampler(44100, 16000), x, 3), resample(x, 44100, 16000),
                                   atol=RESAMPLE_TOL)
    r = StreamingResampler(48000, 16000)
    r.flush()
    with pytest.raises(RuntimeError):
        r.process(np.zeros(4))
    with pytest.raises(AudioError, match="positive"):
        StreamingResampler(0, 16000)


@pytest.mark.parametrize("fmt,ext", [("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg")])
def test_file_blocks_equal_whole_file(tmp_path, fmt, ext):
    rate = 44100
    rng = np.random.default_rng(1)
    stereo = np.clip(rng.standard_normal((3 * rate + 11, 2)) * 0.2, -1, 1)
    path = tmp_path / f"noise.{ext}"
    sf.write(path, stereo, rate, format=fmt)
    whole = load_audio(path, 16000).samples
    blocks = list(file_blocks(path, 16000, block_frames=10000))
    assert len(blocks) > 5 and all(b.dtype == np.float32 for b in blocks)
    streamed = np.concatenate(blocks)
    assert streamed.shape == whole.shape
    assert np.max(np.abs(streamed - whole)) <= RESAMPLE_TOL


def test_file_blocks_of_a_16k_file_are_its_samples():
    np.testing.assert_array_equal(np.concatenate(list(file_blocks(DATA / "jfk.wav", 16000, block_frames=4096))),
                                  load_audio(DATA / "jfk.wav", 16000).samples)


@pytest.mark.parametrize("make,needle", BAD_AUDIO_CASES)
def test_file_blocks_bad_files_raise_one_line(tmp_path, make, needle):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError) as err:
        list(file_blocks(path, 16000))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_file_blocks_nan_in_a_later_block(tmp_path):
    x = np.zeros(50000, np.float32)
    x[40000] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN or infinite"):
        list(file_blocks(path, 16000, block_frames=8192))


@pytest.mark.parametrize("n", [1, 200, 201, 479_999, 480_000, 480_159, 480_160, 959_840, 960_000, 1_000_000,
                               1_440_000 + 12345])
def test_window_buffers_cut(n):
    """Each window's buffer is the recording's samples [480000 k - 320, 480000 (k + 1) + 200) (clipped to the
    recording), one per whole 3000-frame window of n // 160 + 3001 frames."""
    x = np.arange(n, dtype=np.float32)
    rng = np.random.default_rng(n)
    cuts = np.sort(rng.integers(0, n, 5))
    windows = list(window_buffers(np.split(x, cuts)))
    assert len(windows) == n_windows(n) == (max(n, 201) // HOP + WINDOW_FRAMES + 1) // WINDOW_FRAMES
    for k, w in enumerate(windows):
        start = max(0, k * WINDOW_SAMPLES - LEAD)
        assert w.index == k and w.start == start and w.first_frame == (0 if k == 0 else LEAD // HOP)
        np.testing.assert_array_equal(w.samples, x[start : (k + 1) * WINDOW_SAMPLES + 200])
        assert w.last == (k == len(windows) - 1) and w.max_frames == (-1 if w.last else WINDOW_FRAMES)
        # frame first_frame of the buffer is frame 3000 k of the recording: samples from 480000 k - 200 on
        assert w.start + w.first_frame * HOP - 200 == max(-200, k * WINDOW_SAMPLES - 200)
    assert list(window_buffers([])) == []


def _llama_cpp_test_mp3(tmp_dir: Path) -> Path:
    """llama.cpp's tools/mtmd/test-2.mp3 (17.4 s of narration, 44.1 kHz mono): from the extracted source tree
    (build/llama.cpp-src of this checkout or of the one AUDIOKV_EDGE_LIB_DIR was built in), else from the cached
    llama-cpp-python sdist (scripts/fetch_llama_cpp.py); skips when neither is there."""
    import os
    import sys
    import tarfile

    repo = Path(__file__).resolve().parents[1]
    member = "tools/mtmd/test-2.mp3"
    trees = [repo / "build" / "llama.cpp-src"]
    if os.environ.get("AUDIOKV_EDGE_LIB_DIR"):
        trees.append(Path(os.environ["AUDIOKV_EDGE_LIB_DIR"]).resolve().parents[1] / "llama.cpp-src")
    for tree in trees:
        if (tree / member).is_file():
            return tree / member
    sys.path.insert(0, str(repo / "scripts"))
    import fetch_llama_cpp  # a script, not a package module

    sdist = fetch_llama_cpp.cache_dir() / fetch_llama_cpp.SDIST_NAME
    if not sdist.is_file():
        pytest.skip(f"llama.cpp's {member}: no build/llama.cpp-src and no cached {sdist.name} (scripts/setup.sh)")
    out = tmp_dir / "test-2.mp3"
    with tarfile.open(sdist, "r:gz") as archive:
        out.write_bytes(archive.extractfile(fetch_llama_cpp.VENDOR_PREFIX + member).read())
    return out


@pytest.fixture(scope="module")
def mp3_files(tmp_path_factory):
    return {"jfk.mp3": DATA / "jfk.mp3", "test-2.mp3": _llama_cpp_test_mp3(tmp_path_factory.mktemp("mp3"))}


@pytest.mark.parametrize("name", ["jfk.mp3", "test-2.mp3"])
@pytest.mark.parametrize("block", [1000, 1152, 4096, 65536])
def test_mp3_blocks_are_the_whole_file_read_and_libmpg123_prints_nothing(mp3_files, name, block, capfd):
    # soundfile's SoundFile.read seeks after every read, restarting libmpg123, which then printed
    # "part2_3_length (...) too large for available bit count" notes on fd 2 (jfk.mp3: 2 to 80 of them)
    path = mp3_files[name]
    whole, rate = sf.read(str(path), dtype="float32", always_2d=True)
    capfd.readouterr()
    blocks = list(file_blocks(path, rate, block_frames=block))  # at the file's own rate: the decoded samples
    err = capfd.readouterr().err
    assert err == "", err
    assert len(blocks) == -(-whole.shape[0] // block)
    assert np.array_equal(np.concatenate(blocks), mix_to_mono(whole))  # bit-identical
