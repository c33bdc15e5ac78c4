#!/usr/bin/env python3
"""Rebuilds a server-side projection (such as cart_summary) and prints its progress.

    python examples/rebuild.py [--server 127.0.0.1:50051] [--in-place] cart_summary

Start the server with `--projections examples/projections` (from the repository's root) to have
the cart_summary projection.
"""

import argparse

from highwater_client import Client, HighwaterError, Phase


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("projection", help="the projection's name, such as cart_summary")
    parser.add_argument("--server", default="127.0.0.1:50051", help="host:port of the server")
    parser.add_argument(
        "--in-place", action="store_true", help="empty and replay the table (default: blue/green)"
    )
    args = parser.parse_args(argv)

    with Client(args.server) as client:
        last = None
        try:
            for progress in client.rebuild(args.projection, in_place=args.in_place):
                print(
                    f"{progress.phase.name:<15} version {progress.version}  "
                    f"position {progress.position}/{progress.head}  "
                    f"{progress.events_per_second:.0f} events/s  on {progress.node}"
                )
                last = progress
        except HighwaterError as e:  # e.g. NOT_FOUND, or FAILED_PRECONDITION: rebuilding elsewhere
            print(f"rebuild refused: {e}")
            return 1
        if last is None or last.phase != Phase.DONE:
            print(f"rebuild failed: {last.error if last else 'no progress received'}")
            return 1
        info = client.get_projection(args.projection)
        print(f"{info.name}: active version {info.active_version}, {info.status}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
