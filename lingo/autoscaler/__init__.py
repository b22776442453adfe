"""Scales model groups from the shared queue's demand: pure decisions plus a thin loop."""

from lingo.autoscaler.decision import MovingAverage, ScaleDecider, desired_replicas
from lingo.autoscaler.loop import Autoscaler, ScaleEvent

__all__ = ["Autoscaler", "MovingAverage", "ScaleDecider", "ScaleEvent", "desired_replicas"]
