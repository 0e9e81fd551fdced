"""Hybrid jobs from a decorated function (the Braket model): on the service and in local mode.

Jobs run on the `small` workers of the session's real service; each test is a fresh user.
The job functions are defined here, so they travel pickled by value (as a user's would).
"""

from __future__ import annotations

import json
import os
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from qhybrid import (
    Client,
    HybridJob,
    InvalidInput,
    JobFailed,
    LocalHybridJob,
    get_backend,
    get_checkpoint_dir,
    get_hyperparameters,
    get_input_data_dir,
    get_job_device,
    get_job_name,
    get_results_dir,
    hybrid_job,
    load_job_checkpoint,
    log_metric,
    save_job_checkpoint,
)
from qhybrid.errors import Forbidden, NotFound
from qhybrid.hybrid_rules import (
    capture_hyperparameters,
    check_job_name,
    default_job_name,
    shorten_hyperparameter,
)
from qhybrid.metrics import pivot
from storage.store import open_store
from tests.conftest import RunningService, wait_until

DEVICE = "generic_heavy_hex_27"
NUM_TASKS = 5


def run_hybrid_job(num_tasks: int = 1) -> dict[str, float]:
    """The Braket guide's example with only the device and circuit calls translated to Qiskit:
    a parametric circuit, theta moved by the measured <X> each iteration, a metric per step."""
    from qiskit import QuantumCircuit, transpile
    from qiskit.circuit import Parameter

    backend = get_backend(get_job_device())        # the device named in @hybrid_job
    theta_p = Parameter("theta")
    circ = QuantumCircuit(2)
    circ.rx(theta_p, 0)
    circ.cx(0, 1)
    circ.h(0)                                      # <X> on qubit 0 from Z-basis counts
    circ.measure_all()
    circ = transpile(circ, backend, seed_transpiler=1)
    theta = 0.0                                    # initial parameter
    exp_val = 0.0
    for i in range(num_tasks):
        task = backend.run(circ.assign_parameters({theta_p: theta}), shots=100, seed_simulator=i)
        counts = task.result().get_counts()
        ones = sum(n for bits, n in counts.items() if bits[-1] == "1")
        exp_val = (100 - 2 * ones) / 100
        theta += exp_val                           # modify the parameter
        log_metric(metric_name="exp_val", value=exp_val, iteration_number=i)
        print(f"iteration {i}: exp_val={exp_val}", flush=True)
    np.save("result.npy", np.array([theta, exp_val]))     # the working directory is the results
    os.makedirs("plots", exist_ok=True)
    Path("plots/theta.txt").write_text(repr(theta))
    return {"final_theta": theta, "final_exp_val": exp_val}


def _check_guide_example(job: Any, extract_to: Path) -> None:
    result = job.result(timeout=180)
    by_iteration = job.metrics(metric_type="iteration_number", statistic="max")
    values = by_iteration["exp_val"]
    assert by_iteration["iteration_number"] == list(range(NUM_TASKS))
    assert len(by_iteration["timestamp"]) == NUM_TASKS
    assert by_iteration["timestamp"] == sorted(by_iteration["timestamp"])
    assert result["final_exp_val"] == values[-1]
    assert result["final_theta"] == pytest.approx(sum(values))
    assert all(-1.0 <= v <= 1.0 for v in values)
    by_time = job.metrics()                        # timestamp rows, one per logged metric
    assert by_time["exp_val"] == values and by_time["iteration_number"] == list(range(NUM_TASKS))
    assert f"iteration {NUM_TASKS - 1}: exp_val={values[-1]}" in job.logs()
    out = job.download_result(extract_to=extract_to)
    assert out == extract_to / job.name
    np.testing.assert_allclose(np.load(out / "result.npy"), [result["final_theta"], values[-1]])
    assert (out / "plots" / "theta.txt").read_text() == repr(result["final_theta"])


def test_guide_example_on_the_service(client: Client, tmp_path: Path) -> None:
    # given the guide's function, decorated with a device
    job = hybrid_job(device=DEVICE, client=client)(run_hybrid_job)(num_tasks=NUM_TASKS)

    # then the handle comes back at once, named after the function, and the job runs
    assert isinstance(job, HybridJob)
    assert job.name.startswith("run-hybrid-job-") and len(job.name) <= 50
    assert job.state() in ("QUEUED", "RUNNING", "COMPLETED")
    _check_guide_example(job, tmp_path / "out")
    assert job.status() == "DONE" and job.queue_position().queue_position is None
    assert job.raw["device"] == DEVICE
    assert job.hyperparameters() == {"num_tasks": str(NUM_TASKS)}
    # the metrics are stored with the outputs too
    body = client._json("GET", f"/jobs/{job.job_id}/metrics",
                        params={"metric_type": "iteration_number", "statistic": "min"})
    assert body["count"] == NUM_TASKS and body["state"] == "DONE"


def test_guide_example_in_local_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a working directory and no service at all: the device is simulated locally
    monkeypatch.setenv("QHYBRID_URL", "http://127.0.0.1:9")       # nothing listens there
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
    monkeypatch.chdir(tmp_path)

    # when the job runs locally
    job = hybrid_job(device=DEVICE, local=True)(run_hybrid_job)(num_tasks=NUM_TASKS)

    # then the handle works the same, and ./<job_name>/ holds the job's layout
    assert isinstance(job, LocalHybridJob) and job.queue_position().queue_position is None
    _check_guide_example(job, tmp_path / "out")
    assert job.state() == "COMPLETED" and job.status() == "DONE"
    home = tmp_path / job.name
    assert json.loads((home / "hyperparameters.json").read_text()) == {"num_tasks": "5"}
    with tarfile.open(home / "model.tar.gz") as tar:
        assert {"result.npy", "plots", "plots/theta.txt"} <= set(tar.getnames())


# --- input channels ---------------------------------------------------------------------------
def read_channels() -> dict[str, Any]:
    """What a job sees of its channels: files per channel dir, and the original paths."""
    seen = {}
    for channel in ("input", "tree", "stored"):
        base = Path(get_input_data_dir(channel))
        seen[channel] = sorted(p.relative_to(base).as_posix() for p in base.rglob("*")
                               if p.is_file())
    return {
        "channels": seen,
        "npy": np.load("data/file.npy").tolist(),                      # original relative path
        "npy_from_channel": np.load(get_input_data_dir() + "/file.npy").tolist(),
        "nested": Path("data/tree/sub/b.txt").read_text(),
        "stored": json.loads((Path(get_input_data_dir("stored")) / "ref.json").read_text()),
        "cwd_is_results": os.path.samefile(os.getcwd(), get_results_dir()),
    }


def _local_inputs(tmp_path: Path) -> None:
    (tmp_path / "data" / "tree" / "sub").mkdir(parents=True)
    np.save(tmp_path / "data" / "file.npy", np.arange(3.0))
    (tmp_path / "data" / "tree" / "a.txt").write_text("a")
    (tmp_path / "data" / "tree" / "sub" / "b.txt").write_text("b")


def test_channels_local_file_local_dir_own_uri_and_refused_uri(
        any_service: RunningService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given local inputs, and a file stored in the user's own namespace
    user, token = any_service.new_user()
    other, _ = any_service.new_user()
    client = Client(url=any_service.url, token=token)
    _local_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    root = any_service.env["QHYBRID_STORAGE_URL"].rstrip("/") + "/"
    store = open_store(any_service.env["QHYBRID_STORAGE_URL"],
                       any_service.env.get("QHYBRID_S3_ENDPOINT_URL") or None)
    store.put_bytes(f"users/{user}/data/ref.json", b'{"x": 1}')
    store.put_bytes(f"users/{other}/data/secret.json", b'{"secret": 1}')
    own = f"{root}users/{user}/data/ref.json"
    assert own.startswith("s3://" if any_service.backend == "s3" else "file://")

    # when a job names another user's data, it is refused before anything is stored
    with pytest.raises(Forbidden) as refused:
        hybrid_job(device=None, client=client,
                   input_data={"input": "data/file.npy",
                               "stolen": f"{root}users/{other}/data/secret.json"})(read_channels)()
    assert refused.value.field == "input_data.stolen" and "namespace" in refused.value.detail
    assert client.jobs() == []
    with pytest.raises(InvalidInput, match="not in this service's storage"):
        hybrid_job(device=None, client=client,
                   input_data="s3://some-other-bucket/users/x/data.json")(read_channels)()

    # when the channels are a local file, a local directory and the user's own URI
    job = hybrid_job(device=None, client=client,
                     input_data={"input": "data/file.npy", "tree": "data/tree",
                                 "stored": own})(read_channels)()
    seen = job.result(timeout=120)

    # then each is a local directory in the job, and local ones are at their original paths
    assert seen["channels"] == {"input": ["file.npy"], "tree": ["a.txt", "sub/b.txt"],
                                "stored": ["ref.json"]}
    assert seen["npy"] == seen["npy_from_channel"] == [0.0, 1.0, 2.0]
    assert seen["nested"] == "b" and seen["stored"] == {"x": 1} and seen["cwd_is_results"]
    assert job.raw["input_data"]["stored"] == {"source": "storage", "uri": own}
    assert job.raw["input_data"]["tree"] == {"source": "upload", "path": "data/tree",
                                             "is_dir": True}
    # the uploads are kept under the job's data/<channel>/, and stay out of model.tar.gz
    prefix = job.raw["storage_uri"][len(root):]
    assert store.exists(f"{prefix}data/tree/sub/b.txt")
    out = job.download_result(extract_to=tmp_path / "out")
    assert list(out.iterdir()) == []


# --- checkpoints, metrics while running, cancel ---------------------------------------------
def saves_then_waits(theta: float) -> None:
    log_metric("loss", 0.5, iteration_number=0)
    save_job_checkpoint({"theta": theta, "history": np.array([1.0, 2.0])})
    save_job_checkpoint({"note": "second file"}, checkpoint_file_suffix="extra")
    print("checkpoint saved", flush=True)
    time.sleep(300)


def resumes(old_name: str) -> dict[str, Any]:
    state = load_job_checkpoint(old_name)
    save_job_checkpoint({"theta": state["theta"] + 1})
    return {"old": state, "mine": load_job_checkpoint(), "files": sorted(os.listdir(
        get_checkpoint_dir())), "name": get_job_name()}


def test_checkpoint_survives_a_kill_and_a_new_job_resumes_from_it(client: Client) -> None:
    # given a job that saved a checkpoint and logged a metric, and is still running
    job = hybrid_job(device=None, client=client)(saves_then_waits)(0.25)
    wait_until(lambda: "checkpoint saved" in job.logs(), timeout=60)

    # then the metric is visible while it runs, and the checkpoints are in storage
    assert job.state() == "RUNNING"
    assert job.metrics(metric_type="iteration_number")["loss"] == [0.5]
    assert sorted(job.checkpoints()) == [f"{job.name}.json", f"{job.name}_extra.json"]

    # when it is killed
    assert job.cancel()
    wait_until(lambda: job.state() == "CANCELLED", timeout=30)

    # then a new job copies its checkpoints and resumes from them under the old name
    new = hybrid_job(device=None, client=client, copy_checkpoints_from_job=job.name)(resumes)(
        job.name)
    got = new.result(timeout=120)
    assert got["old"]["theta"] == 0.25
    np.testing.assert_array_equal(got["old"]["history"], [1.0, 2.0])
    assert got["mine"] == {"theta": 1.25} and got["name"] == new.name
    assert got["files"] == sorted([f"{job.name}.json", f"{job.name}_extra.json",
                                   f"{new.name}.json"])
    assert new.raw["copy_checkpoints_from_job"] == job.name
    assert sorted(new.checkpoints()) == got["files"]
    # by id too; an unknown job is refused at the call
    by_id = hybrid_job(device=None, client=client, copy_checkpoints_from_job=job.job_id)(
        resumes)(job.name)
    assert by_id.result(timeout=120)["old"]["theta"] == 0.25
    with pytest.raises(NotFound):
        hybrid_job(device=None, client=client, copy_checkpoints_from_job="no-such-job")(resumes)(
            "x")


def holds_device(seconds: float) -> str | None:
    print("holding", get_job_device(), flush=True)
    time.sleep(seconds)
    return get_job_device()


def test_a_job_naming_a_device_waits_while_another_holds_it(client: Client) -> None:
    first = hybrid_job(device=DEVICE, client=client)(holds_device)(300)
    wait_until(lambda: "holding" in first.logs(), timeout=60)
    second = hybrid_job(device=DEVICE, client=client)(holds_device)(0)
    assert second.state() == "QUEUED" and second.queue_position().queue_position == "1"
    first.cancel()
    assert second.result(timeout=120) == DEVICE
    assert second.queue_position().queue_position is None


def test_include_modules_are_pickled_by_value(client: Client, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # given a module the workers cannot import
    (tmp_path / "qh_helper_mod.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import qh_helper_mod

    def uses_helper(x: int) -> int:
        return int(qh_helper_mod.triple(x))

    without = hybrid_job(device=None, client=client)(uses_helper)(2)
    included = hybrid_job(device=None, client=client, include_modules="qh_helper_mod")(
        uses_helper)(2)
    assert included.result(timeout=120) == 6
    with pytest.raises(JobFailed, match="No module named 'qh_helper_mod'"):
        without.result(timeout=120)


# --- names, hyperparameters, failures ----------------------------------------------------------
def test_job_name_rules_at_the_edges() -> None:
    assert check_job_name("a" * 50) == "a" * 50
    for bad in ("a" * 51, "", "-abc", "abc-", "a_b", "a b", "ä"):
        with pytest.raises(InvalidInput) as err:
            check_job_name(bad)
        assert err.value.field == "job_name"
    # Braket's default overflows from a 37-character function name; ours is cut to fit
    name37 = "f" * 36 + "x"
    default = default_job_name(name37, now_ms=1_700_000_000_123)
    assert default == "f" * 36 + "-1700000000123" and len(default) == 50
    assert default_job_name("_private_fn", now_ms=1) == "private-fn-1"
    assert default_job_name("__", now_ms=1) == "job-1"
    assert default_job_name("<lambda>", now_ms=1) == "lambda--1"


def test_an_invalid_name_fails_at_the_call_before_any_upload(client: Client) -> None:
    with pytest.raises(InvalidInput, match="51 characters"):
        hybrid_job(device=None, client=client, job_name="n" * 51)(run_hybrid_job)
    with pytest.raises(InvalidInput) as err:
        hybrid_job(device=None, client=client, input_data={"bad/name": "x"})
    assert err.value.field == "input_data"
    assert client.jobs() == []
    # the API says the same to callers that skip the client
    resp = requests.post(f"{client.url}/api/v1/hybrid-jobs",
                         headers={"Authorization": f"Bearer {client.token}"},
                         data={"metadata": json.dumps({"job_name": "n" * 51})},
                         files={"function": ("f.pkl", b"\x80\x05N.")}, timeout=30)
    assert resp.status_code == 400 and resp.json()["field"] == "job_name"
    assert resp.headers["Content-Type"] == "application/problem+json"


def echo_hyperparameters(long: str, short: str = "s", *rest: int,
                         **extra: Any) -> dict[str, str]:
    print("hello from the job", flush=True)
    return get_hyperparameters()


def test_hyperparameters_truncation_and_a_50_character_name(
        client: Client, capsys: pytest.CaptureFixture[str]) -> None:
    long = "x" * 3000 + "THE-END"
    job = hybrid_job(device=None, client=client, job_name="h" * 50,
                     wait_until_complete=True)(echo_hyperparameters)(long, 1, 2, mode="fast")

    # wait_until_complete streamed the log until the end
    assert "hello from the job" in capsys.readouterr().out
    assert job.state() == "COMPLETED" and job.name == "h" * 50
    seen = job.result()
    assert seen == job.hyperparameters()
    assert set(seen) == {"long", "short", "rest", "mode"}
    assert seen["short"] == "1" and seen["rest"] == "[2]" and seen["mode"] == "fast"
    assert len(seen["long"]) == 2500 and seen["long"].endswith("THE-END")
    assert "shortened from 3007 characters" in seen["long"]
    assert job.raw["hyperparameters_truncated"] == ["long"]


def test_hyperparameter_rules() -> None:
    def f(a: int, b: str = "bee", **kw: Any) -> None: ...

    values, cut = capture_hyperparameters(f, (1,), {"z": [1, 2]})
    assert values == {"a": "1", "b": "bee", "z": "[1, 2]"} and cut == []
    assert shorten_hyperparameter("y" * 2500) == ("y" * 2500, False)
    with pytest.raises(InvalidInput, match="at most 100"):
        capture_hyperparameters(f, (1,), {f"k{i}": i for i in range(100)})
    with pytest.raises(TypeError):
        capture_hyperparameters(f, (), {})


class Opaque:
    def __init__(self, n: int) -> None:
        self.n = n


def fails(message: str) -> None:
    raise ValueError(message)


def returns_opaque() -> Opaque:
    Path("partial.txt").write_text("kept")
    return Opaque(7)


def test_a_failed_job_raises_its_error_and_keeps_its_outputs(client: Client,
                                                             tmp_path: Path) -> None:
    failed = hybrid_job(device=None, client=client)(fails)("boom 42")
    opaque = hybrid_job(device=None, client=client)(returns_opaque)()
    pickled = hybrid_job(device=None, client=client, result_format="pickle")(returns_opaque)()

    with pytest.raises(JobFailed, match="ValueError: boom 42") as err:
        failed.result(timeout=120)
    assert 'raise ValueError(message)' in str(err.value)
    assert failed.state() == "FAILED" and failed.error_message().startswith("ValueError: boom 42")

    # a return value the codec cannot carry fails the job, saying what to return instead
    with pytest.raises(JobFailed, match="cannot encode object of type Opaque") as err:
        opaque.result(timeout=120)
    assert "results directory" in str(err.value)
    out = opaque.download_result(extract_to=tmp_path)
    assert (out / "partial.txt").read_text() == "kept"

    # pickle is read only when the caller allows it
    with pytest.raises(InvalidInput, match="allow_pickle"):
        pickled.result(timeout=120)
    assert pickled.result(allow_pickle=True).n == 7


CELL = """import inspect


def check(x):
    if x == 3:
        raise ValueError(f"bad value {x}")
    return x


def run(x):
    return check(x)


def source_of_run():
    return inspect.getsource(run)
"""


def test_a_notebook_cell_function_shows_its_lines_in_the_job(client: Client,
                                                            tmp_path: Path) -> None:
    # given functions from code that is on no disk (a notebook cell: linecache holds its text)
    from qhybrid._source import register_source

    cell = str(tmp_path / "notebook" / "main.py")      # never created
    register_source(cell, CELL)
    namespace: dict[str, Any] = {"__name__": "qh_notebook_cell"}
    exec(compile(CELL, cell, "exec"), namespace)
    failing = hybrid_job(device=None, client=client)(namespace["run"])(3)
    source = hybrid_job(device=None, client=client)(namespace["source_of_run"])()
    # then the job's traceback shows the cell's file, line and source line
    with pytest.raises(JobFailed, match="ValueError: bad value 3") as err:
        failing.result(timeout=120)
    assert f'File "{cell}", line 6, in check\n    raise ValueError(f"bad value {{x}}")' \
        in str(err.value)
    # and inspect.getsource() works on the shipped function inside the job
    assert source.result(timeout=120) == "def run(x):\n    return check(x)\n"


# --- local mode ----------------------------------------------------------------------------
def test_local_mode_failure_checkpoints_and_helpers(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _local_inputs(tmp_path)
    failed = hybrid_job(device=None, local=True)(fails)("local boom")
    first = hybrid_job(device=None, local=True, job_name="first",
                       input_data="data/file.npy")(saves_then_waits)(0.5)
    with pytest.raises(JobFailed, match="ValueError: local boom"):
        failed.result(timeout=60)
    wait_until(lambda: "checkpoint saved" in first.logs(), timeout=60)
    assert first.metrics(metric_type="iteration_number") == {
        "iteration_number": [0], "loss": [0.5], "timestamp": first.metrics()["timestamp"]}
    assert first.state() == "RUNNING" and first.cancel() and first.state() == "CANCELLED"

    resumed = hybrid_job(device=None, local=True, copy_checkpoints_from_job="first")(resumes)(
        "first")
    got = resumed.result(timeout=60)
    assert got["old"]["theta"] == 0.5 and got["mine"] == {"theta": 1.5}
    assert (tmp_path / resumed.name / "checkpoints" / f"{resumed.name}.json").exists()
    with pytest.raises(InvalidInput, match="exists"):
        hybrid_job(device=None, local=True, job_name="first")(fails)("x")
    with pytest.raises(InvalidInput, match="local files only"):
        hybrid_job(device=None, local=True, input_data="s3://b/k")(fails)("x")


def test_helpers_outside_a_job_return_local_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert get_job_name() == "" and get_job_device() is None
    assert get_results_dir() == get_checkpoint_dir() == get_input_data_dir("x") == "."
    assert get_hyperparameters() == {}
    log_metric("loss", 1.5, iteration_number=3)
    assert "loss=1.5; iteration_number=3" in capsys.readouterr().out
    with pytest.raises(InvalidInput):
        save_job_checkpoint({"a": 1})
    with pytest.raises(InvalidInput):
        log_metric("loss", float("nan"))


def test_metrics_pivot() -> None:
    records = [
        {"metric_name": "loss", "value": 3.0, "timestamp": 10.0, "iteration_number": 1},
        {"metric_name": "loss", "value": 1.0, "timestamp": 11.0, "iteration_number": 1},
        {"metric_name": "acc", "value": 0.5, "timestamp": 12.0, "iteration_number": 0},
        {"metric_name": "acc", "value": 0.7, "timestamp": 13.0},
    ]
    assert pivot(records, "iteration_number", "max") == {
        "iteration_number": [0, 1], "loss": [None, 3.0], "acc": [0.5, None],
        "timestamp": [12.0, 11.0]}
    assert pivot(records, "iteration_number", "min")["loss"] == [None, 1.0]
    by_time = pivot(records)
    assert by_time["timestamp"] == [10.0, 11.0, 12.0, 13.0]
    assert by_time["acc"] == [None, None, 0.5, 0.7]
    assert by_time["iteration_number"] == [1, 1, 0, None]
    with pytest.raises(InvalidInput):
        pivot(records, "epoch")
