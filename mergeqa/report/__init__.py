"""What a person reads after a run: the markdown reports and per-merge lines (`markdown`), the
deployment report.html and GitHub step summary (`html`), and the family's table (`family_table`).
"""

from mergeqa.report.markdown import report_dir, run_metadata, write_run_reports

__all__ = ["report_dir", "run_metadata", "write_run_reports"]
