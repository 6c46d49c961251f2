"""Write a GGUF with gguf-py so that an interrupted write never leaves a partial file: a writer on a temporary file
beside the target, renamed over it only once complete (readable like any new file, not mkstemp's 0600)."""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile


@contextlib.contextmanager
def atomic_gguf_writer(path: str | pathlib.Path, arch: str):
    """Yield a ``gguf.GGUFWriter`` for ``arch``; add keys and tensors in the block. On leaving it normally the file
    is written and renamed to ``path``; on an exception the temporary file is removed and ``path`` is untouched."""
    import gguf

    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, arch)
        yield w
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
