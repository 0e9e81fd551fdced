"""What Braket hybrid-job code relies on, on the service and in local mode.

Four of Amazon Braket's own examples (amazon-braket-examples hybrid_jobs/0, 4, 8 and
qiskit/4, ported in tests/braket_examples/) run in both modes; the rest checks each
difference issue 12 lists: script mode, AMZN_BRAKET_* variables, exceptions, the missing
calls and keywords, state names, queue information, metrics, reservations and the Tracker.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import ssl
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from qhybrid import (
    Client,
    HybridJob,
    InvalidInput,
    LocalHybridJob,
    MetricStatistic,
    MetricType,
    Program,
    Tracker,
    create_job,
    get_hyperparameters,
    get_job_name,
    hybrid_job,
    log_metric,
    save_job_result,
)
from qhybrid.errors import Conflict, Forbidden, NotFound
from qhybrid.hybrid_rules import QueuePosition, braket_state, default_job_name
from qhybrid.reservations import create_reservation, list_reservations
from tests.braket_examples.first_hybrid_job import qubit_rotation_hybrid_job
from tests.braket_examples.vqe_qiskit import main as vqe_main
from tests.conftest import RunningService, wait_until, write_program

EXAMPLES = Path(__file__).parent / "braket_examples"
SIM = "aer_simulator"
RESERVED = "generic_heavy_hex_127"      # a held device the other tests leave alone
BRAKET_VARS = ("AMZN_BRAKET_JOB_NAME", "AMZN_BRAKET_DEVICE_ARN", "AMZN_BRAKET_INPUT_DIR",
               "AMZN_BRAKET_JOB_RESULTS_DIR", "AMZN_BRAKET_CHECKPOINT_DIR",
               "AMZN_BRAKET_HP_FILE", "AMZN_BRAKET_SCRIPT_ENTRY_POINT")


@pytest.fixture(params=["service", "local"])
def where(request: pytest.FixtureRequest, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The keywords that send a job to the service, or run it locally (in tmp_path)."""
    if request.param == "local":
        monkeypatch.chdir(tmp_path)
        return {"local": True}
    return {"client": request.getfixturevalue("client")}


def _finish(job: Any) -> Any:
    job.wait(timeout=240)
    assert job.state() == "COMPLETED", (job.status(), job.logs()[-3000:])
    return job


# --- the ported examples ---------------------------------------------------------------------
def test_example_0_first_hybrid_job(where: dict[str, Any]) -> None:
    # given Braket's first decorated job, its result pickled (data_format="pickle")
    job = hybrid_job(device=SIM, result_format="pickle", **where)(qubit_rotation_hybrid_job)(
        num_steps=3, stepsize=0.5)
    _finish(job)
    # then the parameters come back with allow_pickle, and the metrics by iteration
    params = job.result(allow_pickle=True, poll_timeout_seconds=60)
    assert isinstance(params, np.ndarray) and params.shape == (2,)
    table = job.metrics(metric_type=MetricType.ITERATION_NUMBER, statistic=MetricStatistic.MIN)
    assert list(table) == ["iteration_number", "timestamp", "expval"]    # in both modes
    assert table["iteration_number"] == [0, 1, 2] and table["expval"][2] < table["expval"][0]
    assert job.hyperparameters() == {"num_steps": "3", "stepsize": "0.5"}


def test_example_8_algorithm_script(where: dict[str, Any],
                                    caplog: pytest.LogCaptureFixture) -> None:
    # given Braket's script-mode example: a module run as __main__, device from the env,
    # followed to its end through a logger
    caplog.set_level(logging.INFO, logger="braket-example")
    job = create_job(SIM, EXAMPLES / "algorithm_script.py", tags={"team": "qc"},
                     wait_until_complete=True, logger=logging.getLogger("braket-example"),
                     **where)
    assert "Test job completed!!!!!" in caplog.messages
    _finish(job)
    if "client" in where:
        assert HybridJob.from_id(job.arn, where["client"]).name == job.name
    result = job.result()
    # then what it saved with save_job_result is the result, the Tracker counted its tasks
    assert len(result["counts"]) == 3 and len(result["angles"]) == 3
    assert result["task summary"][SIM]["shots"] == 300
    assert result["task summary"][SIM]["tasks"] == {"COMPLETED": 3}
    assert result["task summary"][SIM]["execution_duration"] > 0
    assert result["estimated cost"] == 0
    assert job.metrics()["braket_tasks_cost"] == [0, 0, 0]
    assert [t["device"] for t in job.quantum_tasks()] == [SIM] * 3
    meta = job.metadata()
    assert meta["tags"] == {"team": "qc"} and meta["jobArn"] == job.arn
    assert meta["status"] == "COMPLETED" and meta["deviceConfig"] == {"device": SIM}
    log = job.logs()
    assert "Test job started!!!!!" in log and "Test job completed!!!!!" in log
    assert "RuntimeWarning" not in log and "frozen runpy" not in log


def test_example_4_qaoa_source_directory(where: dict[str, Any]) -> None:
    # given a source directory, an entry point inside it and hyperparameters
    hp = {"n_nodes": 4, "n_edges": 5, "n_layers": 1, "seed": 1, "iterations": 2,
          "stepsize": 0.1}
    job = create_job(SIM, EXAMPLES / "qaoa", "qaoa.qaoa_algorithm:main", hyperparameters=hp,
                     **where)
    _finish(job)
    # then the job read them from AMZN_BRAKET_HP_FILE, as strings
    assert job.hyperparameters() == {k: str(v) for k, v in hp.items()}
    result = job.result()
    assert len(result["params"]) == 2 and -4.0 <= result["cost"] < 0    # 5 edges: at best -4
    assert job.metrics(metric_type="iteration_number")["iteration_number"] == [0, 1, 2]
    assert "hyperparams:" in job.logs()


def test_example_qiskit_4_vqe(where: dict[str, Any]) -> None:
    # given the Qiskit example: a decorated VQE that returns nothing but saves its result
    job = hybrid_job(device=SIM, **where)(vqe_main)()
    _finish(job)
    vqe = job.result()["VQE"]
    assert vqe["eigenvalue"] < -0.9 and len(vqe["optimal_point"]) == 4


# --- script mode and the helpers, in both modes ----------------------------------------------
PARITY_JOB = '''
import json, math, os
from qhybrid import (get_hyperparameters, get_input_data_dir, load_job_checkpoint, log_metric,
                     save_job_checkpoint, save_job_result)


def start_here():
    env = {k: v for k, v in os.environ.items() if k.startswith("AMZN_BRAKET_")}
    log_metric("loss", float("nan"))                 # dropped with a warning; the job goes on
    log_metric("loss", math.inf)
    log_metric("loss", 0.5)
    log_metric("loss", 0.25)
    save_job_checkpoint({"opaque": {1, 2}}, checkpoint_file_suffix="p", data_format="pickle")
    try:
        load_job_checkpoint(checkpoint_file_suffix="p")
        refused = False
    except ValueError as exc:
        refused = "allow_pickle" in str(exc)
    loaded = load_job_checkpoint(checkpoint_file_suffix="p", allow_pickle=True)
    save_job_result({"saved": 1, "both": "saved"})
    save_job_result(7)                               # as {"result": 7}, merged
    with open(os.path.join(get_input_data_dir(), "data.txt")) as fh:
        data = fh.read()
    return {"env": env, "hp": get_hyperparameters(), "refused": refused,
            "loaded": sorted(loaded["opaque"]), "data": data, "both": "returned",
            "hp_file": json.load(open(env["AMZN_BRAKET_HP_FILE"]))}
'''


def test_script_mode_gives_braket_variables_and_helpers(
        where: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # given a source module, an input file and hyperparameters
    source = tmp_path / "src" / "parity"
    source.mkdir(parents=True)
    (source / "__init__.py").write_text("")
    (source / "job.py").write_text(PARITY_JOB)
    data = tmp_path / "data.txt"
    data.write_text("input!")
    job = create_job(None, source, "parity.job:start_here", hyperparameters={"lr": 0.1},
                     input_data=str(data), job_name=f"parity-{int(time.time() * 1000)}",
                     wait_until_complete=True, quiet=True, **where)
    # when it ends (followed quietly: nothing printed)
    assert "not recorded" not in capsys.readouterr().out
    _finish(job)
    out = job.result()
    # then every AMZN_BRAKET_* variable is set, with Braket's meaning
    env = out["env"]
    assert set(BRAKET_VARS) <= set(env)
    assert env["AMZN_BRAKET_JOB_NAME"] == job.name
    assert env["AMZN_BRAKET_DEVICE_ARN"] == "local:none/none"
    assert env["AMZN_BRAKET_SCRIPT_ENTRY_POINT"] == "parity.job:start_here"
    assert out["hp"] == out["hp_file"] == {"lr": "0.1"} == job.hyperparameters()
    assert out["data"] == "input!"
    # and a pickled checkpoint loads only when allowed
    assert out["refused"] is True and out["loaded"] == [1, 2]
    assert job.checkpoints() == [f"{job.name}_p.json"]
    # and save_job_result's results are merged under the return value
    assert out["saved"] == 1 and out["result"] == 7 and out["both"] == "returned"
    # and the NaN and inf were dropped with a warning; no iteration_number column
    log = job.logs()
    assert log.count("not recorded: value must be finite") == 2
    table = job.metrics()
    assert list(table) == ["timestamp", "loss"] and table["loss"] == [0.5, 0.25]
    assert job.metrics(statistic="Min")["loss"] == [0.5, 0.25]


def test_script_mode_refuses_what_braket_refuses(tmp_path: Path, client: Client) -> None:
    script = tmp_path / "algo.py"
    script.write_text("print('hi')\n")
    with pytest.raises(ValueError, match="does not exist"):
        create_job(SIM, tmp_path / "missing.py", client=client)
    with pytest.raises(ValueError, match="not in the source module"):
        create_job(SIM, script, "other:main", client=client)
    with pytest.raises(ValueError, match="was not found"):
        create_job(SIM, script, "algo.sub:main", client=client)
    with pytest.raises(ValueError, match="unknown device|no device"):
        create_job("no_such_device", script, client=client)
    with pytest.raises(ValueError, match="unknown device"):
        create_job("no_such_device", script, local=True)


PROGRAM = '''
import os, json
from qhybrid import (get_hyperparameters, log_metric, save_job_checkpoint, save_job_result,
                     load_job_checkpoint)
log_metric("energy", -1.5)
log_metric("energy", -1.75)
save_job_checkpoint({"step": 3})
save_job_result({"hp": get_hyperparameters(), "ckpt": load_job_checkpoint(),
                 "env": sorted(k for k in os.environ if k.startswith("AMZN_BRAKET_"))})
'''


def test_a_program_job_uses_every_hybrid_helper(client: Client, tmp_path: Path) -> None:
    program = client.upload(Program(title="helpers", entrypoint="main.py",
                                    working_dir=write_program(tmp_path / "p", PROGRAM)))
    job = client.run(program.title, {"n": 3, "name": "x"})
    result = job.result(timeout=120)
    assert result["hp"] == {"n": "3", "name": "x"} and result["ckpt"] == {"step": 3}
    assert set(BRAKET_VARS) <= set(result["env"])
    body = client._json("GET", f"/jobs/{job.job_id}/metrics")
    assert body["columns"] == ["timestamp", "energy"]      # no iteration_number column
    assert body["metrics"]["energy"] == [-1.5, -1.75]
    listed = client._json("GET", f"/hybrid-jobs/{job.job_id}/checkpoints")["checkpoints"]
    assert len(listed) == 1 and listed[0]["name"].endswith(".json")


# --- exceptions, names, states ---------------------------------------------------------------
def _private_job(x: int) -> int:
    return x


def test_exceptions_and_default_names(client: Client) -> None:
    # a bad name is an InvalidInput and a ValueError, so Braket code's except clause works
    for kind in (InvalidInput, ValueError):
        with pytest.raises(kind, match="job name"):
            hybrid_job(device=None, job_name="bad_name!", client=client)(_private_job)
    # a function that captures what cannot be pickled: a RuntimeError that names it
    ctx = ssl.create_default_context()

    def uses_ctx() -> str:
        return str(ctx)

    with pytest.raises(RuntimeError, match="captured variable 'ctx' \\(SSLContext\\)"):
        hybrid_job(device=None, client=client)(uses_ctx)()
    with pytest.raises(RuntimeError, match="argument 'x' \\(lock\\)"):
        hybrid_job(device=None, client=client)(_private_job)(threading.Lock())
    # a leading underscore still gives a valid default name
    assert default_job_name("_private_job", now_ms=1).startswith("private-job-")
    job = hybrid_job(device=None, client=client)(_private_job)(3)
    assert job.name.startswith("private-job-") and job.result(timeout=120) == 3


def test_states_and_queue_information() -> None:
    assert [braket_state(s) for s in ("QUEUED", "INITIALIZING", "RUNNING: MAPPING", "DONE",
                                      "ERROR", "CANCELING", "CANCELED")] == [
        "QUEUED", "RUNNING", "RUNNING", "COMPLETED", "FAILED", "CANCELLING", "CANCELLED"]
    assert QueuePosition.of("QUEUED", 3, "d").queue_position == "3"
    far = QueuePosition.of("QUEUED", 16, "d")
    assert far.queue_position == ">15" and far.message is None
    done = QueuePosition.of("COMPLETED", None, None)
    assert done.queue_position is None and "COMPLETED" in (done.message or "")


def test_log_metric_outside_a_job_still_refuses_nan() -> None:
    with pytest.raises(InvalidInput):
        log_metric("loss", math.nan)
    assert get_job_name() == "" and get_hyperparameters() == {}
    save_job_result({"a": 1})       # outside a job: kept for a look, like save_result


# --- local mode's bugs -------------------------------------------------------------------------
def _sleeps() -> None:
    time.sleep(120)


def test_local_mode_enforces_max_runtime_and_reaps_its_child(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.chdir(tmp_path)
    job = hybrid_job(device=None, local=True, max_runtime=2)(_sleeps)()
    assert isinstance(job, LocalHybridJob) and job.arn == f"local:job/{job.name}"
    pid = json.loads((job.directory / "status.json").read_text())["pid"] if (
        job.directory / "status.json").exists() else None
    # dropping the handle while the child runs warns of nothing
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        directory = job.directory
        del job
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    again = LocalHybridJob.from_directory(directory)
    wait_until(lambda: again.status() == "ERROR", timeout=60)
    assert "maximum run time of 2 s" in again.metadata()["failureReason"]
    assert again.state() == "FAILED"
    pid = pid or json.loads((directory / "status.json").read_text()).get("pid")
    if pid:       # the child was reaped: no zombie is left
        wait_until(lambda: not Path(f"/proc/{pid}").exists()
                   or "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3],
                   timeout=10)


def test_local_mode_refuses_unknown_devices_as_the_service_does(client: Client) -> None:
    with pytest.raises(ValueError, match="unknown device"):
        hybrid_job(device="no_such_device", local=True)(_private_job)(1)
    with pytest.raises(ValueError):
        hybrid_job(device="no_such_device", client=client)(_private_job)(1)


# --- Tracker ----------------------------------------------------------------------------------
def test_tracker_counts_tasks_shots_and_seconds_outside_a_job(client: Client) -> None:
    from qiskit import QuantumCircuit

    from qhybrid.http_devices import backend

    device = backend(client, SIM)
    circuit = QuantumCircuit(1)
    circuit.h(0)
    circuit.measure_all()
    with Tracker() as outer, Tracker(price_per_second=2) as priced:
        device.run(circuit, shots=50).result()
        device.run([circuit, circuit], shots=30).result()
    device.run(circuit, shots=10).result()          # after the block: not counted
    stats = outer.quantum_tasks_statistics()
    assert stats[SIM]["shots"] == 80 and stats[SIM]["tasks"] == {"COMPLETED": 2}
    assert stats[SIM]["execution_duration"] > 0
    assert len(outer.tracked_resources()) == 2 and outer.simulator_tasks_cost() == 0
    assert float(priced.simulator_tasks_cost()) == pytest.approx(2 * priced.simulated_seconds())


# --- reservations ----------------------------------------------------------------------------
def _holds_and_runs() -> dict[str, Any]:
    from qiskit import QuantumCircuit, transpile

    from qhybrid import get_backend, get_job_device

    device = get_backend(get_job_device())
    circuit = QuantumCircuit(1)
    circuit.x(0)
    circuit.measure_all()
    counts = device.run(transpile(circuit, device, seed_transpiler=1), shots=20).result()
    return {"device": get_job_device(), "shots": sum(counts.get_counts().values()),
            "reservation": os.environ.get("AMZN_BRAKET_RESERVATION_TIME_WINDOW_ARN")}


def _post(client: Client, path: str, body: Any) -> requests.Response:
    return client.session.post(f"{client.url}/api/v1{path}", json=body, timeout=30)


def test_reservation_api_refuses_bad_input(service: RunningService, client: Client) -> None:
    now = time.time()
    for body, status, field in (
            ({}, 400, "device"),
            ({"device": RESERVED, "start": now + 10, "end": now + 5}, 400, "end"),
            ({"device": RESERVED, "start": "soon", "end": now + 5}, 400, "start"),
            ({"device": "nope", "start": now, "end": now + 5}, 400, None),
            ({"device": RESERVED, "start": now, "end": now + 5, "extra": 1}, 400, "extra"),
            ({"device": RESERVED, "start": now, "end": now + 5, "user": "someone"}, 403, "user"),
    ):
        resp = _post(client, "/reservations", body)
        assert resp.status_code == status, (body, resp.text)
        assert resp.headers["Content-Type"].startswith("application/problem+json")
        if field:
            assert resp.json()["field"] == field
    assert list_reservations(client) == []          # nothing was half-written
    # an overlapping window is a conflict; another user's reservation is not found
    first = create_reservation(RESERVED, now + 3600, now + 7200, client=client)
    try:
        with pytest.raises(Conflict, match="reserved from"):
            create_reservation(RESERVED, now + 5000, now + 9000, client=client)
        other = service.client()
        with pytest.raises(NotFound):
            other._json("GET", f"/reservations/{first.reservation_id}")
        with pytest.raises(NotFound):
            hybrid_job(device=RESERVED, reservation_arn=first.arn, client=other)(_private_job)(1)
    finally:
        first.cancel()
    assert first.raw["state"] == "CANCELED"


def test_a_reservation_gives_its_jobs_the_device_in_its_window(service: RunningService,
                                                               client: Client) -> None:
    # given a window that opens in a few seconds
    start = time.time() + 4
    res = create_reservation(RESERVED, start, start + 120, client=client)
    later = create_reservation(RESERVED, start + 3000, start + 3600, client=client)
    other = service.client()
    try:
        # when a job names it, it waits QUEUED until the window opens, then runs
        job = hybrid_job(device=RESERVED, reservation_arn=res.arn, client=client)(
            _holds_and_runs)()
        assert job.state() == "QUEUED"
        stranded = hybrid_job(device=None, reservation_arn=later.arn, client=client)(
            _private_job)(2)
        assert stranded.raw["device"] == RESERVED
        out = job.result(timeout=120)
        assert out == {"device": RESERVED, "shots": 20, "reservation": res.arn}
        started = job.metadata()["startedAt"]
        assert started and job.raw["started"] >= time.strftime(
            "%Y-%m-%dT%H:%M:%S", time.gmtime(start))
        assert job.metadata()["associations"] == [{"arn": res.arn,
                                                   "type": "RESERVATION_TIME_WINDOW_ARN"}]
        # inside the window others' tasks are refused, and their jobs wait
        from qiskit import QuantumCircuit

        from qhybrid.codec import encode_circuits

        flip = QuantumCircuit(1)
        flip.x(0)
        flip.measure_all()
        payload = {"device": RESERVED, "circuits": encode_circuits([flip])}
        assert _post(other, "/quantum-tasks", payload).status_code == 409
        mine = _post(client, "/quantum-tasks", {**payload, "reservation_arn": res.arn})
        assert mine.status_code == 201, mine.text
        waiting = hybrid_job(device=RESERVED, client=other)(_private_job)(5)
        time.sleep(3)
        assert waiting.state() == "QUEUED"
        # when the reservations are canceled, the waiting job runs, the stranded one fails
        res.cancel()
        later.cancel()
        assert waiting.result(timeout=120) == 5
        stranded.wait(timeout=60)
        assert stranded.state() == "FAILED" and "canceled" in stranded.error_message()
    finally:
        for r in (res, later):
            if r.state() in ("SCHEDULED", "ACTIVE"):
                r.cancel()


IN_WINDOW = """
import os
from qiskit import QuantumCircuit, transpile
from qhybrid import get_backend, get_job_device, save_result

device = get_backend(get_job_device())
flip = QuantumCircuit(1)
flip.x(0)
flip.measure_all()
counts = device.run(transpile(flip, device, seed_transpiler=1), shots=20).result().get_counts()
save_result({"device": get_job_device(), "counts": counts,
             "reservation": os.environ.get("AMZN_BRAKET_RESERVATION_TIME_WINDOW_ARN")})
"""


def _naps(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


def test_a_program_job_runs_in_its_reservation_and_a_holder_without_it_is_stopped(
        service: RunningService, client: Client, tmp_path: Path) -> None:
    # given another user's job holding the device, and a window that opens in a few seconds
    other = service.client()
    holder = hybrid_job(device=RESERVED, client=other)(_naps)(300)
    wait_until(lambda: holder.state() == "RUNNING", timeout=90)
    start = time.time() + 5
    res = create_reservation(RESERVED, start, start + 180, client=client)
    try:
        # when a program job (script mode) names the reservation
        client.upload(Program(title="in-window", entrypoint="main.py",
                              working_dir=write_program(tmp_path / "src", IN_WINDOW)))
        job = client.run("in-window", reservation_arn=res.arn)
        # then it waits for the window, the holder is stopped when it opens, and the job
        # runs on the reserved device with the reservation in its environment
        assert job.refresh()["reservation_arn"] == res.arn
        assert job.status() == "QUEUED"
        assert job.result(timeout=120) == {"device": RESERVED, "counts": {"1": 20},
                                           "reservation": res.arn}
        holder.wait(timeout=60)
        assert holder.state() == "FAILED"
        assert f"reserved from {res.raw['start']}" in holder.error_message()
        assert "stopped when the window opened" in holder.error_message()
        assert job.refresh()["started"] >= time.strftime("%Y-%m-%dT%H:%M:%S",
                                                         time.gmtime(start))
        # a reservation of someone else's is not found; bad input changes nothing
        with pytest.raises(NotFound):
            other.run("in-window", reservation_arn=res.arn)
        with pytest.raises(InvalidInput):
            client.run("in-window", reservation_arn="arn:qhybrid:reservation/../x")
    finally:
        if res.state() in ("SCHEDULED", "ACTIVE"):
            res.cancel()


def test_an_admin_reserves_for_another_user(redis_server: str, tmp_path: Path) -> None:
    from app import create_app
    from tasks.core.settings import Settings

    settings = Settings(redis_url=f"{redis_server}/6", storage_url=(tmp_path / "s").as_uri(),
                        s3_endpoint_url=None, data_dir=tmp_path / "d",
                        resource_classes_path=None, admins=frozenset({"boss"}))
    app = create_app({"SETTINGS": settings, "TESTING": True})
    registry = app.extensions["qhybrid"].registry
    registry.r.flushdb()
    boss, user = registry.create_user("boss"), registry.create_user("alice")
    web = app.test_client()
    now = time.time()
    body = {"device": RESERVED, "start": now + 60, "end": now + 120, "user": "alice"}
    made = web.post("/api/v1/reservations", json=body,
                    headers={"Authorization": f"Bearer {boss}"})
    assert made.status_code == 201 and made.json["user"] == "alice"
    seen = web.get("/api/v1/reservations", headers={"Authorization": f"Bearer {user}"})
    assert [r["reservation_id"] for r in seen.json["reservations"]] == [made.json["reservation_id"]]
    refused = web.post("/api/v1/reservations", json={**body, "user": "boss"},
                       headers={"Authorization": f"Bearer {user}"})
    assert refused.status_code == 403
    with pytest.raises(Forbidden):
        raise Forbidden("the client raises the same class")
    registry.r.flushdb()


def test_reservations_page_creates_lists_and_cancels(service: RunningService) -> None:
    from playwright.sync_api import sync_playwright

    from tests.test_pages import CHROMIUM, CHROMIUM_ARGS

    _, token = service.new_user()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.set_default_timeout(15_000)
        page.goto(service.url + "/")
        page.fill("#token", token)
        page.click("button:text('Log in')")
        page.wait_for_url(service.url + "/")
        page.goto(service.url + "/reservations")
        # a bad window is shown on the page, nothing is stored
        day = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 2 * 86400))
        page.select_option("#device", RESERVED)
        page.fill("#start", f"{day}T10:00:00Z")
        page.fill("#end", f"{day}T09:00:00Z")
        page.click("button:text('Reserve')")
        assert "end must come after start" in page.inner_text("p.error")
        assert page.locator("table.reservations tr[data-id]").count() == 0
        # a good one is listed, and canceled from the page
        page.fill("#end", f"{day}T11:00:00Z")
        page.click("button:text('Reserve')")
        row = page.locator("table.reservations tr[data-id]")
        assert row.count() == 1 and row.locator(".state").inner_text() == "SCHEDULED"
        assert "arn:qhybrid:reservation/" in page.inner_text(".notice")
        row.locator("button:text('Cancel')").click()
        assert page.locator("table.reservations .state").inner_text() == "CANCELED"
        browser.close()
