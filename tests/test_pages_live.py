"""Job list filters, the hybrid-job page with live metric plots, and the devices page, in a
real headless Chromium against the real service and workers. Screenshots go to /tmp only."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pytest

from qhybrid import hybrid_job
from tests.conftest import RunningService, wait_until
from tests.test_pages import CHROMIUM, browser, logged_in  # noqa: F401 - fixtures used here

SHOTS = Path("/tmp/qhybrid-screens")
HELD = "generic_heavy_hex_27"          # not shared: a job naming it holds it

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason=f"no Chromium at {CHROMIUM} (Debian's `chromium` package)"),
]


def shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def learns(steps: int, pause: float, rate: float = 0.1) -> int:
    """A hybrid job that logs a falling loss per iteration, then saves a checkpoint."""
    from qiskit import QuantumCircuit

    from qhybrid import get_backend, log_metric, save_job_checkpoint

    qc = QuantumCircuit(1)
    qc.h(0)
    qc.measure_all()
    get_backend().run(qc, shots=8).result()
    for i in range(steps):
        log_metric("loss", 1.0 / (1 + rate * i), iteration_number=i)
        log_metric("energy", -1.0 - 0.01 * i)
        time.sleep(pause)
    save_job_checkpoint({"step": steps}, checkpoint_file_suffix="final")
    return steps


def holds(seconds: float) -> None:
    time.sleep(seconds)


def test_job_list_filters_pages_and_local_times(logged_in, service: RunningService) -> None:  # type: ignore[no-untyped-def]
    page, client = logged_in()
    owner = service.registry.user_for_token(client.token)
    # given 60 finished jobs of two programs (records as the workers leave them) ...
    reg = service.registry
    base = time.time() - 3600
    for i in range(60):
        job_id = uuid.uuid4().hex
        reg.create_job({"id": job_id, "user": owner, "kind": "program",
                        "program": "alpha" if i % 2 else "beta", "job_name": "x",
                        "prefix": f"users/{owner}/jobs/x/{i}", "resource_class": "small",
                        "queue": "jobs.small", "created": base + i, "max_runtime": 60})
        reg.transition(job_id, "INITIALIZING", allowed=["QUEUED"])
        reg.transition(job_id, "RUNNING", allowed=["INITIALIZING"], started=base + i + 1)
        reg.transition(job_id, "ERROR" if i == 7 else "DONE", allowed=["RUNNING"],
                       ended=base + i + 3.5)
    page.goto(service.url + "/")
    rows = page.locator("table.jobs tbody tr")
    assert rows.count() == 50                                  # the newest 50 ...
    assert "60 jobs · page 1 of 2" in page.inner_text(".pager")
    page.click("a[rel=next]")                                  # ... and the rest
    assert rows.count() == 10
    first = rows.first.inner_text()
    assert "2.5 s" in first                                    # duration
    stamp = page.locator("table.jobs time").first
    assert stamp.get_attribute("datetime").endswith("Z")       # UTC from the server ...
    assert not stamp.inner_text().endswith("Z")                # ... shown in local time
    # filters: status, program, date
    page.goto(service.url + "/")
    page.select_option("select[name=status]", "ERROR")
    page.click("#filters button")
    assert rows.count() == 1 and "ERROR" in rows.first.inner_text()
    page.goto(service.url + "/?program=alpha")
    assert "30 jobs" in page.inner_text(".pager")
    page.goto(service.url + "/?since=2999-01-01")
    assert "No jobs match." in page.inner_text("#job-list")
    page.goto(service.url + "/?status=nonsense")
    assert page.locator("body").inner_text().count("status") >= 1
    # programs list and a link to files from the header
    page.goto(service.url + "/programs")
    assert page.locator("nav a", has_text="Files").count() == 1
    page.set_viewport_size({"width": 390, "height": 800})
    page.goto(service.url + "/")
    shot(page, "job-list-390")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, width                                 # nothing overflows the page


def test_hybrid_page_plots_metrics_while_the_job_runs(logged_in, service: RunningService) -> None:  # type: ignore[no-untyped-def]
    page, client = logged_in()
    job = hybrid_job(device="aer_simulator", client=client, job_name="learner-" + uuid.uuid4().hex[:6])(
        learns)(40, 0.2, rate=0.5)
    page.goto(f"{service.url}/jobs/{job.job_id}")
    assert page.inner_text("#job-name").startswith(job.name)     # not "None"
    assert "aer_simulator" in page.inner_text("#device")
    hyper = page.inner_text("#hyperparameters")
    assert "steps" in hyper and "40" in hyper and "rate" in hyper
    loss = page.locator("#metrics figure[data-metric=loss] .uplot")
    loss.wait_for(timeout=60_000)

    def points() -> int:
        return int(loss.get_attribute("data-points") or 0)

    seen = wait_until(points, timeout=30)
    wait_until(lambda: points() >= seen + 5, timeout=30)          # the plot grows while it runs
    assert job.status().startswith("RUNNING")
    assert "iteration" in page.inner_text("#metrics figure[data-metric=loss]").lower()
    assert "seconds" in page.inner_text("#metrics figure[data-metric=energy]").lower()
    shot(page, "hybrid-running")
    assert job.result(timeout=90) == 40
    page.wait_for_selector("#status.s-DONE", timeout=30_000)       # the page reloads at the end
    loss.wait_for()
    wait_until(lambda: points() == 40, timeout=20)
    tasks = page.inner_text("#quantum-tasks")
    assert "aer_simulator" in tasks and "DONE" in tasks
    assert "final" in page.inner_text("#checkpoints")
    shot(page, "hybrid-done")
    page.set_viewport_size({"width": 390, "height": 800})
    page.reload()
    shot(page, "hybrid-390")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


def test_devices_page_shows_holder_queue_and_your_position(logged_in, service: RunningService) -> None:  # type: ignore[no-untyped-def]
    page, client = logged_in()
    first = hybrid_job(device=HELD, client=client)(holds)(300)
    wait_until(lambda: first.state() == "RUNNING", timeout=60)
    second = hybrid_job(device=HELD, client=client)(holds)(0)
    try:
        assert second.queue_position().queue_position == "1"
        page.goto(service.url + "/devices")
        row = page.locator(f"#devices tr[data-device={HELD}]")
        assert f"your job {first.job_id[:8]}" in row.locator(".holder").inner_text()
        assert "(position 1)" in row.locator(".mine").inner_text()
        assert page.locator("#queues tr[data-queue='jobs.small'] td").nth(2).inner_text() != "0"
        shot(page, "devices")
    finally:
        first.cancel()
    assert second.result(timeout=120) is None
    page.reload()
    assert "position" not in page.locator(f"#devices tr[data-device={HELD}] .mine").inner_text()


def test_job_page_arguments_rerun_downloads_and_readable_results(logged_in, service: RunningService,  # type: ignore[no-untyped-def]
                                                                 tmp_path: Path) -> None:
    page, client = logged_in()
    src = tmp_path / "main.py"
    src.write_text("import numpy as np\nfrom qiskit import QuantumCircuit\n"
                   "from qhybrid import get_arguments, save_result\n"
                   "a = get_arguments()\nqc = QuantumCircuit(2, name='bell')\nqc.h(0)\nqc.cx(0, 1)\n"
                   "print('attempt output', flush=True)\n"
                   "save_result({'v': np.arange(4) * a['k'], 'c': qc, 'z': np.float64(0.5)})\n")
    page.set_input_files("#source", str(src))
    page.fill("#title", "readable")
    page.fill("#arguments", '{"k": 3}')
    page.fill("#max_runtime", "120")
    with page.expect_navigation():
        page.click("button:text('Run')")
    job_id = re.search(r"/jobs/([0-9a-f]{32})$", page.url).group(1)  # type: ignore[union-attr]
    page.wait_for_selector("#status.s-DONE", timeout=60_000)
    result = page.inner_text("#result")
    assert '"v": [\n    0,\n    3,' in result and "__type__" not in result
    assert "<circuit 1: bell, 2 qubits" in result and '"z": 0.5' in result
    assert "┤ H ├" in page.inner_text("pre.circuit")
    assert '"k": 3' in page.inner_text("#arguments")
    assert "120 s" in page.inner_text("dl.facts")
    with page.expect_download() as logs:
        page.click("a:text('logs.txt')")
    assert "attempt output" in Path(logs.value.path()).read_text()
    with page.expect_download() as res:
        page.click("a:text('result.json')")
    assert "__type__" in Path(res.value.path()).read_text()      # the exact encoded result
    with page.expect_navigation():
        page.click("button:text('Run again')")
    assert job_id not in page.url
    page.wait_for_selector("#status.s-DONE", timeout=60_000)
    assert '"k": 3' in page.inner_text("#arguments")
    shot(page, "job-rerun")


def test_the_form_keeps_the_chosen_file_after_an_error(logged_in, service: RunningService,  # type: ignore[no-untyped-def]
                                                       tmp_path: Path) -> None:
    page, client = logged_in()
    src = tmp_path / "kept.py"
    src.write_text("from qhybrid import get_arguments, save_result\nsave_result(get_arguments())\n")
    # when the form comes back with an error in the arguments ...
    page.set_input_files("#source", str(src))
    page.fill("#title", "kept")
    page.fill("#arguments", "{not json")
    with page.expect_navigation() as nav:
        page.click("button:text('Run')")
    assert nav.value.status == 400 and "arguments" in page.inner_text("p.error")
    assert "kept.py" in page.inner_text("#kept-file")
    assert client.programs() == []                             # nothing was stored as a program
    # ... correcting only the arguments runs the file chosen before
    page.fill("#arguments", '{"a": 1}')
    with page.expect_navigation():
        page.click("button:text('Run')")
    page.wait_for_selector("#status.s-DONE", timeout=60_000)
    assert '"a": 1' in page.inner_text("#result")
