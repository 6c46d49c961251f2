#!/usr/bin/env python3
"""Fetch the pinned llama.cpp source, add the project's new files and apply its hook patches.

The llama.cpp source is the one vendored in the llama-cpp-python 0.3.36 sdist from PyPI, pinned by version and
sha256 and cached outside the work tree ($AUDIOKV_EDGE_CACHE, default ~/.cache/audiokv-edge). Its
vendor/llama.cpp is extracted to build/llama.cpp-src (gitignored), then:

1. the new files of llama_cpp_ext/ (the per-head eviction: include/llama-kv-evict.h, src/llama-kv-evict-*) are
   copied to the same relative paths in the tree; a file that would replace one of llama.cpp's own stops the script
   (changes to llama.cpp's files belong in a patch);
2. patches/series is applied: one patch file name per line (relative to patches/, applied in order with
   ``patch -p1`` and no fuzz; blank lines and ``#`` comments are ignored). The patches are the hooks into
   llama.cpp's own files. A patch that does not apply cleanly stops the script with an error naming it.

Rebuilds stay incremental: a stamp file records the sdist hash, the new files and the patch set; when it matches
nothing is touched. When any of them changes the tree is rebuilt in a scratch directory and only files whose content
changed are replaced (with a fresh mtime), so the CMake build recompiles just what changed.

``--pristine`` writes the unpatched tree instead (build/llama.cpp-pristine), used to compare patched and unpatched
builds. ``--print-sdist`` fetches the sdist and prints its path (the llama_cpp Python package is installed from it).

Exit status: 0 on success, 1 on any error (message on stderr naming the problem).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile

logger = logging.getLogger("fetch_llama_cpp")

PACKAGE = "llama-cpp-python"
VERSION = "0.3.36"
SDIST_NAME = f"llama_cpp_python-{VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
VENDOR_PREFIX = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
STAMP_NAME = ".audiokv-source-stamp"
# Bump when the way the tree is produced changes, so that existing trees are refreshed.
LAYOUT_VERSION = "2"

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
PATCH_DIR = REPO_ROOT / "patches"
NEW_FILES_DIR = REPO_ROOT / "llama_cpp_ext"
SERIES_FILE = PATCH_DIR / "series"
DEFAULT_DEST = REPO_ROOT / "build" / "llama.cpp-src"
DEFAULT_PRISTINE_DEST = REPO_ROOT / "build" / "llama.cpp-pristine"


class FetchError(RuntimeError):
    """Fetching, verifying, extracting or patching the llama.cpp source failed."""


def cache_dir() -> pathlib.Path:
    """Directory holding the downloaded sdist: $AUDIOKV_EDGE_CACHE or ~/.cache/audiokv-edge."""
    return pathlib.Path(os.environ.get("AUDIOKV_EDGE_CACHE") or pathlib.Path.home() / ".cache" / "audiokv-edge")


def sha256_of(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_sdist() -> pathlib.Path:
    """Return the verified sdist path, downloading it with pip into the cache when missing.

    Raises
    ------
    FetchError
        When pip fails or the file's sha256 is not the pinned one.
    """
    directory = cache_dir()
    sdist = directory / SDIST_NAME
    if not sdist.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        logger.info("downloading %s==%s sdist into %s", PACKAGE, VERSION, directory)
        # --no-binary for this package only: `:all:` would make pip build cmake from source for the metadata step.
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", PACKAGE,
                   "--no-build-isolation", f"{PACKAGE}=={VERSION}", "-d", str(directory)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not sdist.is_file():
            raise FetchError(f"pip could not download {PACKAGE}=={VERSION} ({' '.join(command)}):\n"
                             f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
    actual = sha256_of(sdist)
    if actual != SDIST_SHA256:
        raise FetchError(f"{sdist} has sha256 {actual}, expected {SDIST_SHA256}: the file is corrupt or not the "
                         f"pinned release; delete it and run again")
    return sdist


def read_series(series_file: pathlib.Path = SERIES_FILE) -> list[pathlib.Path]:
    """Patch files named by the series file, in order (an absent or empty series means no patches).

    Raises
    ------
    FetchError
        When a listed patch file does not exist.
    """
    if not series_file.is_file():
        return []
    patches = []
    for number, raw in enumerate(series_file.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        path = series_file.parent / line
        if not path.is_file():
            raise FetchError(f"{series_file}:{number}: patch file {line!r} does not exist in {series_file.parent}")
        patches.append(path)
    return patches


def new_files(root: pathlib.Path | None = NEW_FILES_DIR) -> list[pathlib.Path]:
    """Paths, relative to ``root``, of the new files to copy into the tree (sorted; none when root is None/absent)."""
    if root is None or not root.is_dir():
        return []
    return sorted(p.relative_to(root) for p in root.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc"))


def source_stamp(patches: list[pathlib.Path], new_files_root: pathlib.Path | None = NEW_FILES_DIR) -> str:
    """Identity of a tree: layout version, sdist hash, path and content of each new file, then name and content of
    each patch in order."""
    digest = hashlib.sha256()
    digest.update(f"layout {LAYOUT_VERSION}\nsdist {SDIST_SHA256}\n".encode())
    for relative in new_files(new_files_root):
        digest.update(f"file {relative.as_posix()}\n".encode())
        digest.update(hashlib.sha256((new_files_root / relative).read_bytes()).hexdigest().encode())
    for patch in patches:
        digest.update(f"patch {patch.name}\n".encode())
        digest.update(hashlib.sha256(patch.read_bytes()).hexdigest().encode())
    return digest.hexdigest()


def extract_vendor(sdist: pathlib.Path, target: pathlib.Path) -> None:
    """Extract vendor/llama.cpp of the sdist into ``target`` (which must not exist)."""
    target.mkdir(parents=True)
    with tarfile.open(sdist, "r:gz") as archive:
        members = []
        for member in archive.getmembers():
            if not member.name.startswith(VENDOR_PREFIX) or not (member.isfile() or member.isdir()):
                continue
            member.name = member.name[len(VENDOR_PREFIX):]
            if member.name:
                members.append(member)
        if not members:
            raise FetchError(f"{sdist} holds no {VENDOR_PREFIX}")
        if hasattr(tarfile, "data_filter"):
            archive.extractall(target, members=members, filter="data")
        else:  # Python < 3.11.4: names were checked above to lie under the prefix
            archive.extractall(target, members=members)


def copy_new_files(tree: pathlib.Path, root: pathlib.Path | None = NEW_FILES_DIR) -> None:
    """Copy the files under ``root`` to the same relative paths in ``tree``; none may exist there already."""
    for relative in new_files(root):
        dest = tree / relative
        if dest.exists():
            raise FetchError(f"{root.name}/{relative.as_posix()} would replace llama.cpp's own {relative.as_posix()}: "
                             f"new files must have new names; change llama.cpp's files with a patch in patches/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / relative, dest)
        logger.info("added %s", relative.as_posix())


def apply_patches(tree: pathlib.Path, patches: list[pathlib.Path]) -> None:
    """Apply each patch with ``patch -p1`` (no fuzz) in order; stop at the first one that does not apply."""
    for index, patch in enumerate(patches, start=1):
        command = ["patch", "-p1", "--forward", "--batch", "--fuzz=0", "--no-backup-if-mismatch",
                   "-r", "-", "-i", str(patch)]
        try:
            result = subprocess.run(command, cwd=tree, capture_output=True, text=True)
        except FileNotFoundError as exc:
            raise FetchError("the `patch` program is missing; run scripts/install_system_deps.sh") from exc
        if result.returncode != 0:
            shown = patch.relative_to(REPO_ROOT) if patch.is_relative_to(REPO_ROOT) else patch
            raise FetchError(f"patch {index}/{len(patches)} {shown} does not apply to "
                             f"llama.cpp {VERSION}:\n{result.stdout}{result.stderr}")
        logger.info("applied %s", patch.name)


def _files_under(root: pathlib.Path) -> set[pathlib.Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def sync_tree(source: pathlib.Path, dest: pathlib.Path) -> int:
    """Make ``dest`` hold exactly the files of ``source``, rewriting only files whose content differs.

    Returns
    -------
    int
        Number of files written or removed.
    """
    changed = 0
    wanted = _files_under(source)
    present = _files_under(dest) if dest.is_dir() else set()
    for relative in sorted(present - wanted):
        if relative.name == STAMP_NAME:
            continue
        (dest / relative).unlink()
        changed += 1
    for relative in sorted(wanted):
        src, dst = source / relative, dest / relative
        if dst.is_file() and dst.stat().st_size == src.stat().st_size and dst.read_bytes() == src.read_bytes():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists() or dst.is_symlink():
            dst.unlink()
        shutil.copyfile(src, dst)  # fresh mtime: the build sees the change
        shutil.copymode(src, dst)
        changed += 1
    return changed


def prepare_tree(dest: pathlib.Path, patches: list[pathlib.Path],
                 new_files_root: pathlib.Path | None = NEW_FILES_DIR) -> bool:
    """Bring ``dest`` to the sdist's llama.cpp with the files under ``new_files_root`` added and ``patches`` applied.

    Returns
    -------
    bool
        True when files were written, False when the tree was already current.
    """
    stamp = source_stamp(patches, new_files_root)
    stamp_file = dest / STAMP_NAME
    if stamp_file.is_file() and stamp_file.read_text().strip() == stamp:
        logger.info("%s is current (%d new files, %d patches)", dest, len(new_files(new_files_root)), len(patches))
        return False
    sdist = fetch_sdist()
    scratch = dest.parent / f".{dest.name}.tmp"
    if scratch.exists():
        shutil.rmtree(scratch)
    try:
        extract_vendor(sdist, scratch)
        copy_new_files(scratch, new_files_root)
        apply_patches(scratch, patches)
        if stamp_file.exists():
            stamp_file.unlink()  # an interrupted sync must not leave a tree that looks current
        changed = sync_tree(scratch, dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    stamp_file.write_text(stamp + "\n")
    logger.info("%s: %d files updated (%d patches)", dest, changed, len(patches))
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=pathlib.Path, default=None, help="tree to write (default build/llama.cpp-src, "
                        "or build/llama.cpp-pristine with --pristine)")
    parser.add_argument("--pristine", action="store_true", help="write the unpatched source (no new files, no patches)")
    parser.add_argument("--print-sdist", action="store_true", help="fetch and verify the sdist, print its path")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="fetch_llama_cpp: %(message)s", stream=sys.stdout)
    try:
        if args.print_sdist:
            print(fetch_sdist())
            return 0
        patches = [] if args.pristine else read_series()
        dest = args.dest or (DEFAULT_PRISTINE_DEST if args.pristine else DEFAULT_DEST)
        prepare_tree(dest.resolve(), patches, None if args.pristine else NEW_FILES_DIR)
    except FetchError as exc:
        print(f"fetch_llama_cpp: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
