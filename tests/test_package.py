"""The package as a user meets it: public names, the command, and what importing it pulls in."""

import subprocess
import sys

import minidiff


def _run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_every_public_name_resolves():
    for name in minidiff.__all__:
        assert getattr(minidiff, name) is not None, name
    assert set(minidiff.__all__) == set(minidiff._EXPORTS) | {"__version__"}


def test_unknown_attribute_is_an_attribute_error():
    try:
        minidiff.NotAThing  # noqa: B018
    except AttributeError as err:
        assert "NotAThing" in str(err)
    else:
        raise AssertionError("expected AttributeError")


def test_import_is_light_and_minidiff_never_imports_diffusers_or_datasets():
    # `import minidiff` loads nothing heavy; using every public name and module still never loads
    # diffusers (only reference/ and the tests may) nor `datasets` (imported only where data is loaded).
    code = (
        "import sys, importlib, minidiff\n"
        "light = 'torch' not in sys.modules\n"
        "for n in minidiff.__all__: getattr(minidiff, n)\n"
        "for m in ['cli', 'data', 'viz', 'parity', 'fast', 'training', 'training.checkpoint', 'quality']:\n"
        "    importlib.import_module('minidiff.' + m)\n"
        "print(light, 'diffusers' in sys.modules, 'datasets' in sys.modules)"
    )
    assert _run_python(code) == "True False False"


def test_command_version_and_help():
    version = subprocess.run([sys.executable, "-m", "minidiff", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip() == f"minidiff {minidiff.__version__}"
    helptext = subprocess.run([sys.executable, "-m", "minidiff", "--help"], capture_output=True, text=True)
    assert helptext.returncode == 0
    for command in ("train", "demo", "sample", "noise", "parity", "eval"):
        assert command in helptext.stdout


def _module_imports() -> dict[str, tuple[set[str], set[str]]]:
    """minidiff module -> (modules it imports at module level, modules it imports anywhere)."""
    import ast
    from pathlib import Path

    root = Path(minidiff.__file__).parent
    graph = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top, anywhere = set(), set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found = {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found = {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
            else:
                continue
            anywhere |= found
            if node in tree.body:
                top |= found
        graph[name] = (top, anywhere)
    return graph


def test_layout_has_no_import_circle_and_nothing_imports_upwards():
    graph = _module_imports()
    modules = set(graph)
    for name, (top, anywhere) in graph.items():
        # the package stands alone: reference/ and benchmarks/ run from the checkout only
        assert not {m for m in anywhere if m.split(".")[0] in ("reference", "benchmarks")}, name
        # no module imports the package it sits in (or one further up): that would run back up the tree
        parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        assert not (top & parents) or name.endswith("__init__"), (name, top & parents)
    # module-level imports between minidiff modules form no circle (depth-first search for a back edge)
    edges = {n: {m for m in top if m in modules and m != n} for n, (top, _) in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in edges[node]:
            assert state.get(nxt) != 1, f"import circle: {' -> '.join([*path, nxt])}"
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in edges:
        if node not in state:
            visit(node, [node])


def test_training_package_names_resolve_and_train_help_stays_light():
    import minidiff.training
    from minidiff.scheduling_utils import PREDICTION_TYPES
    from minidiff.training.config import PREDICTION_TYPES as TRAINING_PREDICTION_TYPES

    assert set(minidiff.training.__all__) == set(minidiff.training._EXPORTS)
    for name in minidiff.training.__all__:
        assert getattr(minidiff.training, name) is not None, name
    assert TRAINING_PREDICTION_TYPES == PREDICTION_TYPES  # the copy config.py keeps to stay torch-free
    code = "import sys\nfrom minidiff.cli import build_parser\nbuild_parser(['train'])\nprint('torch' in sys.modules)"
    assert _run_python(code) == "False"
