"""The import graph: every module imports on its own, no module reaches itself through its
imports (read from the source, imports inside functions included), and no library module imports
an entry point (a program run from the command line) or a test. Library modules hold no `main`."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Programs: run as `python FILE` or `python -m synthetic`; everything else is a library module.
ENTRY = {'main', 'evaluate', 'tables', 'prepare', 'demo', 'synthetic.__main__'}


def modules():
    """{module name: path} of the repository's code (tests and benchmarks included)."""
    files = [*ROOT.glob('*.py'), *ROOT.glob('synthetic/*.py'), *ROOT.glob('benchmarks/*.py'), *ROOT.glob('tests/*.py')]
    names = {}
    for path in files:
        parts = path.relative_to(ROOT).with_suffix('').parts
        names['synthetic' if parts == ('synthetic', '__init__') else '.'.join(parts)] = path
    return names


def is_entry(name):
    return name in ENTRY or name.startswith('benchmarks.')


def is_test(name):
    return name.startswith('tests.')


def imports(path, names):
    """The repository modules a file imports, anywhere in it (tests import each other by bare name)."""
    local = {n.split('.')[-1] if is_test(n) else n: n for n in names}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f'{node.module}.{a.name}' for a in node.names)   # from package import module
    return {local[m] for m in found if m in local}


def graph():
    names = modules()
    return {name: imports(path, names) - {name} for name, path in names.items()}


def cycle(g):
    """One import cycle of g as a list of names, or None."""
    state, stack = {}, []

    def visit(n):
        state[n] = 'open'
        stack.append(n)
        for m in sorted(g[n]):
            if state.get(m) == 'open':
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        state[n] = 'done'
        stack.pop()
        return None
    for n in sorted(g):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_the_graph_reads_real_imports():
    g = graph()
    assert {'options', 'methods', 'dataset'} <= g['experiment'] and 'options' in g['main']
    assert 'synthetic.cache' in g['synthetic'] and 'layouts' in g['synthetic.cache']
    assert cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a'] and cycle({'a': {'b'}, 'b': set()}) is None


def test_no_import_cycles():
    assert cycle(graph()) is None


def test_no_library_module_imports_an_entry_point_or_a_test():
    g = graph()
    bad = {n: sorted(m for m in deps if is_entry(m) or is_test(m))
           for n, deps in g.items() if not (is_entry(n) or is_test(n))}
    assert not {n: v for n, v in bad.items() if v}


def test_options_reads_registries_only():
    """options.py builds the command lines from the tables of the modules that own them, and
    nothing it imports imports it back (that is no_import_cycles); it builds no config of the data
    layer or the model (experiment.py does)."""
    g = graph()
    assert not g['options'] & {'dataset', 'experiment', 'checkpoint', 'train', 'retrieval', 'search'}


def test_library_modules_hold_no_main():
    for name, path in modules().items():
        if is_entry(name) or is_test(name):
            continue
        tree = ast.parse(path.read_text())
        defs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert 'main' not in defs and "__name__ == '__main__'" not in path.read_text(), name


def test_every_module_imports_on_its_own():
    """Each module in a fresh set of the repository's modules (torch and the like stay loaded, so
    this takes seconds): an import that only works after another module was imported first fails."""
    names = [n for n in modules() if not is_test(n) and n != 'synthetic.__main__']
    code = f'''
import importlib, sys
sys.path.insert(0, {str(ROOT)!r})
names = {names!r}
for name in names:
    for m in [m for m in sys.modules if m.split('.')[0] in {{n.split('.')[0] for n in names}}]:
        del sys.modules[m]
    importlib.import_module(name)
print('ok', len(names))
'''
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.startswith('ok'), out.stderr[-2000:]
