"""The web dashboard: `create_app()` (an ASGI app) and `pgqueue dashboard`.

Needs the extra `pgqueue-tasks[web]` (Starlette, Jinja2, uvicorn); nothing here is imported by
`import pgqueue`.

>>> from pgqueue.web import create_app
>>> app = create_app(read_only=True)     # the configured database (PGQUEUE_DSN, ...)
"""

from __future__ import annotations

from pgqueue.version import install_hint

try:
    import jinja2  # noqa: F401
    import starlette  # noqa: F401
except ImportError as missing:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"pgqueue's dashboard needs the extra 'web' ({missing.name} is missing): "
        + install_hint("web"),
        name=missing.name,
    ) from missing

from pgqueue.web.app import create_app

__all__ = ["create_app"]
