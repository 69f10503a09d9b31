"""The config base: diffusers-style JSON, read-only configs, validation with the key named."""

import json
import warnings

import pytest

from minidiff.configuration import ConfigMixin, FrozenConfig, resolve_file


class Toy(ConfigMixin):
    config_name = "toy_config.json"

    def __init__(
        self, steps: int = 10, scale: float = 1.0, kind: str = "a", widths: tuple[int, ...] = (1, 2)
    ):
        self.register_to_config(steps=steps, scale=scale, kind=kind, widths=widths)


def test_config_is_read_only_and_attribute_access():
    toy = Toy(steps=3)
    assert toy.config.steps == 3 and toy.config["kind"] == "a"
    assert isinstance(toy.config, FrozenConfig)
    with pytest.raises(TypeError, match="read-only"):
        toy.config["steps"] = 4
    with pytest.raises(AttributeError, match="no key 'missing'"):
        _ = toy.config.missing


def test_save_writes_diffusers_json_and_round_trips(tmp_path):
    path = Toy(steps=7, widths=(4, 8)).save_config(tmp_path / "sub")
    data = json.loads(path.read_text())
    # diffusers' bookkeeping keys; tuples become lists; keys sorted as diffusers writes them.
    assert data["_class_name"] == "Toy" and "_diffusers_version" in data
    assert data["widths"] == [4, 8] and list(data) == sorted(data)
    again = Toy.from_config(Toy.load_config(tmp_path / "sub"))
    assert again.config.steps == 7 and list(again.config.widths) == [4, 8]


def test_from_config_overrides_and_accepts_objects():
    toy = Toy(steps=3)
    assert Toy.from_config(toy, scale=2.5).config.scale == 2.5
    assert Toy.from_config(toy.config).config.steps == 3
    with pytest.raises(TypeError, match="expects a dict"):
        Toy.from_config(42)


def test_unknown_keys_are_warned_once():
    config = {"steps": 2, "not_a_key_xyz": 1, "_private": 0}
    with pytest.warns(UserWarning, match="not_a_key_xyz"):
        Toy.from_config(config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second time it stays quiet
        Toy.from_config(config)


@pytest.mark.parametrize(
    "key, value",
    [
        ("steps", "10"),
        ("steps", 1.5),
        ("steps", True),
        ("scale", "x"),
        ("kind", 3),
        ("widths", [1, "2"]),
        ("widths", 5),
    ],
)
def test_wrong_types_are_rejected_with_the_key_named(key, value):
    with pytest.raises(ValueError, match=f"config key '{key}'"):
        Toy.from_config({key: value})


def test_int_is_accepted_where_a_float_is_expected():
    assert Toy.from_config({"scale": 2}).config.scale == 2


def test_invalid_json_names_the_file(tmp_path):
    (tmp_path / "toy_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="toy_config.json is not valid JSON"):
        Toy.load_config(tmp_path)
    (tmp_path / "toy_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        Toy.load_config(tmp_path)


def test_missing_local_file_and_offline_hub_give_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="toy_config.json"):
        resolve_file(tmp_path, "toy_config.json")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(OSError, match="could not be downloaded"):
        resolve_file("someone/not-cached-model", "config.json")


def test_save_config_refuses_a_file_as_folder(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    with pytest.raises(ValueError, match="is a file"):
        Toy().save_config(target)
    assert target.read_text() == "keep me"
