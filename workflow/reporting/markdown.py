"""report.md: tables, numbers and findings as markdown (RunDir.write_report writes the file)."""

from workflow.diagnostics.findings import Finding


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value) -> str:
    """Numbers printed the way a person reads them."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def findings_markdown(findings: list[Finding]) -> str:
    """Findings as a list with evidence and suggestions."""
    if not findings:
        return "No findings."
    parts = []
    for f in findings:
        parts.append(f"- **{f.severity}** `{f.id}`: {f.message}")
        if f.evidence:
            evidence = ", ".join(f"{k}={fmt(v)}" for k, v in f.evidence.items())
            parts.append(f"  - evidence: {evidence}")
        for s in f.suggestions:
            parts.append(f"  - try: {s}")
    return "\n".join(parts)


def next_markdown(commands: list[str], nothing: str = "Nothing further.") -> str:
    """The next commands as code blocks, or `nothing`."""
    return "\n".join(f"```\n{cmd}\n```" for cmd in commands) or nothing


def report_title(summary, name: str | None = None, status: bool = True) -> str:
    """'STAGE: MODEL on DATASET (STATUS)', the title of a stage's report.md."""
    config = summary.config
    title = f"{name or summary.stage}: {config['model']['name']} on {config['dataset']['name']}"
    return f"{title} ({summary.status})" if status else title
