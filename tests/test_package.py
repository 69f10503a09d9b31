"""The package as a user meets it: public names, the command, and what importing it pulls in."""

import subprocess
import sys
from pathlib import Path

import pytest

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


# ---- the layout: imports run core <- quality <- training <- cli, never back up ----------------------------
# A module's layer is that of its longest listed prefix; everything else is the core (the fast wing's
# sampler and UNet copy included: the fast training engine lives with the other one, in training/).
LAYERS = {
    "minidiff.quality": 1,
    "minidiff.training": 2,
    "minidiff.cli": 3,
    "minidiff.__main__": 3,
}
LAYER_NAMES = ("core", "quality", "training", "cli")


def _layer(module: str) -> int:
    prefixes = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    return LAYERS[max(prefixes, key=len)] if prefixes else 0


def _parse_package(root=None) -> dict[str, tuple[object, bool]]:
    """minidiff module name -> (its syntax tree, whether it is a package __init__)."""
    import ast
    from pathlib import Path

    root = Path(root or Path(minidiff.__file__).parent)
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        modules[name] = (ast.parse(path.read_text(encoding="utf-8")), is_package)
    return modules


def _facade_exports(modules) -> dict[str, dict[str, str]]:
    """package -> {public name: the module its __init__ takes it from}: the lazy `_EXPORTS` table (values
    relative to the package or absolute) and the module-level `from minidiff.x import name` lines."""
    import ast

    exports = {}
    for name, (tree, is_package) in modules.items():
        if not is_package:
            continue
        table = {}
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                getattr(t, "id", None) == "_EXPORTS" for t in node.targets
            ):
                for key, value in zip(node.value.keys, node.value.values):
                    target = value.value
                    table[key.value] = target if target.startswith("minidiff") else f"{name}.{target}"
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("minidiff"):
                table.update({alias.asname or alias.name: node.module for alias in node.names})
        exports[name] = table
    return exports


def _resolve(package: str, name: str | None, modules, exports, depth: int = 0) -> set[str]:
    """The modules `from package import name` (name None: `import package`) reaches, through facades to
    the module that defines each name."""
    if name is None:  # a bare import of a facade reaches whatever its table hands out
        reached = {package}
        for public in exports.get(package, {}) if depth == 0 else ():
            reached |= _resolve(package, public, modules, exports, depth + 1)
        return reached
    if f"{package}.{name}" in modules:
        return {f"{package}.{name}"}
    target = exports.get(package, {}).get(name)
    if target is None or depth > 10:
        return {package}
    return _resolve(target, name, modules, exports, depth + 1)


def _import_graph(root=None) -> dict[str, dict[str, set[str]]]:
    """minidiff module -> {"top": modules imported at module level, "all": modules imported anywhere (inside
    functions too), each resolved through the package facades; "raw": every module name as written}.
    `if TYPE_CHECKING:` blocks never run and are left out."""
    import ast

    modules = _parse_package(root)
    exports = _facade_exports(modules)
    graph = {}
    for name, (tree, is_package) in modules.items():
        skipped = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
                skipped |= {id(n) for n in ast.walk(node)}
        package = name if is_package else name.rpartition(".")[0]
        top, everywhere, raw = set(), set(), set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                raw |= {a.name for a in node.names}
                found = set().union(*(_resolve(a.name, None, modules, exports) for a in node.names))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # a relative import: from its package
                    base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base])
                raw.add(base)
                found = set().union(
                    *(_resolve(base.strip("."), a.name, modules, exports) for a in node.names)
                )
            else:
                continue
            found = {m for m in found if m in modules and m != name}
            everywhere |= found
            if node in tree.body:
                top |= found
        graph[name] = {"top": top, "all": everywhere, "raw": raw}
    return graph


def _circle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle of the graph (depth-first search for a back edge), or None."""
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node, [node])):
            return found
    return None


def layout_problems(root=None) -> list[str]:
    """What breaks the layout: an import up the layers (lazy ones included, facades resolved), a module
    importing the package it sits in, reference/, benchmarks/ or scripts/ imported, an import circle."""
    problems = []
    graph = _import_graph(root)
    for name, imports in graph.items():
        for target in sorted(imports["all"]):
            if _layer(target) > _layer(name):
                problems.append(
                    f"{name} ({LAYER_NAMES[_layer(name)]}) imports {target} ({LAYER_NAMES[_layer(target)]})"
                )
        parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        if imports["top"] & parents:  # it would run back up the tree, into a half-imported package
            problems.append(
                f"{name} imports its own package at module level: {sorted(imports['top'] & parents)}"
            )
        outside = {m for m in imports["raw"] if m.split(".")[0] in ("reference", "benchmarks", "scripts")}
        if (
            outside
        ):  # the package stands alone: reference/, benchmarks/ and scripts/ run from the checkout only
            problems.append(f"{name} imports {sorted(outside)}")
    circle = _circle({name: imports["all"] for name, imports in graph.items()})
    if circle:
        problems.append(f"import circle: {' -> '.join(circle)}")
    return problems


def test_layout_imports_run_core_quality_training_cli_without_circles():
    assert layout_problems() == []


def test_layout_check_resolves_facades_and_lazy_imports(tmp_path):
    # a copy of the package with one lazy import up the layers, written through the training facade:
    # the check must name it (and the circle it closes), or it could not fail
    import shutil

    copy = tmp_path / "minidiff"
    shutil.copytree(
        Path(minidiff.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__", "*.safetensors")
    )
    metrics = copy / "quality" / "metrics.py"
    metrics.write_text(
        metrics.read_text(encoding="utf-8") + "\n\ndef _up():\n    from minidiff.training import train\n",
        encoding="utf-8",
    )
    problems = layout_problems(copy)
    assert "minidiff.quality.metrics (quality) imports minidiff.training.loop (training)" in problems
    assert any(p.startswith("import circle:") for p in problems)


def test_sampler_tables_name_core_modules():
    # the class tables import by name (importlib): their modules must be core modules too
    from minidiff.pipelines.pipeline_utils import PIPELINE_CLASSES
    from minidiff.schedulers.samplers import SAMPLERS

    for module in [s.module for s in SAMPLERS.values()] + list(PIPELINE_CLASSES.values()):
        assert module.startswith("minidiff.") and _layer(module) == 0, module


def test_training_package_names_resolve_and_train_help_stays_light():
    import minidiff.training
    from minidiff.schedulers.scheduling_utils import PREDICTION_TYPES
    from minidiff.training.config import PREDICTION_TYPES as TRAINING_PREDICTION_TYPES

    assert set(minidiff.training.__all__) == set(minidiff.training._EXPORTS)
    for name in minidiff.training.__all__:
        assert getattr(minidiff.training, name) is not None, name
    assert TRAINING_PREDICTION_TYPES == PREDICTION_TYPES  # the copy config.py keeps to stay torch-free
    code = "import sys\nfrom minidiff.cli import build_parser\nbuild_parser(['train'])\nprint('torch' in sys.modules)"
    assert _run_python(code) == "False"


def test_package_docstrings_map_every_module_and_preset():
    # each package's docstring names every module and subpackage it holds (the maps `help()` shows)
    import importlib

    from minidiff.training.config import PRESETS

    for name in ("minidiff", "minidiff.schedulers", "minidiff.models", "minidiff.pipelines",
                 "minidiff.training", "minidiff.quality", "minidiff.fast"):  # fmt: skip
        package = importlib.import_module(name)
        folder, doc = Path(package.__file__).parent, package.__doc__
        for path in folder.iterdir():
            if path.suffix == ".py" and path.name != "__init__.py":
                assert path.name in doc, (name, path.name)
            elif (path / "__init__.py").is_file():
                assert f"{path.name}/" in doc, (name, path.name)
    training_doc = importlib.import_module("minidiff.training").__doc__
    assert all(f'"{preset}"' in training_doc for preset in PRESETS), list(PRESETS)


def test_the_version_has_one_source_and_is_the_changelogs_newest():
    # pyproject reads minidiff/_version.py; CHANGELOG.md's newest "## x.y.z" heading names the same version
    import re

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    root = Path(__file__).parents[1]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in pyproject["project"] and pyproject["project"]["dynamic"] == ["version"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "minidiff._version.__version__"}
    newest = re.search(
        r"^## (\d+\.\d+\.\d+)", (root / "CHANGELOG.md").read_text(encoding="utf-8"), re.MULTILINE
    )
    assert newest is not None and minidiff.__version__ == newest.group(1)


def test_functions_stay_short_and_the_command_thin():
    # no function over 80 lines but the two UNets' constructors (diffusers' keyword lists, ~27 lines of
    # signature, then the blocks in diffusers' order); cli.py <= 450
    import ast

    root = Path(minidiff.__file__).parent
    long = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                constructor = path.name in ("unet_2d.py", "unet_2d_condition.py") and node.name == "__init__"
                if lines > 80 and not constructor:
                    long.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []
    assert len((root / "cli.py").read_text(encoding="utf-8").splitlines()) <= 450
