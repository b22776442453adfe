"""The live status page: one static HTML file with inline JavaScript that polls `/status.json`.

No build step and no CDN: the page must work offline inside a cluster.
"""

from __future__ import annotations

import functools
from importlib import resources


@functools.cache
def status_page_html() -> bytes:
    """The page's bytes, read once from the package."""
    return resources.files("lingo.status").joinpath("page.html").read_bytes()
