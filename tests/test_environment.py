"""What collectors take from the settings comes on their context (Environment), built by the caller."""

from __future__ import annotations

from pathlib import Path

import pytest

from ksocket.collectors import scan
from ksocket.collectors.base import Environment, InvalidParams, NullContext
from ksocket.collectors.inspect import hosts
from ksocket.collectors.inspect.hostkeys import HostKeyStore
from ksocket.collectors.inspect.limiter import HostLimiter
from ksocket.config import Settings
from tasks.runner import PipelineRunner
from tests.sshdtools import credential_file


def environment(root: Path, mode: str = "intranet") -> Environment:
    return Environment(root, HostLimiter(), HostKeyStore(root / "known_hosts"), networks_scan_mode=mode)


def test_built_from_the_settings(tmp_path: Path) -> None:
    settings = Settings(networks_scan_mode="azure", credentials_dir=str(tmp_path / "creds"))
    built = Environment.from_settings(settings)
    assert built.networks_scan_mode == "azure" and built.credentials_root == tmp_path / "creds"
    assert built.limiter is not Environment.from_settings(settings).limiter  # each caller's slots its own


def test_the_runner_builds_its_environment_from_its_settings() -> None:
    runner = PipelineRunner(Settings(networks_scan_mode="aws"))
    assert runner.environment.networks_scan_mode == "aws"


def test_the_scan_mode_without_params_mode_is_the_environments(tmp_path: Path) -> None:
    params = {"vpcs": ["subnet-1234"]}
    assert scan.mode_of(params, environment(tmp_path, "aws")) == "aws"
    assert scan.mode_of({"mode": "azure"}, environment(tmp_path, "aws")) == "azure"
    with pytest.raises(InvalidParams, match="vpcs: 'subnet-1234'"):  # checked as aws params
        scan.validate(params, environment(tmp_path, "aws"))


def test_inspection_reads_the_credential_files_of_the_contexts_environment(tmp_path: Path) -> None:
    credential_file(tmp_path, "00.toml", ["127.0.0.1"], password="pw-123456", port=1)  # nothing listens there
    result = hosts.collect({"address": "127.0.0.1", "protocols": ["ssh"]}, NullContext(environment(tmp_path)))
    assert result["ssh"]["error"]["code"] == "unreachable"
    assert result["ssh"]["error"]["attempts"][0]["credential"] == str(tmp_path / "ssh" / "00.toml")


def test_a_null_context_has_the_default_settings_environment_unless_given_one(tmp_path: Path) -> None:
    given = environment(tmp_path)
    assert NullContext(given).environment is given
    default = NullContext().environment
    assert default.credentials_root == Settings().credentials_path
    assert default.networks_scan_mode == "intranet"
