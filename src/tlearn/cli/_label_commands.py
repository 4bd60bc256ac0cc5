"""`tlearn suggest`: the images to label next, written as a CSV."""
from __future__ import annotations

import argparse

from ..label import Backbone, write_suggestions
from ..label import suggest as suggest_images


def suggest(args: argparse.Namespace) -> int:
    backbone = Backbone(model=args.model or "efficientnet_lite0", weights=args.weights, image_size=args.image_size,
                        run=args.run, device=args.device, batch_size=args.batch_size, cache_dir=args.cache_dir,
                        use_cache=args.use_cache)
    suggestions = suggest_images(args.pool, args.n, backbone, args.labels, seed=args.seed)
    write_suggestions(suggestions, args.out)
    guessed = sum(1 for row in suggestions if row.guess)
    print(f"wrote {len(suggestions)} suggestion(s) to {args.out}"
          + (f" ({guessed} with the probe's guess)" if guessed else " (cold start: no guesses yet)"))
    return 0
