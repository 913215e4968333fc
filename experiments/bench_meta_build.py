"""Building the ViT-B/16 pair on the meta device: what skipping weight initialisation saves.

    python experiments/bench_meta_build.py [--rounds 21]

Three ways to build each model of ``conf/bench.yaml``'s random pair on meta,
alternating within each round in one process (one torch thread): the
initialisers run (on meta they compute nothing, through torch's reference
implementations), ``torch.nn.init`` switched off (the ``no_init_weights`` idiom),
and ``pwl.runtime.materialise.on_meta`` (every value-only op on a meta tensor
skipped). Prints medians and each variant's paired ratio to the first with a 95%
bootstrap interval.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from omegaconf import OmegaConf
from scipy import stats

from pwl.bench import random_pair_cfg
from pwl.build import build_saved_net_of
from pwl.runtime.materialise import on_meta

INITS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_",
         "dirac_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_",
         "orthogonal_", "sparse_")


@contextmanager
def nn_init_off():
    with torch.device("meta"), mock.patch.multiple(
            torch.nn.init, **{name: (lambda t, *a, **k: t) for name in INITS}):
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pair = OmegaConf.load(Path(__file__).parents[1] / "conf" / "bench.yaml").pair
    cfg = random_pair_cfg(OmegaConf.to_container(pair))
    variants = {"initialisers run": lambda: torch.device("meta"),
                "torch.nn.init off": nn_init_off, "pwl on_meta": on_meta}
    print("| model | variant | median (ms) | vs initialisers run [95% interval] |")
    print("|---|---|---|---|")
    for role in ("student", "teacher"):
        def build(ctx, role=role) -> float:
            began = time.perf_counter()
            with ctx():
                build_saved_net_of(cfg[role], role, "bench")
            return time.perf_counter() - began

        for ctx in variants.values():
            build(ctx)  # first builds pay for imports and caches
        times = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, ctx in variants.items():
                times[name].append(build(ctx))
        base = np.asarray(times["initialisers run"])
        for name, values in times.items():
            ratios = np.asarray(values) / base
            cell = f"{np.median(ratios):.3f}"
            if np.ptp(ratios) > 0:
                ci = stats.bootstrap((ratios,), np.median, method="percentile",
                                     rng=np.random.default_rng(0)).confidence_interval
                cell += f" [{ci.low:.3f}, {ci.high:.3f}]"
            print(f"| {role} | {name} | {1e3 * statistics.median(values):.1f} | {cell} |")


if __name__ == "__main__":
    main()
