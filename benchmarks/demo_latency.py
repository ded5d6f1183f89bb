"""Latency of the demo's POST /search: a real server on 127.0.0.1, test sketches replayed stroke by
stroke as the page does, each request timed from the client (HTTP, JSON, drawing, the model).

    python benchmarks/demo_latency.py --checkpoint RUN/last.pth [--data_root DATA] [--gallery DIR] [--sketches 10]

The gallery is built once before timing (not timed), as demo.py does at start. Prints the median,
90th percentile and maximum milliseconds per request and the model's own share; asserts nothing.
"""
import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import demo  # noqa: E402
import retrieval  # noqa: E402
import sketch  # noqa: E402
from experiment import load_model  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--checkpoint', required=True)
    p.add_argument('--data_root', default=None)
    p.add_argument('--gallery', default=None, help='a photo folder (default: the test gallery of the dataset)')
    p.add_argument('--sketches', type=int, default=10, help='test sketches replayed, evenly spread over the split')
    p.add_argument('--topk', type=int, default=10)
    a = p.parse_args(argv)
    model, args, _, path = load_model(a.checkpoint, {'data_root': a.data_root} if a.data_root else {}, 'cpu')
    records = demo.replay_records(args)
    engine = demo.SearchEngine(model, args, path, a.gallery, 'cpu', a.topk, records)
    demo.Handler.log_message = lambda *a: None      # no line per request
    server = demo.make_server(engine, '127.0.0.1', 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    client, model_only, points = [], [], []
    for i in retrieval.figure_queries(len(records), a.sketches):
        strokes = [s.tolist() for s in sketch.split_strokes(records[i].points)]
        for k in range(1, len(strokes) + 1):
            body = json.dumps({'strokes': strokes[:k], 'topk': a.topk})
            start = time.perf_counter()
            conn.request('POST', '/search', body=body, headers={'Content-Type': 'application/json'})
            answer = json.loads(conn.getresponse().read())
            client.append(1000 * (time.perf_counter() - start))
            model_only.append(1000 * answer['seconds'])
            points.append(sum(map(len, strokes[:k])))
    server.shutdown()
    q = statistics.quantiles(client, n=10)
    print(f'{len(engine.names)} photos, {args.method}, rerank {args.rerank}, {torch.get_num_threads()} CPU threads; '
          f'{len(client)} requests ({a.sketches} sketches stroke by stroke, {min(points)}-{max(points)} points)')
    print(f'ms per request (client): median {statistics.median(client):.0f}, p90 {q[-1]:.0f}, max {max(client):.0f}; '
          f'of which drawing + model: median {statistics.median(model_only):.0f}')


if __name__ == '__main__':
    main()
