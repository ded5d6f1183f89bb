"""Single-sketch search with a trained model: rank a folder of photos (or the test gallery) for one
sketch, print the ranking and draw it.

    python evaluate.py --checkpoint runs/RUN/best.pth --query SKETCH [--gallery PHOTO_DIR] [--topk 10]

SKETCH: a raster sketch image (dark on light or the reverse), a vector sketch .npy (L, 3) of
x, y, pen on the 256 canvas, or a sketch key of the checkpoint's dataset. The gallery's features
(region nodes and first-stage embeddings) are computed once and stored in PHOTO_DIR as a
`GalleryIndex` (float16), tied to the checkpoint's bytes, the options that shape features and every
photo's size and modification time: a stale or unreadable index is rebuilt, never used.
"""
import hashlib
from pathlib import Path

import numpy as np
import torch

import layouts
import options
import retrieval
import sketch
import transforms
from checkpoint import save_checkpoint
from dataset import GallerySet, Images, build_datasets, collate, load_photo
from files import DatasetError, image_size, open_image, require
from model import batch_inputs
from proposals import IMAGE_EXTENSIONS, BoxCache

INDEX_FILE = '.fgsbir_gallery_index.pt'
FEATURE_OPTIONS = ('image_size', 'num_regions', 'photo_input', 'sketch_detail', 'line_width')


class StaleIndexError(Exception):
    """A gallery index built for another checkpoint, other options or other photos."""


class GalleryIndex:
    """Features of a photo folder for one model: names, features (float16 on disk), identity."""

    def __init__(self, names, features, identity):
        self.names, self.features, self.identity = names, features, identity

    def save(self, path):
        half = {k: v.half() if v.is_floating_point() else v for k, v in self.features.items()}
        save_checkpoint(path, names=self.names, features=half, identity=self.identity)

    @classmethod
    def load(cls, path, identity):
        """The index at path if it was built for `identity`; StaleIndexError otherwise."""
        if not Path(path).exists():
            raise FileNotFoundError(path)
        try:
            state = torch.load(path, map_location='cpu', weights_only=True)
            ok = isinstance(state, dict) and {'identity', 'names', 'features'} <= set(state)
        except Exception:   # truncated or foreign file: an index is a cache, so rebuild it
            ok = False
        if not ok:
            raise StaleIndexError(f'{path} is not a readable gallery index')
        if state['identity'] != identity:
            raise StaleIndexError(f'{path} was built for another checkpoint, other options or other photos')
        feats = {k: v.float() if v.is_floating_point() else v for k, v in state['features'].items()}
        return cls(list(state['names']), feats, identity)


def identity_of(checkpoint, args, photos):
    """sha256 over the checkpoint's bytes, the feature-shaping options and each photo's name,
    size in bytes and modification time."""
    h = hashlib.sha256(Path(checkpoint).read_bytes())
    h.update(repr([(k, getattr(args, k, None)) for k in FEATURE_OPTIONS]).encode())
    for name, path in sorted(photos.items()):
        st = Path(path).stat()
        h.update(f'{name}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
    return h.hexdigest()


def folder_photos(gallery):
    folder = Path(gallery)
    require(folder.is_dir(), f'--gallery {folder}: no such folder')
    photos = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob('*'))
              if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith('.')}
    require(photos, f'--gallery {folder}: no images')
    return photos


@torch.no_grad()
def build_index(model, args, photos, identity, device, box_cache):
    """Encode every photo of {name: path} (selective-search boxes from box_cache)."""
    index = layouts.DataIndex('gallery', Path('.'), args.num_regions)
    table, _ = box_cache.boxes(photos)
    for name, path in photos.items():
        boxes = np.asarray(table[name], np.float32)[:args.num_regions]
        index.photos[name] = layouts.PhotoRecord(path, image_size(path), boxes)
    names = sorted(photos)
    config = options.data_config(args)
    feats, _ = retrieval.encode_set(model, GallerySet(names, Images(index, config, train=False)), 'photo',
                                    args.eval_batch_size, device)
    return GalleryIndex(names, {k: v.cpu() for k, v in feats.items()}, identity)


def query_inputs(spec, args, device):
    """(PIL sketch as drawn, inputs dict of a batch of one) for a query file or dataset key."""
    style = options.data_config(args).style
    path = Path(spec)
    if path.suffix.lower() == '.npy' and path.is_file():
        try:
            points, _ = sketch.clean_points(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as e:
            raise DatasetError(f'--query {path}: not a vector sketch ({e})') from None
        img, boxes = style.vector(points)
    elif path.is_file():
        points = None
        try:
            img, boxes, _ = style.raster(open_image(path))
        except sketch.SketchError as e:
            raise DatasetError(f'--query {path}: {e}') from None
    else:
        _, test = build_datasets(options.data_config(args))
        records = {r.name: r for r in test.index.train + test.index.test}
        require(spec in records, f'--query {spec}: neither a file nor a sketch key of {args.dataset}')
        rec = records[spec]
        img, boxes = layouts.render_sketch(rec, style)
        points = rec.points
    item = sketch_item(img, boxes, points, style.detail, args.image_size)
    return img, batch_inputs(collate([item]), 'sketch', device)


def sketch_item(img, boxes, points, detail, image_size):
    """A drawn sketch (PIL, its boxes, its cleaned (L, 3) points or None) -> a query item as the test
    split gives it: {'sketch': [3, S, S], 'sketch_boxes': [n, 4], and with points 'sketch_points'}."""
    x, b = transforms.to_tensors(*transforms.test_geometry(img.convert('L'), boxes, image_size))
    item = {'sketch': x, 'sketch_boxes': b}
    if points is not None:
        item['sketch_points'] = torch.from_numpy(sketch.select_points(points, detail).astype(np.float32))
        item['sketch_points'][:, :2] /= sketch.CANVAS
    return item


def load_gallery(model, args, checkpoint, gallery, device):
    """(photo names, their features on device, name -> image path) of a --gallery folder (its index
    reused or rebuilt) or, with gallery None, of the test gallery of the checkpoint's dataset."""
    if gallery is None:
        _, test = build_datasets(options.data_config(args))
        p, _ = retrieval.encode_set(model, test.gallery, 'photo', args.eval_batch_size, device)
        return test.gallery_names, p, lambda name: test.index.photos[name].path
    photos = folder_photos(gallery)
    path = Path(gallery) / INDEX_FILE
    identity = identity_of(checkpoint, args, photos)
    try:
        index = GalleryIndex.load(path, identity)
        print(f'gallery index: {path} (reused)')
    except (FileNotFoundError, StaleIndexError) as e:
        if isinstance(e, StaleIndexError):
            print(f'gallery index: {e}; rebuilding')
        index = build_index(model, args, photos, identity, device, BoxCache(Path(gallery) / '.fgsbir_boxes.json'))
        index.save(path)
        print(f'gallery index: {path} ({len(photos)} photos)')
    return index.names, {k: v.to(device) for k, v in index.features.items()}, photos.__getitem__


def search(model, args, checkpoint, query, gallery, topk, device):
    """Print the top-k photos of the gallery for the query and draw them; returns [(name, distance)]."""
    img, inputs = query_inputs(query, args, device)
    require('points' in inputs or not type(model).needs_points,
            f'--query {query}: {args.method} reads vector sketches; give a .npy (L, 3) or a dataset key')
    names, p, path_of = load_gallery(model, args, checkpoint, gallery, device)
    s = model.encode([('sketch', inputs)])[0]
    scores = retrieval.rank_scores(model, s, p, args.rerank, args.pair_chunk)[0].cpu()
    order = scores.argsort(stable=True)[:topk].tolist()
    how = f' (rerank {args.rerank})' if args.rerank else ''
    print(f'query {query}: top {len(order)} of {len(names)} photos{how}')
    for k, g in enumerate(order):
        print(f'{k + 1:4d}  {scores[g]:10.4f}  {names[g]}')
    fig = Path(checkpoint).with_name(f'search_{Path(str(query)).stem.replace("/", "_")}.png')
    retrieval.retrieval_row(img, [load_photo(path_of(names[g])) for g in order],
                            [f'#{k + 1}' for k in range(len(order))], set(), caption='query').save(fig)
    print(f'figure: {fig}')
    return [(names[g], float(scores[g])) for g in order]

