"""
The HTTP site that counts its answers (C{lnt_http_requests} by endpoint and status) where
twisted.web writes its access log line, once per finished request. Endpoints are labelled by
their first path segment when the site serves it, "other" otherwise: a label per arbitrary path
would let anyone grow the metrics without bound.
"""

from __future__ import annotations

from typing import Any

from twisted.web.server import Site

from lnt import metrics


class MeteredSite(Site):
    def __init__(self, resource: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(resource, *args, **kwargs)
        self.root = resource

    def log(self, request: Any) -> None:
        segment = request.path.split(b"/")[1] if request.path.count(b"/") else b""
        name = segment.decode("ascii", "replace")
        if segment and segment not in getattr(self.root, "children", {}):
            name = "other"
        metrics.HTTP_REQUESTS.labels("/" + name, str(request.code)).inc()
        super().log(request)
