"""The `qhybrid` job commands, through click.testing against the live service and workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from qhybrid import Client
from qhybrid.cli import main
from qhybrid.errors import ServiceUnavailable, ServiceUnreachable
from tests.conftest import RunningService, free_port, wait_until, write_program

PROGRAM = """
import time
from qhybrid import Job, get_arguments, save_result, update_status
args = get_arguments()
print("args", sorted(args.items()), flush=True)
update_status(Job.MAPPING)
time.sleep(args.get("sleep", 0))
print("done", flush=True)
save_result({"n": args["n"], "squares": [i * i for i in range(args["n"])], "tag": args.get("tag")})
"""


@pytest.fixture
def cli(service: RunningService, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Runs `qhybrid ...` in-process as a fresh user of the live service."""
    _, token = service.new_user()
    monkeypatch.setenv("QHYBRID_URL", service.url)
    monkeypatch.setenv("QHYBRID_TOKEN", token)
    runner = CliRunner()

    def run(*args: str, ok: bool = True) -> str:
        result = runner.invoke(main, list(args), catch_exceptions=False)
        assert (result.exit_code == 0) == ok, (args, result.output)
        return result.output

    run.client = Client(url=service.url, token=token)  # type: ignore[attr-defined]
    return run


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("qhybrid, version ")


def test_no_service_is_a_friendly_message(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("QHYBRID_URL", url)
    monkeypatch.setenv("QHYBRID_TOKEN", "qh_x")
    result = CliRunner().invoke(main, ["jobs"])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: no qhybrid service at {url} — start one with `qhybrid up`"
    with pytest.raises(ServiceUnreachable, match="start one with `qhybrid up`") as caught:
        Client(url=url, token="qh_x").jobs()
    assert isinstance(caught.value, ServiceUnavailable)       # one exception tree


def test_a_client_goes_through_the_proxy_the_environment_names(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # read once when the Client is made, not on every request; NO_PROXY still counts
    proxy = f"http://127.0.0.1:{free_port()}"          # nothing listens there
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    via_proxy = Client(url="http://qhybrid.example:8000", token="qh_x")
    with pytest.raises(ServiceUnreachable):
        via_proxy.jobs()
    assert via_proxy.session.proxies.get("http") == proxy
    monkeypatch.setenv("NO_PROXY", "qhybrid.example")
    assert "http" not in Client(url="http://qhybrid.example:8000", token="qh_x").session.proxies


def test_run_submit_and_follow_a_job(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "prog"
    write_program(src, PROGRAM)
    # run: uploads, waits (progress on stderr), prints the result
    out = cli("run", str(src), "--entrypoint", "main.py", "--arg", "n=3", "--arg", "tag=x",
              "--json", "--quiet")
    assert json.loads(out.splitlines()[-1]) == {"n": 3, "squares": [0, 1, 4], "tag": "x"}
    # submit returns at once with the id; logs -f follows until the job ends
    job_id = cli("submit", str(src), "--args-json", '{"n": 2, "sleep": 1.5}').strip()
    assert len(job_id) == 32
    logs = cli("logs", "-f", job_id[:8])
    assert "args [('n', 2), ('sleep', 1.5)]" in logs and logs.rstrip().endswith("done")
    assert cli("status", job_id).strip() == "DONE"
    assert json.loads(cli("result", job_id, "--json")) == {"n": 2, "squares": [0, 1], "tag": None}
    detail = cli("job", job_id)
    assert "status:         DONE" in detail and "RUNNING: MAPPING" in detail
    assert json.loads(cli("job", job_id, "--json"))["job_id"] == job_id
    # jobs: a table, filters, JSON
    table = cli("jobs").splitlines()
    assert table[0].split() == ["JOB", "STATUS", "PROGRAM", "CLASS", "CREATED", "DURATION"]
    assert len(table) == 3 and table[1].startswith(job_id)
    listed = json.loads(cli("jobs", "--json", "--limit", "1"))
    assert [j["job_id"] for j in listed] == [job_id]
    assert json.loads(cli("jobs", "--json", "--status", "error")) == []
    assert len(json.loads(cli("jobs", "--json", "--program", "prog"))) == 2
    assert json.loads(cli("programs", "--json"))[0]["title"] == "prog"


def test_cancel_and_failures(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "sleepy"
    write_program(src, PROGRAM)
    job_id = cli("submit", str(src), "--arg", "n=1", "--arg", "sleep=60").strip()
    wait_until(lambda: cli.client.job(job_id).status().startswith("RUNNING"), timeout=60)
    assert cli("cancel", job_id).split()[0] == job_id
    wait_until(lambda: cli.client.job(job_id).status() == "CANCELED", timeout=30)
    out = cli("result", job_id, ok=False)
    assert "was canceled" in out
    assert cli("cancel", job_id).split() == [job_id, "CANCELED"]       # idempotent
    assert "no job whose id starts with" in cli("status", "ffffffff", ok=False)
    assert "KEY=VALUE" in cli("submit", str(src), "--arg", "novalue", ok=False)


def test_devices_listing(cli) -> None:  # type: ignore[no-untyped-def]
    table = cli("devices").splitlines()
    assert table[0].split()[:3] == ["DEVICE", "QUBITS", "KIND"]
    assert any(line.startswith("aer_simulator ") and " yes " in line for line in table[1:])
    devices = json.loads(cli("devices", "--json"))
    assert {"name", "num_qubits", "status"} <= set(devices[0])
