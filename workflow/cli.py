"""What every stage script shares: the --config/--workdir flags and the exit-code contract."""

import ast
import contextlib
import errno
import importlib
import os
import re
import runpy
import signal
import sys
import traceback
from collections.abc import Callable

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from workflow import config_lib
from workflow.errors import UsageError, UserCodeError

CONFIGS_DIR = config_lib.project_file("configs")  # the checkout's, or the installed package's

EXIT_OK, EXIT_FINDINGS, EXIT_BAD_INPUT = 0, 1, 2
EXIT_INTERRUPTED = 128 + 2  # SIGINT, as a shell reports a process it stopped

_stage: str | None = None  # the stage define_flags was called for (run directory, findings)


def define_flags(stage: str) -> None:
    """--config (a configs/*.py file, overridable key by key) and --workdir."""
    global _stage
    _stage = stage
    # --help prints the stage's own description (its package's docstring) above the flags.
    sys.modules["__main__"].__doc__ = importlib.import_module(f"workflow.{stage}").__doc__
    sys.argv[1:] = resolve_config_arg(sys.argv[1:])
    check_config_path(sys.argv[1:])
    try:
        # config_flags applies --config.* overrides from sys.argv already here, at definition;
        # the open ones (model and dataset names, their options) are applied by parse_flags.
        config_flags.DEFINE_config_file(
            "config",
            os.path.join(CONFIGS_DIR, "mnist1d.py"),
            "Problem config: configs/<problem>.py[:arg], a Python file (loading it runs it); "
            "override keys as --config.a.b=value; your model's and loader's own options as "
            "--config.model.kwargs.<name>=value and --config.dataset.kwargs.<name>=value.",
            lock_config=True,
            sys_argv=split_open_overrides(sys.argv)[0],
        )
    except (KeyError, AttributeError) as e:
        key = str(e).strip("\"'")
        given = [a for a in sys.argv[1:] if a.startswith("--config.") and key in a]
        fail(unknown_key_line(key, given[0] if given else None, sys.argv[1:]))
    except Exception as e:  # noqa: BLE001 - any failure to build the config is bad input
        fail(flag_error_line(f"{type(e).__name__}: {e}"))
    flags.DEFINE_string("workdir", os.path.join("runs", stage), "Run directory to write.")
    flags.DEFINE_bool(
        "verbose", False, "On an error in your own code (model, loss, loader), print its traceback."
    )
    flags.DEFINE_string(
        "compilation_cache",
        None,
        "JAX persistent compilation cache directory (default: <data cache>/jax; 'off' disables "
        "it). A second run of the same setup then skips compilation.",
    )
    # Multi-host runs (workflow/engine/distributed.py): all three, or none to read the cluster's
    # environment (SLURM, Cloud TPU) or to run as one process.
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
    flags.DEFINE_integer("num_processes", None, "How many processes run this job (multi-host).")
    flags.DEFINE_integer("process_id", None, "This process's id in [0, num_processes).")


def enable_compilation_cache(path: str | None) -> None:
    """Turn on JAX's persistent compilation cache: a repeated run reads its programs back
    instead of compiling them again (benchmarks/compile_cache.py times the difference)."""
    if path == "off":
        return
    import jax

    from workflow import data

    path = path or str(data.cache_dir() / "jax")
    jax.config.update("jax_compilation_cache_dir", path)
    # Cache every program: by default JAX caches only those that compile for over a second,
    # which most of ours do not.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def resolve_config_arg(argv: list[str]) -> list[str]:
    """argv with a --config=configs/x.py that is not in the current directory pointed at the
    workflow's own configs/x.py (config_lib.resolve_config_path): it works from any directory."""
    out = []
    for arg in argv:
        if arg.startswith("--config="):
            path, sep, rest = arg.split("=", 1)[1].partition(":")
            arg = f"--config={config_lib.resolve_config_path(path)}{sep}{rest}"
        out.append(arg)
    return out


def check_config_path(argv: list[str]) -> None:
    """A --config file that does not exist: name it and list the configs that do."""
    for arg in argv:
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1].split(":", 1)[0]
            if not os.path.isfile(path):
                available = sorted(f for f in os.listdir(CONFIGS_DIR) if f.endswith(".py"))
                fail(
                    f"config file {path!r} does not exist; available in {CONFIGS_DIR}: "
                    f"{', '.join(available)}"
                )


def fail(message: str) -> None:
    """Exit 2 with one line on stderr naming the bad value and what is valid."""
    last_line(f"error: {message}")
    sys.exit(EXIT_BAD_INPUT)


def last_line(line: str) -> None:
    """Print `line` on stderr as the last thing the process says there: threads a failure left
    behind (Orbax's and tensorstore's, after a full disk) may print tracebacks as they die, so
    stderr goes to /dev/null first and the line to what it was."""
    sys.stderr.flush()
    stderr = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    os.write(stderr, f"{line}\n".encode())
    os.close(stderr)


def fail_on(error: UsageError, verbose: bool) -> None:
    """`fail` with the error's line; the user's code's traceback above it with --verbose."""
    if verbose and error.__cause__ is not None:
        traceback.print_exception(error.__cause__, file=sys.stderr)
    if isinstance(error, UserCodeError):
        fail(error.line() if verbose else error.line("--verbose prints the traceback"))
    fail(str(error))


def check_workdir(workdir: str) -> None:
    """A --workdir that names a directory: an empty one would write into the current one."""
    if not workdir.strip():
        fail("--workdir is empty: name the run directory to write, e.g. --workdir=runs/x")


def check_config_type(config, flag) -> None:
    """A config file's get_config() must return a ConfigDict (a plain dict has no checks)."""
    if not isinstance(config, ml_collections.ConfigDict):
        name = config_flags.get_config_filename(flag)
        fail(
            f"config file {name!r}: get_config() returned {type(config).__name__}; it must "
            "return an ml_collections.ConfigDict (see configs/mnist1d.py)"
        )


_interrupt = {"received": False}  # set by Ctrl-C (SIGINT) for the rest of the process


def _on_interrupt(signum, frame) -> None:
    """Python's own SIGINT behaviour, remembered: code that catches KeyboardInterrupt and
    raises something else (JAX wraps it when it lands in a host callback) still stops as an
    interruption."""
    _interrupt["received"] = True
    raise KeyboardInterrupt


def interrupted(workdir: str) -> None:
    """Ctrl-C: one line and exit 130 (128 + SIGINT), with how to resume."""
    last_line(
        f"interrupted: what {workdir} holds is complete; the same command resumes from there "
        "(the last checkpoint, the finished trials and steps)"
    )
    sys.exit(EXIT_INTERRUPTED)


def flag_error_line(message: str) -> str:
    """One line from a flag error; config_flags embeds the config file's traceback in it."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not any(line.startswith("Traceback") for line in lines):
        return lines[0] if lines else "invalid flags"
    # The last line of an embedded traceback is "module.ExceptionType: message".
    last = lines[-1]
    return re.sub(r"^[\w.]*UsageError: ", "", last)


def split_open_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """(argv without them, {key: value as typed}): the --config.* overrides that
    config_lib.apply_overrides applies rather than config_flags (config_lib.open_override):
    a model or dataset name, which replaces its block's options, and the options of a user's
    model or loader, which a locked config does not list."""
    keys = [_override_key(a) for a in argv]
    model_name_given = "model.name" in keys
    rest, open_values = [], {}
    i = 0
    while i < len(argv):
        arg, key = argv[i], keys[i]
        if key is None or not config_lib.open_override(key, model_name_given):
            rest.append(arg)
        elif "=" in arg:
            open_values[key] = arg.split("=", 1)[1]
        elif i + 1 < len(argv):  # --config.key value
            open_values[key] = argv[i + 1]
            i += 1
        else:
            fail(f"--config.{key} has no value; write --config.{key}=value")
        i += 1
    return rest, open_values


def _override_key(arg: str) -> str | None:
    match = re.match(r"^--?config\.([^=]+)", arg)
    return match.group(1) if match else None


def parse_value(text: str):
    """A command line's value as config_flags reads a new key's: a Python literal, else the
    string itself (`64` an int, `(64, 32)` a tuple, `target` a string)."""
    if text in ("true", "false"):
        text = text.capitalize()
    try:
        return ast.literal_eval(text)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return text


def apply_open_overrides(config, values: dict[str, str]) -> None:
    """The open overrides (split_open_overrides) applied to the parsed config; names as typed,
    options read as literals."""
    parsed = {k: v if k.endswith(".name") else parse_value(v) for k, v in values.items()}
    config_lib.apply_overrides(config, parsed)


def unknown_key_line(key: str, given: str | None, argv: list[str]) -> str:
    """The line for an override of a key the config does not have: the keys its block has."""
    where = given or "an override"
    path = _override_key(given or "") or key
    parent = path.rpartition(".")[0]
    try:
        config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
        file, _, arg = (config_arg or os.path.join(CONFIGS_DIR, "mnist1d.py")).partition(":")
        node = config_lib.load_config_file(file, arg or None)
        for part in parent.split(".") if parent else []:
            node = node[part]
        keys = ", ".join(sorted(node.keys()))
    except Exception:  # noqa: BLE001 - the list is a courtesy; the line stands without it
        keys = None
    has = f"; {parent or 'config'} has: {keys}" if keys else ""
    hint = ""
    if parent == "model":
        hint = " (your own model's options: --config.model.kwargs.<name>=value)"
    elif parent.startswith("dataset"):
        hint = " (your loader's options: --config.dataset.kwargs.<name>=value)"
    return f"unknown config key {key!r} in {where}{has}{hint}"


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with bad flags and bad configs turned into exit code 2."""
    argv, open_values = split_open_overrides(resolve_config_arg(argv))
    try:
        rest = flags.FLAGS(argv)
        if isinstance(flags.FLAGS.config, ml_collections.ConfigDict):
            apply_open_overrides(flags.FLAGS.config, open_values)
        return rest
    except UsageError as e:
        fail(str(e))
    except flags.Error as e:
        fail(flag_error_line(str(e)))
    except (KeyError, AttributeError) as e:
        key = str(e).strip("\"'")
        given = [a for a in argv[1:] if _override_key(a) and key in _override_key(a).split(".")]
        if not given:
            fail(f"cannot load the config: {type(e).__name__}: {' '.join(str(e).split())}")
        fail(unknown_key_line(key, given[0], argv[1:]))
    except Exception as e:  # noqa: BLE001 - a config file that fails to load is bad input too
        fail(f"cannot load the config: {type(e).__name__}: {' '.join(str(e).split())}")


def jit_mode(config) -> contextlib.AbstractContextManager:
    """jax.disable_jit() when config.debug.disable_jit is set: every stage then runs op by op,
    so a breakpoint in a model's __call__ sees concrete arrays (lax.scan becomes a loop)."""
    debug = config.get("debug") or {}
    if debug.get("disable_jit", False) is not True:
        return contextlib.nullcontext()
    import jax

    print(
        "note: jit is disabled (debug.disable_jit): every operation runs eagerly, about 100x "
        "slower; lower num_steps and the debug stage's overfit_steps/train_steps",
        file=sys.stderr,
    )
    return jax.disable_jit()


# Errors of the place a stage writes to (full disk, quota, permissions, read-only, a file in
# the way): the user's environment, reported in one line like bad input.
_FREE = "free space (or choose a --workdir on another disk)"
_WRITABLE = "choose a writable --workdir"
STORAGE_ERRNOS = {
    errno.ENOSPC: ("no space left on the device", _FREE),
    errno.EDQUOT: ("disk quota exceeded", _FREE),
    errno.EACCES: ("permission denied", _WRITABLE),
    errno.EPERM: ("operation not permitted", _WRITABLE),
    errno.EROFS: ("read-only file system", _WRITABLE),
    errno.ENOTDIR: ("a file is in the way of a directory", "choose a --workdir under directories"),
    errno.EEXIST: ("a file is in the way of a directory", "choose a --workdir under directories"),
}


def storage_error_line(error: OSError) -> str | None:
    """One line for an error writing the run directory, or None for any other OSError."""
    if error.errno not in STORAGE_ERRNOS:
        return None
    reason, fix = STORAGE_ERRNOS[error.errno]
    where = error.filename or "the run directory"
    return (
        f"cannot write {where}: {reason}; {fix}. What was written is complete: the same "
        "command then resumes from the last checkpoint"
    )


def run(main: Callable[[list[str]], int]) -> None:
    """Run a stage's main; UsageError anywhere becomes exit 2, and main's int is the exit code.

    Every stage holds its run directory's lock for its whole life (another process there is
    refused, exit 2), runs under debug.disable_jit if set, and running out of device memory
    becomes an `out_of_memory` finding in the run directory (exit 1) instead of a traceback.
    The user's own code raising is one line (its traceback with --verbose), and Ctrl-C one line
    with how to resume (exit 130): see docs/reliability.md.
    """

    def guarded(argv: list[str]) -> None:
        logging.set_verbosity(logging.WARNING)
        workdir = flags.FLAGS.workdir
        check_workdir(workdir)
        check_config_type(flags.FLAGS.config, flags.FLAGS["config"])
        signal.signal(signal.SIGINT, _on_interrupt)
        # After Ctrl-C the process says only that: JAX logs a callback the interrupt landed in.
        logging.get_absl_handler().addFilter(lambda record: not _interrupt["received"])
        try:
            code = run_stage(argv, workdir)
        except KeyboardInterrupt:
            interrupted(workdir)
        except Exception:
            if _interrupt["received"]:
                interrupted(workdir)
            raise
        sys.exit(code or EXIT_OK)

    def run_stage(argv: list[str], workdir: str) -> int:
        """The stage's main under its lock, the jit mode and the memory guard; bad input and
        storage errors exit 2 with one line."""
        try:
            from workflow.diagnostics import memory
            from workflow.engine import distributed
            from workflow.reporting import rundir

            distributed.initialize(
                flags.FLAGS.coordinator_address, flags.FLAGS.num_processes, flags.FLAGS.process_id
            )
            if not distributed.is_writer():  # one console for the job: process 0's
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the process's life
            enable_compilation_cache(flags.FLAGS.compilation_cache)
            config = flags.FLAGS.config
            stage = _stage or main.__module__.rsplit(".", 1)[-1]
            # One process at a time owns the run directory, for the stage's whole life.
            with rundir.locked(workdir, stage), jit_mode(config):
                return memory.run_guarded(lambda: main(argv), config, workdir, stage)
        except UsageError as e:
            if _interrupt["received"]:
                raise KeyboardInterrupt from e
            fail_on(e, flags.FLAGS.verbose)
        except OSError as e:
            line = storage_error_line(e)
            if line is None or _interrupt["received"]:
                raise
            fail(line)

    app.run(guarded, flags_parser=parse_flags)


# The stages the console command runs, as `dnn-troubleshoot <stage> --config=... --workdir=...`.
STAGES = ("start_simple", "debug", "evaluate", "tune", "improve", "run")


CONSOLE_USAGE = (
    "usage: dnn-troubleshoot <stage> --config=<file> --workdir=<dir>, the stage one of "
    f"{', '.join(STAGES)}"
)


def console_main() -> None:
    """The `dnn-troubleshoot` console command: `dnn-troubleshoot <stage> [flags]` runs
    `python -m workflow.<stage> [flags]` (start_simple also spelled start-simple).

    Unlike `python -m`, which puts the current directory first on sys.path and so imports a
    project's own `workflow` package from there before any of this code runs, the command's
    script directory leads sys.path: the installed workflow is the one imported. The current
    directory is then appended, so the user's modules a command line names
    (`--config.model.name=my_model:Model`) import as under `python -m`.
    """
    args = sys.argv[1:]
    if args[:1] in (["-h"], ["--help"]):
        print(CONSOLE_USAGE)
        print("each stage's own flags: dnn-troubleshoot <stage> --help")
        sys.exit(0)
    stage = args[0].replace("-", "_") if args else ""
    if stage not in STAGES:
        given = f"unknown stage {args[0]!r}" if args else "no stage given"
        fail(f"{given}; {CONSOLE_USAGE}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    sys.argv = [f"dnn-troubleshoot {stage}", *args[1:]]
    runpy.run_module(f"workflow.{stage}", run_name="__main__", alter_sys=True)
