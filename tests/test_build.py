"""The build and load mechanism: patch-series handling, the combined native build, the bindings it serves."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from audiokv_edge.native import libs as native_libs

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import fetch_llama_cpp  # noqa: E402  (a script, not a package module)


# --- patch series handling (no build needed) ------------------------------------------------------------------------


def test_series_reads_names_in_order_and_ignores_comments(tmp_path):
    (tmp_path / "b.patch").write_text("")
    (tmp_path / "a.patch").write_text("")
    (tmp_path / "series").write_text("# header\n\nb.patch\na.patch  # second\n")
    assert [p.name for p in fetch_llama_cpp.read_series(tmp_path / "series")] == ["b.patch", "a.patch"]


def test_series_naming_a_missing_patch_fails_with_its_name(tmp_path):
    (tmp_path / "series").write_text("0001-missing.patch\n")
    with pytest.raises(fetch_llama_cpp.FetchError, match="0001-missing.patch"):
        fetch_llama_cpp.read_series(tmp_path / "series")


def test_stamp_changes_with_patch_content_and_order(tmp_path):
    a, b = tmp_path / "a.patch", tmp_path / "b.patch"
    a.write_text("one")
    b.write_text("two")
    stamps = {fetch_llama_cpp.source_stamp([]), fetch_llama_cpp.source_stamp([a, b]),
              fetch_llama_cpp.source_stamp([b, a])}
    a.write_text("one changed")
    stamps.add(fetch_llama_cpp.source_stamp([a, b]))
    assert len(stamps) == 4


def test_stamp_changes_with_new_file_content_and_name(tmp_path):
    root = tmp_path / "ext"
    (root / "src").mkdir(parents=True)
    (root / "src" / "a.cpp").write_text("one")
    stamps = {fetch_llama_cpp.source_stamp([], None), fetch_llama_cpp.source_stamp([], root)}
    (root / "src" / "a.cpp").write_text("one changed")
    stamps.add(fetch_llama_cpp.source_stamp([], root))
    (root / "src" / "a.cpp").rename(root / "src" / "b.cpp")
    stamps.add(fetch_llama_cpp.source_stamp([], root))
    assert len(stamps) == 4


def test_new_files_are_copied_and_never_replace_llama_cpp_files(tmp_path):
    root, tree = tmp_path / "ext", tmp_path / "tree"
    (root / "src").mkdir(parents=True)
    (root / "src" / "new.cpp").write_text("new")
    (tree / "src").mkdir(parents=True)
    (tree / "src" / "own.cpp").write_text("own")
    fetch_llama_cpp.copy_new_files(tree, root)
    assert (tree / "src" / "new.cpp").read_text() == "new"
    (root / "src" / "new.cpp").unlink()
    (root / "src" / "own.cpp").write_text("replaced")
    with pytest.raises(fetch_llama_cpp.FetchError, match="own.cpp"):
        fetch_llama_cpp.copy_new_files(tree, root)
    assert (tree / "src" / "own.cpp").read_text() == "own"


def _make_patch(tmp_path: pathlib.Path, name: str, old: str, new: str) -> pathlib.Path:
    before, after = tmp_path / "before", tmp_path / "after"
    for root, text in ((before, old), (after, new)):
        (root / "src").mkdir(parents=True, exist_ok=True)
        (root / "src" / "f.txt").write_text(text)
    diff = subprocess.run(["diff", "-u", "before/src/f.txt", "after/src/f.txt"], cwd=tmp_path,
                          capture_output=True, text=True).stdout
    shutil.rmtree(before)
    shutil.rmtree(after)
    path = tmp_path / name
    path.write_text(diff)
    return path


@pytest.mark.skipif(shutil.which("patch") is None, reason="needs the patch program (scripts/install_system_deps.sh)")
def test_patch_that_does_not_apply_fails_naming_it(tmp_path):
    tree = tmp_path / "tree"
    (tree / "src").mkdir(parents=True)
    (tree / "src" / "f.txt").write_text("alpha\nbeta\n")
    good = _make_patch(tmp_path, "0001-good.patch", "alpha\nbeta\n", "alpha\nBETA\n")
    bad = _make_patch(tmp_path, "0002-bad.patch", "gamma\ndelta\n", "gamma\nDELTA\n")
    fetch_llama_cpp.apply_patches(tree, [good])
    assert (tree / "src" / "f.txt").read_text() == "alpha\nBETA\n"
    with pytest.raises(fetch_llama_cpp.FetchError, match="0002-bad.patch"):
        fetch_llama_cpp.apply_patches(tree, [bad])
    assert not list(tree.rglob("*.rej")) and not list(tree.rglob("*.orig"))


def test_sync_rewrites_only_changed_files(tmp_path):
    source, dest = tmp_path / "source", tmp_path / "dest"
    for root in (source, dest):
        (root / "d").mkdir(parents=True)
        (root / "d" / "same.c").write_text("same")
    (source / "d" / "changed.c").write_text("new")
    (dest / "d" / "changed.c").write_text("old")
    (dest / "d" / "gone.c").write_text("gone")
    (source / "added.c").write_text("added")
    os.utime(dest / "d" / "same.c", (1_000_000, 1_000_000))
    assert fetch_llama_cpp.sync_tree(source, dest) == 3
    assert (dest / "d" / "same.c").stat().st_mtime == 1_000_000
    assert (dest / "d" / "changed.c").read_text() == "new"
    assert not (dest / "d" / "gone.c").exists() and (dest / "added.c").read_text() == "added"
    assert fetch_llama_cpp.sync_tree(source, dest) == 0


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"```sh\n(.*?)\n```", readme, flags=re.S)
    assert len(commands) >= 2 and commands[1].startswith("bash scripts/setup.sh && ")
    assert commands[1] in (REPO / ".ci" / "run").read_text()


def test_missing_libraries_give_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(native_libs.LIB_DIR_ENV, str(tmp_path))
    with pytest.raises(native_libs.NativeLibraryNotFoundError, match="scripts/setup.sh"):
        native_libs.lib_dir()


# --- the native build ------------------------------------------------------------------------------------------------


@pytest.mark.native
def test_combined_build_holds_every_library():
    directory = native_libs.lib_dir()
    for name in ("llama", "ggml", "ggml-base", "ggml-cpu", "mtmd"):
        assert (directory / native_libs.shared_library_name(name)).is_file(), name
    if (REPO / "libaudiokv" / "CMakeLists.txt").is_file():
        assert native_libs.audiokv_library_path().parent == directory


@pytest.mark.native
def test_build_tree_is_the_current_patch_series():
    if os.environ.get(native_libs.LIB_DIR_ENV):
        pytest.skip("libraries come from $AUDIOKV_EDGE_LIB_DIR, not this checkout's build")
    stamp = (fetch_llama_cpp.DEFAULT_DEST / fetch_llama_cpp.STAMP_NAME).read_text().strip()
    assert stamp == fetch_llama_cpp.source_stamp(fetch_llama_cpp.read_series()), \
        "build/llama.cpp-src does not match patches/series: run scripts/setup.sh"
    for patch in fetch_llama_cpp.read_series():  # a patched tree can not take its own patches again
        result = subprocess.run(["patch", "-p1", "--dry-run", "--forward", "--batch", "-i", str(patch)],
                                cwd=fetch_llama_cpp.DEFAULT_DEST, capture_output=True, text=True)
        assert result.returncode != 0, f"{patch.name} is not applied in build/llama.cpp-src"


_LOAD_REPORT = textwrap.dedent("""
    import json, sys
    from audiokv_edge.native import libs as native_libs
    llama_cpp = native_libs.load_llama_cpp()
    mtmd_cpp = native_libs.load_mtmd_cpp()
    llama_cpp.llama_backend_init()
    maps = open("/proc/self/maps").read() if sys.platform.startswith("linux") else ""
    print(json.dumps({
        "version": llama_cpp.__version__,
        "libllama": llama_cpp.llama_cpp._lib._name,
        "libmtmd": mtmd_cpp._libmtmd._name,
        "package_dir": str(__import__("pathlib").Path(llama_cpp.__file__).parent),
        "system_info": llama_cpp.llama_print_system_info().decode(),
        "mapped": sorted({line.split()[-1] for line in maps.splitlines() if ".so" in line.split()[-1]}),
    }))
""")


@pytest.fixture(scope="module")
def load_report():
    env = {k: v for k, v in os.environ.items() if k not in ("LLAMA_CPP_LIB_PATH", "MTMD_CPP_LIB")}
    result = subprocess.run([sys.executable, "-c", _LOAD_REPORT], capture_output=True, text=True, env=env,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.native
def test_bindings_are_the_pinned_pure_python_package(load_report):
    assert load_report["version"] == fetch_llama_cpp.VERSION
    own_lib = pathlib.Path(load_report["package_dir"]) / "lib"
    libs = [p for p in own_lib.glob("*") if ".so" in p.name or p.suffix in (".dylib", ".dll")] \
        if own_lib.is_dir() else []
    # set-up links our build there (audiokv_edge.native.llama_cpp_links) so that a plain `import llama_cpp` loads
    # it; anything else would be a native build of its own
    built = [p.name for p in libs if not (p.is_symlink() and p.resolve().parent == native_libs.lib_dir().resolve())]
    assert built == [], f"llama_cpp carries its own native build: {built}"


@pytest.mark.native
def test_bindings_load_our_libraries_without_environment_variables(load_report):
    directory = native_libs.lib_dir()
    assert pathlib.Path(load_report["libllama"]).parent == directory
    assert pathlib.Path(load_report["libmtmd"]).parent == directory
    if load_report["mapped"]:  # Linux: every llama/ggml library in the process is ours
        ours = [m for m in load_report["mapped"] if re.search(r"lib(llama|ggml|mtmd)", m)]
        assert ours and all(pathlib.Path(m).parent == directory for m in ours), ours


@pytest.mark.native
def test_x86_build_leaves_out_the_amx_path(load_report):
    info = load_report["system_info"]
    assert "CPU :" in info or "CPU" in info, info
    if re.match(r"x86_64|AMD64", os.uname().machine):
        assert "AMX_INT8 = 1" not in info, info


@pytest.mark.native
def test_unpatched_libllama_is_built_beside_the_patched_one():
    unpatched = native_libs.lib_dir() / "unpatched" / native_libs.shared_library_name("llama")
    assert unpatched.is_file(), "configure with -DAUDIOKV_BUILD_UNPATCHED_LLAMA=ON"
