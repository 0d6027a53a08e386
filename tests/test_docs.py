"""The docs stay true: README.md and docs/*.md against the code, the configs and the results.

README stays a guide (a bound on its length, the two commands CI runs); every link, path,
module, config file and argument, config key and finding id the docs name exists; the tables
that restate a declaration (the config keys, the models, the run directory's files, summary.json's
fields, the bug zoo) match it; and every number quoted from a `benchmarks/results/*.json` file
equals the value in that file (each such table is rendered here from its file: on a mismatch the
failure prints the table to paste). Nothing here trains: the whole file runs in seconds.
"""

import ast
import dataclasses
import difflib
import importlib
import json
import pathlib
import re
from collections.abc import Callable

import pytest

import models
from models import growth
from tests.bugzoo.cases import BROKEN, CLEAN
from workflow import config_lib
from workflow.data import readers
from workflow.diagnostics import findings
from workflow.reporting import rundir
from workflow.reporting.summary import Summary

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
RESULTS = ROOT / "benchmarks" / "results"

README_MAX_CHARS = 12_000
# The README's two commands, exactly: CI (.ci/run) installs and runs the tests as the second says.
INSTALL_AND_RUN = "pip install -e . && python -m workflow.run"
INSTALL_AND_TEST = "pip install -e '.[test]' && python -m pytest -q -n auto"
# The docs' stand-in for the reader's own package (`my_pkg.nets:MyNet`): not importable here.
EXAMPLE_PACKAGE = "my_pkg"
# Input shapes that reach every branch of the models' `next_models` (8x8 and 32x32 images,
# sequences, tables).
INPUT_SHAPES = ((8, 8, 1), (32, 32, 3), (40, 1), (20,))
FILE_SUFFIXES = ("json", "jsonl", "py", "md", "txt", "png", "db", "html")


def page_text(path: pathlib.Path) -> str:
    """A page as text."""
    return path.read_text(encoding="utf-8")


def all_pages() -> dict[str, str]:
    """Every page by its path in the repository."""
    return {str(p.relative_to(ROOT)): page_text(p) for p in PAGES}


def strip_fenced(text: str) -> str:
    """The text without its fenced code blocks (links and headings live outside them)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


# ----------------------------------------------------------------------------- markdown tables


def split_row(line: str) -> list[str]:
    """The cells of one table row; `\\|` is a literal bar inside a cell."""
    cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [c.strip().replace("\\|", "|") for c in cells]


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every table of a page as (header cells, rows of cells)."""
    out, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append(line)
            continue
        if len(block) >= 2:
            out.append((split_row(block[0]), [split_row(row) for row in block[2:]]))
        block = []
    return out


def tables_with_header(text: str, header: list[str]) -> list[list[list[str]]]:
    """The rows of every table of a page with exactly this header."""
    return [rows for head, rows in tables(text) if head == header]


def render_table(header: list[str], rows: list[list[str]]) -> str:
    """A table as the docs write it."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def assert_page_has_table(page: str, header: list[str], rows: list[list[str]]) -> None:
    """The page holds exactly this table (the message is the table to paste)."""
    expected = render_table(header, rows)
    text = page_text(ROOT / page)
    assert expected in text, f"{page} must hold this table, rendered from its source:\n{expected}"


def code_names(cell: str) -> list[str]:
    """The `names` in backticks of a cell, in order."""
    return re.findall(r"`([^`]+)`", cell)


# ----------------------------------------------------------------------------- README


def test_readme_is_a_guide_within_its_bound():
    text = page_text(README)
    assert len(text) <= README_MAX_CHARS, f"README.md has {len(text):,} characters"


def test_readme_gives_the_two_commands_ci_runs():
    lines = page_text(README).splitlines()
    assert INSTALL_AND_RUN in lines
    assert INSTALL_AND_TEST in lines
    ci = page_text(ROOT / ".ci" / "run").splitlines()
    install, test = INSTALL_AND_TEST.split(" && ")
    assert f"python -m {install.replace('pip install', 'pip install -q')}" in ci
    assert test in ci


def test_every_docs_page_is_linked_from_the_index_and_the_readme():
    index = page_text(DOCS / "README.md")
    readme = page_text(README)
    for page in sorted(DOCS.glob("*.md")):
        if page.name == "README.md":
            continue
        assert f"]({page.name}" in index, f"docs/README.md does not link {page.name}"
        assert f"](docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"
    for page in PAGES[1:]:
        assert page_text(page).startswith("# "), f"{page.name} needs a title"


# ----------------------------------------------------------------------------- links and names


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings."""
    anchors: set[str] = set()
    for match in re.finditer(r"^#+ (.+)$", strip_fenced(text), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def test_relative_links_resolve_to_files_and_headings():
    broken = []
    for path in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", strip_fenced(page_text(path))):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            file, _, anchor = target.partition("#")
            resolved = (path.parent / file).resolve() if file else path
            if not resolved.exists():
                broken.append(f"{path.name}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md":
                if anchor not in heading_anchors(page_text(resolved)):
                    broken.append(f"{path.name}: {target} (no such heading)")
    assert not broken, broken


PATH = re.compile(r"(?<![\w./-])((?:workflow|models|benchmarks|tests|configs|docs)/[\w./-]*[\w/])")


def test_named_paths_exist():
    missing = []
    for page, text in all_pages().items():
        for match in PATH.finditer(text):
            if text[match.end() : match.end() + 1] in ("*", "<"):
                continue  # a pattern, not a path
            if not (ROOT / match.group(1)).exists():
                missing.append(f"{page}: {match.group(1)}")
    assert not missing, missing


def test_named_modules_exist():
    missing = []
    for page, text in all_pages().items():
        for module in re.findall(r"python -m ((?:workflow|benchmarks)(?:\.\w+)+)", text):
            base = ROOT / module.replace(".", "/")
            if not (base.with_suffix(".py").exists() or (base / "__main__.py").exists()):
                missing.append(f"{page}: python -m {module}")
    assert not missing, missing


def resolve(dotted: str) -> object:
    """The module or attribute a dotted name names; AttributeError/ImportError if none."""
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for attr in parts[k:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_named_python_objects_exist():
    missing = []
    for page, text in all_pages().items():
        for dotted in re.findall(r"`((?:workflow|models|benchmarks)\.[\w.]*\w)`", text):
            if dotted.rsplit(".", 1)[-1] in FILE_SUFFIXES:
                continue  # a file name (workflow.json), not a Python name
            try:
                resolve(dotted)
            except (ImportError, AttributeError):
                missing.append(f"{page}: {dotted}")
    assert not missing, missing


# ----------------------------------------------------------------------------- configs

# A config file and its argument, as `--config=` takes them: configs/digits.py:mlp.
CONFIG_FILE = re.compile(r"(?<![\w/])(--config=)?(configs/\w+\.py)(?::([^\s`'\"\\|)<]+))?")


def load_config(path: str, arg: str | None):
    """A config file's config for `arg`, as `--config=path:arg` loads it."""
    return config_lib.load_config_file(str(ROOT / path), arg)


def named_configs() -> set[tuple[str, str | None]]:
    """Every config the docs name with its argument (a file named alone, not as `--config=`,
    only as a file), and every argument of the config table."""
    named = set()
    for text in all_pages().values():
        for flag, path, arg in CONFIG_FILE.findall(text):
            assert (ROOT / path).is_file(), path
            if flag or arg:
                named.add((path, arg or None))
    for row in tables_with_header(page_text(DOCS / "configs.md"), CONFIG_TABLE_HEADER)[0]:
        (path,) = code_names(row[0])
        named.update((path, arg) for arg in code_names(row[1]))
    return named


CONFIG_TABLE_HEADER = ["config", "arguments", "data", "default model"]


def test_named_configs_and_arguments_load():
    for path, arg in sorted(named_configs(), key=str):
        if arg and EXAMPLE_PACKAGE in arg:
            continue
        assert (ROOT / path).is_file(), path
        config = load_config(path, arg)
        config_lib.validate_config(config)


def config_keys() -> set[str]:
    """The keys of base_config, every model's options and the config files' loader kwargs."""
    base = config_lib.base_config("mnist1d", config_lib.model_config("mlp")).to_dict()
    keys = set(config_lib.flatten(base))
    for name in models.MODELS:
        keys.update(f"model.{option}" for option in config_lib.model_config(name))
    for path, arg in named_configs():
        if not (arg and EXAMPLE_PACKAGE in arg):
            kwargs = load_config(path, arg).dataset.kwargs.to_dict()
            keys.update(f"dataset.kwargs.{k}" for k in kwargs)
    for _, options in readers.READERS.values():  # the data files' reader options
        keys.update(f"dataset.kwargs.{k}" for k in options)
    return keys


def is_config_key(key: str, keys: set[str]) -> bool:
    """A key of the config, a block of them (`--config.model.<name>`), or the user's own
    model's options (`model.kwargs` and `model.kwargs.<name>`, an open block:
    config_lib.apply_overrides)."""
    block = any(k.startswith(f"{key}.") for k in keys)
    return key in keys or block or re.fullmatch(r"model\.kwargs(\.[a-z_]\w*)?", key) is not None


def test_config_overrides_name_existing_keys():
    keys = config_keys()
    unknown = []
    for page, text in all_pages().items():
        for key in re.findall(r"--config\.([a-z_][\w.]*\w)", text):
            if not is_config_key(key, keys):
                unknown.append(f"{page}: --config.{key}")
    assert not unknown, unknown


KEY_TABLE_HEADER = ["key", "default", "meaning"]


def test_the_key_tables_list_every_key_of_base_config_with_its_default():
    config = config_lib.base_config("mnist1d", config_lib.model_config("lstm"))
    flat = {k: v for k, v in config_lib.flatten(config.to_dict()).items()}
    expected = {k: v for k, v in flat.items() if not k.startswith("model.")}
    expected["model.name"] = flat["model.name"]
    listed = {}
    for rows in tables_with_header(page_text(DOCS / "configs.md"), KEY_TABLE_HEADER):
        for key_cell, default_cell, meaning in rows:
            (key,) = code_names(key_cell)
            (default,) = code_names(default_cell)
            assert key not in listed, f"{key} listed twice"
            assert meaning, f"{key} has no meaning"
            listed[key] = ast.literal_eval(default)
    assert sorted(listed) == sorted(expected), (
        f"missing: {sorted(set(expected) - set(listed))}; "
        f"not in base_config: {sorted(set(listed) - set(expected))}"
    )
    for key, value in expected.items():
        value = tuple(value) if isinstance(value, list) else value
        assert listed[key] == value, f"{key}: docs say {listed[key]!r}, base_config {value!r}"


MODEL_TABLE_HEADER = [
    "model",
    "class",
    "options and defaults",
    "size options",
    "depth option",
    "next",
]


def next_models(cls: type) -> list[str]:
    """The registered next models a class names for any input shape, in its order."""
    names: list[str] = []
    for shape in INPUT_SHAPES:
        names += [n for n in growth.next_models(cls, shape) if n not in names]
    return names


def test_the_model_table_is_the_zoo():
    (rows,) = tables_with_header(page_text(DOCS / "configs.md"), MODEL_TABLE_HEADER)
    assert [code_names(row[0])[0] for row in rows] == list(models.MODELS)
    for row in rows:
        (name,) = code_names(row[0])
        cls = models.MODELS[name]
        options = dict(config_lib.model_config(name))
        del options["name"]
        listed = dict(pair.split("=", 1) for pair in code_names(row[2]))
        assert {k: ast.literal_eval(v) for k, v in listed.items()} == options, name
        assert code_names(row[1]) == [cls.__name__], name
        assert code_names(row[3]) == list(growth.size_options(cls)), name
        depth = getattr(cls, "DEPTH_OPTION", None)
        assert code_names(row[4]) == ([depth] if depth else []), name
        assert code_names(row[5]) == next_models(cls), name


# ----------------------------------------------------------------------------- run directory


def test_the_run_directory_table_is_FILES():
    rows = [[f"`{name}`", meaning] for name, meaning in rundir.FILES.items()]
    assert_page_has_table("docs/run-directory.md", ["file", "what it is"], rows)


def summary_field_comments() -> dict[str, tuple[str, str]]:
    """Each Summary field's section (the comment line above its group) and its own comment."""
    source = (ROOT / "workflow" / "reporting" / "summary.py").read_text()
    body = source.split("class Summary:", 1)[1].split("    def ", 1)[0]
    out, section = {}, ""
    for line in body.splitlines():
        if re.match(r"^    # ", line):  # "# evaluate", "# tune (...)", "# Every stage's."
            section = re.sub(r" \(.*", "", line.strip()[2:].rstrip("."))
            section = "every stage" if section.startswith("Every") else section
        match = re.match(r"^    (\w+): .*?  # (.+)$", line)
        if match:
            out[match.group(1)] = (section, match.group(2))
    return out


def test_the_summary_table_is_Summary():
    comments = summary_field_comments()
    names = [field.name for field in dataclasses.fields(Summary)]
    assert list(comments) == names, "every field of Summary needs its comment"
    rows = [[f"`{name}`", comments[name][0], comments[name][1]] for name in names]
    assert_page_has_table("docs/run-directory.md", ["field", "written by", "what it holds"], rows)


# ----------------------------------------------------------------------------- findings

# Where the docs name a finding id: "an `out_of_memory` warning", "the verdict `underfit`",
# "the verdicts `underfit`, `overfit` and `val_overfit`".
ID_BEFORE_WORD = re.compile(r"`([a-z][a-z0-9_]*)` (?:findings?|warnings?|errors?|info|verdicts?)\b")
WORD_BEFORE_IDS = re.compile(
    r"\b(?:findings?|verdicts?)(?: ids?)? ((?:`[a-z][a-z0-9_]*`(?:,? and |,? or |, )?)+)"
)


def finding_ids_named(text: str) -> list[str]:
    """The finding ids a page names where its words say they are findings."""
    text = " ".join(text.split())
    named = ID_BEFORE_WORD.findall(text)
    for group in WORD_BEFORE_IDS.findall(text):
        named += re.findall(r"`([a-z0-9_]+)`", group)
    return named


def test_finding_ids_named_in_the_docs_are_declared():
    declared = set(findings.declared_ids())
    undeclared, near_misses = [], []
    for page, text in all_pages().items():
        if page == "docs/findings.md":
            continue  # generated from the registry (tests/test_findings.py)
        undeclared += [f"{page}: {i}" for i in finding_ids_named(text) if i not in declared]
        for name in set(re.findall(r"`([a-z][a-z0-9]*(?:_[a-z0-9]+)+)`", text)) - declared:
            close = difflib.get_close_matches(name, declared, n=1, cutoff=0.9)
            near_misses += [f"{page}: `{name}` (did you mean {close[0]}?)"] if close else []
    assert not undeclared, undeclared
    assert not near_misses, near_misses


def test_the_debug_checklist_table_is_the_registry_s():
    rows = [[row, ", ".join(f"`{i}`" for i in ids)] for row, ids in findings.checklist()]
    expected = "\n".join(
        "   " + line for line in render_table(["check", "findings"], rows).splitlines()
    )
    assert expected in page_text(DOCS / "stages.md"), f"docs/stages.md must hold:\n{expected}"


def test_the_walkthrough_names_the_findings_it_shows():
    text = page_text(README)
    for finding_id in ("underfit", "goal_met", "workflow_step"):
        assert f"`{finding_id}`" in text


# ----------------------------------------------------------------------------- the bug zoo


def test_the_bugzoo_table_is_the_zoo():
    rows = [[f"`{case.name}`", f"`{case.expected_id}`"] for case in BROKEN]
    assert_page_has_table("docs/benchmarks.md", ["broken setup", "expected top finding"], rows)
    text = page_text(DOCS / "benchmarks.md")
    assert f"{len(BROKEN)} broken setups" in text and f"{len(CLEAN)} clean setups" in text
    for case in CLEAN:
        assert f"`{case.name}`" in text


# ----------------------------------------------------------------------------- results


def result(name: str) -> dict:
    """A results file of benchmarks/results/."""
    return json.loads((RESULTS / name).read_text())


def results_file(name: str) -> str:
    """How a table cites a results file."""
    return f"`benchmarks/results/{name}`"


def count(value: float) -> str:
    """A count or a rate, to the unit, with thousands separators."""
    return f"{value:,.0f}"


def with_quartiles(m: dict, key: str) -> str:
    """A median ratio with its quartiles in brackets."""
    low, high = m[f"{key}_quartiles"]
    return f"{m[key]:.2f} [{low:.2f}, {high:.2f}]"


def cpu_throughput_table() -> tuple[list[str], list[list[str]]]:
    """Steps/s of each method and the per-round ratios, from train_throughput's JSON."""
    header = [
        "model",
        "ours",
        "`nnx.jit` loop",
        "bare `lax.scan`",
        "PyTorch eager",
        "ours / `nnx.jit` loop",
        "ours / scan",
        "scan copy / scan",
        "ours / PyTorch",
    ]
    rows = []
    for name, label in (("mlp", "MLP"), ("cnn", "CNN"), ("lstm", "LSTM")):
        m = result("cpu_train_throughput.json")["models"][name]
        rows.append(
            [
                f"{label} ({m['rounds']} rounds)",
                count(m["ours_steps_per_s"]),
                count(m["nnx_jit_loop_steps_per_s"]),
                count(m["scan_reference_steps_per_s"]),
                count(m["torch_eager_steps_per_s"]),
                with_quartiles(m, "ours_over_nnx_jit_loop"),
                with_quartiles(m, "ours_over_scan_reference"),
                with_quartiles(m, "control_over_scan_reference"),
                with_quartiles(m, "ours_over_torch_eager"),
            ]
        )
    return header, rows


def setup_compile_table() -> tuple[list[str], list[list[str]]]:
    """The set-up steps' seconds, from compile_cache --setup's JSON."""
    s = result("cpu_setup_compile.json")["seconds"]
    rows = [
        ["importing scikit-learn (avoided: digits are read from its CSV)", s["import_sklearn"]],
        ["initializing LeNet op by op (eager)", s["init_eager"]],
        ["initializing it as one program, XLA's lowest optimization level", s["init_program"]],
        ["the same program at XLA's default level", s["init_program_default_level"]],
    ]
    return ["set-up step (digits, LeNet)", "seconds"], [[what, f"{v:.2f}"] for what, v in rows]


def seeds_precision_table() -> tuple[list[str], list[list[str]]]:
    """Test accuracy per seed and matmul precision on the H100."""
    r = result("h100_mnist1d_seeds_precision.json")
    header = [
        "seed",
        "MLP, default precision",
        "CNN, default precision",
        "MLP, `highest`",
        "CNN, `highest`",
    ]
    rows = []
    for seed in range(3):
        cells = [
            r[f"{p}_{seed}"][m]["test_accuracy"]
            for p in ("default", "highest")
            for m in ("mlp", "cnn")
        ]
        rows.append([str(seed), *(f"{c:.1%}" for c in cells)])
    return header, rows


H100_THROUGHPUT = (
    ("LeNet (28×28×1)", "h100_gpu_suite.json", "lenet"),
    ("ResNet-20 (32×32×3)", "h100_gpu_suite_throughput.json", "resnet20"),
    ("LSTM-128 (40×1)", "h100_gpu_suite_throughput.json", "lstm"),
    ("LSTM-128, its own backward", "h100_lstm_custom_vjp_throughput.json", "lstm"),
)


def h100_throughput_table() -> tuple[list[str], list[list[str]]]:
    """Examples/s in float32 and bfloat16 at the batch the suite chose."""
    header = [
        "model",
        "batch",
        "float32 examples/s",
        "bfloat16 examples/s",
        "bfloat16 ÷ float32",
        "results",
    ]
    rows = []
    for label, file, name in H100_THROUGHPUT:
        t = result(file)["throughput"][name]
        f32, bf16 = t["float32"]["examples_per_s"], t["bfloat16"]["examples_per_s"]
        batch = t["float32"]["batch"]
        rows.append(
            [label, count(batch), count(f32), count(bf16), f"{bf16 / f32:.2f}", results_file(file)]
        )
    return header, rows


def h100_search_table() -> tuple[list[str], list[list[str]]]:
    """Trials/s of batched trials against runs one by one on the H100."""
    s = result("h100_gpu_suite.json")["search"]
    header = ["trials", "trials/s", "× one by one", "one call"]
    rows = [
        [
            f"{s['sequential_runs']} runs one by one",
            f"{s['sequential_trials_per_s']:.1f}",
            "1.0",
            f"{s['wall_seconds']['sequential'] * 1000:.0f} ms",
        ]
    ]
    for n in s["batched"]:
        rows.append(
            [
                f"{n} in one program",
                count(s["batched"][n]),
                f"{s['ratio_to_sequential'][n]:.1f}",
                f"{s['wall_seconds'][n] * 1000:.0f} ms",
            ]
        )
    return header, rows


H100_MNIST1D = (
    ("MLP 40-100-100-10", "h100_gpu_suite.json", "mlp"),
    ("CNN (3 strided conv1d)", "h100_gpu_suite.json", "cnn"),
    ("LSTM, 32 units", "h100_gpu_suite.json", "lstm"),
    ("LSTM, 32 units, its own backward", "h100_lstm_custom_vjp_mnist1d.json", "lstm"),
)


def h100_mnist1d_table() -> tuple[list[str], list[list[str]]]:
    """The MNIST-1D reproduction on the H100."""
    header = ["model", "test accuracy", "steps/s", "wall seconds", "results"]
    rows = []
    for label, file, name in H100_MNIST1D:
        r = result(file)
        m = r["mnist1d"][name] if "mnist1d" in r else r[name]
        rows.append(
            [
                label,
                f"{m['test_accuracy']:.1%}",
                count(m["steps_per_s"]),
                f"{m['wall_seconds']:.1f}",
                results_file(file),
            ]
        )
    return header, rows


def oom_table() -> tuple[list[str], list[list[str]]]:
    """oom_check's scenarios on the H100: exit code, status, finding, attempts."""
    r = result("h100_oom_check.json")["scenarios"]
    header = ["scenario", "exit code", "status", "finding", "batch sizes tried", "seconds"]
    rows = []
    for name, s in r.items():
        tried = ", ".join(
            f"{count(b)} ({outcome.replace('_', ' ')})"
            for b, outcome in s["out_of_memory"]["attempts"]
        )
        severity, finding_id = s["findings"][0].split(":")
        found = f"`{finding_id}` {severity}"
        rows.append(
            [f"`{name}`", str(s["exit_code"]), s["status"], found, tried, f"{s['seconds']:.0f}"]
        )
    return header, rows


def baselines_speed_table() -> tuple[list[str], list[list[str]]]:
    """Each baseline's training steps/s on the H100 and what num_steps of them take."""
    r = result("h100_baselines_speed.json")
    header = ["baseline", "dtype", "batch", "steps/s", "examples/s", "training steps take"]
    rows = []
    for key, m in r.items():
        if "/" not in key:
            continue
        name, dtype = key.split("/")
        minutes = m["train_minutes"]
        took = f"{minutes * 60:.1f} s" if minutes < 1 else f"{minutes:.1f} min"
        rows.append(
            [
                f"`{name}`",
                dtype,
                str(m["batch"]),
                count(m["steps_per_s"]),
                count(m["examples_per_s"]),
                took,
            ]
        )
    return header, rows


def bugzoo_category_table() -> tuple[list[str], list[list[str]]]:
    """The bug zoo per fault category: top-1, detection, false alarms, the config-fixable cases
    `debug.fix` repaired, time to verdict."""
    r = result("cpu_bugzoo.json")["per_category"]
    header = [
        "category",
        "cases",
        "right at top-1",
        "detected",
        "false alarms",
        "repaired by `debug.fix`",
        "verdict median / max (s)",
    ]
    rows = []
    for name, c in r.items():
        clean = name == "clean"
        rows.append(
            [
                name,
                str(c["cases"]),
                "-" if clean else f"{c['correct_top1']}/{c['cases']}",
                "-" if clean else f"{c['detection_rate']:.0%}",
                str(c["false_alarms"]) if clean else "-",
                f"{c['repaired']}/{c['config_fixable']}" if c.get("config_fixable") else "-",
                f"{c['seconds_median']:.1f} / {c['seconds_max']:.1f}",
            ]
        )
    return header, rows


RESULT_TABLES: tuple[tuple[str, Callable[[], tuple[list[str], list[list[str]]]]], ...] = (
    ("docs/benchmarks.md", cpu_throughput_table),
    ("docs/benchmarks.md", setup_compile_table),
    ("docs/benchmarks.md", seeds_precision_table),
    ("docs/benchmarks.md", h100_throughput_table),
    ("docs/benchmarks.md", h100_search_table),
    ("docs/benchmarks.md", h100_mnist1d_table),
    ("docs/benchmarks.md", oom_table),
    ("docs/benchmarks.md", bugzoo_category_table),
    ("docs/baselines.md", baselines_speed_table),
)


@pytest.mark.parametrize(("page", "render"), RESULT_TABLES, ids=lambda x: getattr(x, "__name__", x))
def test_tables_from_results_match_their_files(page, render):
    header, rows = render()
    assert_page_has_table(page, header, rows)


def test_every_results_file_is_cited():
    text = "\n".join(all_pages().values())
    for path in sorted(RESULTS.glob("*.json")):
        assert f"benchmarks/results/{path.name}" in text, f"no docs page cites {path.name}"


def test_the_baselines_configs_use_the_measured_step_counts():
    # "training steps take" is num_steps over the measured steps/s of the very config.
    for key, m in result("h100_baselines_speed.json").items():
        if "/" in key:
            config = load_config("configs/baselines.py", key.split("/")[0])
            assert m["train_minutes"] == pytest.approx(config.num_steps / m["steps_per_s"] / 60)


# ----------------------------------------------------------------------------- the walkthrough


def test_the_walkthrough_quotes_the_stored_run():
    run = result("cpu_workflow_run.json")
    summary, steps = run["summary"], run["steps"]
    text = page_text(README)
    lines = text.splitlines()
    prose = " ".join(text.split())  # quotes may wrap across lines
    for f in summary["findings"]:
        if f["id"] == "workflow_step":
            assert f"  {f['message']}" in lines, f["message"]
    m = summary["metrics"]
    final = (
        f"final test accuracy {m['test_accuracy']:.2%} in {m['workflow_seconds']:.0f} s; "
        f"report: {summary['final']['workdir']}/../report.html"
    )
    assert final in lines
    assert run["command"] in text
    # The final decomposition, as the report prints it.
    for row in steps["5_evaluate"]["bias_variance"]["rows"]:
        assert "| " + " | ".join(row) + " |" in lines, row
    # The evidence quoted for each decision.
    quoted = [
        steps["3_evaluate"]["findings"][0]["message"],
        next(f["message"] for f in summary["findings"] if f["id"] == "goal_met"),
    ]
    tune = steps["4_tune"]
    rounds = tune["rounds"]
    quoted += [
        ", ".join(str(r["num_trials"]) for r in rounds[:-1])
        + f" and {rounds[-1]['num_trials']} trials",
        ", ".join(f"{r['epochs']:g}" for r in rounds[:-1])
        + f" and {rounds[-1]['epochs']:g} epochs",
        f"{tune['range_test']['suggested_lr']:.3g}",
        "{:.3g}..{:.3g}".format(*tune["range_test"]["band"]),
        f"{tune['metrics']['best_trial_val_accuracy']:.2%}",
        f"{steps['1_start_simple']['metrics']['test_accuracy']:.0%}",
        f"{tune['metrics']['initial_loss']:.3f} against an expected "
        f"{tune['metrics']['expected_initial_loss']:.3f}",
        "{} min {} s".format(*divmod(run["command_wall_seconds"], 60))
        if run["command_wall_seconds"] >= 60
        else f"{run['command_wall_seconds']} s",
    ]
    for quote in quoted:
        assert quote in prose, quote
