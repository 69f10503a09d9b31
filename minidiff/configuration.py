"""A small configuration base that reads and writes diffusers' JSON config files.

diffusers stores every scheduler and model as its constructor keywords in a JSON file
(`scheduler_config.json`, `config.json`) plus two bookkeeping keys, `_class_name` and
`_diffusers_version`. `ConfigMixin` does the same, so either library loads the other's files:

    scheduler.save_config("out/scheduler")          # writes out/scheduler/scheduler_config.json
    DDPMScheduler.from_pretrained("out/scheduler")  # works in minidiff and in diffusers

A class records its keywords by calling `self.register_to_config(...)` at the top of `__init__`.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from pathlib import Path
from typing import Any

# The diffusers release whose file formats minidiff writes (and whose numbers the tests compare with).
DIFFUSERS_FORMAT_VERSION = "0.42.1"


class FrozenConfig(dict):
    """A read-only dict whose keys are also attributes: `config.num_train_timesteps`."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}; keys: {sorted(self)}") from None

    def _readonly(self, *args, **kwargs):
        raise TypeError("a config is read-only; build a new object with from_config(config, key=value)")

    __setitem__ = __delitem__ = __setattr__ = update = pop = popitem = setdefault = clear = _readonly


def _to_json_value(value: Any) -> Any:
    """Tensors, arrays and tuples become lists, paths become strings, as diffusers writes them."""
    if hasattr(value, "tolist"):  # torch.Tensor, numpy.ndarray
        return value.tolist()
    if isinstance(value, tuple | list):
        return [_to_json_value(v) for v in value]
    if isinstance(value, os.PathLike):
        return Path(value).as_posix()
    return value


def resolve_file(path_or_repo_id: str | os.PathLike, filename: str, subfolder: str | None = None) -> Path:
    """Find `filename` in a local folder or, failing that, in a Hugging Face hub repository.

    A hub download goes through `huggingface_hub` (its cache makes later calls work offline). Without
    network the error says what was tried instead of hanging or printing a deep traceback.
    """
    folder = Path(path_or_repo_id)
    local = folder / subfolder / filename if subfolder else folder / filename
    if local.is_file():
        return local
    if folder.is_dir() or str(path_or_repo_id).startswith((".", "/", "~")) or str(path_or_repo_id).count("/") > 1:
        raise FileNotFoundError(f"{local} does not exist (looked for {filename!r} in {str(path_or_repo_id)!r})")
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as err:  # pragma: no cover - huggingface_hub is a dependency
        raise FileNotFoundError(f"{path_or_repo_id!r} is not a local folder and huggingface_hub is missing") from err
    try:
        return Path(hf_hub_download(str(path_or_repo_id), filename, subfolder=subfolder, etag_timeout=10))
    except LocalEntryNotFoundError as err:
        raise OSError(
            f"{path_or_repo_id!r} is not a local folder, and {filename!r} could not be downloaded from the "
            "Hugging Face hub nor found in its cache (no network?). Pass a local folder, or download it "
            "once while online."
        ) from err
    except Exception as err:  # repository missing, gated, file missing...
        raise OSError(f"could not get {filename!r} of {path_or_repo_id!r} from the hub: {err}") from err


class ConfigMixin:
    """Stores constructor keywords as `self.config` and saves / loads them as diffusers-style JSON."""

    config_name: str = "config.json"

    def register_to_config(self, **kwargs: Any) -> None:
        """Record the constructor keywords; called once, at the top of `__init__`."""
        object.__setattr__(self, "_internal_dict", FrozenConfig(kwargs))

    @property
    def config(self) -> FrozenConfig:
        return self._internal_dict

    # ---- reading -------------------------------------------------------------------------------
    @classmethod
    def init_keywords(cls) -> list[str]:
        """The keywords `__init__` accepts, in order."""
        params = inspect.signature(cls.__init__).parameters
        return [name for name, p in params.items() if name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD]

    @classmethod
    def extract_init_dict(cls, config: dict[str, Any], **overrides: Any) -> dict[str, Any]:
        """Split a config dict into this class's keywords; unknown public keys are warned about once."""
        config = {**dict(config), **overrides}
        accepted = set(cls.init_keywords())
        unknown = sorted(k for k in config if k not in accepted and not k.startswith("_"))
        if unknown:
            warnings.warn(
                f"The config attributes {unknown} were passed to {cls.__name__}, but are not expected "
                "and will be ignored.",
                stacklevel=3,
            )
        return {k: v for k, v in config.items() if k in accepted}

    @classmethod
    def from_config(cls, config: dict[str, Any] | None = None, **overrides: Any):
        """Build an object from a config dict (or another object's `.config`), with keyword overrides."""
        if config is not None and not isinstance(config, dict):
            if hasattr(config, "config"):  # an object was passed, as diffusers allows
                config = config.config
            else:
                raise TypeError(f"from_config expects a dict or a FrozenConfig, got {type(config).__name__}")
        return cls(**cls.extract_init_dict(config or {}, **overrides))

    @classmethod
    def load_config(cls, pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None) -> dict:
        """Read the JSON config of a local folder (or hub repository) into a plain dict."""
        path = resolve_file(pretrained_model_name_or_path, cls.config_name, subfolder)
        try:
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
        if not isinstance(config, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(config).__name__}")
        return config

    # ---- writing -------------------------------------------------------------------------------
    def to_json_string(self) -> str:
        config = {k: _to_json_value(v) for k, v in self.config.items()}
        config["_class_name"] = type(self).__name__
        config["_diffusers_version"] = DIFFUSERS_FORMAT_VERSION
        return json.dumps(config, indent=2, sort_keys=True) + "\n"

    def save_config(self, save_directory: str | os.PathLike) -> Path:
        """Write `<save_directory>/<config_name>` atomically (a crash never leaves half a file)."""
        save_directory = Path(save_directory)
        if save_directory.is_file():
            raise ValueError(f"save_directory {str(save_directory)!r} is a file; expected a folder")
        save_directory.mkdir(parents=True, exist_ok=True)
        path = save_directory / self.config_name
        atomic_write_text(path, self.to_json_string())
        return path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write through a temporary file, fsync, then rename over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class SchedulerMixin(ConfigMixin):
    """Loading and saving for schedulers: `scheduler_config.json`, as in diffusers."""

    config_name = "scheduler_config.json"

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None, **overrides: Any
    ):
        """Load from a folder holding `scheduler_config.json` (or a hub id), e.g. a pipeline's `scheduler/`."""
        return cls.from_config(cls.load_config(pretrained_model_name_or_path, subfolder), **overrides)

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        self.save_config(save_directory)
