"""A plain ``import llama_cpp`` loads this project's patched libraries: scripts/setup.sh links them into the llama_cpp
package's lib/ (audiokv_edge/native/llama_cpp_links.py), where llama-cpp-python looks when no environment variable
says otherwise.

The linking itself is checked on scratch directories (idempotent, stale links removed, foreign files replaced); the
native test runs ``import llama_cpp; llama_cpp.Llama(...)`` in a child process with a clean environment and checks
that the libllama, libmtmd and libggml it maps are the files of our build (libllama exporting the per-head eviction
API of llama_cpp_ext/include/llama-kv-evict.h).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from audiokv_edge.native import libs as native_libs
from audiokv_edge.native import llama_cpp_links as links
from tests.evict_fixtures import run_python


#: Variables through which llama_cpp or audiokv_edge could be pointed at a library directory; the child has none.
LIBRARY_VARIABLES = ("LLAMA_CPP_LIB_PATH", "MTMD_CPP_LIB", native_libs.LIB_DIR_ENV, "LD_LIBRARY_PATH", "LD_PRELOAD",
                     "PYTHONPATH")


def fake_build(directory: Path) -> Path:
    """A build output directory as CMake writes it: versioned files, soname links, a subdirectory, a non-library."""
    directory.mkdir(parents=True)
    for base, version in (("llama", "0.5.0"), ("ggml", "0.25.3"), ("mtmd", "0.5.0")):
        (directory / f"lib{base}.so.{version}").write_bytes(b"\x7fELF " + base.encode())
        (directory / f"lib{base}.so.0").symlink_to(f"lib{base}.so.{version}")
        (directory / f"lib{base}.so").symlink_to(f"lib{base}.so.0")
    (directory / "libaudiokv.so").write_bytes(b"\x7fELF audiokv")
    (directory / "unpatched").mkdir()
    (directory / "unpatched" / "libllama.so").write_bytes(b"\x7fELF unpatched")
    (directory / "notes.txt").write_text("not a library")
    return directory


def fake_package(directory: Path) -> Path:
    (directory / "llama_cpp").mkdir(parents=True)
    (directory / "llama_cpp" / "__init__.py").write_text("")
    return directory / "llama_cpp"


def test_shared_library_names():
    for name in ("libllama.so", "libllama.so.0", "libggml-base.so.0.25.3", "libllama.dylib", "llama.dll"):
        assert links.is_shared_library_name(name), name
    for name in ("notes.txt", "llama.so.txt", "libllama.a", "__init__.py"):
        assert not links.is_shared_library_name(name), name


def test_links_every_library_file_and_nothing_else(tmp_path):
    build, package = fake_build(tmp_path / "build"), fake_package(tmp_path / "site")
    report = links.link_into_llama_cpp(build, package)
    lib = package / "lib"
    expected = sorted(p.name for p in build.iterdir() if p.name not in ("unpatched", "notes.txt"))
    assert sorted(p.name for p in lib.iterdir()) == expected == sorted(report.linked)
    for name in expected:
        assert (lib / name).is_symlink() and Path(os.readlink(lib / name)) == build / name
        assert (lib / name).resolve() == (build / name).resolve()
    assert (lib / "libllama.so").read_bytes() == b"\x7fELF llama"
    assert not report.removed and not report.replaced_files and not report.copied


def test_running_again_changes_nothing(tmp_path):
    build, package = fake_build(tmp_path / "build"), fake_package(tmp_path / "site")
    links.link_into_llama_cpp(build, package)
    before = {p.name: os.lstat(p).st_ino for p in (package / "lib").iterdir()}
    report = links.link_into_llama_cpp(build, package)
    assert not report.linked and not report.removed and len(report.unchanged) == len(before)
    assert {p.name: os.lstat(p).st_ino for p in (package / "lib").iterdir()} == before


def test_a_moved_build_is_relinked_and_stale_links_go(tmp_path):
    old, package = fake_build(tmp_path / "old"), fake_package(tmp_path / "site")
    links.link_into_llama_cpp(old, package)
    new = fake_build(tmp_path / "new")
    (new / "libmtmd.so.0.5.0").unlink()  # a library the new build no longer has
    (new / "libmtmd.so.0").unlink()
    (new / "libmtmd.so").unlink()
    report = links.link_into_llama_cpp(new, package)
    lib = package / "lib"
    assert sorted(report.removed) == ["libmtmd.so", "libmtmd.so.0", "libmtmd.so.0.5.0"]
    assert not any(p.name.startswith("libmtmd") for p in lib.iterdir())
    for p in lib.iterdir():
        assert Path(os.readlink(p)).parent == new, p


def test_foreign_files_are_replaced_and_other_files_kept(tmp_path):
    build, package = fake_build(tmp_path / "build"), fake_package(tmp_path / "site")
    lib = package / "lib"
    lib.mkdir()
    (lib / "libllama.so").write_bytes(b"a libllama llama-cpp-python built itself")
    (lib / "libllava.so").write_bytes(b"a library we do not build")
    report = links.link_into_llama_cpp(build, package)
    assert report.replaced_files == ["libllama.so"]
    assert (lib / "libllama.so").is_symlink() and (lib / "libllama.so").read_bytes() == b"\x7fELF llama"
    assert (lib / "libllava.so").read_bytes() == b"a library we do not build"
    assert not list(lib.glob(".*audiokv-tmp"))


def test_the_library_directory_itself_is_left_alone(tmp_path):
    build = fake_build(tmp_path / "site" / "llama_cpp" / "lib")
    report = links.link_into_llama_cpp(build, build.parent)
    assert not report.linked and not any(p.is_symlink() and p.name == "libaudiokv.so" for p in build.iterdir())
    assert (build / "libllama.so.0.5.0").read_bytes() == b"\x7fELF llama"


def test_no_libllama_is_an_error(tmp_path):
    empty, package = tmp_path / "empty", fake_package(tmp_path / "site")
    empty.mkdir()
    with pytest.raises(native_libs.NativeLibraryNotFoundError, match="libllama.so not found"):
        links.link_into_llama_cpp(empty, package)


def test_command_line(tmp_path, capsys):
    build, package = fake_build(tmp_path / "build"), fake_package(tmp_path / "site")
    assert links.main(["--lib-dir", str(build), "--llama-cpp-dir", str(package)]) == 0
    assert f"links to 10 libraries in {build}" in capsys.readouterr().out
    assert links.main(["--lib-dir", str(tmp_path / "missing"), "--llama-cpp-dir", str(package)]) == 1
    assert "error: libllama.so not found" in capsys.readouterr().err


def test_the_installed_package_is_found_without_importing_it():
    probe = ("import sys; from audiokv_edge.native import llama_cpp_links as L; d = L.llama_cpp_package_dir(); "
             "print(d, 'llama_cpp' in sys.modules)")
    proc = run_python("-c", probe, timeout=60)
    assert proc.returncode == 0, proc.stderr
    where, imported = proc.stdout.split()
    assert (Path(where) / "llama_cpp.py").is_file() and imported == "False"


# --- the real thing: a plain import in a clean environment ---------------------------------------------------------

PLAIN_APP = r"""
import json, sys
import llama_cpp
import llama_cpp.mtmd_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, n_threads=1, verbose=False)
text = llm("Transcribe the audio.", max_tokens=4, temperature=0.0)["choices"][0]["text"]
maps = []
if sys.platform.startswith("linux"):
    with open("/proc/self/maps") as f:
        maps = sorted({line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6})
print(json.dumps({"lib": llama_cpp.llama_cpp._lib._name, "mtmd": llama_cpp.mtmd_cpp._libmtmd._name,
                  "evict_api": hasattr(llama_cpp.llama_cpp._lib, "llama_kv_evict_init"), "maps": maps,
                  "text": text}))
"""


@pytest.mark.native
def test_plain_import_llama_cpp_loads_our_patched_libraries(tmp_path):
    from audiokv_edge.testing import tiny_models as tm

    model = tmp_path / "qwen2.gguf"
    tm.write_text_model(model, tm.TextModelSpec("qwen2", tm.CHATML), seed=1)
    ours = native_libs.lib_dir()
    env = {k: v for k, v in os.environ.items() if k not in LIBRARY_VARIABLES}
    proc = subprocess.run([sys.executable, "-c", PLAIN_APP, str(model)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, ("a plain `import llama_cpp` fails; bash scripts/setup.sh links our libraries into "
                                  f"the llama_cpp package:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["evict_api"], f"{out['lib']} has no llama_kv_evict_init: not the patched libllama"
    assert Path(out["lib"]).resolve() == (ours / native_libs.shared_library_name("llama")).resolve()
    assert Path(out["mtmd"]).resolve() == (ours / native_libs.shared_library_name("mtmd")).resolve()
    if sys.platform.startswith("linux"):  # the files the process mapped: ours, and each library once
        for base in ("llama", "mtmd", "ggml", "ggml-base", "ggml-cpu"):
            mapped = [m for m in out["maps"] if Path(m).name.startswith(f"lib{base}.so")]
            assert mapped == [str((ours / f"lib{base}.so").resolve())], (base, mapped)
