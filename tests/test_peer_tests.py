"""diffusers' own test files for DDPMScheduler, DDIMScheduler and DDPMPipeline, run against minidiff.

Where a checkout of the test files sits beside the repository (`../shared/peer-tests`, with its `run.sh`
that swaps each file's `from diffusers import ...` line for `from minidiff import ...`), this runs them and
checks which pass. They are not part of this repository (diffusers' files, Apache-2.0); without them the
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
