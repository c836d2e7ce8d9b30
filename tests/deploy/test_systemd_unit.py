"""deploy/systemd: the unit verifies, its exposure stays as low as the README says, and its
sandbox does not break CPython.

No running systemd is needed: ``systemd-analyze verify --root`` loads the unit from a temporary
root laid out as an installed host (the system's units, stub executables where the unit's
commands will be), and ``systemd-analyze security --offline=true`` scores the file.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "deploy" / "systemd"
UNIT = SYSTEMD / "spek-sentinel.service"
UNIT_NAME = UNIT.name
OPT_IN = sorted((SYSTEMD / "opt-in").glob("*.conf"))
SYSTEM_UNITS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
_HINT = "install the Debian package `systemd` (apt-get install --no-install-recommends systemd)"
_EXPOSURE = re.compile(r"Overall exposure level for (\S+): (\d+(?:\.\d+)?)")


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze") or shutil.which("systemd-analyze", path="/usr/bin:/bin")
    if found is None:
        pytest.fail(f"`systemd-analyze` not found; {_HINT}", pytrace=False)
    return found


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_COLORS": "0"},
    )


def directives(text: str) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> every value given, in order (systemd keys may repeat)."""
    found: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        found.setdefault((section, key.strip()), []).append(value.strip())
    return found


def executables(text: str) -> set[str]:
    """The absolute paths the unit's Exec*= lines run (prefixes such as - @ + ! stripped)."""
    paths = set()
    for (_, key), values in directives(text).items():
        if key.startswith("Exec"):
            for value in values:
                command = value.lstrip("-@:+!|")
                if command.startswith("/"):
                    paths.add(command.split()[0])
    return paths


def install_root(root: Path, unit_text: str, drop_ins: dict[str, str] | None = None) -> Path:
    """A host as it looks once the unit is installed: the system's units, the unit in
    /etc/systemd/system, and an executable wherever the unit's commands point."""
    system_units = next((path for path in SYSTEM_UNITS if path.is_dir()), None)
    if system_units is None:
        pytest.fail(f"no systemd unit directory ({SYSTEM_UNITS[0]}); {_HINT}", pytrace=False)
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    (etc / UNIT_NAME).write_text(unit_text)
    if drop_ins:
        directory = etc / f"{UNIT_NAME}.d"
        directory.mkdir()
        for name, text in drop_ins.items():
            (directory / name).write_text(text)
    for path in executables(unit_text):
        stub = root / path.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    return root


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    return analyze("verify", f"--root={root}", UNIT_NAME)


def assert_clean(result: subprocess.CompletedProcess[str]) -> None:
    # verify exits 0 on a directive it does not understand, only warning about it: any output
    # at all is a failure here.
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, f"systemd-analyze verify failed:\n{output}"
    assert output == "", f"systemd-analyze verify warned:\n{output}"


def exposure(root: Path) -> tuple[float, str]:
    result = analyze("security", "--offline=true", f"--root={root}", UNIT_NAME)
    report = result.stdout + result.stderr
    found = _EXPOSURE.search(report)
    assert result.returncode == 0, f"systemd-analyze security failed:\n{report}"
    assert found is not None, f"no exposure level in:\n{report}"
    assert found.group(1) == UNIT_NAME, report
    return float(found.group(2)), report


def readme_exposure() -> float:
    found = _EXPOSURE.search((REPO / "README.md").read_text())
    assert found is not None, "README.md does not record the unit's exposure level"
    assert found.group(1) == UNIT_NAME
    return float(found.group(2))


def test_the_unit_verifies(tmp_path: Path) -> None:
    assert_clean(verify(install_root(tmp_path, UNIT.read_text())))


@pytest.mark.parametrize("drop_in", OPT_IN, ids=lambda path: path.name)
def test_the_unit_verifies_with_each_opt_in_drop_in(tmp_path: Path, drop_in: Path) -> None:
    root = install_root(tmp_path, UNIT.read_text(), {drop_in.name: drop_in.read_text()})
    assert_clean(verify(root))


def test_the_opt_in_drop_ins_exist() -> None:
    assert [path.name for path in OPT_IN] == ["app-checkout.conf", "docker.conf"]


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (("Type=notify", "Type=notifyy"), "Failed to parse service type"),
        (("ExecStart=/usr/bin/spek-sentinel", "ExecStart=/nowhere/spek-sentinel"), "/nowhere"),
    ],
)
def test_verify_as_run_here_catches_mistakes(
    tmp_path: Path, change: tuple[str, str], complaint: str
) -> None:
    """The check above is not vacuous: a bad value and a missing binary are reported."""
    text = UNIT.read_text()
    assert change[0] in text
    root = install_root(tmp_path, "", None)
    (root / "etc/systemd/system" / UNIT_NAME).write_text(text.replace(*change))
    for path in executables(text):  # the stubs of the real unit, not of the broken one
        stub = root / path.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    result = verify(root)
    assert complaint in result.stdout + result.stderr


def test_exposure_is_at_most_what_the_readme_says(tmp_path: Path) -> None:
    score, report = exposure(install_root(tmp_path, UNIT.read_text()))
    recorded = readme_exposure()
    assert score <= recorded, (
        f"exposure {score} is above the {recorded} README.md records:\n{report}"
    )
    assert score <= 2.0, report


def test_the_docker_drop_in_costs_little_on_the_score(tmp_path: Path) -> None:
    """The score cannot see what the docker group grants (README): it only moves a little."""
    drop_in = SYSTEMD / "opt-in" / "docker.conf"
    root = install_root(tmp_path, UNIT.read_text(), {"docker.conf": drop_in.read_text()})
    score, report = exposure(root)
    assert score <= 2.0, report
    assert "SupplementaryGroups=" in report


REQUIRED = {
    ("Unit", "StartLimitIntervalSec"): None,
    ("Unit", "StartLimitBurst"): None,
    ("Service", "Type"): "notify",
    ("Service", "NotifyAccess"): "main",
    ("Service", "WatchdogSec"): "30",
    ("Service", "Restart"): "on-failure",
    ("Service", "RestartSec"): "5",
    ("Service", "User"): "spek-sentinel",
    ("Service", "DynamicUser"): "no",
    ("Service", "StateDirectory"): "spek-sentinel",
    ("Service", "NoNewPrivileges"): "yes",
    ("Service", "ProtectSystem"): "strict",
    ("Service", "ProtectHome"): "yes",
    ("Service", "PrivateTmp"): "yes",
    ("Service", "PrivateDevices"): "yes",
    ("Service", "ProtectKernelTunables"): "yes",
    ("Service", "ProtectKernelModules"): "yes",
    ("Service", "ProtectKernelLogs"): "yes",
    ("Service", "ProtectControlGroups"): "yes",
    ("Service", "RestrictAddressFamilies"): "AF_UNIX AF_INET AF_INET6",
    ("Service", "RestrictNamespaces"): "yes",
    ("Service", "LockPersonality"): "yes",
    ("Service", "MemoryDenyWriteExecute"): "yes",
    ("Service", "CapabilityBoundingSet"): "",
    ("Service", "ReadWritePaths"): "-/var/backups/spek-sentinel",
    ("Service", "LoadCredential"): "api-token:/etc/spek-sentinel/api-token",
    ("Service", "ExecStart"): "/usr/bin/spek-sentinel run -c /etc/spek-sentinel/thresholds.toml",
    ("Service", "ExecReload"): "/bin/kill -HUP $MAINPID",
    ("Install", "WantedBy"): "multi-user.target",
}


@pytest.mark.parametrize(("where", "value"), REQUIRED.items(), ids=str)
def test_the_unit_has_each_required_directive(where: tuple[str, str], value: str | None) -> None:
    found = directives(UNIT.read_text())
    assert where in found, f"[{where[0]}] {where[1]}= is missing"
    if value is not None:
        assert found[where] == [value], f"[{where[0]}] {where[1]}={found[where]}"


def test_the_system_call_filter_is_the_service_set_minus_privileged_calls() -> None:
    found = directives(UNIT.read_text())
    assert found["Service", "SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert found["Service", "SystemCallErrorNumber"] == ["EPERM"]


def test_the_sysusers_file_creates_the_units_user() -> None:
    lines = [
        line.split()
        for line in (SYSTEMD / "spek-sentinel.sysusers.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(lines) == 1
    assert lines[0][:3] == ["u", "spek-sentinel", "-"]
    assert lines[0][-2:] == ["/var/lib/spek-sentinel", "-"]


def test_the_config_paths_the_unit_names_are_documented_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    assert 'token_file = "/run/credentials/spek-sentinel.service/api-token"' in readme
    assert "SupplementaryGroups=docker" in readme


_PR_SET_MDWE = 65
_PR_MDWE_REFUSE_EXEC_GAIN = 1
_UNDER_MDWE = textwrap.dedent(
    """
    import asyncio, importlib, importlib.metadata as md, mmap, pkgutil, re, sqlite3, ssl

    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except PermissionError:
        pass
    else:
        raise SystemExit("writable+executable memory was allowed: MDWE is not in force")
    # every runtime dependency, and every module of the package
    tops = md.packages_distributions()
    wanted = {
        re.split(r"[\\s\\[<>=;]", req)[0].lower().replace("_", "-")
        for req in md.requires("spek-sentinel") or []
        if "extra ==" not in req
    }
    for top, dists in tops.items():
        if any(d.lower().replace("_", "-") in wanted for d in dists) and not top.startswith("_"):
            importlib.import_module(top)
    import spek_sentinel
    for module in pkgutil.walk_packages(spek_sentinel.__path__, "spek_sentinel."):
        importlib.import_module(module.name)
    asyncio.run(asyncio.sleep(0))
    ssl.create_default_context()
    sqlite3.connect(":memory:").execute("select 1")
    print("ok")
    """
)


def _refuse_exec_gain() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_MDWE, _PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")


def run_under_mdwe(command: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command,
            preexec_fn=_refuse_exec_gain,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
    except subprocess.SubprocessError as exc:
        pytest.fail(f"could not set PR_SET_MDWE (needs Linux 6.3 or newer): {exc}", pytrace=False)


def test_memory_deny_write_execute_is_safe_for_cpython_and_our_dependencies() -> None:
    """MemoryDenyWriteExecute=yes kills a process that maps writable+executable memory (a
    JIT, libffi closures without static trampolines). The kernel's own switch for the same
    rule (PR_SET_MDWE, Linux 6.3+) is inherited across exec: the real CLI and an import of
    every runtime dependency run under it."""
    imports = run_under_mdwe([sys.executable, "-c", _UNDER_MDWE])
    assert (imports.returncode, imports.stdout.strip()) == (0, "ok"), imports.stderr
    script = Path(sys.executable).with_name("spek-sentinel")
    assert script.is_file(), f"{script} missing: install the package (./dev test does)"
    cli = run_under_mdwe([str(script), "validate", "-c", str(REPO / "thresholds.toml")])
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "valid" in cli.stdout
