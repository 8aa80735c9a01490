"""Write the exercise copies in notebooks/ from the solution notebooks in solutions/.

Each region between `# BEGIN SOLUTION` and `# END SOLUTION` becomes a prompt and
`raise NotImplementedError`, at the region's indentation; outputs are dropped.

    python scripts/make_student.py          # write notebooks/
    python scripts/make_student.py --check  # exit 1 if notebooks/ is out of date
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
PROMPT = "# YOUR CODE HERE: the checker below says what is still wrong."


def strip_solutions(source: str, where: str) -> str:
    """Replace every marked solution region of one cell's source."""
    out, inside = [], False
    for number, line in enumerate(source.splitlines(), start=1):
        marker = line.strip()
        if marker == BEGIN:
            if inside:
                raise ValueError(f"{where}, line {number}: {BEGIN} inside another solution region")
            indent = line[: len(line) - len(line.lstrip())]
            out += [indent + PROMPT, indent + "raise NotImplementedError"]
            inside = True
        elif marker == END:
            if not inside:
                raise ValueError(f"{where}, line {number}: {END} without {BEGIN}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: {BEGIN} is never closed by {END}")
    return "\n".join(out)


def student_version(notebook: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """The exercise copy of a solution notebook."""
    student = copy.deepcopy(notebook)
    for index, cell in enumerate(student.cells):
        if cell.cell_type != "code":
            continue
        cell.source = strip_solutions(cell.source, f"{name} cell {index}")
        cell.outputs, cell.execution_count = [], None
    return student


def expected_copies() -> dict[Path, str]:
    """notebooks/<name>.ipynb -> the text it should have."""
    copies = {}
    for solution in sorted((ROOT / "solutions").glob("*.ipynb")):
        notebook = nbformat.read(solution, as_version=4)
        copies[ROOT / "notebooks" / solution.name] = nbformat.writes(student_version(notebook, solution.name)) + "\n"
    return copies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report copies that are out of date")
    args = parser.parse_args()
    copies = expected_copies()
    stale = [path for path, text in copies.items() if not path.exists() or path.read_text() != text]
    extra = sorted(set((ROOT / "notebooks").glob("*.ipynb")) - set(copies))
    if args.check:
        for path in stale:
            print(f"out of date: {path.relative_to(ROOT)} (run `make student`)")
        for path in extra:
            print(f"no solution for: {path.relative_to(ROOT)}")
        return 1 if stale or extra else 0
    (ROOT / "notebooks").mkdir(exist_ok=True)
    for path in stale:
        path.write_text(copies[path])
        print(f"wrote {path.relative_to(ROOT)}")
    for path in extra:
        path.unlink()
        print(f"removed {path.relative_to(ROOT)} (its solution is gone)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
