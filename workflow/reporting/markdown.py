"""report.md: tables, numbers and findings as markdown."""

import os


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


def findings_markdown(findings: list[dict]) -> str:
    """Findings as a list with evidence and suggestions."""
    if not findings:
        return "No findings."
    parts = []
    for f in findings:
        parts.append(f"- **{f['severity']}** `{f['id']}`: {f['message']}")
        if f.get("evidence"):
            evidence = ", ".join(f"{k}={fmt(v)}" for k, v in f["evidence"].items())
            parts.append(f"  - evidence: {evidence}")
        for s in f.get("suggestions", []):
            parts.append(f"  - try: {s}")
    return "\n".join(parts)


def write_report(path: str, title: str, sections: list[tuple[str, str]]) -> None:
    """report.md from (heading, markdown body) sections, written atomically."""
    text = f"# {title}\n\n" + "\n\n".join(f"## {h}\n\n{body}" for h, body in sections) + "\n"
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
