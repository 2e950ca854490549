"""Failure messages in one shape, as pytest-regressions writes them: what failed, obtained /
expected / delta, then the likely cause and the fix. A few lines, never a tensor dump.
"""

from __future__ import annotations


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def failure_message(what: str, *, obtained, expected: str, delta=None, cause: str = "",
                    fix: str = "", details: list[str] | None = None) -> str:
    """E.g. failure_message("ties: family_lists retention", obtained=0.81, expected=">= 0.95",
    delta=-0.14, cause="the lists task vector was dropped", fix="raise its density")."""
    lines = [what, f"  obtained: {_fmt(obtained)}", f"  expected: {expected}"]
    if delta is not None:
        lines.append(f"  delta:    {delta:+.4g}" if isinstance(delta, (int, float)) else f"  delta:    {delta}")
    lines += [f"  {d}" for d in details or ()]
    if cause:
        lines.append(f"Likely cause: {cause}")
    if fix:
        lines.append(f"Fix: {fix}")
    return "\n".join(lines)
