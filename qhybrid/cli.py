"""The `qhybrid` command: run the service (`up`), manage users."""

from __future__ import annotations

from pathlib import Path

import click

from qhybrid import cli_jobs


@click.group()
@click.version_option(package_name="qhybrid", prog_name="qhybrid")
def main() -> None:
    """qhybrid: hybrid quantum-classical jobs on your own machines."""


cli_jobs.register(main)


@main.command()
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


@main.command("procfile")
def procfile_command() -> None:
    """Print the Procfile: web, job, task and device workers, as `qhybrid up` runs them."""
    from app.service import procfile

    click.echo(procfile(), nl=False)


@main.command("flower", context_settings={"ignore_unknown_options": True})
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
    argv = [sys.executable, "-m", "celery", "-A", "tasks.celery_app", "flower",
            f"--port={port}", f"--address={address}", *flower_args]
    os.execv(argv[0], argv)


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


@main.group()
def files() -> None:
    """Your data files (tar, h5): the flat store every job of yours can read and write."""


_function_option = click.option("--function", "function", default=None, metavar="TITLE",
                                help="a program's own store instead of yours")


def _files_call(call, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Run a Client file call; qhybrid errors become a one-line message and exit code 1."""
    from qhybrid.errors import QhybridError

    try:
        return call(*args, **kwargs)
    except (QhybridError, OSError) as exc:
        raise click.ClickException(str(exc)) from None


@files.command("list")
@_function_option
@click.option("-l", "--long", "long_", is_flag=True, help="show sizes and times")
@click.option("--json", "as_json", is_flag=True, help="print JSON (names, sizes, times)")
def files_list(function: str | None, long_: bool, as_json: bool) -> None:
    """List your files."""
    from qhybrid.client import Client

    client = Client()
    if as_json:
        import json

        click.echo(json.dumps(_files_call(client.file_details, function), indent=2))
        return
    if not long_:
        for name in _files_call(client.files, function):
            click.echo(name)
        return
    import datetime

    for f in _files_call(client.file_details, function):
        when = datetime.datetime.fromtimestamp(f["modified"]).isoformat(timespec="seconds")
        click.echo(f"{f['size']:>12}  {when}  {f['name']}")


@files.command("upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_function_option
def files_upload(path: Path, function: str | None) -> None:
    """Upload PATH (a tar or HDF5 file) under its own name, replacing one of that name."""
    from qhybrid.client import Client

    click.echo(_files_call(Client().file_upload, path, function=function))


@files.command("download")
@click.argument("name")
@click.option("--to", "location", default="./", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="directory to save into")
@click.option("--as", "target_name", default=None, help="save under this name")
@_function_option
def files_download(name: str, location: Path, target_name: str | None,
                   function: str | None) -> None:
    """Download file NAME; prints where it was saved."""
    from qhybrid.client import Client

    click.echo(_files_call(Client().file_download, name, target_name=target_name,
                           download_location=location, function=function))


@files.command("delete")
@click.argument("name")
@_function_option
def files_delete(name: str, function: str | None) -> None:
    """Delete file NAME."""
    from qhybrid.client import Client

    _files_call(Client().file_delete, name, function=function)


if __name__ == "__main__":
    main()
