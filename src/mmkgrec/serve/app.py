"""The HTTP API (FastAPI): a thin layer mapping requests to :class:`~.service.RecService`.

Endpoints (OpenAPI schema at ``/openapi.json``, interactive docs at ``/docs``)::

    GET  /health                                       model, catalogue and store status
    GET  /metrics                                      Prometheus text: request counts, latencies
    GET  /users?limit=&offset=                         users to pick from
    GET  /users/{user_id}/recommendations?k=&exclude_seen=&retrieval=
    GET  /users/{user_id}/recommendations/{item_id}/explanation?limit=
    POST /recommendations      {"liked": [...], "k": 20}   a new listener, no retraining
    POST /feedback             {"user_id", "item_id", "value"}   durable, applied at once  [key]
    GET  /items?q=&limit=                              search the catalogue by name or id
    GET  /items/{item_id}/similar?k=                   cosine over user-independent vectors
    POST /items                {"item_id", "name", "links": [{"relation", "entity"}], "features"}  [key]
    GET  /                                             the web page (static HTML / JS / CSS)

[key]: the mutating endpoints need the server's API key (``X-API-Key: KEY`` or
``Authorization: Bearer KEY``; 401 without it) unless the app was created with
``no_auth=True`` (``mmkgrec serve --no-auth``, for local use). Every request first passes
:class:`~.edge.RequestGuard` (Host / Origin allow-list, JSON-only bodies, body size cap, body
read deadline).

Errors are JSON ``{"error": kind, "detail": ...}`` (``detail`` a string, or for request
validation a list of ``{"loc", "msg", "type"}``): 400 bad Host header or unparsable body, 401
missing / wrong API key, 403 cross-site Origin, 404 unknown user / item / entity / relation /
route, 408 body not received in time, 409 what the served model cannot do or a duplicate item,
413 body too large, 415 body not JSON, 422 invalid parameters or bodies (``k`` outside
1..1000, unknown fields, wrong or loose types, non-finite or out-of-range features). Every one
of these is in the OpenAPI schema. No request names a file; no error echoes an oversized id.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, ClassVar, Literal
from urllib.parse import parse_qsl

from fastapi import Body, Depends, FastAPI, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmkgrec import __version__
from mmkgrec.errors import ConfigError
from mmkgrec.serve.edge import BODY_TIMEOUT_S, LOCAL_HOSTS, MAX_BODY_BYTES, RequestGuard
from mmkgrec.serve.service import RecService, ServiceError, WouldBlock

#: the longest item / user id a request may carry (path or body); link entities and relations 500
MAX_ID = 200
MAX_ENTITY = 500
MIN_API_KEY = 16
API_KEY_HEADER = "X-API-Key"

K = Annotated[int, Query(ge=1, le=1000, description="number of items, 1..1000")]
IdInt = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]
ItemId = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID)] | IdInt
EntityId = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ENTITY)] | IdInt
Name = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID, pattern=r"^[^\x00-\x1f/\\]+$")]
PathId = Annotated[str, PathParam(max_length=MAX_ID)]
ModalityName = Annotated[StrictStr, Field(min_length=1, max_length=100)]
FeatureValue = Annotated[float, Field(allow_inf_nan=False)]
RetrievalMode = Literal["exact", "two-stage"]


# ---- request bodies (strict: no "1" for 1, no true for 1.0, no unknown fields) ----------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


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
    relation: StrictStr = Field(min_length=1, max_length=MAX_ENTITY)
    entity: EntityId


class NewItemRequest(_Body):
    item_id: Name
    name: StrictStr | None = Field(None, max_length=500)
    links: list[Link] = Field(default_factory=list, max_length=1000)
    features: dict[ModalityName, list[FeatureValue]] = Field(
        default_factory=dict, max_length=64,
        description="raw modality rows by modality name (z-scored with the train statistics; "
                    "each value finite and within the accepted range)")


# ---- responses ------------------------------------------------------------------------------
class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ValidationIssue(_Out):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(_Out):
    error: str = Field(description="the kind of error, e.g. not_found, conflict, unauthorized")
    detail: str


class UnprocessableBody(_Out):
    error: Literal["validation_error", "invalid_input"]
    detail: str | list[ValidationIssue]


class Health(_Out):
    status: str
    model: str
    dataset: str
    users: int
    items: int
    new_items: int
    feedback_users: int
    feedback_rows: int
    retrieval: RetrievalMode
    index: dict[str, str | int | float] | None
    new_listeners: bool
    modalities: list[str]
    uptime_s: float
    notes: list[str]
    api_key_required: bool
    pid: int = Field(description="the worker process that answered (mmkgrec serve --workers N)")
    catalogue_version: int = Field(description="the last registered item's row id in the store "
                                               "(0: none); equal on every worker once synced")


class UserRow(_Out):
    user_id: str
    history: int
    known: bool


class Users(_Out):
    total: int
    users: list[UserRow]


class RankedItem(_Out):
    rank: int
    item_id: str
    name: str | None
    score: float = Field(description="sigmoid(logit)")
    logit: float
    attributes: dict[str, str]


class SimilarItem(_Out):
    rank: int
    item_id: str
    name: str | None
    similarity: float = Field(description="cosine of the user-independent item vectors")
    attributes: dict[str, str]


class UserRecommendations(_Out):
    user_id: str
    known_user: bool
    k: int
    retrieval: RetrievalMode
    feedback_items: int
    liked_items: int
    items: list[RankedItem]


class LikedRecommendations(_Out):
    liked: list[str]
    k: int
    retrieval: RetrievalMode
    items: list[RankedItem]


class FeedbackStored(_Out):
    id: int
    user_id: str
    item_id: str
    value: float
    new_user: bool
    stored: bool


class FoundItem(_Out):
    item_id: str
    name: str | None


class Search(_Out):
    query: str
    items: list[FoundItem]


class Similar(_Out):
    item_id: str
    name: str | None
    k: int
    items: list[SimilarItem]


class ItemRegistered(_Out):
    item_id: str
    index: int
    name: str | None
    links: int
    modalities: list[str]


class PathNode(_Out):
    entity: str
    name: str
    kind: Literal["user", "item", "entity", "listener"] | None = Field(
        None, description="walked paths: what the node is (listener: a new listener's start)")


class PathRelation(_Out):
    relation: str
    weight: float | None = Field(description="kg: the user's attention on the relation; "
                                             "walked: the step's probability")
    probability: float | None = Field(None, description="walked: the policy's probability of "
                                                        "this step")


class ExplanationPath(_Out):
    hops: int
    weight: float | None = Field(description="kg: product of the hops' attention; walked: the "
                                             "path's probability")
    text: str
    nodes: list[PathNode]
    relations: list[PathRelation]
    kind: Literal["kg", "walked"] = Field("kg", description="kg: found in the KG after the fact;"
                                                            " walked: the path the model walked")
    probability: float | None = Field(None, description="walked: product of the step "
                                                        "probabilities")


class Neighbour(_Out):
    entity: str
    relation: str
    weight: float


class ModalityShare(_Out):
    modality: str
    share: float
    present: bool


class Explanation(_Out):
    explainer: Literal["kg-paths", "walked-path"] = "kg-paths"
    user_id: str
    item_id: str
    name: str | None
    score: float | None
    logit: float | None
    history_items: int
    n_paths: int
    paths: list[ExplanationPath]
    relation_weights: dict[str, float]
    neighbourhood: list[Neighbour]
    modalities: list[ModalityShare]


def _responses(*codes: int) -> dict:
    """OpenAPI ``responses`` for the error statuses a route can answer (the real bodies)."""
    text = {400: "bad Host header, or a body that cannot be parsed", 401: "missing or wrong API key",
            403: "a cross-site Origin on an unsafe method", 404: "unknown user, item, entity or relation",
            408: "the body was not received in time", 409: "the served model cannot do this, or a duplicate",
            413: "the body is too large", 415: "the body is not application/json",
            422: "invalid parameters or body"}
    return {code: {"model": UnprocessableBody if code == 422 else ErrorBody, "description": text[code]}
            for code in codes}


BODY_ERRORS = (400, 403, 408, 413, 415, 422)


def _error(status: int, kind: str, detail, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": kind, "detail": detail}, headers=headers)


def _clip_loc(part):
    if isinstance(part, str) and len(part) > 60:
        return part[:60] + "..."
    return part if isinstance(part, (str, int)) else str(part)[:60]


class UnauthorizedError(ServiceError):
    status, kind = 401, "unauthorized"


def check_api_key(key: str) -> str:
    """``key`` if it can be the server's API key (>= 16 visible ASCII characters), else ConfigError."""
    if len(key) < MIN_API_KEY or not all(33 <= ord(c) <= 126 for c in key):
        raise ConfigError(f"an API key needs at least {MIN_API_KEY} visible ASCII characters "
                          f"(no spaces); e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return key


def _key_dependency(key: str):
    """A FastAPI dependency that accepts ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``
    (compared in constant time, through SHA-256 so that not even the length leaks)."""
    expected = hashlib.sha256(key.encode()).digest()
    header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, scheme_name="ApiKey",
                          description="the server's API key (mmkgrec serve --api-key-file / MMKGREC_API_KEY)")
    bearer = HTTPBearer(auto_error=False, scheme_name="Bearer", description="the same key as a bearer token")

    def require_key(api_key: str | None = Security(header),
                    token: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
        given = api_key if api_key is not None else (token.credentials if token is not None else None)
        if given is None:
            raise UnauthorizedError(f"this endpoint needs the server's API key ({API_KEY_HEADER}: KEY "
                                    f"or Authorization: Bearer KEY)")
        digest = hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest()
        if not secrets.compare_digest(digest, expected):
            raise UnauthorizedError("wrong API key")

    return require_key


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


async def run_quick(service: RecService, method, *args):
    """``method(*args)`` of ``service`` (the last argument the ranking mode): on the event loop
    when the ranking is quick and no lock is taken (the thread pool's hand-offs cost more CPU
    than such a request), else in the thread pool; see :meth:`RecService.quick`."""
    if service.quick(args[-1]):
        try:
            return method(*args, wait=False)
        except WouldBlock:
            pass
    return await run_in_threadpool(method, *args)


class FastRecommendations:
    """Pure ASGI: answers a well-formed ``GET /users/{user_id}/recommendations`` without
    FastAPI's per-request parameter machinery (about 0.4 ms of the ~1.9 ms of CPU a request
    costs, measured in docs/serving.md), with the body the FastAPI route gives. Everything
    else goes on to FastAPI unchanged: other paths, and requests with anything this parser does
    not accept exactly (a repeated or unknown parameter, ``k`` outside 1..1000 or not plain
    digits, ``exclude_seen`` other than true / false, an unknown ``retrieval``, an id over
    :data:`MAX_ID`), and any service error, which the route then answers or refuses as
    documented."""

    PREFIX, SUFFIX = "/users/", "/recommendations"
    BOOLS: ClassVar[dict[str, bool]] = {"true": True, "false": False}

    def __init__(self, app, service: RecService, fastapi: FastAPI):
        self.app, self.service, self.fastapi = app, service, fastapi
        self.route = None  # the FastAPI route it stands for (metrics label), found on first use

    def parse(self, scope) -> tuple[str, int, bool, str | None] | None:
        """(user_id, k, exclude_seen, retrieval), or None: FastAPI handles the request."""
        path = scope["path"]
        if not (path.startswith(self.PREFIX) and path.endswith(self.SUFFIX)):
            return None
        user_id = path[len(self.PREFIX):-len(self.SUFFIX)]
        if not user_id or "/" in user_id or len(user_id) > MAX_ID:
            return None
        pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        params = dict(pairs)
        if len(params) != len(pairs) or not params.keys() <= {"k", "exclude_seen", "retrieval"}:
            return None
        k, seen, mode = params.get("k", "20"), params.get("exclude_seen", "true"), params.get("retrieval")
        if not (k.isascii() and k.isdigit() and k[0] != "0" and int(k) <= 1000):
            return None
        if seen not in self.BOOLS or mode not in (None, "exact", "two-stage"):
            return None
        return user_id, int(k), self.BOOLS[seen], mode

    async def __call__(self, scope, receive, send):
        parsed = (self.parse(scope) if scope["type"] == "http" and scope["method"] == "GET"
                  else None)
        if parsed is not None:
            try:
                out = await run_quick(self.service, self.service.recommend_user, *parsed)
            except ServiceError:
                parsed = None  # the route answers it, with the documented error
            if parsed is not None:
                if self.route is None:
                    self.route = next(r for r in self.fastapi.routes
                                      if getattr(r, "path", None) == "/users/{user_id}/recommendations")
                scope["route"] = self.route
                await _json(UserRecommendations(**out))(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _json(model: BaseModel) -> Response:
    """A 200 JSON response of an already validated model."""
    return Response(model.model_dump_json(), media_type="application/json")


def create_app(service: RecService, *, api_key: str | None = None, no_auth: bool = False,
               allowed_hosts: Iterable[str] | None = LOCAL_HOSTS,
               max_body_bytes: int = MAX_BODY_BYTES, body_timeout: float = BODY_TIMEOUT_S,
               fast_recommendations: bool = True) -> FastAPI:
    """The FastAPI application serving ``service`` (closes its store on shutdown, reopens it
    if started again).

    Args:
        api_key: the key ``POST /feedback`` and ``POST /items`` require; exactly one of it and
            ``no_auth=True`` (the explicit choice of an open server, for local use) is needed.
        allowed_hosts: host names the ``Host`` header may carry (and unsafe methods' ``Origin``);
            ``None`` or ``["*"]`` turns the check off. Default: the loopback names.
        max_body_bytes, body_timeout: the body cap (413) and read deadline (408).
        fast_recommendations: answer well-formed recommendation GETs through
            :class:`FastRecommendations` (False: every request through FastAPI, the reference).
    """
    if (api_key is None) == (not no_auth):
        raise ConfigError("choose how the mutating endpoints are protected: an API key, or "
                          "no_auth=True (mmkgrec serve --no-auth) for a server only you can reach")
    auth = ([] if no_auth or api_key is None
            else [Depends(_key_dependency(check_api_key(api_key)))])
    auth_errors = () if no_auth else (401,)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        service.store.open()  # reopens what a previous lifespan closed (no-op the first time)
        yield
        service.store.close()

    app = FastAPI(title="mmkgrec recommendation service", version=__version__, lifespan=lifespan,
                  description=f"{service.model_name} trained on {service.dataset.name}")
    metrics = Metrics(service)
    app.state.service, app.state.metrics = service, metrics
    app.state.api_key_required = not no_auth
    if fast_recommendations:
        app.add_middleware(FastRecommendations, service=service, fastapi=app)  # inside the guard
    app.add_middleware(RequestGuard, allowed_hosts=allowed_hosts, max_body_bytes=max_body_bytes,
                       body_timeout=body_timeout)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts refusals too

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, error: ServiceError):
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return _error(error.status, error.kind, str(error), headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, error: RequestValidationError):
        detail = [{"loc": [_clip_loc(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
                   "type": str(e.get("type", ""))} for e in error.errors()]
        return _error(422, "validation_error", detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, error: StarletteHTTPException):
        kind = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(
            error.status_code, "http_error")
        return _error(error.status_code, kind, str(error.detail), getattr(error, "headers", None))

    @app.get("/health", responses=_responses(400))
    def health() -> Health:
        return Health(**service.health(), api_key_required=not no_auth)

    @app.get("/metrics", response_class=PlainTextResponse, responses=_responses(400))
    def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/users", responses=_responses(400, 422))
    def users(limit: Annotated[int, Query(ge=1, le=1000)] = 50,
              offset: Annotated[int, Query(ge=0, le=2**31)] = 0) -> Users:
        return Users(**service.users(limit, offset))

    @app.get("/users/{user_id}/recommendations", response_model=UserRecommendations,
             responses=_responses(400, 404, 409, 422))
    async def user_recommendations(user_id: PathId, k: K = 20, exclude_seen: bool = True,
                                   retrieval: RetrievalMode | None = None) -> Response:
        out = await run_quick(service, service.recommend_user, user_id, k, exclude_seen, retrieval)
        return _json(UserRecommendations(**out))

    @app.get("/users/{user_id}/recommendations/{item_id}/explanation",
             responses=_responses(400, 404, 422))
    def explanation(user_id: PathId, item_id: PathId,
                    limit: Annotated[int, Query(ge=1, le=100)] = 10) -> Explanation:
        return Explanation(**service.explain(user_id, item_id, limit))

    @app.post("/recommendations", response_model=LikedRecommendations,
              responses=_responses(404, 409, *BODY_ERRORS))
    async def liked_recommendations(request: Annotated[LikedRequest, Body()]) -> Response:
        out = await run_quick(service, service.recommend_liked, request.liked, request.k, request.retrieval)
        return _json(LikedRecommendations(**out))

    @app.post("/feedback", status_code=201, dependencies=auth,
              responses=_responses(*auth_errors, 404, *BODY_ERRORS))
    def feedback(request: Annotated[FeedbackRequest, Body()]) -> FeedbackStored:
        return FeedbackStored(**service.add_feedback(request.user_id, str(request.item_id),
                                                     request.value))

    @app.get("/items", responses=_responses(400, 422))
    def items(q: Annotated[str, Query(max_length=MAX_ID)] = "",
              limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> Search:
        return Search(**service.search_items(q, limit))

    @app.get("/items/{item_id}/similar", responses=_responses(400, 404, 422))
    def similar(item_id: PathId, k: K = 20) -> Similar:
        return Similar(**service.similar(item_id, k))

    @app.post("/items", status_code=201, dependencies=auth,
              responses=_responses(*auth_errors, 404, 409, *BODY_ERRORS))
    def new_item(request: Annotated[NewItemRequest, Body()]) -> ItemRegistered:
        return ItemRegistered(**service.add_item(request.model_dump()))

    static = resources.files("mmkgrec.serve").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(str(static.joinpath("index.html")), media_type="text/html")

    return app
