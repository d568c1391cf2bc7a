"""The prediction API: `create_app()` builds it from the settings.

    rakuten-mlops serve     (uvicorn with the HTTP limits of the settings: see run())

Open routes: /health, /ready, /metrics (and the OpenAPI docs in local mode). Everything
else needs an X-API-Key: the client key to predict and read /model, the admin key to
reload the model and read the inference log.
"""

# No `from __future__ import annotations`: FastAPI must see the request models, which
# are built inside create_app(), as real classes.
import asyncio
import contextlib
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Body, FastAPI, HTTPException, Query, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from rakuten_mlops.serving import schemas
from rakuten_mlops.serving.auth import AdminRole, ClientRole, KeyRing, Role
from rakuten_mlops.serving.docs import add_offline_docs
from rakuten_mlops.serving.images import stored_vectors, uploaded_vector
from rakuten_mlops.serving.inference_log import Entry, InferenceLogWriter
from rakuten_mlops.serving.limits import BodyLimitMiddleware, HeaderLimitMiddleware, timed_protocol
from rakuten_mlops.serving.metrics import MetricsMiddleware, ServingMetrics
from rakuten_mlops.serving.model import LoadedModel, ModelManager, configure_mlflow_client
from rakuten_mlops.settings import Mode, Settings, get_settings

log = logging.getLogger("rakuten_mlops.serving")

DESCRIPTION = """
Classifies a Rakuten France product, from its title (`designation`) and optional
`description`, into one of the 27 product types (`prdtypecode`), with probabilities.

**Auth**: send `X-API-Key: <key>`. The client key (API_CLIENT_KEY) may predict and read
`/model`; the admin key (API_ADMIN_KEY) may also `POST /admin/reload` and read
`/admin/inference-log`. `/health`, `/ready` and `/metrics` are open.
"""

ERRORS = {
    400: {"model": schemas.ErrorResponse, "description": "The body is not decodable JSON."},
    401: {"model": schemas.ErrorResponse, "description": "No or an unknown X-API-Key."},
    403: {"model": schemas.ErrorResponse, "description": "The key's role may not do this."},
    413: {"model": schemas.ErrorResponse, "description": "The body is larger than any valid one."},
    422: {"model": schemas.ErrorResponse, "description": "Invalid request; `field` names it."},
    503: {"model": schemas.ErrorResponse, "description": "No model loaded yet."},
}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    keyring = KeyRing.from_settings(settings)  # refuses to start without both keys
    models = schemas.request_models(
        settings.api_max_designation_chars,
        settings.api_max_description_chars,
        settings.api_max_batch_size,
    )
    PredictRequest, BatchRequest = models.PredictRequest, models.BatchRequest  # noqa: N806
    metrics = ServingMetrics()
    manager = ModelManager(settings, on_swap=metrics.swapped)
    writer = InferenceLogWriter(settings, metrics)
    local = settings.rakuten_mode is Mode.LOCAL

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        configure_mlflow_client(settings)
        writer.start()
        # The model loads in the background: the process is alive (/health) at once and
        # ready (/ready) when the model is in.
        tasks = [asyncio.create_task(_load_then_poll(app))]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await run_in_threadpool(writer.stop)

    app = FastAPI(
        title="Rakuten product-type classifier",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.keyring = keyring
    app.state.metrics = metrics
    app.state.models = manager
    app.state.inference_log = writer
    # The one added last is outermost: the metrics also count the size limit's 413s.
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes(settings))
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(
        HeaderLimitMiddleware,
        max_bytes=settings.api_max_header_bytes,
        max_headers=settings.api_max_headers,
    )

    # ------------------------------------------------------------- model lifecycle

    def refresh(trigger: str, force: bool = False):
        result = manager.refresh(force=force)
        outcome = "failed" if result.failed else "swapped" if result.changed else "unchanged"
        metrics.model_reloads.labels(outcome, trigger).inc()
        if result.failed:
            metrics.errors.labels("reload_failed").inc()
        return result

    async def _load_then_poll(app: FastAPI) -> None:
        interval = settings.api_model_poll_seconds
        trigger = "startup"
        while True:
            try:
                await run_in_threadpool(refresh, trigger)
            except Exception:  # noqa: BLE001 - the loop must survive anything
                log.exception("model %s check failed", trigger)
            if interval <= 0:
                return
            trigger = "poll"
            await asyncio.sleep(interval)

    def serving_model() -> LoadedModel:
        model = manager.current
        if model is None:
            metrics.errors.labels("model_not_ready").inc()
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                detail=f"no model loaded: {manager.detail}",
                headers={"Retry-After": "5"},
            )
        return model

    # ------------------------------------------------------------- errors

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.errors.labels("validation").inc()
        if malformed := _json_syntax_error(exc):
            # FastAPI reports it as a 422 whose "field" is the character offset.
            return JSONResponse(status_code=400, content={"detail": malformed})
        problems = []
        for error in exc.errors():
            loc = [str(part) for part in error.get("loc", ())]
            field = ".".join(loc[1:] if loc and loc[0] in ("body", "query") else loc) or "body"
            if error.get("type") == "string_pattern_mismatch" and field == "image_base64":
                error = {**error, "msg": "not valid base64 (A-Z a-z 0-9 + / in groups of 4, "
                                         "= padding)"}
            # The input itself is never echoed back (it may be huge or not encodable).
            problems.append(
                {
                    "field": field,
                    "msg": f"{field}: {error.get('msg', 'invalid')}",
                    "type": error.get("type", "value_error"),
                    "loc": loc,
                }
            )
        return JSONResponse(status_code=422, content={"detail": problems})

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(status_code=500, content={"detail": "internal error"})

    # ------------------------------------------------------------- open routes

    @app.get("/health", response_model=schemas.HealthResponse, tags=["operations"])
    async def health() -> dict:
        """The process is alive (says nothing about the model: see /ready)."""
        return {"status": "ok"}

    @app.get(
        "/ready",
        response_model=schemas.ReadyResponse,
        tags=["operations"],
        responses={503: {"model": schemas.ReadyResponse, "description": "No model loaded."}},
    )
    async def ready() -> JSONResponse:
        """A model is loaded: which one, and whether it is the fallback export."""
        model = manager.current
        body = {
            "ready": model is not None,
            "model": _ref(model) if model else None,
            "alias": settings.model_alias,
            "fallback": bool(model and model.source == "export"),
            "detail": manager.detail,
        }
        return JSONResponse(body, status_code=200 if model else 503)

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus metrics (text exposition format)."""
        metrics.log_pending.set(writer.pending)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------- docs

    if local:
        add_offline_docs(app)
    else:  # outside local mode even the spec needs a client key (and there is no UI)

        @app.get("/openapi.json", include_in_schema=False)
        async def openapi_for_clients(role: ClientRole) -> JSONResponse:
            return JSONResponse(app.openapi())

    # ------------------------------------------------------------- prediction

    def classify(
        model: LoadedModel,
        products: list[tuple[str, str | None]],
        top_k: int,
        endpoint: str,
        images: list | None = None,
    ) -> list[list[dict]]:
        designations = [designation for designation, _ in products]
        descriptions = [description for _, description in products]
        try:
            prediction = model.predict(designations, descriptions, top_k, images)
        except Exception as exc:
            metrics.errors.labels("model_error").inc()
            log.exception("%s v%s failed on a request", model.name, model.version)
            raise HTTPException(
                status.HTTP_500_INTERNAL_SERVER_ERROR, detail="the model failed on this input"
            ) from exc
        metrics.preprocess.labels(endpoint).observe(prediction.preprocess_seconds)
        metrics.inference.labels(endpoint).observe(prediction.inference_seconds)
        results = []
        for (designation, description), top in zip(products, prediction.top, strict=True):
            metrics.input_chars.labels("designation").observe(len(designation))
            metrics.input_chars.labels("description").observe(len(description or ""))
            metrics.predictions.labels(str(top[0][0])).inc()
            metrics.confidence.observe(top[0][1])
            results.append(
                [
                    {"prdtypecode": code, "category": model.category(code), "probability": prob}
                    for code, prob in top
                ]
            )
        return results

    def log_entries(
        request: Request,
        request_id: str,
        role: Role,
        model: LoadedModel,
        products: list[tuple[str, str | None]],
        results: list[list[dict]],
        endpoint: str,
    ) -> None:
        started = request.scope.get("state", {}).get("started")
        latency_ms = (time.perf_counter() - started) * 1000 if started else 0.0
        now = datetime.now(UTC)
        writer.submit(
            [
                Entry(
                    request_id=request_id,
                    item=item,
                    predicted_at=now,
                    endpoint=endpoint,
                    client_role=role.value,
                    model_name=model.name,
                    model_version=model.version,
                    model_source=model.source,
                    top=[(p["prdtypecode"], p["probability"]) for p in predictions],
                    designation=designation,
                    description=description,
                    batch_size=len(products),
                    latency_ms=latency_ms,
                )
                for item, ((designation, description), predictions) in enumerate(
                    zip(products, results, strict=True)
                )
            ]
        )

    @app.post(
        "/predict",
        response_model=schemas.PredictResponse,
        tags=["prediction"],
        responses={**ERRORS, 415: {"model": schemas.ErrorResponse,
                                   "description": "`image_base64` is not a JPEG or PNG file."}},
    )
    async def predict(
        request: Request,
        role: ClientRole,
        body: Annotated[PredictRequest, Body()],
    ) -> JSONResponse:
        """The `top_k` most probable product types of one product."""
        model = serving_model()  # taken once: a swap during the request does not affect it
        products = [(body.designation, body.description)]
        image = uploaded_vector(body.image_base64, settings.api_max_image_bytes)
        # Single products run inline: a few milliseconds of CPU, which a thread hop would
        # not shorten (the GIL) but would add to.
        results = classify(model, products, body.top_k, "predict", [image])
        request_id = str(uuid.uuid4())
        log_entries(request, request_id, role, model, products, results, "predict")
        used = model.reads_images and image is not None
        return JSONResponse({"request_id": request_id, "model": _ref(model),
                             "predictions": results[0], "image_used": used})

    @app.post(
        "/predict/batch",
        response_model=schemas.BatchResponse,
        tags=["prediction"],
        responses=ERRORS,
    )
    async def predict_batch(
        request: Request,
        role: ClientRole,
        body: Annotated[BatchRequest, Body()],
    ) -> JSONResponse:
        """Up to API_MAX_BATCH_SIZE products, in one call into the model."""
        model = serving_model()
        products = [(item.designation, item.description) for item in body.items]
        metrics.batch_size.observe(len(products))
        images = await run_in_threadpool(stored_vectors, settings, model, body.items)
        results = await run_in_threadpool(
            classify, model, products, body.top_k, "predict_batch", images
        )
        request_id = str(uuid.uuid4())
        log_entries(request, request_id, role, model, products, results, "predict_batch")
        return JSONResponse(
            {
                "request_id": request_id,
                "model": _ref(model),
                "results": [
                    {"predictions": predictions, "image_used": image is not None}
                    for predictions, image in zip(results, images, strict=True)
                ],
            }
        )

    @app.get(
        "/model",
        response_model=schemas.ModelInfo,
        tags=["model"],
        responses={k: v for k, v in ERRORS.items() if k not in (400, 413, 422)},
    )
    async def model_info(role: ClientRole) -> JSONResponse:
        """The served model: name, version, alias, metrics and training data."""
        model = serving_model()
        return JSONResponse(
            jsonable_encoder(
                {
                    "name": model.name,
                    "version": model.version,
                    "alias": model.alias,
                    "source": model.source,
                    "run_id": model.run_id,
                    "loaded_at": model.loaded_at,
                    "fallback_reason": model.fallback_reason,
                    "score": model.score,
                    "score_temperature": model.temperature,
                    "classes": [
                        {"prdtypecode": code, "category": model.category(code)}
                        for code in model.classes
                    ],
                    "metrics": model.metrics,
                    "params": model.params,
                    "training_data": model.training_data,
                }
            )
        )

    # ------------------------------------------------------------- admin

    @app.post(
        "/admin/reload",
        response_model=schemas.ReloadResponse,
        tags=["admin"],
        responses={k: v for k, v in ERRORS.items() if k not in (400, 413)},
    )
    async def reload_model(
        role: AdminRole,
        force: Annotated[
            bool, Query(description="Reload even if the champion has not changed.")
        ] = False,
    ) -> JSONResponse:
        """Load the current champion now (without waiting for the periodic check)."""
        result = await run_in_threadpool(refresh, "admin", force)
        body = {
            "changed": result.changed,
            "previous": _ref(result.previous) if result.previous else None,
            "current": _ref(result.current) if result.current else None,
            "detail": result.detail,
        }
        if result.failed and result.current is None:
            return JSONResponse(body, status_code=503)
        return JSONResponse(body)

    @app.get(
        "/admin/inference-log",
        response_model=schemas.InferenceLogStatus,
        tags=["admin"],
        responses={k: v for k, v in ERRORS.items() if k not in (400, 413)},
    )
    async def inference_log(
        role: AdminRole,
        limit: Annotated[int, Query(ge=1, le=1000, description="Rows to return.")] = 20,
    ) -> JSONResponse:
        """The newest inference log rows, and the writer's state."""
        try:
            rows = await run_in_threadpool(writer.recent, limit)
        except Exception as exc:  # noqa: BLE001 - the database is optional for serving
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                detail=f"the inference log cannot be read now: {type(exc).__name__}",
            ) from exc
        return JSONResponse(
            jsonable_encoder(
                {
                    "pending": writer.pending,
                    "written": writer.written,
                    "dropped": writer.dropped,
                    "last_error": writer.last_error,
                    "rows": rows,
                }
            )
        )

    return app


def max_body_bytes(settings: Settings) -> int:
    """The largest body a valid request can have (JSON escapes take up to 6 bytes a char)."""
    per_item = (settings.api_max_designation_chars + settings.api_max_description_chars) * 6
    image = (settings.api_max_image_bytes + 2) // 3 * 4  # /predict's base64 image
    return settings.api_max_batch_size * (per_item + 256) + image + 64 * 1024


def _json_syntax_error(exc: RequestValidationError) -> str | None:
    """'the body is not valid JSON: <why> at line L, column C', when that is the error."""
    for error in exc.errors():
        if error.get("type") != "json_invalid":
            continue
        why = (error.get("ctx") or {}).get("error", "syntax error")
        loc = error.get("loc", ())
        offset = loc[-1] if loc and isinstance(loc[-1], int) else None
        if offset is None or not isinstance(exc.body, str):
            return f"the body is not valid JSON: {why}"
        line = exc.body.count("\n", 0, offset) + 1
        column = offset - exc.body.rfind("\n", 0, offset)
        return f"the body is not valid JSON: {why} at line {line}, column {column}"
    return None


def _ref(model: LoadedModel) -> dict:
    return {"name": model.name, "version": model.version, "source": model.source}


def run(settings: Settings | None = None, host: str | None = None, port: int | None = None):
    """Serve the API with uvicorn (one process, uvloop) and the HTTP limits of the settings."""
    import uvicorn

    settings = settings or get_settings()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per alias check
    uvicorn.run(
        create_app(settings),
        host=host or settings.bind_host,
        port=port or settings.api_port,
        workers=1,
        access_log=False,
        log_level="info",
        timeout_graceful_shutdown=15,
        **server_limits(settings),
    )


def server_limits(settings: Settings) -> dict:
    """uvicorn's options for the HTTP limits.

    h11, not httptools (uvicorn's default when installed): httptools puts no bound on
    the header block (64 MB headers were buffered whole, by repeated concatenation),
    while h11 refuses one over `max_incomplete_event_size` bytes with a 400 and closes.
    TimedH11Protocol adds the header and body read timeouts uvicorn does not have.
    """
    return {
        "http": timed_protocol(
            settings.api_header_timeout_seconds, settings.api_body_timeout_seconds
        ),
        "h11_max_incomplete_event_size": settings.api_max_header_bytes,
        "timeout_keep_alive": settings.api_keepalive_timeout_seconds,
        "limit_concurrency": settings.api_max_connections,
        "backlog": settings.api_backlog,
        "ws": "none",  # no WebSocket route: nothing to upgrade to
    }
