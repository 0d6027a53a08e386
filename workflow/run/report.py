"""The workflow's report: one story from the simple start to the final model, as report.md and a
self-contained report.html (plots embedded), built from the same blocks."""

import base64
import glob
import html
import os

from workflow import reporting
from workflow.diagnostics import bias_variance, error_analysis, task_errors
from workflow.engine import tasks
from workflow.reporting import model_summary, rundir
from workflow.reporting.summary import Summary
from workflow.search import random_search
from workflow.tune import report as tune_report

# Blocks: ("text", str) | ("table", headers, rows) | ("pairs", rows): a key-value table without
# a header row | ("image", path, caption) | ("code", str).


def _pct(value) -> str:
    return f"{value:.2%}" if isinstance(value, float) else "-"


def _error(summary: Summary, value) -> str:
    """An error of the run's task as a person reads it (a rate as %, an RMSE in its units)."""
    kind = tasks.kind_of(summary.config)
    if not isinstance(value, float) or kind.error_is_rate:
        return _pct(value)
    return bias_variance.error_format(kind())(value)


def _error_name(summary: Summary) -> str:
    return tasks.kind_of(summary.config).error_name


def step_blocks(step, shown_elsewhere: tuple[str, ...] = ()) -> list[tuple]:
    """What one step shows: its key table, decision and plots (but `shown_elsewhere`)."""
    s, stage = step.summary, step.stage
    blocks = [("text", f"`{step.workdir}` — config `{step.config_source}`, status {s.status}.")]
    m = s.metrics
    if stage in ("start_simple", "evaluate") and "test_accuracy" in m:
        rows = [
            [split, reporting.fmt(m.get(f"{split}_loss")), _pct(m.get(f"{split}_accuracy"))]
            for split in ("train", "val", "test")
        ]
        blocks.append(("table", ["split", "loss", "accuracy"], rows))
    elif stage in ("start_simple", "evaluate") and "test_error" in m:  # a regression's metrics
        names = tasks.kind_of(s.config).metric_names
        rows = [
            [split, *(reporting.fmt(m.get(f"{split}_{n}")) for n in ("loss", *names))]
            for split in ("train", "val", "test")
        ]
        blocks.append(("table", ["split", "loss", *names], rows))
    if s.bias_variance:
        blocks.append(("table", ["Error source", "Value", "Analysis"], s.bias_variance["rows"]))
        blocks.append(("text", s.bias_variance["decomposition"]))
    if stage == "debug":
        rows = [[f.severity, f.id, f.message] for f in s.findings]
        blocks.append(
            ("table", ["severity", "finding", "message"], rows or [["-", "-", "all checks passed"]])
        )
    if stage == "tune":
        rows = [
            ["trials", m.get("num_trials")],
            ["best learning rate", reporting.fmt(m.get("best_learning_rate"))],
            ["best L2 weight", reporting.fmt(m.get("best_l2"))],
            ["range test suggestion", reporting.fmt(m.get("suggested_lr"))],
        ]
        # Every other searched key's best value (a width, a batch size) is a choice too.
        rows += [
            [f"best {key}", tune_report.value_text(value)]
            for key, value in random_search.searched_extras(s.best or {}).items()
        ]
        rows.append(
            [
                f"val / test {_error_name(s)} (full length)",
                f"{_error(s, m.get('val_error'))} / {_error(s, m.get('test_error'))}",
            ]
            if "test_accuracy" not in m and "test_error" in m
            else [
                "val / test accuracy (full length)",
                f"{_pct(m.get('val_accuracy'))} / {_pct(m.get('test_accuracy'))}",
            ]
        )
        blocks.append(("pairs", rows))
    if stage == "improve" and s.candidates:
        rows = [
            [
                c["name"],
                c["change"],
                _pct(c["val_error"]),
                _pct(c["test_error"]),
                f"{c['num_params']:,}",
                f"{c['seconds']:.1f} s",
            ]
            for c in s.candidates
        ]
        blocks.append(
            ("table", ["candidate", "change", "val error", "test error", "params", "time"], rows)
        )
        blocks.append(("text", f"Decision: **{s.decision['chosen']}** — {s.decision['why']}"))
    plots = sorted(glob.glob(os.path.join(step.workdir, rundir.PLOTS, "*.png")))
    hidden = {os.path.join(step.workdir, name) for name in shown_elsewhere}
    if os.path.join(step.workdir, rundir.PLOT_ERROR_CURVES) in plots:
        # The error curves are the learning curves with the goal marked: show them once.
        hidden.add(os.path.join(step.workdir, rundir.PLOT_LEARNING_CURVES))
    for path in plots:
        if path not in hidden:
            caption = os.path.splitext(os.path.basename(path))[0].replace("_", " ")
            blocks.append(("image", path, caption))
    return blocks


# The evaluate step's plots that its error analysis section shows (error_blocks).
SHOWN_WITH_ERROR_ANALYSIS = (
    rundir.PLOT_CONFUSION_MATRIX,
    rundir.PLOT_WORST_EXAMPLES,
    rundir.PLOT_RESIDUALS,
    rundir.PLOT_LABEL_ERRORS,
)


def headline(summary: Summary) -> str:
    """Whether the goal was met, with the numbers: the first thing the report says."""
    accuracy = summary.metrics.get("test_accuracy")
    test_error = summary.metrics.get("test_error")
    if not isinstance(test_error, float) and isinstance(accuracy, float):
        test_error = 1.0 - accuracy
    goal = (summary.config.get("goal") or {}).get("test_error")
    numbers = f"test error {_error(summary, test_error)}, goal {_error(summary, goal)}"
    if summary.has_finding("goal_met"):
        return f"**Goal met**: {numbers}."
    return f"**Goal not met**: {numbers} ({summary.stopped or 'the workflow ended without it'})."


def error_blocks(step) -> list[tuple]:
    """The evaluate step's error analysis: per-class table, confusions, its plots."""
    s = step.summary
    if s.error_analysis.get("task", tasks.CLASSIFICATION) != tasks.CLASSIFICATION:
        blocks = task_errors.report_blocks(s.error_analysis)
    else:
        blocks = error_analysis.report_blocks(s.error_analysis, s.dataset["kind"])
    for name in SHOWN_WITH_ERROR_ANALYSIS:
        path = os.path.join(step.workdir, name)
        if os.path.exists(path):
            caption = os.path.splitext(os.path.basename(name))[0].replace("_", " ")
            blocks.append(("image", path, f"{caption} (train | val)"))
    return blocks


def sections(summary: Summary, steps: list) -> list[tuple[str, list[tuple]]]:
    """The report's sections as blocks."""
    m = summary.metrics
    final_step = next((s for s in steps if s.name == summary.final["step"]), None)
    result = [
        ("text", headline(summary)),
        (
            "pairs",
            [
                ["final model", f"`{summary.final['config']}`"],
                *(
                    [
                        ["test accuracy", _pct(m.get("test_accuracy"))],
                        ["val accuracy", _pct(m.get("val_accuracy"))],
                        ["train accuracy", _pct(m.get("train_accuracy"))],
                    ]
                    if "test_accuracy" in m or "test_error" not in m
                    else [
                        [f"{split} error", _error(summary, m.get(f"{split}_error"))]
                        for split in ("test", "val", "train")
                    ]
                ),
                ["wall time", f"{m['workflow_seconds']:.0f} s over {m['steps_run']} steps"],
            ],
        ),
    ]
    if summary.stopped:
        result.append(("text", f"Stopped: {summary.stopped}."))
    if final_step is not None and final_step.summary.bias_variance:
        bv = final_step.summary.bias_variance
        result.append(("table", ["Error source", "Value", "Analysis"], bv["rows"]))
        result.append(("text", bv["decomposition"]))
    story = [
        (
            "table",
            ["step", "decision and evidence"],
            [[f.evidence["stage"], f.message] for f in summary.findings if f.id == "workflow_step"],
        )
    ]
    out = [("Result", result)]
    layers = final_step.summary.model_summary if final_step is not None else None
    if layers:
        headers, rows = model_summary.table(layers)
        out.append(("Final model", [("table", headers, rows)]))
    if final_step is not None and final_step.summary.error_analysis:
        out.append(("Error analysis of the final model", error_blocks(final_step)))
    out.append(("How it got there", story))
    for step in steps:
        analysed = step is final_step and bool(step.summary.error_analysis)
        shown = SHOWN_WITH_ERROR_ANALYSIS if analysed else ()
        out.append((f"{step.name} ({step.stage})", step_blocks(step, shown)))
    out.append(("Reproduce the final model", [("code", cmd) for cmd in summary.reproduce]))
    return out


def blocks_markdown(blocks: list[tuple], root: str) -> str:
    """Blocks as GitHub-flavoured markdown, images linked relative to `root`."""
    parts = []
    for block in blocks:
        kind = block[0]
        if kind == "text":
            parts.append(block[1])
        elif kind == "table":
            parts.append(
                reporting.markdown_table(block[1], [[str(c) for c in r] for r in block[2]])
            )
        elif kind == "pairs":
            parts.append("\n".join(f"- **{key}**: {value}" for key, value in block[1]))
        elif kind == "image":
            parts.append(f"![{block[2]}]({os.path.relpath(block[1], root)})")
        elif kind == "code":
            parts.append(f"```\n{block[1]}\n```")
    return "\n\n".join(parts)


def _inline(text: str) -> str:
    """Escape, then render `code` and **bold** spans."""
    out, code, bold = [], False, False
    for i, piece in enumerate(html.escape(text).split("`")):
        if i:
            code = not code
        if code:
            out.append(f"<code>{piece}</code>" if piece else "")
            continue
        chunks = piece.split("**")
        for j, chunk in enumerate(chunks):
            if j:
                bold = not bold
                out.append("<b>" if bold else "</b>")
            out.append(chunk)
    return "".join(out)


def to_html(title: str, secs: list) -> str:
    """The blocks as one self-contained HTML page (PNG plots embedded as data URIs)."""
    body = [f"<h1>{html.escape(title)}</h1>", table_of_contents(secs)]
    for number, (heading, blocks) in enumerate(secs):
        body.append(f"<h2 {_anchor(number)}>{html.escape(heading)}</h2>")
        for block in blocks:
            kind = block[0]
            if kind == "text":
                body.append(f"<p>{_inline(block[1])}</p>")
            elif kind == "table":
                head = "".join(f"<th>{_inline(str(h))}</th>" for h in block[1])
                rows = "".join(
                    "<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in row) + "</tr>"
                    for row in block[2]
                )
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif kind == "pairs":
                rows = "".join(
                    f"<tr><th>{_inline(str(key))}</th><td>{_inline(str(value))}</td></tr>"
                    for key, value in block[1]
                )
                body.append(f"<table><tbody>{rows}</tbody></table>")
            elif kind == "image":
                with open(block[1], "rb") as f:
                    data = base64.b64encode(f.read()).decode("ascii")
                caption = html.escape(block[2])
                body.append(
                    f'<figure><img alt="{caption}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{caption}</figcaption></figure>"
                )
            elif kind == "code":
                body.append(f"<pre><code>{html.escape(block[1])}</code></pre>")
    # A wide table scrolls inside its own box, and long words (commands, paths) wrap, so that
    # the page itself never scrolls sideways on a narrow window.
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;"
        "overflow-wrap:anywhere}table{border-collapse:collapse;margin:1em 0;display:block;"
        "overflow-x:auto;max-width:100%}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:left}th{background:#f3f3f3}img{max-width:100%}pre{background:#f6f6f6;"
        "padding:8px;overflow-x:auto}figure{margin:1em 0}figcaption{color:#666;font-size:90%}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _anchor(number: int) -> str:
    """The HTML attribute that names section `number` for the table of contents."""
    return f"id='section-{number}'"


def table_of_contents(secs: list) -> str:
    """The page's sections as links."""
    items = "".join(
        f"<li><a href='#section-{number}'>{html.escape(heading)}</a></li>"
        for number, (heading, _) in enumerate(secs)
    )
    return f"<nav><h2>Contents</h2><ol>{items}</ol></nav>"


def write_reports(run: rundir.RunDir, summary: Summary, steps: list) -> None:
    """report.md and report.html at the top of the workflow's directory."""
    c = summary.config
    met = "goal met" if summary.has_finding("goal_met") else "goal not met"
    status = "" if summary.status == "ok" else f", {summary.status}"
    title = f"workflow: {c['model']['name']} on {c['dataset']['name']} ({met}{status})"
    secs = sections(summary, steps)
    run.write_report(
        title, [(heading, blocks_markdown(blocks, run.path)) for heading, blocks in secs]
    )
    run.write_text(rundir.REPORT_HTML, to_html(title, secs))


def print_summary(summary: Summary, workdir: str) -> None:
    """The story and the final numbers on the console."""
    from rich.console import Console

    console = Console()
    for f in summary.findings:
        if f.id == "workflow_step":
            console.print(f"  {f.message}", soft_wrap=True)
    from workflow.run import test_result  # the package imports this module

    m = summary.metrics
    console.print(
        f"[bold]final {test_result(summary)}[/bold] in "
        f"{m['workflow_seconds']:.0f} s; report: {os.path.join(workdir, rundir.REPORT_HTML)}",
        soft_wrap=True,
    )
    if summary.stopped:
        console.print(f"stopped: {summary.stopped}")
