"""Runs the network measurements of this directory, one ``pwl.bench`` at a time.

    python experiments/results/network/record.py [--only NAME ...]

nginx must already serve ``nginx.conf`` (README.md), and for the ``link`` runs ``link.sh up``
must shape its ports 18090 and 18091. Each run writes its rows, its
console output (``bench.txt``) and its ``provenance.json`` into its own directory
here; this directory's ``provenance.json`` lists every run recorded with its wall time
(a run of ``--only`` replaces its own steps and keeps the others').
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT / "experiments"))

from provenance import write_provenance  # noqa: E402

URL = "http://127.0.0.1:18089"  # nginx; /r2/ and /r20/ under nginx's limit_rate
LINK = {"2MiB": "http://127.0.0.1:18090", "20MiB": "http://127.0.0.1:18091"}  # link.sh shapes
VIT_LOCAL = "[student_safetensors,bundle,bundle_url,student_url]"
FIRST = "[bundle_url,student_url]"
# name: (location, bundle, link_rate, variants, repeats, connections[, extra overrides])
RUNS = {
    "default_loopback": ("", "default", None, None, 10, 1),
    "default_20MiB": ("r20/", "default", "20MiB", None, 8, 1),
    "default_2MiB": ("r2/", "default", "2MiB", None, 8, 1),
    "vit_loopback": ("", "vit", None, VIT_LOCAL, 8, 1),
    "vit_20MiB": ("r20/", "vit", "20MiB", "[bundle,bundle_url,student_url]", 3, 1),
    "vit_2MiB": ("r2/", "vit", "2MiB", "[bundle_url,student_url]", 1, 1),
    "vit_20MiB_k2": ("r20/", "vit", "20MiB", "[bundle_url]", 3, 2),
    "vit_20MiB_k4": ("r20/", "vit", "20MiB", "[bundle_url]", 3, 4),
    "vit_2MiB_k2": ("r2/", "vit", "2MiB", "[bundle_url]", 1, 2),
    "vit_2MiB_k4": ("r2/", "vit", "2MiB", "[bundle_url]", 1, 4),
    # the first answer alone (no teacher load), more rounds
    "default_first": ("", "default", None, FIRST, 24, 1, ["full=false"]),
    "vit_first": ("", "vit", None, FIRST, 24, 1, ["full=false"]),
    # a link shaped in the kernel (link.sh) instead of nginx's limit_rate
    "default_link2MiB": ("link", "default", "2MiB", None, 8, 1),
    "default_link20MiB": ("link", "default", "20MiB", None, 8, 1),
    "vit_link20MiB": ("link", "vit", "20MiB", "[bundle,bundle_url,student_url]", 3, 1),
}


def command(name: str) -> list[str]:
    location, bundle, link_rate, variants, repeats, connections, *extra = RUNS[name]
    base = f"{LINK[link_rate]}/" if location == "link" else f"{URL}/{location}"
    args = ["python", "-m", "pwl.bench", f"bundle={base}{bundle}/bundle/",
            "random_pair=false", "bandwidths=[null]", f"repeats={repeats}", "threads=1",
            f"workdir=/tmp/pwl-net/work/{name}",
            f"hydra.run.dir=experiments/results/network/{name}"]
    if link_rate:
        args.append(f"link_rate={link_rate}")
    if variants:
        args.append(f"variants={variants}")
    if connections > 1:
        args.append(f"connections={connections}")
    return args + [a for group in extra for a in group]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(RUNS), default=list(RUNS))
    args = parser.parse_args()
    steps = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "220"}
    for name in args.only:
        cmd = command(name)
        shown = "OMP_NUM_THREADS=1 " + shlex.join(cmd)
        print(shown, flush=True)
        began = time.perf_counter()
        proc = subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT, env=env, text=True,
                              capture_output=True)
        seconds = round(time.perf_counter() - began, 1)
        out = HERE / name
        out.mkdir(exist_ok=True)
        (out / "bench.txt").write_text(proc.stdout)
        if proc.returncode != 0:
            sys.exit(f"error: {name} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        print(proc.stdout[-6000:], flush=True)
        step = {"step": name, "command": shown, "seconds": seconds}
        write_provenance(out, shlex.join(cmd), [step])
        steps.append(step)
    recorded = HERE / "provenance.json"
    if recorded.is_file():
        ran = {s["step"] for s in steps}
        steps = [s for s in json.loads(recorded.read_text())["steps"] if s["step"] not in ran
                 ] + steps
    steps.sort(key=lambda s: list(RUNS).index(s["step"]))
    write_provenance(HERE, shlex.join(["python", "experiments/results/network/record.py",
                                       *sys.argv[1:]]), steps)


if __name__ == "__main__":
    main()
