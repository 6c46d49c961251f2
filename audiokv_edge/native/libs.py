"""Locate the native libraries of the one combined build and load the llama_cpp bindings against them.

The top-level CMake build (driven by ``pip install`` through scikit-build-core, or by ``scripts/setup.sh``) produces
one patched llama.cpp (``libllama``, ``libggml*``, ``libmtmd``) and ``libaudiokv`` in one directory:

- an installed (non-editable) package ships them in ``audiokv_edge/lib/``;
- a checkout (editable install, or running from the repository) finds them in ``build/native/lib/``.

llama.cpp's tools of the same build (``llama-server``, ``llama-mtmd-cli``, with ``--kv-evict``) lie in ``bin/``
beside that directory: :func:`tool_path`.

``AUDIOKV_EDGE_LIB_DIR`` overrides both. Nothing is searched or loaded at import time.

:class:`HandleOwner` is a base for wrappers that own native handles (a context manager closing them).

The llama-cpp-python package (0.3.36, installed as pure Python without its own native build) loads ``libllama``
from ``$LLAMA_CPP_LIB_PATH`` and ``libmtmd`` from ``$MTMD_CPP_LIB`` (both directories), else from its own ``lib/``,
when it is first imported: :func:`load_llama_cpp` and :func:`load_mtmd_cpp` point both variables at our build unless
the user set them, and ``scripts/setup.sh`` links our libraries into that ``lib/``
(:mod:`audiokv_edge.native.llama_cpp_links`) so that a plain ``import llama_cpp`` loads them too.
"""

from __future__ import annotations

import importlib
import logging
import os
import pathlib
import sys
import types
from typing import TypeVar

logger = logging.getLogger(__name__)

#: Environment variable naming a directory that holds the native libraries; overrides every other location.
LIB_DIR_ENV = "AUDIOKV_EDGE_LIB_DIR"

#: Build output directory of the combined CMake build, relative to the repository root.
REPO_BUILD_LIB_DIR = pathlib.Path("build") / "native" / "lib"

SETUP_HINT = "run `bash scripts/setup.sh` in the repository (or `pip install .`) to build them"


_Owner = TypeVar("_Owner", bound="HandleOwner")


class HandleOwner:
    """Base of a wrapper that owns native handles and frees them in its ``close()`` (idempotent, defined by the
    subclass): a ``with`` block closes it, and so does garbage collection (an error then, at interpreter shutdown,
    is ignored)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _Owner) -> _Owner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


class NativeLibraryNotFoundError(FileNotFoundError):
    """The patched llama.cpp / libaudiokv shared libraries were not found where the set-up puts them."""


def shared_library_name(base_name: str) -> str:
    """File name of a shared library on this platform.

    Parameters
    ----------
    base_name : str
        Name without prefix or suffix, e.g. ``"llama"``.

    Returns
    -------
    str
        ``lib<base>.dylib`` on macOS, ``<base>.dll`` on Windows, ``lib<base>.so`` elsewhere.
    """
    if sys.platform == "darwin":
        return f"lib{base_name}.dylib"
    if sys.platform == "win32":
        return f"{base_name}.dll"
    return f"lib{base_name}.so"


def _package_lib_dir() -> pathlib.Path:
    return pathlib.Path(__file__).resolve().parent.parent / "lib"


def _repo_lib_dir() -> pathlib.Path:
    return pathlib.Path(__file__).resolve().parents[2] / REPO_BUILD_LIB_DIR


def candidate_lib_dirs() -> list[pathlib.Path]:
    """Directories searched by :func:`lib_dir`, in order.

    Returns
    -------
    list of pathlib.Path
        ``$AUDIOKV_EDGE_LIB_DIR`` alone when it is set; otherwise the installed package's ``lib/`` and then the
        repository's build output ``build/native/lib``.
    """
    override = os.environ.get(LIB_DIR_ENV)
    if override:
        return [pathlib.Path(override).expanduser().resolve()]
    return [_package_lib_dir(), _repo_lib_dir()]


def lib_dir() -> pathlib.Path:
    """Directory holding the patched ``libllama`` (and ``libggml*``, ``libmtmd``, ``libaudiokv``).

    Returns
    -------
    pathlib.Path
        The first of :func:`candidate_lib_dirs` that contains ``libllama``.

    Raises
    ------
    NativeLibraryNotFoundError
        When no candidate holds ``libllama``; the message names every place searched and how to build.
    """
    wanted = shared_library_name("llama")
    candidates = candidate_lib_dirs()
    for directory in candidates:
        if (directory / wanted).is_file():
            return directory
    searched = ", ".join(str(d) for d in candidates)
    source = f" (from ${LIB_DIR_ENV})" if os.environ.get(LIB_DIR_ENV) else ""
    raise NativeLibraryNotFoundError(
        f"{wanted} not found in {searched}{source}: the native libraries are not built; {SETUP_HINT}"
    )


def _library_path(base_name: str) -> pathlib.Path:
    directory = lib_dir()
    path = directory / shared_library_name(base_name)
    if not path.is_file():
        raise NativeLibraryNotFoundError(f"{path.name} not found in {directory}; {SETUP_HINT}")
    return path


def audiokv_library_path() -> pathlib.Path:
    """Path of ``libaudiokv.so`` / ``libaudiokv.dylib`` from the combined build.

    Returns
    -------
    pathlib.Path
        Existing file inside :func:`lib_dir`.

    Raises
    ------
    NativeLibraryNotFoundError
        When the libraries, or libaudiokv alone, have not been built.
    """
    return _library_path("audiokv")


def tool_path(name: str) -> pathlib.Path:
    """Path of a llama.cpp tool of the combined build: ``bin/<name>`` beside :func:`lib_dir` (``build/native/bin``,
    or ``audiokv_edge/bin`` of an installed package).

    Parameters
    ----------
    name : str
        ``"llama-server"`` or ``"llama-mtmd-cli"`` (``.exe`` is added on Windows).

    Raises
    ------
    NativeLibraryNotFoundError
        When the libraries or the tool have not been built (e.g. ``-DAUDIOKV_BUILD_LLAMA_TOOLS=OFF``).
    """
    directory = lib_dir().parent / "bin"
    path = directory / (name + (".exe" if sys.platform == "win32" else ""))
    if not path.is_file():
        raise NativeLibraryNotFoundError(f"{path.name} not found in {directory}; {SETUP_HINT} "
                                         f"(with AUDIOKV_BUILD_LLAMA_TOOLS on, the default)")
    return path


def library_path_env(env: dict | None = None) -> dict:
    """A copy of ``env`` (default: this process's environment) whose dynamic-library search path starts with
    :func:`lib_dir` (``LD_LIBRARY_PATH``, ``DYLD_LIBRARY_PATH`` on macOS, ``PATH`` on Windows), for running the tools
    of :func:`tool_path` against these libraries whatever their RPATH finds."""
    env = dict(os.environ if env is None else env)
    variable = {"darwin": "DYLD_LIBRARY_PATH", "win32": "PATH"}.get(sys.platform, "LD_LIBRARY_PATH")
    current = env.get(variable)
    env[variable] = os.pathsep.join([str(lib_dir())] + ([current] if current else []))
    return env


def _point_env_at(variable: str, directory: pathlib.Path) -> None:
    current = os.environ.get(variable)
    if current:
        if pathlib.Path(current).expanduser().resolve() != directory:
            logger.info("%s is set to %s by the user; not using %s", variable, current, directory)
        return
    os.environ[variable] = str(directory)


def _loaded_libllama(module: types.ModuleType) -> pathlib.Path | None:
    """The file behind the libllama ``llama_cpp.llama_cpp`` loaded, links resolved (None when unknown)."""
    lib = getattr(module, "_lib", None)
    name = getattr(lib, "_name", None)
    return pathlib.Path(name).resolve() if name else None


def load_llama_cpp() -> types.ModuleType:
    """Import the llama_cpp bindings bound to our patched ``libllama``.

    Sets ``LLAMA_CPP_LIB_PATH`` and ``MTMD_CPP_LIB`` to :func:`lib_dir` when they are unset, then imports
    ``llama_cpp``. Calling it again returns the already imported module.

    Returns
    -------
    types.ModuleType
        The ``llama_cpp`` package.

    Raises
    ------
    NativeLibraryNotFoundError
        When the libraries have not been built.
    ImportError
        When the llama-cpp-python package is not installed.
    """
    directory = lib_dir()
    _point_env_at("LLAMA_CPP_LIB_PATH", directory)
    _point_env_at("MTMD_CPP_LIB", directory)
    already = "llama_cpp.llama_cpp" in sys.modules
    try:
        module = importlib.import_module("llama_cpp")
    except ModuleNotFoundError as exc:
        if exc.name != "llama_cpp":
            raise
        raise ImportError(f"the llama_cpp Python package (llama-cpp-python 0.3.36) is not installed; {SETUP_HINT}") from exc
    if already:  # e.g. a plain `import llama_cpp`, which finds our libraries through links (native.llama_cpp_links)
        loaded = _loaded_libllama(sys.modules["llama_cpp.llama_cpp"])
        ours = (directory / shared_library_name("llama")).resolve()
        if loaded is not None and loaded != ours:
            logger.warning("llama_cpp was already imported with libllama %s, not %s", loaded, ours)
    return module


def load_mtmd_cpp() -> types.ModuleType:
    """Import ``llama_cpp.mtmd_cpp`` (multimodal bindings) bound to our patched ``libmtmd``.

    Returns
    -------
    types.ModuleType
        The ``llama_cpp.mtmd_cpp`` module.

    Raises
    ------
    NativeLibraryNotFoundError
        When the libraries, or libmtmd alone, have not been built.
    """
    _library_path("mtmd")
    load_llama_cpp()
    return importlib.import_module("llama_cpp.mtmd_cpp")
