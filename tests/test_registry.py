"""The one registry idiom: decorator registration, lookups by name or _target_ spelling,
one-line errors naming the key and the known names."""

import pytest

from pwl.config import Schema
from pwl.data import SyntheticDataModule
from pwl.data.datamodule import DATA_MODULES
from pwl.errors import ConfigError
from pwl.losses import LOSSES, CrossPath
from pwl.models import MODELS, resnet
from pwl.registry import Registry


class SquareArgs(Schema):
    side: int = 1


def test_a_decorated_object_is_found_by_its_name_and_its_target_spellings():
    shapes = Registry("shape", package="shapes", fix="register it with @SHAPES.register")

    @shapes.register(SquareArgs)
    def square(side: int = 1) -> int:
        return side * side

    assert square(3) == 9    # the decorator hands the object back unchanged
    for key in ("square", "shapes.square", f"{__name__}.{square.__qualname__}"):
        assert shapes.get(key, "shape._target_").obj is square
    entry, args = shapes.check({"_target_": "square", "side": 4}, "shape")
    assert entry.name == "square" and entry.obj(**args.model_dump()) == 16
    assert shapes.find("shapes.circle") is None and shapes.find(None) is None


def test_unknown_names_and_bad_arguments_are_one_line_naming_the_key():
    shapes = Registry("shape", fix="register it with @SHAPES.register")
    shapes.register(SquareArgs, name="square")(lambda side=1: side)
    shapes.register(name="dot")(lambda: 0)
    with pytest.raises(ConfigError, match=r"^shape._target_='os.system' is not a registered "
                                          r"shape \(one of \['dot', 'square'\]\); register it "
                                          r"with @SHAPES.register$"):
        shapes.check({"_target_": "os.system"}, "shape")
    with pytest.raises(ConfigError, match=r"^shape.side='2' input should be a valid integer"):
        shapes.check({"_target_": "square", "side": "2"}, "shape")
    with pytest.raises(ConfigError, match="^shape name 'square' is already registered for square"):
        shapes.register(name="square")(lambda: 1)


def test_the_families_register_themselves_under_their_config_names():
    # (tests may register builders of their own beside these)
    assert {"gpt", "resnet", "timm_split", "vgg", "vit"} <= set(MODELS.names())
    assert MODELS.get("pwl.models.resnet", "model.teacher._target_").obj is resnet
    # conf/data/<name>.yaml names each data module as pwl.data.<Class>
    assert DATA_MODULES.names() == ["cifar10", "cifar100", "fashion_mnist", "kjv", "synthetic"]
    assert DATA_MODULES.get("pwl.data.SyntheticDataModule", "data").obj is SyntheticDataModule
    assert LOSSES.names() == ["ce", "cross_path", "feature_recon", "feature_sync", "kd"]
    assert LOSSES.get("cross_path", "loss.terms.x.plugin").obj is CrossPath
