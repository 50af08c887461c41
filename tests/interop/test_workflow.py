"""The scheduled rotation workflow (deploy/ci/github-actions-rotate.yml) as GitHub would run
it, checked by actionlint (a linter nobody here wrote): workflow syntax, expressions,
`${{ }}` contexts, and the actions it uses with their inputs and runtime (an action on the
deprecated node20 is refused). shellcheck is not installed, so `run:` scripts are not
linted by it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import REPO

ACTIONLINT = REPO / ".venv/bin/actionlint"
WORKFLOW = REPO / "deploy/ci/github-actions-rotate.yml"


def actionlint(path: Path) -> subprocess.CompletedProcess:
    assert ACTIONLINT.exists(), "actionlint missing: run scripts/install-tools.sh"
    return subprocess.run([str(ACTIONLINT), "-no-color", str(path)], capture_output=True, text=True, timeout=60)


def test_the_rotation_workflow_passes_actionlint() -> None:
    out = actionlint(WORKFLOW)
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")


def test_actionlint_catches_what_it_must(tmp_path: Path) -> None:
    """The check can fail: the workflow as it was (upload-artifact@v4, on node20), an
    unknown context and an input the action does not have are each reported."""
    text = WORKFLOW.read_text()
    assert "actions/upload-artifact@v6" in text
    for broken, expected in [
        (text.replace("actions/upload-artifact@v6", "actions/upload-artifact@v4"), 'runtime "node20" is deprecated'),
        (text.replace("${{ runner.temp }}", "${{ runnr.temp }}", 1), 'undefined variable "runnr"'),
        (text.replace("retention-days: 30", "retention-dayz: 30", 1), 'input "retention-dayz" is not defined'),
    ]:
        assert broken != text, expected
        path = tmp_path / "workflow.yml"
        path.write_text(broken)
        out = actionlint(path)
        assert out.returncode == 1 and expected in out.stdout, out.stdout + out.stderr
