"""The job commands of `qhybrid`: run, submit, jobs, job, status, logs, result, cancel, devices.

They speak to a running service through `Client` (QHYBRID_URL / QHYBRID_TOKEN or the file
`qhybrid up` writes). Listings print a table, or JSON with `--json`. Every qhybrid error,
including "no service answers", becomes a one-line message and exit code 1.
"""

from __future__ import annotations

import datetime
import functools
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from qhybrid.client import Client, Job

F = TypeVar("F", bound=Callable[..., Any])
TERMINAL = ("DONE", "ERROR", "CANCELED")
POLL_S = 1.0
DEFAULT_MAX_RUNTIME_S = 3600


def friendly(command: F) -> F:
    """qhybrid errors (and unreadable files) end the command with their message, exit code 1."""

    @functools.wraps(command)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        from qhybrid.errors import QhybridError

        try:
            return command(*args, **kwargs)
        except (QhybridError, OSError) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapped  # type: ignore[return-value]


def _client() -> Client:
    from qhybrid.client import Client

    return Client()


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False, default=str))


def local_time(iso: str | None) -> str:
    """An ISO-8601 UTC stamp from the API, in the local time zone (seconds)."""
    if not iso:
        return ""
    when = datetime.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def duration(body: dict[str, Any], now: float | None = None) -> str:
    """How long the job ran (or runs so far): `1.2s`, `3m04s`, `2h05m`; empty if not started."""
    started = body.get("started")
    if not started:
        return ""
    t0 = datetime.datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp()
    ended = body.get("ended")
    t1 = datetime.datetime.fromisoformat(ended.replace("Z", "+00:00")).timestamp() if ended \
        else (now or time.time())
    return human_seconds(max(0.0, t1 - t0))


def human_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain aligned table, like `kubectl get` prints."""
    text_rows = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in text_rows)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
              for r in text_rows]
    return "\n".join(lines)


def parse_args(pairs: Sequence[str], args_json: str | None) -> dict[str, Any]:
    """`--args-json` first, then each `--arg k=v` over it; a value is JSON if it parses."""
    arguments: dict[str, Any] = {}
    if args_json:
        text = args_json
        if args_json.startswith("@"):
            text = Path(args_json[1:]).read_text()
        try:
            loaded = json.loads(text)
        except ValueError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--args-json") from None
        if not isinstance(loaded, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--args-json")
        arguments.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--arg")
        try:
            arguments[key] = json.loads(value)
        except ValueError:
            arguments[key] = value
    return arguments


def find_job(client: Client, ref: str) -> Job:
    """A job by its id, or by an unambiguous prefix of it (as `docker` and `git` accept)."""
    from qhybrid.errors import InvalidInput, NotFound

    if len(ref) == 32:
        return client.job(ref)
    if len(ref) < 4:
        raise InvalidInput(f"{ref!r}: give the job id or at least its first 4 characters")
    matches = [j for j in client.jobs(limit=1000) if j.job_id.startswith(ref)]
    if not matches:
        raise NotFound(f"you have no job whose id starts with {ref!r}")
    if len(matches) > 1:
        raise InvalidInput(f"{ref!r} is the start of {len(matches)} job ids; give more of it")
    return client.job(matches[0].job_id)


def wait_with_progress(job: Job, quiet: bool = False) -> dict[str, Any]:
    """Wait for the job to end; on a terminal, a bar of elapsed time against max run time."""
    body = job.refresh()
    if body["state"] in TERMINAL:
        return body
    limit = int(body.get("max_runtime") or DEFAULT_MAX_RUNTIME_S)
    t0 = time.monotonic()
    shown = ""
    bar: Any
    with click.progressbar(length=limit, label=body["status"], file=sys.stderr,
                           show_eta=False, show_percent=False,
                           item_show_func=lambda _: human_seconds(time.monotonic() - t0),
                           hidden=quiet) as bar:
        while body["state"] not in TERMINAL:
            body = _wait_once(job)
            if body["status"] != shown:
                shown = body["status"]
                bar.label = shown
            bar.update(min(limit, int(time.monotonic() - t0)) - bar.pos, current_item=True)
    return body


def _wait_once(job: Job) -> dict[str, Any]:
    from qhybrid.errors import Timeout

    try:
        return job.wait(timeout=POLL_S)
    except Timeout:
        return job.raw


def print_outcome(job: Job, body: dict[str, Any], as_json: bool) -> None:
    """The result of a DONE job on stdout; an ERROR or CANCELED job fails the command."""
    if body["state"] == "DONE":
        result = job.result(timeout=30)
        click.echo(json.dumps(result, indent=None if as_json else 2, default=_readable))
        return
    if body["state"] == "CANCELED":
        raise click.ClickException(f"job {job.job_id} was canceled")
    raise click.ClickException(f"job {job.job_id} failed: {body.get('error') or 'ERROR'}")


def _readable(value: Any) -> Any:
    """Decoded values that JSON cannot hold (numpy arrays, counts ...) as plain data or text."""
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    if isinstance(value, complex):
        return [value.real, value.imag]
    return repr(value)


def job_row(j: dict[str, Any]) -> list[str]:
    return [j["job_id"], j["status"], j.get("program") or j.get("job_name") or "",
            j.get("resource_class") or "", local_time(j.get("created")), duration(j)]


JOB_HEADERS = ["JOB", "STATUS", "PROGRAM", "CLASS", "CREATED", "DURATION"]


def register(main: click.Group) -> None:
    """Add the job commands to the `qhybrid` group."""
    json_option = click.option("--json", "as_json", is_flag=True, help="print JSON")

    def _run_options(f: F) -> F:
        for opt in reversed([
            click.argument("directory", type=click.Path(exists=True, file_okay=False,
                                                        path_type=Path)),
            click.option("--entrypoint", default="main.py", show_default=True,
                         help="the .py file to run, relative to DIRECTORY"),
            click.option("--title", default=None,
                         help="program title [default: the directory's name]"),
            click.option("--arg", "pairs", multiple=True, metavar="KEY=VALUE",
                         help="an argument (VALUE is JSON if it parses, else a string); "
                              "repeatable"),
            click.option("--args-json", default=None, metavar="JSON|@FILE",
                         help="all arguments as one JSON object (or @file.json)"),
            click.option("--resources", default=None,
                         help="a resource class name or a JSON {cpu, mem, gpu}"),
            click.option("--device", default=None, help="the device the job holds"),
            click.option("--max-runtime", type=int, default=None, help="seconds"),
        ]):
            f = opt(f)
        return f

    def _submit(directory: Path, entrypoint: str, title: str | None, pairs: Sequence[str],
                args_json: str | None, resources: str | None, device: str | None,
                max_runtime: int | None) -> tuple[Client, Job]:
        from qhybrid.client import Program

        if not (directory / entrypoint).is_file():
            raise click.BadParameter(f"{directory / entrypoint} is not a file",
                                     param_hint="--entrypoint")
        arguments = parse_args(pairs, args_json)
        res: Any = resources
        if resources and resources.lstrip().startswith("{"):
            res = json.loads(resources)
        client = _client()
        name = title or directory.resolve().name
        client.upload(Program(title=name, entrypoint=entrypoint, working_dir=directory))
        return client, client.run(name, arguments, resources=res, max_runtime=max_runtime,
                                  device=device)

    @main.command("run")
    @_run_options
    @click.option("-f", "--follow", is_flag=True, help="print the job's log while it runs")
    @click.option("-q", "--quiet", is_flag=True, help="no progress display")
    @json_option
    @friendly
    def run_command(follow: bool, quiet: bool, as_json: bool, **options: Any) -> None:
        """Upload DIRECTORY as a program, run it, wait, and print its result."""
        _, job = _submit(**options)
        click.echo(f"job {job.job_id}", err=True)
        if follow:
            for text in job.follow_logs():
                click.echo(text, nl=False)
            body = job.refresh()
        else:
            body = wait_with_progress(job, quiet=quiet)
        print_outcome(job, body, as_json)

    @main.command("submit")
    @_run_options
    @json_option
    @friendly
    def submit_command(as_json: bool, **options: Any) -> None:
        """Upload DIRECTORY as a program and start it; print the job id (does not wait)."""
        _, job = _submit(**options)
        if as_json:
            _echo_json(job.raw)
        else:
            click.echo(job.job_id)

    @main.command("jobs")
    @click.option("--status", default=None, help="QUEUED, RUNNING, DONE, ERROR, CANCELED ...")
    @click.option("--program", default=None, help="only this program's jobs")
    @click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
    @json_option
    @friendly
    def jobs_command(status: str | None, program: str | None, limit: int,
                     as_json: bool) -> None:
        """Your jobs, newest first."""
        found = _client().jobs(status=status.upper() if status else None, program=program,
                               limit=limit)
        if as_json:
            _echo_json([j.raw for j in found])
            return
        click.echo(table(JOB_HEADERS, (job_row(j.raw) for j in found)))

    @main.command("job")
    @click.argument("job_ref", metavar="JOB")
    @json_option
    @friendly
    def job_command(job_ref: str, as_json: bool) -> None:
        """Everything about one job: status, class, times, error, events."""
        body = find_job(_client(), job_ref).raw
        if as_json:
            _echo_json(body)
            return
        facts = [("job", body["job_id"]), ("status", body["status"]),
                 ("program", body.get("program") or body.get("job_name")),
                 ("class", body.get("resource_class")), ("device", body.get("device")),
                 ("created", local_time(body.get("created"))),
                 ("started", local_time(body.get("started"))),
                 ("ended", local_time(body.get("ended"))), ("duration", duration(body)),
                 ("worker", body.get("worker")), ("attempt", body.get("attempt")),
                 ("queue position", body.get("queue_position")),
                 ("waiting for", body.get("waiting_for")), ("error", body.get("error"))]
        for key, value in facts:
            if value not in (None, ""):
                click.echo(f"{key + ':':<16}{value}")
        events = body.get("events") or []
        if events:
            click.echo("events:")
            click.echo(table(["  TIME", "STATUS", "DETAIL"], (
                ["  " + local_time(e["at"]),
                 e["status"] + (f": {e['sub_status']}" if e.get("sub_status") else ""),
                 e.get("detail") or ""] for e in events)))

    @main.command("status")
    @click.argument("job_ref", metavar="JOB")
    @friendly
    def status_command(job_ref: str) -> None:
        """The job's status (`RUNNING: MAPPING`, `DONE` ...)."""
        click.echo(find_job(_client(), job_ref).status())

    @main.command("logs")
    @click.argument("job_ref", metavar="JOB")
    @click.option("-f", "--follow", is_flag=True, help="keep printing until the job ends")
    @friendly
    def logs_command(job_ref: str, follow: bool) -> None:
        """The job's log (stdout and stderr)."""
        job = find_job(_client(), job_ref)
        if not follow:
            click.echo(job.logs(), nl=False)
            return
        for text in job.follow_logs():
            click.echo(text, nl=False)

    @main.command("result")
    @click.argument("job_ref", metavar="JOB")
    @click.option("--wait/--no-wait", default=True, show_default=True,
                  help="wait for a job that has not ended")
    @click.option("-q", "--quiet", is_flag=True, help="no progress display")
    @json_option
    @friendly
    def result_command(job_ref: str, wait: bool, quiet: bool, as_json: bool) -> None:
        """Print what the job saved with save_result() (as JSON)."""
        job = find_job(_client(), job_ref)
        body = wait_with_progress(job, quiet=quiet) if wait else job.raw
        if body["state"] not in TERMINAL:
            raise click.ClickException(f"job {job.job_id} is still {body['status']}")
        print_outcome(job, body, as_json)

    @main.command("cancel")
    @click.argument("job_ref", metavar="JOB")
    @friendly
    def cancel_command(job_ref: str) -> None:
        """Cancel the job: a queued job never starts, a running one is stopped."""
        from qhybrid.errors import Conflict

        job = find_job(_client(), job_ref)
        try:
            job.cancel()
        except Conflict as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"{job.job_id} {job.raw['status']}")

    @main.command("devices")
    @json_option
    @friendly
    def devices_command(as_json: bool) -> None:
        """The devices, their queues and who holds them."""
        found = _client()._json("GET", "/devices")["devices"]
        if as_json:
            _echo_json(found)
            return
        click.echo(table(["DEVICE", "QUBITS", "KIND", "ONLINE", "QUEUED TASKS", "HELD BY",
                          "JOBS WAITING"], (
            [d["name"], d["num_qubits"], d["kind"], "yes" if d["status"]["online"] else "no",
             sum(d["status"]["queue_depth"].values()),
             d["status"]["holding_job"] or ("another job" if d["status"]["held"] else "-"),
             d["status"]["jobs_waiting"]] for d in found)))

    @main.command("programs")
    @json_option
    @friendly
    def programs_command(as_json: bool) -> None:
        """Your uploaded programs."""
        found = _client()._json("GET", "/programs")["programs"]
        if as_json:
            _echo_json(found)
            return
        click.echo(table(["PROGRAM", "ENTRYPOINT", "RESOURCES", "CREATED"], (
            [p["title"], p["entrypoint"], p.get("resources") or "",
             local_time(p.get("created"))] for p in found)))
