"""The HTTP API, web UI and Prometheus metrics of `flowrelay server` (README "HTTP API and
metrics").

    app.py          the ASGI application: routes, errors, body limits, CORS, static files
    server.py       `ApiServer`: uvicorn as a task of the `Server`, bound and stopped by it
    context.py      what handlers work with (engine service, rule engine, hub, metrics)
    auth.py         bearer tokens (api.tokens.read / api.tokens.write)
    runs.py, deployments.py, automations.py, events.py     the endpoints
    queries.py      the database reads the engine service does not offer
    stream.py       `EventHub`: the live event stream (SSE), fed by the outbox relay
    metrics.py      `Metrics`: counters, histograms and the figures read at scrape
"""

from engine.api.app import create_app
from engine.api.context import ApiContext
from engine.api.server import ApiServer

__all__ = ["ApiContext", "ApiServer", "create_app"]
