"""Materialising a model from bundle shards: build on the meta device, then assign tensors.

A model built on the meta device holds no memory; each shard's tensors then
become its modules' own (``load_state_dict(assign=True)``), so loading a block
costs reading it and nothing more.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from pwl.adapters import Adapters
from pwl.blocks import BlockNet
from pwl.build import build_saved_net_of, check_saved_model_cfg
from pwl.errors import CheckpointError, ConfigError
from pwl.hybrid import HybridNet
from pwl.precision import dequantise
from pwl.runtime.manifest import (
    ADAPTERS_FILE,
    MANIFEST,
    STUDENT_FILE,
    adapters_file_of,
    file_entry_of,
    read_manifest,
    side_files,
    stored_as_model,
    teacher_block_file,
)
from pwl.runtime.storage import check_names, read_tensors


def assign_tensors(module: nn.Module, tensors: Mapping[str, torch.Tensor], source: Path | str,
                   checked: bool = False) -> None:
    """Makes ``tensors`` (keys relative to ``module``) the module's own, replacing meta ones.

    The tensors are used in place (``load_state_dict(assign=True)``), not copied.
    Raises ``CheckpointError`` naming ``source`` on missing, unexpected or misshapen keys.

    Args:
        checked: the names were already checked against ``expected_of`` the module (a
            file's header, by ``read_tensors``), so the module is not walked again here.
    """
    if not checked:
        check_names(_tensor_names(module), tensors.keys(), source)
    try:
        result = module.load_state_dict(tensors, strict=False, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"{source} does not match the model in the manifest: "
                              f"{str(e).strip()}") from None
    if result.missing_keys:  # e.g. a module's extra state, which no tensor file holds
        raise CheckpointError(f"{source} does not match the model in the manifest: "
                              f"{len(result.missing_keys)} missing (e.g. "
                              f"{result.missing_keys[0][:80]})")
    # With the names checked, the keys a state dict does not take are the buffers that are
    # not persistent; they become the module's own as well.
    for name in result.unexpected_keys:
        owner, _, attr = name.rpartition(".")
        module.get_submodule(owner).register_buffer(attr, tensors[name], persistent=False)


def _named_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter and buffer (persistent or not), tied ones under each name, as
    ``state_dict`` names them, without its per-tensor detach."""
    yield from module.named_parameters(remove_duplicate=False)
    yield from module.named_buffers(remove_duplicate=False)


def _tensor_names(module: nn.Module) -> set[str]:
    return {name for name, _ in _named_tensors(module)}


def _split_prefixes(tensors: Mapping[str, torch.Tensor], modules: Sequence[nn.Module],
                    prefixes: Sequence[str], source: Path | str, checked: bool = False) -> None:
    """Assigns each ``prefix``-keyed part of ``tensors`` to its module (``checked``: as in
    ``assign_tensors``)."""
    rest = set(tensors)
    for module, prefix in zip(modules, prefixes):
        part = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        rest -= {prefix + k for k in part}
        assign_tensors(module, part, source, checked)
    if rest:
        raise CheckpointError(f"{source} holds tensors of no expected module "
                              f"(e.g. {sorted(rest)[0]}); re-export the bundle")


def assign_unit(teacher: BlockNet, block: int, tensors: Mapping[str, torch.Tensor],
                source: Path | str, checked: bool = False) -> None:
    """Materialises teacher swap unit ``block`` from the tensors of its block file.

    Shards stored below fp32 (``pwl.precision``) are dequantised here, so every
    reader of a bundle runs the same fp32 values the export measured.
    """
    _split_prefixes(dequantise(tensors, source), teacher.unit_modules(block),
                    teacher.unit_prefixes(block), source, checked)


def assign_parts(parts: Sequence[tuple[nn.Module, str]], tensors: Mapping[str, torch.Tensor],
                 source: Path | str, checked: bool = False) -> None:
    """Materialises each (module, key prefix) of ``parts`` from the tensors of one file
    (``checked``: as in ``assign_tensors``)."""
    _split_prefixes(tensors, [m for m, _ in parts], [p for _, p in parts], source, checked)


def import_builders(model_cfg: Mapping[str, Any], source: str | Path = MANIFEST) -> None:
    """Checks ``model_cfg`` against the registered builders, which are imported by then.

    A later build then pays for neither imports nor checks. Nothing the config
    names is imported: a builder is found by a lookup in the registry.
    """
    check_saved_model_cfg(model_cfg, source)


# In-place ops that only write values (weight initialisation). A meta tensor has no values,
# so on one they are skipped; ops that change a tensor's shape or strides still run.
_VALUE_OPS = frozenset({"uniform_", "normal_", "trunc_normal_", "fill_", "zero_", "erfinv_",
                        "clamp_", "clamp_min_", "clamp_max_", "mul_", "add_", "sub_", "div_",
                        "exponential_", "bernoulli_", "random_", "log_normal_", "copy_",
                        "orthogonal_"})


class _SkipInitOnMeta(TorchFunctionMode):
    """Skips weight initialisation of meta tensors.

    On the meta device the initialisers still run, through torch's Python
    reference implementations, and cost most of a model's build (0.12 of 0.14 s
    for the ViT-B/16 + ViT-S pair) while producing no values at all.
    """

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (),
                           kwargs: Mapping[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init" or (
                getattr(func, "__name__", None) in _VALUE_OPS):
            target = kwargs.get("tensor", args[0] if args else None)
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


@contextmanager
def on_meta() -> Iterator[None]:
    """Builds modules on the meta device, without running their weight initialisation."""
    with torch.device("meta"), _SkipInitOnMeta():
        yield


def build_on_meta(cfg: Mapping[str, Any], role: str, source: str | Path = MANIFEST) -> BlockNet:
    """Builds ``model.<role>`` of a saved config with its tensors on the meta device.

    The config must name a registered builder with valid arguments (``pwl.models``);
    ``source`` (the file it came from) is named in errors.
    """
    try:
        with on_meta():
            return build_saved_net_of(cfg, role, source)
    except CheckpointError as meta_error:
        # Some builders read tensor values (.item(), .tolist()) and cannot run on meta;
        # building on the CPU still works, it only allocates the weights once. An invalid
        # config fails the same way again here, before anything is built.
        net = build_saved_net_of(cfg, role, source)
        warnings.warn(f"cannot build model.{role} on the meta device ({meta_error}); "
                      "built on the CPU instead, which allocates its weights once",
                      stacklevel=2)
        return net.to_empty(device="meta")


def build_empty(model_cfg: Mapping[str, Any], feature_shapes: Mapping[str, Sequence],
                source: str | Path = MANIFEST, student: BlockNet | None = None) -> HybridNet:
    """The hybrid of ``model_cfg`` with every tensor on the meta device (no memory held).

    ``model_cfg`` is data read from ``source``: it is validated against the registered
    builders before anything is built. ``feature_shapes`` (``{"teacher": [...],
    "student": [...]}``, per boundary) size the adapters without running either network.
    ``student``: a student already built from ``model_cfg`` (e.g. loaded), used as it is.
    """
    check_saved_model_cfg(model_cfg, source)
    teacher = build_on_meta(model_cfg["teacher"], "teacher", source)
    if student is None:
        student = build_on_meta(model_cfg["student"], "student", source)
    try:
        with on_meta():
            adapters = Adapters(feature_shapes["teacher"], feature_shapes["student"],
                                model_cfg.get("adapter", "linear"))
        return HybridNet(teacher, student, adapters).eval()
    except ConfigError as e:  # e.g. the teacher and the student differ in N
        raise CheckpointError(f"{source}: {e}; re-export the bundle") from None
    except Exception as e:  # shapes each valid alone may still not pair up
        raise CheckpointError(f"{source}: feature_shapes do not fit the model config "
                              f"({type(e).__name__}: {str(e)[:200]}); re-export the bundle"
                              ) from None


def file_parts(hybrid: HybridNet, rel: str, manifest: Mapping[str, Any]
               ) -> list[tuple[nn.Module, str]]:
    """The (module, key prefix) pairs whose tensors bundle file ``rel`` holds."""
    if rel in (STUDENT_FILE, ADAPTERS_FILE):
        parts = [(hybrid.student, "student.")] if rel == STUDENT_FILE else []
        if adapters_file_of(manifest) == rel:
            parts.append((hybrid.adapters, "adapters."))
        return parts
    block = next(i for i in range(hybrid.num_blocks) if teacher_block_file(i) == rel)
    return list(zip(hybrid.teacher.unit_modules(block), hybrid.teacher.unit_prefixes(block)))


def expected_tensors(hybrid: HybridNet, rel: str, manifest: Mapping[str, Any]
                     ) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor bundle file ``rel`` holds for ``hybrid``."""
    return expected_of(file_parts(hybrid, rel, manifest))


def expected_of(parts: Sequence[tuple[nn.Module, str]]
                ) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor of ``parts`` ((module, key prefix) pairs).

    Read from the (meta) modules, so a file's safetensors header can be checked
    against the model before any of its tensor data is used.
    """
    return {prefix + name: (tuple(v.shape), v.dtype)
            for module, prefix in parts for name, v in _named_tensors(module)}


def check_num_blocks(hybrid: HybridNet, manifest: Mapping[str, Any], bundle: Path) -> None:
    if hybrid.num_blocks != manifest["num_blocks"]:
        raise CheckpointError(f"{bundle / MANIFEST} says N={manifest['num_blocks']} but its "
                              f"model config builds N={hybrid.num_blocks} blocks; re-export "
                              "the bundle")


def load_bundle_hybrid(bundle_dir: str | Path) -> tuple[HybridNet, dict[str, Any]]:
    """The whole hybrid of a bundle (every file read and checked) in eval mode, and its config."""
    bundle = Path(bundle_dir)
    manifest = read_manifest(bundle)
    hybrid = build_empty(manifest["model"], manifest["feature_shapes"], bundle / MANIFEST)
    check_num_blocks(hybrid, manifest, bundle)

    def read(rel: str) -> tuple[dict[str, torch.Tensor], bool]:
        """The tensors of ``rel``, and whether their names were checked against the model."""
        expected = (expected_tensors(hybrid, rel, manifest) if stored_as_model(manifest, rel)
                    else None)
        tensors = read_tensors(bundle / rel, file_entry_of(manifest, rel), expected=expected)
        return tensors, expected is not None

    for rel in sorted(side_files(manifest)):
        tensors, checked = read(rel)
        assign_parts(file_parts(hybrid, rel, manifest), tensors, bundle / rel, checked)
    for i in range(hybrid.num_blocks):
        rel = teacher_block_file(i)
        tensors, checked = read(rel)
        assign_unit(hybrid.teacher, i, tensors, bundle / rel, checked)
    return hybrid.eval(), manifest["model"]
