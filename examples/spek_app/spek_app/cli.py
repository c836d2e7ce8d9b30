"""``spek-app`` / ``python -m spek_app``:

    serve    [--host H] [--port P] [--dsn DSN] [--redis URL] [--version V] ...
    migrate  up [--to N] | down [--steps N | --all | --to N] | status
    releases                  the releases, their schema and fault (tab-separated)
    token    [--role admin]   an admin bearer token signed with JWT_SECRET

Every option has an environment variable (``SPEK_APP_*``, shown in ``--help``); the DSN and the
secrets are better given there than on a command line. Exit status: 0 done, 1 failed (a failed
migration, a crash, a backend that cannot be reached), 2 bad usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence

from spek_app.releases import RELEASES, Release, UnknownReleaseError, release
from spek_app.settings import FaultSettings, Settings, SettingsError, environment, required, secret

log = logging.getLogger("spek_app")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spek-app", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--dsn", help="PostgreSQL DSN (SPEK_APP_DSN or DATABASE_URL)")
        sub.add_argument("--env-file", help="KEY=value file read over the environment")
        sub.add_argument("--version", help="the release to run (SPEK_APP_VERSION)")

    serve = commands.add_parser("serve", help="run a release")
    common(serve)
    serve.add_argument("--host", help="listen address (SPEK_APP_HOST; default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (SPEK_APP_PORT; default 8080)")
    serve.add_argument("--redis", help="Redis URL (SPEK_APP_REDIS_URL or REDIS_URL)")
    serve.add_argument("--redis-prefix", help="prefix of every key (SPEK_APP_REDIS_PREFIX)")
    serve.add_argument(
        "--agent-interval",
        type=float,
        help="seconds between synthetic agent tasks, 0 for none (SPEK_APP_AGENT_INTERVAL; 1)",
    )
    serve.add_argument(
        "--signal-url",
        help="spek-sentinel's API base URL for pushed signals (SPEK_APP_SIGNAL_URL); its "
        "token in SPEK_APP_SIGNAL_TOKEN",
    )
    serve.add_argument("--no-migrate", action="store_true", help="do not migrate up before serving")

    migrate = commands.add_parser("migrate", help="the app's migrations")
    common(migrate)
    migrate.add_argument("action", choices=["up", "down", "status"])
    migrate.add_argument("--to", type=int, help="up: to this version; down: down to it")
    migrate.add_argument("--steps", type=int, default=1, help="down: how many (default 1)")
    migrate.add_argument("--all", action="store_true", help="down: every migration")

    commands.add_parser("releases", help="list the releases")

    token = commands.add_parser("token", help="print a bearer token signed with JWT_SECRET")
    token.add_argument("--env-file", help="KEY=value file read over the environment")
    token.add_argument("--role", default="admin")
    token.add_argument("--subject", default="operator")
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds (default 3600)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    args = _parser().parse_args(argv)
    try:
        if args.command == "releases":
            for r in RELEASES.values():
                print(f"{r.version}\t{r.schema}\t{r.fault or 'none'}\t{r.summary}")
            return 0
        env = environment(args.env_file)
        if args.command == "token":
            from spek_app import auth  # noqa: PLC0415 - stdlib only, kept off `releases`' path

            print(auth.issue(required(env, "JWT_SECRET", "JWT_SECRET"), args.subject, args.role))
            return 0
        if args.command == "migrate":
            return _migrate(args, env)
        from spek_app.server import serve  # noqa: PLC0415 - needs the third-party packages

        return serve(_settings(args, env))
    except (SettingsError, UnknownReleaseError) as exc:
        print(f"spek-app: {exc}", file=sys.stderr)
        return 2


def _release(args: argparse.Namespace, env: Mapping[str, str]) -> Release:
    return release(args.version or required(env, "--version", "SPEK_APP_VERSION"))


def _settings(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    def pick(option: object, *names: str, default: str) -> str:
        if option is not None:
            return str(option)
        return next((env[n] for n in names if env.get(n)), default)

    try:
        port = int(pick(args.port, "SPEK_APP_PORT", default="8080"))
        agent_interval = float(pick(args.agent_interval, "SPEK_APP_AGENT_INTERVAL", default="1"))
    except ValueError as exc:
        raise SettingsError(f"not a number: {exc}") from None
    return Settings(
        release=_release(args, env),
        host=pick(args.host, "SPEK_APP_HOST", default="127.0.0.1"),
        port=port,
        dsn=args.dsn or required(env, "--dsn", "SPEK_APP_DSN", "DATABASE_URL"),
        redis_url=args.redis or required(env, "--redis", "SPEK_APP_REDIS_URL", "REDIS_URL"),
        redis_prefix=pick(args.redis_prefix, "SPEK_APP_REDIS_PREFIX", default="spek-app:"),
        session_secret=secret(env, "SESSION_SECRET"),
        jwt_secret=secret(env, "JWT_SECRET"),
        agent_interval=agent_interval,
        migrate=not args.no_migrate,
        signal_url=args.signal_url or env.get("SPEK_APP_SIGNAL_URL") or None,
        signal_token=env.get("SPEK_APP_SIGNAL_TOKEN") or None,
        faults=FaultSettings.from_env(env),
    )


def _migrate(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from spek_app.migrate import MigrateError, Migrator  # noqa: PLC0415 - needs psycopg

    dsn = args.dsn or required(env, "--dsn", "SPEK_APP_DSN", "DATABASE_URL")
    try:
        migrator = Migrator(dsn)
        if args.action == "status":
            for state in migrator.status():
                print(state)
            print(f"database at version {migrator.version()}")
            return 0
        if args.action == "up":
            target = args.to if args.to is not None else _release(args, env).schema
            print("Running migrations...")
            files = migrator.up(target)
            verb = "Applied"
        else:
            print("Rolling back migrations...")
            files = migrator.down(
                steps=None if args.all or args.to is not None else args.steps,
                to=0 if args.all else args.to,
            )
            verb = "Rolled back"
        for name in files:
            print(f"   {verb}: {name}")
        print(f"done: database at version {migrator.version()}")
        return 0
    except MigrateError as exc:
        print(f"spek-app migrate {args.action}: {exc}", file=sys.stderr)
        return 1
