"""EXERCISES.md: each exercise's check (tests/exercises/) is skipped until the student enables it,
fails on the code as it is, and passes once the reference solution (solutions/*.patch) is applied.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
EXERCISES = sorted(
    p.stem.removeprefix("test_") for p in (REPO / "tests/exercises").glob("test_*.py")
)


def test_every_test_based_exercise_has_a_check_a_solution_and_a_section():
    text = (REPO / "EXERCISES.md").read_text()
    assert len(re.findall(r"^## \d+\.", text, re.M)) >= 8
    assert sorted(p.stem for p in (REPO / "solutions").glob("*.patch")) == EXERCISES
    for name in EXERCISES:
        assert f"EXERCISE={name}" in text


@pytest.mark.parametrize("name", EXERCISES)
def test_a_check_is_skipped_until_enabled_and_says_how(name, monkeypatch):
    monkeypatch.delenv("EXERCISE", raising=False)
    spec = importlib.util.spec_from_file_location(
        f"check_{name}", REPO / f"tests/exercises/test_{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.pytestmark.name == "skipif" and module.pytestmark.args[0] is True
    assert f"EXERCISE={name}" in module.pytestmark.kwargs["reason"]


def run_checks(folder, junit):
    """Run every exercise check in folder; {exercise: (tests, failed)} from pytest's JUnit
    report."""
    subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/exercises",
            f"--junitxml={junit}",
        ],
        cwd=folder,
        env={**os.environ, "EXERCISE": "all"},
        capture_output=True,
    )
    results = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("classname").split(".")[-1].removeprefix("test_")
        tests, failed = results.get(name, (0, 0))
        results[name] = (tests + 1, failed + (case.find("failure") is not None))
    return results


def test_every_check_fails_on_the_unmodified_code(tmp_path):
    results = run_checks(REPO, tmp_path / "report.xml")
    # every check was collected and ran (none errored on import)
    assert sorted(results) == EXERCISES
    for name, (tests, failed) in results.items():
        assert failed >= 1, f"exercise {name}: its check passes before the exercise is done"


def test_the_reference_solutions_pass_their_checks(tmp_path):
    copy = tmp_path / "repo"  # the code, the tests and the patches; not data or training runs
    shutil.copytree(REPO / "tests", copy / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "solutions", copy / "solutions")
    for path in [*REPO.glob("*.py"), REPO / "pytest.ini"]:
        shutil.copy(path, copy)
    # Inside another git work tree (a temporary folder under a checkout), git apply would take the
    # patch's paths from that tree's top and skip them all without a word: keep git out of it.
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(copy.parent)}
    for name in EXERCISES:
        before = {p: p.read_bytes() for p in copy.glob("*.py")}
        applied = subprocess.run(["git", "apply", f"solutions/{name}.patch"], cwd=copy, env=env,
                                 capture_output=True, text=True)
        assert (
            applied.returncode == 0
        ), f"solutions/{name}.patch no longer applies: {applied.stderr}"
        assert any(p.read_bytes() != code for p, code in before.items()), f"{name}: nothing changed"
    results = run_checks(copy, tmp_path / "report.xml")
    assert sorted(results) == EXERCISES
    assert all(failed == 0 for _, failed in results.values()), results
