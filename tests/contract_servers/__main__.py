"""Both contract servers on loopback, for `make up` with infra/routes/seed-mix.yaml."""

from __future__ import annotations

import argparse
import os
import threading

from tests.contract_servers.common import Served
from tests.contract_servers.google import google_app
from tests.contract_servers.ideogram import ideogram_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ideogram-port", type=int, default=9301)
    parser.add_argument("--google-port", type=int, default=9302)
    parser.add_argument("--delay-s", type=float, default=0.3, help="each render takes this long")
    args = parser.parse_args()
    ideogram, ib = ideogram_app(os.environ.get("LANES_IDEOGRAM_API_KEY", "contract-ideogram-key"))
    google, gb = google_app(os.environ.get("LANES_GEMINI_API_KEY", "contract-gemini-key"))
    ib.delay_s = gb.delay_s = args.delay_s
    with Served(ideogram, args.ideogram_port) as i, Served(google, args.google_port) as g:
        print(f"export LANES_IDEOGRAM_BASE_URL={i.url} LANES_GEMINI_BASE_URL={g.url}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
