"""Link the native libraries of this build into the installed ``llama_cpp`` package, so that a plain
``import llama_cpp`` (no environment variable) loads the patched libllama, libmtmd and libggml*.

llama-cpp-python 0.3.36, installed as pure Python (``LLAMA_BUILD=OFF``), loads libllama from ``$LLAMA_CPP_LIB_PATH``
or else from its package's own ``lib/`` directory (libmtmd: ``$MTMD_CPP_LIB`` or that ``lib/``; ``llama_cpp._ggml``
always reads ``lib/``). :func:`link_into_llama_cpp` puts one symbolic link there per shared-library file of
:func:`~audiokv_edge.native.libs.lib_dir` (versioned names included: libllama's ``$ORIGIN`` run path then finds
``libggml.so.0`` beside the link), or a copy where links cannot be made (Windows without developer mode). The
libraries stay where the build put them, so a rebuild is seen at once and every path resolves to the same files
:func:`~audiokv_edge.native.libs.load_llama_cpp` loads.

``scripts/setup.sh`` runs it after every build (editable install: links into ``build/native/lib``); after a
non-editable ``pip install .`` run it once (links into the installed ``audiokv_edge/lib``)::

    python -m audiokv_edge.native.llama_cpp_links

It is idempotent: a link already right is left alone; a link with one of our names pointing elsewhere, or a regular
file with one of our names (a llama-cpp-python that built its own libraries), is replaced (logged); a link to a
library the build no longer has is removed. Every replacement is atomic (``os.replace``). Nothing runs at import
time.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import logging
import os
import pathlib
import shutil
import sys
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

__all__ = ["LinkReport", "is_shared_library_name", "library_files", "llama_cpp_package_dir", "link_into_llama_cpp",
           "main"]

#: File names of shared libraries on Linux / BSD (``libllama.so``, ``libllama.so.0``, ``libllama.so.0.5.0``), macOS
#: and Windows.
SHARED_LIBRARY_PATTERNS = ("lib*.so", "lib*.so.*", "*.dylib", "*.dll")


@dataclass
class LinkReport:
    """What :func:`link_into_llama_cpp` did.

    Attributes
    ----------
    target_dir : pathlib.Path
        The ``lib/`` directory of the llama_cpp package.
    source_dir : pathlib.Path
        The directory of our libraries.
    linked : list of str
        Names (re)linked or copied now.
    unchanged : list of str
        Names already linked right.
    removed : list of str
        Stale links removed (libraries the build no longer has).
    replaced_files : list of str
        Regular files (not links) that were replaced.
    copied : bool
        True when links were impossible and files were copied.
    """

    target_dir: pathlib.Path
    source_dir: pathlib.Path
    linked: list = field(default_factory=list)
    unchanged: list = field(default_factory=list)
    removed: list = field(default_factory=list)
    replaced_files: list = field(default_factory=list)
    copied: bool = False

    def summary(self) -> str:
        """One line for a log or a terminal."""
        how = "copies of" if self.copied else "links to"
        parts = [f"{self.target_dir}: {how} {len(self.linked) + len(self.unchanged)} libraries in {self.source_dir}"]
        if self.linked:
            parts.append(f"{len(self.linked)} new")
        if self.removed:
            parts.append(f"{len(self.removed)} stale removed")
        if self.replaced_files:
            parts.append(f"replaced files: {', '.join(self.replaced_files)}")
        return "; ".join(parts)


def is_shared_library_name(name: str) -> bool:
    """Whether ``name`` looks like a shared library of any platform (:data:`SHARED_LIBRARY_PATTERNS`)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in SHARED_LIBRARY_PATTERNS)


def library_files(directory: pathlib.Path) -> list[pathlib.Path]:
    """The shared-library files (or links to them) directly inside ``directory``, sorted by name; subdirectories
    (``unpatched/``) are not entered."""
    return sorted(p for p in directory.iterdir() if is_shared_library_name(p.name) and p.is_file())


def llama_cpp_package_dir() -> pathlib.Path:
    """Directory of the installed ``llama_cpp`` package, found without importing it (importing loads libllama).

    Raises
    ------
    ImportError
        llama-cpp-python is not installed.
    """
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the llama_cpp Python package (llama-cpp-python 0.3.36) is not installed")
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def _place(source: pathlib.Path, destination: pathlib.Path, report: LinkReport) -> None:
    """Link (or copy) ``source`` at ``destination`` through a temporary name and ``os.replace``."""
    temporary = destination.with_name(f".{destination.name}.audiokv-tmp")
    if temporary.is_symlink() or temporary.exists():
        temporary.unlink()
    if not report.copied:
        try:
            os.symlink(source, temporary)
        except OSError:  # e.g. Windows without the privilege: copy instead
            report.copied = True
    if report.copied:
        shutil.copy2(source.resolve(), temporary)
    os.replace(temporary, destination)


def link_into_llama_cpp(source_dir: pathlib.Path | None = None,
                        package_dir: pathlib.Path | None = None) -> LinkReport:
    """Make ``<llama_cpp package>/lib`` hold links to every shared library of ``source_dir``.

    Parameters
    ----------
    source_dir : pathlib.Path, optional
        Where our libraries are; default :func:`~audiokv_edge.native.libs.lib_dir` (``$AUDIOKV_EDGE_LIB_DIR``, the
        installed package's ``lib/`` or the checkout's ``build/native/lib``).
    package_dir : pathlib.Path, optional
        The llama_cpp package directory; default :func:`llama_cpp_package_dir`.

    Returns
    -------
    LinkReport

    Raises
    ------
    NativeLibraryNotFoundError
        The libraries are not built (no libllama in ``source_dir``).
    ImportError
        llama-cpp-python is not installed.
    OSError
        The package directory is not writable.
    """
    from audiokv_edge.native import libs as native_libs

    if source_dir is None:
        source_dir = native_libs.lib_dir()
    source_dir = pathlib.Path(source_dir).absolute()
    llama = source_dir / native_libs.shared_library_name("llama")
    if not llama.is_file():
        raise native_libs.NativeLibraryNotFoundError(f"{llama.name} not found in {source_dir}; "
                                                     f"{native_libs.SETUP_HINT}")
    target_dir = (pathlib.Path(package_dir) if package_dir is not None else llama_cpp_package_dir()) / "lib"
    target_dir.mkdir(exist_ok=True)
    report = LinkReport(target_dir=target_dir, source_dir=source_dir)
    ours = {p.name: p for p in library_files(source_dir)}
    if target_dir.resolve() == source_dir.resolve():  # the libraries already live there: nothing to link
        report.unchanged.extend(ours)
        return report

    for name, source in ours.items():
        destination = target_dir / name
        if destination.is_symlink():
            if pathlib.Path(os.readlink(destination)) == source:
                report.unchanged.append(name)
                continue
            logger.info("%s: relinking (it pointed at %s)", destination, os.readlink(destination))
        elif destination.exists():
            if destination.is_dir():
                raise IsADirectoryError(f"{destination} is a directory; remove it and run again")
            logger.warning("%s: replacing a regular file with a link to %s", destination, source)
            report.replaced_files.append(name)
        _place(source, destination, report)
        report.linked.append(name)

    for entry in sorted(target_dir.iterdir()):
        if entry.is_symlink() and is_shared_library_name(entry.name) and entry.name not in ours:
            logger.info("%s: removing a stale link to %s", entry, os.readlink(entry))
            entry.unlink()
            report.removed.append(entry.name)
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m audiokv_edge.native.llama_cpp_links``: link, print one summary line; exit 1 with one error line."""
    parser = argparse.ArgumentParser(prog="python -m audiokv_edge.native.llama_cpp_links",
                                     description="Link this build's libllama, libmtmd and libggml* into the installed "
                                                 "llama_cpp package so that a plain `import llama_cpp` loads them.")
    parser.add_argument("--lib-dir", type=pathlib.Path, default=None,
                        help="directory of our libraries (default: where audiokv_edge finds them)")
    parser.add_argument("--llama-cpp-dir", type=pathlib.Path, default=None,
                        help="the llama_cpp package directory (default: the one this Python imports)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        report = link_into_llama_cpp(args.lib_dir, args.llama_cpp_dir)
    except (ImportError, OSError) as exc:
        print(f"{parser.prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
