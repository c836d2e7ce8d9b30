"""The unit as systemd really runs it: the real daemon under a real systemd 252 (Debian 12),
with every sandbox setting of deploy/systemd/spek-sentinel.service in force.

``systemd-analyze`` (test_systemd_unit.py) reads the unit; only a service manager shows that
the sandbox lets the daemon start (user namespace, read-only system, system call filter, no
writable+executable memory), that the credential reaches the config's ``token_file``, that
``READY=1``, ``WATCHDOG=1`` and a reload go through the sd_notify client, and that a stop ends
cleanly. systemd runs as PID 1 of a container: an image made once by debootstrap
(``systemd``, ``procps`` for ``/bin/kill``, ``python3``), plus the product image's
``/opt/spek-sentinel`` venv copied in, so what runs is what ships. No network.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import tarfile
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import pytest

from deploy.image_build import Build
from harness import HarnessError
from harness.docker_engine import NAME_PREFIX, TEST_LABEL
from harness.postgres_image import _codename, _mirror, _run, _workdir
from harness.wait import wait_until

SYSTEMD = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
UNIT = "spek-sentinel.service"
SYSTEMD_BASE = "spek-sentinel-test/systemd:bookworm-1"
HOST_REPOSITORY = "spek-sentinel-test/systemd-host"
TOKEN = "unit-test-token-5d0c9a"  # noqa: S105 - a test token
WRONG_TOKEN = "not-the-token"  # noqa: S105 - a test token
STAGING = "/srv"  # in the container's own file system, where the install steps copy from
CREDENTIAL = "/run/credentials/spek-sentinel.service/api-token"
_PACKAGES = "systemd,procps,python3"
_HINT = "install the Debian package `debootstrap` (apt-get install debootstrap)"

pytestmark = pytest.mark.timeout(900)

# The smallest table `run` accepts: one pushed signal, one rule, a playbook whose steps are
# `true`. The API token is read from the file systemd hands over.
TABLE = f"""
[api]
token_file = "{CREDENTIAL}"

[probes.confirmed]
kind = "pushed"
signals.security_breach = {{ unit = "count", measure = "event" }}

[playbooks.stop_only]
scenario = "test"
application = "previous_release"

[[rules]]
name = "security_breach"
signal = "security_breach"
kind = "event"
severity = "immediate"
playbook = "stop_only"

[rollback.application]
kind = "command"
stop_command = ["true"]
rollback_command = ["true"]
start_command = ["true"]
current_release_command = ["echo", "v1"]
target_exists_command = ["true"]
"""

# README's install steps, for what is already on the image
INSTALL = """\
set -e
install -m 0644 /srv/install/spek-sentinel.sysusers.conf /etc/sysusers.d/spek-sentinel.conf
systemd-sysusers
install -d -m 0750 -g spek-sentinel /etc/spek-sentinel
install -m 0640 -g spek-sentinel /srv/install/thresholds.toml /etc/spek-sentinel/thresholds.toml
install -m 0600 /srv/install/api-token /etc/spek-sentinel/api-token
install -m 0644 /srv/install/spek-sentinel.service /etc/systemd/system/
systemctl daemon-reload
"""

HOST_DOCKERFILE = """\
FROM {product} AS product
FROM {base}
COPY --from=product /opt/spek-sentinel /opt/spek-sentinel
RUN ln -s /opt/spek-sentinel/bin/spek-sentinel /usr/bin/spek-sentinel \\
 && mkdir -p /etc/sysusers.d
"""


def ensure_systemd_base(client: docker.DockerClient) -> str:
    """Debian 12 minbase with systemd, procps and python3, imported once."""
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.get(SYSTEMD_BASE)
        return SYSTEMD_BASE
    debootstrap = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin")
    if debootstrap is None:
        raise HarnessError(f"`debootstrap` not found, needed to build {SYSTEMD_BASE}; {_HINT}")
    codename = _codename()
    with _workdir() as work:
        root = work / "root"
        _run(
            [debootstrap, "--variant=minbase", f"--include={_PACKAGES}", codename, str(root),
             _mirror(codename)],
            timeout=600,
        )  # fmt: skip
        for relative in ("var/cache/apt/archives", "usr/share/doc", "usr/share/man"):
            shutil.rmtree(root / relative, ignore_errors=True)
        archive = work / "rootfs.tar"
        _run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(archive), "."], timeout=300)
        repository, tag = SYSTEMD_BASE.rsplit(":", 1)
        client.api.import_image_from_file(
            str(archive),
            repository=repository,
            tag=tag,
            changes=[
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                'CMD ["/lib/systemd/systemd"]',
            ],
        )
    client.images.get(SYSTEMD_BASE)
    return SYSTEMD_BASE


def ensure_host_image(client: docker.DockerClient, product: str) -> str:
    """The systemd base with the product's venv, per product image (older ones removed)."""
    product_id = client.images.get(product).id.removeprefix("sha256:")[:12]
    tag = f"{HOST_REPOSITORY}:{product_id}"
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.get(tag)
        return tag
    base = ensure_systemd_base(client)
    context = tar_of({"Dockerfile": HOST_DOCKERFILE.format(product=product, base=base)})
    client.images.build(
        fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True, pull=False
    )
    for image in client.images.list(name=HOST_REPOSITORY):
        if tag not in image.tags:
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(image.id, force=True)
    return tag


def tar_of(files: dict[str, str], mode: int = 0o644) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


@dataclass
class Host:
    """A container whose PID 1 is systemd, with the unit installed as the README says."""

    container: docker.models.containers.Container

    def sh(self, script: str) -> tuple[int, str]:
        code, output = self.container.exec_run(["/bin/sh", "-c", script], demux=False)
        return int(code), output.decode(errors="replace")

    def ok(self, script: str) -> str:
        code, output = self.sh(script)
        assert code == 0, f"`{script}` exited with {code}:\n{output}\n{self.journal()}"
        return output

    def journal(self) -> str:
        return self.sh(f"journalctl -u {UNIT} --no-pager -n 40")[1]

    def show(self, *properties: str) -> dict[str, str]:
        output = self.ok(f"systemctl show {UNIT} -p {','.join(properties)}")
        return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)

    def status_of(self, pid: str) -> dict[str, str]:
        output = self.ok(f"cat /proc/{pid}/status")
        return dict(re.findall(r"^(\w+):\s*(.*)$", output, re.M))

    def http(
        self, method: str, path: str, token: str | None = None
    ) -> tuple[int, dict[str, object]]:
        body = {"name": "security_breach", "reason": "unit test", "resolve": True}
        code = textwrap.dedent(
            f"""
            import json, sys, urllib.request as u
            headers = {{"Content-Type": "application/json"}}
            if {token!r}:
                headers["Authorization"] = "Bearer " + {token!r}
            data = json.dumps({body!r}).encode() if {method!r} == "POST" else None
            request = u.Request("http://127.0.0.1:9102{path}", data=data, headers=headers,
                                method={method!r})
            try:
                with u.urlopen(request, timeout=10) as answer:
                    print(answer.status, answer.read().decode())
            except u.HTTPError as error:
                print(error.code, error.read().decode())
            """
        )
        status, _, text = self.ok(f"python3 -c {shell_quote(code)}").strip().partition(" ")
        loaded: dict[str, object] = json.loads(text)
        return int(status), loaded


def shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


@pytest.fixture(scope="module")
def host(docker_engine: docker.DockerClient, sentinel_image: Build) -> Iterator[Host]:
    try:
        image = ensure_host_image(docker_engine, sentinel_image.image)
    except HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)
    container = docker_engine.containers.run(
        image,
        entrypoint=["/bin/sh", "-c", "mount --make-rshared / && exec /lib/systemd/systemd"],
        name=f"{NAME_PREFIX}systemd-{uuid.uuid4().hex[:8]}",
        labels={TEST_LABEL: "1"},
        detach=True,
        network_mode="none",
        # what systemd as PID 1 needs to set up a service's namespaces, and no more than that;
        # the shared "/" lets credentials mounted in a child namespace reach the service
        cap_add=["SYS_ADMIN", "SYS_PTRACE"],
        security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        cgroupns="host",
        volumes={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}},
        stop_signal="SIGRTMIN+3",  # systemd's "halt"
    )
    host = Host(container)
    try:
        wait_until(
            lambda: host.sh("systemctl is-system-running")[1].strip() in {"running", "degraded"},
            timeout=60,
            interval=0.2,
            message="systemd did not finish booting in the container",
        )
        host.container.put_archive(
            STAGING,
            tar_of(
                {
                    "install/spek-sentinel.service": (SYSTEMD / UNIT).read_text(),
                    "install/spek-sentinel.sysusers.conf": (
                        SYSTEMD / "spek-sentinel.sysusers.conf"
                    ).read_text(),
                    "install/thresholds.toml": TABLE,
                    "install/api-token": TOKEN + "\n",
                }
            ),
        )
        host.ok(INSTALL)
        yield host
    finally:
        with contextlib.suppress(docker.errors.APIError):
            container.stop(timeout=20)
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True, v=True)


@pytest.fixture
def started(host: Host) -> Iterator[Host]:
    # Type=notify: `systemctl start` returns once the daemon sent READY=1
    host.ok(f"systemctl start {UNIT}")
    try:
        yield host
    finally:
        host.sh(f"systemctl stop {UNIT}; systemctl reset-failed {UNIT}")


def test_the_daemon_starts_ready_under_the_whole_sandbox(started: Host) -> None:
    state = started.show("ActiveState", "SubState", "MainPID", "WatchdogUSec", "NRestarts")
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), started.journal()
    assert state["WatchdogUSec"] == "30s"
    assert state["NRestarts"] == "0"
    process = started.status_of(state["MainPID"])
    assert process["Uid"].split()[0] != "0"
    assert process["NoNewPrivs"] == "1"
    assert process["Seccomp"] == "2"  # the system call filter
    assert int(process["CapEff"], 16) == 0
    assert int(process["CapBnd"], 16) == 0


def test_healthz_answers_and_the_credential_is_the_api_token(started: Host) -> None:
    assert started.http("GET", "/healthz")[0] == 200
    assert started.http("POST", "/api/v1/signals", token=WRONG_TOKEN)[0] == 401
    status, body = started.http("POST", "/api/v1/signals", token=TOKEN)
    assert status == 201, body


def test_the_watchdog_is_fed_and_a_reload_keeps_the_process(started: Host) -> None:
    first = started.show("WatchdogTimestampMonotonic", "MainPID")
    # WatchdogSec=30: the daemon pings every 15 s
    wait_until(
        lambda: (
            started.show("WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]
            != first["WatchdogTimestampMonotonic"]
        ),
        timeout=40,
        interval=1,
        message="no WATCHDOG=1 reached systemd",
    )
    # ExecReload sends SIGHUP and returns; the daemon says RELOADING=1 (the unit shows
    # "reloading") and READY=1 once the table is reloaded
    started.ok(f"systemctl reload {UNIT}")
    back = {"ActiveState": "active", "SubState": "running", "MainPID": first["MainPID"]}
    wait_until(
        lambda: started.show("ActiveState", "SubState", "MainPID") == back,
        timeout=30,
        interval=0.2,
        message=f"not back to active (running) after the reload:\n{started.journal()}",
    )
    assert "reloaded" in started.journal()


def test_a_stop_ends_cleanly(started: Host) -> None:
    started.ok(f"systemctl stop {UNIT}")
    state = started.show("ActiveState", "Result", "ExecMainStatus")
    assert state == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}


def install_drop_in(host: Host, name: str, prepare: str) -> None:
    text = (SYSTEMD / "opt-in" / name).read_text()
    host.container.put_archive(STAGING, tar_of({f"install/{name}": text}))
    host.ok(
        f"{prepare}\n"
        f"install -D -m 0644 {STAGING}/install/{name} /etc/systemd/system/{UNIT}.d/{name}\n"
        "systemctl daemon-reload"
    )


def remove_drop_ins(host: Host) -> None:
    host.sh(f"systemctl stop {UNIT}; rm -rf /etc/systemd/system/{UNIT}.d; systemctl daemon-reload")


def test_the_docker_drop_in_adds_the_group_and_still_starts(host: Host) -> None:
    install_drop_in(host, "docker.conf", "getent group docker || groupadd --system docker")
    try:
        host.ok(f"systemctl start {UNIT}")
        gid = host.ok("getent group docker | cut -d: -f3").strip()
        process = host.status_of(host.show("MainPID")["MainPID"])
        assert gid in process["Groups"].split()
        assert process["NoNewPrivs"] == "1"
    finally:
        remove_drop_ins(host)


def test_the_app_checkout_drop_in_opens_the_checkout_and_still_starts(host: Host) -> None:
    install_drop_in(host, "app-checkout.conf", "mkdir -p /opt/spek")
    try:
        host.ok(f"systemctl start {UNIT}")
        pid = host.show("MainPID")["MainPID"]
        mounts = host.ok(f"cat /proc/{pid}/mountinfo").splitlines()
        opt = [line.split() for line in mounts if line.split()[4] == "/opt/spek"]
        assert opt, "no mount of /opt/spek in the service's namespace"
        assert opt[-1][5].split(",")[0] == "rw"
        root = [line.split() for line in mounts if line.split()[4] == "/"]
        assert root[-1][5].split(",")[0] == "ro", "ProtectSystem=strict: the rest stays read-only"
    finally:
        remove_drop_ins(host)
