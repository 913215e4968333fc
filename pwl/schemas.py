"""Schemas of the entry points' composed configs: every numeric knob typed and range-checked.

Each entry point calls ``check_app_config(cfg, app)`` first, so a wrong value
stops the run with one line naming the key (``optim.optimizer.lr=-1 must be > 0``)
before anything is built. The schemas name the knobs they check and let other
keys through: a user's own ``_target_`` may take any arguments. A data config
that names a registered data module is checked against that module's schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import Field, StrictBool, ValidationError, field_validator

from pwl.config import OpenSchema, parse_bandwidth, problems_of
from pwl.data.datamodule import DATA_MODULES
from pwl.errors import ConfigError

FIX = "fix it on the command line or in the config"

Count = Annotated[int, Field(ge=1)]
Positive = Annotated[float, Field(gt=0.0)]
NonNegative = Annotated[float, Field(ge=0.0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
# Lightning's limit_*_batches: a number of batches, or a fraction of the epoch.
BatchLimit = NonNegative | None


def _rate(value: Any) -> Any:
    parse_bandwidth(value)  # raises a ValueError (ConfigError) with the reason
    return value


class Epochs(OpenSchema):
    teacher: Count = 1
    distill: Count = 1


class Optimizer(OpenSchema):
    lr: Positive
    weight_decay: NonNegative | None = None
    momentum: Fraction | None = None
    eps: Positive | None = None
    betas: Annotated[list[Annotated[float, Field(ge=0.0, lt=1.0)]],
                     Field(min_length=2, max_length=2)] | None = None


class Scheduler(OpenSchema):
    warmup_epochs: NonNegative = 0.0
    min_lr_ratio: Fraction = 0.0
    min_lr: NonNegative | None = None


class Optim(OpenSchema):
    optimizer: Optimizer
    scheduler: Scheduler | None = None
    adapter_lr_mult: NonNegative = 1.0


class LossTerm(OpenSchema):
    weight: NonNegative = 1.0
    temperature: Positive | None = None
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    num_masks: Count | None = None
    kd_weight: NonNegative | None = None
    ce_weight: NonNegative | None = None


class Loss(OpenSchema):
    terms: dict[str, LossTerm | None] = {}


class Trainer(OpenSchema):
    max_epochs: Count | None = None
    limit_train_batches: BatchLimit = None
    limit_val_batches: BatchLimit = None
    limit_test_batches: BatchLimit = None
    gradient_clip_val: NonNegative | None = None
    log_every_n_steps: Count | None = None
    accumulate_grad_batches: Count = 1
    check_val_every_n_epoch: Count | None = None
    num_sanity_val_steps: Annotated[int, Field(ge=-1)] | None = None

    @field_validator("limit_train_batches", "limit_val_batches", "limit_test_batches")
    @classmethod
    def _batches_or_fraction(cls, value: float | None) -> float | None:
        if value is not None and value > 1 and not float(value).is_integer():
            raise ValueError("must be a number of batches or a fraction in [0, 1]")
        return value


class StageEval(OpenSchema):
    every_n_epochs: Count = 1


class Callbacks(OpenSchema):
    stage_eval: StageEval | None = None


class Train(OpenSchema):
    seed: int = 0
    epochs: Epochs
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    optim: Optim
    loss: Loss | None = None
    trainer: Trainer
    callbacks: Callbacks | None = None
    channels_last: StrictBool = False  # conf/train.yaml sets true; absent (older saved configs): off


class Evaluate(OpenSchema):
    batch_size: Count | None = None
    limit_batches: Count | None = None


class Serve(OpenSchema):
    bandwidth: float | int | str | None = None
    batch_size: Count = 256
    max_seconds: Positive | None = None
    max_batches: Count | None = None
    tail_batches: Annotated[int, Field(ge=0)] = 20
    max_new_tokens: Annotated[int, Field(ge=0)] = 400
    tokens_per_step: Count = 8
    temperature: Annotated[float, Field(ge=0)] = 0.0
    connections: Count = 1

    _bandwidth = field_validator("bandwidth")(_rate)


class Pair(OpenSchema):
    img_size: Count
    patch_size: Count
    num_classes: Count
    num_blocks: Annotated[int, Field(ge=2)]


class Bench(OpenSchema):
    bandwidths: list[float | int | str | None] | float | int | str | None = None
    repeats: Count = 1
    threads: Count | None = None
    connections: Count = 1
    gen_tokens: Annotated[int, Field(ge=0)] = 32
    pair: Pair | None = None

    @field_validator("bandwidths")
    @classmethod
    def _rates(cls, value: Any) -> Any:
        for rate in value if isinstance(value, list) else [value]:
            parse_bandwidth(rate, "bandwidths")
        return value


SCHEMAS: dict[str, type[OpenSchema]] = {"train": Train, "evaluate": Evaluate, "serve": Serve,
                                        "export": OpenSchema, "bench": Bench, "plan": OpenSchema}


def _resolved(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The config as plain values, key by key; ``hydra`` and keys that do not resolve are left
    out (the entry point reports those where it uses them)."""
    if not isinstance(cfg, DictConfig):
        return dict(cfg)
    plain = {}
    for key in cfg.keys():
        if key == "hydra":
            continue
        try:
            node = OmegaConf.select(cfg, str(key), throw_on_missing=False)
            plain[key] = (OmegaConf.to_container(node, resolve=True)
                          if OmegaConf.is_config(node) else node)
        except OmegaConfBaseException:
            continue
    return plain


def check_app_config(cfg: DictConfig | Mapping[str, Any], app: str) -> None:
    """Checks the composed config of entry point ``app`` (train, evaluate, export, serve...).

    Raises:
        ConfigError: one line naming the first wrong key and its value.
    """
    plain = _resolved(cfg)
    found: list[str] = []
    try:
        SCHEMAS[app].model_validate(plain)
    except ValidationError as e:
        found += problems_of(e, "")
    data = plain.get("data")
    entry = DATA_MODULES.find(data.get("_target_")) if isinstance(data, dict) else None
    if entry is not None:
        try:
            entry.args.model_validate({k: v for k, v in data.items() if k != "_target_"})
        except ValidationError as e:
            found += problems_of(e, "data")
    elif app == "train" and data is None:
        found.append("data is not set; pick a data config with data=<name>")
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise ConfigError(f"{found[0]}{more}; {FIX}")
