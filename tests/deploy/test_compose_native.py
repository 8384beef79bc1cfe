"""docker-compose.yml and the Dockerfile, exercised natively (Docker cannot run here): each
service's command line runs with the environment compose gives it, its hosts mapped onto this
machine's PostgreSQL and Redis, and the Dockerfile's own steps and health checks run as written."""

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from tests.conftest import REPO, create_database, drop_database, emptied_redis_url
from tests.helpers import free_port, stop, wait_for
from tests.torchless import torchless

COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
DOCKERFILE = (REPO / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# The variables an operator exports before `docker compose up` (the file's header says which).
OPERATOR = {"SECRET_KEY": "0123456789abcdef" * 4, "LOG_LEVEL": "WARNING"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's `${NAME}`, `${NAME:-default}` and `${NAME:?message}`."""

    def replace(match: re.Match[str]) -> str:
        name, kind, argument = match.groups()
        if variables.get(name):
            return variables[name]
        if kind == "-":
            return argument
        raise ValueError(f"{name}: {argument or 'not set'}")

    return _VARIABLE.sub(replace, value)


def service_environment(service: str, variables: dict[str, str]) -> dict[str, str]:
    environment = COMPOSE["services"][service].get("environment", {})
    return {name: interpolate(str(value), variables) for name, value in environment.items()}


def dockerfile_stage(target: str) -> list[str]:
    """The instructions of one stage, continuation lines joined."""
    text = DOCKERFILE.replace("\\\n", " ")
    stage = re.split(r"^FROM ", text, flags=re.M)
    for body in stage[1:]:
        header, _, rest = body.partition("\n")
        if header.split()[-1] == target:
            return [line.strip() for line in rest.splitlines() if line.strip()]
    raise AssertionError(f"no stage {target!r} in the Dockerfile")


def stage_env(target: str) -> dict[str, str]:
    """ENV of the base stage (every role's image inherits it)."""
    found: dict[str, str] = {}
    for line in dockerfile_stage("base"):
        if line.startswith("ENV "):
            found |= dict(part.split("=", 1) for part in shlex.split(line[4:]))
    return found


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[dict[str, str]]:
    """What compose would give every service, with db:5432 and redis:6379 mapped here."""
    url, admin = create_database("licchavi_compose")
    redis_url = emptied_redis_url()
    environment = service_environment("api", OPERATOR)
    assert environment["ENVIRONMENT"] == "production"
    assert urlsplit(environment["DATABASE_URL"]).hostname == "db"
    assert urlsplit(environment["CELERY_BROKER_URL"]).hostname == "redis"
    image = stage_env("base")
    mapped = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")},
        **image,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "DATA_DIR": str(tmp_path / "compose-data"),
        **environment,
        "DATABASE_URL": url,
        "CELERY_BROKER_URL": redis_url,
        "HOSTNAME": socket.gethostname(),
    }
    (tmp_path / "compose-data").mkdir()
    yield mapped
    drop_database(url, admin)


def command_of(service: str, port: int | None = None) -> list[str]:
    """The service's command; its listening port (the container's) replaced by a free one here."""
    command = [str(part) for part in COMPOSE["services"][service]["command"]]
    if port is None:
        return command
    moved = []
    for before, part in zip(["", *command[:-1]], command, strict=True):
        if before == "--port":
            part = str(port)
        elif part.startswith("--port="):
            part = f"--port={port}"
        moved.append(part)
    assert moved != command, f"{service} names no port"
    return moved


def test_every_compose_service_command_runs_with_its_environment(
    deployment: dict[str, str], tmp_path: Path
) -> None:
    assert set(COMPOSE["services"]) == {
        "db", "redis", "migrate", "api", "worker-cpu", "worker-gpu", "flower"
    }  # fmt: skip
    # Their images have no torch: here torch cannot be imported in them, and no import is tried.
    blocker = torchless(tmp_path / "torchless")
    deployment = blocker.environment(deployment)
    # Compose refuses to start without the secret, as the file promises.
    with pytest.raises(ValueError, match="SECRET_KEY"):
        service_environment("api", {})

    migrate = subprocess.run(
        command_of("migrate"), env=deployment, capture_output=True, text=True, timeout=120
    )
    assert migrate.returncode == 0, migrate.stderr

    api_port, flower_port, metrics_port = free_port(), free_port(), free_port()
    # The workers' own environment: their metrics port, exposed on the compose network, moved
    # to a free one here as the API's is.
    worker_environment = service_environment("worker-cpu", OPERATOR)
    exposed = worker_environment["WORKER_METRICS_PORT"]
    assert COMPOSE["services"]["worker-cpu"]["expose"] == [exposed]
    assert worker_environment["WORKER_METRICS_HOST"] == "0.0.0.0"
    worker_env = {
        **deployment,
        **{k: v for k, v in worker_environment.items() if k.startswith("WORKER_")},
        "WORKER_METRICS_PORT": str(metrics_port),
    }
    api_log = open(tmp_path / "api.log", "wb")  # noqa: SIM115 (closed with the process)
    processes = [
        subprocess.Popen(
            command_of("api", api_port),
            env=deployment,
            stderr=api_log,
            start_new_session=True,
        ),
        subprocess.Popen(command_of("worker-cpu"), env=worker_env, start_new_session=True),
        subprocess.Popen(command_of("flower", flower_port), env=deployment, start_new_session=True),
    ]
    try:
        base = f"http://127.0.0.1:{api_port}"
        wait_for("the API's readiness", lambda: httpx.get(f"{base}/readyz").status_code == 200, 60)
        # The image's and compose's health checks, as written, against the port used here.
        api_check = COMPOSE["services"]["api"]["healthcheck"]["test"]
        assert api_check[0] == "CMD"
        check = [part.replace(":8000/", f":{api_port}/") for part in api_check[1:]]
        assert subprocess.run(check, env=deployment, timeout=30).returncode == 0

        created = subprocess.run(
            ["licchavi", "api-key", "create", "--scopes", "admin"],
            env=deployment,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert created.returncode == 0, created.stderr
        headers = {"Authorization": f"Bearer {created.stdout.strip()}"}
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            rows = [
                {
                    "user_id": f"u{i % 3}",
                    "video_a": f"yt:v{i % 5}",
                    "video_b": f"yt:v{i % 5 + 1}",
                    "criteria_scores": [{"criterion": "largely_recommended", "score": i % 7 - 3}],
                }
                for i in range(12)
            ]
            assert client.post("/api/v1/comparisons/bulk", json=rows).status_code == 200
            run = client.post("/api/v1/training-runs", json={"criteria": ["largely_recommended"]})
            assert run.status_code == 202, run.text
            finished = wait_for(
                "the compose worker to train the run",
                lambda: (
                    (body := client.get(f"/api/v1/training-runs/{run.json()['id']}").json())[
                        "status"
                    ]
                    in ("succeeded", "failed")
                    and body
                ),
                120,
            )
            assert finished["status"] == "succeeded", finished["error"]
        # The worker's own metrics saw the run it trained.
        worker_metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert 'licchavi_worker_run_duration_seconds_count{outcome="succeeded"} 1.0' in (
            worker_metrics
        )

        worker_check = _healthcheck("worker-cpu")
        ping = subprocess.run(
            ["sh", "-c", worker_check], env=deployment, capture_output=True, timeout=60
        )
        assert ping.returncode == 0, ping.stderr

        flower = f"http://127.0.0.1:{flower_port}"
        wait_for("flower", lambda: httpx.get(f"{flower}/healthcheck").text == "OK", 60)
        assert all(process.poll() is None for process in processes)
    finally:
        for process in processes:
            stop(process)
        api_log.close()
    # LOG_LEVEL=WARNING reached the API: none of uvicorn's start-up or access lines.
    assert "INFO" not in (tmp_path / "api.log").read_text()
    # migrate, api, worker-cpu (its pool processes fork from it), flower and the health checks
    assert blocker.loaded_in() >= 4
    assert blocker.attempts() == ""


def _healthcheck(target: str) -> str:
    """The shell form of a stage's HEALTHCHECK CMD."""
    for line in dockerfile_stage(target):
        if line.startswith("HEALTHCHECK"):
            return line.split(" CMD ", 1)[1]
    raise AssertionError(f"stage {target} has no HEALTHCHECK")


def stage_parent(target: str) -> str | None:
    """The stage `target` is built FROM, None when it starts from an image."""
    for header in re.findall(r"^FROM (.+)$", DOCKERFILE, flags=re.M):
        parent, _as, name = header.split()
        if name == target:
            return parent if not parent.startswith("$") else None
    raise AssertionError(f"no stage {target!r} in the Dockerfile")


def stage_chain(target: str) -> list[str]:
    """The stages an image is made of, from the base one to `target`."""
    chain = [target]
    while (parent := stage_parent(chain[0])) is not None:
        chain.insert(0, parent)
    return chain


def requirement_steps(target: str, directory: Path) -> list[str]:
    """The requirements a stage writes with its `RUN python -c "…" > FILE` steps, run here."""
    written = []
    for step in dockerfile_stage(target):
        if not step.startswith("RUN python -c"):
            continue
        # `RUN python -c "…" > FILE && …`: run the python part; it writes to stdout.
        program = shlex.split(step[len("RUN ") :].split(" > ", 1)[0])
        done = subprocess.run(
            [sys.executable, *program[1:]], cwd=directory, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        written += done.stdout.split()
    return written


def test_dockerfile_requirement_steps_install_what_each_role_needs(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_bytes((REPO / "pyproject.toml").read_bytes())
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    written = {
        stage: requirement_steps(stage, tmp_path) for stage in ("base", "ml-base", "worker-gpu")
    }
    assert written["base"] == project["dependencies"] + extras["sweeps"]
    assert written["ml-base"] == extras["ml"]
    assert written["worker-gpu"] == extras["gpu"]
    assert stage_chain("api") == ["base", "api"]
    assert stage_chain("worker-cpu") == ["base", "ml-base", "worker-cpu"]
    assert stage_chain("worker-gpu") == ["base", "ml-base", "worker-gpu"]

    # The API and CPU worker images get no torch: not from their requirements, not by name.
    for role in ("api", "worker-cpu"):
        for stage in stage_chain(role):
            assert not any(line.startswith("torch") for line in written.get(stage, []))
            runs = [line for line in dockerfile_stage(stage) if line.startswith("RUN ")]
            assert not [line for line in runs if "torch" in line.lower()], (role, stage)
    # The GPU worker's gets the `gpu` extra with torch pinned to the version CI tests.
    (install,) = [line for line in dockerfile_stage("worker-gpu") if "pip install -r" in line]
    assert '"torch==${TORCH_VERSION}"' in install
    makefile = (REPO / "Makefile").read_text()
    (tested,) = re.findall(r"^TORCH_VERSION \?= (\S+)$", makefile, flags=re.M)
    assert f"ARG TORCH_VERSION={tested}" in dockerfile_stage("worker-gpu")

    # Compose runs each worker image on its queue; the GPU one only under the `gpu` profile.
    services = COMPOSE["services"]
    assert services["worker-cpu"]["build"]["target"] == "worker-cpu"
    assert "profiles" not in services["worker-cpu"]
    assert services["worker-gpu"]["build"]["target"] == "worker-gpu"
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    for name, queue in (("worker-cpu", "cpu"), ("worker-gpu", "gpu")):
        command = services[name]["command"]
        assert command[command.index("--queues") + 1] == queue
    assert services["api"]["build"]["target"] == "api"

    # The app never imports torch (checked in a bare process).
    bare = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys, app.main; print(json.dumps('torch' in sys.modules))",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert bare.returncode == 0, bare.stderr
    assert json.loads(bare.stdout) is False


def test_the_flower_image_and_the_tested_flower_are_one_version() -> None:
    (pinned,) = [d for d in PYPROJECT["project"]["optional-dependencies"]["dev"] if "flower" in d]
    arguments = [line for line in dockerfile_stage("flower") if line.startswith("ARG ")]
    assert f"ARG FLOWER_VERSION={pinned.split('==')[1]}" in arguments
