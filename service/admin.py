"""Admin routes: install, replace and delete bundles at run time.

They require ``Authorization: Bearer <token>`` with the token from
``E4SREC_ADMIN_TOKEN``; without a configured token they are disabled.
"""

from __future__ import annotations

import hmac
import logging
import shutil
import uuid

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from model.bundle import BundleError, validate_bundle_name
from service.dependencies import get_registry
from service.registry import BundleRegistry, CapacityError
from service.schemas import AdapterDetail, DeletedAdapter
from service.settings import Settings
from service.uploads import ArchiveError, UploadTooLargeError, extract_archive, receive_archive

logger = logging.getLogger(__name__)

router = APIRouter()


def require_admin(request: Request) -> None:
    settings: Settings = request.app.state.settings
    if settings.admin_token is None:
        raise HTTPException(
            status_code=403,
            detail="admin routes are disabled; set E4SREC_ADMIN_TOKEN to a secret and send it as "
            "'Authorization: Bearer <token>'",
        )
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    expected = settings.admin_token.get_secret_value()
    if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode(), expected.encode()):
        raise HTTPException(
            status_code=401,
            detail="missing or wrong admin token; send 'Authorization: Bearer <token>' with E4SREC_ADMIN_TOKEN",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _without_folder(message: str, staging) -> str:
    """Drop the server's staging path from a message: it means nothing to the client."""
    return message.replace(f"{staging}/", "").replace(f" from {staging}", " from the archive").replace(str(staging), "the archive")


def _reject(request: Request, name: str, status: int, reason: str, message: str) -> JSONResponse:
    request.app.state.metrics.bundle_uploads.labels(result="rejected", reason=reason).inc()
    logger.warning("rejected upload of bundle %s: %s", name, message)
    return JSONResponse(status_code=status, content={"detail": message})


@router.put(
    "/adapters/{name}",
    response_model=AdapterDetail,
    dependencies=[Depends(require_admin)],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
            "description": "bundle archive made by 'e4srec bundle pack' (tar, optionally gzip-compressed)",
        }
    },
    responses={
        401: {"description": "missing or wrong token"},
        403: {"description": "admin routes disabled"},
        413: {"description": "archive above E4SREC_MAX_UPLOAD_BYTES"},
        422: {"description": "invalid archive or bundle; nothing changed"},
    },
)
async def put_adapter(name: str, request: Request, registry: BundleRegistry = Depends(get_registry)):
    """Install a bundle archive as the new serving version of ``name``.

    The archive is validated completely (paths, manifest, tensor shapes and
    values, backbone fingerprint, a dry-run forward pass) before the bundle
    becomes visible. On any error the previous version keeps serving.
    """
    settings: Settings = request.app.state.settings
    try:
        validate_bundle_name(name)
    except BundleError as error:
        return _reject(request, name, 422, "name", str(error))

    upload_dir = registry.adapters_dir
    try:
        archive = await receive_archive(request, upload_dir, settings.max_upload_bytes)
    except UploadTooLargeError as error:
        return _reject(request, name, 413, "too_large", str(error))
    except ArchiveError as error:
        return _reject(request, name, 422, "archive", str(error))

    staging = upload_dir / f".staging-{uuid.uuid4().hex}"
    try:
        async with request.app.state.install_locks[name]:
            try:
                await run_in_threadpool(extract_archive, archive, staging, settings.max_upload_bytes)
                served = await run_in_threadpool(registry.install, staging, name)
            except ArchiveError as error:
                return _reject(request, name, 422, "archive", _without_folder(str(error), staging))
            except BundleError as error:
                return _reject(request, name, 422, "bundle", _without_folder(str(error), staging))
            except CapacityError as error:
                return _reject(request, name, 409, "capacity", str(error))
    finally:
        archive.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)

    request.app.state.metrics.bundle_uploads.labels(result="installed", reason="").inc()
    if request.app.state.bundle_events is not None:
        await request.app.state.bundle_events.publish("installed", name, served.version)
    return AdapterDetail.describe(registry.installed(name), served)


@router.delete(
    "/adapters/{name}",
    response_model=DeletedAdapter,
    dependencies=[Depends(require_admin)],
    responses={401: {"description": "missing or wrong token"}, 403: {"description": "admin routes disabled"}, 404: {"description": "not installed"}},
)
async def delete_adapter(name: str, request: Request, registry: BundleRegistry = Depends(get_registry)) -> DeletedAdapter:
    """Uninstall a bundle: it stops serving now and its folder is removed."""
    async with request.app.state.install_locks[name]:
        entry = await run_in_threadpool(registry.delete, name)
    if request.app.state.bundle_events is not None:
        await request.app.state.bundle_events.publish("deleted", name, entry.manifest.version)
    return DeletedAdapter(name=name, version=entry.manifest.version, deleted=True)
