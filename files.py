"""Reading and writing files safely: one clear error per bad file, nothing loaded runs code,
nothing written is ever left torn.

- `DatasetError`: bad input; its message names the file and the problem.
- `read_pickle`: the QMUL files are pickles; an unpickler restricted to containers, numbers,
  strings and numpy arrays (SAFE_GLOBALS says which globals and why) reads them, so a crafted
  file cannot run code (a plain `pickle.load` can).
- `atomic_write`: write to a temporary file with a unique name beside the target, then rename;
  two writers never share a temporary file, and a failed write removes its own.
- `image_size` / `open_image`: image headers and pixels with the file named on failure; every
  picture (sketch or photo) is decoded by `open_image` alone: EXIF orientation applied, 16-bit and
  float pixels scaled to 8 bits, alpha composited on white, palettes expanded, and a pixel limit
  checked from the header before anything is decoded.
- `read_npy`: a vector sketch `.npy`, its header (shape, dtype) checked before the array is read.
"""
import errno
import io
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


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


# Pixel limits, checked from the header before decoding: a photo as PIL's decompression-bomb limit
# (which becomes an error here, not a warning), a sketch far smaller (its ink grouping is the cost).
PHOTO_MAX_PIXELS = 8192 * 8192
SKETCH_MAX_PIXELS = 4096 * 4096
Image.MAX_IMAGE_PIXELS = PHOTO_MAX_PIXELS
EXIF_ORIENTATION = 0x0112
TRANSPOSED = (5, 6, 7, 8)     # EXIF orientations that swap width and height


def _check_pixels(path, size, max_pixels):
    W, H = size
    require(W * H <= max_pixels, f'{path}: {W}x{H} = {W * H} pixels, more than the limit of {max_pixels}')


def _orientation(im):
    try:
        return int(im.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:   # a damaged EXIF block: the picture as stored
        return 1


def image_size(path, max_pixels=PHOTO_MAX_PIXELS):
    """(W, H) as open_image gives the picture (EXIF orientation applied), from the header; the file
    is checked (PIL verify) without decoding the pixels."""
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()
        with Image.open(path) as im:   # verify must come first after opening; the EXIF is read after
            turned = _orientation(im) in TRANSPOSED
    except Exception as e:  # decoders raise OSError, SyntaxError, struct.error, ... on bad bytes
        raise DatasetError(f'{path}: not a readable image ({type(e).__name__}: {e})') from None
    _check_pixels(path, size, max_pixels)
    return size[::-1] if turned else size


def as_rgb(img):
    """PIL image of any mode -> 8-bit RGB: 16-bit integer pixels scaled by 255 / 65535 (not
    clipped), 32-bit integers read as 16-bit (PIL's mode for some 16-bit files), float pixels as
    [0, 1] when they all lie in it, else as [0, 255] (clipped), NaN and infinite pixels as 0; alpha
    (RGBA, LA, PA, a palette with transparency) composited on white; palettes, CMYK and 1-bit
    expanded."""
    if img.mode.startswith('I') or img.mode == 'F':
        a = np.asarray(img, dtype=np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        if img.mode == 'F':
            a = a * 255 if a.size and a.min() >= 0 and a.max() <= 1 else a
        else:
            a = a.clip(0, 65535) * (255 / 65535)
        img = Image.fromarray(np.round(a.clip(0, 255)).astype(np.uint8), 'L')
    if img.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La') or (img.mode == 'P' and 'transparency' in img.info):
        img = img.convert('RGBA')
        return Image.alpha_composite(Image.new('RGBA', img.size, 'white'), img).convert('RGB')
    return img.convert('RGB')


def open_image(path, max_pixels=PHOTO_MAX_PIXELS):
    """The picture of `path` as 8-bit RGB (as_rgb), turned by its EXIF orientation: the one way
    sketches and photos are decoded. DatasetError naming the file if corrupt or over max_pixels."""
    try:
        with Image.open(path) as im:
            _check_pixels(path, im.size, max_pixels)
            im.load()
            return as_rgb(ImageOps.exif_transpose(im))
    except DatasetError:
        raise
    except Exception as e:  # as in image_size
        raise DatasetError(f'{path}: cannot decode image ({type(e).__name__}: {e})') from None


NUMERIC_KINDS = 'biuf'    # bool, integers, floats: a complex or string array is not a sketch


def read_npy(path, max_rows, columns=3):
    """A numeric (L, columns) array from a .npy file with L <= max_rows, its header checked before
    the data are read (a header may claim any shape); pickles are refused (allow_pickle=False)."""
    try:
        with open(path, 'rb') as f:
            version = np.lib.format.read_magic(f)
            require(version in ((1, 0), (2, 0)), f'{path}: unsupported .npy version {version}')
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
    except DatasetError:
        raise
    except Exception as e:  # empty file, bad magic, header not a dict literal, ...
        raise DatasetError(f'{path}: not a readable .npy file ({type(e).__name__}: {e})') from None
    require(dtype.kind in NUMERIC_KINDS and not dtype.fields,
            f'{path}: a {dtype} array; a vector sketch holds real numbers (x, y, pen)')
    require(len(shape) == 2 and shape[1] == columns,
            f'{path}: expected an (L, {columns}) array x, y, pen, got shape {shape}')
    require(shape[0] <= max_rows, f'{path}: {shape[0]} points, more than --max_sketch_points {max_rows}')
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # data shorter than the header says, ...
        raise DatasetError(f'{path}: not a readable .npy file ({type(e).__name__}: {e})') from None
