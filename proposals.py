"""Photo region proposals: selective search (the paper's photo nodes, arXiv 2007.15103;
docs/method.md, section 2)
and the two caches that keep them.

- QMUL layout: the dataset ships `<Name>_Select_Search_boxes_min10_topN16.pickle`; when a user
  lacks it, `update_box_pickle` computes the same table (box 0 = the whole photo, then up to 15
  ranked proposals with sides >= 10 px) and writes it in the same format.
- Folder layout and search galleries: a JSON cache keyed by each photo's relative path, file size
  and modification time (`BoxCache`), so a replaced photo gets new boxes and the cache cannot carry
  code.
- `check_boxes`: the one check every box table passes, whatever its source (a QMUL pickle, a
  Folder or gallery cache): finite, inside the image after clipping, positive area, box 0 the whole
  photo where the format says so. A bad cache entry is recomputed (and counted), never used.

    python prepare.py proposals PHOTO_DIR BOXES_OUT.pickle     # precompute a QMUL-style pickle
"""
import ctypes
import json
import pickle
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from files import (
    DatasetError,
    WriteError,
    as_rgb,
    atomic_write,
    image_size,
    open_image,
    read_pickle,
    require,
)

BOX_TOP_N, BOX_MIN_SIDE = 16, 10
SELECTIVE_SEARCH_MAX_SIDE = 512   # larger photos are searched downscaled (speed), boxes scaled back
PRECOMPUTE_HINT = 'precompute the boxes elsewhere with python prepare.py proposals PHOTO_DIR BOXES_OUT.pickle'
IMAGE_EXTENSIONS = {'.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff'}


def seed_c_rand(seed=0):
    # cv2's selective search ranks its regions with C rand(); seeding it makes the proposals
    # (and hence the caches) reproducible. Harmless where libc is not reachable.
    try:
        ctypes.CDLL(None).srand(seed)
    except (OSError, AttributeError):
        pass


def selective_search(img, top_n=BOX_TOP_N, min_side=BOX_MIN_SIDE, max_side=SELECTIVE_SEARCH_MAX_SIDE):
    """PIL image -> list of at most top_n [x1, y1, x2, y2] ints in its pixel frame.

    Box 0 is the whole image; then the selective-search proposals (fast mode) in their ranked
    order, skipping those with a side < min_side and duplicates - the convention of the QMUL pickles.
    """
    img = as_rgb(img)
    W, H = img.size
    scale = min(1.0, max_side / max(W, H))
    small = img.resize((max(1, round(W * scale)), max(1, round(H * scale))), Image.BILINEAR) if scale < 1 else img
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(cv2.cvtColor(np.asarray(small), cv2.COLOR_RGB2BGR))
    ss.switchToSelectiveSearchFast()
    seed_c_rand(0)
    boxes = [[0, 0, W, H]]
    for x, y, w, h in ss.process():
        b = [min(W, round(x / scale)), min(H, round(y / scale)),
             min(W, round((x + w) / scale)), min(H, round((y + h) / scale))]
        if b[2] - b[0] >= min_side and b[3] - b[1] >= min_side and b not in boxes:
            boxes.append(b)
            if len(boxes) == top_n:
                break
    return boxes


def check_boxes(raw, size, where, whole_first):
    """Raw box list -> (float32 (n, 4) inside the W x H image, repairs [(what, count)]).

    DatasetError naming `where` unless: a non-empty list of finite [x1, y1, x2, y2], with box 0
    the whole photo [0, 0, W, H] when whole_first (the QMUL format, and every table selective_search
    writes: a table made for photos of another size fails here), and at least one box with a
    positive area inside the image. Boxes partly outside are clamped, zero-area ones dropped (repairs)."""
    try:
        b = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        b = np.zeros((0, 0))
    require(b.ndim == 2 and b.shape[1:] == (4,) and len(b) > 0,
            f'{where}: boxes must be a non-empty list of [x1, y1, x2, y2]')
    require(np.isfinite(b).all(), f'{where}: boxes contain NaN or infinite values')
    W, H = size
    if whole_first:
        require(b[0].tolist() == [0, 0, W, H],
                f'{where}: box 0 is {b[0].tolist()} but the photo is {W}x{H} (box 0 must be the whole '
                f'photo [0, 0, W, H]: boxes made for another photo size?)')
    c = b.copy()
    c[:, [0, 2]] = c[:, [0, 2]].clip(0, W)
    c[:, [1, 3]] = c[:, [1, 3]].clip(0, H)
    repairs = []
    moved = int((c != b).any(axis=1).sum())
    if moved:
        repairs.append(('boxes clamped to the image', moved))
    ok = (c[:, 2] > c[:, 0]) & (c[:, 3] > c[:, 1])
    require(ok.any(), f'{where}: no box has a positive area inside the {W}x{H} image')
    if not ok.all():
        repairs.append(('zero-area boxes dropped', int((~ok).sum())))
    return c[ok].astype(np.float32), repairs


def search_all(photo_paths, desc):
    """{name: path} -> {name: selective-search boxes}, with a progress bar for long runs."""
    return {name: selective_search(open_image(path))
            for name, path in tqdm(sorted(photo_paths.items()), desc=desc, disable=len(photo_paths) < 20)}


def write_or_explain(path, write, hint=None):
    try:
        atomic_write(path, write)
    except WriteError as e:
        raise DatasetError(f'{e}; {hint or PRECOMPUTE_HINT}') from None


def update_box_pickle(box_file, photo_paths):
    """Selective search for the photos of {name: path} that the QMUL-style pickle lacks; write it
    back. Returns (table {name: boxes}, number of photos computed). box_file may not exist yet."""
    box_file = Path(box_file)
    table = read_pickle(box_file) if box_file.exists() else {}
    missing = {n: p for n, p in photo_paths.items() if n not in table}
    if missing:
        table.update(search_all(missing, f'selective search -> {box_file.name}'))
        write_or_explain(box_file, lambda f: pickle.dump(table, f, protocol=4))
    return table, len(missing)


class BoxCache:
    """Selective-search boxes of a folder's photos in a JSON file, each entry valid while the photo's
    size in bytes and modification time are those recorded with it and its boxes pass check_boxes.

    hint: what to tell the user when the cache cannot be written (None: go on without storing it,
    as for a read-only search gallery)."""

    VERSION = 1

    def __init__(self, path, hint=PRECOMPUTE_HINT):
        self.path, self.hint = Path(path), hint

    def read(self):
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            photos = data['photos'] if data.get('version') == self.VERSION else {}
            require(isinstance(photos, dict), 'no photos table')
        except (OSError, ValueError, KeyError, AttributeError, RecursionError, DatasetError) as e:
            raise DatasetError(f'{self.path}: unreadable box cache ({e}); delete it to recompute') from None
        return photos

    @staticmethod
    def stamp(path):
        st = Path(path).stat()
        return {'bytes': st.st_size, 'mtime_ns': st.st_mtime_ns}

    def usable(self, entry, stamp, path):
        """Whether a cache entry may be used: the photo's stamp and boxes that pass check_boxes."""
        if not (isinstance(entry, dict) and {k: entry.get(k) for k in stamp} == stamp):
            return False
        try:
            check_boxes(entry.get('boxes'), image_size(path), self.path, whole_first=True)
        except DatasetError:
            return False
        return True

    def boxes(self, photo_paths):
        """{name: path} -> ({name: boxes}, number computed now, number of them that were bad entries);
        stale, missing or bad entries are recomputed and the cache rewritten."""
        photos = self.read()
        stamps = {n: self.stamp(p) for n, p in photo_paths.items()}
        stale = {n: p for n, p in photo_paths.items() if not self.usable(photos.get(n), stamps[n], p)}
        bad = sum(isinstance(photos.get(n), dict) and {k: photos[n].get(k) for k in stamps[n]} == stamps[n]
                  for n in stale)
        if stale:
            for name, boxes in search_all(stale, f'selective search -> {self.path.name}').items():
                photos[name] = {**stamps[name], 'boxes': boxes}
            text = json.dumps({'version': self.VERSION, 'photos': photos}, sort_keys=True)
            if self.hint is None:
                try:
                    atomic_write(self.path, lambda f: f.write(text.encode()))
                except WriteError as e:
                    print(f'note: {e}; the boxes are not stored and are computed again next time')
            else:
                write_or_explain(self.path, lambda f: f.write(text.encode()), self.hint)
        return {n: photos[n]['boxes'] for n in photo_paths}, len(stale), bad


def precompute_boxes(photo_dir, boxes_out):
    """Selective search for every image under photo_dir -> QMUL-style pickle {path relative to it:
    boxes}. An existing boxes_out is extended. Returns the number of photos computed."""
    return update_box_pickle(Path(boxes_out), folder_images(photo_dir))[1]


def folder_images(folder, what=''):
    """{path relative to folder (posix): Path} of every image file under `folder`, hidden files
    left out, sorted; a DatasetError (prefixed `what`, e.g. '--gallery ') if there is none."""
    folder = Path(folder)
    require(folder.is_dir(), f'{what}{folder}: no such folder')
    images = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob('*'))
              if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith('.')}
    require(images, f'{what}{folder}: no images')
    return images
