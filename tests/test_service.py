"""``ksocket service`` (manual 2.4) against recording stand-ins of systemctl, initctl and nssm.

No init system runs on the test machine (a container has no systemd as PID 1, no Upstart and no
Windows), so the commands are checked against stand-in scripts that append their arguments to a
log and answer the status queries as each test scripts them: the tests assert the exact calls
and the exact lines printed. The rendered systemd unit is checked by the real
``systemd-analyze verify`` of Debian's systemd package, which needs no running systemd.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ksocket import cli
from ksocket.diagnostics import Report
from ksocket.service import Layout, Nssm, ServiceError, Systemd, Upstart, detect, detect_name

UNIT = "ksocket.service"
SHOW = ["show", "--property=LoadState,ActiveState", UNIT]

STANDIN = """#!{python}
import json, sys
from pathlib import Path
root = Path({root!r})
with (root / "calls.log").open("a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
answers = root / ("answer." + (sys.argv[1] if len(sys.argv) > 1 else "") + ".json")
if answers.exists():
    queue = json.loads(answers.read_text())
    answer = queue[0]
    if len(queue) > 1:
        answers.write_text(json.dumps(queue[1:]))
    sys.stdout.write(answer.get("stdout", ""))
    sys.stderr.write(answer.get("stderr", ""))
    sys.exit(answer.get("code", 0))
"""


class StandIn:
    """A recording stand-in for an init tool: it logs its argv and answers as scripted, per verb."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root / f"{name}-standin"
        self.root.mkdir()
        self.path = self.root / name
        self.path.write_text(STANDIN.format(python=sys.executable, root=str(self.root)))
        self.path.chmod(0o755)

    def answer(self, verb: str, *answers: tuple[str, int] | str) -> None:
        """Scripts the answers to ``TOOL VERB …``, one per call, the last one repeating; (stdout, code) or stdout."""
        queue = []
        for answer in answers:
            out, code = answer if isinstance(answer, tuple) else (answer, 0)
            queue.append({"stdout" if code == 0 else "stderr": out, "code": code})
        (self.root / f"answer.{verb}.json").write_text(json.dumps(queue))

    def calls(self) -> list[list[str]]:
        log = self.root / "calls.log"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    def forget(self) -> None:
        (self.root / "calls.log").unlink(missing_ok=True)


def systemd_state(load: str, active: str = "inactive") -> str:
    return f"LoadState={load}\nActiveState={active}\n"


def manual_form(output: str) -> list[str]:
    """Printed lines with the dots of ``label ..... OK`` made five, as the manual shows them."""
    return [re.sub(r"^(.*?) \.{3,} ", r"\1 ..... ", line) for line in output.splitlines()]


def ksocket_service(*argv: str) -> int:
    """``ksocket service ARGV`` in this process."""
    return cli.main(["service", *argv])


@pytest.fixture
def systemctl(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    """A systemctl stand-in and a unit folder in tmp_path (the first folder named does not exist)."""
    tool = StandIn(tmp_path, "systemctl")
    (tmp_path / "usr-lib-systemd-system").mkdir()
    folders = [tmp_path / "missing-lib-systemd-system", tmp_path / "usr-lib-systemd-system"]
    monkeypatch.setenv("KSOCKET_SYSTEMCTL", str(tool.path))
    monkeypatch.setenv("KSOCKET_SYSTEMD_UNIT_DIRS", os.pathsep.join(map(str, folders)))
    for name in ("KSOCKET_SERVICE_BACKEND", "KSOCKET_INITCTL", "KSOCKET_NSSM"):
        monkeypatch.delenv(name, raising=False)
    yield tool


def unit_link(tmp_path: Path) -> Path:
    return tmp_path / "usr-lib-systemd-system" / UNIT


def runner_prefix(root: Path) -> Path:
    """A prefix with an executable ``bin/ksocket``, as ksinstall leaves it."""
    runner = root / "bin" / "ksocket"
    runner.parent.mkdir(parents=True)
    runner.write_text("#!/bin/sh\nexit 0\n")
    runner.chmod(0o755)
    return root


# --------------------------------------------------------------------------- systemd


def test_install_writes_the_unit_under_the_prefix_links_it_and_restarts(
    tmp_path: Path, home: Path, systemctl: StandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    systemctl.answer("show", systemd_state("loaded", "inactive"))

    assert ksocket_service("install") == 0

    unit = home / "usr" / "lib" / "systemd" / "system" / UNIT
    assert manual_form(capsys.readouterr().out) == [
        "Check if ksocket runner exists ..... OK",
        f"Create a service file ..... OK [{unit}]",
        "Install the service ..... OK",
        "Get status of the service ..... OK",
        "Restart the service ..... OK",
    ]
    assert systemctl.calls() == [["daemon-reload"], ["enable", UNIT], SHOW, ["restart", UNIT]]
    link = unit_link(tmp_path)
    assert link.is_symlink() and link.readlink() == unit
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    text = unit.read_text()
    runner = Path(sys.prefix) / "bin" / "ksocket"
    for line in [
        "Type=simple",
        "KillMode=process",
        "After=network.target",
        f"WorkingDirectory={sys.prefix}",
        f"ExecStart={runner} connect",
        f'Environment="KSOCKET_HOME={home}"',
        "StartLimitInterval=10",
        "StartLimitBurst=5",
        "WantedBy=multi-user.target",
    ]:
        assert line in text.splitlines(), line
    assert "@" not in text  # every placeholder filled in


def test_install_over_an_installed_service_replaces_the_link(
    tmp_path: Path, home: Path, systemctl: StandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    systemctl.answer("show", systemd_state("loaded", "active"))
    unit_link(tmp_path).symlink_to(tmp_path / "an-old-unit.service")  # dangling, as after a moved prefix

    assert ksocket_service("install") == 0
    assert ksocket_service("install") == 0

    assert unit_link(tmp_path).readlink() == home / "usr" / "lib" / "systemd" / "system" / UNIT
    assert [call[0] for call in systemctl.calls()] == ["daemon-reload", "enable", "show", "restart"] * 2
    assert manual_form(capsys.readouterr().out).count("Restart the service ..... OK") == 2


def test_install_leaves_a_unit_file_that_is_not_its_own_link(
    tmp_path: Path, home: Path, systemctl: StandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    unit_link(tmp_path).write_text("[Service]\nExecStart=/usr/bin/true\n")

    assert ksocket_service("install") == 1

    lines = manual_form(capsys.readouterr().out)
    assert lines[0] == "Check if ksocket runner exists ..... OK"
    assert lines[1].startswith("Create a service file ..... NG [")
    assert "is not ksocket's link" in lines[1]
    assert len(lines) == 2
    assert systemctl.calls() == []
    assert unit_link(tmp_path).read_text() == "[Service]\nExecStart=/usr/bin/true\n"


def test_install_stops_when_the_runner_is_missing(tmp_path: Path, systemctl: StandIn) -> None:
    backend = Systemd(Layout(prefix=tmp_path / "nothing-here", home=tmp_path / "home"))
    report = Report()

    assert backend.install(report) == 1

    assert report.failed == 1
    assert systemctl.calls() == []
    assert not unit_link(tmp_path).exists()


def test_install_reports_the_failing_systemctl_call(
    home: Path, systemctl: StandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    systemctl.answer("show", systemd_state("loaded", "inactive"))
    systemctl.answer("restart", ("Failed to restart ksocket.service: Access denied\n", 1))

    assert ksocket_service("install") == 1

    assert manual_form(capsys.readouterr().out)[-1] == (
        "Restart the service ..... NG "
        "[systemctl restart ksocket.service: exit status 1: Failed to restart ksocket.service: Access denied]"
    )


@pytest.mark.parametrize(
    ("load", "active", "printed"),
    [
        ("not-found", "inactive", "missing"),
        ("loaded", "active", "running"),
        ("loaded", "inactive", "stopped"),
        ("loaded", "failed", "stopped"),
        ("loaded", "activating", "processing"),
        ("loaded", "deactivating", "processing"),
    ],
)
def test_status_prints_one_of_four_words(
    systemctl: StandIn, capsys: pytest.CaptureFixture[str], load: str, active: str, printed: str
) -> None:
    systemctl.answer("show", systemd_state(load, active))

    assert ksocket_service("status") == 0

    assert capsys.readouterr().out == f"{printed}\n"
    assert systemctl.calls() == [SHOW]


def test_status_without_a_running_systemd_is_one_error_line(
    systemctl: StandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    systemctl.answer("show", ("System has not been booted with systemd as init system (PID 1). Can't operate.\n", 1))

    assert ksocket_service("status") == 1

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "ksocket: error: systemctl show --property=LoadState,ActiveState ksocket.service: exit status 1: "
        "System has not been booted with systemd as init system (PID 1). Can't operate.\n"
    )


@pytest.mark.parametrize(
    ("command", "active", "verdict", "calls"),
    [
        ("start", "inactive", "OK", [SHOW, ["start", UNIT]]),
        ("start", "active", "Skip", [SHOW]),
        ("stop", "active", "OK", [SHOW, ["stop", UNIT]]),
        ("stop", "inactive", "Skip", [SHOW]),
        ("restart", "active", "OK", [SHOW, ["restart", UNIT]]),
        ("restart", "inactive", "OK", [SHOW, ["restart", UNIT]]),
    ],
)
def test_start_stop_restart(
    systemctl: StandIn,
    capsys: pytest.CaptureFixture[str],
    command: str,
    active: str,
    verdict: str,
    calls: list[list[str]],
) -> None:
    systemctl.answer("show", systemd_state("loaded", active))

    assert ksocket_service(command) == 0

    assert manual_form(capsys.readouterr().out) == [
        "Get status of the service ..... OK",
        f"{command.capitalize()} the service ..... {verdict}",
    ]
    assert systemctl.calls() == calls


@pytest.mark.parametrize("command", ["start", "stop", "restart"])
def test_start_stop_restart_refuse_a_missing_service(
    systemctl: StandIn, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    systemctl.answer("show", systemd_state("not-found"))

    assert ksocket_service(command) == 1

    assert manual_form(capsys.readouterr().out) == [
        "Get status of the service ..... OK",
        f"{command.capitalize()} the service ..... NG [the service is not installed: run `ksocket service install`]",
    ]
    assert systemctl.calls() == [SHOW]


def test_uninstall_stops_disables_unlinks_and_removes_the_unit(
    tmp_path: Path, home: Path, systemctl: StandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    systemctl.answer("show", systemd_state("loaded", "active"))
    assert ksocket_service("install") == 0
    capsys.readouterr()
    systemctl.forget()

    assert ksocket_service("uninstall") == 0

    unit = home / "usr" / "lib" / "systemd" / "system" / UNIT
    assert manual_form(capsys.readouterr().out) == [
        "Stop the service ..... OK",
        "Uninstall the service ..... OK",
        "",
        f"Remove a service file ..... OK [{unit}]",
    ]
    assert systemctl.calls() == [SHOW, ["stop", UNIT], ["disable", UNIT], ["daemon-reload"]]
    assert not unit.exists()
    assert not unit_link(tmp_path).is_symlink()


def test_uninstall_of_a_missing_service_skips_every_step(
    home: Path, systemctl: StandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    systemctl.answer("show", systemd_state("not-found"))

    assert ksocket_service("uninstall") == 0

    unit = home / "usr" / "lib" / "systemd" / "system" / UNIT
    assert manual_form(capsys.readouterr().out) == [
        "Stop the service ..... Skip",
        "Uninstall the service ..... Skip",
        "",
        f"Remove a service file ..... Skip [{unit}]",
    ]
    assert systemctl.calls() == [SHOW]


def test_rendered_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    prefix = runner_prefix(tmp_path / "opt" / "fixpoint" / "ksocket")
    for name, layout in [
        ("installed.service", Layout(prefix=prefix, home=prefix)),
        ("checkout.service", Layout(prefix=prefix, home=tmp_path / "state")),
    ]:
        unit = tmp_path / name
        unit.write_text(Systemd(layout).render())
        done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, check=False)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), name

    # the same check speaks up about a unit it does not like, so silence above means something
    broken = tmp_path / "broken.service"
    broken.write_text(Systemd(Layout(prefix=prefix, home=prefix)).render().replace("KillMode=", "KilMode="))
    done = subprocess.run([analyze, "verify", str(broken)], capture_output=True, text=True, check=False)
    assert "KilMode" in done.stdout + done.stderr


def test_a_path_a_unit_cannot_carry_is_refused(tmp_path: Path) -> None:
    layout = Layout(prefix=tmp_path / "with space", home=tmp_path / "with space")
    with pytest.raises(ServiceError, match="cannot carry this path"):
        Systemd(layout).render()


# --------------------------------------------------------------------------- Upstart


@pytest.fixture
def initctl(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    tool = StandIn(tmp_path, "initctl")
    (tmp_path / "etc-init").mkdir()
    monkeypatch.setenv("KSOCKET_INITCTL", str(tool.path))
    monkeypatch.setenv("KSOCKET_UPSTART_DIR", str(tmp_path / "etc-init"))
    for name in ("KSOCKET_SERVICE_BACKEND", "KSOCKET_SYSTEMCTL", "KSOCKET_NSSM"):
        monkeypatch.delenv(name, raising=False)
    yield tool


def test_upstart_install_writes_the_job_and_starts_it(
    tmp_path: Path, home: Path, initctl: StandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    initctl.answer("status", "ksocket stop/waiting\n")

    assert ksocket_service("install") == 0

    job = home / "etc" / "init" / "ksocket.conf"
    assert manual_form(capsys.readouterr().out) == [
        "Check if ksocket runner exists ..... OK",
        f"Create a service file ..... OK [{job}]",
        "Install the service ..... OK",
        "Get status of the service ..... OK",
        "Restart the service ..... OK",
    ]
    # a stopped job is started: `initctl restart` refuses one that is not running
    assert initctl.calls() == [["reload-configuration"], ["status", "ksocket"], ["start", "ksocket"]]
    installed = tmp_path / "etc-init" / "ksocket.conf"
    assert installed.read_text() == job.read_text()
    assert f"exec {sys.prefix}/bin/ksocket connect" in job.read_text().splitlines()
    assert f"chdir {sys.prefix}" in job.read_text().splitlines()


@pytest.mark.parametrize(
    ("answer", "printed"),
    [
        (("initctl: Unknown job: ksocket\n", 1), "missing"),
        ("ksocket start/running, process 4242\n", "running"),
        ("ksocket stop/waiting\n", "stopped"),
        ("ksocket start/pre-start, process 4242\n", "processing"),
        ("ksocket stop/killed, process 4242\n", "processing"),
    ],
)
def test_upstart_status(
    initctl: StandIn, capsys: pytest.CaptureFixture[str], answer: tuple[str, int] | str, printed: str
) -> None:
    initctl.answer("status", answer)

    assert ksocket_service("status") == 0

    assert capsys.readouterr().out == f"{printed}\n"
    assert initctl.calls() == [["status", "ksocket"]]


def test_upstart_restart_and_uninstall(
    tmp_path: Path, home: Path, initctl: StandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    initctl.answer("status", "ksocket start/running, process 4242\n")
    assert ksocket_service("install") == 0
    assert ksocket_service("restart") == 0
    capsys.readouterr()
    initctl.forget()

    assert ksocket_service("uninstall") == 0

    job = home / "etc" / "init" / "ksocket.conf"
    assert manual_form(capsys.readouterr().out) == [
        "Stop the service ..... OK",
        "Uninstall the service ..... OK",
        "",
        f"Remove a service file ..... OK [{job}]",
    ]
    assert initctl.calls() == [["status", "ksocket"], ["stop", "ksocket"], ["reload-configuration"]]
    assert not (tmp_path / "etc-init" / "ksocket.conf").exists()
    assert not job.exists()


# --------------------------------------------------------------------------- NSSM


@pytest.fixture
def nssm(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    tool = StandIn(tmp_path, "nssm")
    monkeypatch.setenv("KSOCKET_NSSM", str(tool.path))
    for name in ("KSOCKET_SERVICE_BACKEND", "KSOCKET_SYSTEMCTL", "KSOCKET_INITCTL"):
        monkeypatch.delenv(name, raising=False)
    yield tool


def test_nssm_install_registers_fixpoint_ksocket_service(
    tmp_path: Path, home: Path, nssm: StandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = ("Can't open service!\nOpenService(): The specified service does not exist.\n", 3)
    nssm.answer("status", missing, "SERVICE_STOPPED\n")
    runner = str(Path(sys.prefix) / "bin" / "ksocket")

    assert ksocket_service("install") == 0

    assert manual_form(capsys.readouterr().out) == [
        "Check if ksocket runner exists ..... OK",
        "Install the service ..... OK",
        "Get status of the service ..... OK",
        "Restart the service ..... OK",
    ]
    assert nssm.calls() == [
        ["status", "ksocket"],
        ["install", "ksocket", runner],
        ["set", "ksocket", "Application", runner],
        ["set", "ksocket", "AppParameters", "connect"],
        ["set", "ksocket", "AppDirectory", sys.prefix],
        ["set", "ksocket", "AppEnvironmentExtra", f"KSOCKET_HOME={home}"],
        ["set", "ksocket", "DisplayName", "Fixpoint ksocket service"],
        ["set", "ksocket", "Description", "A RPC like client service for Fixpoint, Inc. Kompira cloud"],
        ["set", "ksocket", "Start", "SERVICE_AUTO_START"],
        ["set", "ksocket", "AppExit", "Default", "Exit"],
        ["status", "ksocket"],
        ["restart", "ksocket"],
    ]


def test_nssm_reinstall_updates_the_service_instead_of_installing_it_again(tmp_path: Path, nssm: StandIn) -> None:
    prefix = runner_prefix(tmp_path / "prefix")
    nssm.answer("status", "SERVICE_RUNNING\n")

    assert Nssm(Layout(prefix=prefix, home=prefix)).install(Report()) == 0

    verbs = [call[:3] for call in nssm.calls()]
    assert ["install", "ksocket", str(prefix / "bin" / "ksocket")] not in verbs
    assert ["set", "ksocket", "Application"] in verbs
    assert not any(call[2] == "AppEnvironmentExtra" for call in nssm.calls() if len(call) > 2)


@pytest.mark.parametrize(
    ("answer", "printed"),
    [
        (("Can't open service!\n", 3), "missing"),
        ("SERVICE_RUNNING\n", "running"),
        ("S\x00E\x00R\x00V\x00I\x00C\x00E\x00_\x00S\x00T\x00O\x00P\x00P\x00E\x00D\x00\n\x00", "stopped"),
        ("SERVICE_START_PENDING\n", "processing"),
        ("SERVICE_PAUSED\n", "processing"),
    ],
)
def test_nssm_status(
    nssm: StandIn, capsys: pytest.CaptureFixture[str], answer: tuple[str, int] | str, printed: str
) -> None:
    nssm.answer("status", answer)

    assert ksocket_service("status") == 0

    assert capsys.readouterr().out == f"{printed}\n"


def test_nssm_stop_skip_and_uninstall(nssm: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    nssm.answer("status", "SERVICE_STOPPED\n")

    assert ksocket_service("stop") == 0
    assert ksocket_service("uninstall") == 0

    assert manual_form(capsys.readouterr().out) == [
        "Get status of the service ..... OK",
        "Stop the service ..... Skip",
        "Stop the service ..... Skip",
        "Uninstall the service ..... OK",
    ]
    assert nssm.calls() == [["status", "ksocket"], ["status", "ksocket"], ["remove", "ksocket", "confirm"]]


# --------------------------------------------------------------------------- detection


def test_detection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KSOCKET_SERVICE_BACKEND", "KSOCKET_SYSTEMCTL", "KSOCKET_INITCTL", "KSOCKET_NSSM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("ksocket.service.SYSTEMD_RUN_DIR", tmp_path / "run-systemd-system")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))

    with pytest.raises(ServiceError, match="no init system found"):
        detect_name()
    StandIn(tmp_path, "systemctl").path.rename(bin_dir / "systemctl")
    assert detect_name() == "systemd"
    StandIn(tmp_path, "initctl").path.rename(bin_dir / "initctl")
    assert detect_name() == "upstart"  # an Upstart host that has a systemctl too
    (tmp_path / "run-systemd-system").mkdir()
    assert detect_name() == "systemd"  # systemd is running
    monkeypatch.setenv("KSOCKET_NSSM", "nssm.exe")
    assert detect_name() == "nssm"
    monkeypatch.setenv("KSOCKET_SERVICE_BACKEND", "upstart")
    assert isinstance(detect(), Upstart)
    with pytest.raises(ServiceError, match="unknown service backend"):
        detect("launchd")


def test_backend_option_wins_over_detection(
    systemctl: StandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    initctl = StandIn(tmp_path, "initctl")
    monkeypatch.setenv("KSOCKET_INITCTL", str(initctl.path))
    initctl.answer("status", "ksocket start/running, process 1\n")

    assert ksocket_service("status", "--backend", "upstart") == 0

    assert capsys.readouterr().out == "running\n"
    assert systemctl.calls() == []
    assert initctl.calls() == [["status", "ksocket"]]
