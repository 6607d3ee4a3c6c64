"""The FastAPI application: one backbone, many bundles, full-ranking recommendations."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from contextlib import asynccontextmanager

import torch
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from model.backbone import BackboneSettings, load_backbone
from model.bundle import BundleError
from service.admin import router as admin_router
from service.batcher import MicroBatcher, QueueFullError
from service.bundle_events import BundleEvents
from service.dependencies import get_batcher, get_registry, get_settings
from service.errors import FieldError, install_error_handlers
from service.histories import InMemoryHistories, RedisHistories
from service.metrics import ServiceMetrics
from service.ranking import plan_ranking
from service.redis_connection import StateUnavailableError, connect, safe_url
from service.registry import BundleRegistry, CapacityError
from service.response_cache import InMemoryResponseCache, RedisResponseCache, cache_key
from service.schemas import (
    AdapterDetail,
    AdapterList,
    AdapterSummary,
    HealthStatus,
    ReadyStatus,
    RecommendRequest,
    RecommendResponse,
    ScoredItem,
)
from service.settings import Settings
from service.users import router as users_router

logger = logging.getLogger(__name__)


def _load_registry(settings: Settings, metrics: ServiceMetrics) -> BundleRegistry:
    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    backbone = load_backbone(
        BackboneSettings(source=settings.backbone, device=settings.device, dtype=settings.dtype, cache_dir=settings.cache_dir)
    )
    registry = BundleRegistry(
        backbone,
        settings.adapters_dir,
        metrics,
        prefix_cache=settings.prefix_cache,
        max_resident=settings.max_resident_bundles,
        max_resident_bytes=settings.max_resident_bytes,
        pinned=settings.pinned,
    )
    loaded = registry.scan()
    logger.info("service ready: backbone %s, bundles %s", backbone.name, ", ".join(loaded) or "none")
    return registry


def _check_request_size(body: RecommendRequest, settings: Settings) -> None:
    if body.history is not None and len(body.history) > settings.max_request_history:
        raise FieldError(
            ["history"],
            f"history has {len(body.history)} items, above the limit of {settings.max_request_history}; "
            "send only the most recent items (the model uses at most the bundle's max_history_length)",
            f"{len(body.history)} items",
            "too_long",
            {"max_length": settings.max_request_history},
        )
    if len(body.exclude) > settings.max_request_exclude:
        raise FieldError(
            ["exclude"],
            f"exclude has {len(body.exclude)} items, above the limit of {settings.max_request_exclude}",
            f"{len(body.exclude)} items",
            "too_long",
            {"max_length": settings.max_request_exclude},
        )


async def _queue_full(request: Request, error: QueueFullError) -> JSONResponse:
    return JSONResponse(status_code=503, content={"detail": str(error)}, headers={"Retry-After": str(error.retry_after_s)})


async def _state_unavailable(request: Request, error: StateUnavailableError) -> JSONResponse:
    request.app.state.metrics.redis_errors.labels(operation="stored_state").inc()
    return JSONResponse(status_code=503, content={"detail": str(error)}, headers={"Retry-After": "5"})


async def _bundle_unavailable(request: Request, error: Exception) -> JSONResponse:
    # Raised when an installed but evicted bundle cannot be loaded again:
    # no room (every resident bundle pinned) or its files became invalid.
    logger.error("could not load a bundle for %s %s: %s", request.method, request.url.path, error)
    return JSONResponse(status_code=503, content={"detail": f"the bundle cannot be loaded now: {error}"}, headers={"Retry-After": "5"})


def _attach_state(app: FastAPI, settings: Settings, metrics: ServiceMetrics, registry: BundleRegistry) -> None:
    """Histories, response cache and bundle events: in Redis when configured, else in process."""
    if settings.redis_url is None:
        app.state.redis = None
        app.state.histories = InMemoryHistories(settings.stored_history_length)
        app.state.response_cache = InMemoryResponseCache(settings.response_cache_ttl_s, metrics)
        app.state.bundle_events = None
        return
    client = connect(settings.redis_url, settings.redis_timeout_s)
    app.state.redis = client
    app.state.histories = RedisHistories(client, settings.stored_history_length)
    app.state.response_cache = RedisResponseCache(client, settings.response_cache_ttl_s, metrics)
    app.state.bundle_events = BundleEvents(client, registry, metrics)
    app.state.bundle_events.start()
    logger.info("shared state in Redis at %s", safe_url(settings.redis_url))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        started = time.monotonic()
        registry = await run_in_threadpool(_load_registry, settings, metrics)
        batcher = MicroBatcher(
            registry, metrics,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_wait_ms / 1000.0,
            max_queue=settings.max_queue,
            mixed_batches=settings.mixed_batches,
        )
        batcher.start()
        _attach_state(app, settings, metrics, registry)
        app.state.registry = registry
        app.state.batcher = batcher
        logger.info("startup took %.1f s", time.monotonic() - started)
        yield
        logger.info("service stopping")
        if app.state.bundle_events is not None:
            await app.state.bundle_events.stop()
        if app.state.redis is not None:
            await app.state.redis.aclose()
        await batcher.stop()

    app = FastAPI(
        title="E4SRec recommendation service",
        description="Ranks a catalogue by item ID with a frozen LLM and hot-swappable adapter bundles (E4SRec).",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = None
    app.state.batcher = None
    app.state.install_locks = collections.defaultdict(asyncio.Lock)
    install_error_handlers(app)
    app.add_exception_handler(QueueFullError, _queue_full)
    app.add_exception_handler(StateUnavailableError, _state_unavailable)
    app.add_exception_handler(CapacityError, _bundle_unavailable)
    app.add_exception_handler(BundleError, _bundle_unavailable)

    @app.middleware("http")
    async def limit_request_size(request: Request, call_next):
        # Bundle uploads stream with their own limit; every other body is JSON.
        declared = request.headers.get("content-length", "")
        is_upload = request.method == "PUT" and request.url.path.startswith("/adapters/")
        if not is_upload and declared.isdigit() and int(declared) > settings.max_request_bytes:
            metrics.rejected_requests.labels(reason="body_too_large").inc()
            return JSONResponse(
                status_code=413,
                content={"detail": f"request body of {declared} bytes is above the limit of {settings.max_request_bytes} "
                                   "bytes; send fewer items or raise E4SREC_MAX_REQUEST_BYTES"},
            )
        return await call_next(request)

    @app.middleware("http")
    async def record_request(request: Request, call_next):
        started = time.monotonic()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            # An unhandled exception reaches the error handler outside this
            # middleware, so it is counted here as the 500 it becomes.
            route = request.scope.get("route")
            template = route.path if route is not None else "unmatched"
            metrics.http_requests.labels(route=template, method=request.method, status=str(status)).inc()
            metrics.http_request_duration.labels(route=template, method=request.method).observe(time.monotonic() - started)

    @app.post(
        "/recommend",
        response_model=RecommendResponse,
        responses={
            404: {"description": "bundle not installed"},
            422: {"description": "invalid field"},
            503: {"description": "queue full or still loading; see Retry-After"},
        },
    )
    async def post_recommend(
        body: RecommendRequest,
        registry: BundleRegistry = Depends(get_registry),
        batcher: MicroBatcher = Depends(get_batcher),
        settings: Settings = Depends(get_settings),
    ) -> Response:
        """Rank every item of the bundle's catalogue for one history and return the top k."""
        _check_request_size(body, settings)
        if registry.is_resident(body.bundle):
            served = registry.acquire(body.bundle)
        else:
            # Loading an evicted bundle reads files and runs a forward pass.
            served = await run_in_threadpool(registry.acquire, body.bundle)
        try:
            history = body.history
            if history is None:
                history = await app.state.histories.get(body.bundle, body.user_id)
                if not history:
                    raise HTTPException(
                        status_code=404,
                        detail=f"user {body.user_id!r} has no stored history for bundle {body.bundle!r}; "
                        f"POST /users/{body.user_id}/events first, or send the history itself",
                    )
            plan = plan_ranking(body, served, history)

            cache = app.state.response_cache if settings.response_cache_ttl_s > 0 else None
            key = cache_key(served.name, served.version, history, body.k, body.exclude_seen, body.exclude)
            if cache is not None:
                cached = await cache.get(key)
                if cached is not None:
                    return Response(content=cached, media_type="application/json", headers={"X-Cache": "hit"})

            ranked = await batcher.submit(plan)
        finally:
            registry.release(served)
        response = RecommendResponse(
            bundle=served.name,
            version=served.version,
            items=[ScoredItem(item_id=item, score=score) for item, score in zip(ranked.item_ids, ranked.scores, strict=True)],
            history_length=len(history),
            used_history_length=len(plan.model_history),
            truncated=plan.truncated,
        )
        content = response.model_dump_json().encode()
        if cache is not None:
            await cache.set(key, content)
        return Response(content=content, media_type="application/json", headers={"X-Cache": "miss" if cache else "off"})

    @app.get("/adapters", response_model=AdapterList)
    def get_adapters(registry: BundleRegistry = Depends(get_registry)) -> AdapterList:
        """List installed bundles with the key fields of their manifests and their load state."""
        resident = {served.name: served for served in registry.resident()}
        summaries = []
        for name in registry.installed_names():
            manifest = registry.installed(name).manifest
            summaries.append(
                AdapterSummary(
                    name=manifest.name,
                    resident=name in resident,
                    pinned=name in registry.pinned,
                    version=manifest.version,
                    num_items=manifest.model.num_items,
                    id_dim=manifest.model.id_dim,
                    max_history_length=manifest.model.max_history_length,
                    head=manifest.model.head,
                    lora_r=manifest.model.lora.r,
                    backbone=manifest.backbone,
                    metrics=manifest.metrics,
                    created_at=manifest.created_at,
                )
            )
        return AdapterList(adapters=summaries)

    @app.get("/adapters/{name}", response_model=AdapterDetail, responses={404: {"description": "not installed"}})
    def get_adapter(name: str, registry: BundleRegistry = Depends(get_registry)) -> AdapterDetail:
        """Return one installed bundle's whole manifest and load state."""
        installed = registry.installed(name)
        served = next((served for served in registry.resident() if served.name == name), None)
        return AdapterDetail.describe(installed, served)

    app.include_router(admin_router)
    app.include_router(users_router)

    @app.get("/metrics", response_class=Response)
    def get_metrics() -> Response:
        """Prometheus metrics in the text exposition format."""
        batcher = app.state.batcher
        if batcher is not None:
            metrics.queue_depth.set(batcher.depth)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", response_model=HealthStatus)
    def healthz() -> HealthStatus:
        """Report liveness: the process is up and serving HTTP."""
        return HealthStatus(status="ok")

    @app.get("/readyz", response_model=ReadyStatus, responses={503: {"model": ReadyStatus}})
    def readyz(request: Request):
        """Readiness: the backbone is loaded and the bundle repository was scanned."""
        registry: BundleRegistry | None = request.app.state.registry
        if registry is None:
            return JSONResponse(status_code=503, content=ReadyStatus(status="loading", detail="backbone and bundles are loading").model_dump())
        return ReadyStatus(status="ready", backbone=registry.backbone.name, bundles=len(registry.installed_names()))

    return app
