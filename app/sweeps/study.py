"""Optuna for a sweep: its storage apart from ours, samplers, pruners and distributions."""

from __future__ import annotations

import importlib.util
import warnings
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from app.core.config import Settings
from app.core.db import postgres_connect_args

if TYPE_CHECKING:
    import optuna

    from ml.sweep.spec import Parameter, SweepSpec


# What the `sweeps` extra installs that a sweep imports (scikit-learn's module is sklearn).
EXTRA_MODULES = ("optuna", "cmaes", "scipy", "sklearn")


def missing_extra() -> str | None:
    """None when the `sweeps` extra is installed, else a one-line reason: a sweep needs it
    from its first scheduler pass, so a submission without it is refused, not accepted to fail."""
    missing = [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (
        f"sweeps need the 'sweeps' extra (pip install 'licchavi[sweeps]'); missing: "
        f"{', '.join(missing)}"
    )


def storage_url(settings: Settings) -> str:
    """Optuna's tables in their own place: the `optuna` schema on PostgreSQL (Optuna stamps its
    own alembic_version table, which would clash with ours), or their own SQLite file."""
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        return f"sqlite:///{(settings.data_dir / 'optuna.sqlite3').resolve()}"
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options={quote('-csearch_path=optuna')}"


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def open_storage(settings: Settings) -> optuna.storages.BaseStorage:
    import optuna

    quiet_optuna()
    url = storage_url(settings)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        settings.ensure_data_dir()
        engine_kwargs["connect_args"] = {"timeout": 30}
    else:
        engine_kwargs["pool_size"] = 2
        # A scheduler cut off mid-transaction must not hold Optuna's rows for ever either.
        engine_kwargs["connect_args"] = postgres_connect_args(url)
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def distribution(parameter: Parameter) -> optuna.distributions.BaseDistribution:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if parameter.kind != "range":
        return CategoricalDistribution(parameter.grid_values())
    assert parameter.low is not None and parameter.high is not None
    if parameter.type == "int":
        return IntDistribution(
            int(parameter.low),
            int(parameter.high),
            log=parameter.log,
            step=int(parameter.step or 1),
        )
    return FloatDistribution(parameter.low, parameter.high, log=parameter.log, step=parameter.step)


def distributions(spec: SweepSpec) -> dict[str, optuna.distributions.BaseDistribution]:
    return {name: distribution(spec.parameters[name]) for name in sorted(spec.parameters)}


def sampler(spec: SweepSpec, n_existing: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler. Reloaded onto a study that already has `n_existing` trials, a seeded
    random stream would start over and repeat its first samples, so its seed moves on by that
    count; Sobol points are indexed by trial number and keep their seed."""
    import optuna

    seed = spec.sampler_seed + (n_existing if spec.method != "sobol" else 0)
    if spec.method == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if spec.method == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if spec.method == "sobol":
        return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed)
    # grid points are enqueued one by one; random samples the rest.
    return optuna.samplers.RandomSampler(seed=seed)


def pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    import optuna

    stopping = spec.early_stopping
    if stopping.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=stopping.n_startup_trials)
    if stopping.pruner == "percentile":
        return optuna.pruners.PercentilePruner(
            stopping.percentile, n_startup_trials=stopping.n_startup_trials
        )
    if stopping.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if stopping.pruner == "hyperband":
        # Resources are a trial's evaluation units (seeds × folds), reported one by one.
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=spec.units_per_trial)
    if stopping.pruner == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(p_threshold=stopping.p_threshold)
    return optuna.pruners.NopPruner()


def study_name(sweep_id: int, spec_hash: str) -> str:
    return f"sweep-{sweep_id}-{spec_hash[:12]}"


def load_study(storage: optuna.storages.BaseStorage, name: str, spec: SweepSpec) -> optuna.Study:
    """Create the sweep's study, or load it (after a scheduler restart) with the same sampler."""
    import optuna

    study = optuna.create_study(
        storage=storage,
        study_name=name,
        sampler=sampler(spec),
        pruner=pruner(spec),
        directions=[objective.direction for objective in spec.objectives],
        load_if_exists=True,
    )
    existing = len(study.get_trials(deepcopy=False))
    if existing:
        study.sampler = sampler(spec, existing)
    return study
