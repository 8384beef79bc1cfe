"""The embedded default: `licchavi serve` on SQLite with its embedded broker and supervised
worker trains runs, serves their scores, and refreshes them when a comparison arrives."""

import os
import subprocess
import sys

import httpx

from tests.helpers import free_port, interrupt, wait_for
from tests.workers.training_support import admin_headers, comparison, wait_for_run

FINAL = {"completed", "cancelled", "failed"}
SWEEP_YAML = """
name: demo holdout
parameters:
  w: {values: [0.5, 2]}
repeats: {seeds: [0, 1]}
evaluation: {kind: holdout, folds: 3, split_by: user}
include_baseline: false
"""


def test_serve_trains_and_refreshes_scores_on_sqlite() -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--demo"],
        env={**os.environ, "AUTO_TRAIN_DELAY_SECONDS": "0.5"},
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait_for("the API to be ready", lambda: client.get("/readyz").status_code == 200, 90)
            headers = admin_headers()  # same SQLite file: DATA_DIR is shared with the server
            # Loading the demo data changed the comparisons, which queued an auto run.
            wait_for(
                "the demo's auto run to publish",
                lambda: client.get("/api/v1/scores").json()["run_id"],
                150,
            )
            created = client.post(
                "/api/v1/training-runs", json={"solver": "converged"}, headers=headers
            )
            assert created.status_code == 202, created.text
            run = wait_for_run(client, created.json()["id"], 120)
            assert run["status"] == "succeeded", run["error"]
            # The API may serve the previous run for up to SCORES_POINTER_TTL_SECONDS.
            page = wait_for(
                "the run's scores to be served",
                lambda: (
                    (p := client.get("/api/v1/scores", params={"limit": 5}).json())["run_id"]
                    == run["id"]
                    and p
                ),
                10,
            )
            assert page["total"] == 100

            posted = client.post(
                "/api/v1/comparisons", json=comparison("late", "yt:x1", "yt:y2", 3), headers=headers
            )
            assert posted.status_code == 201
            refreshed = wait_for(
                "an auto run with the new comparison",
                lambda: client.get("/api/v1/videos/yt:y2/scores").json()["scores"],
                120,
            )
            auto = client.get(f"/api/v1/training-runs/{refreshed[0]['run_id']}").json()
            # The auto run keeps the published run's settings and warm-starts from its state.
            assert (auto["trigger"], auto["solver"], auto["n_comparisons"]) == (
                "auto",
                "converged",
                1001,
            )

            # A holdout sweep over the same comparisons runs through the supervised worker's
            # scheduler, with Optuna's study in its own SQLite file beside ours.
            submitted = client.post(
                "/api/v1/sweeps",
                content=SWEEP_YAML,
                headers={**headers, "Content-Type": "application/yaml"},
            )
            assert submitted.status_code == 202, submitted.text
            sweep_url = submitted.headers["Location"]
            sweep = wait_for(
                "the sweep to complete",
                lambda: (b := client.get(sweep_url).json())["status"] in FINAL and b,
                120,
            )
            assert sweep["status"] == "completed", sweep
            assert sweep["progress"]["evaluations"] == {"succeeded": 2 * 2 * 3}
            assert sweep["data_fingerprint"] and sweep["split_fingerprint"]
            board = client.get(f"{sweep_url}/leaderboard").json()
            assert board["metric"] == "heldout_accuracy" and board["total"] == 2
    finally:
        interrupt(server)
