"""convert/add_profile.py: good run, and every bad input gives one clear line, exit code 2 and no file."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audiokv_edge.profile import gguf_keys as gp
from audiokv_edge.profile.head_profile import HeadProfile
from audiokv_edge.profile.defaults import ProfileDefaults
from audiokv_edge.profile.side_file import load_profile_file, save_profile_file
from tests.gguf_testfiles import write_tiny_gguf

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "convert" / "add_profile.py"


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args), "--no-progress"],
                          capture_output=True, text=True, cwd=cwd or REPO, timeout=120)


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def files(tmp_path):
    model = tmp_path / "model.gguf"
    write_tiny_gguf(model)
    prof = HeadProfile(np.array([[1, 2], [3, 4], [5, 6]], dtype=float), source={"calibration": "cli-test"})
    pj = tmp_path / "profile.json"
    save_profile_file(pj, prof, ProfileDefaults(window=8))
    return model, pj, prof


def _assert_clean_error(res, match):
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("add_profile: error:"), res.stderr
    assert "Traceback" not in res.stderr
    assert match in lines[0], lines[0]


def test_cli_writes_profile_and_defaults(files, tmp_path):
    model, pj, prof = files
    before = _sha(model)
    out = tmp_path / "out.gguf"
    res = _run(model, pj, "-o", out, "--keep", "0.4")
    assert res.returncode == 0, res.stderr
    got, dflt = gp.read_stored(out)
    np.testing.assert_array_equal(got.scores, prof.scores)
    assert got.source["calibration"] == "cli-test"
    assert dflt == ProfileDefaults(window=8, keep=0.4)
    assert _sha(model) == before


def test_cli_accepts_npz(files, tmp_path):
    model, pj, prof = files
    npz = tmp_path / "p.npz"
    save_profile_file(npz, *load_profile_file(pj))
    res = _run(model, npz, "-o", tmp_path / "o.gguf")
    assert res.returncode == 0, res.stderr
    np.testing.assert_array_equal(gp.read_profile(tmp_path / "o.gguf").scores, prof.scores)


def _nan_profile(tmp_path):
    p = tmp_path / "nan.json"
    meta = json.loads((tmp_path / "profile.json").read_text())
    meta["scores"][1][0] = float("nan")
    p.write_text(json.dumps(meta))
    return p


def _wrong_shape(tmp_path):
    p = tmp_path / "shape.json"
    save_profile_file(p, HeadProfile(np.ones((4, 2)), source={"calibration": "c"}))
    return p


def _cut(model, n):
    data = model.read_bytes()
    bad = model.parent / "cut.gguf"
    bad.write_bytes(data[:len(data) - n])
    return bad


@pytest.mark.parametrize("case, match", [
    ("not_gguf", "not a GGUF file"),
    ("truncated", "truncated: tensor"),
    ("wrong_shape", "3 layers x 2 KV heads"),
    ("nan", "NaN or infinite score at layer 1, KV head 0"),
    ("same_path", "is the input file"),
    ("symlink_to_input", "is the input file"),
    ("missing_profile", "No such file"),
    ("not_a_profile", "not a head profile"),
    ("bad_default", "keep must be in"),
    ("dst_is_dir", "is a directory"),
])
def test_cli_bad_input(files, tmp_path, case, match):
    model, pj, _ = files
    out = tmp_path / "out.gguf"
    args = [model, pj, "-o", out]
    if case == "not_gguf":
        txt = tmp_path / "readme.gguf"
        txt.write_text("just text\n")
        args[0] = txt
    elif case == "truncated":
        args[0] = _cut(model, 40)   # the last 20 bytes are padding
    elif case == "wrong_shape":
        args[1] = _wrong_shape(tmp_path)
    elif case == "nan":
        args[1] = _nan_profile(tmp_path)
    elif case == "same_path":
        args[3] = model
    elif case == "symlink_to_input":
        out = tmp_path / "alias.gguf"
        os.symlink(model, out)
        args[3] = out
    elif case == "missing_profile":
        args[1] = tmp_path / "nope.json"
    elif case == "not_a_profile":
        other = tmp_path / "other.json"
        other.write_text('{"hello": 1}')
        args[1] = other
    elif case == "bad_default":
        args += ["--keep", "2"]
    elif case == "dst_is_dir":
        out = tmp_path / "adir"
        out.mkdir()
        args[3] = out
    before = _sha(model)
    listing = sorted(os.listdir(tmp_path))
    res = _run(*args)
    _assert_clean_error(res, match)
    assert _sha(model) == before
    assert sorted(os.listdir(tmp_path)) == listing            # nothing written, no temporary left
    if case not in ("symlink_to_input", "dst_is_dir"):
        assert not out.exists()


def _read_only_dir(tmp_path) -> Path:
    """A directory this process cannot create files in (root ignores mode bits: use sysfs on Linux)."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        return d
    if sys.platform.startswith("linux") and os.path.isdir("/sys"):
        return Path("/sys")
    pytest.fail("no read-only directory available for this test")


def test_cli_read_only_destination(files, tmp_path):
    model, pj, _ = files
    ro = _read_only_dir(tmp_path)
    before = set(os.listdir(ro))
    res = _run(model, pj, "-o", ro / "out.gguf")
    _assert_clean_error(res, "cannot create a file in")
    assert set(os.listdir(ro)) == before


def test_cli_read_only_existing_destination(files, tmp_path):
    """An existing output without write permission is not replaced (also when running as root)."""
    model, pj, _ = files
    out = tmp_path / "ro.gguf"
    out.write_bytes(b"keep me")
    out.chmod(0o444)
    res = _run(model, pj, "-o", out)
    _assert_clean_error(res, "read-only")
    assert out.read_bytes() == b"keep me"


# --- a full disk, and a signal while writing --------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MiB tmpfs (Linux, root): writing a larger copy there fails with ENOSPC part-way."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if not sys.platform.startswith("linux"):
        pytest.skip("mounting a tmpfs needs Linux")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"mounting a 2 MiB tmpfs is not permitted here: {res.stderr.strip() or res.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.fixture
def big_files(tmp_path):
    """A 6.3 MB model (3 layers x 1024 x 1024 f16) and a matching profile."""
    model = tmp_path / "big.gguf"
    write_tiny_gguf(model, n_embd=1024)
    pj = tmp_path / "profile.json"
    save_profile_file(pj, HeadProfile(np.arange(6.0).reshape(3, 2), source={"calibration": "cli-test"}))
    return model, pj


def test_cli_full_disk(big_files, small_tmpfs):
    """ENOSPC part-way through the copy: one line that names the output and the sizes, exit 2, no file left on the
    full file system (not the temporary one either), the input unchanged."""
    model, pj = big_files
    before = _sha(model)
    res = _run(model, pj, "-o", small_tmpfs / "out.gguf")
    _assert_clean_error(res, f"not enough space for {small_tmpfs / 'out.gguf'}")
    assert "needs about 6.3 MB" in res.stderr and "No space left on device" in res.stderr, res.stderr
    assert os.listdir(small_tmpfs) == []
    assert _sha(model) == before
    assert os.statvfs(small_tmpfs).f_bfree == os.statvfs(small_tmpfs).f_blocks  # the space is given back


def _default_signals() -> None:
    """In the child: SIGINT / SIGTERM / SIGHUP at their defaults (a background test run inherits SIGINT ignored)."""
    import signal
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_cli_signal_while_writing(big_files, tmp_path, signame):
    """The signal is sent as soon as the temporary output exists: the run ends with one line, status 128 + the
    signal, no output and no temporary file, the input unchanged. (Before SIGTERM / SIGHUP were handled, they ended
    Python at once and left the partial temporary file behind.)"""
    import signal
    signum = getattr(signal, signame)
    model, pj = big_files
    before = _sha(model)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for _attempt in range(3):  # the copy and its check take > 0.3 s here; a child that finishes first is retried
        proc = subprocess.Popen([sys.executable, str(SCRIPT), str(model), str(pj), "-o", str(out_dir / "o.gguf"),
                                 "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=REPO, preexec_fn=_default_signals)
        while proc.poll() is None and not any(n.endswith(".tmp") for n in os.listdir(out_dir)):
            pass
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        if proc.returncode not in (0, -signum):
            break
        # too late: the run had finished (0) or was ending, its handlers restored (-signum); the copy is complete
        assert gp.read_profile(out_dir / "o.gguf") is not None and len(os.listdir(out_dir)) == 1, err
        (out_dir / "o.gguf").unlink()
    assert proc.returncode == 128 + signum, err
    lines = err.strip().splitlines()
    if lines == [f"add_profile: interrupted ({signame}) after {out_dir / 'o.gguf'} was written"]:
        # the signal came after the rename (an idle machine): the copy is complete; nothing else is left
        assert os.listdir(out_dir) == ["o.gguf"] and gp.read_profile(out_dir / "o.gguf") is not None
    else:
        assert lines == [f"add_profile: interrupted ({signame}); nothing written"], err
        assert os.listdir(out_dir) == []
    assert _sha(model) == before
