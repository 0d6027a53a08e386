"""The workflow's report for a reader: the headline says whether the goal was met, tables have
no empty header row, a table of contents, and negative gaps explained."""

from tests.test_evaluate import decompose
from workflow.diagnostics import bias_variance as bv
from workflow.diagnostics.findings import Finding
from workflow.reporting.summary import Summary
from workflow.run import report


def _summary(goal_met: bool, test_accuracy: float) -> Summary:
    findings = [Finding(id="goal_met", severity="info", message="goal met")] if goal_met else []
    return Summary(
        stage="run",
        status="ok",
        config={"goal": {"test_error": 0.05}, "model": {"name": "mlp"}, "dataset": {"name": "d"}},
        metrics={"test_accuracy": test_accuracy},
        findings=findings,
        stopped=None if goal_met else "the time budget (config.budget.minutes) is spent",
    )


def test_the_headline_says_whether_the_goal_was_met_with_the_numbers():
    assert report.headline(_summary(True, 0.97)) == "**Goal met**: test error 3.00%, goal 5.00%."
    missed = report.headline(_summary(False, 0.91))
    assert missed.startswith("**Goal not met**: test error 9.00%, goal 5.00%")
    assert "time budget" in missed


def test_key_value_tables_have_no_header_row_and_the_page_has_contents():
    secs = [("Result", [("pairs", [["test accuracy", "97%"]])]), ("Steps", [("text", "x")])]
    page = report.to_html("t", secs)
    assert "<thead>" not in page and "<th>test accuracy</th><td>97%</td>" in page
    assert "<a href='#section-0'>Result</a>" in page and "<h2 id='section-1'>Steps</h2>" in page
    assert report.blocks_markdown(secs[0][1], ".") == "- **test accuracy**: 97%"


def test_a_negative_gap_is_explained_in_words():
    d = decompose(0.02, 0.03, 0.035, goal=0.05)
    line = bv.decomposition_line(d)
    assert "bias −3%" in line
    assert "train error below the goal" in line
    positive = bv.decomposition_line(decompose(0.20, 0.27, 0.28, goal=0.01))
    assert "(" not in positive
