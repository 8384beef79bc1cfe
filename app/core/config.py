"""Service settings read from the environment and `.env`, shared by the API, the CLI and workers."""

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PLACEHOLDER_SECRET = "changethis"


# The largest score bound a comparison may carry, whichever way it arrives (JSON or CSV).
SCORE_MAX_LIMIT = 1000.0


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def _is_origin(value: str) -> bool:
    """Scheme, host and an optional port within 1–65535, nothing else."""
    from urllib.parse import urlsplit

    if not re.fullmatch(r"https?://[^/\s]+", value):
        return False
    try:
        port = urlsplit(value).port
    except ValueError:  # not a number, or out of range
        return False
    return port is None or port > 0


class Settings(BaseSettings):
    """Every knob of the service. Unset database and broker URLs mean the embedded default."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    environment: Literal["local", "test", "production"] = "local"
    data_dir: Path = Field(default=Path("var"), description="Where the embedded SQLite files live.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; unset means a SQLite file in data_dir."
    )
    celery_broker_url: str | None = Field(
        default=None,
        description="Celery broker URL; unset means kombu's SQLAlchemy transport on SQLite.",
    )
    secret_key: str = Field(
        default=PLACEHOLDER_SECRET,
        description="Pepper for API key hashes; must be changed in production.",
    )
    score_max: float = Field(
        default=10.0,
        gt=0,
        le=SCORE_MAX_LIMIT,
        description="Default score bound of a comparison.",
    )
    bulk_max_rows: int = Field(
        default=10_000, ge=1, description="Rows accepted by one bulk request."
    )
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Largest request body."
    )
    page_max_limit: int = Field(
        default=1000, ge=1, description="Largest `limit` of a list endpoint."
    )
    readiness_timeout_seconds: float = Field(default=2.0, gt=0)
    operations_metrics_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        le=3600,
        description="How long one read of the operator gauges of /metrics serves every scrape.",
    )
    sqlite_busy_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description=(
            "Embedded default: how long a write waits for another process's write to end before"
            " the API answers 503 with Retry-After."
        ),
    )
    sqlite_score_batch_rows: int = Field(
        default=1_000,
        ge=1,
        description=(
            "Embedded default: score rows a run writes, or pruning deletes, per transaction; each"
            " holds SQLite's write lock, so API writes wait at most one batch."
        ),
    )
    task_soft_time_limit_seconds: int = Field(default=6 * 3600, ge=1)
    task_time_limit_seconds: int = Field(default=6 * 3600 + 300, ge=1)
    log_level: LogLevel = Field(default="INFO", description="Least severe level logged (any case).")
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="`json`: one JSON object per log line, with the request id of the work.",
    )
    worker_metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of a worker's own Prometheus metrics (0: not served).",
    )
    worker_metrics_host: str = Field(
        default="127.0.0.1", description="Address the worker's metrics port listens on."
    )
    worker_heartbeat_interval_seconds: float = Field(
        default=10.0, gt=0, description="How often each worker process records that it lives."
    )
    worker_heartbeat_retention_seconds: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="A worker silent this long (killed, its host gone) is forgotten.",
    )
    auto_train_enabled: bool = Field(
        default=True, description="Schedule a warm-started run when comparisons change."
    )
    auto_train_delay_seconds: float = Field(
        default=2.0, ge=0, description="Debounce: an auto run starts this long after a change."
    )
    auto_train_spacing_factor: float = Field(
        default=3.0,
        ge=0,
        description="An auto run starts at least this many times the criterion's last auto run's"
        " training time after a change (at most 10 s), so that back-to-back runs leave the API"
        " most of the CPU; 0: only the debounce.",
    )
    run_lease_seconds: float = Field(
        default=60.0, gt=0, description="A running run whose lease is this old is taken over."
    )
    run_progress_interval_seconds: float = Field(
        default=2.0, gt=0, description="How often a training run writes progress and metrics."
    )
    run_checkpoint_every_epochs: int = Field(
        default=10, ge=1, description="Epochs between two checkpoints of a training run."
    )
    run_checkpoint_every_seconds: float = Field(
        default=30.0,
        ge=0,
        description="And at least this long between two checkpoints (a big state costs seconds).",
    )
    broker_reconnect_interval_seconds: float = Field(
        default=1.0,
        gt=0,
        le=10,
        description="While the broker is unreachable, a worker tries to reconnect this often.",
    )
    run_recovery_interval_seconds: float = Field(
        default=10.0,
        gt=0,
        # The old name still works: deployments set it before the loop was renamed.
        validation_alias=AliasChoices(
            "run_recovery_interval_seconds", "run_sweep_interval_seconds"
        ),
        description="How often a worker looks for stalled or unsent runs.",
    )
    run_resend_after_seconds: float = Field(
        default=30.0, gt=0, description="A queued run not started this long is sent again."
    )
    wakeup_max_pending: int = Field(
        default=4,
        ge=1,
        description=(
            "Undelivered wake-ups allowed in the broker queue; a woken worker claims the next"
            " work from the database and wakes a peer while more is left."
        ),
    )
    score_runs_kept: int = Field(
        default=20, ge=1, description="Succeeded runs whose scores are kept besides published ones."
    )
    scores_pointer_ttl_seconds: float = Field(
        default=1.0,
        ge=0,
        description=(
            "How long an API process serves a published run before re-reading the pointer in the"
            " background; one older than twice this is re-read before answering."
        ),
    )
    sweep_lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A sweep evaluation whose worker is silent this long is redone.",
    )
    sweep_heartbeat_seconds: float = Field(
        default=2.0, gt=0, description="How often a sweep evaluation renews its lease."
    )
    sweep_max_attempts: int = Field(
        default=3, ge=1, description="Lost workers tolerated per evaluation before it fails."
    )
    sweep_scheduler_interval_seconds: float = Field(
        default=0.5, gt=0, description="Pause between two passes of the sweep scheduler."
    )
    sweep_scheduler_lease_seconds: float = Field(
        default=20.0, gt=0, description="Another worker takes over scheduling after this long."
    )
    sweep_resend_after_seconds: float = Field(
        default=30.0, gt=0, description="A queued evaluation not claimed this long is sent again."
    )
    sweep_log_max_bytes: int = Field(
        default=64 * 1024, ge=1024, description="Captured log kept per sweep evaluation."
    )
    jwt_secret: str | None = Field(
        default=None, description="HS256 secret of the identity provider's bearer tokens."
    )
    jwt_jwks: str | None = Field(
        default=None,
        description="RS256/ES256 key set (JWKS) of the identity provider: a file path or a URL.",
    )
    jwt_issuer: str | None = Field(
        default=None, description="The `iss` a bearer token must carry (needed with JWT on)."
    )
    jwt_audience: str | None = Field(
        default=None, description="The `aud` a bearer token must carry (needed with JWT on)."
    )
    jwt_user_claim: str = Field(
        default="sub", min_length=1, description="The token claim holding the user id."
    )
    jwt_leeway_seconds: float = Field(
        default=10.0, ge=0, le=300, description="Clock skew allowed on `exp`, `nbf` and `iat`."
    )
    jwt_grantable_scopes: str = Field(
        default="comparisons:write scores:read_local",
        description="Space-separated scopes a token's `scope` claim may grant; others are ignored.",
    )
    jwt_default_scopes: str = Field(
        default="comparisons:write scores:read_local",
        description="Space-separated scopes of a token without a `scope` claim.",
    )
    jwt_jwks_cache_seconds: float = Field(
        default=300.0, gt=0, description="How long a fetched key set is used before re-fetching."
    )
    jwt_jwks_refetch_seconds: float = Field(
        default=30.0,
        ge=0,
        description="Least time between two fetches of the key set (an unknown `kid` re-fetches).",
    )
    code_version: str | None = Field(
        default=None, description="Recorded on every run; defaults to the package version."
    )
    cors_allow_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Origins whose pages may call the API (comma-separated); empty turns CORS off. `*`"
            " lets any origin make anonymous GET/HEAD requests; credentials and writes need the"
            " origin listed."
        ),
    )
    rate_limit_enabled: bool = Field(
        default=False, description="Apply the RATE_LIMIT_* limits (a public frontend's abuse cap)."
    )
    rate_limit_writes: str = Field(
        default="600/minute",
        description="Writes (POST, PUT, PATCH, DELETE) per credential and per user.",
    )
    rate_limit_expensive: str = Field(
        default="60/minute",
        description="Expensive requests (bulk writes, plots, exports…) per credential and user.",
    )
    rate_limit_anonymous_expensive: str = Field(
        default="30/minute",
        description="Expensive reads without a credential, per client address.",
    )
    rate_limit_storage_url: str | None = Field(
        default=None,
        description=(
            "`limits` storage URI of the counters; unset means the Celery broker's Redis, or"
            " process memory on the embedded default."
        ),
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        # Refused here, at start-up, rather than by the first request (a 500) or a command's
        # "is it migrated?" hint. The message names the scheme only: the URL may hold a password.
        if value is None:
            return value
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            backend = make_url(value).get_backend_name()
        except ArgumentError:
            raise ValueError("not a SQLAlchemy URL like postgresql+psycopg://host/db") from None
        if backend not in ("postgresql", "sqlite"):
            raise ValueError(f"PostgreSQL or SQLite only, not {backend!r}")
        return value

    @field_validator("celery_broker_url")
    @classmethod
    def _broker_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z][a-z0-9+.-]*://.*", value):
            raise ValueError("not a broker URL like redis://host:6379/0")
        return value

    @field_validator("rate_limit_storage_url")
    @classmethod
    def _limits_storage(cls, value: str | None) -> str | None:
        from limits.storage import SCHEMES

        scheme = (value or "").split("://", 1)[0]
        if value is not None and ("://" not in value or scheme not in SCHEMES):
            raise ValueError(f"not a `limits` storage URI like redis://host:6379/1: {scheme!r}")
        return value

    @model_validator(mode="after")
    def _renewals_within_their_leases(self) -> "Settings":
        # A lease renewed less often than it lasts expires between renewals: every run or
        # evaluation would be taken over while its worker is alive. Celery's soft limit must
        # come first, or the hard kill leaves no time to hand a run off.
        for every, lease in (
            ("run_progress_interval_seconds", "run_lease_seconds"),
            ("sweep_heartbeat_seconds", "sweep_lease_seconds"),
            ("task_soft_time_limit_seconds", "task_time_limit_seconds"),
        ):
            if getattr(self, every) >= getattr(self, lease):
                raise ValueError(f"{every.upper()} must be below {lease.upper()}")
        return self

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        # A comma-separated list reads better in an environment variable than JSON.
        if isinstance(value, str):
            value = [origin.strip().rstrip("/") for origin in value.split(",") if origin.strip()]
        if isinstance(value, list):
            # An origin is what a browser sends in `Origin`: scheme, host and port, no path; an
            # entry of another form would never match, silently.
            bad = [o for o in value if o != "*" and not _is_origin(o)]
            if bad:
                raise ValueError(f"not origins like https://app.example.org or *: {bad}")
        return value

    @field_validator("rate_limit_writes", "rate_limit_expensive", "rate_limit_anonymous_expensive")
    @classmethod
    def _valid_rate(cls, value: str) -> str:
        from limits import parse_many

        try:
            parse_many(value)
        except ValueError as exc:
            raise ValueError(f"not a rate limit like '600/minute': {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _refuse_placeholder_secret_in_production(self) -> "Settings":
        if self.environment == "production" and self.secret_key == PLACEHOLDER_SECRET:
            raise ValueError("SECRET_KEY must be set to a real secret when ENVIRONMENT=production")
        return self

    @model_validator(mode="after")
    def _jwt_needs_issuer_and_audience(self) -> "Settings":
        # A token minted for another service of the same provider must not be accepted here.
        if (self.jwt_secret or self.jwt_jwks) and not (self.jwt_issuer and self.jwt_audience):
            raise ValueError("JWT_ISSUER and JWT_AUDIENCE must be set with JWT_SECRET or JWT_JWKS")
        return self

    @property
    def jwt_enabled(self) -> bool:
        return bool(self.jwt_secret or self.jwt_jwks)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'licchavi.sqlite3').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        if self.celery_broker_url:
            return self.celery_broker_url
        return f"sqla+sqlite:///{(self.data_dir / 'broker.sqlite3').resolve()}"

    @property
    def is_embedded(self) -> bool:
        """True when the broker is the embedded SQLite transport (no Redis needed)."""
        return self.resolved_broker_url.startswith("sqla+")

    def ensure_data_dir(self) -> None:
        if self.database_url is None or self.celery_broker_url is None:
            self.data_dir.mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once on first use (never at import time)."""
    return Settings()
