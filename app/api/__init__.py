"""The REST API (FastAPI): the app factory and its routes."""
