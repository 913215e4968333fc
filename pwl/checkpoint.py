"""Any trained artefact back as a HybridNet: a distill run dir, a Lightning ``.ckpt`` or a bundle
(a directory or a URL).

Used by the entry points that take ``checkpoint=`` (evaluate, export, plan).
Lightning ``.ckpt`` files carry the model config in their hyper-parameters.
The data config of a run is the ``data`` section of ``<run>/.hydra/config.yaml``
(or of a bundle's ``manifest.json``).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pwl.build import build_saved_hybrid
from pwl.errors import CheckpointError, ConfigError
from pwl.hybrid import HybridNet
from pwl.runtime.bundle import MANIFEST, is_bundle, read_manifest
from pwl.runtime.materialise import load_bundle_hybrid
from pwl.runtime.sources import is_url
from pwl.weights import HYBRID_FILE, MODEL_YAML, load_weights, read_model_cfg

RUN_CONFIG = ".hydra/config.yaml"


def load_hybrid(path: str | Path) -> tuple[HybridNet, dict[str, Any]]:
    """A trained HybridNet and its model config from a distill run dir, file, checkpoint or
    bundle (a directory or a URL, every file checked against its manifest)."""
    if is_url(path):
        return load_bundle_hybrid(path)
    path = Path(path)
    if is_bundle(path):
        return load_bundle_hybrid(path)
    if path.suffix == ".ckpt":
        return _hybrid_from_ckpt(path)
    weights = path / HYBRID_FILE if path.is_dir() else path
    if not weights.is_file():
        raise CheckpointError(f"{weights} does not exist; pass a distill run directory "
                              f"(holding {HYBRID_FILE} and {MODEL_YAML}), a Lightning .ckpt "
                              "or a bundle directory")
    cfg = read_model_cfg(weights.parent / MODEL_YAML)
    hybrid = build_saved_hybrid(cfg, weights.parent / MODEL_YAML)
    load_weights(hybrid, weights, f"model {cfg.get('name', '')} in {weights.parent / MODEL_YAML}")
    return hybrid.eval(), cfg


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run directory of a checkpoint: a directory itself, else the file's run.

    ``<run>/checkpoints/last.ckpt`` and ``<run>/hybrid.safetensors`` both give ``<run>``.
    """
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        return checkpoint
    parent = checkpoint.parent
    return parent.parent if parent.name == "checkpoints" else parent


def saved_data_cfg(checkpoint: str | Path, *, fix: str
                   ) -> tuple[dict[str, Any] | None, Path | str | None]:
    """The data config a model was trained with, and the file holding it, if the run saved one.

    Args:
        checkpoint: a run directory, a file in it (weights, ``.ckpt``) or a bundle (a
            directory or a URL).
        fix: how to do without the saved config; ends the error when it does not resolve.

    Returns:
        the resolved ``data`` section of the bundle manifest or of ``<run>/.hydra/config.yaml``
        and that file's path; ``(None, None)`` when there is none.
    """
    if is_url(checkpoint):
        data = read_manifest(checkpoint).data
        return (data, f"{checkpoint.rstrip('/')}/{MANIFEST}") if data else (None, None)
    run = run_dir_of(checkpoint)
    if is_bundle(run):
        data = read_manifest(run).data
        return (data, run / MANIFEST) if data else (None, None)
    path = run / RUN_CONFIG
    if not path.is_file():
        return None, None
    try:
        node = OmegaConf.load(path).get("data")
        data = OmegaConf.to_container(node, resolve=True) if node is not None else None
    except OmegaConfBaseException as e:
        raise ConfigError(f"the data section of {path} does not resolve "
                          f"({str(e).splitlines()[0]}); {fix}") from None
    return (data, path) if data else (None, None)


def _hybrid_from_ckpt(path: Path) -> tuple[HybridNet, dict[str, Any]]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        # weights_only: a .ckpt is a pickle, and a full unpickler runs whatever it names.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path} holds Python objects beyond tensors and plain data "
                              f"({str(e).strip().splitlines()[-1][:160]}); pwl reads such "
                              "files only as weights, export it from a pwl run") from None
    except Exception as e:  # zip and I/O errors all mean an unusable file
        raise CheckpointError(f"cannot read checkpoint {path} ({type(e).__name__}: {e}); "
                              "it is truncated or corrupt") from None
    cfg = ckpt.get("hyper_parameters", {}).get("model_cfg")
    if cfg is None:
        raise CheckpointError(f"{path} has no model_cfg hyper-parameter; is it a pwl "
                              "distill checkpoint?")
    hybrid = build_saved_hybrid(cfg, f"{path} (hyper_parameters.model_cfg)")
    state = {k.removeprefix("hybrid."): v for k, v in ckpt["state_dict"].items()
             if k.startswith("hybrid.")}
    result = hybrid.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{path} does not match its model config: missing "
                              f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}")
    return hybrid.eval(), cfg


def data_cfg_of(given: Any, checkpoint: str | Path) -> tuple[dict[str, Any], Path | None]:
    """The data config to evaluate ``checkpoint`` on: ``given`` (a ``data=<name>`` node) if
    set, else the one saved with the run or bundle, and the file it came from.

    Raises:
        ConfigError: neither exists (says to pass ``data=<name>``).
    """
    if given is not None:
        return OmegaConf.to_container(given, resolve=True), None
    data_cfg, source = saved_data_cfg(checkpoint, fix="pass data=<name> instead")
    if data_cfg is None:
        raise ConfigError(f"{checkpoint} has no saved data config; pass one with data=<name> "
                          "(e.g. data=fashion_mnist)")
    return data_cfg, source

