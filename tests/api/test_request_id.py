"""Request ids: echoed (or made) on every response, stored with the runs and sweeps a request
creates, and carried by the JSON log lines of `licchavi serve`."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
from sqlmodel import select

from app.core.logs import ContextFilter, JsonFormatter, TextFormatter, bound
from app.models import Sweep, TrainingRun
from tests.conftest import ApiClient
from tests.helpers import free_port, stop, wait_for
from tests.sweeps.test_sweeps import submit


def test_a_plain_request_id_is_echoed_and_others_are_replaced(client: ApiClient) -> None:
    given = client.get("/healthz", headers={"X-Request-ID": "lb-7f3a:42"})
    assert given.headers["X-Request-ID"] == "lb-7f3a:42"
    made = client.get("/healthz").headers["X-Request-ID"]
    assert len(made) == 32 and made != client.get("/healthz").headers["X-Request-ID"]
    for garbled in ("two words", "x" * 129, 'quote"d', ""):
        replaced = client.get("/healthz", headers={"X-Request-ID": garbled})
        assert replaced.headers["X-Request-ID"] not in (garbled, "")
    # Problems carry it too: an operator matches a client's error report to the logs.
    missing = client.get("/api/v1/training-runs/999999", headers={"X-Request-ID": "ticket-1"})
    assert missing.status_code == 404 and missing.headers["X-Request-ID"] == "ticket-1"


def test_runs_and_sweeps_keep_the_id_of_the_request_that_created_them(client: ApiClient) -> None:
    posted = client.post(
        "/api/v1/training-runs",
        json={},
        headers={**client.key("runs:write"), "X-Request-ID": "run-request"},
    )
    assert posted.status_code == 202, posted.text
    auth = {**client.key("sweeps:write"), "X-Request-ID": "sweep-request"}
    sweep = submit(client, auth)
    with client._session_factory() as session:  # type: ignore[operator]
        run = session.exec(select(TrainingRun).where(TrainingRun.id == posted.json()["id"])).one()
        stored = session.exec(select(Sweep).where(Sweep.id == sweep["id"])).one()
        assert (run.request_id, stored.request_id) == ("run-request", "sweep-request")
    # Not part of the public representation.
    assert "request_id" not in posted.json()


def _format(formatter: logging.Formatter, message: str) -> str:
    record = logging.LogRecord("licchavi.test", logging.INFO, __file__, 1, message, (), None)
    ContextFilter().filter(record)
    return formatter.format(record)


def test_log_lines_carry_the_bound_context() -> None:
    with bound(request_id="abc", run_id=7):
        line = json.loads(_format(JsonFormatter(), "run 7 claimed"))
        text = _format(TextFormatter(), "hello")
    assert line["message"] == "run 7 claimed" and line["level"] == "INFO"
    assert (line["request_id"], line["run_id"]) == ("abc", 7) and "evaluation_id" not in line
    assert text.endswith("licchavi.test [request_id=abc run_id=7]: hello")
    assert "request_id" not in json.loads(_format(JsonFormatter(), "unbound"))


def test_serve_logs_json_lines_with_the_request_id(tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--no-worker"],
        env={**os.environ, "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for("the API", lambda: httpx.get(f"{base}/readyz").status_code == 200, 90)
        answered = httpx.get(f"{base}/api/v1/comparisons", headers={"X-Request-ID": "trace-me"})
        assert answered.headers["X-Request-ID"] == "trace-me"
    finally:
        stop(server)
        log.close()
    # (Lines not from logging, such as Python's warnings, are not JSON; every log line is.)
    written = (tmp_path / "serve.log").read_text().splitlines()
    lines = [json.loads(line) for line in written if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert any(
        line.get("request_id") == "trace-me" and "/api/v1/comparisons" in line["message"]
        for line in access
    ), access
