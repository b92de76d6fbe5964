"""The Python peers, each a minimal app the bench runs under the same uvicorn as edge."""
