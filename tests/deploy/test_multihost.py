"""The service across hosts: a database host (its own PostgreSQL cluster and Redis), two API
hosts, two worker hosts and a client host, each a network namespace cabled to one switch. Every
process is the one docker-compose.yml runs, with compose's environment (`db` and `redis` resolve
to the database host). The client writes through both APIs, a sweep trains across both worker
hosts, then the worker host training a run's criterion is cut off the switch mid-run: the other
host takes the criterion over and publishes the run once, and when the link returns the cut-off
host drops its attempt, writing nothing."""

import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from ml.synthetic import SyntheticParams, generate
from tests.conftest import IN_CI
from tests.deploy.netns import Network, Processes, remove_stale_namespaces
from tests.deploy.test_compose_native import OPERATOR, command_of, service_environment
from tests.helpers import wait_for
from tests.workers.training_support import FAST_RECOVERY

pytestmark = pytest.mark.multihost

HOSTS = {"db": 2, "api1": 11, "api2": 12, "worker1": 21, "worker2": 22, "client": 31}
# Compose's service names, which its URLs use, are the database host's.
ALIASES = {"db": ["redis"]}
API_HOSTS = ("api1", "api2")
WORKER_HOSTS = ("worker1", "worker2")
CRITERION = "largely_recommended"
# Leases and checks at test speed; the rest is compose's environment as written.
TEST_SETTINGS = {
    **FAST_RECOVERY,
    "RUN_CHECKPOINT_EVERY_EPOCHS": "25",
    "SWEEP_LEASE_SECONDS": "3",
    "SWEEP_HEARTBEAT_SECONDS": "0.3",
    "SWEEP_SCHEDULER_INTERVAL_SECONDS": "0.2",
    "SWEEP_SCHEDULER_LEASE_SECONDS": "3",
    "SWEEP_RESEND_AFTER_SECONDS": "2",
    "AUTO_TRAIN_ENABLED": "false",
    "OPERATIONS_METRICS_CACHE_SECONDS": "0",
    "LOG_LEVEL": "INFO",
}
# Durability is not under test: no fsync keeps a loaded machine's disk off the clock.
POSTGRES_TEST_SETTINGS = ["-c", "fsync=off"]
DATA = SyntheticParams(
    n_users=100, n_videos=500, n_comparisons=10_000, criteria=[CRITERION], seed=11
)
# precision 1.0 never stops early: the run lasts all its epochs, long enough to be cut.
RUN = {"config": {"solver": "faithful", "epochs": 2000, "precision": 1.0}, "warm_start": False}
SWEEP = {
    "name": "across hosts",
    "method": "grid",
    "parameters": {"w": {"values": [0.5, 1, 2]}, "w0": {"values": [0.5, 1]}},
    "repeats": {"seeds": [0]},
    "evaluation": {
        "kind": "synthetic",
        "generator": {"n_users": 40, "n_videos": 200, "comps_per_video": 5},
    },
    "objectives": [{"metric": "spearman", "direction": "maximize"}],
    "base": {"solver": "faithful", "epochs": 300, "precision": 1.0},
    "budget": {"max_parallel": 6},
}


def unavailable(message: str) -> None:
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def postgres_binary(name: str) -> str:
    """The newest installed PostgreSQL's `name` (Debian keeps them out of PATH)."""
    found = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0,
    )
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path is None:
        unavailable(f"PostgreSQL's {name} is not installed")
    return str(on_path)


def check_prerequisites() -> None:
    if os.geteuid() != 0:
        unavailable("building network namespaces needs root")
    for tool in ("ip", "unshare", "setpriv", "redis-server"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        unavailable("no postgres user to run the database host's cluster")
    probe = subprocess.run(
        ["ip", "netns", "add", f"lvmh{os.getpid()}-probe"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        unavailable(f"ip netns is unavailable: {probe.stderr.strip()}")
    subprocess.run(["ip", "netns", "del", f"lvmh{os.getpid()}-probe"], capture_output=True)


@dataclass
class Deployment:
    network: Network
    processes: Processes
    env: dict[str, str]
    key: str = ""
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def url(self, host: str) -> str:
        return f"http://{self.network.address(host)}:8000"

    def database(self, name: str = "licchavi", **options: Any) -> sa.Engine:
        """An operator's connection to the database host, as compose's user (from the client
        host: use it inside `network.inside("client")`)."""
        address = self.network.address("db")
        return sa.create_engine(
            f"postgresql+psycopg://licchavi:licchavi@{address}:5432/{name}", **options
        )

    def run_on(self, host: str, argv: list[str], timeout: float = 120) -> str:
        done = subprocess.run(
            self.network.command(host, argv),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"{argv} on {host}: {done.stderr}"
        return done.stdout


def start_database_host(deployment: Deployment, cluster: Path) -> None:
    """initdb a private cluster (as the postgres user: initdb refuses root), serve it and Redis
    on the database host's address only, and create compose's user and database."""
    network, processes = deployment.network, deployment.processes
    owner = pwd.getpwnam("postgres")
    as_postgres = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
    os.chown(cluster, owner.pw_uid, owner.pw_gid)
    password = cluster / "password"
    password.write_text("licchavi\n")
    os.chown(password, owner.pw_uid, owner.pw_gid)
    data = cluster / "data"
    subprocess.run(
        [*as_postgres, postgres_binary("initdb"), "--no-sync", "-D", str(data), "-U", "licchavi",
         f"--pwfile={password}", "--auth-local=trust", "--auth-host=scram-sha-256"],
        cwd=cluster, check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    (data / "pg_hba.conf").write_text(
        f"local all all trust\nhost all all {network.address('db')}/24 scram-sha-256\n"
    )
    # Compose's PostgreSQL command (its keepalive settings), on this host's address.
    postgres, *compose_options = command_of("db")
    assert postgres == "postgres"
    options = [
        *compose_options,
        "-c", f"listen_addresses={network.address('db')}",
        "-c", "port=5432",
        "-c", f"unix_socket_directories={cluster}",
        *POSTGRES_TEST_SETTINGS,
    ]  # fmt: skip
    processes.start(
        "db", "postgres", [*as_postgres, postgres_binary("postgres"), "-D", str(data), *options],
        deployment.env, cwd=cluster, stop_signal=signal.SIGINT,
    )  # fmt: skip
    redis_dir = cluster / "redis"
    redis_dir.mkdir()
    # Compose's Redis command, on the host's address; the redis image's entrypoint adds
    # `--protected-mode no` (Redis 7 otherwise refuses clients from other hosts without a password).
    processes.start(
        "db", "redis",
        ["redis-server", "--appendonly", "yes", "--dir", str(redis_dir),
         "--bind", network.address("db"), "--port", "6379", "--protected-mode", "no"],
        deployment.env,
    )  # fmt: skip
    with network.inside("client"):
        admin = deployment.database("postgres", isolation_level="AUTOCOMMIT")
        try:
            connection = wait_for("the database host's PostgreSQL", admin.connect, 60)
            with connection:
                connection.execute(sa.text("CREATE DATABASE licchavi"))
        finally:
            admin.dispose()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    check_prerequisites()
    remove_stale_namespaces()
    for stale in glob.glob("/tmp/licchavi-multihost-*-*"):
        owner = Path(stale).name.split("-")[2]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            shutil.rmtree(stale, ignore_errors=True)
    network = Network(HOSTS, ALIASES)
    root = Path(tempfile.mkdtemp(prefix=f"licchavi-multihost-{os.getpid()}-"))
    # The cluster's directory must be reachable by the postgres user, unlike tmp_path.
    root.chmod(0o755)
    logs = tmp_path_factory.mktemp("logs")
    processes = Processes(network, logs)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")},
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        **service_environment("api", OPERATOR),
        **TEST_SETTINGS,
        "DATA_DIR": str(root / "data"),
    }
    deployment = Deployment(network, processes, env)
    try:
        network.build()
        cluster = root / "cluster"
        cluster.mkdir()
        start_database_host(deployment, cluster)
        deployment.run_on("api1", command_of("migrate"))
        for host in API_HOSTS:
            processes.start(host, host, command_of("api"), env)
        for host in WORKER_HOSTS:
            deployment.workers[host] = processes.start(host, host, command_of("worker-cpu"), env)
        deployment.key = deployment.run_on(
            "api1", ["licchavi", "api-key", "create", "--scopes", "admin"]
        ).strip()
        with network.inside("client"):
            for host in API_HOSTS:
                wait_for(
                    f"{host}'s readiness",
                    lambda host=host: httpx.get(f"{deployment.url(host)}/readyz").is_success,
                    120,
                )
        yield deployment
    finally:
        processes.stop_all()
        network.destroy()
        for name in sorted(logs.glob("*.log")):
            tail = name.read_text(errors="replace").splitlines()[-15:]
            print(f"--- {name.name} (last lines)", *tail, sep="\n")
        shutil.rmtree(root, ignore_errors=True)


def host_of(owner: str | None) -> str | None:
    """`celery@worker1:pid:token` or `worker1:pid:token` → worker1."""
    match = re.match(r"(?:celery@)?([^:@]+):\d+:", owner or "")
    return match.group(1) if match else None


def comparisons() -> list[dict[str, Any]]:
    frame = generate(DATA).comparisons
    return [
        {
            "user_id": row.public_username,
            "video_a": row.video_a,
            "video_b": row.video_b,
            "criteria_scores": [
                {"criterion": row.criteria, "score": float(row.score), "score_max": 10}
            ],
        }
        for row in frame.itertuples()
    ]


def query(engine: sa.Engine, statement: str, **parameters: Any) -> list[sa.RowMapping]:
    with engine.connect() as connection:
        return list(connection.execute(sa.text(statement), parameters).mappings())


def run_row(engine: sa.Engine, run_id: int) -> dict[str, Any]:
    (row,) = query(engine, "SELECT * FROM training_runs WHERE id = :id", id=run_id)
    return dict(row)


def criterion_row(engine: sa.Engine, run_id: int) -> dict[str, Any]:
    """The run's one criterion (the run trains the one criterion the client wrote): its lease
    names the worker training it, its attempt counts the claims of it."""
    (row,) = query(engine, "SELECT * FROM training_run_criteria WHERE run_id = :id", id=run_id)
    return dict(row)


def attempt_dropped(log: str, run_id: int) -> bool:
    """Whether a worker's log shows it gave the run up, and the task doing so ended after."""
    dropped = re.search(
        rf"run {run_id}: (taken over by another worker|lease lost)|run {run_id} failed", log
    )
    return bool(dropped and re.search(r"Task \S+ (succeeded in|raised)", log[dropped.end() :]))


def wait_until_ended(client: httpx.Client, path: str, timeout: float) -> dict[str, Any]:
    """A run or sweep read through `client` once it reached a final status."""
    final = ("succeeded", "completed", "failed", "cancelled")

    def ended() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(path).json()
        return body if body["status"] in final else None

    return wait_for(f"{path} to end", ended, timeout, 0.3)


def metric_value(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, flags=re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


@pytest.mark.timeout(420)
def test_comparisons_runs_and_sweeps_across_hosts_and_a_worker_host_cut_off(
    deployment: Deployment,
) -> None:
    network = deployment.network
    headers = {"Authorization": f"Bearer {deployment.key}"}
    rows = comparisons()
    with network.inside("client"):
        api = {
            host: httpx.Client(base_url=deployment.url(host), headers=headers, timeout=60)
            for host in API_HOSTS
        }
        database = deployment.database()
        try:
            # Comparisons in through both API hosts, alternating batches.
            for number, start in enumerate(range(0, len(rows), 2_500)):
                sent = api[API_HOSTS[number % 2]].post(
                    "/api/v1/comparisons/bulk", json=rows[start : start + 2_500]
                )
                assert sent.status_code == 200, sent.text
            for host in API_HOSTS:
                total = api[host].get("/api/v1/comparisons", params={"limit": 1}).json()
                assert total["total"] == len(rows), host

            # A sweep, trained across both worker hosts.
            submitted = api["api2"].post("/api/v1/sweeps", json=SWEEP)
            assert submitted.status_code == 202, submitted.text
            sweep_id = submitted.json()["id"]
            sweep = wait_until_ended(api["api1"], f"/api/v1/sweeps/{sweep_id}", 150)
            assert sweep["status"] == "completed", sweep
            evaluations = query(
                database,
                "SELECT status, attempt, worker FROM sweep_evaluations WHERE sweep_id = :sweep",
                sweep=sweep_id,
            )
            assert len(evaluations) == 6
            assert {(row["status"], row["attempt"]) for row in evaluations} == {("succeeded", 1)}
            assert {host_of(row["worker"]) for row in evaluations} == set(WORKER_HOSTS)

            # A run: started through one API, cut off on its worker host mid-run.
            created = api["api1"].post("/api/v1/training-runs", json=RUN)
            assert created.status_code == 202, created.text
            run_id = created.json()["id"]
            epochs = RUN["config"]["epochs"]

            def checkpointed() -> dict[str, Any] | None:
                row = run_row(database, run_id)
                saved = query(
                    database, "SELECT 1 FROM model_states WHERE run_id = :run", run=run_id
                )
                if not (row["status"] == "running" and saved and row["epoch"] >= epochs // 5):
                    return None
                return criterion_row(database, run_id)

            # The criterion's lease names the worker training it (the run's names the one
            # that listed its criteria, which need not be the same).
            first = wait_for("the run to train a fifth of its epochs", checkpointed, 120, 0.1)
            assert first["status"] == "running" and first["attempt"] == 1
            cut_host = host_of(first["lease_owner"])
            assert cut_host in WORKER_HOSTS, first["lease_owner"]
            (other_host,) = set(WORKER_HOSTS) - {cut_host}
            network.cut(cut_host)
            cut_at = run_row(database, run_id)
            print(f"{cut_host} cut off at epoch {cut_at['epoch']} of {epochs}")
            assert cut_at["epoch"] < epochs * 0.6, "the run was nearly done; use more epochs"

            taken = wait_for(
                f"{other_host} to take the criterion over",
                lambda: (row := criterion_row(database, run_id))["attempt"] == 2 and row,
                60,
                0.2,
            )
            assert host_of(taken["lease_owner"]) == other_host
            done = wait_until_ended(api["api2"], f"/api/v1/training-runs/{run_id}", 150)
            assert done["status"] == "succeeded", done["error"]
            assert done["epoch"] == epochs
            (progress,) = done["criteria_progress"]
            assert (progress["status"], progress["attempt"]) == ("trained", 2)
            assert host_of(progress["worker"]) == other_host
            finished = run_row(database, run_id), criterion_row(database, run_id)

            def published() -> dict[str, Any]:
                (row,) = query(
                    database,
                    "SELECT p.run_id, p.published_at,"
                    " (SELECT count(*) FROM global_scores WHERE run_id = :run) AS scores,"
                    " (SELECT count(*) FROM model_states WHERE run_id = :run) AS states"
                    " FROM published_runs p JOIN criteria c ON c.id = p.criterion_id"
                    " WHERE c.name = :criterion",
                    run=run_id,
                    criterion=CRITERION,
                )
                return dict(row)

            # The final state alone: the publication deleted the checkpoints, except one the
            # cut-off worker's open transaction may still lock (it skips it rather than wait),
            # which run recovery deletes once the server has dropped that connection (≤ 20 s).
            before = wait_for(
                "the checkpoints to be deleted",
                lambda: (row := published())["states"] == 1 and row,
                60,
                0.5,
            )
            videos = {row[side] for row in rows for side in ("video_a", "video_b")}
            assert before["run_id"] == run_id and before["scores"] == len(videos)

            # The link returns: the cut-off host finds the run is no longer its own.
            network.restore(cut_host)
            wait_for(
                f"{cut_host} to drop its attempt",
                lambda: attempt_dropped(deployment.processes.log(cut_host), run_id),
                120,
                0.5,
            )

            # Nothing written twice: the run, its metrics, states, scores and pointer.
            assert (run_row(database, run_id), criterion_row(database, run_id)) == finished
            assert published() == before
            per_epoch = query(
                database,
                "SELECT epoch, count(*) AS rows, min(attempt) AS attempt FROM training_metrics"
                " WHERE run_id = :run AND name = 'fit' GROUP BY epoch ORDER BY epoch",
                run=run_id,
            )
            assert [row["epoch"] for row in per_epoch] == list(range(1, epochs + 1))
            assert all(row["rows"] == 1 for row in per_epoch)
            # Epochs up to the checkpoint it resumed from are the first attempt's, the rest the
            # second's: the other host resumed rather than started over.
            attempts = [row["attempt"] for row in per_epoch]
            assert attempts[0] == 1 and attempts[-1] == 2 and attempts == sorted(attempts)
            assert not query(
                database, "SELECT id FROM training_runs WHERE status IN ('queued', 'running')"
            )
            succeeded = re.compile(rf"run {run_id}: succeeded")
            assert succeeded.search(deployment.processes.log(other_host))
            assert not succeeded.search(deployment.processes.log(cut_host))
            # Both API hosts serve the one publication and count one reclaim.
            pages = [
                api[host].get("/api/v1/scores", params={"criterion": CRITERION, "limit": 1000})
                for host in API_HOSTS
            ]
            assert all(page.status_code == 200 for page in pages)
            assert pages[0].json() == pages[1].json()
            assert len(pages[0].json()["items"]) == len(videos)
            for host in API_HOSTS:
                scraped = httpx.get(f"{deployment.url(host)}/metrics").text
                assert metric_value(scraped, "licchavi_run_reclaims_total") == 1
                assert metric_value(scraped, "licchavi_running_runs_with_expired_lease") == 0
            # The cut-off host's worker lived through it.
            assert all(worker.poll() is None for worker in deployment.workers.values())
        finally:
            for host in WORKER_HOSTS:  # a failure while one was cut must not outlive this test
                network.restore(host)
            for client in api.values():
                client.close()
            database.dispose()


# Holds a row lock in an open transaction, as a worker does between its lease renewal and the
# commit, and says so.
LOCK_HOLDER = """
import sys, time
import sqlalchemy as sa
connection = sa.create_engine(sys.argv[1]).connect()
connection.begin()
connection.execute(sa.text("UPDATE lock_probe SET value = value + 1 WHERE id = 1"))
print("locked", flush=True)
time.sleep(600)
"""


@pytest.mark.timeout(420)
def test_a_transaction_left_open_by_a_cut_off_host_releases_its_locks_within_20_s(
    deployment: Deployment,
) -> None:
    """With compose's PostgreSQL settings, the database host ends the session of a host cut off
    mid-transaction, so another host can write the row it had locked (with the kernel's
    defaults the lock stayed held past 120 s)."""
    network = deployment.network
    with network.inside("client"):
        admin = deployment.database("postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(sa.text("CREATE TABLE lock_probe (id int PRIMARY KEY, value int)"))
            connection.execute(sa.text("INSERT INTO lock_probe VALUES (1, 0)"))
    url = f"postgresql+psycopg://licchavi:licchavi@{network.address('db')}:5432/postgres"
    deployment.processes.start(
        "worker2", "lock-holder", [sys.executable, "-c", LOCK_HOLDER, url], deployment.env
    )
    wait_for("the lock", lambda: "locked" in deployment.processes.log("lock-holder"), 60)
    network.cut("worker2")
    try:
        with network.inside("client"), admin.connect() as connection:
            connection.execute(sa.text("SET lock_timeout = '60s'"))
            started = time.monotonic()
            connection.execute(sa.text("UPDATE lock_probe SET value = value + 10 WHERE id = 1"))
            waited = time.monotonic() - started
            value = connection.execute(sa.text("SELECT value FROM lock_probe")).scalar()
    finally:
        network.restore("worker2")
        admin.dispose()
    print(f"the cut-off host's lock was released after {waited:.1f} s")
    # 20 s of tcp_user_timeout, and slack for a loaded machine; the cut-off update rolled back.
    assert waited < 35 and value == 10
