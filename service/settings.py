"""Service settings, read from ``E4SREC_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.backbone import EMBEDDED_DEFAULT, default_cache_dir


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="E4SREC_", env_file=".env", extra="ignore")

    backbone: str = Field(EMBEDDED_DEFAULT, description="'smollm2', a Hugging Face model folder, or a .gguf file")
    device: str = Field("auto", description="torch device for the backbone: auto (CUDA when present), cpu or cuda")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="backbone weight dtype")
    cache_dir: Path = Field(default_factory=default_cache_dir, description="folder for converted backbones")
    adapters_dir: Path = Field(Path("adapters"), description="bundle repository: one folder per bundle")
    max_request_history: int = Field(
        10_000, ge=1, description="maximum history length accepted in a request, in items; longer requests get 422"
    )
    max_request_exclude: int = Field(
        100_000, ge=0, description="maximum number of item IDs in a request's exclude list"
    )
    max_request_bytes: int = Field(
        2 * 1024 * 1024, ge=1024, description="largest JSON request body accepted, in bytes (uploads use E4SREC_MAX_UPLOAD_BYTES)"
    )
    max_batch_size: int = Field(16, ge=1, description="maximum number of requests per forward pass")
    max_wait_ms: float = Field(5.0, ge=0, description="maximum time a request waits for others to join its batch, in ms")
    max_queue: int = Field(256, ge=1, description="maximum number of waiting requests; beyond it requests get 503 with Retry-After")
    mixed_batches: bool = Field(True, description="serve requests for different bundles in one forward pass")
    prefix_cache: bool = Field(True, description="reuse the instruction prefix's keys and values across requests")
    admin_token: SecretStr | None = Field(None, description="bearer token for the admin routes; unset disables them")
    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1, description="largest bundle archive accepted, in bytes")
    max_resident_bundles: int = Field(8, ge=1, description="maximum number of bundles attached to the backbone at once")
    max_resident_bytes: int | None = Field(None, ge=1, description="maximum bytes of bundle tensors in memory")
    pinned_bundles: str = Field("", description="comma-separated bundle names that are never evicted")
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("REDIS_URL", "E4SREC_REDIS_URL"),
        description="redis://host:port/db for shared histories, response cache and bundle events; unset keeps them in process",
    )
    redis_timeout_s: float = Field(0.5, gt=0, description="timeout of each Redis operation and connection attempt, in seconds")
    response_cache_ttl_s: float = Field(60.0, ge=0, description="lifetime of cached responses in seconds; 0 disables the cache")
    stored_history_length: int = Field(200, ge=1, description="number of most recent items kept per stored user history")
    torch_threads: int | None = Field(None, ge=1, description="intra-op threads for torch (default: torch's choice)")

    @property
    def pinned(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.pinned_bundles.split(",") if name.strip())
