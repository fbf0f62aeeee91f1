"""A small deterministic OpenAI-compatible server, for tests that need parseable replies.

Run as ``python -m tests.standin_openai --script S.json --log L.jsonl [--api-key K]``; it
binds a free loopback port and prints ``PORT <n>`` first. ``running_standin`` starts it as
a subprocess and stops it.

The script injects trouble: ``{"delay_s": 0, "rules": [{"match": "text in the last user
message", "system": "text in the system message", "times": 2, "status": 429,
"retry_after": "0", "reply": "...", "finish_reason": "length", "raw": "not json",
"delay_s": 1.5}]}``; the first rule that matches and has ``times`` left answers. Without
a rule, the reply follows from the request:

- a judge prompt ("[Assistant 1]"): "8 S" where S is 8 if the candidate equals the
  reference, 2 if it is empty, else 6;
- an ensemble prompt ("[Answer 2]"): "The answer is X." with Answer 2's letter;
- multiple choice (lettered options): the longest option's letter ("X" when asked for
  the letter directly, else "... The answer is X.");
- a teacher prompt (object lines ``name: [x1, y1, x2, y2]``): a well-formed reply of the
  type named in the system message ("complex reasoning", "detailed description", else
  conversation) that names the objects;
- anything else: "yes".

Every request is logged as one JSON line (status, what answered, the last user text,
requests in flight when it arrived).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_OBJECT = re.compile(r"^(.+?): \[[\d.]+, [\d.]+, [\d.]+, [\d.]+\]$", re.MULTILINE)
_OPTION = re.compile(r"(?:^([A-J])\. (.+)$)|(?:\(([A-J])\) (.+?)(?= \([A-J]\) |$))", re.MULTILINE)


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(p.get("text", "") for p in content or [] if p.get("type") == "text")


def _listing(names: list[str]) -> str:
    names = [f"a {n}" for n in names]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def teacher_reply(system: str, user: str) -> str:
    names = _OBJECT.findall(user)
    first_caption = user.splitlines()[0].rstrip(".")
    n = len(names)
    be = "is" if n == 1 else "are"
    if "complex reasoning" in system:
        return ("Question:\nWhat could someone do with the things in this picture?\n===\nAnswer:\n"
                f"There {be} {_listing(names)} in view. Because {'it is' if n == 1 else 'they are'} "
                "close at hand, a person could pick them up and arrange them, so that is the most "
                "likely thing to happen next.")
    if "detailed description" in system:
        return (f"The picture shows {first_caption[0].lower()}{first_caption[1:]}. "
                f"In it there {be} {_listing(names)}, each clearly visible in the scene.")
    return (f"Question:\nWhat can you see in this picture?\n===\nAnswer:\nI can see {_listing(names)}.\n===\n"
            f"Question:\nHow many objects are there?\n===\nAnswer:\nThere {be} {n} in the picture.\n===")


def default_reply(system: str, user: str) -> tuple[str, str]:
    if "[Assistant 1]" in user:
        reference = user.split("[Assistant 1]\n", 1)[1].split("\n[End of Assistant 1]", 1)[0].strip()
        candidate = user.split("[Assistant 2]\n", 1)[1].split("\n[End of Assistant 2]", 1)[0].strip()
        score = 8 if candidate == reference else 2 if not candidate else 6
        return "judge", f"8 {score}\nAssistant 1 is accurate; Assistant 2 is rated on how close it comes."
    if "[Answer 2]" in user:
        second = user.split("[Answer 2]\n", 1)[1].split("[End of Answer 2]", 1)[0]
        letter = re.findall(r"answer is \(?([A-J])", second) or re.findall(r"^\s*([A-J])\b", second) or ["A"]
        return "ensemble", f"Having weighed both, the answer is {letter[-1]}."
    options = [(m[0] or m[2], m[1] or m[3]) for m in _OPTION.findall(user)]
    if len(options) >= 2:
        letter = max(options, key=lambda o: len(o[1].strip()))[0]
        if "letter from the given choices directly" in user:
            return "mcq", letter
        return "mcq", f"Let me think about each option. The answer is {letter}."
    if _OBJECT.search(user) and system:
        return "teacher", teacher_reply(system, user)
    return "echo", "yes"


class State:
    def __init__(self, script: dict, log_path: Path, api_key: str | None):
        self.script, self.api_key = script, api_key
        self.left = [rule.get("times", -1) for rule in script.get("rules", [])]
        self.lock = threading.Lock()
        self.log_path = log_path
        self.count = self.inflight = self.max_inflight = 0

    def pick(self, system: str, user: str) -> tuple[int | None, dict]:
        with self.lock:
            for i, rule in enumerate(self.script.get("rules", [])):
                if rule.get("match", "") in user and rule.get("system", "") in system and self.left[i] != 0:
                    self.left[i] -= 1
                    return i, rule
        return None, {}

    def record(self, entry: dict) -> None:
        with self.lock, self.log_path.open("a") as log:
            log.write(json.dumps(entry) + "\n")


class Handler(BaseHTTPRequestHandler):
    state: State
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, body: bytes | dict, headers: dict | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        key = self.state.api_key
        if key and self.headers.get("Authorization") != f"Bearer {key}":
            self._send(401, {"error": {"message": "bad API key", "type": "authentication_error"}})
            return False
        return True

    def do_GET(self):
        if self.path.endswith("/models") and self._authorised():
            self._send(200, {"object": "list", "data": [{"id": "standin", "object": "model"}]})
        elif self.path == "/stats":
            self._send(200, {"requests": self.state.count, "max_inflight": self.state.max_inflight})
        elif not self.path.endswith("/models"):
            self._send(404, {"error": {"message": "no such route"}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if not self._authorised():
            return
        state = self.state
        with state.lock:
            state.count += 1
            state.inflight += 1
            state.max_inflight = max(state.max_inflight, state.inflight)
            n, inflight = state.count, state.inflight
        try:
            self._answer(body, n, inflight)
        finally:
            with state.lock:
                state.inflight -= 1

    def _answer(self, body: dict, n: int, inflight: int) -> None:
        messages = body.get("messages", [])
        system = "\n".join(_text(m.get("content")) for m in messages if m.get("role") == "system")
        users = [m for m in messages if m.get("role") == "user"]
        user = _text(users[-1].get("content")) if users else ""
        rule_index, rule = self.state.pick(system, user)
        time.sleep(rule.get("delay_s", self.state.script.get("delay_s", 0)))
        entry = {"n": n, "inflight": inflight, "rule": rule_index, "system": system[:80], "user": user[:4000],
                 "model": body.get("model"), "max_tokens": body.get("max_tokens"), "images": sum(isinstance(m.get("content"), list) and any(
                     p.get("type") == "image_url" for p in m["content"]) for m in users)}
        if "status" in rule:
            entry.update(status=rule["status"], answered="fault")
            self.state.record(entry)
            headers = {"Retry-After": rule["retry_after"]} if "retry_after" in rule else {}
            error = {"error": {"message": f"injected {rule['status']}", "type": "injected"}}
            self._send(rule["status"], error, headers)
            return
        if "raw" in rule:
            entry.update(status=200, answered="raw")
            self.state.record(entry)
            self._send(200, rule["raw"].encode())
            return
        answered, text = ("rule", rule["reply"]) if "reply" in rule else default_reply(system, user)
        entry.update(status=200, answered=answered, reply=text[:400])
        self.state.record(entry)
        prompt_tokens = sum(len(_text(m.get("content")).split()) for m in messages)
        self._send(200, {
            "id": f"chatcmpl-standin-{n}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": rule.get("finish_reason", "stop")}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                      "total_tokens": prompt_tokens + len(text.split())},
        })

    def log_message(self, *args):
        pass


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--script", type=Path)
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--api-key")
    args = p.parse_args(argv)
    script = json.loads(args.script.read_text()) if args.script else {}
    handler = type("ScriptedHandler", (Handler,), {"state": State(script, args.log, args.api_key)})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    print(f"PORT {httpd.server_address[1]}", flush=True)
    httpd.serve_forever()


class Standin:
    def __init__(self, base_url: str, log_path: Path):
        self.base_url, self.log_path = base_url, log_path

    def requests(self) -> list[dict]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]


@contextmanager
def running_standin(workdir: Path, script: dict | None = None, api_key: str | None = None):
    """Start the stand-in as a subprocess; yield a ``Standin`` (``base_url`` ends in /v1)."""
    workdir.mkdir(parents=True, exist_ok=True)
    script_path, log_path = workdir / "standin-script.json", workdir / "standin-requests.jsonl"
    script_path.write_text(json.dumps(script or {}))
    log_path.write_text("")
    cmd = [sys.executable, "-m", "tests.standin_openai", "--script", str(script_path), "--log", str(log_path)]
    if api_key:
        cmd += ["--api-key", api_key]
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root)})
    try:
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"stand-in did not start (exit {proc.poll()}): {line!r}")
        yield Standin(f"http://127.0.0.1:{int(line.split()[1])}/v1", log_path)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


if __name__ == "__main__":
    main()
