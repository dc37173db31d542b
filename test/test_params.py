"""The parameter machinery shared by the node and replay (salad_ros.params)."""

from dataclasses import dataclass

import pytest

from salad_ros.params import (
    ConfigError,
    check_fields,
    from_flat_dict,
    inline,
    iter_specs,
    load_params_yaml,
    nested,
    param,
    to_flat_dict,
)


@dataclass
class Inner:
    ratio: float = param(0.5, "a ratio", range=(0.0, 1.0))
    count: int = param(3, "a count", range=(1, 10))

    def __post_init__(self):
        check_fields(self)


@dataclass
class Flat:
    mode: str = param("a", "a mode", choices=("a", "b"))
    enabled: bool = param(False, "a switch")


@dataclass
class Root:
    flat: Flat = inline(Flat)
    inner: Inner = nested(Inner)

    def validate(self):
        if self.flat.mode == "b" and self.inner.count < 2:
            raise ConfigError("parameter 'inner.count': mode b needs at least 2")


def test_specs_flatten_inline_and_nested_fields():
    names = [s.name for s in iter_specs(Root)]
    assert names == ["mode", "enabled", "inner.ratio", "inner.count"]
    ratio = next(s for s in iter_specs(Root) if s.name == "inner.ratio")
    assert ratio.type is float and ratio.range == (0.0, 1.0) and ratio.description == "a ratio"


def test_from_flat_dict_round_trip_and_coercion():
    cfg = from_flat_dict(Root, {"mode": "b", "inner.ratio": 1, "inner.count": 4})
    assert cfg.flat.mode == "b" and cfg.inner.ratio == 1.0 and isinstance(cfg.inner.ratio, float)
    assert to_flat_dict(cfg) == {"mode": "b", "enabled": False, "inner.ratio": 1.0, "inner.count": 4}


@pytest.mark.parametrize(
    "values, message",
    [
        ({"inner.ratio": 1.5}, r"parameter 'inner.ratio': 1.5 is outside the allowed range \[0.0, 1.0\]"),
        ({"inner.count": 2.5}, "parameter 'inner.count': expected an integer, got 2.5"),
        ({"inner.count": True}, "parameter 'inner.count': expected an integer, got True"),
        ({"enabled": "yes"}, "parameter 'enabled': expected true/false"),
        ({"mode": "c"}, "parameter 'mode': 'c' is not one of a, b"),
        ({"inner.rato": 0.1}, "unknown parameter 'inner.rato'"),
        ({"mode": "b", "inner.count": 1}, "parameter 'inner.count': mode b needs at least 2"),
    ],
)
def test_bad_values_name_the_parameter(values, message):
    with pytest.raises(ConfigError, match=message):
        from_flat_dict(Root, values)


def test_direct_construction_is_checked_too():
    with pytest.raises(ConfigError, match="parameter 'ratio'"):
        Inner(ratio=-1.0)


def test_load_params_yaml_layouts(tmp_path):
    ros = tmp_path / "ros.yaml"
    ros.write_text(
        "/**:\n  ros__parameters:\n    mode: a\n    inner: {count: 2}\n"
        "/robot/my_node:\n  ros__parameters:\n    mode: b\n"
        "other_node:\n  ros__parameters:\n    mode: z\n"
    )
    assert load_params_yaml(ros, "my_node") == {"mode": "b", "inner.count": 2}
    bare = tmp_path / "bare.yaml"
    bare.write_text("mode: b\ninner:\n  ratio: 0.25\n")
    assert load_params_yaml(bare, "my_node") == {"mode": "b", "inner.ratio": 0.25}
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("other_node:\n  ros__parameters: {mode: a}\n")
    with pytest.raises(ConfigError, match="no section for node 'my_node'"):
        load_params_yaml(wrong, "my_node")
    broken = tmp_path / "broken.yaml"
    broken.write_text("mode: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_params_yaml(broken, "my_node")
    with pytest.raises(ConfigError, match="cannot read parameters file"):
        load_params_yaml(tmp_path / "missing.yaml", "my_node")
