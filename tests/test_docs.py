"""The code blocks of README.md and docs/ run as a reader would run them.

Blocks are read with pytest-codeblocks. A Python or shell block that cannot run here carries
``<!--pytest.mark.skip(reason="...")-->`` on the line above it; every other one runs. The
README's first block (the quickstart's training) runs first, in a fresh directory, and makes
``runs/teacher`` and ``runs/distill``, which every other block continues from. Then the rest
of the README and each docs/ page run side by side, each page's blocks in order, in its own
copy of that directory. Shell blocks run in bash with this interpreter's directory first on
PATH, so ``python`` is the test's own; Python blocks run in this process, one at a time, in
their page's directory.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

codeblocks = pytest.importorskip("pytest_codeblocks")

ROOT = Path(__file__).resolve().parents[1]
RUN = {"python": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
NOT_CODE = {"text", "yaml"}


def pages() -> list[Path]:
    """README.md, then the pages of mkdocs.yml's nav in order."""
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    return [ROOT / "README.md", *(ROOT / "docs" / next(iter(entry.values())) for entry in nav)]


def blocks(page: Path) -> list:
    return codeblocks.extract_from_file(page)


def skip_reason(block) -> str | None:
    """The reason of the block's skip mark; None for a block that runs."""
    marks = [eval(mark, {"pytest": pytest}) for mark in block.marks]
    assert all(mark.name == "skip" for mark in marks), f"line {block.lineno}: {block.marks}"
    return marks[0].kwargs.get("reason", "") if marks else None


def runs(block) -> bool:
    return block.syntax in RUN and skip_reason(block) is None


def where(page: Path, block) -> str:
    return f"{page.relative_to(ROOT)}:{block.lineno}"


def test_every_page_is_in_the_site():
    assert sorted(pages()[1:]) == sorted((ROOT / "docs").glob("*.md"))


def test_every_block_runs_or_says_why_not():
    for page in pages():
        for block in blocks(page):
            assert block.syntax in {*RUN, *NOT_CODE}, (
                f"{where(page, block)}: give the block a language ({sorted({*RUN, *NOT_CODE})})")
            assert skip_reason(block) != "", f"{where(page, block)}: say why it is not run"
            # Blocks that are not run are still checked for syntax.
            if block.syntax == "yaml":
                yaml.safe_load(block.code)
            elif RUN.get(block.syntax) == "python":
                compile(block.code, where(page, block), "exec")
            elif RUN.get(block.syntax) == "bash":
                done = subprocess.run(["bash", "-n", "-c", block.code], capture_output=True,
                                      text=True)
                assert done.returncode == 0, f"{where(page, block)}: {done.stderr}"


def test_readme_links_point_at_files():
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert targets
    missing = [t for t in targets if "://" not in t and not (ROOT / t).exists()]
    assert not missing


def run_shell(code: str, cwd: Path, label: str) -> None:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (f"{label} failed (exit {done.returncode}):\n{code}\n"
                                  f"--- output (tail) ---\n{(done.stdout + done.stderr)[-4000:]}")


_IN_PROCESS = threading.Lock()  # a Python block changes this process's working directory


def run_python(code: str, cwd: Path, label: str) -> None:
    with _IN_PROCESS:
        before = Path.cwd()
        os.chdir(cwd)
        try:
            exec(compile(code, label, "exec"), {"__name__": "__main__"})
        finally:
            os.chdir(before)


def run_blocks(page: Path, todo: list, cwd: Path) -> int:
    """Runs the blocks in order in ``cwd``; returns how many ran."""
    for block in todo:
        run = run_shell if RUN[block.syntax] == "bash" else run_python
        run(block.code, cwd, where(page, block))
    return len(todo)


def test_code_blocks_run(tmp_path):
    readme, *docs = pages()
    training, *rest = filter(runs, blocks(readme))
    assert "phase=distill" in training.code, "the README's first block trains the quickstart"
    base = tmp_path / "quickstart"
    base.mkdir()
    run_shell(training.code, base, where(readme, training))
    todo = {readme: rest} | {page: list(filter(runs, blocks(page))) for page in docs}
    todo = {page: todo[page] for page in todo if todo[page]}
    copies = [tmp_path / page.stem for page in todo]
    for copy in copies:
        shutil.copytree(base, copy, symlinks=True)
    with ThreadPoolExecutor(max_workers=len(todo)) as pool:
        ran = sum(pool.map(run_blocks, todo, todo.values(), copies))
    assert ran >= 4


def test_site_builds_offline(tmp_path):
    pytest.importorskip("material")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    html = (tmp_path / "site" / "index.html").read_text()
    assert "Quickstart" in html and "fonts.googleapis" not in html


def test_the_readme_is_a_front_page_of_at_most_200_lines():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"
