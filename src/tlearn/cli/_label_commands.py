"""`tlearn suggest` (the images to label next, written as a CSV) and `tlearn label` (the labelling
page, or its review mode)."""
from __future__ import annotations

import argparse

from ..label import Backbone, LabelSession, ReviewSession, serve_labelling, write_suggestions
from ..label import suggest as suggest_images
from ..serve import bind


def _backbone(args: argparse.Namespace) -> Backbone:
    return Backbone(model=args.model or "efficientnet_lite0", weights=args.weights, image_size=args.image_size,
                    run=args.run, device=args.device, batch_size=args.batch_size, cache_dir=args.cache_dir,
                    use_cache=args.use_cache)


def suggest(args: argparse.Namespace) -> int:
    suggestions = suggest_images(args.pool, args.n, _backbone(args), args.labels, seed=args.seed)
    write_suggestions(suggestions, args.out)
    guessed = sum(1 for row in suggestions if row.guess)
    print(f"wrote {len(suggestions)} suggestion(s) to {args.out}"
          + (f" ({guessed} with the probe's guess)" if guessed else " (cold start: no guesses yet)"))
    return 0


def label(args: argparse.Namespace) -> int:
    sock = bind(args.host, args.port)  # first: a port in use is one line before any feature is extracted
    try:
        classes = [name.strip() for name in (args.classes or "").split(",") if name.strip()]
        if args.review:
            session = ReviewSession(args.pool, args.labels, args.review, classes)
        else:
            session = LabelSession(args.pool, args.labels, _backbone(args), classes, args.refit_every, args.seed)
        return serve_labelling(session, sock, args.labels)
    finally:
        sock.close()
