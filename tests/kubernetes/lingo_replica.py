"""`python -m tests.kubernetes.lingo_replica KUBECONFIG [serve flags]`: `lingo serve` on the
Kubernetes platform, with the short lease timings of the tests (settings come from flags and env,
exactly as for `lingo serve`). Used to run real lingo processes that a test can SIGKILL."""

from __future__ import annotations

import argparse
import asyncio
import sys

from lingo import config, logs
from lingo.app import Lingo
from lingo.platforms.kubernetes import KubernetesPlatform

#: Short lease timings for tests (production: 15 / 10 / 2 s).
FAST_LEASE = {"lease_duration": 2.0, "renew_deadline": 1.5, "retry_period": 0.3}


def main(argv: list[str]) -> None:
    kubeconfig, *flags = argv
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    settings = config.load(parser.parse_args(flags))
    logs.setup(settings.log_level)
    platform = KubernetesPlatform(settings, kubeconfig=kubeconfig, max_backoff=0.5, **FAST_LEASE)
    asyncio.run(Lingo(settings, platform=platform).run())


if __name__ == "__main__":
    main(sys.argv[1:])
