"""The marketplace's backend on a host of its own (run inside the client's network
namespace by tests/integration/test_fleet.py): submits jobs to the gateway's address with
its key, receives their webhooks on its own address, downloads every image through the URLs
in them, and writes what it saw as JSON.

    python -m tests.fleet.client --gateway URL --key KEY --listen ADDR:PORT --jobs N --out F
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

TERMINAL = {"generation.succeeded", "generation.failed", "generation.canceled"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--listen", required=True)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--intent", default="final")
    ap.add_argument("--timeout", type=float, default=240)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    host, port = args.listen.rsplit(":", 1)
    deliveries: list[dict[str, Any]] = []
    lock = threading.Lock()

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with lock:
                deliveries.append({"at": time.time(), "peer": self.client_address[0],
                                   "body": json.loads(body)})  # fmt: skip
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, int(port)), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    http = httpx.Client(base_url=args.gateway, timeout=15)
    deadline = time.monotonic() + 180
    while True:  # the gateway's readiness, from this host
        try:
            if http.get("/readyz").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the gateway never became ready from the client's host")
        time.sleep(0.5)
    auth = {"Authorization": f"Bearer {args.key}"}
    submitted: dict[str, float] = {}
    for i in range(args.jobs):
        resp = http.post(
            "/v1/generations",
            json={
                "prompt": f"a red bicycle #{i}",
                "intent": args.intent,
                "webhook_url": f"http://{args.listen}/hooks",
            },  # fmt: skip
            headers=auth,
        )
        resp.raise_for_status()
        submitted[resp.json()["job_id"]] = time.time()
    print(json.dumps({"submitted": list(submitted)}), flush=True)

    def terminal() -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        with lock:
            for d in deliveries:
                if d["body"].get("type") in TERMINAL:
                    out.setdefault(d["body"]["data"]["job_id"], []).append(d)
        return out

    deadline = time.monotonic() + args.timeout
    while set(terminal()) < set(submitted) and time.monotonic() < deadline:
        time.sleep(0.25)
    time.sleep(5)  # a second terminal webhook (a redelivery) would come now
    jobs = {}
    for job_id, hooks in terminal().items():
        data = hooks[0]["body"]["data"]
        downloads = []
        for artifact in data.get("artifacts", []):
            image = http.get(artifact["uri"])
            downloads.append({"uri": artifact["uri"], "status": image.status_code,
                              "png": image.content[:4] == b"\x89PNG",
                              "instance": artifact.get("instance")})  # fmt: skip
        jobs[job_id] = {
            "terminal_webhooks": len(hooks),
            "type": hooks[0]["body"]["type"],
            "webhook_from": hooks[0]["peer"],
            "seconds": round(hooks[0]["at"] - submitted[job_id], 3),
            "timings": data.get("timings"),
            "downloads": downloads,
        }
    args.out.write_text(json.dumps({"submitted": list(submitted), "jobs": jobs}, indent=1))
    server.shutdown()


if __name__ == "__main__":
    main()
