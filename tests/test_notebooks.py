"""Execute every solution notebook in the smoke profile, in a fresh kernel, with the network blocked."""

import json
import subprocess
import time
from pathlib import Path

import nbformat
import pytest

from conftest import PYTHON, ROOT, offline_env

SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


def test_the_network_is_really_blocked(tmp_path):
    """The guard the notebook runs rely on: an outside connection and a name lookup both fail."""
    probe = (
        "import socket\n"
        "for attempt in (lambda: socket.create_connection(('1.1.1.1', 53), timeout=2),"
        " lambda: socket.getaddrinfo('pypi.org', 443)):\n"
        "    try:\n"
        "        attempt()\n"
        "    except OSError as error:\n"
        "        assert 'blocked' in str(error), error\n"
        "    else:\n"
        "        raise SystemExit('the network was reachable')\n"
        "print('blocked')\n"
    )
    result = subprocess.run([PYTHON, "-c", probe], env=offline_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "blocked" in result.stdout, result.stderr


def test_a_notebook_kernel_cannot_reach_the_network(tmp_path):
    """papermill's kernels inherit the guard: a notebook that tries to download fails."""
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("import urllib.request\nurllib.request.urlopen('https://pypi.org', timeout=5)")]
    nbformat.write(notebook, tmp_path / "download.ipynb")
    command = [PYTHON, "-m", "papermill", str(tmp_path / "download.ipynb"), str(tmp_path / "out.ipynb"),
               "-k", "python3", "--no-progress-bar"]
    result = subprocess.run(command, env=offline_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "blocked in the course's tests" in result.stderr + result.stdout, result.stderr[-2000:]


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", SOLUTIONS, ids=[nb.stem for nb in SOLUTIONS])
def test_solution_notebook_runs_in_smoke_profile(notebook: Path, tmp_path):
    started = time.perf_counter()
    executed = tmp_path / notebook.name
    command = [PYTHON, "-m", "papermill", str(notebook), str(executed), "-p", "PROFILE", "smoke",
               "--cwd", str(tmp_path), "-k", "python3", "--no-progress-bar"]
    result = subprocess.run(command, env=offline_env(tmp_path), capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    print(f"{notebook.stem}: smoke profile in {seconds:.1f} s")
    assert result.returncode == 0, f"{notebook.stem} failed:\n{result.stderr[-4000:]}"
    record = json.loads((tmp_path / f"{notebook.stem}.json").read_text())
    assert record["profile"] == "smoke" and record["metrics"], record
