"""What an operator sees: the facts of one lingo process gathered once (`facts`), and thin renderers
of them: the live HTML page (`page.html`, served at `/status`) and the terminal table (`table`,
`lingo status`)."""

from lingo.status.facts import JobsProvider, StatusFacts
from lingo.status.page import status_page_html

__all__ = ["JobsProvider", "StatusFacts", "status_page_html"]
