"""The docker backend: the application is one container, its release an image.

``rollback_to(image)`` recreates the container from the previous image with the settings of
the one in place, read from the engine's inspect data: name, environment, port bindings,
volumes and mounts, restart policy, labels, command and entrypoint, network mode and
networks, and the rest of the host config. What the old container got from its image rather
than from whoever ran it (image ENV, CMD, ENTRYPOINT, labels, working dir, user, VOLUME,
healthcheck) is left for the target image to supply, so v1 runs with v1's defaults and the
operator's settings. (A setting that happens to equal the old image's default is taken for a
default.) Anonymous volumes are carried over by name, so their data stays attached.

The old container is never removed: it is stopped, renamed ``<name>-replaced-<UTC stamp>``
and its restart policy set to ``no`` (a daemon restart must not bring the bad release back
next to the good one), kept for forensics and undo. If the new container cannot be created or
started, it is removed (it never served) and the old one gets its name and restart policy back,
left stopped: the sentinel never restarts the release it is rolling back from on its own.

Idempotence: stop on a stopped container and start on a running one do nothing; rolling back
to the image the container already runs starts it if needed and changes nothing else. A crash
between the rename and the creation leaves no container under the name: rollback then fails
and names the ``-replaced-`` container to rename back (``docker rename``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import requests

from spek_sentinel.rollback.apps.base import (
    AppBackendError,
    AppState,
    StepOutput,
    TargetMissingError,
    check_release,
    output_tail,
)
from spek_sentinel.secrets import redact

DEFAULT_HOST = "unix:///var/run/docker.sock"
_DOCKER_STOP_GRACE = 10  # docker stop's own default
_ACTIVE = frozenset({"running", "restarting", "paused"})
_BUILTIN_NETWORKS = frozenset({"default", "bridge", "host", "none"})
# What a container inherits from its image unless its creator set something else.
_IMAGE_DEFAULTS = ("WorkingDir", "User", "StopSignal", "Healthcheck", "Shell", "OnBuild")
_ENGINE_ERRORS = (docker.errors.DockerException, requests.RequestException)

Inspect = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class DockerAppSettings:
    container: str
    docker_host: str = DEFAULT_HOST
    stop_grace: int | None = None  # seconds before SIGKILL; None = the container's StopTimeout
    secrets: tuple[str, ...] = ()


class DockerBackend:
    def __init__(self, settings: DockerAppSettings) -> None:
        self._settings = settings
        self._name = settings.container

    @property
    def description(self) -> str:
        return f"docker container {self._name}"

    def current_release(self, timeout: float = 30.0) -> str:
        """The image reference the container was created from while it still names the image
        the container runs, else the image id (the tag moved on)."""
        op = "current release"
        with self._engine(op, timeout) as api:
            container = self._container(api, op)
            ref = str(container["Config"]["Image"])
            image_id = str(container["Image"])
            try:
                same = api.inspect_image(ref)["Id"] == image_id
            except docker.errors.NotFound:
                same = False
            return ref if same else image_id

    def target_exists(self, release: str, timeout: float = 30.0) -> bool:
        """Whether the image is in the engine. Nothing is pulled (no registry is assumed)."""
        if check_release(release) is not None:
            return False
        with self._engine("pre-flight", timeout) as api:
            return _image(api, release) is not None

    def stop(self, timeout: float = 60.0) -> StepOutput:
        """``docker stop``; the container is kept. Stopping a stopped container does nothing."""
        started = time.monotonic()
        with self._engine("stop", timeout) as api:
            container = self._container(api, "stop")
            if container["State"]["Status"] not in _ACTIVE:
                return StepOutput(
                    f"{self._name} already stopped ({container['State']['Status']})",
                    (f"inspect {self._name}",),
                    "",
                    time.monotonic() - started,
                    changed=False,
                )
            self._stop(api, container, "stop")
            return StepOutput(
                f"{self._name} stopped",
                (f"stop {self._name}",),
                "",
                time.monotonic() - started,
                changed=True,
            )

    def start(self, timeout: float = 60.0) -> StepOutput:
        """``docker start``. Starting a running container does nothing. A container that exits
        at once is reported in the output; phase 5 (verify) judges whether the app is up."""
        started = time.monotonic()
        with self._engine("start", timeout) as api:
            container = self._container(api, "start")
            if container["State"]["Status"] == "running":
                return StepOutput(
                    f"{self._name} already running",
                    (f"inspect {self._name}",),
                    "",
                    time.monotonic() - started,
                    changed=False,
                )
            status, logs = self._start(api, container)
            return StepOutput(
                f"{self._name} started; status {status}",
                (f"start {self._name}",),
                logs,
                time.monotonic() - started,
                changed=True,
            )

    def rollback_to(self, release: str, timeout: float = 600.0) -> StepOutput:
        started = time.monotonic()
        op = f"rollback to {release}"
        why = check_release(release)
        with self._engine(op, timeout) as api:
            target = None if why else _image(api, release)
            if target is None:
                raise TargetMissingError(
                    op,
                    f"image {release!r} {why or 'is not in the engine (nothing is pulled)'}",
                    state=AppState.UNCHANGED,
                    changed=False,
                )
            old = self._container(api, op)
            if old["Image"] == target["Id"]:
                return self._already(api, old, release, started)
            old_image = _image(api, str(old["Image"]))
            config = recreate_config(old, old_image, release)
            kept = self._free_name(api)
            ran: list[str] = []
            was_active = old["State"]["Status"] in _ACTIVE
            if was_active:
                self._stop(api, old, op)
                ran.append(f"stop {self._name}")
            self._set_aside(api, old, kept, op, was_active)
            ran.append(f"rename {self._name} {kept}")
            status, logs = self._replace(api, old, kept, config, op)
            ran += [f"create {self._name} from {release}", f"start {self._name}"]
            summary = describe_config(config, old_image is not None)
            return StepOutput(
                f"{self._name} recreated from {release} (was {old['Config']['Image']}), "
                f"status {status}; previous container kept as {kept} (stopped, restart no)",
                tuple(ran),
                output_tail("\n".join(filter(None, [summary, logs])), self._settings.secrets),
                time.monotonic() - started,
                changed=True,
            )

    # --- steps of rollback_to ---

    def _already(self, api: Any, old: Inspect, release: str, started: float) -> StepOutput:
        if old["State"]["Status"] == "running":
            return StepOutput(
                f"{self._name} already runs {release}; nothing to do",
                (f"inspect {self._name}",),
                "",
                time.monotonic() - started,
                changed=False,
            )
        status, logs = self._start(api, old)
        return StepOutput(
            f"{self._name} already was {release}; started it, status {status}",
            (f"start {self._name}",),
            logs,
            time.monotonic() - started,
            changed=True,
        )

    def _set_aside(self, api: Any, old: Inspect, kept: str, op: str, stopped_here: bool) -> None:
        """Rename the old container out of the way and keep it from restarting on its own."""
        try:
            api.rename(old["Id"], kept)
        except _ENGINE_ERRORS as exc:
            raise AppBackendError(
                op,
                f"renaming {self._name} to {kept} failed: {self._reason(exc)}",
                state=AppState.STOPPED,
                changed=stopped_here,
                detail=f"{self._name} is stopped and keeps its name; `docker start {self._name}` "
                "brings back the release that was running",
            ) from exc
        if _restart_policy(old).get("Name") not in (None, "", "no"):
            try:
                api.update_container(old["Id"], restart_policy={"Name": "no"})
            except _ENGINE_ERRORS as exc:
                self._undo(api, old, kept)
                raise AppBackendError(
                    op,
                    f"could not turn off the restart policy of {kept}: {self._reason(exc)}",
                    state=AppState.STOPPED,
                    changed=stopped_here,
                    detail=f"renamed back to {self._name}, left stopped",
                ) from exc

    def _replace(
        self, api: Any, old: Inspect, kept: str, config: dict[str, Any], op: str
    ) -> tuple[str, str]:
        new_id: str | None = None
        try:
            new_id = str(api.create_container_from_config(config, self._name)["Id"])
            for network, endpoint in extra_networks(old).items():
                api.connect_container_to_network(new_id, network, **endpoint)
            api.start(new_id)
        except _ENGINE_ERRORS as exc:
            reason = self._reason(exc)
            undone = self._undo(api, old, kept, new_id)
            raise AppBackendError(
                op,
                f"the new container could not be {'started' if new_id else 'created'}: {reason}",
                state=AppState.STOPPED,
                changed=True,
                detail=undone,
            ) from exc
        return self._status_and_logs(api, new_id)

    def _undo(self, api: Any, old: Inspect, kept: str, new_id: str | None = None) -> str:
        """Put the old container back under its name (stopped). Returns what was done."""
        done: list[str] = []
        try:
            if new_id is not None:
                api.remove_container(new_id, force=True)  # ours, never served: nothing to keep
                done.append("the new container was removed")
            api.rename(old["Id"], self._name)
            done.append(
                f"the old container was renamed back to {self._name}, left stopped "
                f"(`docker start {self._name}` brings back the release that was running)"
            )
            policy = _restart_policy(old)
            if policy.get("Name") not in (None, "", "no"):
                api.update_container(old["Id"], restart_policy=policy)
                done.append("its restart policy restored")
        except _ENGINE_ERRORS as exc:
            done.append(
                f"undo failed: {self._reason(exc)}; the old container is {kept} "
                f"(rename it: `docker rename {kept} {self._name}`)"
            )
        return "; ".join(done)

    # --- engine helpers ---

    @contextmanager
    def _engine(self, op: str, timeout: float) -> Iterator[Any]:
        """A client whose every request times out after ``timeout``; engine errors that the
        operation did not handle become an AppBackendError with the state seen afterwards."""
        api: Any = None
        try:
            api = docker.APIClient(
                base_url=self._settings.docker_host, version="auto", timeout=timeout
            )
            yield api
        except _ENGINE_ERRORS as exc:
            # without a client nothing was sent; with one, say what the container is now
            state, changed = (AppState.UNKNOWN, False) if api is None else self._observe(api)
            raise AppBackendError(
                op, f"docker engine: {self._reason(exc)}", state=state, changed=changed
            ) from exc
        finally:
            if api is not None:
                api.close()

    def _observe(self, api: Any) -> tuple[AppState, bool]:
        try:
            status = api.inspect_container(self._name)["State"]["Status"]
        except _ENGINE_ERRORS:
            return AppState.UNKNOWN, True
        return (AppState.RUNNING if status == "running" else AppState.STOPPED), True

    def _container(self, api: Any, op: str) -> Inspect:
        try:
            found: Inspect = api.inspect_container(self._name)
        except docker.errors.NotFound:
            prefix = f"{self._name}-replaced-"
            kept = [
                name.lstrip("/")
                for c in api.containers(all=True, filters={"name": prefix})
                for name in c.get("Names") or []
                if name.lstrip("/").startswith(prefix)
            ]
            hint = (
                f"; containers set aside by a rollback: {', '.join(sorted(kept))}" if kept else ""
            )
            raise AppBackendError(
                op,
                f"no container named {self._name}{hint}",
                state=AppState.UNKNOWN,
                changed=False,
            ) from None
        return found

    def _stop(self, api: Any, container: Inspect, op: str) -> None:
        grace = self._settings.stop_grace
        if grace is None:
            grace = int(container["Config"].get("StopTimeout") or _DOCKER_STOP_GRACE)
        api.stop(container["Id"], timeout=grace)  # the request may take the grace on top
        status = api.inspect_container(container["Id"])["State"]["Status"]
        if status in _ACTIVE:
            raise AppBackendError(
                op,
                f"{self._name} is still {status} after docker stop",
                state=AppState.RUNNING,
                changed=False,
            )

    def _start(self, api: Any, container: Inspect) -> tuple[str, str]:
        container_id = str(container["Id"])
        if container["State"]["Status"] == "paused":
            api.unpause(container_id)  # a paused container cannot be started, only resumed
        else:
            api.start(container_id)
        return self._status_and_logs(api, container_id)

    def _status_and_logs(self, api: Any, container_id: str) -> tuple[str, str]:
        status = str(api.inspect_container(container_id)["State"]["Status"])
        if status == "running":
            return status, ""
        logs = api.logs(container_id, tail=20).decode(errors="replace")
        return status, output_tail(logs, self._settings.secrets)

    def _free_name(self, api: Any) -> str:
        base = f"{self._name}-replaced-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        for n in range(100):
            name = base if n == 0 else f"{base}-{n}"
            try:
                api.inspect_container(name)
            except docker.errors.NotFound:
                return name
        raise AppBackendError(
            "rollback", f"no free name like {base}", state=AppState.UNCHANGED, changed=False
        )

    def _reason(self, exc: BaseException) -> str:
        text = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
        return redact(str(text), self._settings.secrets)


def _image(api: Any, ref: str) -> Inspect | None:
    try:
        found: Inspect = api.inspect_image(ref)
    except docker.errors.NotFound:
        return None
    except docker.errors.APIError as exc:
        if exc.status_code == 400:  # "invalid reference format": no such image either
            return None
        raise
    return found


def _restart_policy(container: Inspect) -> dict[str, Any]:
    return dict(container["HostConfig"].get("RestartPolicy") or {})


# --- the configuration of the new container (pure: inspect data in, create body out) ---


def recreate_config(container: Inspect, old_image: Inspect | None, image: str) -> dict[str, Any]:
    """The body of ``POST /containers/create`` for the same container from ``image``.

    Without the old image (removed since), every setting is carried over, its defaults too.
    """
    config = dict(container["Config"])
    config["Image"] = image
    short_id = str(container["Id"])[:12]
    if config.get("Hostname") == short_id:
        del config["Hostname"]  # the engine's default; the new container gets its own
    defaults: Mapping[str, Any] = (old_image or {}).get("Config") or {}
    if old_image is not None:
        _drop_image_defaults(config, defaults)
    host = dict(container["HostConfig"])
    host["Binds"] = _binds_with_anonymous_volumes(container)
    config["HostConfig"] = host
    primary = primary_network(container)
    if primary is not None:
        endpoint = container["NetworkSettings"]["Networks"].get(primary) or {}
        config["NetworkingConfig"] = {"EndpointsConfig": {primary: _endpoint(endpoint, short_id)}}
    return config


def _drop_image_defaults(config: dict[str, Any], image: Mapping[str, Any]) -> None:
    image_env = set(image.get("Env") or [])
    config["Env"] = [e for e in config.get("Env") or [] if e not in image_env]
    image_labels = image.get("Labels") or {}
    config["Labels"] = {
        k: v for k, v in (config.get("Labels") or {}).items() if image_labels.get(k) != v
    }
    image_volumes = image.get("Volumes") or {}
    config["Volumes"] = {
        k: v for k, v in (config.get("Volumes") or {}).items() if k not in image_volumes
    }
    # An entrypoint set at run time clears the image's CMD, so then both are the operator's.
    if config.get("Entrypoint") == image.get("Entrypoint"):
        config.pop("Entrypoint", None)
        if config.get("Cmd") == image.get("Cmd"):
            config.pop("Cmd", None)
    for key in _IMAGE_DEFAULTS:
        if key in config and config[key] == image.get(key):
            del config[key]


def _binds_with_anonymous_volumes(container: Inspect) -> list[str]:
    """HostConfig.Binds plus every volume mounted without a bind (``-v /data``, an image's
    VOLUME), by name: a new container would otherwise get a new, empty volume."""
    host = container["HostConfig"]
    binds = list(host.get("Binds") or [])
    covered = {b.split(":")[1] for b in binds if b.count(":") >= 1}
    covered |= {m.get("Target") for m in host.get("Mounts") or []}
    for mount in container.get("Mounts") or []:
        if mount.get("Type") == "volume" and mount.get("Destination") not in covered:
            mode = "" if mount.get("RW", True) else ":ro"
            binds.append(f"{mount['Name']}:{mount['Destination']}{mode}")
    return binds


def primary_network(container: Inspect) -> str | None:
    """The user-defined network given at creation (``--network NAME``), if any."""
    mode = str(container["HostConfig"].get("NetworkMode") or "default")
    if mode in _BUILTIN_NETWORKS or mode.startswith("container:"):
        return None
    return mode


def extra_networks(container: Inspect) -> dict[str, dict[str, Any]]:
    """Networks connected after creation (``docker network connect``), with the arguments of
    ``connect_container_to_network`` that bring their aliases and addresses back."""
    mode = str(container["HostConfig"].get("NetworkMode") or "default")
    primary = "bridge" if mode == "default" else mode
    if mode in ("host", "none") or mode.startswith("container:"):
        return {}
    short_id = str(container["Id"])[:12]
    extra = {}
    for name, endpoint in (container["NetworkSettings"].get("Networks") or {}).items():
        if name == primary:
            continue
        ipam = endpoint.get("IPAMConfig") or {}
        extra[name] = {
            "aliases": _aliases(endpoint, short_id) or None,
            "ipv4_address": ipam.get("IPv4Address") or None,
            "ipv6_address": ipam.get("IPv6Address") or None,
            "links": endpoint.get("Links") or None,
        }
    return extra


def _endpoint(endpoint: Mapping[str, Any], short_id: str) -> dict[str, Any]:
    chosen = {
        "Aliases": _aliases(endpoint, short_id),
        "IPAMConfig": endpoint.get("IPAMConfig"),
        "Links": endpoint.get("Links"),
        "DriverOpts": endpoint.get("DriverOpts"),
    }
    return {key: value for key, value in chosen.items() if value}


def _aliases(endpoint: Mapping[str, Any], short_id: str) -> list[str]:
    return [a for a in endpoint.get("Aliases") or [] if a != short_id]


def describe_config(config: Mapping[str, Any], knew_image: bool) -> str:
    """What was carried over, for the journal. Environment variables by name only."""
    host = config.get("HostConfig") or {}
    env_names = sorted(e.split("=", 1)[0] for e in config.get("Env") or [])
    ports = {
        port: [f"{b.get('HostIp') or '*'}:{b.get('HostPort')}" for b in bindings or []]
        for port, bindings in (host.get("PortBindings") or {}).items()
    }
    lines = [
        f"env (set by the operator): {', '.join(env_names) or '-'}",
        f"ports: {ports or '-'}",
        f"binds: {host.get('Binds') or '-'}; mounts: {len(host.get('Mounts') or [])}",
        f"labels: {sorted(config.get('Labels') or {}) or '-'}",
        f"restart policy: {(host.get('RestartPolicy') or {}).get('Name') or 'no'}; "
        f"network mode: {host.get('NetworkMode') or 'default'}",
        f"command: {_argv_or_image(config.get('Cmd'))}; "
        f"entrypoint: {_argv_or_image(config.get('Entrypoint'))}",
    ]
    if not knew_image:
        lines.append("the old image is gone: its defaults were carried over as settings too")
    return "\n".join(lines)


def _argv_or_image(value: object) -> str:
    return "from the image" if value is None else str(value)
