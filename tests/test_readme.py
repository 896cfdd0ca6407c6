"""The README as a landing page: its two copyable blocks on the first screen, the test block the one CI runs (read
from a fresh clone, as CI reads it), and the page short enough to read."""

import re
import subprocess
import sys

from helpers import REPO

CI = REPO / ".ci"


def _readme_lines():
    return (REPO / "README.md").read_text(encoding="utf-8").splitlines()


def _commands(name, root=REPO):
    out = subprocess.run(
        [sys.executable, str(root / ".ci" / "readme_commands.py"), name],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return out.splitlines()


def test_the_first_screen_holds_what_it_is_the_warning_and_both_blocks():
    first = "\n".join(_readme_lines()[:60])
    assert "Research use only — not for diagnosis" in first
    for name in ("quickstart", "test"):
        assert f"<!-- commands: {name} -->" in first
    # the headline results, each with the command and date behind it, and the way to the rest
    rows = [line for line in first.splitlines() if re.match(r"\| \[.*\]\(.*\) \|", line)]
    assert len(rows) >= 3 and all("`" in r and re.search(r"\| 20\d\d-\d\d-\d\d \|$", r) for r in rows)
    assert all(f"docs/{page}.md" in first for page in ("training", "evaluation", "app", "data", "development"))
    assert _commands("quickstart") == [
        "pip install -r requirements.txt",
        "python app.py --quickstart ../shared/data/cxr-sample",
    ]
    test = _commands("test")
    assert test[0] == "pip install -r requirements-dev.txt"
    assert test[-1].startswith("python -m pytest --runslow")


def test_ci_runs_the_readme_test_block_of_a_fresh_clone(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    # the committed README and extraction give CI's commands; they are the checkout's README's as shown
    assert _commands("test", clone) == _commands("test")
    run = (clone / ".ci" / "run").read_text()
    assert "readme_commands.py test" in run and 'eval "$cmd"' in run
    # CI installs only what the README's block says
    assert not [line for line in run.splitlines() if "pip install" in line and not line.lstrip().startswith("#")]


def test_the_readme_is_a_few_screens():
    lines = _readme_lines()
    assert len(lines) < 250
    body = lines[lines.index("---", 1) + 1 :] if lines and lines[0] == "---" else lines  # after the Space front matter
    fenced = False
    for line in body:
        if line.startswith("```"):
            fenced = not fenced
        if fenced:
            continue
        limit = 300 if line.startswith("|") else 200
        assert len(line) <= limit, line[:80]
    assert not re.search(r"issue #\d+|this workplace|shared machine", "\n".join(lines), re.I)
