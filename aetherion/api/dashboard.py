"""The dashboard: ``/`` and its assets, shipped inside the package (no CDN, no build step).

The page itself holds no data; it reads the REST endpoints and the three WebSocket streams, so
it needs no credentials to be served (with ``AETHERION_API_KEY`` set it asks for the key once).
Its charts are TradingView's Lightweight Charts, vendored as one file under ``static/vendor/``
with its licence and notice (Apache-2.0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

__all__ = ["ASSETS", "router"]

STATIC: Final = Path(__file__).parent / "static"
JS: Final = "text/javascript; charset=utf-8"
TEXT: Final = "text/plain; charset=utf-8"
ASSETS: Final = {
    "app.js": JS,
    "style.css": "text/css; charset=utf-8",
    "vendor/lightweight-charts.standalone.production.js": JS,
    "vendor/LICENSE": TEXT,
    "vendor/NOTICE": TEXT,
}
# Everything the page loads comes from this origin; WebSockets too ('self' covers ws:/wss:).
HEADERS: Final = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8",
                        headers=HEADERS)


def _asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:  # a fixed set: no path from the request ever reaches the filesystem
        raise HTTPException(404, f"no asset {name!r}")
    return FileResponse(STATIC / name, media_type=media_type, headers=HEADERS)


@router.get("/static/{name}")
async def asset(name: str) -> FileResponse:
    return _asset(name)


@router.get("/static/vendor/{name}")
async def vendored(name: str) -> FileResponse:
    return _asset(f"vendor/{name}")
