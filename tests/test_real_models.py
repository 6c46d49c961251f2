"""The opt-in real text models (audiokv_edge/testing/real_models.py, scripts/fetch_text_models.sh): a missing or
truncated model raises an error that says how to install it, the part files are assembled through a temporary file
whose sha256 is checked, and eval_text_quality.py's --model names resolve to them or exit with that error. The
models themselves are not needed (nor downloaded) here."""

from __future__ import annotations

import hashlib
import importlib.util
import pathlib
import subprocess
import sys

import pytest

from audiokv_edge.testing import real_models

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path_of", [real_models.gemma3_270m_path, real_models.qwen25_coder_05b_path])
def test_missing_model_says_how_to_install(path_of, tmp_path):
    with pytest.raises(real_models.RealModelNotInstalledError, match="scripts/fetch_text_models.sh"):
        path_of(tmp_path)


def test_truncated_model_is_refused(tmp_path):
    (tmp_path / real_models.QWEN25_CODER_05B.file).write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(real_models.RealModelNotInstalledError, match="has 104 bytes, expected 491400064"):
        real_models.qwen25_coder_05b_path(tmp_path)


def _parts(tmp_path, contents):
    paths = []
    for i, data in enumerate(contents):
        paths.append(tmp_path / f"part{i}")
        paths[-1].write_bytes(data)
    return paths


def test_assemble_concatenates_in_order_and_checks_the_digest(tmp_path):
    contents = [b"GGUF" + bytes(range(256)) * 3, b"second", b"\x00" * 5000]
    whole = b"".join(contents)
    model = real_models.PartedModel("m.gguf", (), hashlib.sha256(whole).hexdigest(), len(whole))
    out = real_models.assemble(model, _parts(tmp_path, contents), tmp_path / "models")
    assert out == tmp_path / "models" / "m.gguf" and out.read_bytes() == whole
    assert real_models._assembled_path(model, tmp_path / "models") == out
    # a re-run keeps the checked file
    mtime = out.stat().st_mtime_ns
    assert real_models.assemble(model, _parts(tmp_path, contents), tmp_path / "models").stat().st_mtime_ns == mtime


def test_parts_that_do_not_match_the_digest_leave_no_file(tmp_path):
    contents = [b"GGUF", b"swapped", b"order"]
    model = real_models.PartedModel("m.gguf", (), hashlib.sha256(b"".join(contents)).hexdigest(), 16)
    parts = _parts(tmp_path, contents)
    with pytest.raises(ValueError, match="concatenate to sha256"):
        real_models.assemble(model, [parts[1], parts[0], parts[2]], tmp_path / "models")
    assert list((tmp_path / "models").iterdir()) == []


def test_missing_part_package_is_named():
    model = real_models.PartedModel("m.gguf", (("audiokv_no_such_part_package", "data/p.bin"),), "0" * 64, 1)
    with pytest.raises(real_models.RealModelNotInstalledError,
                       match=r"audiokv_no_such_part_package is not installed\); run `bash scripts/fetch_text_models"):
        real_models.part_paths(model)


def test_every_text_model_name_resolves_or_says_how_to_install(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("eval_text_quality", REPO / "scripts" / "eval_text_quality.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "eval_text_quality", mod)   # its dataclasses look their module up
    spec.loader.exec_module(mod)
    monkeypatch.setattr(real_models, "models_dir", lambda: tmp_path)   # nothing assembled there
    for name in ("gemma3-270m", "qwen2.5-coder-0.5b"):
        with pytest.raises(SystemExit, match=f"--model {name}: .* is not installed .*fetch_text_models.sh"):
            mod.resolve_model(name)
    with pytest.raises(SystemExit, match="no such file, and not one of smollm2-135m, gemma3-270m"):
        mod.resolve_model(str(tmp_path / "nothing.gguf"))


def test_assemble_command_reports_a_missing_part_in_one_line(tmp_path):
    # the installer's second step, without its pip step: in an environment without the part packages it fails
    # with one line naming the first missing package (where they are installed, it checks and keeps the files)
    code = ("import sys; from audiokv_edge.testing import real_models as r; "
            "r.PARTED_MODELS = (r.PartedModel('m.gguf', (('audiokv_no_such_part_package', 'p'),), '0' * 64, 1),); "
            f"sys.exit(r.main(['--assemble', '--dir', {str(tmp_path)!r}]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "error: part p of m.gguf not found (package audiokv_no_such_part_package is not installed); run "
        "`bash scripts/fetch_text_models.sh` (opt-in, about 750 MB from the package registry)"]
