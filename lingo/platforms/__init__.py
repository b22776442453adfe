"""Where models run. Each platform implements `Platform`; the rest of lingo cannot tell them apart."""

from lingo.platforms.base import Platform

__all__ = ["Platform"]
