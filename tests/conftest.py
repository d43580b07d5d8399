"""Shared fixtures: small generated datasets, reused across test modules; the suite's speed settings.

Speed settings (the suite spends most of its time compiling tiny programs, not running them):

- XLA:CPU compiles with ``FAST_COMPILE_FLAGS``: LLVM without its optimization pipeline
  (``--xla_backend_optimization_level=0``), XLA's long-standing elemental emitters instead of the
  newer fusion emitters, and one code-generation thread (the second core runs background studies).
  The suite's programs compile 2-4x faster (a ``fit`` program about 1.1 s instead of 5 s here);
  they are still deterministic, and only their speed and the last bit or two of some results
  (``jax.random.normal``'s inverse erf, ``tanh``: about 2e-7 relative) differ from XLA's defaults. Every subprocess inherits the flags, so a worker and the
  reference run here compute the same bits (run ids fingerprint the generated data, so they
  would differ otherwise). ``DEEPOPT_TEST_FULL_OPT=1`` keeps XLA's defaults (the suite passes
  both ways); a flag already in ``XLA_FLAGS`` is kept as given.
- Subprocesses share one persistent compilation cache per session (``JAX_COMPILATION_CACHE_DIR``
  under the session's temporary directory): a worker started again on the same sweep loads its
  program instead of compiling it. Programs that compile in under 0.1 s are not written (the
  many one-op programs: cheaper to compile than to hash and store).
- Study subprocesses that tests read are started in the background (``background.py``), and the
  modules that read them run after the others, so that the runs have the in-process tests' time to
  finish on the second core (the order inside a module is unchanged).
"""

import os

FAST_COMPILE_FLAGS = (
    "--xla_backend_optimization_level=0",
    "--xla_cpu_use_fusion_emitters=false",
    "--xla_cpu_parallel_codegen_split_count=1",
)
if not os.environ.get("DEEPOPT_TEST_FULL_OPT"):  # before JAX creates its CPU client, which reads XLA_FLAGS once
    _given = os.environ.get("XLA_FLAGS", "")
    _added = [flag for flag in FAST_COMPILE_FLAGS if flag.split("=")[0] not in _given]
    os.environ["XLA_FLAGS"] = " ".join([_given, *_added]).strip()

import jax  # noqa: E402
import pytest  # noqa: E402

import background  # noqa: E402
from deepopt import data  # noqa: E402

MIN_CACHED_COMPILE_SECONDS = "0.1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules that read background runs last (a stable sort: every other order is kept)."""
    items.sort(key=lambda item: bool(getattr(getattr(item, "module", None), "BACKGROUND", None)))


@pytest.fixture(scope="session")
def moons() -> data.Dataset:
    return data.make_moons(jax.random.key(0), 120, 0.2)


@pytest.fixture(scope="session")
def moons_dev() -> data.Dataset:
    return data.make_moons(jax.random.key(1), 60, 0.2)


@pytest.fixture(scope="session", autouse=True)
def subprocess_compilation_cache(tmp_path_factory: pytest.TempPathFactory):
    """One persistent compilation cache for every subprocess of the session (this process keeps its own in memory)."""
    names = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "jax-cache"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", MIN_CACHED_COMPILE_SECONDS)
    yield os.environ["JAX_COMPILATION_CACHE_DIR"]
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session", autouse=True)
def background_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                    subprocess_compilation_cache: str):
    """Start the study subprocesses the selected tests read (see ``background.py``); kill leftovers at the end."""
    runner = background.Background(lambda name: tmp_path_factory.mktemp(name))
    runner.schedule(background.needed_runs(request.session.items))
    yield runner
    runner.close()
