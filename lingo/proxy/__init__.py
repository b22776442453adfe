"""The HTTP face (OpenAI-compatible reverse proxy) and the forwarder that batch reuses."""

from lingo.proxy.forwarder import Forwarder
from lingo.proxy.handler import ProxyHandler

__all__ = ["Forwarder", "ProxyHandler"]
