"""The FastAPI application: one backbone, many bundles, full-ranking recommendations."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from model.backbone import BackboneSettings, load_backbone
from service.errors import FieldError, ServiceNotReadyError, install_error_handlers
from service.recommender import recommend
from service.registry import BundleRegistry
from service.schemas import (
    AdapterList,
    AdapterSummary,
    HealthStatus,
    ReadyStatus,
    RecommendRequest,
    RecommendResponse,
)
from service.settings import Settings

logger = logging.getLogger(__name__)


def _start(app: FastAPI, settings: Settings) -> None:
    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    backbone = load_backbone(
        BackboneSettings(source=settings.backbone, device=settings.device, dtype=settings.dtype, cache_dir=settings.cache_dir)
    )
    registry = BundleRegistry(backbone, settings.adapters_dir)
    loaded = registry.load_all()
    app.state.registry = registry
    logger.info("service ready: backbone %s, bundles %s", backbone.name, ", ".join(loaded) or "none")


def get_registry(request: Request) -> BundleRegistry:
    registry = getattr(request.app.state, "registry", None)
    if registry is None:
        raise ServiceNotReadyError("the service is still loading the backbone and bundles; retry shortly")
    return registry


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def _check_request_size(body: RecommendRequest, settings: Settings) -> None:
    if len(body.history) > settings.max_request_history:
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


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        started = time.monotonic()
        await run_in_threadpool(_start, app, settings)
        logger.info("startup took %.1f s", time.monotonic() - started)
        yield
        logger.info("service stopping")

    app = FastAPI(
        title="E4SRec recommendation service",
        description="Ranks a catalogue by item ID with a frozen LLM and hot-swappable adapter bundles (E4SRec).",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.registry = None
    install_error_handlers(app)

    @app.post(
        "/recommend",
        response_model=RecommendResponse,
        responses={404: {"description": "bundle not installed"}, 422: {"description": "invalid field"}},
    )
    def post_recommend(
        body: RecommendRequest,
        registry: BundleRegistry = Depends(get_registry),
        settings: Settings = Depends(get_settings),
    ) -> RecommendResponse:
        """Rank every item of the bundle's catalogue for one history and return the top k."""
        _check_request_size(body, settings)
        return recommend(body, registry)

    @app.get("/adapters", response_model=AdapterList)
    def get_adapters(registry: BundleRegistry = Depends(get_registry)) -> AdapterList:
        """List loaded bundles with the key fields of their manifests."""
        summaries = []
        for served in registry.list():
            manifest = served.bundle.manifest
            summaries.append(
                AdapterSummary(
                    name=manifest.name,
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

    @app.get("/healthz", response_model=HealthStatus)
    def healthz() -> HealthStatus:
        """Liveness: the process answers."""
        return HealthStatus(status="ok")

    @app.get("/readyz", response_model=ReadyStatus, responses={503: {"model": ReadyStatus}})
    def readyz(request: Request):
        """Readiness: the backbone is loaded and the bundle repository was scanned."""
        registry: BundleRegistry | None = request.app.state.registry
        if registry is None:
            return JSONResponse(status_code=503, content=ReadyStatus(status="loading", detail="backbone and bundles are loading").model_dump())
        return ReadyStatus(status="ready", backbone=registry.backbone.name, bundles=len(registry.list()))

    return app
