"""The OpenAPI document is valid and describes every API route the app has, and no other.

A route added under /api/v1 without its entry in app/openapi.json fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from flask import Flask
from openapi_spec_validator import validate

from app import create_app
from tasks.core.settings import Settings

DOC = Path(__file__).resolve().parent.parent / "app" / "openapi.json"
IGNORED_METHODS = {"HEAD", "OPTIONS"}          # Flask adds these to every rule
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    """The real app; nothing here talks to Redis or storage (connections open lazily)."""
    tmp = tmp_path_factory.mktemp("openapi")
    settings = Settings(redis_url="redis://127.0.0.1:1/0", storage_url=tmp.as_uri(),
                        s3_endpoint_url=None, data_dir=tmp, resource_classes_path=None,
                        secret_key="test")
    return create_app({"SETTINGS": settings, "TESTING": True})


@pytest.fixture(scope="module")
def doc() -> dict:
    return json.loads(DOC.read_text())


def flask_routes(app: Flask) -> dict[str, set[str]]:
    """{OpenAPI path: methods} of the app's API rules (/api/... and /healthz)."""
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if not (rule.rule.startswith("/api/") or rule.rule == "/healthz"):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        routes.setdefault(path, set()).update((rule.methods or set()) - IGNORED_METHODS)
    return routes


def documented(doc: dict) -> dict[str, set[str]]:
    return {path: {m.upper() for m in item if m in HTTP_METHODS}
            for path, item in doc["paths"].items()}


def test_the_document_is_valid_openapi_3_1(doc: dict) -> None:
    validate(doc)
    assert doc["openapi"].startswith("3.1")


def test_every_api_route_is_documented_with_its_methods(app: Flask, doc: dict) -> None:
    routes, paths = flask_routes(app), documented(doc)
    missing = {p: sorted(m - paths.get(p, set())) for p, m in routes.items()
               if m - paths.get(p, set())}
    assert not missing, f"add these routes to app/openapi.json: {missing}"


def test_every_documented_route_exists(app: Flask, doc: dict) -> None:
    routes, paths = flask_routes(app), documented(doc)
    stale = {p: sorted(m - routes.get(p, set())) for p, m in paths.items()
             if m - routes.get(p, set())}
    assert not stale, f"app/openapi.json documents routes the app does not have: {stale}"


def test_path_parameters_are_declared(doc: dict) -> None:
    params = doc["components"]["parameters"]
    for path, item in doc["paths"].items():
        names = set(re.findall(r"{([^}]+)}", path))
        for method, op in item.items():
            if method not in HTTP_METHODS:
                continue
            declared = {(params[p["$ref"].rsplit("/", 1)[1]] if "$ref" in p else p)["name"]
                        for p in op.get("parameters", []) + item.get("parameters", [])}
            assert names <= declared, f"{method.upper()} {path} does not declare {names - declared}"


def test_errors_are_problem_json_and_calls_need_a_bearer_token(doc: dict) -> None:
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        **doc["components"]["securitySchemes"]["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert doc["security"] == [{"bearerAuth": []}]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for code, resp in op.get("responses", {}).items():
                if "$ref" in resp:
                    resp = doc["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
                if code.startswith(("4", "5")) and path != "/healthz":
                    assert "application/problem+json" in resp["content"], (method, path, code)


def test_the_app_serves_the_document(app: Flask, doc: dict) -> None:
    resp = app.test_client().get("/api/v1/openapi.json")
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert resp.get_json() == doc
