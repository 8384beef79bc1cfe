"""The FastAPI application factories: `create_app`, and `serve_app` for a serving process
(`uvicorn --factory app.main:serve_app`)."""

import gc

from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.types import ASGIApp

from app.api.head_requests import HeadAsGet
from app.api.openapi import install_openapi
from app.api.rate_limits import enforce_rate_limits, install_rate_limits
from app.api.request_id import RequestId
from app.api.request_metrics import cache_route_names
from app.catalog import routes as catalog
from app.comparisons import routes as comparisons
from app.comparisons.single_write import SingleWriteFastPath
from app.core.config import get_settings
from app.core.cors import Cors
from app.core.db import get_engine
from app.core.errors import install_error_handlers
from app.core.limits import BodySizeLimit
from app.core.queues import QueueDepthCollector
from app.identity.routes import api_keys, me, users
from app.operations import routes as health
from app.operations.metrics import OperationsCollector
from app.runs import routes as runs
from app.scores import routes as scores
from app.sweeps import routes as sweeps
from app.web.docs import install_docs
from app.web.routes import install_web_app

API_PREFIX = "/api/v1"


class Application(FastAPI):
    """FastAPI with CORS (when CORS_ALLOW_ORIGINS is set) around its whole middleware stack, the
    server-error handler included, so that even a 500 problem is readable by the page; and around
    that, HEAD run as GET on every route that has GET."""

    cors_allow_origins: tuple[str, ...] = ()

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        if self.cors_allow_origins:
            stack = Cors(stack, self.cors_allow_origins)
        return HeadAsGet(stack)


def create_app() -> FastAPI:
    settings = get_settings()
    application = Application(
        title="Licchavi scoring service",
        version="0.1.0",
        description="Pairwise comparisons of videos in; Licchavi global and individual scores out.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=None,
        redoc_url=None,
        # Counts writes and expensive requests (app/api/rate_limits.py) when RATE_LIMIT_ENABLED.
        dependencies=[Depends(enforce_rate_limits)],
    )
    application.cors_allow_origins = tuple(settings.cors_allow_origins)
    application.state.rate_limits = install_rate_limits(settings)
    install_error_handlers(application)
    install_openapi(application)
    install_docs(application)
    install_web_app(application)
    application.include_router(health.router)
    application.include_router(comparisons.router, prefix=API_PREFIX)
    application.include_router(catalog.router, prefix=API_PREFIX)
    application.include_router(runs.router, prefix=API_PREFIX)
    application.include_router(scores.router, prefix=API_PREFIX)
    application.include_router(sweeps.router, prefix=API_PREFIX)
    application.include_router(sweeps.defaults_router, prefix=API_PREFIX)
    application.include_router(api_keys.router, prefix=API_PREFIX)
    application.include_router(users.router, prefix=API_PREFIX)
    application.include_router(me.router, prefix=API_PREFIX)
    # Innermost of the middleware, so the Prometheus one and the body-size limit see its requests.
    application.add_middleware(SingleWriteFastPath, path=API_PREFIX + comparisons.router.prefix)
    # A registry per application: several apps in one process (tests) must not share counters.
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(
        OperationsCollector(get_engine, cache_seconds=settings.operations_metrics_cache_seconds)
    )
    registry.register(QueueDepthCollector(cache_seconds=settings.operations_metrics_cache_seconds))
    Instrumentator(excluded_handlers=["/metrics", "/healthz"], registry=registry).instrument(
        application
    ).expose(application, include_in_schema=False)
    cache_route_names(application)
    application.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # Outermost: the id is bound before anything logs, and set on every response.
    application.add_middleware(RequestId)
    return application


def serve_app() -> FastAPI:
    """The application as `licchavi serve` runs it: built, then its start-up objects frozen."""
    application = create_app()
    # Modules, routes and schemas live as long as the process. Frozen, they are skipped by the
    # cyclic collector's full passes, which the ~100k objects of a 10,000-row bulk request trigger
    # several times over: those passes took half of the request's parsing time.
    gc.collect()
    gc.freeze()
    return application
