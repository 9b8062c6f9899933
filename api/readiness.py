"""GET /readiness: where the start-up preparation stands (core.common.readiness), as JSON, for clients to poll."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from core.common.readiness import Readiness


def readiness_router(readiness: Readiness) -> APIRouter:
    router = APIRouter()

    @router.get("/readiness")
    def readiness_state() -> JSONResponse:
        """{"ready", "settled", "fraction", "stages": [{"name", "label", "tabs", "state", "fraction", "message",
        "seconds", "error"}]}; 200 whatever the state, so a poller reads the body rather than the status."""
        return JSONResponse(readiness.report().as_dict(), headers={"Cache-Control": "no-store"})

    return router
