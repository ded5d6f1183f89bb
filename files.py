"""Reading and writing files safely: one clear error per bad file, nothing loaded runs code,
nothing written is ever left torn.

- `DatasetError`: bad input; its message names the file and the problem.
- `read_pickle`: the QMUL files are pickles; an unpickler restricted to containers, numbers,
  strings and numpy arrays (SAFE_GLOBALS says which globals and why) reads them, so a crafted
  file cannot run code (a plain `pickle.load` can).
- `atomic_write`: write to a temporary file with a unique name beside the target, then rename;
  two writers never share a temporary file, and a failed write removes its own.
- `image_size` / `open_image`: image headers and pixels with the file named on failure.
"""
import errno
import io
import os
import pickle
import tempfile
from pathlib import Path

from PIL import Image


class DatasetError(Exception):
    """Bad input; the message names the file and the problem."""


def require(ok, message):
    if not ok:
        raise DatasetError(message)


# What the QMUL pickles hold (dicts of lists, tuples, numbers, strings and numpy arrays): the
# only globals an unpickler may resolve. Everything else, e.g. os.system, is refused.
# Protocols 0-2 name builtins '__builtin__' and write bytes through _codecs.encode (a text codec:
# the encodings package only); protocol 5 writes arrays through numpy's _frombuffer.
SAFE_GLOBALS = {
    ('numpy', 'ndarray'), ('numpy', 'dtype'),
    ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
    ('numpy.core.numeric', '_frombuffer'), ('numpy._core.numeric', '_frombuffer'),
    ('collections', 'OrderedDict'), ('builtins', 'set'), ('builtins', 'frozenset'), ('builtins', 'complex'),
    ('__builtin__', 'set'), ('__builtin__', 'frozenset'), ('__builtin__', 'complex'), ('_codecs', 'encode'),
}


class SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'refused to load {module}.{name}: a data pickle may hold only '
                                     f'containers, numbers, strings and numpy arrays')


def read_pickle(path):
    """A pickled dict, read with `SafeUnpickler` (DatasetError naming the file otherwise)."""
    try:
        with open(path, 'rb') as f:
            data = SafeUnpickler(io.BufferedReader(f)).load()
    except Exception as e:  # unpickling bad bytes can raise almost anything
        raise DatasetError(f'{path}: cannot read pickle ({type(e).__name__}: {e})') from None
    require(isinstance(data, dict), f'{path}: expected a pickled dict, got {type(data).__name__}')
    return data


class WriteError(Exception):
    """A file could not be written; the message names it and says why in plain words."""


def describe_os_error(e):
    if e.errno == errno.ENOSPC:
        return 'the disk is full'
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return 'permission denied (a read-only folder or file system?)'
    if e.errno == errno.EDQUOT:
        return 'the disk quota is exceeded'
    return e.strerror or str(e)


def atomic_write(path, write):
    """Call write(file_object) on a fresh temporary file beside `path`, then rename it onto `path`.

    The temporary name is unique (tempfile), so concurrent writers of the same target cannot tear
    each other's file; on any failure (full disk, interrupt) the temporary file is removed and the
    old `path`, if any, is untouched. OS errors become WriteError naming `path`.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
        with os.fdopen(fd, 'wb') as f:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the target gets the usual mode
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise WriteError(f'cannot write {path}: {describe_os_error(e)}') from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def image_size(path):
    """(W, H) from the header; the file is checked (PIL verify) without decoding the pixels."""
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()
    except Exception as e:  # decoders raise OSError, SyntaxError, struct.error, ... on bad bytes
        raise DatasetError(f'{path}: not a readable image ({type(e).__name__}: {e})') from None
    return size


def open_image(path):
    """Fully decoded PIL image in its own mode (DatasetError naming the file if corrupt)."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except Exception as e:  # as in image_size
        raise DatasetError(f'{path}: cannot decode image ({type(e).__name__}: {e})') from None
