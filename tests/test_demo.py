"""demo.py on a real server bound to 127.0.0.1 with a tiny model: rankings equal to search.py's for
the same strokes, every bad request answered with a 4xx (or a 500 for a failing model) and the
server alive after, and the page in a real headless Chromium (skipped where none is installed).

FGSBIR_DEMO_CHECKPOINT (with FGSBIR_DATA, the folder holding its dataset) makes the browser test use
that model and its test gallery; FGSBIR_SCREENSHOT names where its screenshot goes."""
import http.client
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from test_train import TINY

import demo
import evaluate
import experiment
import main

# Two strokes in the 256 frame: an L and a bar.
STROKES = [[[40, 40], [40, 200], [200, 200]], [[60, 120], [120, 120], [180, 121]]]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    data, out = tmp_path_factory.mktemp('data'), tmp_path_factory.mktemp('runs')
    main.main(['--data_root', str(data), *TINY, '--output_dir', str(out), '--run_name', 'r', '--max_steps', '2',
               '--first_stage_dim', '8'])
    return data, out / 'r' / 'last.pth'


def serve(engine):
    server = demo.make_server(engine, '127.0.0.1', 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def request(server, method, path, body=None, headers=None):
    """(status, decoded JSON or raw bytes) of one request to the server."""
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    raw = r.read()
    conn.close()
    return r.status, (json.loads(raw) if r.getheader('Content-Type') == 'application/json' else raw)


@pytest.fixture(scope='module')
def folder_server(trained, tmp_path_factory):
    """A server on a photo folder whose index search.py built; yields (server, engine, gallery, ckpt)."""
    data, ckpt = trained
    gallery = tmp_path_factory.mktemp('gallery')
    for p in sorted((data / 'Synthetic' / 'photo').glob('*.png')):
        shutil.copy(p, gallery / p.name)
    query = gallery.parent / 'strokes.npy'
    np.save(query, np.array([[x, y, float(j == len(s) - 1)] for s in STROKES for j, (x, y) in enumerate(s)]))
    evaluate.main(['--checkpoint', str(ckpt), '--query', str(query), '--gallery', str(gallery), '--topk', '3'])
    model, args, _, path = experiment.load_model(ckpt, {}, 'cpu')
    engine = demo.SearchEngine(model, args, path, str(gallery), 'cpu', topk=3)
    server = serve(engine)
    yield server, engine, gallery, ckpt, query
    server.shutdown()


def test_search_endpoint_ranks_as_search_py(folder_server):
    server, engine, gallery, ckpt, query = folder_server
    n = len(engine.names)
    expected = evaluate.main(['--checkpoint', str(ckpt), '--query', str(query), '--gallery', str(gallery),
                              '--topk', str(n)])
    status, answer = request(server, 'POST', '/search', {'strokes': STROKES, 'topk': n})
    assert status == 200 and answer['strokes'] == 2
    assert [r['photo'] for r in answer['results']] == [name for name, _ in expected]
    assert [r['distance'] for r in answer['results']] == pytest.approx([d for _, d in expected], rel=1e-5, abs=1e-6)
    assert [r['rank'] for r in answer['results']] == list(range(1, n + 1))
    status, top2 = request(server, 'POST', '/search', {'strokes': STROKES, 'topk': 2})
    assert top2['results'] == answer['results'][:2]
    target = answer['results'][1]['photo']
    status, with_target = request(server, 'POST', '/search', {'strokes': STROKES, 'topk': 1, 'target': target})
    assert with_target['target_rank'] == 2
    assert engine.requests[-3:] == [2, 2, 2]
    status, thumb = request(server, 'GET', '/photo/' + answer['results'][0]['photo'])
    assert status == 200 and thumb[:2] == b'\xff\xd8'          # a JPEG
    status, page = request(server, 'GET', '/')
    assert status == 200 and b'Load a test sketch' in page and b'http' not in page     # nothing from elsewhere


BAD = [   # (what, method, path, body, headers, status, words of the reason)
    ('malformed JSON', 'POST', '/search', '{"strokes": [[[1, 2]', None, 400, 'malformed JSON'),
    ('not an object', 'POST', '/search', '[1, 2]', None, 400, 'JSON object'),
    ('no strokes key', 'POST', '/search', {'topk': 2}, None, 400, 'no strokes'),
    ('empty strokes', 'POST', '/search', {'strokes': []}, None, 400, 'no strokes'),
    ('empty stroke', 'POST', '/search', {'strokes': [[]]}, None, 400, 'stroke 0'),
    ('NaN', 'POST', '/search', '{"strokes": [[[1, 2], [NaN, 3]]]}', None, 400, 'non-finite'),
    ('Infinity', 'POST', '/search', '{"strokes": [[[1, 2], [Infinity, 3]]]}', None, 400, 'non-finite'),
    ('1e999', 'POST', '/search', '{"strokes": [[[1, 2], [1e999, 3]]]}', None, 400, 'non-finite'),
    ('an integer of 400 digits', 'POST', '/search', '{"strokes": [[[1, 2], [1' + '0' * 400 + ', 3]]]}', None, 400,
     'non-finite'),
    ('JSON nested beyond the parser', 'POST', '/search', '[' * 200000 + ']' * 200000, None, 400, 'malformed JSON'),
    ('negative coordinate', 'POST', '/search', {'strokes': [[[1, 2], [-5, 3]]]}, None, 400, 'outside'),
    ('coordinate over 256', 'POST', '/search', {'strokes': [[[1, 2], [30, 300]]]}, None, 400, 'outside'),
    ('a string coordinate', 'POST', '/search', {'strokes': [[[1, 2], ['3', 3]]]}, None, 400, 'expected a number'),
    ('one point', 'POST', '/search', {'strokes': [[[1, 2]]]}, None, 400, 'one point'),
    ('bad topk', 'POST', '/search', {'strokes': STROKES, 'topk': 0}, None, 400, 'topk'),
    ('topk over the gallery', 'POST', '/search', {'strokes': STROKES, 'topk': 10 ** 6}, None, 400, 'topk'),
    ('too many points', 'POST', '/search', {'strokes': [[[1, 2]] * (demo.MAX_POINTS + 1)]}, None, 413,
     'too many points'),
    ('body over the limit', 'POST', '/search', b' ' * (demo.MAX_BODY + 1), None, 413, 'over'),
    ('a Content-Length far over the limit', 'POST', '/search', b'{}', {'Content-Length': str(10 ** 9)}, 413, 'over'),
    ('unknown POST path', 'POST', '/other', {'strokes': STROKES}, None, 404, 'unknown path'),
    ('unknown GET path', 'GET', '/nope', None, None, 404, 'unknown path'),
    ('.. in a photo path', 'GET', '/photo/../demo.py', None, None, 400, "'..'"),
    ('encoded ..', 'GET', '/photo/..%2F..%2Fetc%2Fpasswd', None, None, 400, "'..'"),
    ('a file of the folder that is not a photo', 'GET', '/photo/.fgsbir_gallery_index.pt', None, None, 404,
     'no photo'),
    ('no such sketch', 'GET', '/sketch/7', None, None, 404, 'no test sketch'),
]


@pytest.mark.parametrize('what,method,path,body,headers,status,words', BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_a_4xx_with_a_reason_and_the_server_lives_on(folder_server, what, method, path, body,
                                                                      headers, status, words):
    server = folder_server[0]
    got, answer = request(server, method, path, body, headers)
    assert got == status and words in answer['error'] and '\n' not in answer['error']
    assert request(server, 'POST', '/search', {'strokes': STROKES, 'topk': 1})[0] == 200


def test_a_failing_model_gives_a_500_and_the_server_lives_on(folder_server, monkeypatch):
    server, engine = folder_server[:2]

    def broken(parts):
        raise RuntimeError('out of memory\nand a second line')
    monkeypatch.setattr(engine.model, 'encode', broken)
    status, answer = request(server, 'POST', '/search', {'strokes': STROKES})
    assert status == 500 and answer['error'] == 'model failed: RuntimeError: out of memory'
    monkeypatch.undo()
    assert request(server, 'POST', '/search', {'strokes': STROKES})[0] == 200


def test_help_says_how_to_expose_the_page(capsys):
    with pytest.raises(SystemExit):
        demo.main(['--help'])
    text = ' '.join(capsys.readouterr().out.split())
    assert '127.0.0.1' in text and '--host 0.0.0.0 EXPOSES the page to the network' in text


# ----------------------------------------------------------------------------- a real browser
def browser():
    """A headless Chromium driven by selenium, or None with the reason it is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None, 'selenium is not installed (pip install -r requirements-dev.txt)'
    binary = shutil.which('chromium') or shutil.which('chromium-browser')
    driver = shutil.which('chromedriver')
    if not binary or not driver:
        return None, 'no chromium / chromedriver (apt-get install chromium chromium-driver)'
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
                 '--window-size=1400,1000'):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=opts), None


@pytest.fixture(scope='module')
def page_server(trained):
    """The demo server on FGSBIR_DEMO_CHECKPOINT's test gallery, or on the tiny model's."""
    data, ckpt = trained
    real = os.environ.get('FGSBIR_DEMO_CHECKPOINT')
    overrides = {'data_root': os.environ.get('FGSBIR_DATA', str(data))} if real else {'data_root': str(data)}
    model, args, _, path = experiment.load_model(real or ckpt, overrides, 'cpu')
    engine = demo.SearchEngine(model, args, path, None, 'cpu', topk=5, replay=demo.replay_records(args))
    server = serve(engine)
    yield server, engine
    server.shutdown()


def test_a_replayed_test_sketch_gets_the_true_photos_rank_of_the_evaluation(page_server):
    server, engine = page_server
    if os.environ.get('FGSBIR_DEMO_CHECKPOINT'):
        pytest.skip('checked on the tiny model')
    from dataset import build_datasets
    import retrieval
    _, test = build_datasets(experiment.data_config(engine.args))
    _, _, _, ranks = retrieval.evaluate(engine.model, test, 'cpu', retrieval.EvalConfig(rerank=engine.args.rerank),
                                       progress=False)
    status, listed = request(server, 'GET', '/sketches')
    assert status == 200 and [s['key'] for s in listed['sketches']] == test.query_names
    for i in (0, len(test.query_names) - 1):
        status, sk = request(server, 'GET', f'/sketch/{i}')
        assert sk['key'] == test.query_names[i] and sk['photo'] == test.gallery_names[test.targets[i]]
        body = {'strokes': sk['strokes'], 'topk': 1, 'target': sk['photo']}
        status, answer = request(server, 'POST', '/search', body)
        assert status == 200 and answer['target_rank'] == int(ranks[i])


def test_the_page_in_a_real_browser(page_server, tmp_path):
    driver, why = browser()
    if driver is None:
        pytest.skip(why)
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    server, engine = page_server
    k = min(5, len(engine.names))
    try:
        driver.get(f'http://127.0.0.1:{server.server_address[1]}/')
        topk = driver.find_element(By.ID, 'topk')
        topk.clear()
        topk.send_keys(str(k))
        pad = driver.find_element(By.ID, 'pad')     # 384 x 384 CSS pixels, its centre is (0, 0) here
        before = len(engine.requests)
        for n, path in enumerate((((-120, -120), (0, 150), (150, 0), (0, -60)), ((-90, 20), (90, 0), (90, 5)))):
            chain = ActionChains(driver).move_to_element_with_offset(pad, *path[0]).click_and_hold()
            for step in path[1:]:
                chain = chain.move_by_offset(*step)
            chain.release().perform()
            WebDriverWait(driver, 60).until(
                lambda d: d.find_element(By.ID, 'status').get_attribute('data-strokes') == str(n + 1))
        WebDriverWait(driver, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '#results .thumb')) == k)
        assert driver.find_element(By.ID, 'status').get_attribute('data-strokes') == '2'
        assert engine.requests[before:] == [1, 2]       # the server got one stroke, then the two
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(
            'return [...document.querySelectorAll("#results img")].every(i => i.complete && i.naturalWidth > 0)'))
        shot = Path(os.environ.get('FGSBIR_SCREENSHOT', tmp_path / 'demo.png'))
        shot.parent.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 1000
    finally:
        driver.quit()
