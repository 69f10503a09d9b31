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
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Literal, Union

from minidiff.files import atomic_write_text, resolve_file

# The diffusers release whose file formats minidiff writes (and whose numbers the tests compare with).
DIFFUSERS_FORMAT_VERSION = "0.42.1"


# (class name, unknown keys) pairs already warned about: each is reported once per process.
_WARNED_UNKNOWN: set[tuple[str, tuple[str, ...]]] = set()


def _matches(value: Any, hint: Any) -> bool:
    """Does a JSON-loaded value fit a type hint? Array types accept their own objects and lists."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, tuple | list):
            return False
        if not args:
            return True
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
        return all(_matches(v, args[0]) for v in value)
    if isinstance(hint, type):  # an array type (np.ndarray, torch.Tensor): itself, or its JSON form, a list
        return isinstance(value, hint | list | tuple)
    return True


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


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

    def __reduce__(self):  # copy.deepcopy / pickle rebuild it whole instead of item by item
        return (type(self), (dict(self),))


def _to_json_value(value: Any) -> Any:
    """Tensors, arrays and tuples become lists, paths become strings, as diffusers writes them."""
    if hasattr(value, "tolist"):  # torch.Tensor, numpy.ndarray
        return value.tolist()
    if isinstance(value, tuple | list):
        return [_to_json_value(v) for v in value]
    if isinstance(value, os.PathLike):
        return Path(value).as_posix()
    return value


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
        unknown = tuple(sorted(k for k in config if k not in accepted and not k.startswith("_")))
        if unknown and (cls.__name__, unknown) not in _WARNED_UNKNOWN:
            _WARNED_UNKNOWN.add((cls.__name__, unknown))
            warnings.warn(
                f"The config attributes {list(unknown)} were passed to {cls.__name__}, but are not expected "
                "and will be ignored.",
                stacklevel=3,
            )
        init_dict = {k: v for k, v in config.items() if k in accepted}
        # Wrong types are rejected here with the key named; wrong values by the constructor itself.
        hints = typing.get_type_hints(cls.__init__)
        for key, value in init_dict.items():
            if key in hints and not _matches(value, hints[key]):
                raise ValueError(
                    f"{cls.__name__} config key {key!r} has value {value!r} of type {type(value).__name__}; "
                    f"expected {_describe(hints[key])}"
                )
        return init_dict

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
    def load_config(
        cls, pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None
    ) -> dict:
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
