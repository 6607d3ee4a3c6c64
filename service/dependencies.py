"""FastAPI dependencies that hand routes the objects created at start-up."""

from __future__ import annotations

from fastapi import Request

from service.batcher import MicroBatcher
from service.errors import ServiceNotReadyError
from service.registry import BundleRegistry
from service.settings import Settings


def get_registry(request: Request) -> BundleRegistry:
    registry = getattr(request.app.state, "registry", None)
    if registry is None:
        raise ServiceNotReadyError("the service is still loading the backbone and bundles; retry shortly")
    return registry


def get_batcher(request: Request) -> MicroBatcher:
    batcher = getattr(request.app.state, "batcher", None)
    if batcher is None:
        raise ServiceNotReadyError("the service is still loading the backbone and bundles; retry shortly")
    return batcher


def get_settings(request: Request) -> Settings:
    return request.app.state.settings
