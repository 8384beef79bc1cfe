"""Saved state of one criterion: scores to warm-start from, and progress to resume a run."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ml.licchavi.kernels import Array
from ml.licchavi.parameters import Parameters, Progress
from ml.licchavi.problem import Problem

STATE_FORMAT = 1
HISTORY_KEYS = ("fit", "s", "gen", "reg", "l2_norm", "grad_sp", "grad_norm", "elapsed")


@dataclass
class LicchaviState:
    """Per criterion: video ids and ρ; per user id, s, age and θ over the user's videos.

    θ is stored sparsely: theta[k] is user_ids[pair_user[k]]'s score of video_ids[pair_video[k]].
    The progress fields let a faithful run interrupted after `epoch` epochs continue exactly
    (learning rates, random generator state, previous global gradient, history so far).
    """

    criterion: str
    solver: str
    video_ids: np.ndarray
    rho: np.ndarray
    user_ids: np.ndarray
    s: np.ndarray
    age: np.ndarray
    pair_user: np.ndarray
    pair_video: np.ndarray
    theta: np.ndarray
    epoch: int = 0
    finished: bool = True
    converged: bool = False
    lr_node: float = 0.0
    lr_gen: float = 0.0
    rng_state: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))
    last_global_grad: np.ndarray = field(default_factory=lambda: np.zeros(0))
    history: list[dict[str, float]] = field(default_factory=list)
    data_fingerprint: str = ""
    config_fingerprint: str = ""

    @property
    def epochs_run(self) -> int:
        """Epochs (iterations) the run has trained: `epoch` is the position in the schedule,
        and a faithful warm start that continues the schedule begins inside it."""
        return len(self.history)

    @property
    def is_checkpoint(self) -> bool:
        """True for a snapshot taken mid-run (it can be resumed), False for a finished run."""
        return not self.finished

    # ---- serialisation (np.savez, no pickle) -----------------------------------------
    def to_bytes(self) -> bytes:
        meta = {
            "format": STATE_FORMAT,
            "criterion": self.criterion,
            "solver": self.solver,
            "epoch": self.epoch,
            "finished": self.finished,
            "converged": self.converged,
            "lr_node": self.lr_node,
            "lr_gen": self.lr_gen,
            "data_fingerprint": self.data_fingerprint,
            "config_fingerprint": self.config_fingerprint,
            "history_keys": list(HISTORY_KEYS),
        }
        history = np.array(
            [[row.get(key, np.nan) for key in HISTORY_KEYS] for row in self.history],
            dtype=np.float64,
        ).reshape(len(self.history), len(HISTORY_KEYS))
        buffer = io.BytesIO()
        np.savez(
            buffer,
            meta=np.array(json.dumps(meta)),
            video_ids=np.asarray(self.video_ids, dtype=str),
            rho=self.rho,
            user_ids=np.asarray(self.user_ids, dtype=str),
            s=self.s,
            age=self.age,
            pair_user=self.pair_user,
            pair_video=self.pair_video,
            theta=self.theta,
            rng_state=self.rng_state,
            last_global_grad=self.last_global_grad,
            history=history,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, payload: bytes) -> LicchaviState:
        with np.load(io.BytesIO(payload), allow_pickle=False) as arrays:
            meta: dict[str, Any] = json.loads(str(arrays["meta"]))
            if meta.get("format") != STATE_FORMAT:
                raise ValueError(f"state: unsupported format {meta.get('format')!r}")
            keys = meta["history_keys"]
            history = [
                {key: float(value) for key, value in zip(keys, row, strict=True)}
                for row in arrays["history"]
            ]
            return cls(
                criterion=meta["criterion"],
                solver=meta["solver"],
                video_ids=arrays["video_ids"].astype(object),
                rho=arrays["rho"],
                user_ids=arrays["user_ids"].astype(object),
                s=arrays["s"],
                age=arrays["age"],
                pair_user=arrays["pair_user"],
                pair_video=arrays["pair_video"],
                theta=arrays["theta"],
                epoch=int(meta["epoch"]),
                finished=bool(meta["finished"]),
                converged=bool(meta["converged"]),
                lr_node=float(meta["lr_node"]),
                lr_gen=float(meta["lr_gen"]),
                rng_state=arrays["rng_state"],
                last_global_grad=arrays["last_global_grad"],
                history=history,
                data_fingerprint=meta["data_fingerprint"],
                config_fingerprint=meta["config_fingerprint"],
            )


def capture_state(
    criterion: str,
    solver: str,
    video_ids: np.ndarray,
    user_ids: np.ndarray,
    problem: Problem,
    parameters: Parameters,
    progress: Progress,
    data_fingerprint: str,
    config_fingerprint: str,
) -> LicchaviState:
    """Copy the current parameters into a LicchaviState (on the host)."""
    to_numpy = problem.kernels.to_numpy
    return LicchaviState(
        criterion=criterion,
        solver=solver,
        video_ids=np.asarray(video_ids, dtype=object),
        rho=to_numpy(parameters.rho),
        user_ids=np.asarray(user_ids, dtype=object),
        s=to_numpy(parameters.s),
        age=to_numpy(parameters.age),
        pair_user=problem.pair_user_np.copy(),
        pair_video=problem.pair_video_np.copy(),
        theta=to_numpy(parameters.theta),
        epoch=progress.epoch,
        finished=progress.finished,
        converged=progress.converged,
        lr_node=progress.lr_node,
        lr_gen=progress.lr_gen,
        rng_state=(
            np.zeros(0, dtype=np.uint8)
            if progress.rng_state is None
            else np.array(progress.rng_state, dtype=np.uint8, copy=True)
        ),
        last_global_grad=(
            np.zeros(0)
            if progress.last_global_grad is None
            else to_numpy(progress.last_global_grad)
        ),
        history=[dict(row) for row in progress.history],
        data_fingerprint=data_fingerprint,
        config_fingerprint=config_fingerprint,
    )


def aligned_parameters(
    state: LicchaviState, video_ids: np.ndarray, user_ids: np.ndarray, problem: Problem
) -> Parameters:
    """Warm start ("load_and_update"): map a saved state onto new data by id.

    Known videos keep ρ and new ones start at 0; known users keep s, age and θ on the videos
    they had compared (θ = 0 on videos new to them); new users start from θ = 0, s = 1, age 0.
    """
    video_position = pd.Index(state.video_ids).get_indexer(video_ids)
    known_video = video_position >= 0
    rho = np.zeros(len(video_ids))
    rho[known_video] = state.rho[video_position[known_video]]

    user_position = pd.Index(state.user_ids).get_indexer(user_ids)
    known_user = user_position >= 0
    s = np.ones(len(user_ids))
    s[known_user] = state.s[user_position[known_user]]
    age = np.zeros(len(user_ids), dtype=np.int64)
    age[known_user] = state.age[user_position[known_user]]

    # Saved pairs expressed in the new indices; those whose user or video left are dropped.
    old_user = pd.Index(user_ids).get_indexer(state.user_ids)[state.pair_user]
    old_video = pd.Index(video_ids).get_indexer(state.video_ids)[state.pair_video]
    kept = (old_user >= 0) & (old_video >= 0)
    n_videos = len(video_ids)
    new_keys = problem.pair_user_np * n_videos + problem.pair_video_np  # sorted by construction
    old_keys = old_user[kept] * n_videos + old_video[kept]
    slot = np.searchsorted(new_keys, old_keys)
    slot = np.clip(slot, 0, max(len(new_keys) - 1, 0))
    found = new_keys[slot] == old_keys if len(new_keys) else np.zeros(0, dtype=bool)
    theta = np.zeros(len(new_keys))
    theta[slot[found]] = state.theta[kept][found]
    fresh = np.ones(len(new_keys), dtype=bool)
    fresh[slot[found]] = False

    kernels, dtype = problem.kernels, problem.dtype
    return Parameters(
        theta=kernels.array(theta, dtype),
        rho=kernels.array(rho, dtype),
        s=kernels.array(s, dtype),
        age=kernels.array(age, "int64"),
        fresh_pairs=fresh,
    )


def restored_parameters(state: LicchaviState, problem: Problem) -> Parameters:
    """Parameters of a checkpoint taken on the same data (same indices), exactly as saved."""
    kernels, dtype = problem.kernels, problem.dtype
    return Parameters(
        theta=kernels.array(np.array(state.theta, copy=True), dtype),
        rho=kernels.array(np.array(state.rho, copy=True), dtype),
        s=kernels.array(np.array(state.s, copy=True), dtype),
        age=kernels.array(np.array(state.age, copy=True), "int64"),
    )


def restored_progress(state: LicchaviState, problem: Problem) -> Progress:
    last_global_grad: Array | None = None
    if state.last_global_grad.size:
        last_global_grad = problem.kernels.array(state.last_global_grad.copy(), problem.dtype)
    return Progress(
        epoch=state.epoch,
        lr_node=state.lr_node,
        lr_gen=state.lr_gen,
        rng_state=state.rng_state.copy() if state.rng_state.size else None,
        last_global_grad=last_global_grad,
        history=[dict(row) for row in state.history],
        finished=state.finished,
        converged=state.converged,
    )
