"""Container health probe: exit 0 when ``$HEALTHCHECK_URL`` answers 2xx.

The image's HEALTHCHECK runs it. Standard library only, so it starts in tens
of milliseconds and needs nothing beyond the interpreter. The default is the
collector's ``/healthz``; the flusher's container sets the admin port's URL.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8080/healthz"
TIMEOUT_S = 2.0


def check(url: str, timeout_s: float = TIMEOUT_S) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - loopback URL from env
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        print(f"unhealthy: {url} answered {exc.code}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url} unreachable ({exc})", file=sys.stderr)
        return 1
    return 0 if 200 <= status < 300 else 1


def main() -> int:
    return check(os.environ.get("HEALTHCHECK_URL", DEFAULT_URL))


if __name__ == "__main__":
    sys.exit(main())
