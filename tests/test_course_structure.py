"""The notebook pipeline's promises: exercise copies in step, no stored outputs, every convention present."""

import importlib.util
import re

import nbformat
import pytest

from conftest import ROOT

SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
REPOSITORY = re.search(r'^Repository = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)


def _load_make_student():
    spec = importlib.util.spec_from_file_location("make_student", ROOT / "scripts" / "make_student.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_student = _load_make_student()


def test_there_are_solution_notebooks():
    assert SOLUTIONS, "solutions/ holds no notebook"


def test_exercise_copies_are_up_to_date():
    """notebooks/ must be exactly what `make student` writes from solutions/."""
    for path, text in make_student.expected_copies().items():
        assert path.exists(), f"{path.name} has no exercise copy: run `make student`"
        assert path.read_text() == text, f"notebooks/{path.name} is out of date: run `make student`"
    copies = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert copies == {p.name for p in SOLUTIONS}


@pytest.mark.parametrize("folder", ["solutions", "notebooks"])
def test_notebooks_are_stored_without_outputs(folder):
    for path in sorted((ROOT / folder).glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name} cell {index} has outputs"


def test_exercise_copies_hide_every_solution():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        text = path.read_text()
        assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text, path.name
        assert "raise NotImplementedError" in text, path.name


@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_solution_notebook_follows_the_course_conventions(path):
    notebook = nbformat.read(path, as_version=4)
    cells = notebook.cells
    first = cells[0].source
    assert cells[0].cell_type == "markdown" and first.startswith("# "), "the first cell is the title"
    assert f"colab.research.google.com/github/{REPOSITORY.removeprefix('https://github.com/')}/blob/main/notebooks/{path.name}" in first
    for heading in ("Learning goals", "Papers", "Cost"):
        assert heading.lower() in first.lower(), f"the first cell does not state its {heading}"
    parameters = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1, "exactly one cell is tagged 'parameters'"
    assert re.search(r'^PROFILE = "default"', parameters[0].source, re.M), "PROFILE defaults to 'default'"
    setup = cells[cells.index(parameters[0]) + 1].source
    assert "course_lib.setup(PROFILE" in setup and f"git+{REPOSITORY}" in setup, "setup (and the Colab install) follows"
    source = "\n".join(c.source for c in cells if c.cell_type == "code")
    exercises = source.count("# BEGIN SOLUTION")
    assert exercises >= 2 and exercises == source.count("# END SOLUTION")
    assert "check." in source, "exercises are followed by checkers"
    assert "course_lib.report(" in source, "the headline result is recorded"
    assert "assert" in source and "ASSERT_CLAIMS" in source, "claims are asserted outside the smoke profile"


def test_readme_lists_every_notebook():
    readme = (ROOT / "README.md").read_text()
    assert readme.lstrip().startswith("#")
    assert "make course" in readme.split("\n## ")[0] and "make test" in readme.split("\n## ")[0]
    for path in SOLUTIONS:
        assert path.stem in readme, f"README does not list {path.stem}"


@pytest.mark.parametrize(
    "source, problem",
    [
        ("x = 1\n# BEGIN SOLUTION\ny = 2\n", "never closed"),
        ("# END SOLUTION\n", "without"),
        ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION\n", "inside another"),
    ],
)
def test_unbalanced_markers_are_reported(source, problem):
    with pytest.raises(ValueError, match=problem):
        make_student.strip_solutions(source, "cell")


def test_solution_region_becomes_a_prompt_at_its_indentation():
    source = "def f(x):\n    # BEGIN SOLUTION\n    return x + 1\n    # END SOLUTION\n\ncheck(f)"
    stripped = make_student.strip_solutions(source, "cell")
    assert stripped.splitlines() == [
        "def f(x):", "    " + make_student.PROMPT, "    raise NotImplementedError", "", "check(f)",
    ]


def test_environment_yml_installs_what_make_installs():
    """conda users get the same packages: the project with its dev extra, under the same constraints."""
    makefile = (ROOT / "Makefile").read_text()
    environment = (ROOT / "environment.yml").read_text()
    assert '-c constraints.txt -e ".[dev]"' in makefile
    assert "- -c constraints.txt" in environment and "- -e .[dev]" in environment


def test_ci_runs_make_test_and_nothing_else():
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[-1] == "make test" and not any("pytest" in line for line in lines)


def test_constraints_pin_torch_and_its_triton():
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line and not line.startswith("#"))
    assert pins["torch"] == "2.13.0"
    assert pins["triton"] == "3.7.1", "torch 2.13.0's CUDA builds require triton 3.7.1"
