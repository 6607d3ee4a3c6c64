"""Receive a bundle archive over HTTP and unpack it safely into a staging folder.

The archive is a tar file, optionally gzip-compressed, that contains the bundle
files either at its root or inside one top-level folder. Only regular files
with the known bundle file names are accepted, so an archive can neither
write outside its staging folder nor smuggle in links or devices.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from starlette.requests import Request

from model.bundle import LORA_CONFIG_FILE, LORA_WEIGHTS_FILE, MANIFEST_FILE, MODULE_FILE

BUNDLE_FILES = frozenset({MANIFEST_FILE, MODULE_FILE, LORA_CONFIG_FILE, LORA_WEIGHTS_FILE, "README.md"})


class ArchiveError(ValueError):
    """Raised when an uploaded archive is malformed or unsafe."""


class UploadTooLargeError(ValueError):
    def __init__(self, limit: int, size: int, declared: bool = False):
        self.limit = limit
        amount = f"Content-Length declares {size} bytes" if declared else f"more than {limit} bytes received"
        super().__init__(
            f"bundle archive is too large: {amount}, the limit is {limit} bytes; "
            "raise E4SREC_MAX_UPLOAD_BYTES or shrink the bundle"
        )


async def receive_archive(request: Request, folder: Path, limit: int) -> Path:
    """Stream the request body into a new file in ``folder``, stopping past ``limit`` bytes.

    The size is checked while streaming, so an oversized body never fills
    memory or disk; the partial file is removed before the error is raised.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise UploadTooLargeError(limit, int(declared), declared=True)

    folder.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=".upload-", suffix=".tar", dir=folder)
    path = Path(name)
    received = 0
    try:
        with os.fdopen(handle, "wb") as output:
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise UploadTooLargeError(limit, received)
                output.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if received == 0:
        path.unlink(missing_ok=True)
        raise ArchiveError("the request body is empty; send the archive made by 'e4srec bundle pack'")
    return path


def _member_file_name(member: tarfile.TarInfo) -> str | None:
    """Return the bundle file name of ``member``, None for a top-level folder entry."""
    path = PurePosixPath(member.name)
    if member.name.startswith("/") or path.is_absolute():
        raise ArchiveError(f"archive path {member.name!r} is absolute; bundle archives hold relative paths only")
    parts = [part for part in path.parts if part not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"archive path {member.name!r} escapes the bundle folder through '..'")
    if member.isdir():
        if len(parts) > 1:
            raise ArchiveError(f"archive folder {member.name!r} is nested; bundle files sit in one folder")
        return None
    if member.issym() or member.islnk():
        raise ArchiveError(f"archive entry {member.name!r} is a link; only regular files are accepted")
    if not member.isfile():
        raise ArchiveError(f"archive entry {member.name!r} is not a regular file")
    if len(parts) > 2:
        raise ArchiveError(f"archive path {member.name!r} is nested too deep; bundle files sit in one folder")
    if parts[-1] not in BUNDLE_FILES:
        raise ArchiveError(f"archive file {member.name!r} is not a bundle file; expected only {sorted(BUNDLE_FILES)}")
    return parts[-1]


def extract_archive(archive: Path, staging: Path, max_bytes: int) -> None:
    """Unpack ``archive`` into the new folder ``staging``, checking every entry first."""
    try:
        tar = tarfile.open(archive, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ArchiveError(f"the body is not a tar archive (optionally gzip-compressed): {error}") from None
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as error:
            raise ArchiveError(f"the archive is truncated or corrupt: {error}") from None

        files: dict[str, tarfile.TarInfo] = {}
        top_folders = set()
        total = 0
        for member in members:
            file_name = _member_file_name(member)
            parts = [part for part in PurePosixPath(member.name).parts if part not in ("", ".")]
            if len(parts) == 2 or (member.isdir() and parts):
                top_folders.add(parts[0])
            if file_name is None:
                continue
            if file_name in files:
                raise ArchiveError(f"archive contains {file_name} twice; pack one bundle folder per archive")
            total += member.size
            if total > max_bytes:
                raise ArchiveError(f"archive unpacks to more than {max_bytes} bytes; raise E4SREC_MAX_UPLOAD_BYTES")
            files[file_name] = member
        if len(top_folders) > 1:
            raise ArchiveError(f"archive contains several folders {sorted(top_folders)}; pack one bundle per archive")
        if MANIFEST_FILE not in files:
            raise ArchiveError(f"archive has no {MANIFEST_FILE}; pack a bundle folder with 'e4srec bundle pack'")

        staging.mkdir(parents=True)
        for file_name, member in files.items():
            source = tar.extractfile(member)
            if source is None:
                raise ArchiveError(f"archive entry {member.name!r} cannot be read")
            try:
                with source, open(staging / file_name, "wb") as target:
                    shutil.copyfileobj(source, target)
            except (tarfile.TarError, OSError, EOFError) as error:
                raise ArchiveError(f"archive entry {member.name!r} is truncated or corrupt: {error}") from None


def pack_bundle(folder: Path, output: Path) -> Path:
    """Write the bundle ``folder`` as a gzip-compressed tar archive with one top-level folder."""
    folder = Path(folder)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(output, mode="w:gz") as tar:
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.name in BUNDLE_FILES:
                tar.add(path, arcname=f"{folder.name}/{path.name}", recursive=False)
    return output
