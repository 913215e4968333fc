"""Models from bundles: build on the meta device, then give each module its file's tensors.

A model built on the meta device holds no memory; each file's tensors then
become its modules' own (``load_state_dict(assign=True)``), so loading a block
costs reading it and nothing more. Every file's safetensors header is checked
against the tensors the model (at the file's stored dtype) needs before any
tensor is made. ``verify`` checks a whole bundle and lists every problem.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from pwl.adapters import Adapters
from pwl.blocks import BlockNet
from pwl.build import build_saved_net_of, check_saved_model_cfg
from pwl.errors import CheckpointError, ConfigError, PWLError
from pwl.hybrid import HybridNet
from pwl.precision import dequantise, stored_spec
from pwl.runtime.bundle import (
    ADAPTERS_FILE,
    FIX,
    MANIFEST,
    SIDE_FILES,
    STUDENT_FILE,
    Manifest,
    manifest_problems,
    name_problem,
    read_manifest,
    teacher_block_file,
)
from pwl.runtime.sources import LocalSource, Source, open_source
from pwl.runtime.storage import (
    MAX_HEADER,
    Pacer,
    bytes_tensors,
    check_header,
    check_sha256,
    header_length,
    open_regular,
    parse_header,
    read_file,
    read_tensors,
)

Expected = dict[str, tuple[tuple[int, ...], torch.dtype]]

# In-place ops that only write values (weight initialisation). A meta tensor has no values,
# so on one they are skipped; ops that change a tensor's shape or strides still run.
_VALUE_OPS = frozenset({"uniform_", "normal_", "trunc_normal_", "fill_", "zero_", "erfinv_",
                        "clamp_", "clamp_min_", "clamp_max_", "mul_", "add_", "sub_", "div_",
                        "exponential_", "bernoulli_", "random_", "log_normal_", "copy_",
                        "orthogonal_"})


class _SkipInitOnMeta(TorchFunctionMode):
    """Skips weight initialisation of meta tensors.

    On the meta device the initialisers still run, through torch's Python reference
    implementations. Switching off ``torch.nn.init`` alone does not reach them: timm
    initialises with its own ``trunc_normal_`` made of tensor ops. Measured on the ViT-B/16
    pair (experiments/results/bench_load/README.md): the student's build, on the path
    to the first answer, takes 0.18x [0.08, 0.20] the time, 29 ms less.
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


def build_empty(manifest: Manifest, source: str | Path = MANIFEST,
                student: BlockNet | None = None) -> HybridNet:
    """The hybrid a manifest describes, every tensor on the meta device (no memory held).

    The model config is data: it is validated against the registered builders before
    anything is built. The manifest's feature shapes size the adapters without running
    either network. ``student``: one already built from the same config, used as it is.
    """
    check_saved_model_cfg(manifest.model, source)
    teacher = build_on_meta(manifest.model["teacher"], "teacher", source)
    if student is None:
        student = build_on_meta(manifest.model["student"], "student", source)
    try:
        with on_meta():
            adapters = Adapters(manifest.feature_shapes.teacher, manifest.feature_shapes.student,
                                manifest.model.get("adapter", "linear"))
        hybrid = HybridNet(teacher, student, adapters).eval()
    except ConfigError as e:  # e.g. the teacher and the student differ in N
        raise CheckpointError(f"{source}: {e}; {FIX}") from None
    except Exception as e:  # shapes each valid alone may still not pair up
        raise CheckpointError(f"{source}: feature_shapes do not fit the model config "
                              f"({type(e).__name__}: {str(e)[:200]}); {FIX}") from None
    if hybrid.num_blocks != manifest.num_blocks:
        raise CheckpointError(f"{source} says N={manifest.num_blocks} but its model config "
                              f"builds N={hybrid.num_blocks} blocks; {FIX}")
    return hybrid


def file_parts(hybrid: HybridNet | BlockNet, rel: str) -> list[tuple[nn.Module, str]]:
    """The (module, key prefix) pairs whose tensors bundle file ``rel`` holds (a student
    alone for ``student.safetensors`` before the hybrid is built)."""
    if rel == STUDENT_FILE:
        return [(hybrid if isinstance(hybrid, BlockNet) else hybrid.student, "student.")]
    if rel == ADAPTERS_FILE:
        return [(hybrid.adapters, "adapters.")]
    block = next(i for i in range(hybrid.num_blocks) if teacher_block_file(i) == rel)
    return list(zip(hybrid.teacher.unit_modules(block), hybrid.teacher.unit_prefixes(block)))


def _named_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter and buffer (persistent or not), tied ones under each name."""
    yield from module.named_parameters(remove_duplicate=False)
    yield from module.named_buffers(remove_duplicate=False)


def expected_tensors(parts: Sequence[tuple[nn.Module, str]], dtype: str) -> Expected:
    """Name -> (shape, dtype) of every tensor a file stored at ``dtype`` holds for ``parts``.

    Read from the (meta) modules, so a file's header is checked against the model
    before any of its tensor data is used.
    """
    expected: Expected = {}
    for module, prefix in parts:
        for name, tensor in _named_tensors(module):
            expected.update(stored_spec(prefix + name, tensor, dtype))
    return expected


def assign(parts: Sequence[tuple[nn.Module, str]], tensors: Mapping[str, torch.Tensor],
           source: Path | str) -> None:
    """Makes the tensors of one file (checked against ``expected_tensors``, dequantised)
    the modules' own, in place of their meta tensors (not copied)."""
    for module, prefix in parts:
        part = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            result = module.load_state_dict(part, strict=False, assign=True)
        except RuntimeError as e:
            raise CheckpointError(f"{source} does not match the model in the manifest: "
                                  f"{str(e).strip()}") from None
        if result.missing_keys:  # e.g. a module's extra state, which no tensor file holds
            raise CheckpointError(f"{source} does not match the model in the manifest: "
                                  f"{len(result.missing_keys)} missing (e.g. "
                                  f"{result.missing_keys[0][:80]})")
        # With the names checked, the keys a state dict does not take are the buffers that
        # are not persistent; they become the module's own as well.
        for name in result.unexpected_keys:
            owner, _, attr = name.rpartition(".")
            module.get_submodule(owner).register_buffer(attr, part[name], persistent=False)


def load_file(bundle: str | Path | Source, manifest: Manifest, rel: str,
              parts: Sequence[tuple[nn.Module, str]], pacer: Pacer | None = None,
              mmap: bool = False, device: torch.device | str = "cpu",
              data: bytes | None = None) -> int:
    """Reads bundle file ``rel`` (size, sha256 and header checked) into ``parts``; its bytes.

    ``mmap`` maps a directory's file after hashing it; a URL's file is read into memory.
    ``data``: the file as ``source.read`` returned it (size and sha256 checked), read ahead.
    """
    source = open_source(bundle)
    dtype = manifest.dtype(rel)
    expected = expected_tensors(parts, dtype)
    if data is not None:
        tensors = bytes_tensors(source.where(rel), manifest.entry(rel), data, device, expected)
    elif mmap and isinstance(source, LocalSource):
        tensors = read_tensors(source.path(rel), manifest.entry(rel), pacer, True, device,
                               expected)
    else:
        data = source.read(rel, manifest.entry(rel), pacer)
        tensors = bytes_tensors(source.where(rel), manifest.entry(rel), data, device, expected)
    assign(parts, dequantise(tensors, dtype, source.where(rel)), source.where(rel))
    return manifest.files[rel].bytes


def load_bundle_hybrid(bundle_dir: str | Path | Source) -> tuple[HybridNet, dict[str, Any]]:
    """The whole hybrid of a bundle (a directory or a URL; every file read and checked) in
    eval mode, and its config."""
    source = open_source(bundle_dir)
    manifest = read_manifest(source)
    hybrid = build_empty(manifest, source.where(MANIFEST))
    for rel in (*SIDE_FILES, *manifest.teacher_files):
        load_file(source, manifest, rel, file_parts(hybrid, rel))
    return hybrid.eval(), manifest.model


def stored_hybrid(hybrid: HybridNet, blocks: Sequence[Mapping[str, torch.Tensor]],
                  dtype: str) -> HybridNet:
    """A copy of ``hybrid`` whose teacher runs ``blocks`` (its swap units as stored at
    ``dtype``, ``pwl.runtime.bundle.stored_blocks``), dequantised as a load does."""
    copy = deepcopy(hybrid).eval()
    for i, tensors in enumerate(blocks):
        assign(file_parts(copy, teacher_block_file(i)),
               dequantise(tensors, dtype, f"stored teacher block {i}"),
               f"stored teacher block {i}")
    return copy


class BundleError(CheckpointError):
    """A bundle failed ``verify``; ``problems`` lists every problem found, one line each."""

    def __init__(self, bundle: str | Path, problems: list[str]) -> None:
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        super().__init__(f"{bundle} fails verification with {count}; first: {problems[0]}\n"
                         + "\n".join(f"  - {p}" for p in problems))


def _file_problems(source: Source, manifest: Manifest, rel: str, expected: Expected | None
                   ) -> list[str]:
    """Problems of one file: its sha256, its safetensors header, its tensors vs the model."""
    where = source.where(rel)
    entry = manifest.entry(rel)
    try:
        if isinstance(source, LocalSource):  # streamed for the hash, then the header read
            path = source.path(rel)
            _, sha = read_file(path, keep=False, limit=entry.bytes, regular_only=True)
            check_sha256(path, entry, sha)
            with open_regular(path) as f:
                prefix = f.read(8)
                head = prefix + f.read(min(header_length(prefix, entry.bytes, path),
                                           MAX_HEADER))
        else:
            head = source.read(rel, entry)
        header = parse_header(head, entry.bytes, where)
        if expected is not None:
            check_header(header, expected, where)
    except CheckpointError as e:
        return [str(e)]
    return []


def verify(bundle_dir: str | Path | Source) -> Manifest:
    """Checks a whole bundle (a directory or a URL) and returns its manifest.

    Checks the manifest (schema, names, layout, sizes, loading order), its model config
    against the registered builders, and every file: sha256, safetensors header, and
    tensor names, shapes and dtypes against the model the manifest describes.

    Raises:
        BundleError: listing every problem found (one per line, the first line a summary).
    """
    source = open_source(bundle_dir)
    manifest, problems = manifest_problems(source)
    if manifest is None:
        raise BundleError(source.location, problems)  # the files cannot be checked against it
    hybrid = None
    try:
        hybrid = build_empty(manifest, source.where(MANIFEST))
    except PWLError as e:
        problems.append(str(e))
    for rel in sorted(manifest.files):
        if name_problem(source, rel) or (isinstance(source, LocalSource)
                                         and not source.path(rel).is_file()):
            continue  # reported by the layout check
        expected = (expected_tensors(file_parts(hybrid, rel), manifest.dtype(rel))
                    if hybrid is not None else None)
        problems += _file_problems(source, manifest, rel, expected)
    if problems:
        raise BundleError(source.location, problems)
    return manifest
