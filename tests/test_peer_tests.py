"""diffusers' own test files for minidiff's schedulers and DDPMPipeline, run against minidiff.

Where a checkout of the test files sits beside the repository (`../shared/peer-tests`, with its `run.sh`
(DDPM, DDIM, DDPMPipeline) and `run-samplers.sh` (PNDM, DPM-Solver++, Euler, Euler ancestral) that swap each
file's `from diffusers import ...` line for `from minidiff import ...`), this runs them and checks which pass. They are not part of this repository (diffusers' files, Apache-2.0); without them the
test is skipped. The failures expected, and why, are in the README's parity section.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PEER_TESTS = ROOT.parent / "shared" / "peer-tests"

# test id -> what its failure message must say: minidiff refuses the input on purpose
EXPECTED_FAILURES = {
    "test_scheduler_ddpm.DDPMSchedulerTest.test_trained_betas": "trained_betas has shape (2,); expected (1000,)",
    "test_scheduler_ddim.DDIMSchedulerTest.test_trained_betas": "trained_betas has shape (2,); expected (1000,)",
    "test_scheduler_ddpm.DDPMSchedulerTest.test_variance_type": "variance_type 'other' is not supported",
}
TOTAL = 77  # tests run (the slow, GPU-only pipeline test is skipped)


def test_diffusers_own_tests_pass_against_minidiff(tmp_path):
    if not (PEER_TESTS / "run.sh").is_file():
        pytest.skip("../shared/peer-tests not found")
    report = tmp_path / "report.xml"
    run = subprocess.run(
        ["bash", str(PEER_TESTS / "run.sh"), sys.executable, f"--junitxml={report}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert report.is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    passed, failed = [], {}
    for case in ET.parse(report).iter("testcase"):
        name = f"{case.get('classname').split('.')[-2]}.{case.get('classname').split('.')[-1]}.{case.get('name')}"
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is not None:
            failed[name] = problem.get("message", "") + (problem.text or "")
        elif case.find("skipped") is None:
            passed.append(name)
    assert sorted(failed) == sorted(EXPECTED_FAILURES), run.stdout[-5000:]
    for name, reason in EXPECTED_FAILURES.items():
        assert reason in failed[name], f"{name} failed for another reason:\n{failed[name][-2000:]}"
    assert len(passed) == TOTAL - len(EXPECTED_FAILURES)


# run-samplers.sh, per test file: (tests collected, skipped ones included; test id -> what its failure message must say). None: the class
# under test is not in minidiff yet, so the file fails to import and is not checked. diffusers 0.42.1 itself
# fails test_compatibles in each file (its list of compatibles differs from the test files' commit);
# minidiff's lists only the schedulers it has, and passes.
TRAINED_BETAS = "trained_betas has shape (2,); expected ({},), one beta per training timestep"
SAMPLER_FILES: dict[str, tuple[int, dict[str, str]] | None] = {
    "test_scheduler_pndm": (
        33,
        {"PNDMSchedulerTest.test_trained_betas": TRAINED_BETAS.format(1000)},
    ),
    "test_scheduler_euler": (
        36,
        {"EulerDiscreteSchedulerTest.test_trained_betas": TRAINED_BETAS.format(1100)},
    ),
    "test_scheduler_euler_ancestral": (
        29,
        {"EulerAncestralDiscreteSchedulerTest.test_trained_betas": TRAINED_BETAS.format(1100)},
    ),
    "test_scheduler_dpm_multi": (
        42,
        {
            "DPMSolverMultistepSchedulerTest.test_trained_betas": TRAINED_BETAS.format(1000),
        },
    ),
}


def test_diffusers_own_sampler_tests_pass_against_minidiff(tmp_path):
    if not (PEER_TESTS / "run-samplers.sh").is_file():
        pytest.skip("../shared/peer-tests/run-samplers.sh not found")
    report = tmp_path / "report.xml"
    run = subprocess.run(
        ["bash", str(PEER_TESTS / "run-samplers.sh"), sys.executable, f"--junitxml={report}",
         "--continue-on-collection-errors", "-p", "no:warnings"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert report.is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    results: dict[str, dict[str, str | None]] = {
        name: {} for name in SAMPLER_FILES
    }  # test -> failure or None
    for case in ET.parse(report).iter("testcase"):
        module = (case.get("classname") or case.get("name")).split(".")
        file = next((part for part in module if part in SAMPLER_FILES), None)
        assert file is not None, f"unexpected test {case.attrib}"
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        test = f"{module[-1]}.{case.get('name')}" if case.get("classname") else "<collection>"
        results[file][test] = None if problem is None else problem.get("message", "") + (problem.text or "")
    for file, expected in SAMPLER_FILES.items():
        if expected is None:
            continue
        total, expected_failures = expected
        failed = {test: message for test, message in results[file].items() if message is not None}
        assert sorted(failed) == sorted(expected_failures), f"{file}: {sorted(failed)}\n" + run.stdout[-5000:]
        for test, reason in expected_failures.items():
            assert reason in failed[test], (
                f"{file}::{test} failed for another reason:\n{failed[test][-2000:]}"
            )
        assert len(results[file]) == total, f"{file}: {len(results[file])} tests run, expected {total}"
