"""The `qhybrid` command: run the service (`up`), manage users."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def main() -> None:
    """qhybrid: hybrid quantum-classical jobs on your own machines."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address the web app binds")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--data-dir", type=click.Path(path_type=Path), envvar="QHYBRID_DATA_DIR",
              help="where Redis, local storage and logs live [default: ~/.local/share/qhybrid]")
@click.option("--classes", default="", help="comma-separated resource classes to start workers "
              "for [default: all configured]")
def up(host: str, port: int, data_dir: Path | None, classes: str) -> None:
    """Run the whole service (Redis, storage, web, workers) until Ctrl-C."""
    from app.service import up as run_up

    run_up(host=host, port=port, data_dir=data_dir,
           classes=[c for c in classes.split(",") if c] or None, log=click.echo)


@main.group()
def user() -> None:
    """Users and their tokens."""


@user.command("create")
@click.argument("name")
def user_create(name: str) -> None:
    """Create user NAME (or give it a new token) and print the token."""
    from qhybrid.errors import QhybridError
    from tasks.redis_client import connect
    from tasks.registry import Registry
    from tasks.settings import Settings

    try:
        token = Registry(connect(Settings.from_env().redis_url)).create_user(name)
    except QhybridError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(token)


if __name__ == "__main__":
    main()
