"""Schema-driven fuzzing of the HTTP API with Schemathesis (issue 15, section 4): every
operation of /openapi.json gets generated requests, valid ones and invalid ones (plus valid
ones whose ids are real, so that the success bodies are exercised too), sent in-process to the
ASGI app of a tiny synthetic run; every response must pass Schemathesis' checks: no server
error, a documented status code, a documented content type and headers, a body that matches
the documented schema (errors included), invalid data rejected, auth enforced where declared.

Not run: ``positive_data_acceptance`` (schema-valid requests must succeed), because the
service rightly refuses some schema-valid requests with a documented 4xx (404 an unknown id,
422 a new item with neither links nor features, 422 ``5.0`` for an integer: types are strict).

Bounded and deterministic: ``MAX_EXAMPLES`` examples per operation and mode, Hypothesis
derandomised (a fixed seed per test), no example database.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from mmkgrec.serve.app import create_app  # noqa: E402
from mmkgrec.serve.service import RecService  # noqa: E402
from test_serve import API_KEY, _train  # noqa: E402

MAX_EXAMPLES = 25
OPERATIONS = [
    "GET /health", "GET /metrics", "GET /users", "GET /users/{user_id}/recommendations",
    "GET /users/{user_id}/recommendations/{item_id}/explanation", "POST /recommendations",
    "POST /feedback", "GET /items", "POST /items", "GET /items/{item_id}/similar",
]
NO_INPUT = {"GET /health", "GET /metrics"}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """(the loaded schema, the service) of a key-protected app on a tiny MKGCN run (2 hops,
    a flat faiss index so that two-stage requests work)."""
    run_dir = _train(tmp_path_factory, "mkgcn", {"dim": 8, "n_heads": 2, "n_hops": 2})
    service = RecService.from_run_dir(run_dir, tmp_path_factory.mktemp("fuzz") / "fuzz.sqlite",
                                      index="flat", retrieval="exact")
    # schemathesis' in-process client sends Host: testserver
    app = create_app(service, api_key=API_KEY, allowed_hosts=["testserver"])
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    yield schema, service
    service.store.close()


def _operation(schema, label: str):
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.label == label:
            return operation
    raise AssertionError(f"{label} is not in the schema")


def test_the_schema_lists_every_operation(api):
    schema, _ = api
    assert sorted(r.ok().label for r in schema.get_all_operations()) == sorted(OPERATIONS)


def _with_real_ids(label: str, strategy, service):
    """The same generated requests with real user / item ids (and for POST /items one real
    link, no features), so that the 2xx bodies meet the response schemas."""
    ds = service.dataset
    users = st.sampled_from([str(u) for u in ds.users[:20]])
    items = st.sampled_from([str(i) for i in ds.items[:40]])
    link = {"relation": str(ds.relations[ds.triples[0, 1]]),
            "entity": str(ds.entities[ds.triples[0, 2]])}

    def fill(drawn):
        case, user, item, liked = drawn
        if "user_id" in case.path_parameters:
            case.path_parameters["user_id"] = user
        if "item_id" in case.path_parameters:
            case.path_parameters["item_id"] = item
        if isinstance(case.body, dict):
            if label == "POST /recommendations":
                case.body["liked"] = liked
            elif label == "POST /feedback":
                case.body["item_id"] = item
            elif label == "POST /items":
                case.body["links"], case.body["features"] = [link], {}
        return case

    return st.tuples(strategy, users, items, st.lists(items, min_size=1, max_size=5)).map(fill)


@pytest.mark.parametrize("mode", ["positive", "negative", "real-ids"])
@pytest.mark.parametrize("label", OPERATIONS)
def test_fuzzed_requests_get_documented_answers(api, label, mode):
    schema, service = api
    if mode == "negative" and label in NO_INPUT:
        pytest.skip("no parameters or body to make invalid")
    if mode == "real-ids" and label in NO_INPUT | {"GET /users", "GET /items"}:
        pytest.skip("no ids")
    operation = _operation(schema, label)
    generation = GenerationMode.NEGATIVE if mode == "negative" else GenerationMode.POSITIVE
    strategy = operation.as_strategy(generation_mode=generation)
    if mode == "real-ids":
        strategy = _with_real_ids(label, strategy, service)

    @given(case=strategy)
    @settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case):
        case.call_and_validate(headers={"X-API-Key": API_KEY},
                               excluded_checks=[positive_data_acceptance])

    check()
