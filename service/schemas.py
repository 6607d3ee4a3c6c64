"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

USER_ID_PATTERN = r"^[A-Za-z0-9_.:@-]{1,128}$"


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bundle: str = Field(..., min_length=1, max_length=64, description="name of an installed bundle", examples=["beauty"])
    history: list[StrictInt] | None = Field(
        None,
        min_length=1,
        description=(
            "item IDs the user interacted with, oldest first; only the most recent "
            "max_history_length items of the bundle are fed to the model. Send this or user_id"
        ),
        examples=[[1, 2, 3, 4]],
    )
    user_id: str | None = Field(
        None, pattern=USER_ID_PATTERN, description="use this user's stored history (POST /users/{user_id}/events)"
    )
    k: StrictInt = Field(10, ge=1, description="number of items to return, at most the number of rankable items")
    exclude_seen: StrictBool = Field(True, description="leave out every item of the history, including truncated ones")
    exclude: list[StrictInt] = Field(default_factory=list, description="item IDs to leave out of the ranking")

    @model_validator(mode="after")
    def _history_or_user(self) -> RecommendRequest:
        if (self.history is None) == (self.user_id is None):
            raise ValueError("send exactly one of history (item IDs) or user_id (a user with stored events)")
        return self


class ScoredItem(BaseModel):
    item_id: int
    score: float


class RecommendResponse(BaseModel):
    bundle: str
    version: str
    items: list[ScoredItem] = Field(..., description="k distinct items, best first")
    history_length: int = Field(..., description="items in the request's history")
    used_history_length: int = Field(..., description="items fed to the model after truncation")
    truncated: bool = Field(..., description="true when older history items were dropped to fit the bundle's maximum")


class AdapterSummary(BaseModel):
    name: str
    resident: bool = Field(..., description="attached to the backbone now; an evicted bundle loads on its next request")
    pinned: bool
    version: str
    num_items: int
    id_dim: int
    max_history_length: int
    head: str
    lora_r: int
    backbone: dict
    metrics: dict
    created_at: str


class AdapterList(BaseModel):
    adapters: list[AdapterSummary]


class HealthStatus(BaseModel):
    status: str


class ReadyStatus(BaseModel):
    status: str
    backbone: str | None = None
    bundles: int = 0
    detail: str | None = None


class AdapterDetail(BaseModel):
    name: str
    version: str
    resident: bool
    pinned: bool
    in_flight: int = Field(..., description="requests in progress on the resident version")
    path: str = Field(..., description="folder name in the bundle repository")
    manifest: dict

    @classmethod
    def describe(cls, installed, served) -> AdapterDetail:
        return cls(
            name=installed.manifest.name,
            version=installed.manifest.version,
            resident=served is not None,
            pinned=served.pinned if served is not None else False,
            in_flight=served.in_flight if served is not None else 0,
            path=installed.path.name,
            manifest=installed.manifest.to_dict(),
        )


class DeletedAdapter(BaseModel):
    name: str
    version: str
    deleted: bool


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bundle: str = Field(..., min_length=1, max_length=64, description="bundle whose item space the items belong to")
    items: list[StrictInt] = Field(..., min_length=1, max_length=1000, description="item IDs, oldest first")


class UserHistory(BaseModel):
    user_id: str
    bundle: str
    history: list[int] = Field(..., description="stored item IDs, oldest first, at most E4SREC_STORED_HISTORY_LENGTH")


class DeletedHistory(BaseModel):
    user_id: str
    bundle: str
    deleted: bool
