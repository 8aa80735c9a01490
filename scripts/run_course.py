"""Run the solution notebooks with papermill and gather their headline results into runs/RESULTS.md.

    python scripts/run_course.py --profile default            # every notebook
    python scripts/run_course.py --profile default --only 01  # notebooks whose name starts with 01
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import papermill

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from course_lib.report import gather_results  # noqa: E402
from course_lib.session import PROFILES  # noqa: E402


def select(only: list[str]) -> list[Path]:
    """Solution notebooks whose names start with any of `only` (all of them when `only` is empty)."""
    notebooks = sorted((ROOT / "solutions").glob("*.ipynb"))
    chosen = [nb for nb in notebooks if not only or any(nb.stem.startswith(prefix) for prefix in only)]
    if not chosen:
        names = ", ".join(nb.stem for nb in notebooks)
        raise SystemExit(f"--only {only} matches no notebook; there are: {names}")
    return chosen


def run(notebook: Path, profile: str, runs: Path) -> float:
    """Execute one notebook into runs/<name>.ipynb; return its wall time in seconds."""
    started = time.perf_counter()
    papermill.execute_notebook(
        str(notebook), str(runs / notebook.name), parameters={"PROFILE": profile},
        cwd=str(runs), kernel_name="python3", progress_bar=False,
    )
    seconds = time.perf_counter() - started
    record_path = runs / f"{notebook.stem}.json"
    if record_path.exists():  # the notebook's own report: add the time the whole run took
        record = json.loads(record_path.read_text())
        record["seconds"] = seconds
        record_path.write_text(json.dumps(record, indent=2) + "\n")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default", choices=PROFILES)
    parser.add_argument("--only", nargs="*", default=[], help="notebook name prefixes, such as 01 or 01_attention")
    args = parser.parse_args()
    runs = ROOT / "runs"
    runs.mkdir(exist_ok=True)
    os.environ["COURSE_RUNS_DIR"] = str(runs)
    failures = []
    for notebook in select(args.only):
        print(f"running {notebook.stem} ({args.profile}) ...", flush=True)
        try:
            seconds = run(notebook, args.profile, runs)
            print(f"  done in {seconds:.0f} s -> runs/{notebook.name}", flush=True)
        except papermill.PapermillExecutionError as error:
            failures.append(notebook.stem)
            print(f"  FAILED in cell {error.exec_count}: {error.ename}: {error.evalue}", flush=True)
    print(gather_results(runs))
    if failures:
        print(f"failed: {', '.join(failures)} (see the executed copies in runs/)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
