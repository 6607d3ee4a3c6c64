"""User history routes: append events, read and delete a user's stored history."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Query, Request

from service.dependencies import get_registry
from service.ranking import check_item_ids
from service.registry import BundleRegistry
from service.schemas import USER_ID_PATTERN, DeletedHistory, EventsRequest, UserHistory

router = APIRouter()

UserIdPath = Path(..., pattern=USER_ID_PATTERN, description="caller's user ID (letters, digits, _ . : @ -)")
BundleQuery = Query(..., min_length=1, max_length=64, description="bundle whose item space the history belongs to")


@router.post("/users/{user_id}/events", response_model=UserHistory, responses={404: {"description": "bundle not installed"}, 503: {"description": "Redis unreachable"}})
async def post_events(
    body: EventsRequest,
    request: Request,
    user_id: str = UserIdPath,
    registry: BundleRegistry = Depends(get_registry),
) -> UserHistory:
    """Append item interactions, oldest first, to the user's history for one bundle."""
    manifest = registry.installed(body.bundle).manifest
    check_item_ids(body.items, "items", f"{manifest.name}@{manifest.version}", manifest.model.num_items)
    history = await request.app.state.histories.append(body.bundle, user_id, body.items)
    return UserHistory(user_id=user_id, bundle=body.bundle, history=history)


@router.get("/users/{user_id}/history", response_model=UserHistory, responses={404: {"description": "bundle not installed"}, 503: {"description": "Redis unreachable"}})
async def get_history(
    request: Request, user_id: str = UserIdPath, bundle: str = BundleQuery, registry: BundleRegistry = Depends(get_registry)
) -> UserHistory:
    """Return the user's stored history for one bundle, oldest first (empty when none is stored)."""
    registry.installed(bundle)
    history = await request.app.state.histories.get(bundle, user_id)
    return UserHistory(user_id=user_id, bundle=bundle, history=history)


@router.delete("/users/{user_id}/history", response_model=DeletedHistory, responses={404: {"description": "bundle not installed"}, 503: {"description": "Redis unreachable"}})
async def delete_history(
    request: Request, user_id: str = UserIdPath, bundle: str = BundleQuery, registry: BundleRegistry = Depends(get_registry)
) -> DeletedHistory:
    """Forget the user's stored history for one bundle."""
    registry.installed(bundle)
    deleted = await request.app.state.histories.delete(bundle, user_id)
    return DeletedHistory(user_id=user_id, bundle=bundle, deleted=deleted)
