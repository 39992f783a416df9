"""The page for people (`/ui`): live overview, segments, lead lookup and the model, drawn in the browser from the
same REST API as any client. Its files hold no data, so they are served without a key; the page sends the user's
key with each API call. Everything is served by the app: no CDN, no front-end server."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

PAGE_PATH = "/ui"
PAGE_ASSETS = f"{PAGE_PATH}/assets"
_FILES = Path(__file__).parent / "page_assets"

router = APIRouter()


@router.get(PAGE_PATH, include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(_FILES / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


def mount_page_assets(app: FastAPI) -> None:
    app.mount(PAGE_ASSETS, StaticFiles(directory=_FILES), name="page-assets")
