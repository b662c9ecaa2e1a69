"""``python -m dbaccess.sandbox``: the tour (dbaccess/sandbox/tour.py). It runs the broker
and needs the ``[broker]`` extra; on a CLI-only install (``pip install dbaccess``) this
says what to install instead of a traceback."""

from __future__ import annotations

import sys

from dbaccess.broker.entry import BROKER_INSTALL, missing_extra
from dbaccess.errors import ExitCode


def main() -> None:
    try:
        from dbaccess.sandbox.tour import main as tour
    except ModuleNotFoundError as exc:
        missing = missing_extra(exc)
        if missing is None:
            raise
        print(
            f"error: the sandbox runs a broker and needs its dependencies ({missing} is not "
            "installed)",
            file=sys.stderr,
        )
        print(f"hint: {BROKER_INSTALL}", file=sys.stderr)
        sys.exit(int(ExitCode.CONFIG))
    sys.exit(tour(sys.argv[1:]))


if __name__ == "__main__":
    main()
