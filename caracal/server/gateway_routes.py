"""Placeholder replaced by the gateway endpoints."""

from __future__ import annotations

from fastapi import FastAPI

from caracal.server.service import Service


def install(app: FastAPI, service: Service) -> None:
    return None
