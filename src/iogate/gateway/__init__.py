"""The HTTP gateway: FastAPI app factory, routes, auth and settings."""
