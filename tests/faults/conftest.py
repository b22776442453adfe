"""Fixtures the fault suite shares with the batch suite."""

from tests.batch.conftest import durable_kit  # noqa: F401 (a fixture: one kit each for NATS and RabbitMQ)
from tests.faults.lingoproc import lingo_process  # noqa: F401 (a fixture: lingo as a child process)
