"""`grefel serve`: a web page and REST API over the Recognizer (needs the `serve` extra).

`grefel.serve.app.create_app(ServeConfig(...))` builds the FastAPI app for
embedding in another ASGI server; `grefel serve` runs it on uvicorn.
"""
