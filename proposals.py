"""Photo region proposals: selective search (the paper's photo nodes, arXiv 2007.15103;
docs/method.md, section 2)
and the two caches that keep them.

- QMUL layout: the dataset ships `<Name>_Select_Search_boxes_min10_topN16.pickle`; when a user
  lacks it, `update_box_pickle` computes the same table (box 0 = the whole photo, then up to 15
  ranked proposals with sides >= 10 px) and writes it in the same format.
- Folder layout: a JSON cache keyed by each photo's relative path, file size and modification
  time (`BoxCache`), so a replaced photo gets new boxes and the cache cannot carry code.

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

import sketch
from files import (
    DatasetError,
    WriteError,
    atomic_write,
    open_image,
    read_pickle,
    require,
)

BOX_TOP_N, BOX_MIN_SIDE = 16, 10
SELECTIVE_SEARCH_MAX_SIDE = 512   # larger photos are searched downscaled (speed), boxes scaled back
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
    img = sketch.flatten_alpha(img)
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


def search_all(photo_paths, desc):
    """{name: path} -> {name: selective-search boxes}, with a progress bar for long runs."""
    return {name: selective_search(open_image(path))
            for name, path in tqdm(sorted(photo_paths.items()), desc=desc, disable=len(photo_paths) < 20)}


def write_or_explain(path, write):
    try:
        atomic_write(path, write)
    except WriteError as e:
        raise DatasetError(f'{e}; precompute the boxes elsewhere with '
                           f'python prepare.py proposals PHOTO_DIR BOXES_OUT.pickle') from None


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
    size in bytes and modification time are those recorded with it."""

    VERSION = 1

    def __init__(self, path):
        self.path = Path(path)

    def read(self):
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            photos = data['photos'] if data.get('version') == self.VERSION else {}
            require(isinstance(photos, dict), 'no photos table')
        except (OSError, ValueError, KeyError, AttributeError, DatasetError) as e:
            raise DatasetError(f'{self.path}: unreadable box cache ({e}); delete it to recompute') from None
        return photos

    @staticmethod
    def stamp(path):
        st = Path(path).stat()
        return {'bytes': st.st_size, 'mtime_ns': st.st_mtime_ns}

    def boxes(self, photo_paths):
        """{name: path} -> ({name: boxes}, number computed now); stale or missing entries are
        recomputed and the cache rewritten."""
        photos = self.read()
        stamps = {n: self.stamp(p) for n, p in photo_paths.items()}

        def valid(entry, stamp):    # anything else (an edited file, another version) is recomputed
            return isinstance(entry, dict) and 'boxes' in entry and {k: entry.get(k) for k in stamp} == stamp
        stale = {n: p for n, p in photo_paths.items() if not valid(photos.get(n), stamps[n])}
        if stale:
            for name, boxes in search_all(stale, f'selective search -> {self.path.name}').items():
                photos[name] = {**stamps[name], 'boxes': boxes}
            text = json.dumps({'version': self.VERSION, 'photos': photos}, sort_keys=True)
            write_or_explain(self.path, lambda f: f.write(text.encode()))
        return {n: photos[n]['boxes'] for n in photo_paths}, len(stale)


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
