"""The study contract shared by every experiment script.

Every study: absl flags with validators; ``--output_dir`` (default ``runs/<study>-<timestamp>``),
``--seed``, ``--data`` / ``--test_data`` to run on the user's own CSV/NPZ; writes
``results.json`` + ``report.md`` (+ PNG plots when matplotlib is installed); a bad flag or bad
input file ends with a one-line message on stderr and exit code 2.

``run_study`` parses the flags: ``--help`` / ``-?`` / ``--helpshort`` print the study's own flags and
the shared ones defined here (absl alone would list only the main module's), ``--helpfull`` every
flag; all three on stdout, exit 0. ``prepare_output_dir`` creates the directory and checks that a
file can be created in it (an unusable ``--output_dir`` is a one-line error before any training);
a directory that already holds results is never overwritten unless ``--overwrite`` is given, and
directories it created are removed again if they are still empty when the study fails. Files are
written atomically (temporary file, fsync, rename) with the mode a plain ``open()`` gives,
``0o666`` less the umask.

A study's opening and closing are helpers too: ``define_hidden_flag`` / ``hidden_widths`` (the
``--hidden`` widths), ``study_data`` (the user's files or generated data), ``layer_sizes_for``
(``(n_in, *hidden, n_out)`` from the data) and ``finish_study`` (``results.json``, ``report.md``
with the plots linked, the closing ``wrote ...`` line).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import pathlib
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from deepopt import data as data_lib
from deepopt import model, tasks, train

FLAGS = flags.FLAGS
EXIT_USAGE = 2


class StudyInputError(Exception):
    """A user's input (a flag value, a data file) cannot be used; reported in one line, exit 2."""


def define_study_flags() -> None:
    """Define the flags every study shares: output_dir, overwrite, seed, data, test_data, test_fraction, data_dtype."""
    flags.DEFINE_string("output_dir", None, "Directory for results.json, report.md and plots (default runs/<study>-<timestamp>).")
    flags.DEFINE_bool("overwrite", False, "Allow writing into an output_dir that already holds results.json.")
    flags.DEFINE_integer("seed", 0, "Seed of the data and of the model keys.", lower_bound=0)
    flags.DEFINE_string("data", None, "Your own training data, .csv (header row, last column the label) or .npz (X, y).")
    flags.DEFINE_string("test_data", None, "Your own test data (same format); without it, --test_fraction of --data is held out.")
    flags.DEFINE_float("test_fraction", 0.25, "Fraction of --data held out as test set when --test_data is not given.")
    flags.DEFINE_enum("data_dtype", "float32", ["float32", "bfloat16", "float16"],
                      "The dtype --data and --test_data train in (16-bit: float32 master weights, deepopt.precision).")
    flags.DEFINE_string(
        "compilation_cache", None,
        "Directory of JAX's persistent compilation cache, so a second run loads its programs instead of compiling "
        "them (default: $JAX_COMPILATION_CACHE_DIR, else $XDG_CACHE_HOME/deepopt/jax, i.e. ~/.cache/deepopt/jax); "
        "'off' turns it off.",
    )
    for name in ("data", "test_data"):
        flags.register_validator(
            name,
            lambda path: path is None or os.path.isfile(path),
            message=f"--{name} must name an existing .csv or .npz file",
        )
    flags.register_validator(
        "test_fraction", lambda value: 0 < value < 1, message="--test_fraction must be in (0, 1)"
    )
    flags.register_multi_flags_validator(
        ["data", "test_data"],
        lambda values: values["test_data"] is None or values["data"] is not None,
        message="--test_data needs --data",
    )


HIDDEN_MESSAGE = "--hidden must be a comma-separated list of positive ints"


def _absl_module_name(depth: int) -> str:
    """The name absl files flags under for the module ``depth`` frames up (``sys.argv[0]`` for ``__main__``)."""
    name = sys._getframe(depth + 1).f_globals.get("__name__", "__main__")
    return sys.argv[0] if name == "__main__" else name


def define_hidden_flag(
    default: Sequence[str],
    help: str = "Hidden layer widths.",
    *,
    non_empty: bool = False,
    message: str = HIDDEN_MESSAGE,
) -> flags.FlagHolder:
    """Define ``--hidden`` (comma-separated widths, read with ``hidden_widths``) and its validator, for the calling script.

    The flag belongs to the caller's module, so the study's ``--help`` lists it among its own.
    ``non_empty`` refuses an empty list (``--hidden=``, no hidden layer); ``message`` is the
    validator's error.
    """
    holder = flags.DEFINE_list("hidden", list(default), help, module_name=_absl_module_name(1))
    flags.register_validator(
        "hidden",
        lambda widths: (bool(widths) or not non_empty) and all(width.isdigit() and int(width) > 0 for width in widths),
        message=message,
    )
    return holder


def hidden_widths() -> tuple[int, ...]:
    """``--hidden`` as ints."""
    return tuple(int(width) for width in FLAGS.hidden)


class _StudyHelpFlag(flags.BooleanFlag):
    """A help flag that prints to stdout and exits 0: the study's and the shared flags, or every flag (``full``)."""

    def __init__(self, name: str, short_name: str | None, full: bool, describe: Callable[[bool], str]) -> None:
        super().__init__(
            name, False, "show every flag" if full else "show the study's own and the shared flags",
            short_name=short_name, allow_override=True, allow_hide_cpp=True,
        )
        self._full = full
        self._describe = describe

    def parse(self, argument: Any) -> None:
        """Parse the value; when true, print the help and exit 0."""
        super().parse(argument)
        if self.value:
            sys.stdout.write(self._describe(self._full))
            sys.stdout.flush()
            sys.exit(0)


def _module_flags_help(module_name: str, title: str) -> str:
    """absl's help for the flags of one module, under ``title`` instead of the module's registry name."""
    text = FLAGS.module_help(module_name)
    header = f"\n{module_name}:"
    return f"\n{title}:" + text[len(header):] if text.startswith(header) else text


def study_help(module_name: str, full: bool = False) -> str:
    """The help text of the study defined in ``module_name``: its docstring, its flags and the shared ones (or all)."""
    module = sys.modules.get(module_name)
    doc = (module.__doc__ if module is not None else None) or f"\nUSAGE: {sys.argv[0]} [flags]\n"
    if full:
        flag_text = FLAGS.get_help()
    else:
        spec = getattr(module, "__spec__", None)
        study_name = spec.name if spec is not None else module_name  # "experiments.<study>" rather than "__main__"
        parts = [_module_flags_help(module_name, f"{study_name} (this study)")]
        if module_name != __name__:
            parts.append(_module_flags_help(__name__, f"{__name__} (shared by every study)"))
        flag_text = "\n".join(part for part in parts if part)
    footer = "" if full else "\nTry --helpfull to get a list of all flags.\n"
    return doc.rstrip("\n") + "\n\nflags:\n" + flag_text + "\n" + footer


_created_dirs: list[pathlib.Path] = []  # directories prepare_output_dir created in this process, outermost first


def remove_created_dirs() -> list[pathlib.Path]:
    """Remove the directories ``prepare_output_dir`` created in this process that are still empty; returns them.

    Only directories this process created are touched, innermost first, and ``os.rmdir`` never removes
    one that holds anything.
    """
    removed = []
    while _created_dirs:
        directory = _created_dirs.pop()
        try:
            os.rmdir(directory)
        except OSError:
            continue
        removed.append(directory)
    return removed


def run_study(main: Callable[[list[str]], Any]) -> None:
    """``app.run(main)`` with the contract's errors: a bad flag or a ``StudyInputError`` prints one line, exits 2.

    ``--help`` / ``-?`` / ``--helpshort`` list the study's own flags and the shared ones on stdout and
    exit 0 (``--helpfull``: every flag). When ``main`` fails in any way, the output directories it
    created and left empty are removed.
    """
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "study"
    module_name = getattr(main, "__module__", None) or "__main__"

    def describe(full: bool) -> str:
        return study_help(module_name, full)

    def parse_flags(argv: list[str]) -> list[str]:
        # app.run has defined absl's help flags (exit 1, main module only) by now; these replace them.
        for name, short_name, full in (("help", "?", False), ("helpshort", None, False), ("helpfull", None, True)):
            flags.DEFINE_flag(_StudyHelpFlag(name, short_name, full, describe), module_name="absl.app")
        try:
            return FLAGS(argv)
        except flags.Error as error:
            print(f"{program}: error: {error}".splitlines()[0], file=sys.stderr)
            sys.exit(EXIT_USAGE)

    def guarded_main(argv: list[str]) -> None:
        if len(argv) > 1:
            print(f"{program}: error: unexpected arguments {argv[1:]}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        logging.set_verbosity(logging.WARNING)  # studies print their own progress
        if "compilation_cache" in FLAGS:
            use_compilation_cache(FLAGS.compilation_cache)
        try:
            main(argv)
        except StudyInputError as error:
            remove_created_dirs()
            print(f"{program}: error: {error}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        except SystemExit as exit_:
            if exit_.code not in (None, 0):
                remove_created_dirs()
            raise
        except BaseException:
            remove_created_dirs()
            raise

    app.run(guarded_main, flags_parser=parse_flags)


CACHE_MIN_COMPILE_SECONDS = 0.0
"""The scripts cache every program, the many small eager ones too: JAX's 1 s default would skip chunk programs
that compile in about that time, and any threshold above 0 skips the dozens of small programs that
``data.make_moons`` compiles for each new ``n``, which a new process loads much faster than it compiles them
(measurements: docs/engine-measurements.md)."""


def default_cache_dir() -> str:
    """Where the scripts keep JAX's persistent compilation cache: ``$JAX_COMPILATION_CACHE_DIR``, else the user's cache.

    The user's cache is ``$XDG_CACHE_HOME/deepopt/jax`` (``~/.cache/deepopt/jax`` without ``XDG_CACHE_HOME``).
    """
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "deepopt", "jax")


def use_compilation_cache(setting: str | None) -> str | None:
    """Point JAX's persistent compilation cache at ``setting`` (None: ``default_cache_dir()``; ``"off"``: no cache).

    Every program (``CACHE_MIN_COMPILE_SECONDS`` = 0: the chunk programs and the small eager ones the data
    generators compile; ``$JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` wins) is written there and
    loaded by later runs. An unusable directory is a one-line warning, and the
    run goes on without the cache. Returns the directory used, or None.
    """
    if setting == "off":
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    path = os.path.expanduser(setting or default_cache_dir())
    try:
        os.makedirs(path, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError("not writable")
    except OSError as error:
        print(f"warning: --compilation_cache {path!r} cannot be used ({error}); running without it", file=sys.stderr)
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # a threshold the user set wins
        jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECONDS)
    return path


def register_range_validator(name: str, low: float, high: float | None = None) -> None:
    """Flag ``--name`` (a list flag) must be two numbers ``lo,hi`` with ``low < lo < hi`` (and ``hi <= high``)."""

    def valid(values: list[str]) -> bool:
        try:
            lo, hi = (float(v) for v in values)
        except ValueError:
            return False
        return math.isfinite(lo) and math.isfinite(hi) and low < lo < hi and (high is None or hi <= high)

    bounds = f"{low:g} < lo < hi" + (f" <= {high:g}" if high is not None else "")
    flags.register_validator(name, valid, message=f"--{name} must be two numbers lo,hi with {bounds}")


def define_host_devices_flag() -> None:
    """Define ``--host_devices`` (how many JAX devices to split the CPU into), read by ``split_cpu``."""
    flags.DEFINE_integer(
        "host_devices",
        -1,
        "Split the CPU into this many devices; -1: one per core unless XLA_FLAGS sets "
        "--xla_force_host_platform_device_count; 0: leave JAX's default (one).",
        lower_bound=-1,
    )


def split_cpu(host_devices: int) -> int:
    """Split the CPU into ``host_devices`` JAX devices, before any computation; returns the count asked for.

    ``-1``: one device per core, unless ``XLA_FLAGS`` already sets
    ``--xla_force_host_platform_device_count`` (then that count stands); ``0``: JAX's default (one).
    Only the CPU backend is affected; on a GPU the devices are the GPUs.
    """
    devices = host_devices
    if devices == -1 and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        devices = os.cpu_count() or 1
    if devices > 0:
        jax.config.update("jax_num_cpu_devices", devices)
    return devices


def _make_dirs(path: pathlib.Path) -> None:
    """``mkdir -p path``, remembering in ``_created_dirs`` each directory this call created."""
    missing = []
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        missing.append(ancestor)
        ancestor = ancestor.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue  # someone else made it meanwhile: not ours to remove
        _created_dirs.append(directory)


def prepare_output_dir(study: str) -> pathlib.Path:
    """Create ``--output_dir`` (or ``runs/<study>-<timestamp>``) and check a file can be created in it.

    Refuses one holding results unless ``--overwrite``; an unusable path is a ``StudyInputError``.
    """
    if FLAGS.output_dir:
        path = pathlib.Path(FLAGS.output_dir)
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = pathlib.Path("runs") / f"{study}-{stamp}"
    if (path / "results.json").exists() and not FLAGS.overwrite:
        raise StudyInputError(f"--output_dir {str(path)!r} already holds results.json; choose another or pass --overwrite")
    if path.exists() and not path.is_dir():
        raise StudyInputError(f"--output_dir {str(path)!r} exists and is not a directory")
    try:
        _make_dirs(path)
        handle, probe = tempfile.mkstemp(dir=path, prefix=".write-check-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        blocker = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
        if blocker is not None:
            reason = f"{str(blocker)!r} is a file, not a directory"
        else:
            reason = error.strerror or str(error)
            if error.filename is not None and pathlib.Path(os.fspath(error.filename)) in path.parents:
                reason += f" ({os.fspath(error.filename)!r})"  # an ancestor it could not create
        raise StudyInputError(
            f"--output_dir {str(path)!r} cannot be used: {reason}; expected a directory that can be created and written to"
        ) from None
    return path


def define_task_flag() -> None:
    """``--task``, for the studies that learn any task (the main job, adaptive_search); once per process."""
    if "task" not in FLAGS:
        flags.DEFINE_enum(
            "task", "classification", list(tasks.BUILT_IN),
            "What is learned: classification (integer labels; accuracy) or regression (float targets, the last "
            "column of --data; mse, mae, r2; generated data: Friedman #1, --dataset friedman1).",
        )


def study_task() -> tasks.Task:
    """The ``--task`` of the study (classification where the study has no such flag)."""
    return tasks.by_name(FLAGS.task) if "task" in FLAGS else tasks.classification()


REGRESSION_SETS = ("friedman1",)  # generated data with float targets (data.make_friedman1)


def task_dataset(dataset: str, noise: float) -> tuple[str, float]:
    """The generated data set and its noise a study trains on under ``--task`` (``--dataset`` and ``--noise`` flags).

    ``--task regression`` trains on ``friedman1``: in place of a classification set ``--dataset``
    did not name (one it names is refused, unless ``--data`` replaces it), at ``--noise`` when
    given, else 1. A classification refuses ``friedman1``.
    """
    regression = study_task().targets == tasks.FLOATS
    if regression and dataset not in REGRESSION_SETS:
        if FLAGS["dataset"].present and not FLAGS.data:
            raise StudyInputError(f"--dataset {dataset} holds class labels; --task regression needs "
                                  f"{' or '.join(REGRESSION_SETS)} or --data with a float last column")
        dataset = REGRESSION_SETS[0]
    elif not regression and dataset in REGRESSION_SETS:
        raise StudyInputError(f"--dataset {dataset} is a regression set: pass --task regression")
    return dataset, noise if not regression or FLAGS["noise"].present else 1.0


def ranked_metric() -> str:
    """The row field a study's searches rank by: the task's primary dev metric (``dev_accuracy``, ``dev_mse``)."""
    return f"dev_{study_task().primary}"


def load_user_data(key: Any) -> tuple[data_lib.Dataset, data_lib.Dataset] | None:
    """``(train, test)`` from ``--data`` / ``--test_data`` (or a held-out ``--test_fraction``), None without ``--data``.

    With ``--task regression`` the last column is a float target (``data.load(targets="floats")``).
    """
    if FLAGS.data is None:
        return None
    targets = study_task().targets
    try:
        train = data_lib.load(FLAGS.data, targets=targets, dtype=FLAGS.data_dtype)
        if FLAGS.test_data is not None:
            # A classification's training file defines the classes 0..K-1; a test file may miss some, never add one.
            classes = int(np.max(np.asarray(train.y))) + 1 if targets == tasks.CLASS_IDS else None
            test = data_lib.load(FLAGS.test_data, num_classes=classes, targets=targets, dtype=FLAGS.data_dtype)
        else:
            train, _, test = data_lib.train_dev_test_split(key, train, 0.0, FLAGS.test_fraction)
    except (OSError, ValueError) as error:
        raise StudyInputError(str(error)) from None
    if train.X.shape[1] != test.X.shape[1]:
        raise StudyInputError(f"--data has {train.X.shape[1]} features but --test_data has {test.X.shape[1]}")
    return data_lib.Dataset(np.asarray(train.X), np.asarray(train.y)), data_lib.Dataset(np.asarray(test.X), np.asarray(test.y))


def study_data(
    data_key: jax.Array,
    test_key: jax.Array,
    generate: Callable[[jax.Array, int], data_lib.Dataset],
    n_train: int,
    n_test: int,
) -> tuple[data_lib.Dataset, data_lib.Dataset]:
    """``(train, test)``: the user's files (``load_user_data(data_key)``), else generated.

    Generated: ``generate(data_key, n_train)`` and ``generate(test_key, n_test)``.
    """
    user_data = load_user_data(data_key)
    if user_data is not None:
        return user_data
    return generate(data_key, n_train), generate(test_key, n_test)


def generated_data() -> bool:
    """True when the study generates its data (no ``--data``)."""
    return FLAGS.data is None


def layer_sizes_for(hidden: Sequence[int], *datasets: data_lib.Dataset) -> tuple[int, ...]:
    """``(n_in, *hidden, n_out)``: the first data set's features, the output units of every data set's labels."""
    return (int(np.shape(datasets[0].X)[1]), *(int(width) for width in hidden), output_units(*datasets))


def output_units(*datasets: data_lib.Dataset) -> int:
    """Output layer width for the labels seen: 1 (sigmoid) for two classes, C (softmax) for more.

    Under ``--task regression``: one per target column (1 for ``(m,)`` targets).
    """
    if study_task().targets == tasks.FLOATS:
        return 1 if np.ndim(datasets[0].y) == 1 else int(np.shape(datasets[0].y)[1])
    num_classes = max(int(np.max(np.asarray(d.y))) + 1 for d in datasets)
    return 1 if num_classes <= 2 else num_classes


def output_description(n_out: int) -> str:
    """The output layer in words, for reports: ``"sigmoid output"`` for 1 unit, ``"softmax output (K classes)"`` for K >= 2."""
    if n_out < 1:
        raise ValueError(f"n_out must be >= 1 output units, got {n_out}")
    return "sigmoid output" if n_out == 1 else f"softmax output ({n_out} classes)"


def data_source() -> str:
    """A short description of where the data came from, for reports."""
    if FLAGS.data is None:
        return "generated"
    return FLAGS.data + (f" / {FLAGS.test_data}" if FLAGS.test_data else f" (test: {FLAGS.test_fraction:.0%} held out)")


def _atomic_write(path: pathlib.Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync, rename; mode ``0o666`` less the umask, as ``open()``."""
    path = pathlib.Path(path)
    temporary = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    # os.open applies the umask to 0o666 itself (tempfile.mkstemp would force 0o600).
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def to_jsonable(value: Any) -> Any:
    """Arrays and numpy scalars to lists and Python numbers; NaN/inf to None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return to_jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: pathlib.Path, obj: Any) -> None:
    """Write ``obj`` as strict JSON, atomically."""
    _atomic_write(path, json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n")


def write_text(path: pathlib.Path, text: str) -> None:
    """Write ``text``, atomically."""
    _atomic_write(path, text)


def finish_study(
    output_dir: pathlib.Path,
    results: dict[str, Any],
    report: Sequence[str],
    plots: Sequence[str],
    *,
    note: str = "",
) -> None:
    """Write ``results.json`` and ``report.md`` (``report``'s lines, then one image link per plot) and print what was written.

    ``note`` ends the printed ``wrote ...`` line (e.g. the study's seconds).
    """
    write_json(output_dir / "results.json", results)
    write_text(output_dir / "report.md", "\n".join([*report, *(f"![{plot}]({plot})" for plot in plots)]) + "\n")
    print(f"\nwrote {output_dir}/results.json, report.md" + (f", {', '.join(plots)}" if plots else "") + note)


class StudyClock:
    r"""Progress with an ETA for a study's steps: ``clock.done(weight)`` is the text ``" [k/n, elapsed 12 s, ETA 30 s]"``.

    Each step has a weight (its expected share of the work: 1 each by default, or the config-steps
    it trains); the ETA assumes the rest runs at the rate so far:
    :math:`t \cdot (W - w) / w` after weight :math:`w` of :math:`W` took :math:`t` seconds.
    """

    def __init__(self, weights: Sequence[float] | int) -> None:
        self.weights = [1.0] * weights if isinstance(weights, int) else [float(w) for w in weights]
        self.start = time.perf_counter()
        self.steps = 0
        self.finished = 0.0

    def done(self, weight: float | None = None) -> str:
        """Mark the next step done (with its weight, default the planned one); the progress text to print."""
        planned = self.weights[self.steps] if self.steps < len(self.weights) else 0.0
        self.finished += planned if weight is None else float(weight)
        self.steps += 1
        elapsed = time.perf_counter() - self.start
        total = sum(self.weights)
        left = max(total - self.finished, 0.0)
        eta = elapsed * left / self.finished if self.finished > 0 else float("inf")
        eta_text = f"{eta:.0f} s" if math.isfinite(eta) else "?"
        return f" [{self.steps}/{len(self.weights)}, elapsed {elapsed:.0f} s, ETA {eta_text}]"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def summarize(values: Any) -> dict[str, float]:
    """Mean, standard deviation, min and max of a 1-D array of per-seed values."""
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    return {
        "mean": float(np.mean(array)),
        "std": float(np.std(array)),
        "min": float(np.min(array)),
        "max": float(np.max(array)),
    }


def percent(stats: dict[str, float]) -> str:
    """``mean ± std`` of a fraction, in percent."""
    return f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f}%"


MAX_CURVE_POINTS = 500


def fit_seeds(
    config: train.Config,
    hp: train.HParams,
    keys: jax.Array,
    train_set: data_lib.Dataset,
    test_set: data_lib.Dataset,
) -> tuple[train.TrainResult, float]:
    """Train one model per key in one vmapped, jitted call; returns the batched result and the seconds (compilation included)."""
    run = jax.jit(jax.vmap(lambda key: train.fit(config, hp, key, train_set, test_set)))
    start = time.perf_counter()
    result = jax.block_until_ready(run(keys))
    return result, time.perf_counter() - start


def train_plus_dev(train_set: data_lib.Dataset, dev_set: data_lib.Dataset) -> data_lib.Dataset:
    """The training and dev sets as one host data set: what a search's winner is retrained on."""
    return data_lib.Dataset(np.concatenate([np.asarray(train_set.X), np.asarray(dev_set.X)]),
                            np.concatenate([np.asarray(train_set.y), np.asarray(dev_set.y)]))


def retrained_test_metrics(
    rows: Sequence[dict[str, Any]], config_id: str, full_train: data_lib.Dataset, test_set: data_lib.Dataset,
    metric: str = "accuracy",
) -> list[float]:
    """The honest protocol's last step: config ``config_id`` retrained on ``full_train`` once per seed row, tested once.

    ``sweep.retrain`` of each of its rows (each seed's key; a PBT row by its schedule), then the test
    ``metric`` (one of the task's: ``accuracy``, ``mse``) of the state's current parameters
    (``retrain`` trains an early-stopped row without early stopping).
    """
    from deepopt import sweep

    values = []
    for row in (r for r in rows if r["config_id"] == config_id):
        config = dataclasses.replace(sweep.config_of(row), early_stopping=None)
        values.append(float(train.evaluate(config, sweep.retrain(row, full_train), test_set)[metric]))
    return values


def retrained_test_accuracies(
    rows: Sequence[dict[str, Any]], config_id: str, full_train: data_lib.Dataset, test_set: data_lib.Dataset
) -> list[float]:
    """``retrained_test_metrics`` of a classification: the test accuracies."""
    return retrained_test_metrics(rows, config_id, full_train, test_set, "accuracy")


def summarize_runs(result: train.TrainResult, seconds: float) -> dict[str, Any]:
    """A study row from a seed-batched ``TrainResult``: accuracies over seeds, costs, divergences, the mean cost curve."""
    costs = np.asarray(result.costs, dtype=np.float64)
    epochs = costs.shape[1]
    curve_epochs = np.unique(np.linspace(0, epochs - 1, min(epochs, MAX_CURVE_POINTS)).astype(int))
    return {
        "train_accuracy": summarize(result.train_accuracy),
        "test_accuracy": summarize(result.dev_accuracy),
        "first_cost": float(np.nanmean(costs[:, 0])),
        "final_cost": float(np.nanmean(costs[:, -1])),
        "diverged_runs": int(np.sum(result.diverged)),
        "seconds_with_compilation": seconds,
        "cost_curve": {"epochs": curve_epochs, "mean": np.nanmean(costs[:, curve_epochs], axis=0)},
    }


def boundary_panel(
    title: str, params: Any, activation: str, bn_state: Any = None
) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """A ``plot_decision_boundaries`` panel predicting with ``params`` (one model, not a batch).

    ``bn_state``: the running statistics of a batch-normalized net (``model.predict`` needs them).
    """
    return title, lambda grid: np.asarray(
        model.predict(params, jnp.asarray(grid), activation=activation, bn_state=bn_state)
    )


def first_run(tree: Any) -> Any:
    """The first model of a run-batched pytree."""
    return jax.tree.map(lambda leaf: leaf[0], tree)


def plots_available() -> bool:
    """True when matplotlib is installed (the ``plots`` extra); studies skip their PNGs otherwise."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (needs the ``plots`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_pyplot = pyplot  # the old private name, kept for scripts that still use it


def plot_decision_boundaries(
    path: pathlib.Path,
    panels: Sequence[tuple[str, Callable[[np.ndarray], np.ndarray]]],
    X: np.ndarray,
    y: np.ndarray,
    resolution: int = 200,
) -> None:
    """One panel per ``(title, predict)``: predicted class over a grid around ``X`` (2-D), points coloured by ``y``."""
    plt = pyplot()
    X, y = np.asarray(X), np.asarray(y)
    lo, hi = X.min(axis=0), X.max(axis=0)
    margin = 0.1 * (hi - lo) + 1e-3
    xs = np.linspace(lo[0] - margin[0], hi[0] + margin[0], resolution)
    ys = np.linspace(lo[1] - margin[1], hi[1] + margin[1], resolution)
    grid_x, grid_y = np.meshgrid(xs, ys)
    grid = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1).astype(X.dtype)
    columns = min(len(panels), 4)
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.6 * rows), squeeze=False)
    for axis, (title, predict) in zip(axes.flat, panels):
        classes = np.asarray(predict(grid)).reshape(grid_x.shape)
        axis.contourf(grid_x, grid_y, classes, alpha=0.35, cmap="coolwarm")
        axis.scatter(X[:, 0], X[:, 1], c=y, s=8, cmap="coolwarm", edgecolors="k", linewidths=0.2)
        axis.set_title(title, fontsize=10)
        axis.set_xticks([])
        axis.set_yticks([])
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_curves(
    path: pathlib.Path,
    curves: dict[str, np.ndarray],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    log_y: bool = True,
) -> None:
    """Line plot of each ``label -> (num_seeds, T)`` or ``(T,)`` array: the mean, with the min..max band over seeds."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for label, values in curves.items():
        values = np.atleast_2d(np.asarray(values, dtype=np.float64))
        steps = np.arange(values.shape[1])
        axis.plot(steps, np.nanmean(values, axis=0), label=label)
        if values.shape[0] > 1:
            axis.fill_between(steps, np.nanmin(values, axis=0), np.nanmax(values, axis=0), alpha=0.2)
    if log_y:
        axis.set_yscale("log")
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    if title:
        axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
