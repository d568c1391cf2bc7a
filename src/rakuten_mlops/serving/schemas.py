"""Request and response models of the prediction API.

Requests are strict: unknown fields, wrong JSON types (a number for a text, "3" for
`top_k`), blank designations and texts over the configured lengths are refused with a
422 that names the field. The limits come from the settings, so the request models are
built by `request_models()` when the app is created, and the OpenAPI schema shows them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

NUM_CLASSES = 27  # product types of the challenge
DEFAULT_TOP_K = 3

EXAMPLE_PRODUCT = {
    "designation": "Peluche Donald - Europe - Disneyland 2000 (Marionnette À Doigt)",
    "description": None,
}
EXAMPLE_PRODUCT_2 = {
    "designation": "Grand Stylet Ergonomique Bleu Gamepad Nintendo Wii U - Speedlink Pilot Style",
    "description": "PILOT STYLE Touch Pen de marque Speedlink est 1 stylet ergonomique pour "
    "GamePad Nintendo Wii U.",
}


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


def _number_not_text(value: Any) -> Any:
    if isinstance(value, str | bool):
        raise ValueError(f"must be an integer, not {type(value).__name__}")
    return value


def _blank_to_none(value: str | None) -> str | None:
    return value if value is not None and value.strip() else None


@dataclass(frozen=True)
class RequestModels:
    Product: type[BaseModel]
    PredictRequest: type[BaseModel]
    BatchRequest: type[BaseModel]


def request_models(
    max_designation_chars: int, max_description_chars: int, max_batch_size: int
) -> RequestModels:
    """The request models, with the configured limits in their validation and schema."""
    designation_type = Annotated[
        str,
        Field(
            min_length=1,
            max_length=max_designation_chars,
            description="The product's title (required, not blank).",
            examples=[EXAMPLE_PRODUCT["designation"]],
            # Documents what _not_blank enforces (with a clearer message than a pattern's):
            # Python's str.strip also takes the separators U+001C-U+001F and U+0085 for
            # whitespace, a JSON Schema (ECMA-262) `\S` does not, so they are named.
            json_schema_extra={"pattern": r"[^\s\u001c-\u001f\u0085]"},
        ),
        AfterValidator(_not_blank),
    ]
    description_type = Annotated[
        str | None,
        Field(
            max_length=max_description_chars,
            description="The product's description, HTML allowed (optional).",
        ),
        AfterValidator(_blank_to_none),
    ]
    top_k_type = Annotated[
        int,
        Field(
            ge=1,
            le=NUM_CLASSES,
            description="How many product types to return, most probable first.",
            # JSON Schema counts 3.0 as an integer: accept it, but not "3" or true.
            strict=False,
        ),
        BeforeValidator(_number_not_text),
    ]
    strict = ConfigDict(extra="forbid", strict=True)

    class Product(BaseModel):
        """One product's text."""

        model_config = ConfigDict(**strict, json_schema_extra={"examples": [EXAMPLE_PRODUCT_2]})
        designation: designation_type
        description: description_type = None
        # Issue 17: a fusion model reads the image the lake stored for this product.
        productid: int | None = Field(
            None, description="The lake's product id: its stored image is used (optional)."
        )

    BASE64_PATTERN = (
        r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})$"
    )

    class PredictRequest(BaseModel):
        """One product to classify."""

        model_config = ConfigDict(
            **strict,
            json_schema_extra={
                "examples": [{**EXAMPLE_PRODUCT, "top_k": 3}, {**EXAMPLE_PRODUCT_2, "top_k": 1}]
            },
        )
        designation: designation_type
        description: description_type = None
        top_k: top_k_type = DEFAULT_TOP_K
        # Issue 17 (rakuten_mlops.serving.images): checked, then read by a fusion model.
        image_base64: str | None = Field(
            None,
            description="The product's photo, a JPEG or PNG file in base64 (optional; at "
            "most API_MAX_IMAGE_BYTES once decoded).",
            # Strict base64 in the contract itself: a client (or a fuzzer) reading the
            # schema knows that "" or a broken padding is not a photo.
            pattern=BASE64_PATTERN,
        )

    class BatchRequest(BaseModel):
        """Up to API_MAX_BATCH_SIZE products, classified in one call into the model."""

        model_config = ConfigDict(
            **strict,
            json_schema_extra={
                "examples": [{"items": [EXAMPLE_PRODUCT, EXAMPLE_PRODUCT_2], "top_k": 2}]
            },
        )
        items: list[Product] = Field(min_length=1, max_length=max_batch_size)
        top_k: top_k_type = DEFAULT_TOP_K

    return RequestModels(Product, PredictRequest, BatchRequest)


# ------------------------------------------------------------------------- responses


IMAGE_USED = False
IMAGE_USED_DOC = ("Whether the model read an image for this product: the served model takes "
                  "images (a fusion model) and one was sent, or the lake has the product's.")


class ClassScore(BaseModel):
    prdtypecode: int = Field(examples=[1280])
    category: str | None = Field(
        description="The product type's name (null when no name is known).",
        examples=["Jouets enfant"],
    )
    probability: float = Field(
        ge=0,
        le=1,
        description="predict_proba of the model, or for models without it a softmax of "
        "their decision function, temperature-scaled when the training calibrated it "
        "(see GET /model, `score` and `score_temperature`).",
        examples=[0.83],
    )


class ModelRef(BaseModel):
    name: str = Field(examples=["rakuten-prdtypecode"])
    version: str = Field(examples=["3"])
    source: Literal["registry", "export"] = Field(
        description="'registry': loaded from MLflow; 'export': the fallback copy in models/."
    )


class PredictResponse(BaseModel):
    request_id: str = Field(description="Also the key of this prediction in the inference log.")
    model: ModelRef
    predictions: list[ClassScore]
    image_used: bool = Field(IMAGE_USED, description=IMAGE_USED_DOC)


class BatchItem(BaseModel):
    predictions: list[ClassScore]
    image_used: bool = Field(IMAGE_USED, description=IMAGE_USED_DOC)


class BatchResponse(BaseModel):
    request_id: str
    model: ModelRef
    results: list[BatchItem] = Field(description="One entry per item, in request order.")


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    ready: bool
    model: ModelRef | None
    alias: str
    fallback: bool = Field(description="True when serving the export (MLflow unreachable).")
    detail: str | None = Field(description="Why the registry was not used, or why not ready.")


class ModelInfo(BaseModel):
    name: str
    version: str
    alias: str
    source: Literal["registry", "export"]
    run_id: str | None
    loaded_at: datetime
    fallback_reason: str | None
    score: Literal["predict_proba", "softmax(decision_function)"]
    score_temperature: float | None = Field(
        description="For softmax scores: the temperature fitted at training time "
        "(calibrated), or null (temperature 1: ranks right, not calibrated)."
    )
    classes: list[ClassScore | dict[str, Any]] = Field(
        description="The product types the model knows: prdtypecode and category."
    )
    metrics: dict[str, float] = Field(description="Training/evaluation metrics of its run.")
    params: dict[str, str] = Field(description="Parameters of its training run.")
    training_data: dict[str, Any] = Field(
        description="What it was trained on: the run's datasets and data tags."
    )


class ReloadResponse(BaseModel):
    changed: bool
    previous: ModelRef | None
    current: ModelRef | None
    detail: str | None


class InferenceLogStatus(BaseModel):
    pending: int = Field(description="Rows waiting to be written (e.g. while PostgreSQL is down).")
    written: int
    dropped: int
    last_error: str | None
    rows: list[dict[str, Any]] = Field(description="The most recent rows, newest first.")


class ErrorResponse(BaseModel):
    detail: Any
