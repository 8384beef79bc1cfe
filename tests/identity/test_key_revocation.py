"""A revoked key is refused by every API process within 5 s: two real `uvicorn` processes on one
PostgreSQL database, the key verified (and cached) by both, revoked through one of them."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlmodel import Session

from app.core.db import get_engine
from app.identity.security import create_api_key
from tests.helpers import free_port, stop, wait_for

REVOCATION_BOUND_SECONDS = 5.0
BODY = {
    "video_a": "yt:aaa",
    "video_b": "yt:bbb",
    "criteria_scores": [{"criterion": "largely_recommended", "score": 1}],
}


@pytest.fixture
def two_api_processes(committed_database: str) -> Iterator[list[str]]:
    urls, processes = [], []
    env = {**os.environ, "AUTO_TRAIN_ENABLED": "false"}
    try:
        for _ in range(2):
            port = free_port()
            command = [sys.executable, "-m", "uvicorn", "--factory", "app.main:serve_app"]
            command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
            processes.append(subprocess.Popen(command, env=env))
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            wait_for(f"{url} ready", lambda url=url: httpx.get(url + "/readyz").status_code == 200)
        yield urls
    finally:
        for process in processes:
            stop(process)


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_revoked_key_is_refused_by_every_process_within_5_s(
    two_api_processes: list[str],
) -> None:
    with Session(get_engine()) as session:
        row, key = create_api_key(
            session, name="web", scopes=["comparisons:write"], user_id="alice"
        )
        _row, admin_key = create_api_key(session, name="ops", scopes=["admin"])
        session.commit()
        prefix = row.prefix
    auth = {"Authorization": f"Bearer {key}"}

    def status(url: str) -> int:
        return httpx.post(url + "/api/v1/comparisons", json=BODY, headers=auth).status_code

    # Verified by both (the second post of each is served from its cache).
    for url in two_api_processes * 2:
        assert status(url) in (200, 201)
    revoked = httpx.post(
        f"{two_api_processes[1]}/api/v1/api-keys/{prefix}/revoke",
        headers={"Authorization": f"Bearer {admin_key}"},
    )
    assert revoked.status_code == 200, revoked.text
    since = time.monotonic()
    for url in two_api_processes:
        left = REVOCATION_BOUND_SECONDS - (time.monotonic() - since)
        wait_for(f"{url} to refuse the revoked key", lambda url=url: status(url) == 401, left, 0.1)
    # And it stays refused.
    assert [status(url) for url in two_api_processes] == [401, 401]
