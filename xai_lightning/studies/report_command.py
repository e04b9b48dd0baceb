"""``xai-lightning report RUN_DIR [RUN_DIR...]``: the study report for any runs the callbacks logged.

Each RUN_DIR is a run (a CSV log directory with ``metrics.csv``, or an offline W&B run
``offline-run-*``) or a folder holding several (a study's output directory). The report shows
curves and image panels of every run; when the runs are the seeds of a study (they carry its
metadata), also the verdict table, the robustness dial and the TCAV/dissection tables, exactly as
the study itself writes them. It prints the verdict table and where the report went.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

__all__ = ["format_verdict", "main", "report_runs"]


def format_verdict(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table (for terminals): columns padded to their widest cell."""
    table = [list(columns)] + [list(map(str, row)) for row in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def report_runs(run_dirs: Sequence[str | Path], output: str | Path | None = None) -> Path:
    """Read every run under ``run_dirs`` and write the report (default: ``report.html`` in the first
    directory). Errors name what was looked for (no logs) or the offending run (mixed configs)."""
    from xai_lightning.studies.comparison_report import study_verdict, write_study_report
    from xai_lightning.studies.runs import load_runs

    runs = load_runs(run_dirs)
    first = Path(run_dirs[0])
    path = Path(output) if output is not None else (first if first.is_dir() else first.parent) / "report.html"
    written = write_study_report(runs, path)
    verdict = study_verdict(runs)
    if verdict is not None:
        from xai_lightning.studies.verdict import verdict_columns

        spec, rows = verdict
        print(format_verdict(verdict_columns(spec), [row.cells() for row in rows]))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``xai-lightning report``; returns the exit status (2 for bad input)."""
    parser = argparse.ArgumentParser(prog="xai-lightning report", description=__doc__.splitlines()[0])
    parser.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="a run directory (CSV logs or an offline W&B run) or a folder of runs (a study's output)",
    )
    parser.add_argument("-o", "--output", default=None, help="where to write the HTML (default: RUN_DIR/report.html)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        path = report_runs(args.run_dirs, args.output)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(2, f"xai-lightning report: error: {error}\n")
    print(f"Report: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
