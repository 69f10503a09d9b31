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
        "for m in ['cli', 'data', 'viz', 'parity', 'fast', 'checkpoint', 'distributed', 'quality']:\n"
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
