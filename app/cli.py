"""The server's commands of `qhybrid`: run the service (`up`), its Procfile, Flower, users.

`register` is the `qhybrid.commands` entry point (pyproject.toml): the client's `qhybrid`
group (qhybrid.cli) adds these when the server is installed beside it.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address the web app binds")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--data-dir", type=click.Path(path_type=Path), envvar="QHYBRID_DATA_DIR",
              help="where Redis, local storage and logs live [default: ~/.local/share/qhybrid]")
@click.option("--classes", default="", help="comma-separated resource classes to start workers "
              "for [default: all configured]")
@click.option("--worker-per-class", is_flag=True,
              help="a job and a task worker per class, not one of each serving every class")
def up(host: str, port: int, data_dir: Path | None, classes: str,
       worker_per_class: bool) -> None:
    """Run the whole service (Redis, storage, web, workers) until Ctrl-C."""
    from app.service import up as run_up

    run_up(host=host, port=port, data_dir=data_dir,
           classes=[c for c in classes.split(",") if c] or None, log=click.echo,
           worker_per_class=worker_per_class)


@click.command("procfile")
def procfile_command() -> None:
    """Print the Procfile: web, job, task and device workers, as `qhybrid up` runs them."""
    from app.service import procfile

    click.echo(procfile(), nl=False)


@click.command("flower", context_settings={"ignore_unknown_options": True})
@click.option("--port", default=5555, show_default=True, type=int)
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Flower has no login of its own: keep it on a private address")
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower_command(port: int, address: str, flower_args: tuple[str, ...]) -> None:
    """Run Flower (the Celery monitor) on this service's Celery app: workers, tasks, queues.

    It finds the Redis of `qhybrid up` on this machine, or QHYBRID_REDIS_URL. Needs the
    `monitor` extra (flower). Further arguments go to Flower (`--basic-auth=user:pass` ...).
    """
    import importlib.util
    import os
    import sys

    if importlib.util.find_spec("flower") is None:
        raise click.ClickException("Flower is not installed: pip install 'qhybrid[monitor]'")
    argv = [sys.executable, "-m", "celery", "-A", "tasks.core.celery_app", "flower",
            f"--port={port}", f"--address={address}", *flower_args]
    os.execv(argv[0], argv)


@click.group()
def user() -> None:
    """Users and their tokens."""


@user.command("create")
@click.argument("name")
def user_create(name: str) -> None:
    """Create user NAME (or give it a new token) and print the token."""
    from qhybrid.errors import QhybridError
    from tasks.core.redis_client import connect
    from tasks.core.registry import Registry
    from tasks.core.settings import Settings

    try:
        token = Registry(connect(Settings.from_env().redis_url)).create_user(name)
    except QhybridError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(token)


def register(group: click.Group) -> None:
    """Add the server's commands to `group`."""
    for command in (up, procfile_command, flower_command, user):
        group.add_command(command)
