"""Readers of the on-disk layouts, behind one table: `READERS[name](index, style)` fills a
`DataIndex` with validated sketch and photo records, or raises one DatasetError naming the file.

Layouts
  QMUL   <root>/<Name>/<Name>_Coordinate  pickle {'/train/<photo>_<n>' | '/test/...': (L, 3)}
         <root>/<Name>/photo/<photo>.png
         <root>/<Name>_Select_Search_boxes_min10_topN16.pickle  {'<photo>.png': [[x1,y1,x2,y2],..]}
         Split by key; photo of a key = after '/<split>/' up to the last '_', + '.png' (the whole
         key must have this form; a photo in both splits is an error). Box 0 must be the whole
         photo [0, 0, W, H]: a table made for other photo sizes is refused.
  SWIRE  <root>/<Name>/sketches/<rico_id>_<n>.jpg   (white ink on black)
         <root>/<Name>/combined/<rico_id>.jpg + <rico_id>.json (RICO tree, 1440x2560 bounds)
         Split: rico_id whose md5 mod 100 < 20 are test (~20 %), deterministic on every machine.
  Folder <root>/pairs.csv with columns sketch,photo,split (paths relative to root, inside it;
         each sketch on one row, each photo in one split); sketches are images (any polarity)
         or .npy (L, 3) vector sketches on the 256 canvas. Photo boxes: selective search, cached
         in <root>/Folder_boxes.json keyed by path, size in bytes and modification time.
  Synthetic / SyntheticGUI: generated on first use (package `synthetic`, by dataset.load_index), then read
  as QMUL / SWIRE.

Nodes (boxes)
  Vector sketch: one box per stroke (sketch.py). Raster sketch: whole image + merged ink blobs.
  QMUL / Folder photo: the first `num_regions` boxes of the proposals (box 0 = whole image); a
  missing QMUL pickle is computed by selective search and cached (proposals.py).
  SWIRE photo: RICO element bounds scaled to the screenshot, breadth-first, root first, with the
  containment tree (`DataIndex.gui_tree`). Boxes are [x1, y1, x2, y2] floats in the pixel frame of
  their image, right/bottom exclusive (see sketch.py).

Every box table passes proposals.check_boxes; a vector sketch has at most --max_sketch_strokes strokes
and --max_sketch_points points, an image a bounded number of pixels (files.py).

Repairs (counted and printed by `python prepare.py dataset --summary`; anything else is a DatasetError):
  - vector coordinates at most 16 px off the 256 canvas: clamped onto it;
  - a vector sketch whose last point has pen = 0: its last stroke ends at the last point;
  - photo / GUI boxes partly outside the image: clamped to it; boxes with no area left: dropped
    (a photo with none left is an error); a zero-area GUI root: replaced by the whole screen;
  - null entries in a RICO 'children' list: ignored;
  - raster sketches with more than `max_nodes` nodes: the largest kept;
  - Folder box cache entries that fail proposals.check_boxes: recomputed.
  Photos with fewer than `num_regions` boxes use what they have (listed in the summary).
"""
import csv
import hashlib
import json
import os
import re
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import proposals
import sketch
from files import (
    SKETCH_MAX_PIXELS,
    DatasetError,
    image_size,
    open_image,
    read_npy,
    read_pickle,
    require,
)

BOX_PICKLE = '{}_Select_Search_boxes_min10_topN16.pickle'
FOLDER_BOX_CACHE = 'Folder_boxes.json'
RICO_FRAME = (1440, 2560)         # RICO bounds are in this frame whatever the screenshot size
SWIRE_TEST_PERCENT = 20
QMUL_KEY = re.compile(r'/(?P<split>train|test)/(?P<photo>[^/]+)_(?P<n>[^_/]+)')


# ----------------------------------------------------------------------------- the index
@dataclass
class SketchRecord:
    name: str                 # QMUL key, SWIRE file name or Folder relative path
    photo: str                # key into DataIndex.photos
    nodes: int                # number of boxes the sketch yields (at the chosen detail)
    points: np.ndarray = None  # vector sketch, cleaned (L, 3); None for a raster sketch
    path: Path = None         # raster sketch file


@dataclass
class PhotoRecord:
    path: Path
    size: tuple               # (W, H) of the original image
    boxes: np.ndarray         # float32 (n, 4), n <= num_regions, in the original pixel frame
    parents: list = None      # GUI containment tree: parent index per box, -1 for the root


@dataclass
class DataIndex:
    """Everything validated: sketch records per split, photo records, repairs and notes."""
    name: str
    root: Path
    num_regions: int = 16
    train: list = field(default_factory=list)
    test: list = field(default_factory=list)
    photos: dict = field(default_factory=dict)
    box_source: str = ''
    repairs: Counter = field(default_factory=Counter)
    repair_example: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def repair(self, what, where, count=1):
        self.repairs[what] += count
        self.repair_example.setdefault(what, str(where))

    def gui_tree(self, photo):
        """Parent index of every node of a GUI photo (-1 for the root); SWIRE layout only."""
        parents = self.photos[photo].parents
        if parents is None:
            raise DatasetError(f'{self.name}: no GUI tree for {photo} (only SWIRE-layout datasets have one)')
        return list(parents)

    def merge_plan(self, photo):
        """The Explicit Hierarchy's merges of a GUI photo (merge_plan of its tree)."""
        return merge_plan(self.gui_tree(photo))

    @property
    def vector(self):
        """True when every sketch is a vector sketch (x, y, pen)."""
        return all(r.points is not None for r in self.train + self.test)


# ----------------------------------------------------------------------------- records
def add_photos(index, table, photo_paths, where, whole_first):
    """index.photos for {name: path} from a {name: raw boxes} table, each checked by
    proposals.check_boxes (repairs counted). whole_first: box 0 must be the whole photo (the QMUL
    format), which catches a box table made for other photo sizes."""
    for name, path in sorted(photo_paths.items()):
        size = image_size(path)
        boxes, repairs = proposals.check_boxes(table[name], size, f'{where} [{name!r}] ({path})', whole_first)
        for what, n in repairs:
            index.repair(what, f'{where} [{name!r}]', n)
        index.photos[name] = PhotoRecord(path, size, boxes[:index.num_regions])


def vector_record(points, name, photo, where, index, style):
    """Validate a vector sketch -> SketchRecord (DatasetError naming `where` if unusable)."""
    try:
        clean, repairs = style.clean(points)
    except sketch.SketchError as e:
        raise DatasetError(f'{where}: {e}') from None
    for r in repairs:
        index.repair(r, where)
    nodes = len(sketch.select_strokes(sketch.split_strokes(clean), style.detail)) + style.whole_box
    return SketchRecord(name, photo, nodes, points=clean)


def raster_record(path, name, photo, index, style):
    """Decode a raster sketch once, check it has ink, count its nodes -> SketchRecord."""
    try:
        _, boxes, info = style.raster(open_image(path, SKETCH_MAX_PIXELS))
    except sketch.SketchError as e:
        raise DatasetError(f'{path}: {e}') from None
    if info['capped']:
        index.repair(f'raster sketches capped to the largest {style.max_nodes} nodes', path)
    return SketchRecord(name, photo, len(boxes), path=path)


def render_sketch(rec, style):
    """SketchRecord -> (PIL RGB dark ink on white in its original frame, boxes float32 (n, 4))."""
    if rec.points is not None:
        return style.vector(rec.points)
    try:
        img, boxes, _ = style.raster(open_image(rec.path, SKETCH_MAX_PIXELS))
    except sketch.SketchError as e:
        raise DatasetError(f'{rec.path}: {e}') from None
    return img, boxes


# ----------------------------------------------------------------------------- QMUL layout
def parse_qmul_key(key, where):
    """'/train/<photo>_<n>' -> ('train', '<photo>.png'); anything else is a DatasetError."""
    m = QMUL_KEY.fullmatch(key) if isinstance(key, str) else None
    require(m, f"{where}: key {key!r} is not of the form '/train/<photo>_<n>' or '/test/<photo>_<n>'")
    return m['split'], m['photo'] + '.png'


def read_qmul(index, style):
    root, name = index.root, index.name
    folder, box_file = root / name, root / BOX_PICKLE.format(name)
    coord, photo_dir = folder / f'{name}_Coordinate', folder / 'photo'
    require(folder.is_dir(), f'{folder}: no such folder (--data_root must hold {name}/ and {box_file.name})')
    require(coord.is_file(), f'{coord}: missing (the {name} vector sketches)')
    require(photo_dir.is_dir(), f'{photo_dir}: missing (the {name} photos)')
    data = read_pickle(coord)
    available = set(os.listdir(photo_dir))
    missing, photo_split = [], {}
    for key in sorted(data, key=str):
        split, photo = parse_qmul_key(key, coord)
        first = photo_split.setdefault(photo, (split, key))
        require(first[0] == split, f'{coord}: photo {photo!r} is in both splits ({first[1]!r} and {key!r}; '
                                   f'test photos must not be trained on)')
        if photo not in available:
            missing.append((key, photo))
            continue
        rec = vector_record(data[key], key, photo, f'{coord} [{key!r}]', index, style)
        getattr(index, split).append(rec)
    if missing:
        key, photo = missing[0]
        raise DatasetError(f'{photo_dir / photo}: missing photo of sketch {key!r} '
                           f'({len(missing)} sketches have no photo)')
    used = {p: photo_dir / p for p in {r.photo for r in index.train + index.test}}
    if box_file.exists():
        table = read_pickle(box_file)
        lacking = sorted(set(used) - set(table))
        require(not lacking, f'{box_file}: no boxes for photo {lacking[:1][0] if lacking else ""!r} '
                             f'({len(lacking)} photos missing); delete the file to recompute all boxes '
                             f'with selective search')
    else:
        table, computed = proposals.update_box_pickle(box_file, used)
        index.notes.append(f'selective-search boxes computed for {computed} photos, cached in {box_file}')
    add_photos(index, table, used, box_file, whole_first=True)
    index.box_source = str(box_file)
    unused = len(available - set(used))
    if unused:
        index.notes.append(f'{unused} files in {photo_dir} belong to no sketch (not used)')


# ----------------------------------------------------------------------------- SWIRE layout
def swire_split(rico_id):
    """'train' or 'test' from an md5 of the id: ~20 % test, identical on every machine."""
    return 'test' if int(hashlib.md5(rico_id.encode()).hexdigest(), 16) % 100 < SWIRE_TEST_PERCENT else 'train'


def gui_nodes(json_path, size, num_regions, index):
    """RICO JSON -> (boxes float32 (n, 4) in the W x H screenshot frame, parents list[int]).

    Breadth-first from the root (the top-level dict, or ['activity']['root'] in the raw view
    hierarchy), first num_regions kept elements. Bounds scale from 1440x2560 to W x H and are
    clamped to the screen; a zero-area element is dropped and its children hang on its nearest
    kept ancestor; a zero-area root becomes the whole screen.
    """
    try:
        with open(json_path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise DatasetError(f'{json_path}: cannot read JSON ({e})') from None
    except RecursionError:
        raise DatasetError(f'{json_path}: cannot read JSON (nested too deeply)') from None
    root = data
    if isinstance(data, dict) and isinstance(data.get('activity'), dict):  # raw view hierarchy
        root = data['activity'].get('root')
    require(isinstance(root, dict) and 'bounds' in root,
            f'{json_path}: no root node with "bounds" (expected a RICO semantic annotation or view hierarchy)')
    W, H = size
    scale = np.array([W / RICO_FRAME[0], H / RICO_FRAME[1]] * 2)
    boxes, parents = [], []
    queue = deque([(root, -1)])
    while queue and len(boxes) < num_regions:
        node, parent = queue.popleft()
        try:
            b = np.asarray(node['bounds'], dtype=np.float64).reshape(4) * scale
        except (KeyError, TypeError, ValueError, OverflowError):
            raise DatasetError(f'{json_path}: a node has no valid "bounds" [x1, y1, x2, y2]') from None
        require(np.isfinite(b).all(), f'{json_path}: a node has non-finite bounds')
        c = np.minimum(b.clip(0), [W, H, W, H])
        if (c != b).any():
            index.repair('GUI element bounds clamped to the screen', json_path)
        me = len(boxes)
        if c[2] <= c[0] or c[3] <= c[1]:
            if parent == -1:
                c = np.array([0, 0, W, H], dtype=np.float64)
                index.repair('zero-area GUI root replaced by the whole screen', json_path)
            else:
                index.repair('zero-area GUI elements dropped', json_path)
                me = parent
        if me == len(boxes):
            boxes.append(c)
            parents.append(parent)
        children = node.get('children') or []
        require(isinstance(children, list), f'{json_path}: "children" must be a list')
        for child in children:
            if child is None:
                index.repair('null children entries ignored', json_path)
            else:
                require(isinstance(child, dict), f'{json_path}: a child node is not an object')
                queue.append((child, me))
    return np.array(boxes, dtype=np.float32), parents


def merge_plan(parents):
    """Bottom-up merges along a containment tree, in the node-fusion convention (hierarchy.py:
    the chosen pair (a < b) leaves, the other nodes keep their order, the merged node is appended
    last): each step merges the deepest node (the last one on ties) into its parent. Returns the
    (a, b) positions of every step, long (n - 1, 2). parents: parent index per node, -1 the root;
    a node set of several roots is joined under the first."""
    n = len(parents)
    parent = [p if p >= 0 or i == 0 else 0 for i, p in enumerate(parents)]
    parent[0] = -1
    depth = []
    for i in range(n):                    # breadth-first: a parent comes before its children
        depth.append(0 if parent[i] < 0 else depth[parent[i]] + 1)
    ids, plan = list(range(n)), []
    while len(ids) > 1:
        child = max(ids, key=lambda i: (depth[i], ids.index(i)))
        up = parent[child]
        a, b = sorted((ids.index(child), ids.index(up)))
        plan.append((a, b))
        new = len(parent)          # the merged node takes the parent's place in the tree
        parent = [new if q in (child, up) else q for q in parent] + [parent[up]]
        depth.append(depth[up])
        ids = [i for i in ids if i not in (child, up)] + [new]
    return np.array(plan, dtype=np.int64).reshape(-1, 2)


def read_swire(index, style):
    folder = index.root / index.name
    sketch_dir, gui_dir = folder / 'sketches', folder / 'combined'
    require(folder.is_dir(), f'{folder}: no such folder (--data_root must hold {index.name}/)')
    require(sketch_dir.is_dir(), f'{sketch_dir}: missing (the sketches <rico_id>_<n>.jpg)')
    require(gui_dir.is_dir(), f'{gui_dir}: missing (the RICO <rico_id>.jpg + .json)')
    ignored = 0
    for path in sorted(sketch_dir.iterdir()):
        if path.suffix.lower() not in proposals.IMAGE_EXTENSIONS:
            ignored += 1
            continue
        require('_' in path.stem, f'{path}: sketch name must be <rico_id>_<n>{path.suffix}')
        rico = path.stem.rsplit('_', 1)[0]
        photo = f'{rico}.jpg'
        for need in (gui_dir / photo, gui_dir / f'{rico}.json'):
            require(need.is_file(), f'{need}: missing (needed by sketch {path.name})')
        rec = raster_record(path, path.name, photo, index, style)
        getattr(index, swire_split(rico)).append(rec)
    if ignored:
        index.notes.append(f'{ignored} non-image files in {sketch_dir} ignored')
    for photo in sorted({r.photo for r in index.train + index.test}):
        path = gui_dir / photo
        size = image_size(path)
        boxes, parents = gui_nodes(path.with_suffix('.json'), size, index.num_regions, index)
        index.photos[photo] = PhotoRecord(path, size, boxes, parents)
    index.box_source = f'RICO element bounds ({gui_dir}/*.json)'


# ----------------------------------------------------------------------------- Folder layout
def inside(root, rel, where, what):
    """(root / rel, rel as a normalised posix key), refused unless rel is a relative path that
    stays inside root (checked on the text, so a user's own symbolic links inside the folder still
    work)."""
    norm = os.path.normpath(rel)
    require(not os.path.isabs(rel) and norm != '..' and not norm.startswith('..' + os.sep),
            f'{where}: {what} path {rel!r} leaves the dataset folder {root} (paths must be relative, inside it)')
    return root / norm, Path(norm).as_posix()


def read_folder(index, style):
    root = index.root
    csv_path = root / 'pairs.csv'
    require(csv_path.is_file(), f'{csv_path}: missing (columns sketch,photo,split)')
    try:
        with open(csv_path, newline='', encoding='utf-8-sig') as f:   # -sig: a BOM is not a column name
            reader = csv.DictReader(f)
            reader.fieldnames = [(c or '').strip() for c in reader.fieldnames or []]   # 'sketch, photo, split'
            lacking = [c for c in ('sketch', 'photo', 'split') if c not in reader.fieldnames]
            require(not lacking, f'{csv_path}: missing column(s) {", ".join(lacking)} (need sketch,photo,split)')
            twice = sorted({c for c in reader.fieldnames if reader.fieldnames.count(c) > 1})
            require(not twice, f'{csv_path}: column(s) {", ".join(twice)} appear twice in the header')
            rows = [(reader.line_num, row) for row in reader]   # line_num: the file line, blank lines counted
    except (UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f'{csv_path}: not a UTF-8 CSV file ({e})') from None
    require(rows, f'{csv_path}: no rows')
    photo_paths, seen, photo_split = {}, {}, {}
    for line, row in rows:
        where = f'{csv_path} line {line}'
        sk, ph, split = [(row[c] or '').strip() for c in ('sketch', 'photo', 'split')]
        require(sk and ph, f'{where}: empty sketch or photo path')
        require(split in ('train', 'test'), f'{where}: split must be train or test, got {split!r}')
        (sk_path, sk), (ph_path, photo) = inside(root, sk, where, 'sketch'), inside(root, ph, where, 'photo')
        require(sk_path.is_file(), f'{sk_path}: missing sketch ({where})')
        require(ph_path.is_file(), f'{ph_path}: missing photo ({where})')
        if sk in seen:     # a sketch is one query with one true photo
            line0, photo0 = seen[sk]
            raise DatasetError(f'{where}: sketch {sk!r} is listed twice (first at line {line0}' +
                               (', a duplicate row)' if photo0 == photo else f' with photo {photo0!r})'))
        seen[sk] = line, photo
        # The split check is on the file itself: a symbolic-link alias of a photo is the same photo.
        first = photo_split.setdefault(ph_path.resolve(), (split, line, photo))
        require(first[0] == split, f'{where}: photo {ph!r} is in both splits (test photos must not be '
                                   f'trained on; {first[0]} at line {first[1]}'
                                   + (f' as {first[2]!r}, the same file)' if first[2] != photo else ')'))
        if sk_path.suffix.lower() == '.npy':
            rec = vector_record(read_npy(sk_path, style.max_points), sk, photo, sk_path, index, style)
        else:
            rec = raster_record(sk_path, sk, photo, index, style)
        getattr(index, split).append(rec)
        photo_paths[photo] = ph_path
    cache = proposals.BoxCache(root / FOLDER_BOX_CACHE)
    table, computed, bad = cache.boxes(photo_paths)
    if computed:
        index.notes.append(f'selective-search boxes computed for {computed} photos, cached in {cache.path}')
    if bad:
        index.repair('bad box cache entries recomputed', cache.path, bad)
    add_photos(index, table, photo_paths, cache.path, whole_first=False)
    index.box_source = str(cache.path)


READERS = {
    'Synthetic': read_qmul, 'SyntheticGUI': read_swire,     # generated first (dataset.load_index)
    'ChairV2': read_qmul, 'ShoeV2': read_qmul, 'SWIRE': read_swire, 'Folder': read_folder,
}


def in_validation(photo, fraction):
    """Whether a training photo belongs to the validation split of `fraction`: an md5 of its name,
    so the split is the same on every machine and does not depend on the order of the files."""
    return int(hashlib.md5(photo.encode()).hexdigest(), 16) % 10000 < round(fraction * 10000)


def carve_validation(index, fraction):
    """Replace the test split by a validation split: the training photos for which in_validation
    holds, with all their sketches, leave the training split and become the gallery. The real
    test split is not read at all, so settings chosen on it are chosen without the test photos."""
    photos = sorted({r.photo for r in index.train})
    held = {p for p in photos if in_validation(p, fraction)}
    require(held and len(held) < len(photos) - 1,
            f'{index.root}: --validation {fraction} holds out {len(held)} of the {len(photos)} training '
            f'photos; choose a fraction that leaves at least one photo in validation and two in training')
    index.test = [r for r in index.train if r.photo in held]
    index.train = [r for r in index.train if r.photo not in held]
    index.notes.append(f'validation split: {len(held)} of {len(photos)} training photos and their '
                       f'{len(index.test)} sketches replace the test split (--validation {fraction})')


def load_index(name, root, num_regions, style, validation=0.0):
    """Validate the dataset `name` under `root` -> DataIndex (DatasetError on any bad input).

    validation: > 0 evaluates on that fraction of the training photos instead of the test split
    (carve_validation)."""
    require(name in READERS, f'unknown dataset {name!r}; choose one of {", ".join(READERS)}')
    require(num_regions >= 1, f'--num_regions must be >= 1, got {num_regions}')
    index = DataIndex(name, Path(root), num_regions)
    require(index.root.is_dir(), f'{index.root}: --data_root does not exist')
    READERS[name](index, style)
    require(index.test, f'{index.root}: {name} has no test sketches')
    if validation:
        carve_validation(index, validation)
    require(len({r.photo for r in index.train}) >= 2,
            f'{index.root}: {name} needs training sketches of at least 2 photos for triplet negatives')
    return index
