"""The web UI and its JSON API (the ``ui`` extra: Starlette and uvicorn).

``aexec ui`` serves them (:mod:`aexec.web.server`); a Starlette or FastAPI service mounts
them with :func:`app`::

    async with aexec.Executor.from_url(store="postgresql://...") as ex:
        api = aexec.web.app(ex, aexec.web.UiConfig(token=os.environ["AEXEC_UI_TOKEN"]))
        service.mount("/aexec", api)

The pages are a static shell (``static/``) that renders the API's JSON in the browser;
they follow runs live over Server-Sent Events (:mod:`aexec.web.sse`).
"""

from aexec.web.app import UiConfig, app

__all__ = ["UiConfig", "app"]
