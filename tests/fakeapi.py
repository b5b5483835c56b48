"""A real HTTP server on 127.0.0.1 that speaks OpenAI chat-completions and Anthropic messages.

Used by the runner tests and the API benchmark: the official SDKs talk to it over a socket, so
every layer (SDK, httpx, our error mapping, retries) runs for real. Non-streaming only.

- Keys each request on its conversation (`conversation_sha`): the prompt's sha256 while the
  conversation is that one prompt (the `prompt_sha256` every sample records), else the sha256 of
  the prompt plus every later turn (a chain's turn 2 differs from its turn 1).
- Answers deterministically: the letter is derived from the key (A-D, valid for 4 or 5 options);
  a conversation that already has an assistant turn (a chain's follow-up) gets `Answer: X`. Or
  scripted per key through `answers`.
- Counts what it saw: `received` (requests per key) and `answered` (responses written to the
  socket in full, per key).
- Injects faults on demand (`inject(fault, times)`): 429 (Retry-After), 500, 529, hang, reset,
  malformed JSON, empty content, refusal, 401, 403, 400 context-length, 400 bad parameter.
- `freeze()` holds every response; `release(abandon=True)` then drops the held connections
  unanswered (used to SIGKILL a client at a point where no response is half-delivered).

Run standalone for benchmarks: `python tests/fakeapi.py --latency 0.2` prints `PORT <n>`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("429", "500", "529", "hang", "reset", "malformed", "empty", "refusal", "401", "403",
          "400-context", "400-param")
LETTERS = "ABCD"


def prompt_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def letter_for(text: str) -> str:
    return LETTERS[hashlib.sha256(text.encode("utf-8")).digest()[0] % len(LETTERS)]


def conversation_sha(text: str, later: Sequence[tuple[str, str]] = ()) -> str:
    """The key of a request: `prompt_sha(text)` for the prompt alone; with `later` turns (role,
    content from the first assistant reply on, as `Prompt.history`), the whole conversation's."""
    if not later:
        return prompt_sha(text)
    return prompt_sha(json.dumps([text, *([r, c] for r, c in later)], ensure_ascii=False))


def reply_for(key: str, later: Sequence[tuple[str, str]] = ()) -> str:
    """The unscripted reply: a letter, or `Answer: X` for a follow-up turn (X from the key)."""
    letter = LETTERS[bytes.fromhex(key)[0] % len(LETTERS)]
    return f"Answer: {letter}" if later else letter


@dataclass
class _Rule:
    fault: str
    remaining: int
    match: Callable[[str], bool] | None = None


class FakeAPI:
    """The server plus its script and counters; `start()` serves from a daemon thread."""

    def __init__(self, latency: float = 0.0, api_key: str | None = None, retry_after_ms: int = 200,
                 hang_s: float = 30.0):
        self.latency = latency
        self.api_key = api_key
        self.retry_after_ms = retry_after_ms
        self.hang_s = hang_s
        self.answers: dict[str, str] = {}  # prompt sha256 -> reply text
        self.received: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self.faults_served: Counter[str] = Counter()
        self.keys_seen: set[str] = set()
        self.bodies: list[dict[str, Any]] = []  # request bodies (keep_bodies=True only)
        self.keep_bodies = False
        self.inflight = 0
        self.max_inflight = 0
        self.first_request_at: float | None = None  # time.monotonic() of the first request
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._open = threading.Event()
        self._open.set()
        self._abandon_epoch = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control -----------------------------------------------------------------------------
    def inject(self, fault: str, times: int = 1, match: Callable[[str], bool] | None = None) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        with self._lock:
            self._rules.append(_Rule(fault, times, match))

    def clear_faults(self) -> None:
        with self._lock:
            self._rules.clear()

    def freeze(self) -> None:
        self._open.clear()

    def release(self, abandon: bool = False) -> None:
        with self._lock:
            if abandon:
                self._abandon_epoch += 1
        self._open.set()

    def reset_counts(self) -> None:
        with self._lock:
            self.received.clear()
            self.answered.clear()
            self.max_inflight = 0
            self.faults_served.clear()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self, port: int = 0) -> FakeAPI:
        handler = type("_Handler", (_Handler,), {"api": self})
        self._server = _Server(("127.0.0.1", port), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True,
                                        name="fakeapi")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._open.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- used by the handler -----------------------------------------------------------------
    def _next_fault(self, sha: str) -> str | None:
        with self._lock:
            for rule in self._rules:
                if rule.remaining > 0 and (rule.match is None or rule.match(sha)):
                    rule.remaining -= 1
                    self.faults_served[rule.fault] += 1
                    return rule.fault
        return None


def _content(c: Any) -> str:
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        return "".join(b.get("text", "") for b in c if isinstance(b, dict))
    return ""


def _conversation(system: str | None, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[str, str]]]:
    """(the biasmed prompt, the later turns) of a request: the prompt is the longest text among
    system and the messages before the first assistant turn; the later turns start there."""
    first = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"), len(messages))
    texts = [system] if isinstance(system, str) else []
    texts += [_content(m.get("content")) for m in messages[:first]]
    later = [(str(m.get("role")), _content(m.get("content"))) for m in messages[first:]]
    return (max(texts, key=len) if texts else ""), later


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the listen backlog: 32+ clients connect at once

    def handle_error(self, request, client_address) -> None:  # type: ignore[override]
        # a client that hangs up (a run stopping on a fatal error closes its other connections)
        # is normal here; anything else is still printed
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api: FakeAPI
    _key = ""

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- plumbing ----------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> bool:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            return True
        except OSError:
            self.close_connection = True
            return False

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> bool:
        return self._send(status, json.dumps(obj).encode(), headers)

    def _reset(self) -> None:
        # RST instead of FIN: the client sees a connection reset
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close_connection = True
        try:
            self.connection.close()
        except OSError:
            pass

    def _wait_open(self) -> bool:
        """Block while frozen; False when this request was abandoned (client killed meanwhile)."""
        api = self.api
        epoch = api._abandon_epoch
        while not api._open.wait(0.05):
            if api._stop.is_set():
                return False
        return api._abandon_epoch == epoch and not api._stop.is_set()

    def _read_body(self) -> dict[str, Any]:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        return json.loads(raw or b"{}")

    # -- routes ------------------------------------------------------------------------------
    def do_GET(self) -> None:
        if self.path == "/_stats":
            api = self.api
            with api._lock:
                self._send_json(200, {"received": sum(api.received.values()),
                                      "answered": sum(api.answered.values()),
                                      "distinct_answered": len(api.answered)})
            return
        self._send_json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        api = self.api
        path = self.path.split("?")[0]
        if path == "/_reset":
            self._read_body()
            api.reset_counts()
            self._send_json(200, {})
            return
        flavor = "anthropic" if path.endswith("/messages") else "openai" if path.endswith("/chat/completions") else None
        if flavor is None:
            self._send_json(404, {"error": {"message": f"no route {path}"}})
            return
        try:
            body = self._read_body()
        except ValueError:
            self._send_json(400, {"error": {"message": "bad json"}})
            return
        text, later = _conversation(body.get("system"), body.get("messages", []))
        sha = conversation_sha(text, later)
        key = (self.headers.get("x-api-key") or self.headers.get("Authorization", "").removeprefix("Bearer ")).strip()
        self._key = key
        with api._lock:
            if api.first_request_at is None:
                api.first_request_at = time.monotonic()
            api.received[sha] += 1
            api.keys_seen.add(key)
            if api.keep_bodies:
                api.bodies.append(body)
            api.inflight += 1
            api.max_inflight = max(api.max_inflight, api.inflight)
        try:
            self._answer(flavor, body, text, sha, key, later)
        finally:
            with api._lock:
                api.inflight -= 1

    def _answer(self, flavor: str, body: dict[str, Any], text: str, sha: str, key: str,
                later: list[tuple[str, str]]) -> None:
        api = self.api
        if api.api_key is not None and key != api.api_key:
            self._error(flavor, 401)
            return
        fault = api._next_fault(sha)
        if api.latency:
            time.sleep(api.latency)
        if not self._wait_open():
            self._reset()
            return
        if fault is not None and self._fault(flavor, fault, body, text):
            return
        reply = api.answers.get(sha, letter_for(text) if not later else reply_for(sha, later))
        payload = self._ok(flavor, body, text, reply, refusal=None, later=later)
        if self._send_json(200, payload):
            with api._lock:
                api.answered[sha] += 1

    # -- responses ---------------------------------------------------------------------------
    def _ok(self, flavor: str, body: dict[str, Any], text: str, reply: str | None,
            refusal: str | None, later: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
        n_in = max(1, (len(text) + sum(len(c) for _, c in later)) // 4)
        n_out = 0 if not reply else max(1, len(reply) // 4)
        if flavor == "anthropic":
            content = [] if refusal else [{"type": "text", "text": reply or ""}]
            return {"id": "msg_fake", "type": "message", "role": "assistant", "model": body.get("model"),
                    "content": content, "stop_reason": "refusal" if refusal else "end_turn",
                    "stop_sequence": None, "usage": {"input_tokens": n_in, "output_tokens": n_out}}
        message: dict[str, Any] = {"role": "assistant", "content": None if refusal else reply,
                                   "refusal": refusal}
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
        if body.get("logprobs") and not refusal:
            choice["logprobs"] = {"content": [self._top_logprobs(text, int(body.get("top_logprobs") or 5))],
                                  "refusal": None}
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model"), "choices": [choice],
                "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}}

    @staticmethod
    def _top_logprobs(text: str, k: int) -> dict[str, Any]:
        # a fixed distribution: the hash letter most likely, then the others; " B"-style variants too
        best = letter_for(text)
        order = [best] + [c for c in "ABCDE" if c != best]
        tops = []
        for i, c in enumerate(order):
            tops.append({"token": c, "logprob": -0.1 - 1.5 * i, "bytes": list(c.encode())})
            tops.append({"token": " " + c, "logprob": -3.0 - 1.5 * i, "bytes": list((" " + c).encode())})
        tops.sort(key=lambda t: -t["logprob"])
        tops = tops[:k]
        return {"token": best, "logprob": tops[0]["logprob"], "bytes": list(best.encode()), "top_logprobs": tops}

    def _error(self, flavor: str, status: int, headers: dict[str, str] | None = None) -> None:
        kinds = {
            400: ("invalid_request_error", "context_length_exceeded",
                  "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens."
                  if flavor == "openai" else "prompt is too long: 9000 tokens > 8192 maximum"),
            # like the real services, the message echoes the key it got (the runner must redact it)
            401: ("authentication_error", "invalid_api_key", f"Incorrect API key provided: {self._key}."),
            403: ("permission_error", "forbidden", "Your key may not use this model."),
            429: ("rate_limit_error", "rate_limit_exceeded", "Rate limit reached; retry later."),
            500: ("api_error", "server_error", "The server had an error."),
            529: ("overloaded_error", "overloaded", "Overloaded"),
        }
        typ, code, msg = kinds[status]
        if flavor == "anthropic":
            obj: dict[str, Any] = {"type": "error", "error": {"type": typ, "message": msg}}
        else:
            obj = {"error": {"message": msg, "type": typ, "param": None, "code": code}}
        self._send_json(status, obj, headers)

    def _fault(self, flavor: str, fault: str, body: dict[str, Any], text: str) -> bool:
        """Serve a fault; True when the request is finished (no normal answer)."""
        api = self.api
        if fault in ("429",):
            ms = api.retry_after_ms
            self._error(flavor, 429, {"retry-after-ms": str(ms), "retry-after": str(max(1, round(ms / 1000)))})
        elif fault in ("500", "529", "401", "403"):
            self._error(flavor, int(fault))
        elif fault == "400-context":
            self._error(flavor, 400)
        elif fault == "400-param":  # a parameter this model refuses: the same for every prompt
            if flavor == "anthropic":
                obj: dict[str, Any] = {"type": "error", "error": {
                    "type": "invalid_request_error", "message": "temperature: Extra inputs are not permitted"}}
            else:
                obj = {"error": {"message": "Unsupported value: 'temperature' does not support 0 with this model.",
                                 "type": "invalid_request_error", "param": "temperature", "code": "unsupported_value"}}
            self._send_json(400, obj)
        elif fault == "hang":
            api._stop.wait(api.hang_s)
            self._reset()
        elif fault == "reset":
            self._reset()
        elif fault == "malformed":
            self._send(200, b'{"id": "chatcmpl-fake", "choices": [{"message": ')
        elif fault == "empty":
            self._send_json(200, self._ok(flavor, body, text, "", refusal=None))
        elif fault == "refusal":
            self._send_json(200, self._ok(flavor, body, text, None, refusal="I can't help with that."))
        else:
            return False
        return True


def main() -> None:
    ap = argparse.ArgumentParser(description="biasmed's loopback OpenAI/Anthropic server")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    args = ap.parse_args()
    api = FakeAPI(latency=args.latency).start(args.port)
    print(f"PORT {api._server.server_address[1]}", flush=True)  # type: ignore[union-attr]
    try:
        sys.stdin.read()  # serve until the parent closes our stdin (or kills us)
    finally:
        api.stop()


if __name__ == "__main__":
    main()
