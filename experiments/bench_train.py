"""Distillation-step throughput: cached mixed paths vs running every mixed path from the input.

    python experiments/bench_train.py [--model resnet_narrow] [--loss pwl_all] [--batch 128]

Both variants train the same model with the same loss on the same batches; the
naive one recomputes each mixed path's shared prefix from the input. Rounds of
the two alternate so machine noise hits both alike; the median step time of
each gives images/s, and their ratio is the speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from pwl.config import to_dict
from pwl.lit import DistillModule
from pwl.losses import DistillOutputs

CONF = str(Path(__file__).resolve().parents[1] / "conf")


class NaiveOutputs(DistillOutputs):
    """Runs every mixed path from the input, as an implementation without caching would."""

    def mixed_logits(self, mask: str) -> torch.Tensor:
        return self.hybrid(self.images, mask)


def step_seconds(module: DistillModule, opt: torch.optim.Optimizer, x, y, naive: bool) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        teacher_feats = module.hybrid.teacher.forward_features(x)
    student_feats = module.hybrid.student.forward_features(x)
    cls = NaiveOutputs if naive else DistillOutputs
    total, _ = module.loss(cls(x, y, module.hybrid, teacher_feats, student_feats))
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet_narrow")
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--loss", default="pwl_all")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=5, help="steps per round")
    args = parser.parse_args()

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", [f"model={args.model}", f"data={args.data}", f"loss={args.loss}"])
    torch.manual_seed(0)
    module = DistillModule(to_dict(cfg.model), to_dict(cfg.loss), to_dict(cfg.optim))
    module.hybrid.train()
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    x = torch.randn(args.batch, *cfg.model.input_shape)
    y = torch.randint(0, cfg.data.num_classes, (args.batch,))
    for naive in (False, True):  # warm-up
        step_seconds(module, opt, x, y, naive)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for naive in (False, True):
            times[naive] += [step_seconds(module, opt, x, y, naive) for _ in range(args.steps)]
    cached, naive = statistics.median(times[False]), statistics.median(times[True])
    print(f"model={args.model} loss={args.loss} batch={args.batch} "
          f"threads={torch.get_num_threads()}")
    print(f"  {module.loss}")
    print(f"  cached mixed paths : {args.batch / cached:8.1f} images/s ({cached * 1e3:.1f} ms/step)")
    print(f"  naive (from input) : {args.batch / naive:8.1f} images/s ({naive * 1e3:.1f} ms/step)")
    print(f"  speed-up           : {naive / cached:.2f}x")


if __name__ == "__main__":
    main()
