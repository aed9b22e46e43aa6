"""No port, no process, no simulator: pure functions, the store on a temporary SQLite file, the HTTP apps through
starlette's TestClient with a fake service (conftest.py here)."""
