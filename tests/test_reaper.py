"""The reaper over many hosts: a reap is fenced by the attempt it judged lost, the lock
outlives the reap, and a lost attempt's tasks never outlive the job."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from tasks.core import defaults as d
from tasks.core.celery_app import make_celery
from tasks.core.registry import Registry
from tasks.core.services import Services
from tasks.core.settings import Settings
from tasks.jobs.run import reap_lost_jobs, requeue_job


@pytest.fixture
def services(redis_server: str, tmp_path) -> Iterator[Services]:  # type: ignore[no-untyped-def]
    # db 9: no worker consumes it, so the rerun's message just waits in its queue
    settings = Settings.from_env({"QHYBRID_REDIS_URL": f"{redis_server}/9",
                                  "QHYBRID_STORAGE_URL": (tmp_path / "s").as_uri(),
                                  "QHYBRID_DATA_DIR": str(tmp_path)})
    yield Services.from_settings(settings)


def _lost_job(reg: Registry, attempt: int = 1) -> str:
    job_id = uuid.uuid4().hex
    reg.create_job({"id": job_id, "user": "u" + job_id[:8], "resource_class": "small",
                    "queue": "jobs.small", "prefix": f"t/{job_id}", "attempt": attempt})
    assert reg.transition(job_id, d.INITIALIZING, allowed=[d.QUEUED])
    reg.set_fields(job_id, updated=time.time() - 60)     # its supervisor stopped long ago
    return job_id


def test_a_stale_reap_never_touches_the_newer_attempt(services: Services) -> None:
    celery = make_celery(services.settings)
    reg = services.registry
    # given a job whose first attempt's supervisor is gone
    job_id = _lost_job(reg)
    # when two reapers judged attempt 1 lost, one after the other
    assert requeue_job(services, celery, job_id, "worker lost", 1, fenced=True) == d.QUEUED
    assert reg.transition(job_id, d.INITIALIZING, allowed=[d.QUEUED], require=("attempt", "2"))
    reg.heartbeat(job_id, "another-host:1")
    assert requeue_job(services, celery, job_id, "worker lost", 1, fenced=True) is None
    # then the rerun goes on untouched: no second "worker lost", no ERROR
    job = reg.get_job(job_id)
    assert (job["status"], job["attempt"]) == (d.INITIALIZING, 2)
    # and a reap of attempt 2 is refused while its supervisor beats
    assert requeue_job(services, celery, job_id, "worker lost", 2, fenced=True) is None
    reg.r.delete(d.JOB_HEARTBEAT_KEY.format(job_id=job_id))
    assert requeue_job(services, celery, job_id, "worker lost", 2, fenced=True) == d.ERROR


def test_concurrent_reapers_run_a_lost_job_again_exactly_once(services: Services) -> None:
    celery = make_celery(services.settings)
    reg = services.registry
    job_id = _lost_job(reg)
    results: list[list[str]] = []
    threads = [threading.Thread(target=lambda: results.append(reap_lost_jobs(services, celery)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(job_id in r for r in results) == 1
    job = reg.get_job(job_id)
    assert (job["status"], job["attempt"]) == (d.QUEUED, 2)
    assert sum("worker lost" in (e.get("detail") or "") for e in reg.events(job_id)) == 1


def test_the_reaper_lock_is_held_for_as_long_as_the_reap_lasts(services: Services) -> None:
    reg = services.registry
    key = d.REAPER_LOCK_KEY + ":" + uuid.uuid4().hex
    with reg.held_lock(key, 0.3) as mine:
        assert mine
        time.sleep(1.2)                        # four times the lock's time to live
        with reg.held_lock(key, 0.3) as theirs:
            assert not theirs
    # and it still spaces out the next turn, then frees itself
    with reg.held_lock(key, 0.3) as theirs:
        assert not theirs
    time.sleep(0.5)
    with reg.held_lock(key, 0.3) as theirs:
        assert theirs


def test_a_rerun_marks_where_its_attempt_starts_in_the_log(services: Services) -> None:
    celery = make_celery(services.settings)
    reg = services.registry
    # given a lost job that had written some output
    job_id = _lost_job(reg)
    reg.append_log(job_id, "first attempt's output\n")
    # when it is run again
    assert requeue_job(services, celery, job_id, "worker lost", 1, fenced=True) == d.QUEUED
    # then its log says, after the first attempt's output, where the second one starts
    log = (reg.read_log(job_id) or b"").decode()
    assert log == ("first attempt's output\n\n----- attempt 2 (worker lost; the job runs again "
                   "from the start) -----\n")
