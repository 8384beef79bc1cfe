"""The OpenAPI's bearer scheme and the documentation pages' assets, without a browser (the
browser tests render the pages)."""

from fastapi.testclient import TestClient

from app.api.openapi import BEARER_SCHEME
from app.main import create_app


def test_scoped_operations_require_the_bearer_scheme_and_public_ones_do_not() -> None:
    schema = TestClient(create_app()).get("/api/v1/openapi.json").json()
    assert schema["components"]["securitySchemes"] == {"bearerAuth": BEARER_SCHEME}
    assert BEARER_SCHEME["scheme"] == "bearer"
    secured = {
        (method.upper(), path)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if operation.get("security") == [{"bearerAuth": []}]
    }
    assert ("POST", "/api/v1/comparisons") in secured
    assert ("DELETE", "/api/v1/comparisons/{user_id}/{video_a}/{video_b}") in secured
    assert ("GET", "/api/v1/users/{user_id}/scores") in secured
    assert ("POST", "/api/v1/sweeps") in secured
    assert ("GET", "/api/v1/scores") not in secured
    assert ("GET", "/api/v1/comparisons") not in secured
    # The header is the scheme's now, not a parameter of its own.
    for item in schema["paths"].values():
        for operation in item.values():
            names = {p["name"].lower() for p in operation.get("parameters", [])}
            assert "authorization" not in names


def test_docs_pages_load_their_assets_from_the_service_only() -> None:
    client = TestClient(create_app())
    for page, assets in {
        "/docs": ["swagger-ui/swagger-ui-bundle.js", "swagger-ui/swagger-ui.css"],
        "/redoc": ["redoc/redoc.standalone.js"],
    }.items():
        response = client.get(page)
        assert response.status_code == 200
        assert "default-src 'self'" in response.headers["content-security-policy"]
        for asset in assets:
            assert f'"/static/docs/{asset}"' in response.text
            served = client.get(f"/static/docs/{asset}")
            assert served.status_code == 200 and len(served.content) > 100_000
        assert "cdn." not in response.text and "fonts.googleapis" not in response.text
