"""The API's request and response models: what clients send and get, documented once."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import Path as PathParam
from fastapi import Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from appraiser import clock, schema
from appraiser.config import MAX_BATCH

CURRENCY = "USD"
MAX_COMPARABLES = 50

# ids are 32 lowercase hex digits (store.new_uid): anything else cannot exist, and is refused
# before it reaches the database (PostgreSQL refuses some characters with an error of its own)
ID_PATTERN = r"^[0-9a-f]{32}$"
AppraisalId = Annotated[
    str, PathParam(pattern=ID_PATTERN, description="the id an appraisal was answered with")
]
JobId = Annotated[str, PathParam(pattern=ID_PATTERN, description="the id POST /v1/retrain gave")]


# RFC 3339 wants the offset; SQLite hands stored (UTC) times back naive
Timestamp = Annotated[datetime, AfterValidator(clock.utc)]


class Comparable(BaseModel):
    """A stone of the collection like the one asked about."""

    carat: float
    cut: str
    color: str
    clarity: str
    depth: float
    table: float
    x: float
    y: float
    z: float
    price: float = Field(
        description="its price on the base level, USD: as the model learned it (a retrain divides "
        "each price by its month's market level)"
    )
    carat_difference: float = Field(description="its carat minus the asked carat")


class OtherGrade(BaseModel):
    grade: str = Field(description="the neighbouring grade")
    price: float = Field(description="the price the same stone would have with it, USD")


class GradeWhatIf(BaseModel):
    better: OtherGrade | None = Field(
        default=None, description="one grade better (left out: the best already)"
    )
    worse: OtherGrade | None = Field(
        default=None, description="one grade worse (left out: the worst already)"
    )


AsOf = Annotated[
    date | None,
    Query(
        description="the day the prices are for (YYYY-MM-DD): they stand on the market level of "
        "that day (a day after the last estimate carries it forward); today, UTC, by default"
    ),
]


class PriceLevel(BaseModel):
    """The market level a price stands on: prices are the model's prices on the base level (the
    collection it learned from) times `level`."""

    level: float = Field(description="1.0 = the base level; 1.2 = prices 20% above it")
    low: float = Field(description="the level's 90% interval, lower end")
    high: float = Field(description="its upper end")
    month: date | None = Field(
        description="the month whose estimate it is (its first day); null: the base level"
    )
    as_of: date = Field(description="the day the price is for")


BASE_LEVEL_EXAMPLE: dict[str, Any] = {
    "level": 1.0,
    "low": 1.0,
    "high": 1.0,
    "month": None,
    "as_of": "2026-12-06",
}


class AppraisalOut(BaseModel):
    """A price with its 90% range and the market level it stands on; with ?explain=true the
    dollars behind it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "3f2b8c1e9a7d4e0f8b6a5c4d3e2f1a0b",
                    "price": 4843.12,
                    "price_low": 4301.5,
                    "price_high": 5452.9,
                    "coverage": 0.9,
                    "currency": "USD",
                    "model_version": "3",
                    "market_level": BASE_LEVEL_EXAMPLE,
                    "warnings": [],
                }
            ]
        }
    )

    id: str = Field(description="keep it to fetch this appraisal or give the expert's price")
    price: float = Field(description="the appraised price, as of `market_level.as_of`")
    price_low: float = Field(description="low end of the range that holds the true price 90%")
    price_high: float = Field(description="high end of that range")
    coverage: float = Field(description="how often the range holds the true price (0.9 = 90%)")
    currency: str = CURRENCY
    model_version: str = Field(description="registry version of the model that priced it")
    market_level: PriceLevel = Field(
        description="the market level the price and its range stand on, and the day they are for"
    )
    warnings: list[str] = Field(description="why to treat this price with care, if anything")
    baseline: float | None = Field(
        default=None, description="the average stone's price (?explain=true)"
    )
    contributions: dict[str, float] | None = Field(
        default=None,
        description="dollars each reason adds to the baseline (?explain=true): `size` (the "
        "weight; measurements that grow with it change nothing else), `cut`, `color`, `clarity`, "
        "`proportions` (the shape from x, y, z: spread for the weight, length/width, depth/width), "
        "and `market`, what the market level adds since the collection (the price on the base "
        "level x (level - 1); left out at level 1.0); baseline + contributions = price",
    )
    what_if: dict[str, GradeWhatIf] | None = Field(
        default=None,
        description="per grade, the price of the same stone one grade better and one worse, on "
        "the same market level (?explain=true); left out at the end of a scale",
    )
    deal: Deal | None = Field(default=None, description="the deal check, when asking_price is sent")
    comparables: list[Comparable] | None = Field(
        default=None,
        description="similar stones of the collection (?comparables=N), at their prices on "
        "the base level (the collection's), as the model learned them: multiply by "
        "market_level.level for the day's",
    )


class DiamondIn(schema.Diamond):
    """A stone to price, and optionally the price a seller asks for it (the deal check)."""

    asking_price: float | None = Field(
        default=None,
        strict=True,  # a number: not "1000" or true (JSON integers are fine)
        allow_inf_nan=False,
        gt=0,
        le=schema.ASKING_PRICE_HIGH,
        description="USD: adds `deal`, the probability that the market pays more, and a verdict",
    )


class Deal(BaseModel):
    asking_price: float
    bargain_probability: float = Field(description="P(the market price > the asking price)")
    verdict: Literal["below market", "fair", "above market"]
    message: str


class BatchIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"diamonds": [schema.EXAMPLE_STONE]}]}
    )

    diamonds: list[DiamondIn] = Field(description=f"1 to {MAX_BATCH:,} stones")


class BatchOut(BaseModel):
    appraisals: list[AppraisalOut] = Field(description="one per stone, in the order sent")


class PriceListOut(BaseModel):
    rows: list[dict[str, Any]] = Field(
        description="each row as sent, plus price, price_low, price_high, warnings and error "
        "(the reasons a row was refused; empty when priced); with an asking_price column, "
        "bargain_probability, verdict and deal_error (why an asking price could not be used)"
    )
    priced: int
    refused: int
    model_version: str
    currency: str = CURRENCY
    market_level: PriceLevel = Field(description="the market level every row's price stands on")


class StoredAppraisal(BaseModel):
    id: str
    created_at: Timestamp
    stone: dict[str, Any]
    price: float
    price_low: float | None
    price_high: float | None
    currency: str = CURRENCY
    model_version: str | None
    latency_ms: float | None = Field(description="time the server took to price it")
    warnings: list[str]
    feedback: list[dict[str, Any]] = Field(description="expert prices given for it, oldest first")


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"price": 5100}]})

    price: float = Field(
        description="the expert's price, USD",
        gt=schema.BOUNDS["price"].low,
        le=schema.BOUNDS["price"].high,
    )


class ExpertPrice(BaseModel):
    """An expert's price for an appraisal, and where its review stands."""

    id: int
    appraisal_id: str
    stone: dict[str, Any]
    appraised_price: float = Field(description="what the model said")
    price_low: float | None
    price_high: float | None
    price: float = Field(description="what the expert said, USD")
    status: Literal["pending", "approved", "rejected"]
    flag: str | None = Field(description="why a reviewer should look twice (far off the range)")
    expert: str | None = Field(description="the name of the key that sent it")
    created_at: Timestamp
    reviewed_by: str | None
    reviewed_at: Timestamp | None
    review_note: str | None


class FeedbackOut(ExpertPrice):
    message: str


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str | None = Field(default=None, max_length=2000, description="why, for the audit")


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, description="the key's name (unique)")
    role: Literal["staff", "expert", "admin"]
    person: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="who holds it; default: the person of the key that makes it",
    )


class KeyInfo(BaseModel):
    name: str
    person: str = Field(description="who holds it: rules about people compare persons")
    role: str
    prefix: str = Field(description="the key's first characters, to tell keys apart")
    created_at: Timestamp
    created_by: str
    revoked_at: Timestamp | None
    revoked_by: str | None
    active: bool


class KeyCreated(BaseModel):
    name: str
    person: str
    role: str
    key: str = Field(description="shown once: only its hash is kept")


class AuditEventOut(BaseModel):
    id: int
    at: Timestamp
    actor: str = Field(description="a key's name, cli:<user>, or system:<what> for the system")
    person: str | None = Field(description="the person behind the actor; null for the system")
    action: str
    details: dict[str, Any]


class SimilarOut(BaseModel):
    diamonds: list[Comparable]


class IngestOut(BaseModel):
    batch_id: int | None
    already_ingested: bool
    rows_read: int
    rows_accepted: int
    rows_rejected: int
    rejected_by_reason: dict[str, int]
    rejected_rows: list[dict[str, Any]] = Field(description="the first 100 rows refused, with why")
    held: bool = Field(
        default=False,
        description="true: the champion found these prices far from everything known; the batch "
        "waits for an admin (POST /v1/batches/{id}/release or /drop) and trains nothing until then",
    )
    screening: dict[str, Any] | None = Field(
        default=None, description="the champion's errors on the batch against the expected ones"
    )
    message: str


class ModelOut(BaseModel):
    version: str
    champion: bool
    created: Timestamp
    model: str
    description: str
    metrics: dict[str, float] = Field(description="on the holdout stones of its training run")


class ModelsOut(BaseModel):
    champion: str | None
    models: list[ModelOut]


class PromoteOut(BaseModel):
    champion: str
    message: str


class StoredBatchOut(BaseModel):
    id: int
    source: str
    file_name: str
    received_at: datetime
    rows_read: int
    rows_accepted: int
    rows_rejected: int
    status: str
    status_reason: str | None
    screening: dict[str, Any] | None


class BatchStatusOut(BaseModel):
    batch_id: int
    status: str
    previous: str


class RetrainIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trials: int = Field(default=12, ge=1, le=200, description="Optuna trials per candidate")
    timeout: float = Field(default=120, ge=1, le=3600, description="seconds of tuning in all")


class JobOut(BaseModel):
    id: str
    kind: str
    status: Literal["queued", "running", "succeeded", "failed"]
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None


class JobStarted(BaseModel):
    job_id: str
    status_url: str
    message: str


class HealthOut(BaseModel):
    status: Literal["ok"]
    champion: str | None = Field(description="version served; null until a model is trained")
    model: str | None
    loaded_at: float | None
    reload_error: str | None = Field(
        default=None, description="why the last reload failed (admins only)"
    )


class ErrorOut(BaseModel):
    message: str = Field(description="what went wrong and what to do, in one sentence")
    detail: Any = Field(description="FastAPI's detail: the field-by-field list for a 422")


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)
}


class MarketLevelOut(BaseModel):
    """One month of the market level: prices over the champion's prices on the base level."""

    month: date | None = Field(
        description="the month's first day; null: the base level (no estimate on or before)"
    )
    level: float = Field(description="1.0 = the prices the champion learned; 1.2 = 20% above")
    low: float = Field(description="the 90% interval's lower end")
    high: float = Field(description="the 90% interval's upper end")
    stones: int = Field(description="the stones the month's estimate stands on")
    observed: float | None = Field(description="the month's own median, before smoothing")
    excluded: int = Field(description="stones left out: their source departed from the others")


class MarketCurrentOut(MarketLevelOut):
    as_of: date = Field(description="the day asked about (today, UTC, unless as_of was given)")


class MarketExclusionOut(BaseModel):
    month: date
    source: str = Field(description="the batches' source whose stones were left out")
    stones: int
    level: float = Field(description="the level that source's stones imply")
    market: float = Field(description="the level the other sources agree on")


class MarketOut(BaseModel):
    current: MarketCurrentOut = Field(description="the level on `as_of`: its month's estimate")
    series: list[MarketLevelOut] = Field(description="every month, oldest first")
    excluded: list[MarketExclusionOut]
    model_version: str | None = Field(description="the champion that priced the stones")
    computed_at: Timestamp | None = Field(description="when the series was last estimated")
