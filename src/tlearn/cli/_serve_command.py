"""`tlearn serve RUN`: the run's model behind an HTTP API (serve/). Its flags were checked already."""
from __future__ import annotations

import argparse

from ..serve import ServeSettings, serve_run


def serve(args: argparse.Namespace) -> int:
    settings = ServeSettings(engine=args.engine, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                             max_body_mb=args.max_body_mb, min_confidence=args.min_confidence,
                             coverage=args.coverage)
    return serve_run(args.run, args.host, args.port, settings)
