"""``python -m ood.segments {meta,embed,retrieve} ...``: one command per step of the segment-level chain.

meta      MetaSeg meta classification / regression of a store's segments; writes their predicted IoU
embed     embeddings of the crops of the poorly predicted segments
retrieve  nearest-neighbour retrieval and clustering of those embeddings
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = ("meta", "embed", "retrieve")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return importlib.import_module(f"ood.segments.{argv[0]}").main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
