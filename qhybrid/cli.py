"""The `qhybrid` command: jobs, files and devices as a user sees them.

The server's own commands (`up`, `procfile`, `flower`, `user`) come from the server's
packages when they are installed beside the client: each `qhybrid.commands` entry point (as
Flask finds `flask.commands`) is a function that adds its commands to the group.
"""

from __future__ import annotations

from pathlib import Path

import click

from qhybrid import cli_jobs


@click.group()
@click.version_option(package_name="qhybrid", prog_name="qhybrid")
def main() -> None:
    """qhybrid: hybrid quantum-classical jobs on your own machines."""


cli_jobs.register(main)


def _plug_in_commands() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group="qhybrid.commands"):
        ep.load()(main)


_plug_in_commands()


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
