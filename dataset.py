"""The data layer: QMUL (ChairV2, ShoeV2, Synthetic), SWIRE (SWIRE, SyntheticGUI) and Folder.

`build_datasets(args)` validates everything first and returns (TripletDataset, RetrievalData);
`python dataset.py --dataset NAME --data_root DIR --summary` validates and prints the counts.

Layouts
  QMUL   <data_root>/<Name>/<Name>_Coordinate  pickle {'/train/<photo>_<n>' | '/test/...': (L, 3)}
         <data_root>/<Name>/photo/<photo>.png
         <data_root>/<Name>_Select_Search_boxes_min10_topN16.pickle  {'<photo>.png': [[x1,y1,x2,y2],..]}
         Split by key; photo of a key = after the last '/' up to the last '_', + '.png'.
  SWIRE  <data_root>/<Name>/sketches/<rico_id>_<n>.jpg   (white ink on black)
         <data_root>/<Name>/combined/<rico_id>.jpg + <rico_id>.json (RICO tree, 1440x2560 bounds)
         Split: rico_id whose md5 mod 100 < 20 are test (~20 %), deterministic on every machine.
  Folder <data_root>/pairs.csv with columns sketch,photo,split (paths relative to data_root);
         sketches are images (any polarity) or .npy (L, 3) vector sketches on the 256 canvas.

Nodes (boxes)
  Vector sketch: one box per stroke (sketch.py). Raster sketch: whole image + merged ink blobs.
  QMUL / Folder photo: the first --num_regions boxes of the box pickle (box 0 = whole image).
  If the pickle is absent, selective search (cv2 ximgproc, fast mode) computes it with the same
  conventions and caches it under the same name (Folder: <data_root>/Folder_Select_...pickle).
  SWIRE photo: RICO element bounds scaled to the screenshot, breadth-first, root first.
  Boxes are [x1, y1, x2, y2] floats in the pixel frame of their image, right/bottom exclusive
  (see sketch.py); every transform moves image and boxes together. A box that the training
  centre crop pushes partly outside is clamped; one with no area left becomes a 1-px box at the
  border it left through (clamp_boxes), so the node count never changes.

Repairs (counted and printed by --summary; anything else is a DatasetError naming the file):
  - vector coordinates at most 16 px off the 256 canvas: clamped onto it;
  - a vector sketch whose last point has pen = 0: its last stroke ends at the last point;
  - photo / GUI boxes partly outside the image: clamped to it; boxes with no area left: dropped
    (a photo with none left is an error); a zero-area GUI root: replaced by the whole screen;
  - null entries in a RICO 'children' list: ignored;
  - raster sketches with more than --max_sketch_nodes nodes: the largest kept.
  Photos with fewer than --num_regions boxes use what they have (listed in the summary).
"""
import csv
import ctypes
import hashlib
import json
import os
import pickle
import sys
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

import options
import sketch

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
BOX_PICKLE = '{}_Select_Search_boxes_min10_topN16.pickle'
BOX_TOP_N, BOX_MIN_SIDE = 16, 10
SELECTIVE_SEARCH_MAX_SIDE = 512   # larger photos are searched downscaled (speed), boxes scaled back
RICO_FRAME = (1440, 2560)         # RICO bounds are in this frame whatever the screenshot size
SWIRE_TEST_PERCENT = 20
IMAGE_EXTENSIONS = {'.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff'}
QMUL = ('ChairV2', 'ShoeV2', 'Synthetic')
SWIRE = ('SWIRE', 'SyntheticGUI')


class DatasetError(Exception):
    """Bad input; the message names the file and the problem."""


# ----------------------------------------------------------------------------- the index
@dataclass
class SketchRecord:
    name: str                 # QMUL key, SWIRE file name or Folder relative path
    photo: str                # key into DataIndex.photos
    nodes: int                # number of boxes the sketch yields (at the chosen --sketch_detail)
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


# ----------------------------------------------------------------------------- files
def require(ok, message):
    if not ok:
        raise DatasetError(message)


def read_pickle(path):
    try:
        with open(path, 'rb') as f:
            data = pickle.load(f)
    except Exception as e:  # unpickling bad bytes can raise almost anything
        raise DatasetError(f'{path}: cannot read pickle ({type(e).__name__}: {e})') from None
    require(isinstance(data, dict), f'{path}: expected a pickled dict, got {type(data).__name__}')
    return data


def write_pickle(path, data):
    """Atomic write (temp file + rename) so an interrupted run leaves no half cache."""
    tmp = Path(f'{path}.tmp{os.getpid()}')
    try:
        with open(tmp, 'wb') as f:
            pickle.dump(data, f)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f'{path}: cannot write the box cache ({e}); precompute it with '
                           f'python dataset.py --precompute_boxes PHOTO_DIR --boxes_out FILE') from None


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


def load_photo(path):
    return sketch.flatten_alpha(open_image(path))


def photo_edges(img):
    """PIL RGB photo -> its edge map drawn like a sketch: dark lines on white, RGB, same size.

    Canny (hysteresis thresholds 30 / 80 on the blurred grey image, low enough to keep the
    internal part boundaries of product shots), lines thickened to about the sketches' 3 px on a
    256 canvas. Photos as edge maps are the FG-SBIR practice of Triplet-SN
    (Yu et al., CVPR 2016); here `--photo_input edges`, for networks trained from scratch.
    """
    gray = cv2.GaussianBlur(np.asarray(img.convert('L')), (5, 5), 0)
    edges = cv2.Canny(gray, 30, 80)
    k = max(1, round(2 * max(img.size) / 256)) + 1
    edges = cv2.dilate(edges, np.ones((k, k), np.uint8))
    return Image.fromarray(255 - edges).convert('RGB')


def network_photo(path, args):
    """The photo as the network sees it (--photo_input rgb | edges)."""
    img = load_photo(path)
    return photo_edges(img) if getattr(args, 'photo_input', 'rgb') == 'edges' else img


# ----------------------------------------------------------------------------- boxes
def check_boxes(raw, size, where, index):
    """Raw box list -> float32 (n, 4) inside the W x H image (module docstring: repairs)."""
    try:
        b = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        b = np.zeros((0, 0))
    require(b.ndim == 2 and b.shape[1:] == (4,) and len(b) > 0,
            f'{where}: boxes must be a non-empty list of [x1, y1, x2, y2]')
    require(np.isfinite(b).all(), f'{where}: boxes contain NaN or infinite values')
    W, H = size
    c = b.copy()
    c[:, [0, 2]] = c[:, [0, 2]].clip(0, W)
    c[:, [1, 3]] = c[:, [1, 3]].clip(0, H)
    moved = (c != b).any(axis=1).sum()
    if moved:
        index.repair('boxes clamped to the image', where, moved)
    ok = (c[:, 2] > c[:, 0]) & (c[:, 3] > c[:, 1])
    require(ok.any(), f'{where}: no box has a positive area inside the {W}x{H} image')
    if not ok.all():
        index.repair('zero-area boxes dropped', where, int((~ok).sum()))
    return c[ok].astype(np.float32)


def seed_c_rand(seed=0):
    # cv2's selective search ranks its regions with C rand(); seeding it makes the proposals
    # (and hence the cached pickles) reproducible. Harmless where libc is not reachable.
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


def update_box_cache(box_file, photo_paths):
    """Selective search for the photos of {name: path} that box_file lacks; write it back.

    Returns (table {name: boxes}, number of photos computed). box_file may not exist yet.
    """
    table = read_pickle(box_file) if box_file.exists() else {}
    missing = {n: p for n, p in photo_paths.items() if n not in table}
    if missing:
        for name, path in tqdm(sorted(missing.items()), desc=f'selective search -> {box_file.name}',
                               disable=len(missing) < 20):
            table[name] = selective_search(open_image(path))
        write_pickle(box_file, table)
    return table, len(missing)


def load_photo_boxes(index, box_file, photo_paths, num_regions, fill_missing):
    """Fill index.photos for {photo name: path} with validated boxes from box_file.

    Without box_file, selective search computes every photo's boxes and caches them there.
    With fill_missing (Folder: the cache is ours) photos missing from it are computed and added;
    otherwise (QMUL: the pickle is the dataset's) a photo missing from it is an error.
    """
    if box_file.exists() and not fill_missing:
        table = read_pickle(box_file)
        missing = sorted(set(photo_paths) - set(table))
        if missing:
            raise DatasetError(f'{box_file}: no boxes for photo {missing[0]!r} ({len(missing)} photos missing); '
                               f'delete the file to recompute all boxes with selective search')
    else:
        table, computed = update_box_cache(box_file, photo_paths)
        if computed:
            index.notes.append(f'selective-search boxes computed for {computed} photos, cached in {box_file}')
    index.box_source = str(box_file)
    for name, path in sorted(photo_paths.items()):
        size = image_size(path)
        boxes = check_boxes(table[name], size, f'{box_file} [{name!r}]', index)
        index.photos[name] = PhotoRecord(path, size, boxes[:num_regions])


def precompute_boxes(photo_dir, boxes_out):
    """Selective search for every image under photo_dir -> pickle {path relative to it: boxes}.

    An existing boxes_out is extended (photos already in it are not recomputed). Returns the
    number of photos computed.
    """
    photo_dir = Path(photo_dir)
    require(photo_dir.is_dir(), f'{photo_dir}: no such folder')
    paths = {p.relative_to(photo_dir).as_posix(): p for p in sorted(photo_dir.rglob('*'))
             if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()}
    require(paths, f'{photo_dir}: no images found')
    return update_box_cache(Path(boxes_out), paths)[1]


# ----------------------------------------------------------------------------- sketches
def vector_record(points, name, photo, where, index, args):
    """Validate a vector sketch -> SketchRecord (DatasetError naming `where` if unusable)."""
    try:
        clean, repairs = sketch.clean_points(points)
    except sketch.SketchError as e:
        raise DatasetError(f'{where}: {e}') from None
    for r in repairs:
        index.repair(r, where)
    nodes = len(sketch.select_strokes(sketch.split_strokes(clean), args.sketch_detail))
    return SketchRecord(name, photo, nodes, points=clean)


def raster_nodes(img, args):
    return sketch.raster_nodes(img, args.sketch_detail, args.merge_gap, args.max_sketch_nodes)


def raster_record(path, name, photo, index, args):
    """Decode a raster sketch once, check it has ink, count its nodes -> SketchRecord."""
    try:
        _, boxes, info = raster_nodes(open_image(path), args)
    except sketch.SketchError as e:
        raise DatasetError(f'{path}: {e}') from None
    if info['capped']:
        index.repair(f'raster sketches capped to the largest {args.max_sketch_nodes} nodes', path)
    return SketchRecord(name, photo, len(boxes), path=path)


def render_sketch(rec, args):
    """SketchRecord -> (PIL RGB dark ink on white in its original frame, boxes float32 (n, 4))."""
    if rec.points is not None:
        return sketch.render_vector(rec.points, args.sketch_detail, args.line_width)
    try:
        img, boxes, _ = raster_nodes(open_image(rec.path), args)
    except sketch.SketchError as e:
        raise DatasetError(f'{rec.path}: {e}') from None
    return img, boxes


# ----------------------------------------------------------------------------- QMUL layout
def qmul_photo(key):
    """'/train/<photo>_<n>' -> '<photo>.png' (after the last '/', up to the last '_')."""
    base = key.rsplit('/', 1)[-1]
    return base.rsplit('_', 1)[0] + '.png' if '_' in base else None


def load_qmul(index, args):
    root, name = Path(args.data_root), index.name
    folder, box_file = root / name, root / BOX_PICKLE.format(name)
    coord, photo_dir = folder / f'{name}_Coordinate', folder / 'photo'
    require(folder.is_dir(), f'{folder}: no such folder (--data_root must hold {name}/ and {box_file.name})')
    require(coord.is_file(), f'{coord}: missing (the {name} vector sketches)')
    require(photo_dir.is_dir(), f'{photo_dir}: missing (the {name} photos)')
    data = read_pickle(coord)
    require(all(isinstance(k, str) for k in data), f'{coord}: keys must be strings like /train/<photo>_<n>')
    available = set(os.listdir(photo_dir))
    missing = []
    for key in sorted(data):
        split = 'train' if '/train/' in key else 'test' if '/test/' in key else None
        require(split, f"{coord}: key {key!r} has neither '/train/' nor '/test/'")
        photo = qmul_photo(key)
        require(photo, f"{coord}: key {key!r} has no '_<n>' suffix to find its photo")
        if photo not in available:
            missing.append((key, photo))
            continue
        rec = vector_record(data[key], key, photo, f'{coord} [{key!r}]', index, args)
        getattr(index, split).append(rec)
    if missing:
        key, photo = missing[0]
        raise DatasetError(f'{photo_dir / photo}: missing photo of sketch {key!r} '
                           f'({len(missing)} sketches have no photo)')
    used = {r.photo for r in index.train + index.test}
    load_photo_boxes(index, box_file, {p: photo_dir / p for p in used}, args.num_regions, fill_missing=False)
    unused = len(available - used)
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
        except (KeyError, TypeError, ValueError):
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


def load_swire(index, args):
    folder = Path(args.data_root) / index.name
    sketch_dir, gui_dir = folder / 'sketches', folder / 'combined'
    require(folder.is_dir(), f'{folder}: no such folder (--data_root must hold {index.name}/)')
    require(sketch_dir.is_dir(), f'{sketch_dir}: missing (the sketches <rico_id>_<n>.jpg)')
    require(gui_dir.is_dir(), f'{gui_dir}: missing (the RICO <rico_id>.jpg + .json)')
    ignored = 0
    for path in sorted(sketch_dir.iterdir()):
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            ignored += 1
            continue
        require('_' in path.stem, f'{path}: sketch name must be <rico_id>_<n>{path.suffix}')
        rico = path.stem.rsplit('_', 1)[0]
        photo = f'{rico}.jpg'
        for need in (gui_dir / photo, gui_dir / f'{rico}.json'):
            require(need.is_file(), f'{need}: missing (needed by sketch {path.name})')
        rec = raster_record(path, path.name, photo, index, args)
        getattr(index, swire_split(rico)).append(rec)
    if ignored:
        index.notes.append(f'{ignored} non-image files in {sketch_dir} ignored')
    for photo in sorted({r.photo for r in index.train + index.test}):
        path = gui_dir / photo
        size = image_size(path)
        boxes, parents = gui_nodes(path.with_suffix('.json'), size, args.num_regions, index)
        index.photos[photo] = PhotoRecord(path, size, boxes, parents)
    index.box_source = f'RICO element bounds ({gui_dir}/*.json)'


# ----------------------------------------------------------------------------- Folder layout
def load_folder(index, args):
    root = Path(args.data_root)
    csv_path = root / 'pairs.csv'
    require(root.is_dir(), f'{root}: no such folder (--data_root must hold pairs.csv)')
    require(csv_path.is_file(), f'{csv_path}: missing (columns sketch,photo,split)')
    with open(csv_path, newline='') as f:
        reader = csv.DictReader(f)
        lacking = [c for c in ('sketch', 'photo', 'split') if c not in (reader.fieldnames or [])]
        require(not lacking, f'{csv_path}: missing column(s) {", ".join(lacking)} (need sketch,photo,split)')
        rows = list(reader)
    require(rows, f'{csv_path}: no rows')
    photo_paths = {}
    for line, row in enumerate(rows, start=2):
        where = f'{csv_path} line {line}'
        sk, ph, split = [(row[c] or '').strip() for c in ('sketch', 'photo', 'split')]
        require(sk and ph, f'{where}: empty sketch or photo path')
        require(split in ('train', 'test'), f'{where}: split must be train or test, got {split!r}')
        sk_path, ph_path = root / sk, root / ph
        require(sk_path.is_file(), f'{sk_path}: missing sketch ({where})')
        require(ph_path.is_file(), f'{ph_path}: missing photo ({where})')
        photo = Path(ph).as_posix()
        if sk_path.suffix.lower() == '.npy':
            try:
                points = np.load(sk_path, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise DatasetError(f'{sk_path}: cannot read .npy ({e})') from None
            rec = vector_record(points, sk, photo, sk_path, index, args)
        else:
            rec = raster_record(sk_path, sk, photo, index, args)
        getattr(index, split).append(rec)
        photo_paths[photo] = ph_path
    load_photo_boxes(index, root / BOX_PICKLE.format('Folder'), photo_paths, args.num_regions, fill_missing=True)


# ----------------------------------------------------------------------------- entry points
def parse_size(items):
    """['train_photos=100', ...] -> {'train_photos': 100, ...} (--synthetic_size)."""
    size = {}
    for item in items or ():
        key, sep, value = item.partition('=')
        require(sep and value.isdigit(), f'--synthetic_size {item!r}: expected KEY=N, e.g. train_photos=100')
        size[key] = int(value)
    return size


def load_index(args):
    """Validate the dataset named by args -> DataIndex (DatasetError on any bad input)."""
    name = args.dataset
    if name in ('Synthetic', 'SyntheticGUI'):
        from synthetic import ensure_synthetic  # generated on first use
        try:
            ensure_synthetic(args.data_root, name, seed=args.synthetic_seed,
                             **parse_size(getattr(args, 'synthetic_size', None)))
        except ValueError as e:
            raise DatasetError(f'--dataset {name}: {e}') from None
    require(args.num_regions >= 1, f'--num_regions must be >= 1, got {args.num_regions}')
    require(args.line_width >= 1, f'--line_width must be >= 1, got {args.line_width}')
    require(args.max_sketch_nodes >= 0, f'--max_sketch_nodes must be >= 0, got {args.max_sketch_nodes}')
    index = DataIndex(name, Path(args.data_root))
    require(index.root.is_dir(), f'{index.root}: --data_root does not exist')
    if name in QMUL:
        load_qmul(index, args)
    elif name in SWIRE:
        load_swire(index, args)
    elif name == 'Folder':
        load_folder(index, args)
    else:
        raise DatasetError(f'unknown dataset {name!r}; choose one of {", ".join(options.DATASETS)}')
    require(index.test, f'{index.root}: {name} has no test sketches')
    train_photos = {r.photo for r in index.train}
    require(len(train_photos) >= 2,
            f'{index.root}: {name} needs training sketches of at least 2 photos for triplet negatives')
    return index


def build_datasets(args):
    """-> (TripletDataset on the train split, RetrievalData on the test split)."""
    index = load_index(args)
    return TripletDataset(index, args), RetrievalData(index, args)


# ----------------------------------------------------------------------------- joint transforms
def joint_resize(img, boxes, size):
    """PIL W x H, boxes (n, 4) in its frame -> PIL size x size (aspect not kept), boxes scaled."""
    W, H = img.size
    out = TF.resize(img, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return out, boxes * np.array([size / W, size / H, size / W, size / H], dtype=np.float32)


def clamp_boxes(boxes, W, H):
    """Clamp boxes to a W x H image. A box with no area left becomes a 1-px wide/high box at
    the border it left through, so every node keeps a (tiny) region."""
    b = boxes.copy()
    b[:, 0] = b[:, 0].clip(0, W - 1)
    b[:, 1] = b[:, 1].clip(0, H - 1)
    b[:, 2] = b[:, 2].clip(b[:, 0] + 1, W)
    b[:, 3] = b[:, 3].clip(b[:, 1] + 1, H)
    return b


def joint_center_crop(img, boxes, size):
    """Centre crop size x size (torchvision's offsets); boxes shifted and clamped (clamp_boxes)."""
    W, H = img.size
    left, top = int(round((W - size) / 2.0)), int(round((H - size) / 2.0))
    out = TF.crop(img, top, left, size, size)
    return out, clamp_boxes(boxes - np.array([left, top, left, top], dtype=np.float32), size, size)


def joint_hflip(img, boxes):
    """Mirror left-right; x1' = W - x2, x2' = W - x1."""
    W = img.size[0]
    b = boxes.copy()
    b[:, 0], b[:, 2] = W - boxes[:, 2], W - boxes[:, 0]
    return TF.hflip(img), b


def to_tensors(img, boxes):
    """-> (FloatTensor [3, S, S] ImageNet-normalised, FloatTensor [n, 4])."""
    x = TF.normalize(TF.to_tensor(img), IMAGENET_MEAN, IMAGENET_STD)
    return x, torch.as_tensor(np.asarray(boxes, dtype=np.float32))


def train_transform(img, boxes, size, flip):
    """Resize to round(S*240/224) square, centre crop S, horizontal flip if `flip` (SPEC 6)."""
    img, boxes = joint_resize(img, boxes, round(size * 240 / 224))
    img, boxes = joint_center_crop(img, boxes, size)
    if flip:
        img, boxes = joint_hflip(img, boxes)
    return to_tensors(img, boxes)


def test_transform(img, boxes, size):
    """Resize to S x S, nothing else."""
    return to_tensors(*joint_resize(img, boxes, size))


# ----------------------------------------------------------------------------- datasets
class TripletDataset(Dataset):
    """Training triplets (SPEC 6). Item: dict of
    'sketch' [3, S, S], 'sketch_boxes' [Ns, 4], 'positive' [3, S, S], 'positive_boxes' [Np, 4],
    'negative' [3, S, S], 'negative_boxes' [Nn, 4]; boxes in the tensor's pixel frame.
    The negative is the photo of a random other training sketch, never the positive's photo.
    """

    def __init__(self, index, args):
        self.index, self.args = index, args
        self.records = index.train
        self.sketch_names = [r.name for r in self.records]
        self.photo_names = [r.photo for r in self.records]

    def __len__(self):
        return len(self.records)

    def negative_photo(self, i):
        # Rejection sampling over sketches: picks a photo with probability ~ its sketch count.
        while True:
            j = int(torch.randint(len(self.records), ()))
            if self.photo_names[j] != self.photo_names[i]:
                return self.photo_names[j]

    def photo(self, name, flip):
        rec = self.index.photos[name]
        return train_transform(network_photo(rec.path, self.args), rec.boxes, self.args.image_size, flip)

    def __getitem__(self, i):
        rec = self.records[i]
        # One flip for the whole triplet (as the authors' code): a sketch is never compared
        # with the mirror image of its photo, which matters for objects seen from one side.
        flip = torch.rand(()).item() < self.args.flip_prob
        s, s_boxes = train_transform(*render_sketch(rec, self.args), self.args.image_size, flip)
        p, p_boxes = self.photo(rec.photo, flip)
        n, n_boxes = self.photo(self.negative_photo(i), flip)
        return {'sketch': s, 'sketch_boxes': s_boxes, 'positive': p, 'positive_boxes': p_boxes,
                'negative': n, 'negative_boxes': n_boxes, 'photo_name': rec.photo}

    def gui_tree(self, photo):
        return self.index.gui_tree(photo)


class QuerySet(Dataset):
    """Test sketches: {'sketch': [3, S, S], 'sketch_boxes': [Ns, 4], 'target': gallery index}."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data.records)

    def __getitem__(self, i):
        s, boxes = test_transform(*render_sketch(self.data.records[i], self.data.args), self.data.args.image_size)
        return {'sketch': s, 'sketch_boxes': boxes, 'target': self.data.targets[i]}


class GallerySet(Dataset):
    """Unique test photos: {'photo': [3, S, S], 'photo_boxes': [Np, 4]}."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data.gallery_names)

    def __getitem__(self, i):
        rec = self.data.index.photos[self.data.gallery_names[i]]
        p, boxes = test_transform(network_photo(rec.path, self.data.args), rec.boxes, self.data.args.image_size)
        return {'photo': p, 'photo_boxes': boxes}


class RetrievalData:
    """Test split: .queries / .gallery datasets, names, and the raw images for figures."""

    def __init__(self, index, args):
        self.index, self.args = index, args
        self.records = index.test
        self.query_names = [r.name for r in self.records]
        self.gallery_names = sorted({r.photo for r in self.records})
        position = {name: i for i, name in enumerate(self.gallery_names)}
        self.targets = [position[r.photo] for r in self.records]
        self.queries, self.gallery = QuerySet(self), GallerySet(self)

    def query_image(self, i):
        """The sketch as drawn (original frame, at --sketch_detail), PIL RGB."""
        return render_sketch(self.records[i], self.args)[0]

    def gallery_image(self, i):
        return load_photo(self.index.photos[self.gallery_names[i]].path)

    def gui_tree(self, photo):
        return self.index.gui_tree(photo)


def collate(batch):
    """list of item dicts -> batch dict.
    Image tensors -> [B, 3, S, S]; 'K_boxes' -> zero-padded [B, N, 4] + 'K_mask' bool [B, N]
    (True = real node, real nodes first); ints -> LongTensor [B]; anything else -> list.
    """
    out = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        if key.endswith('_boxes'):
            n = max(len(v) for v in values)
            boxes = torch.zeros(len(values), n, 4)
            mask = torch.zeros(len(values), n, dtype=torch.bool)
            for b, v in enumerate(values):
                boxes[b, :len(v)] = v
                mask[b, :len(v)] = True
            out[key] = boxes
            out[key[:-len('_boxes')] + '_mask'] = mask
        elif torch.is_tensor(values[0]):
            out[key] = torch.stack(values)
        elif isinstance(values[0], int):
            out[key] = torch.tensor(values, dtype=torch.long)
        else:
            out[key] = values
    return out


# ----------------------------------------------------------------------------- summary / CLI
def stats(values):
    v = np.asarray(values)
    return f'min {v.min():g} / median {np.median(v):g} / max {v.max():g}'


def format_summary(index, args):
    """Human-readable counts, node statistics, repairs and notes of a validated index."""
    records = index.train + index.test
    vector = {r.points is not None for r in records}
    kind = {frozenset([True]): 'strokes', frozenset([False]): 'ink nodes incl. whole image'}.get(
        frozenset(vector), 'strokes or ink nodes')
    photos = list(index.photos.values())
    few = sorted(n for n, p in index.photos.items() if len(p.boxes) < args.num_regions)
    sizes = Counter(f'{p.size[0]}x{p.size[1]}' for p in photos)
    lines = [
        f'{index.name} at {index.root}',
        f'  train: {len(index.train)} sketches / {len({r.photo for r in index.train})} photos',
        f'  test:  {len(index.test)} sketches / {len({r.photo for r in index.test})} photos',
        f'  nodes per sketch ({kind}, sketch_detail={args.sketch_detail}): {stats([r.nodes for r in records])}',
        f'  boxes per photo (first --num_regions={args.num_regions}): {stats([len(p.boxes) for p in photos])}',
        f'  photos with fewer than {args.num_regions} boxes: {len(few)}'
        + (f' ({", ".join(few[:5])}{", ..." if len(few) > 5 else ""})' if few else ''),
        '  photo sizes: ' + ', '.join(f'{s} x{c}' for s, c in sizes.most_common()),
        f'  photo boxes from: {index.box_source}',
    ]
    if index.repairs:
        lines.append('  repairs:')
        lines += [f'    {what}: {n} (e.g. {index.repair_example[what]})' for what, n in sorted(index.repairs.items())]
    else:
        lines.append('  repairs: none')
    lines += [f'  note: {n}' for n in index.notes]
    return '\n'.join(lines)


def main(argv=None):
    args = options.parse_args(argv)
    try:
        if args.precompute_boxes:
            require(args.boxes_out, '--precompute_boxes needs --boxes_out FILE.pickle')
            n = precompute_boxes(args.precompute_boxes, args.boxes_out)
            print(f'{args.boxes_out}: selective-search boxes computed for {n} photos')
            return 0
        index = load_index(args)
        if args.summary:
            print(format_summary(index, args))
        else:
            print(f'{index.name}: ok, {len(index.train)} train / {len(index.test)} test sketches '
                  f'(--summary for details)')
    except DatasetError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
