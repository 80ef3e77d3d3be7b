"""The one place a config is resolved: layering, unknown keys and value types, each a one-line error."""
import shlex

import pytest

from common.config import override_item, parse_overrides, resolve_config
from common.errors import InputError

DEFAULTS = """
data: {data_dir: [chunks/a], batch_ratio: [1, 4], input_size: null, loader_mode: mmap}
training: {epochs: 100, amp: true}
loss: {prior: 0.47}
"""


@pytest.fixture
def defaults(tmp_path):
    path = tmp_path / "defaults.yaml"
    path.write_text(DEFAULTS)
    return path


def test_layers_apply_in_order_and_keep_types(defaults, tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("training: {epochs: 5}\nloss: {prior: 1}\n")
    config = resolve_config(defaults, user, {"training.epochs": 7, "data.data_dir": "chunks/b"},
                            ["data.batch_ratio=[0.2, 0.8]", "data.input_size=64"])
    assert config["training"]["epochs"] == 7 and config["loss"]["prior"] == 1
    assert config["data"]["data_dir"] == ["chunks/b"]  # one path where a list of paths is expected
    assert config["data"]["batch_ratio"] == [0.2, 0.8] and config["data"]["input_size"] == 64


@pytest.mark.parametrize("override, message", [
    ("training.epochs=abc", "'training.epochs' in --set overrides must be a whole number like 100, not 'abc'"),
    ("training.epochs=2.5", "must be a whole number"),
    ("loss.prior=.nan", "'loss.prior' in --set overrides must be a finite number like 0.47, not nan"),
    ("loss.prior=nan", "must be a finite number"),
    ("training.amp=1", "must be a true/false"),
    ("data.batch_ratio=[1, x]", "must be a list of finite numbers"),
    ("data.loader_mode=[1]", "must be a string"),
    ("training.epochs", "must look like section.key=value"),
    ("training.epoch=3", "unknown config key 'training.epoch'"),
    ("training=3", "is a section"),
])
def test_bad_values_are_one_line_errors_naming_the_key(defaults, override, message):
    with pytest.raises(InputError, match=None) as error:
        resolve_config(defaults, overrides=[override])
    assert message in str(error.value) and "\n" not in str(error.value)


def test_wrong_type_in_a_yaml_file_names_the_file(defaults, tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("training: {epochs: many}\n")
    with pytest.raises(InputError, match=r"'training.epochs' in .*mine.yaml must be a whole number"):
        resolve_config(defaults, user)


def test_types_come_from_the_defaults_not_from_an_earlier_layer(defaults, tmp_path):
    """A user YAML that sets a null-default key leaves it nullable, and one that sets a whole number where
    the default is a float leaves floats allowed (e.g. --config cpu_benchmark.yaml --set model.average_from=null)."""
    user = tmp_path / "user.yaml"
    user.write_text("data: {input_size: 64}\nloss: {prior: 1}\n")
    config = resolve_config(defaults, user, overrides=["data.input_size=null", "loss.prior=0.25"])
    assert config["data"]["input_size"] is None and config["loss"]["prior"] == 0.25


def test_a_nullable_key_takes_null_and_its_type_but_nothing_else(tmp_path):
    """data.known_negative_share has a value by default and null as its other mode; a key that is not
    listed as nullable (training.epochs) still refuses null."""
    path = tmp_path / "defaults.yaml"
    path.write_text("data: {known_negative_share: 0.25}\ntraining: {epochs: 100}\n")
    assert resolve_config(path, overrides=["data.known_negative_share=null"])["data"]["known_negative_share"] is None
    assert resolve_config(path, overrides=["data.known_negative_share=0.5"])["data"]["known_negative_share"] == 0.5
    with pytest.raises(InputError, match="'data.known_negative_share' .* must be a finite number"):
        resolve_config(path, overrides=["data.known_negative_share=[1]"])
    with pytest.raises(InputError, match="'training.epochs' .* must be a whole number"):
        resolve_config(path, overrides=["training.epochs=null"])


@pytest.mark.parametrize("value", [None, 0.25, 1e-5, 3, True, "resnet_tiny", "two words", [1, 4], ["a b", "c"]])
def test_an_override_item_reads_back_through_a_shell_as_its_value(value):
    """What a refused resume prints: the shell splits it into one --set item that parses to the value."""
    items = shlex.split(override_item("loss.prior", value))
    assert len(items) == 1
    assert parse_overrides(items) == {"loss": {"prior": value}}
