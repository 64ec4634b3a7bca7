"""Atomic file writes, the one way every file of the package is written (datasets, splits,
weights and model cards, reports, plots, run records), and the one SHA-256 helper every file
check uses (saved weights, raw dataset files)."""
import contextlib
import hashlib
import os
import os.path as osp
import tempfile
from typing import IO, Iterator, Optional


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str, mode: str = 'wb', encoding: Optional[str] = None) -> Iterator[IO]:
    r"""Opens a temporary file beside :obj:`path` for writing; when the block ends without an
    error the file is flushed to disk and renamed over :obj:`path` (:func:`os.replace`), so
    that readers see the old file or the new one, never a part of one. On any error the
    temporary file is removed and :obj:`path` is left as it was.

    The file gets the permissions of any new file (:func:`tempfile.mkstemp` creates 0600).

    Args:
        path (str): The file; its folder is created if needed.
        mode (str, optional): :obj:`"wb"` or :obj:`"w"`. (default: :obj:`"wb"`)
        encoding (str, optional): Text encoding for :obj:`mode="w"`. (default: :obj:`None`)
    """
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(path) + '.', suffix='.tmp',
                               dir=folder)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_write_text(text: str, path: str) -> str:
    """Writes :obj:`text` (UTF-8) to :obj:`path` with :func:`atomic_open`; returns :obj:`path`."""
    with atomic_open(path, 'w', encoding='utf-8') as f:
        f.write(text)
    return path


def atomic_write_bytes(data: bytes, path: str) -> str:
    """Writes :obj:`data` to :obj:`path` with :func:`atomic_open`; returns :obj:`path`."""
    with atomic_open(path, 'wb') as f:
        f.write(data)
    return path


def sha256_bytes(data: bytes) -> str:
    """The SHA-256 digest of :obj:`data` as 64 lower-case hexadecimal digits."""
    return hashlib.sha256(data).hexdigest()


def file_digest(path: str, algorithm: str = 'sha256', chunk_size: int = 1 << 24) -> str:
    """The hexadecimal :mod:`hashlib` digest of the file :obj:`path`, read in chunks of
    :obj:`chunk_size` bytes so that a file of many GB needs little memory.

    Args:
        path (str): The file.
        algorithm (str, optional): A :mod:`hashlib` name. (default: :obj:`"sha256"`)
        chunk_size (int, optional): Bytes read at a time. (default: 16 MiB)
    """
    digest = hashlib.new(algorithm)
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(chunk_size), b''):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str) -> str:
    """The SHA-256 digest of the file :obj:`path` (64 lower-case hexadecimal digits)."""
    return file_digest(path, 'sha256')
