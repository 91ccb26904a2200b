"""Fast fuzzing (a few dozen generated inputs per harness) and the kept corpus as regression
fixtures: every input ends in a result or one of the project's named errors (tests/fuzz/harnesses.py).
The long run is ``benchmarks/fuzz.py``."""

from __future__ import annotations

import os
import warnings

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from tests.fuzz.harnesses import HARNESSES, corpus_cases, load_case, outcome

pytestmark = pytest.mark.filterwarnings("ignore:The recursion limit will not be reset")
EXAMPLES = int(os.environ.get("KALORA_FUZZ_EXAMPLES", "25"))


def _fuzz_test(name: str):
    _, strategy = HARNESSES[name]

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate, Phase.shrink])
    @given(strategy)
    def run(case):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outcome(name, case)

    return run


@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_fuzz_any_input_gives_a_result_or_a_named_error(name):
    _fuzz_test(name)()


@pytest.mark.parametrize("harness,path", corpus_cases(), ids=[f"{h}/{p.stem}" for h, p in corpus_cases()])
def test_fuzz_corpus_regressions(harness, path):
    """The kept input still ends the same way: a result, or the same named error class (messages
    may be reworded; the shape recorded next to each input is for reading)."""
    expected = path.with_suffix(".outcome")
    got = outcome(harness, load_case(path))
    if expected.exists():
        assert got.split(":")[0] == expected.read_text(encoding="utf-8").strip().split(":")[0], (path.name, got)


def test_fuzz_corpus_is_kept():
    assert {h for h, _ in corpus_cases()} == set(HARNESSES)
