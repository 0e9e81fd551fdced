"""The HTML pages in a real headless Chromium against the real service and workers."""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qhybrid import Client
from tests.conftest import RunningService

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path("/tmp/qhybrid-job-page.png")
JOB_TIMEOUT_MS = 60_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason=f"no Chromium at {CHROMIUM} (Debian's `chromium` package)"),
]

HELLO = """
import time
from qhybrid import Job, get_arguments, save_result, update_status

args = get_arguments()
print("hello from the browser", args["n"], flush=True)
update_status(Job.MAPPING)
time.sleep(4)       # long enough for the page to see MAPPING on a loaded host
with open("answer.txt", "w") as fh:
    fh.write("42")
save_result({"squares": [i * i for i in range(args["n"])], "who": "qhybrid"})
"""

FAILING = """
print("about to fail", flush=True)
raise ValueError("boom 42")
"""

SLEEPER = """
import time
print("started, sleeping", flush=True)
time.sleep(300)
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                      args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def logged_in(browser, service: RunningService):  # type: ignore[no-untyped-def]
    """A factory: a page logged in as a fresh user, and that user's API client."""
    contexts = []

    def login() -> tuple[object, Client]:
        _, token = service.new_user()
        context = browser.new_context(accept_downloads=True)  # type: ignore[attr-defined]
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        page.goto(service.url + "/")
        assert page.url.startswith(service.url + "/login")     # every page needs a session
        page.fill("#token", token)
        page.click("button:text('Log in')")
        page.wait_for_url(service.url + "/")
        return page, Client(url=service.url, token=token)

    yield login
    for context in contexts:
        context.close()


def submit(page, path: Path, title: str, arguments: str = "{}",  # type: ignore[no-untyped-def]
           resource_class: str = "small") -> int:
    """Fill in and send the submission form; the HTTP status of the answer."""
    page.set_input_files("#source", str(path))
    page.fill("#title", title)
    page.fill("#arguments", arguments)
    page.select_option("#resource_class", resource_class)
    with page.expect_navigation() as nav:
        page.click("button:text('Run')")
    return int(nav.value.status)


def program(tmp_path: Path, source: str, name: str = "main.py") -> Path:
    path = tmp_path / name
    path.write_text(source)
    return path


def job_id_of(page) -> str:  # type: ignore[no-untyped-def]
    match = re.search(r"/jobs/([0-9a-f]{32})$", page.url)
    assert match, page.url
    return match.group(1)


def test_bad_token_is_refused(browser, service: RunningService) -> None:  # type: ignore[no-untyped-def]
    context = browser.new_context()
    page = context.new_page()
    page.goto(service.url + "/jobs/0123")
    assert "/login" in page.url
    page.fill("#token", "qh_not-a-token")
    with page.expect_navigation() as nav:
        page.click("button:text('Log in')")
    assert nav.value.status == 401
    assert "not valid" in page.inner_text(".error")
    context.close()


def test_program_runs_live_to_done_with_logs_result_and_model(
        logged_in: Callable, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    # given a logged-in user
    page, client = logged_in()
    # when they submit a .py file with arguments
    assert submit(page, program(tmp_path, HELLO, "hello.py"), "hello", '{"n": 4}') == 200
    job_id = job_id_of(page)
    # then the job page follows it live: sub-status and log lines before it ends
    expect(page.locator("#status")).to_have_text("RUNNING: MAPPING", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#logs")).to_contain_text("hello from the browser 4")
    expect(page.locator("#status")).to_have_text("DONE", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#result")).to_be_visible()
    assert json.loads(page.inner_text("#result")) == {"squares": [0, 1, 4, 9], "who": "qhybrid"}
    assert "hello from the browser 4" in page.inner_text("#logs")
    events = page.inner_text("#events")
    for status in ("QUEUED", "INITIALIZING", "RUNNING: MAPPING", "DONE"):
        assert status in events
    assert page.locator("button:text('Cancel')").count() == 0
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # and model.tar.gz downloads with what the job wrote
    with page.expect_download() as download:
        page.click("text=Download model.tar.gz")
    with tarfile.open(download.value.path(), "r:gz") as tar:
        assert tar.extractfile("answer.txt").read() == b"42"  # type: ignore[union-attr]

    # and the list under the form shows the job
    page.goto(page.url.split("/jobs/")[0] + "/")
    row = page.locator("table.jobs tbody tr").first
    assert "DONE" in row.inner_text() and "hello" in row.inner_text()
    row.locator("a").click()
    assert job_id_of(page) == job_id
    assert client.job(job_id).status() == "DONE"


def test_failing_program_shows_its_error(logged_in: Callable, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page, _ = logged_in()
    assert submit(page, program(tmp_path, FAILING), "fails") == 200
    expect(page.locator("#status")).to_have_text("ERROR", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#error")).to_contain_text("ValueError: boom 42")
    assert "about to fail" in page.inner_text("#logs")


@pytest.mark.parametrize(("name", "source", "title", "arguments", "status", "message"), [
    ("main.py", "print(1)", "bad-json", "{not json", 400, "arguments are not valid JSON"),
    ("main.py", "print(1)", "a-list", "[1, 2]", 400, "arguments must be a JSON object"),
    ("main.py", "print(1)", "bad title!", "{}", 400, "a title is 1-64 letters"),
    ("notes.txt", "print(1)", "text-file", "{}", 400, "source must be a tar"),
    ("main.py", "print(1)", "nan", '{"x": NaN}', 400, "NaN is not JSON"),
    ("main.py", "def broken(:", "syntax", "{}", 400, "is not valid Python"),
])
def test_bad_submissions_are_shown_and_store_nothing(
        logged_in: Callable, tmp_path: Path, name: str, source: str, title: str,
        arguments: str, status: int, message: str) -> None:
    page, client = logged_in()
    assert submit(page, program(tmp_path, source, name), title, arguments) == status
    assert message in page.inner_text("p.error")
    assert page.input_value("#arguments") == arguments          # what they typed stays
    assert client.jobs() == [] and client.programs() == []


def test_forms_need_the_csrf_token(logged_in: Callable, tmp_path: Path) -> None:
    page, client = logged_in()
    url = page.url
    # a cross-site form post carries the session cookie but not the token
    refused = page.request.post(url, multipart={
        "title": "forged", "arguments": "{}", "resource_class": "small",
        "source": {"name": "main.py", "mimeType": "text/x-python", "buffer": b"print(1)"}})
    assert refused.status == 400
    assert "CSRF" in refused.text()
    assert client.programs() == []
    # the JSON API (bearer token, no cookies) needs no CSRF token
    job = _api_job(client, tmp_path, SLEEPER)
    assert page.request.post(f"{url}jobs/{job}/cancel").status == 400
    assert client.job(job).status() in ("QUEUED", "INITIALIZING", "RUNNING")
    client.job(job).cancel()


def test_another_users_job_is_not_found(logged_in: Callable, tmp_path: Path) -> None:
    _, owner = logged_in()
    job = _api_job(owner, tmp_path, "print('mine')")
    page, _ = logged_in()
    home = page.url
    for path in (f"jobs/{job}/model.tar.gz", f"jobs/{job}/state", f"jobs/{job}/result.json",
                 f"jobs/{job}"):
        assert page.goto(home + path).status == 404, path
    assert page.inner_text("h1") == "Not found"
    assert page.request.post(f"{home}jobs/{job}/cancel", form={
        "csrf_token": page.get_attribute("input[name=csrf_token]", "value")}).status == 404
    assert owner.job(job).status() != "CANCELED"


def test_a_running_program_is_canceled_with_the_button(logged_in: Callable,
                                                       tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page, client = logged_in()
    assert submit(page, program(tmp_path, SLEEPER), "sleeper") == 200
    expect(page.locator("#logs")).to_contain_text("started, sleeping", timeout=JOB_TIMEOUT_MS)
    page.once("dialog", lambda dialog: dialog.dismiss())      # "Cancel job sleeper?" - no
    page.click("button:text('Cancel')")
    assert client.job(job_id_of(page)).status() == "RUNNING"
    page.once("dialog", lambda dialog: dialog.accept())       # yes
    page.click("button:text('Cancel')")
    expect(page.locator("#status")).to_have_text("CANCELED", timeout=JOB_TIMEOUT_MS)
    assert client.job(job_id_of(page)).status() == "CANCELED"
    assert page.locator("button:text('Cancel')").count() == 0


def _api_job(client: Client, tmp_path: Path, source: str) -> str:
    """A job submitted through the API, as another client would."""
    files = {"source": ("main.py", io.BytesIO(source.encode()), "text/x-python")}
    client.request("POST", "/programs", data={"title": "api-made"}, files=files)
    return str(client.request("POST", "/programs/api-made/run", json={}).json()["job_id"])
