"""An interactive sketch-search page: draw with a mouse, pen or finger, and the gallery is ranked
again after every stroke.

    python demo.py --checkpoint RUN/best.pth [--gallery PHOTO_DIR] [--port 8000] [--topk 10]

The page (web/demo.html, served from the repository: no CDN, no network) sends the strokes as
vector points; the model sees them as a vector sketch, one node per stroke, exactly as training
sees QMUL sketches. The gallery is a photo folder (its search.py index, built once and reused) or,
without --gallery, the test gallery of the checkpoint's dataset, whose test sketches the page can
replay stroke by stroke ("Load a test sketch") with the true photo's rank.

Endpoints (scripts can use them too):
  POST /search     {"strokes": [[[x, y], ...], ...], "topk": K} (the 256 x 256 frame of QMUL
                   sketches, one list of points per stroke; optional "target": a photo name) ->
                   {"results": [{"photo": NAME, "distance": D, "rank": R}, ...]} best first
                   (+ "target_rank" with a target in the gallery)
  GET  /photo/NAME a thumbnail of a gallery photo (only the gallery's photos are served)
  GET  /sketches   the test sketches that can be replayed; GET /sketch/N: one, as strokes
Bad requests get a 4xx and {"error": one line}; a failing model call a 500; the server keeps serving.
"""
import argparse
import io
import json
import math
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import torch

import experiment
import options
import runtime
import sketch
from backbones import PretrainedWeightsError
from checkpoint import CheckpointError
from dataset import build_datasets, collate, load_photo
from experiment import load_model
from files import DatasetError, WriteError
from model import batch_inputs
from search import load_gallery, query_scores, sketch_item

PAGE = Path(__file__).resolve().parent / 'web' / 'demo.html'
MAX_BODY = 1 << 20          # bytes of a request body
MAX_POINTS = 4000           # points of one sketch (QMUL ChairV2 sketches have at most about 600)
THUMBNAIL = 160             # pixels, the longer side


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a one-line reason."""

    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status


def number(v, where):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise RequestError(400, f'{where}: expected a number, got {json.dumps(v)[:40]}')
    try:
        v = float(v)
    except OverflowError:       # an integer with hundreds of digits
        v = math.inf
    if not math.isfinite(v):
        raise RequestError(400, f'{where}: non-finite coordinate')
    if not 0 <= v <= sketch.CANVAS:
        raise RequestError(400, f'{where}: coordinate {v:g} outside the {sketch.CANVAS} x {sketch.CANVAS} frame')
    return float(v)


def parse_strokes(strokes):
    """The JSON strokes [[[x, y], ...], ...] -> cleaned (L, 3) points x, y, pen (pen 1 ends a stroke);
    RequestError naming the first bad stroke or point."""
    if not isinstance(strokes, list) or not strokes:
        raise RequestError(400, 'no strokes: "strokes" must be a non-empty list of strokes')
    total = sum(len(s) if isinstance(s, list) else 0 for s in strokes)
    if total > MAX_POINTS:
        raise RequestError(413, f'too many points: {total} > {MAX_POINTS}')
    rows = []
    for i, stroke in enumerate(strokes):
        if not isinstance(stroke, list) or not stroke:
            raise RequestError(400, f'stroke {i}: expected a non-empty list of [x, y] points')
        for j, pt in enumerate(stroke):
            if not isinstance(pt, list) or len(pt) != 2:
                raise RequestError(400, f'stroke {i}, point {j}: expected [x, y]')
            rows.append([number(pt[0], f'stroke {i}, point {j}'), number(pt[1], f'stroke {i}, point {j}'),
                         float(j == len(stroke) - 1)])
    try:
        points, _ = sketch.clean_points(np.array(rows))     # x or y = 256 is clamped onto the last pixel
    except sketch.SketchError as e:
        raise RequestError(400, f'strokes: {e}') from None
    return points


def reject_constant(name):
    raise RequestError(400, f'non-finite coordinate ({name} is not JSON)')


class SearchEngine:
    """A model and a gallery's features, computed once; `search` ranks the gallery for strokes."""

    def __init__(self, model, args, checkpoint, gallery, device, topk=10, replay=None):
        self.model, self.args, self.device, self.topk = model, args, device, topk
        self.style = experiment.data_config(args).style
        self.names, self.features, self.path_of = load_gallery(model, args, checkpoint, gallery, device)
        self.position = {n: g for g, n in enumerate(self.names)}
        self.lock = threading.Lock()        # one model call at a time; thumbnails are served beside it
        self.thumbnails = {}
        self.replay = replay or []          # test sketch records (vector) the page can replay
        self.requests = []                  # strokes per answered search, for tests and the log

    @torch.no_grad()
    def rank(self, points):
        """Cleaned (L, 3) points -> scores [G] whose order is the model's ranking (search.query_scores)."""
        img, boxes = self.style.vector(points)
        item = sketch_item(img, boxes, points, self.style.detail, self.args.image_size)
        return query_scores(self.model, self.args, batch_inputs(collate([item]), 'sketch', self.device), self.features)

    def search(self, request):
        """A decoded /search request -> the response dict (RequestError on a bad request)."""
        if not isinstance(request, dict):
            raise RequestError(400, 'expected a JSON object {"strokes": [...], "topk": K}')
        if 'strokes' not in request:
            raise RequestError(400, 'no strokes: the request has no "strokes"')
        topk = request.get('topk', min(self.topk, len(self.names)))
        if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= len(self.names):
            raise RequestError(400, f'topk must be an integer from 1 to {len(self.names)}, got {json.dumps(topk)[:40]}')
        target = request.get('target')
        if target is not None and not isinstance(target, str):
            raise RequestError(400, 'target must be a photo name')
        points = parse_strokes(request['strokes'])
        start = time.perf_counter()
        with self.lock:
            try:
                scores = self.rank(points)
            except Exception as e:      # any failure of the model: a 500 with its reason, the server lives on
                raise RequestError(500, f'model failed: {type(e).__name__}: {e}'.splitlines()[0]) from None
            self.requests.append(int(points[:, 2].sum()))
        scores = torch.nan_to_num(scores.double(), nan=math.inf)
        order = scores.argsort(stable=True)[:topk].tolist()
        out = {'results': [{'photo': self.names[g], 'distance': float(scores[g]), 'rank': k + 1}
                           for k, g in enumerate(order)],
               'strokes': int(points[:, 2].sum()), 'seconds': round(time.perf_counter() - start, 4)}
        if target in self.position:     # as retrieval.retrieval_metrics: ties count against the query
            out['target_rank'] = int((scores <= scores[self.position[target]]).sum())
        return out

    def thumbnail(self, name):
        """JPEG bytes of a gallery photo's thumbnail; RequestError for anything not in the gallery."""
        if '..' in name.replace('\\', '/').split('/'):
            raise RequestError(400, "'..' in a photo path")
        if name not in self.position:
            raise RequestError(404, f'no photo {name[:80]!r} in the gallery')
        if name not in self.thumbnails:
            img = load_photo(self.path_of(name))
            img.thumbnail((THUMBNAIL, THUMBNAIL))
            buf = io.BytesIO()
            img.save(buf, 'JPEG', quality=85)
            self.thumbnails[name] = buf.getvalue()
        return self.thumbnails[name]

    def sketches(self):
        return [{'index': i, 'key': r.name, 'photo': r.photo, 'strokes': int(r.points[:, 2].sum())}
                for i, r in enumerate(self.replay)]

    def sketch(self, index):
        if not index.isdigit() or int(index) >= len(self.replay):
            raise RequestError(404, f'no test sketch {index[:20]!r} (there are {len(self.replay)})')
        rec = self.replay[int(index)]
        return {'key': rec.name, 'photo': rec.photo,
                'strokes': [s.tolist() for s in sketch.split_strokes(rec.points)]}


class Handler(BaseHTTPRequestHandler):
    engine = None       # set by make_server
    server_version = 'fgsbir-demo'
    timeout = 30        # seconds a client may take to send its request (a stalled one frees its thread)

    def log_message(self, fmt, *args):      # one short line per request on stderr
        sys.stderr.write(f'{self.address_string()} {fmt % args}\n')

    def send(self, status, body, kind='application/json'):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header('Content-Type', kind)
        self.send_header('Content-Length', str(len(body)))
        self.send_header('Cache-Control', 'no-store' if kind == 'application/json' else 'max-age=3600')
        self.end_headers()
        self.wfile.write(body)

    def fail(self, e):
        self.send(e.status, {'error': str(e)})

    def do_GET(self):
        self.answer(self.get)

    def do_POST(self):
        self.answer(self.post)

    def answer(self, how):
        """Run a GET or POST handler: a RequestError is its status and reason; anything else a 500."""
        try:
            how()
        except RequestError as e:
            self.fail(e)
        except Exception as e:      # a bug must not leave the client without an answer
            self.fail(RequestError(500, f'internal error: {type(e).__name__}: {e}'.splitlines()[0]))

    def get(self):
        path = unquote(urlsplit(self.path).path)
        if path in ('/', '/index.html'):
            self.send(200, PAGE.read_bytes(), 'text/html; charset=utf-8')
        elif path.startswith('/photo/'):
            self.send(200, self.engine.thumbnail(path[len('/photo/'):]), 'image/jpeg')
        elif path == '/sketches':
            self.send(200, {'sketches': self.engine.sketches(), 'gallery': len(self.engine.names)})
        elif path.startswith('/sketch/'):
            self.send(200, self.engine.sketch(path[len('/sketch/'):]))
        else:
            raise RequestError(404, f'unknown path {path[:80]!r}')

    def post(self):
        if urlsplit(self.path).path != '/search':
            raise RequestError(404, f'unknown path {self.path[:80]!r} (POST /search only)')
        length = self.headers.get('Content-Length')
        if length is None or not length.isdigit():
            raise RequestError(411, 'a Content-Length header is required')
        if int(length) > MAX_BODY:
            # A body up to 8 times the limit is read and dropped, so that the client, still sending,
            # gets the answer rather than a reset connection; a larger one is not read at all.
            if int(length) <= 8 * MAX_BODY:
                left = int(length)
                while left > 0 and (chunk := self.rfile.read(min(left, 1 << 16))):
                    left -= len(chunk)
            self.close_connection = True
            raise RequestError(413, f'request body of {length} bytes is over {MAX_BODY}')
        body = self.rfile.read(int(length))
        try:
            request = json.loads(body, parse_constant=reject_constant)
        except (ValueError, RecursionError) as e:       # UnicodeDecodeError is a ValueError
            raise RequestError(400, f'malformed JSON: {type(e).__name__}: {e}'.splitlines()[0]) from None
        self.send(200, self.engine.search(request))


def make_server(engine, host='127.0.0.1', port=8000):
    """A threading HTTP server for `engine` (port 0: a free one; server.server_address says which)."""
    handler = type('BoundHandler', (Handler,), {'engine': engine})
    return ThreadingHTTPServer((host, port), handler)


def replay_records(args):
    """The test sketches of the checkpoint's dataset that have strokes (for "Load a test sketch")."""
    _, test = build_datasets(experiment.data_config(args))
    return [r for r in test.records if r.points is not None]


def main(argv=None):
    p = argparse.ArgumentParser(description='Serve a page to draw a sketch and see the gallery ranked after '
                                            'every stroke (and a JSON endpoint, POST /search).')
    p.add_argument('--checkpoint', required=True, help='the .pth checkpoint to search with')
    p.add_argument('--gallery', default=None,
                   help='a folder of photos (its index is built once and reused, as by evaluate.py --query); '
                        'default: the test gallery of the checkpoint\'s dataset, with its test sketches to replay')
    p.add_argument('--data_root', default=None, help='where the checkpoint\'s dataset is now, if it moved')
    p.add_argument('--port', type=options.nonneg_int, default=8000, help='TCP port (0: any free one)')
    p.add_argument('--host', default='127.0.0.1',
                   help='address to listen on. The default, 127.0.0.1, serves this machine only; '
                        '--host 0.0.0.0 EXPOSES the page to the network: anyone who can reach the port can '
                        'query the model and see the gallery\'s photos (there is no login)')
    p.add_argument('--topk', type=options.positive_int, default=10, help='photos shown when the page does not say')
    p.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))
    a = p.parse_args(argv)
    device = runtime.resolve_device(a.device)
    try:
        model, args, _, path = load_model(a.checkpoint, {'data_root': a.data_root} if a.data_root else {}, device)
        replay = replay_records(args) if a.gallery is None else []
        engine = SearchEngine(model, args, path, a.gallery, device, a.topk, replay)
        server = make_server(engine, a.host, a.port)
    except (DatasetError, PretrainedWeightsError, CheckpointError, WriteError) as e:
        raise SystemExit(f'error: {e}') from None
    except OSError as e:        # the port is taken, the host is not an address of this machine
        raise SystemExit(f'error: cannot serve on {a.host}:{a.port}: {e.strerror or e}') from None
    host, port = server.server_address[:2]
    print(f'{len(engine.names)} photos, {len(replay)} test sketches to replay; serving on http://{host}:{port}/'
          + ('  (exposed to the network)' if a.host not in ('127.0.0.1', 'localhost', '::1') else ''))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == '__main__':
    main()
