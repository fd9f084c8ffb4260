"""Versions hold their numbers: each component's outputs on a tiny model equal the ones recorded for its
version (tests/golden.json), so run keys built from versions (not code digests) stay honest.

A failure here means one of two things, and the message says which:
- the outputs changed but the version did not: bump the component's ``version`` (its stored runs are then
  recomputed), or undo the change if it was meant to be a pure refactor;
- the version changed: record the new outputs with ``.venv/bin/python tests/golden.py --update``.
"""
import pytest

import golden

RECORDED = golden.load()
CASES = [(group, case) for group, cases in RECORDED.items() for case in cases]


@pytest.fixture(scope="module")
def current():
    return golden.compute()


def test_every_component_case_is_recorded():
    now = golden.versions()
    assert {(g, c) for g, cases in now.items() for c in cases} == set(CASES), \
        "golden cases changed: run .venv/bin/python tests/golden.py --update"


@pytest.mark.parametrize("group, case", CASES, ids=[f"{g}:{c}" for g, c in CASES])
def test_outputs_match_the_recorded_version(group, case, current):
    recorded, now = RECORDED[group][case], current[group][case]
    if recorded["versions"] != now["versions"]:
        pytest.fail(f"{group} '{case}': versions {recorded['versions']} -> {now['versions']}; record the new "
                    "outputs with .venv/bin/python tests/golden.py --update")
    assert golden.same(group, case, recorded["output"], now["output"]), (
        f"{group} '{case}' now produces different numbers with the same versions {now['versions']}: bump the "
        "version of the component you changed (method, pipeline, source, strategy, evaluation or model "
        "loading), then run .venv/bin/python tests/golden.py --update")


def test_same_tolerates_last_bit_noise_but_not_real_changes():
    values = [0.2, 0.3]
    assert golden.same("methods", "x", values, [v * (1 + 1e-6) for v in values])
    assert not golden.same("methods", "x", values, [0.2, 0.31])
    # a search method's near-tie swap: a few outputs off by < 2%, the rest within float tolerance
    many = [0.17] * 8
    assert golden.same("methods", "awq x", many, [0.17 * 1.009] * 2 + [0.17] * 6)
    assert not golden.same("methods", "awq x", many, [0.17 * 1.009] * 3 + [0.17] * 5)     # too many moved
    assert not golden.same("methods", "awq x", many, [0.17 * 1.03] + [0.17] * 7)          # too far
    assert not golden.same("methods", "gptq x", many, [0.17 * 1.009] + [0.17] * 7)        # not a search case
    rows = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]
    assert golden.same("sampling", "self", rows, [[1, 2, 3, 4, 5, 6, 7, 8, 9, 99]])
    assert not golden.same("sampling", "self", rows, [[1, 2, 3, 4, 5, 6, 7, 8, 98, 99]])
    assert not golden.same("sampling", "random-vocab", rows, [[1, 2, 3, 4, 5, 6, 7, 8, 9, 99]])
