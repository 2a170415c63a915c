"""The HTTP API (FastAPI): a thin layer mapping requests to :class:`~.service.RecService`.

Endpoints (OpenAPI schema at ``/openapi.json``, interactive docs at ``/docs``)::

    GET  /health                                       model, catalogue and store status
    GET  /metrics                                      Prometheus text: request counts, latencies
    GET  /users?limit=&offset=                         users to pick from
    GET  /users/{user_id}/recommendations?k=&exclude_seen=&retrieval=
    GET  /users/{user_id}/recommendations/{item_id}/explanation?limit=
    POST /recommendations      {"liked": [...], "k": 20}   a new listener, no retraining
    POST /feedback             {"user_id", "item_id", "value"}   durable, applied at once
    GET  /items?q=&limit=                              search the catalogue by name or id
    GET  /items/{item_id}/similar?k=                   cosine over user-independent vectors
    POST /items                {"item_id", "name", "links": [{"relation", "entity"}], "features"}
    GET  /                                             the web page (static HTML / JS / CSS)

Errors are JSON ``{"error": kind, "detail": ...}``: 404 unknown user / item / entity / relation
/ route, 409 what the served model cannot do or a duplicate item, 422 invalid parameters or
bodies (``k`` outside 1..1000, unknown fields, wrong types). No request names a file.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Literal

from fastapi import Body, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmkgrec import __version__
from mmkgrec.serve.service import RecService, ServiceError

K = Annotated[int, Query(ge=1, le=1000, description="number of items, 1..1000")]
ItemId = StrictStr | StrictInt
Name = Annotated[StrictStr, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f/\\]+$")]
RetrievalMode = Literal["exact", "two-stage"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LikedRequest(_Body):
    liked: list[ItemId] = Field(min_length=1, max_length=1000, description="liked item ids")
    k: int = Field(20, ge=1, le=1000)
    retrieval: RetrievalMode | None = None


class FeedbackRequest(_Body):
    user_id: Name
    item_id: ItemId
    value: float = Field(allow_inf_nan=False, description="> 0 liked (joins the user's history); "
                                                        "<= 0 disliked (only excluded)")


class Link(_Body):
    relation: StrictStr = Field(min_length=1, max_length=500)
    entity: ItemId


class NewItemRequest(_Body):
    item_id: Name
    name: str | None = Field(None, max_length=500)
    links: list[Link] = Field(default_factory=list, max_length=1000)
    features: dict[StrictStr, list[float]] = Field(default_factory=dict)


def _error(status: int, kind: str, detail) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": kind, "detail": detail})


class Metrics:
    """Prometheus request counters and latency histograms (own registry per app)."""

    def __init__(self, service: RecService):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("mmkgrec_http_requests", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "mmkgrec_http_request_duration_seconds", "HTTP request latency by route",
            ["method", "route"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
        Gauge("mmkgrec_catalogue_items", "servable items (trained + registered)",
              registry=self.registry).set_function(lambda: service.catalogue.n_items)
        Gauge("mmkgrec_registered_items", "items registered while serving",
              registry=self.registry).set_function(lambda: len(service.catalogue.new))
        Gauge("mmkgrec_feedback_rows", "feedback rows stored",
              registry=self.registry).set_function(service.store.count)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP request and observes its latency, labelled with
    the route template (``/users/{user_id}/recommendations``), never the raw path."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "(unmatched)"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, label, str(status["code"])).inc()
            self.metrics.latency.labels(method, label).observe(time.perf_counter() - start)


def create_app(service: RecService) -> FastAPI:
    """The FastAPI application serving ``service`` (closes its store on shutdown)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        service.store.close()

    app = FastAPI(title="mmkgrec recommendation service", version=__version__, lifespan=lifespan,
                  description=f"{service.model_name} trained on {service.dataset.name}")
    metrics = Metrics(service)
    app.state.service, app.state.metrics = service, metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, error: ServiceError):
        return _error(error.status, error.kind, str(error))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, error: RequestValidationError):
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in error.errors()]
        return _error(422, "validation_error", detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, error: StarletteHTTPException):
        kind = "not_found" if error.status_code == 404 else "http_error"
        return _error(error.status_code, kind, error.detail)

    @app.get("/health")
    def health() -> dict:
        return service.health()

    @app.get("/metrics")
    def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/users")
    def users(limit: Annotated[int, Query(ge=1, le=1000)] = 50,
              offset: Annotated[int, Query(ge=0)] = 0) -> dict:
        return service.users(limit, offset)

    @app.get("/users/{user_id}/recommendations")
    def user_recommendations(user_id: Annotated[str, PathParam(max_length=200)], k: K = 20,
                             exclude_seen: bool = True,
                             retrieval: RetrievalMode | None = None) -> dict:
        return service.recommend_user(user_id, k, exclude_seen, retrieval)

    @app.get("/users/{user_id}/recommendations/{item_id}/explanation")
    def explanation(user_id: Annotated[str, PathParam(max_length=200)],
                    item_id: Annotated[str, PathParam(max_length=200)],
                    limit: Annotated[int, Query(ge=1, le=100)] = 10) -> dict:
        return service.explain(user_id, item_id, limit)

    @app.post("/recommendations")
    def liked_recommendations(request: Annotated[LikedRequest, Body()]) -> dict:
        return service.recommend_liked(request.liked, request.k, request.retrieval)

    @app.post("/feedback", status_code=201)
    def feedback(request: Annotated[FeedbackRequest, Body()]) -> dict:
        return service.add_feedback(request.user_id, str(request.item_id), request.value)

    @app.get("/items")
    def items(q: Annotated[str, Query(max_length=200)] = "",
              limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> dict:
        return service.search_items(q, limit)

    @app.get("/items/{item_id}/similar")
    def similar(item_id: Annotated[str, PathParam(max_length=200)], k: K = 20) -> dict:
        return service.similar(item_id, k)

    @app.post("/items", status_code=201)
    def new_item(request: Annotated[NewItemRequest, Body()]) -> dict:
        return service.add_item(request.model_dump())

    static = resources.files("mmkgrec.serve").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(str(static.joinpath("index.html")), media_type="text/html")

    return app
