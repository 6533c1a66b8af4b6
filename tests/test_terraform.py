"""The AWS deployment (terraform/), checked offline as CI does: no cloud account, no registry.

The real Terraform CLI runs with the real AWS provider from the local filesystem mirror
(TF_PLUGIN_DIR, default /opt/tf-plugins). Only the AWS API is mocked, because it cannot run
here: terraform/tests/*.tftest.hcl plan and apply against `mock_provider "aws"` and assert on
what would be created. checkov, from its own venv, scans the module without network access.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .stackrunner import ROOT

MODULE = ROOT / "terraform"
PLUGIN_DIR = Path(os.environ.get("TF_PLUGIN_DIR", "/opt/tf-plugins"))
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def terraform_env(tmp_path_factory) -> dict[str, str]:
    """An environment that keeps Terraform offline and away from the user's own settings and credentials."""
    if shutil.which("terraform") is None:
        pytest.fail("terraform is not installed (the offline checks need Terraform 1.11+)")
    if not list(PLUGIN_DIR.glob("registry.terraform.io/hashicorp/aws/5.*/*/terraform-provider-aws*")):
        pytest.fail(f"no AWS provider 5.x under TF_PLUGIN_DIR={PLUGIN_DIR}")
    cli_config = tmp_path_factory.mktemp("terraform-cli") / "terraformrc"
    cli_config.write_text("")  # no plugin cache, no credentials, no network mirrors
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TF_", "AWS_"))}
    env.update(CHECKPOINT_DISABLE="1", TF_CLI_CONFIG_FILE=str(cli_config), TF_IN_AUTOMATION="1", TF_INPUT="0")
    return env


@pytest.fixture(scope="module")
def module_copy(terraform_env, tmp_path_factory) -> Path:
    """terraform/ copied and initialised offline, so that .terraform/ and the lock file stay out of the repo
    (and a user's state or terraform.tfvars stays out of the test)."""
    work = tmp_path_factory.mktemp("terraform") / "terraform"
    shutil.copytree(MODULE, work, ignore=shutil.ignore_patterns(
        ".terraform", ".terraform.lock.hcl", "*.tfstate*", "*.tfvars", "*.tfvars.json"))
    result = run(["terraform", "init", "-backend=false", f"-plugin-dir={PLUGIN_DIR}", "-no-color"],
                 work, terraform_env)
    assert result.returncode == 0, result.stdout + result.stderr
    return work


def test_files_are_formatted(terraform_env):
    result = run(["terraform", "fmt", "-check", "-recursive", "-diff", "-no-color", str(MODULE)], ROOT, terraform_env)
    assert result.returncode == 0, f"run `terraform fmt -recursive terraform`:\n{result.stdout}{result.stderr}"


def test_configuration_is_valid_without_warnings(module_copy, terraform_env):
    result = run(["terraform", "validate", "-json", "-no-color"], module_copy, terraform_env)
    report = json.loads(result.stdout)
    assert report["valid"], report["diagnostics"]
    assert report["warning_count"] == 0, report["diagnostics"]


def test_every_terraform_test_run_passes_against_the_mocked_provider(module_copy, terraform_env):
    declared = sorted(
        name for path in (module_copy / "tests").glob("*.tftest.hcl")
        for name in re.findall(r'^run "([^"]+)"', path.read_text(), re.MULTILINE))
    assert declared, "no run blocks in terraform/tests"

    result = run(["terraform", "test", "-no-color"], module_copy, terraform_env, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    outcomes = re.findall(r'run "([^"]+)"\.\.\. (\w+)', output)
    assert sorted(name for name, outcome in outcomes if outcome == "pass") == declared, output[-6000:]
    summary = re.search(r"^Success! (\d+) passed, 0 failed\.$", output, re.MULTILINE)
    assert summary and int(summary[1]) == len(declared), output[-2000:]
    print(f"terraform test: {summary[1]} runs passed, 0 failed")


def test_checkov_finds_nothing_that_is_not_justified_in_code(tmp_path):
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: scripts/setup.sh --dev installs checkov into its own venv")
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}  # with --skip-download: no network at all
    result = run([str(CHECKOV), "--directory", str(MODULE), "--framework", "terraform", "--skip-download",
                  "--compact", "--output", "json"], tmp_path, env)
    assert result.returncode in (0, 1), result.stderr[-3000:]  # 1 means failed checks, shown below
    report = json.loads(result.stdout)
    summary, results = report["summary"], report["results"]

    failed = [f"{check['check_id']} {check['resource']} ({check['file_path']}): {check['check_name']}"
              for check in results["failed_checks"]]
    assert failed == [], "fix these, or skip them with a reason next to the resource:\n" + "\n".join(failed)
    assert summary["passed"] > 0 and summary["parsing_errors"] == 0, summary
    unjustified = [f"{check['check_id']} {check['resource']}" for check in results["skipped_checks"]
                   if len(check["check_result"].get("suppress_comment", "").strip()) < 20]
    assert unjustified == [], "a #checkov:skip needs a reason: " + ", ".join(unjustified)
    print(f"checkov {summary['checkov_version']}: {summary['passed']} passed, {summary['failed']} failed, "
          f"{summary['skipped']} skipped with a reason in code")
