#!/usr/bin/env python3
"""The sample provider's cloud: a tiny JSON-over-HTTP machine API (stdlib only).

Run: python3 backend.py --port 8085 --token secret   (prints "listening on http://127.0.0.1:PORT")

API (every call needs "Authorization: Bearer <token>"):
  POST   /v1/machines        {name, machineType, image, tags, userData, idempotencyKey}
                             -> 201 machine; the same idempotencyKey returns the same machine
  GET    /v1/machines?name=N&tag=K=V  -> [machine]
  GET    /v1/machines/ID     -> machine or 404
  DELETE /v1/machines/ID     -> 204 or 404
  GET    /debug/machines     -> every machine with all fields (no auth; for tests)
  GET    /debug/requests     -> every API request so far as "METHOD PATH" (no auth; for tests)
Faults for tests: header "X-Fail: 503" makes the next answer that status.
"""
import argparse
import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

LOCK = threading.Lock()
MACHINES = {}  # id -> machine
BY_KEY = {}  # idempotencyKey -> id
IDS = itertools.count(1)
REQUESTS = []  # "METHOD PATH" of every /v1 request, in order


def public(m):
    return {k: m[k] for k in ("id", "name", "machineType", "image", "tags", "hostname", "state")}


class Handler(BaseHTTPRequestHandler):
    token = ""

    def log_message(self, *args):
        pass

    def reply(self, status, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authorized(self):
        with LOCK:
            REQUESTS.append(f"{self.command} {self.path}")
        fail = self.headers.get("X-Fail")
        if fail:
            self.reply(int(fail), {"error": "injected fault"})
            return False
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self.reply(401, {"error": "missing or wrong bearer token"})
            return False
        return True

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/debug/machines":
            with LOCK:
                return self.reply(200, list(MACHINES.values()))
        if url.path == "/debug/requests":
            with LOCK:
                return self.reply(200, list(REQUESTS))
        if not self.authorized():
            return
        if url.path == "/v1/machines":
            q = parse_qs(url.query)
            with LOCK:
                found = list(MACHINES.values())
            if "name" in q:
                found = [m for m in found if m["name"] == q["name"][0]]
            for tag in q.get("tag", []):
                k, _, v = tag.partition("=")
                found = [m for m in found if m["tags"].get(k) == v]
            return self.reply(200, [public(m) for m in found])
        if url.path.startswith("/v1/machines/"):
            with LOCK:
                m = MACHINES.get(url.path.rsplit("/", 1)[1])
            return self.reply(200, public(m)) if m else self.reply(404, {"error": "no such machine"})
        self.reply(404, {"error": "no such path"})

    def do_POST(self):
        if not self.authorized():
            return
        if urlparse(self.path).path != "/v1/machines":
            return self.reply(404, {"error": "no such path"})
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
            name, key = body["name"], body.get("idempotencyKey") or body["name"]
        except (ValueError, KeyError) as e:
            return self.reply(400, {"error": f"bad request: {e}"})
        with LOCK:
            if key in BY_KEY and BY_KEY[key] in MACHINES:
                return self.reply(200, public(MACHINES[BY_KEY[key]]))
            mid = f"vm-{next(IDS):05d}"
            MACHINES[mid] = {
                "id": mid, "name": name, "machineType": body.get("machineType", ""),
                "image": body.get("image", ""), "tags": body.get("tags", {}),
                "userData": body.get("userData", ""), "hostname": f"node-{mid}", "state": "running",
            }
            BY_KEY[key] = mid
            self.reply(201, public(MACHINES[mid]))

    def do_DELETE(self):
        if not self.authorized():
            return
        mid = urlparse(self.path).path.rsplit("/", 1)[1]
        with LOCK:
            gone = MACHINES.pop(mid, None)
        self.reply(204) if gone else self.reply(404, {"error": "no such machine"})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--token", default="secret")
    args = ap.parse_args()
    Handler.token = args.token
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
