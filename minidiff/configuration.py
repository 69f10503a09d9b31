"""A small configuration base that reads and writes diffusers' JSON config files.

diffusers stores every scheduler and model as its constructor keywords in a JSON file
(`scheduler_config.json`, `config.json`) plus two bookkeeping keys, `_class_name` and
`_diffusers_version`. `ConfigMixin` does the same, so either library loads the other's files:

    scheduler.save_config("out/scheduler")          # writes out/scheduler/scheduler_config.json
    DDPMScheduler.from_pretrained("out/scheduler")  # works in minidiff and in diffusers

A class records its keywords by decorating `__init__` with `@register_to_config`, as in diffusers.
"""

from __future__ import annotations

import functools
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


# Bookkeeping keys that stay in memory only, as in diffusers.
_NEVER_WRITTEN = ("_use_default_values", "_ignore_files")

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
        """Refused: a config is read-only."""
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


def register_to_config(init):
    """Decorator for `__init__`, as diffusers' of the same name: records the call's keywords as `self.config`
    before `__init__` runs. Keywords the caller left at their defaults are listed under `_use_default_values`,
    so a config passed on to another class (`from_config`) lets that class use its own defaults for them."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def init_with_config(self, *args, **kwargs):
        # the arguments given, by name (a TypeError for an unknown keyword, as without the decorator)
        passed = signature.bind(self, *args, **kwargs).arguments
        config, defaulted = {}, []
        for name, parameter in list(signature.parameters.items())[1:]:
            config[name] = passed.get(name, parameter.default)
            if name not in passed:
                defaulted.append(name)
        if defaulted:
            config["_use_default_values"] = defaulted
        self.register_to_config(**config)
        init(self, *args, **kwargs)

    return init_with_config


def config_attribute(obj: Any, name: str, owner: str = "scheduler") -> Any:
    """`obj.<config key>` for a name that is no attribute: the value, with diffusers' FutureWarning.

    Args:
        obj: the object whose config holds the key.
        name: the attribute asked for.
        owner: the variable name the warning suggests (`scheduler.config.<name>`).
    """
    config = obj.__dict__.get("_internal_dict")  # not obj._internal_dict: no recursion while unpickling
    if config is None or name not in config:
        raise AttributeError(f"'{type(obj).__name__}' object has no attribute '{name}'")
    warnings.warn(
        f"Accessing config attribute `{name}` directly via '{type(obj).__name__}' object attribute is deprecated. "
        f"Please access '{name}' over '{type(obj).__name__}'s config object instead, e.g. "
        f"'{owner}.config.{name}'.",
        FutureWarning,
        stacklevel=3,
    )
    return config[name]


class ConfigMixin:
    """Stores constructor keywords as `self.config` and saves / loads them as diffusers-style JSON.

    Besides the keywords, a config may hold diffusers' bookkeeping keys: `_class_name` and
    `_diffusers_version` (in every file, and in the config once it was saved or loaded),
    `_use_default_values` (never written), and keys kept for a compatible class (DDPM's `variance_type`
    in a DDIM config, so that DDPM -> DDIM -> DDPM gives the DDPM config back, as in diffusers).
    """

    config_name: str = "config.json"
    has_compatibles = False  # SchedulerMixin: configs move between the schedulers named in `_compatibles`
    _compatibles: list[str] = []
    _deprecated_kwargs: list[str] = []  # diffusers' list of deprecated `__init__` keywords: minidiff has none

    def register_to_config(self, **kwargs: Any) -> None:
        """Add keys to the config (a new read-only dict; keys already there are replaced)."""
        previous = self.__dict__.get("_internal_dict", {})
        object.__setattr__(self, "_internal_dict", FrozenConfig({**previous, **kwargs}))

    @property
    def config(self) -> FrozenConfig:
        """The object's configuration: a read-only dict whose keys also read as attributes."""
        return self._internal_dict

    def __getattr__(self, name: str) -> Any:
        """Only called for names that are no attribute: config keys, as `scheduler.num_train_timesteps`."""
        return config_attribute(self, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    # ---- reading -------------------------------------------------------------------------------
    @classmethod
    def init_keywords(cls) -> list[str]:
        """The keywords `__init__` accepts, in order."""
        params = inspect.signature(cls.__init__).parameters
        return [name for name, p in params.items() if name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD]

    @classmethod
    def _get_compatibles(cls) -> list[type]:
        """This class and the minidiff schedulers named in `_compatibles` (found in minidiff/schedulers/samplers.py's
        table, not in the whole package)."""
        from minidiff.schedulers.samplers import scheduler_class_named

        names = [name for name in dict.fromkeys([cls.__name__, *cls._compatibles]) if name != cls.__name__]
        return [cls, *filter(None, map(scheduler_class_named, names))]

    @classmethod
    def _keys_set_aside(cls, writer_name: Any) -> set[str]:
        """Keys that are no keyword here but belong to a compatible class or to the class that wrote the
        config (its `_class_name`, when minidiff has that scheduler): these are kept without a warning."""
        from minidiff.schedulers.samplers import scheduler_class_named

        classes = cls._get_compatibles() if cls.has_compatibles else []
        writer = scheduler_class_named(writer_name) if isinstance(writer_name, str) else None
        if isinstance(writer, type) and issubclass(writer, ConfigMixin):
            classes.append(writer)
        return {key for c in classes for key in c.init_keywords()}

    @classmethod
    def extract_init_dict(
        cls, config: dict[str, Any], **overrides: Any
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Split a config as diffusers does: (keywords for `__init__`, unused keys, hidden keys to keep).

        `overrides` win over the config. Unknown public keys are warned about once; wrong types are
        refused with the key named.

        Args:
            config: a config dict (a saved config.json, or another class's config).
            **overrides: keys to replace.
        """
        # keys the writer left at their defaults are dropped: this class uses its own defaults for them
        defaulted = config.get("_use_default_values", [])
        config = {k: v for k, v in config.items() if k not in defaulted and k != "_use_default_values"}
        given = {**config, **overrides}
        init_dict = {k: given[k] for k in cls.init_keywords() if k in given}
        known = set(init_dict) | cls._keys_set_aside(config.get("_class_name"))
        unknown = tuple(sorted(k for k in given if k not in known and not k.startswith("_")))
        if unknown and (cls.__name__, unknown) not in _WARNED_UNKNOWN:
            _WARNED_UNKNOWN.add((cls.__name__, unknown))
            warnings.warn(
                f"The config attributes {list(unknown)} were passed to {cls.__name__}, but are not expected "
                "and will be ignored.",
                stacklevel=3,
            )
        hints = typing.get_type_hints(cls.__init__)
        for key, value in init_dict.items():
            if key in hints and not _matches(value, hints[key]):
                raise ValueError(
                    f"{cls.__name__} config key {key!r} has value {value!r} of type {type(value).__name__}; "
                    f"expected {_describe(hints[key])}"
                )
        unused = {k: v for k, v in given.items() if k not in init_dict}
        hidden = {k: v for k, v in config.items() if k not in init_dict}  # kept in the new object's config
        return init_dict, unused, hidden

    @classmethod
    def from_config(
        cls, config: dict[str, Any] | None = None, return_unused_kwargs: bool = False, **overrides: Any
    ):
        """Build an object from a config dict (or another object's `.config`), with keyword overrides.

        The config's other keys (a compatible class's, `_class_name`, ...) stay in the new object's config.

        Args:
            config: a dict, a `FrozenConfig`, or an object with a `.config`.
            return_unused_kwargs: also return the keys the class does not take, as `(obj, unused)`.
            **overrides: keyword arguments that replace config values.
        """
        if config is not None and not isinstance(config, dict):
            if hasattr(config, "config"):  # an object was passed, as diffusers allows
                config = config.config
            else:
                raise TypeError(f"from_config expects a dict or a FrozenConfig, got {type(config).__name__}")
        init_dict, unused, hidden = cls.extract_init_dict(dict(config or {}), **overrides)
        obj = cls(**init_dict)
        if "_class_name" in hidden:
            hidden["_class_name"] = cls.__name__
        obj.register_to_config(**hidden)
        return (obj, unused) if return_unused_kwargs else obj

    @classmethod
    def load_config(
        cls, pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None
    ) -> dict:
        """Read the JSON config of a local folder (or hub repository) into a plain dict.

        Args:
            pretrained_model_name_or_path: a local folder or a hub id.
            subfolder: the folder inside it that holds the config file (`"scheduler"`, `"unet"`).
        """
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
        """The config as diffusers writes it: sorted JSON with `_class_name` and `_diffusers_version`."""
        config = {k: _to_json_value(v) for k, v in self.config.items() if k not in _NEVER_WRITTEN}
        config["_class_name"] = type(self).__name__
        config["_diffusers_version"] = DIFFUSERS_FORMAT_VERSION
        return json.dumps(config, indent=2, sort_keys=True) + "\n"

    def _record_saved(self) -> None:
        """After a save the config names its class and format version, as one loaded from the file does
        (diffusers adds them while writing), so a saved object and its reloaded copy have equal configs."""
        self.register_to_config(_class_name=type(self).__name__, _diffusers_version=DIFFUSERS_FORMAT_VERSION)

    def save_config(self, save_directory: str | os.PathLike) -> Path:
        """Write `<save_directory>/<config_name>` atomically (a crash never leaves half a file).

        Args:
            save_directory: the folder, created if missing; a file there is refused.

        Returns:
            The path of the written config file.
        """
        save_directory = Path(save_directory)
        if save_directory.is_file():
            raise ValueError(f"save_directory {str(save_directory)!r} is a file; expected a folder")
        save_directory.mkdir(parents=True, exist_ok=True)
        path = save_directory / self.config_name
        atomic_write_text(path, self.to_json_string())
        self._record_saved()
        return path


class SchedulerMixin(ConfigMixin):
    """Loading and saving for schedulers: `scheduler_config.json`, as in diffusers."""

    config_name = "scheduler_config.json"
    has_compatibles = True

    @property
    def compatibles(self) -> list[type]:
        """The scheduler classes that can be built from this one's config (`DDIMScheduler.from_config(...)`)."""
        return self._get_compatibles()

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None, **overrides: Any
    ):
        """Load from a folder holding `scheduler_config.json` (or a hub id), e.g. a pipeline's `scheduler/`.

        Args:
            pretrained_model_name_or_path: a local folder or a hub id.
            subfolder: the folder inside it that holds `scheduler_config.json`.
            **overrides: keyword arguments that replace config values.
        """
        return cls.from_config(cls.load_config(pretrained_model_name_or_path, subfolder), **overrides)

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write `scheduler_config.json` into `save_directory` (created if missing), as diffusers does.

        Args:
            save_directory: the folder to write into.
        """
        self.save_config(save_directory)
