"""The copies minidiff keeps on purpose: diffusers' public signatures, each marked `# Copied from diffusers.X`
(as diffusers marks its own copies) and held equal to diffusers' here, so a drop-in swap keeps working and
the repeated keyword lists stay the deliberate copies they are."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

import minidiff

diffusers = pytest.importorskip("diffusers")
MARK = re.compile(r"#\s*Copied from (diffusers\.[\w.]+)")
ROOT = Path(minidiff.__file__).parent


def _marked() -> list[tuple[str, object, str]]:
    """(where, our function, diffusers' dotted name) for each mark: the def the mark stands above."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        module = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        lines = text.splitlines()
        for cls in (n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.ClassDef)):
            for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
                above = (
                    min([fn.lineno, *(d.lineno for d in fn.decorator_list)]) - 1
                )  # the comment block above
                while above >= 1 and lines[above - 1].strip().startswith("#"):
                    if m := MARK.search(lines[above - 1]):
                        ours = getattr(getattr(importlib.import_module(module), cls.name), fn.name)
                        found.append((f"{path.name}:{above}", ours, m.group(1)))
                    above -= 1
    return found


def _diffusers_object(dotted: str):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def _parameters(fn) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def test_every_marked_copy_has_diffusers_signature():
    # diffusers' parameters, in its order, kinds and defaults; a few calls add minidiff's own after them
    # (DDPMPipeline's eta and progress), which the mark says
    for where, ours, dotted in _marked():
        theirs = _parameters(_diffusers_object(dotted))
        assert _parameters(ours)[: len(theirs)] == theirs, (where, dotted)
        if dotted.endswith(".__init__"):
            assert _parameters(ours) == theirs, (where, dotted)


def test_every_scheduler_constructor_and_pipeline_call_is_marked():
    # the marks cannot silently go: each of the six schedulers' keyword lists and both pipelines' calls
    names = {dotted.rsplit(".", 2)[-2] + "." + dotted.rsplit(".", 1)[-1] for _, _, dotted in _marked()}
    for cls in ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
                "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"):  # fmt: skip
        assert f"{cls}.__init__" in names, cls
    assert {"DDPMPipeline.__call__", "DDIMPipeline.__call__"} <= names


def test_the_check_can_fail(monkeypatch):
    # a signature that drifts from diffusers' is caught
    from minidiff.schedulers.scheduling_ddim import DDIMScheduler

    theirs = _diffusers_object("diffusers.schedulers.scheduling_ddim.DDIMScheduler.__init__")

    def drifted(self, num_train_timesteps: int = 999):
        pass

    assert _parameters(drifted) != _parameters(theirs)
    assert _parameters(DDIMScheduler.__init__) == _parameters(theirs)
