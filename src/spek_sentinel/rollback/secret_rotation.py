"""Runbook scenario 5, "Rotate all secrets": fresh random values for the listed keys of the
app's env file. The file is replaced atomically with its mode kept and every other line as it
was; the old values are not kept anywhere (they are compromised) and no value is ever returned
or logged, only key names."""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from spek_sentinel.domain.errors import RollbackError

_ASSIGNMENT = re.compile(r"^(?P<head>\s*(?:export\s+)?(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*).*$")


class RotationError(RollbackError):
    pass


def fresh_secret() -> str:
    """32 random bytes, URL-safe: what `openssl rand -base64 32` gives, without '/' or '+'."""
    return secrets.token_urlsafe(32)


def check_env_file(path: Path) -> None:
    """Pre-flight: the file exists and can be replaced (its directory is writable) by a file
    with the same owner, so that the app can still read it."""
    if not path.is_file():
        raise RotationError(f"env file {path} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise RotationError(f"cannot replace {path}: its directory is not writable")
    owner = path.stat()
    descriptor, trial = tempfile.mkstemp(prefix=f".{path.name}.check.", dir=path.parent)
    os.close(descriptor)
    try:
        _keep_owner(trial, owner.st_uid, owner.st_gid)
    finally:
        Path(trial).unlink(missing_ok=True)


def _keep_owner(temp: str, uid: int, gid: int) -> None:
    """The new file keeps the old one's owner and group: the app (often another user) must
    still read it. Root may give a file to anyone; an owner only to a group it is in."""
    current = os.stat(temp)
    if (current.st_uid, current.st_gid) == (uid, gid):
        return
    try:
        os.chown(temp, uid, gid)
    except PermissionError:
        raise RotationError(
            f"cannot give the new env file its owner {uid}:{gid}, which the app needs to read "
            "it (run spek-sentinel as that user, in that group, or as root)"
        ) from None


def rotate_env_secrets(
    path: Path, keys: Sequence[str], generate: Callable[[], str] = fresh_secret
) -> list[str]:
    """Give each key a fresh value (appended when the file lacks it); returns the keys rotated."""
    check_env_file(path)
    wanted = list(dict.fromkeys(keys))
    lines = path.read_text(encoding="utf-8").splitlines()
    seen: set[str] = set()
    out = []
    for line in lines:
        match = _ASSIGNMENT.match(line)
        if match and match["key"] in wanted:
            out.append(f"{match['head']}{generate()}")
            seen.add(match["key"])
        else:
            out.append(line)
    out += [f"{key}={generate()}" for key in wanted if key not in seen]
    before = path.stat()
    mode = before.st_mode & 0o7777
    descriptor, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write("\n".join(out) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        _keep_owner(temp, before.st_uid, before.st_gid)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return wanted
