"""A loopback HTTP server that speaks the endpoints synth uses (chat completions, files, batches: create, retrieve
and the paged list) to the real `openai` client, with faults injected on demand, and counts of what it billed."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections import Counter
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class FakeOpenAI:
    def __init__(self):
        self.faults: list[dict] = []  # consumed by chat calls in order: {"status": 429, "retry_after": "0.2"} ...
        self.billed: Counter = Counter()  # successful completions per prompt hash (sync and batch)
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}  # in creation order; listed newest first, as the real API does
        self.batch_requests: Counter = Counter()  # custom id -> batches created with it (each one is billed)
        self.create_faults: list[dict] = []  # consumed by batches.create in order: {} none, {"status": 500}
        # refused and nothing made, {"sleep": s} made (and billed) but answered s seconds late
        self.list_calls = 0
        self.polls_to_complete = 1
        self.batch_fail_ids: set[str] = set()  # custom ids that fail once in a batch
        self.expire_next_batch = False
        self.length_if = "TRUNCATE-ME"  # a prompt containing this ends with finish_reason=length
        self.empty_if = "EMPTY-ME"  # ... gets an empty completion
        self.seen_headers: list[dict] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *a):
                pass

            def _send(self, code, obj=None, raw=None, headers=None):
                data = raw if raw is not None else json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.seen_headers.append(dict(self.headers))
                if self.path == "/v1/chat/completions":
                    return server._chat(self, json.loads(raw))
                if self.path == "/v1/files":
                    msg = BytesParser(policy=email_policy).parsebytes(
                        b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw)
                    parts = {p.get_param("name", header="content-disposition"): p for p in msg.iter_parts()}
                    data = parts["file"].get_payload(decode=True)
                    fid = server._add_file(data, parts["purpose"].get_payload(decode=True).decode())
                    return self._send(200, server.files[fid]["meta"])
                if self.path == "/v1/batches":
                    fault = server.create_faults.pop(0) if server.create_faults else None
                    if fault and "status" in fault:  # refused before anything was made
                        return self._send(fault["status"], {"error": {"message": f"injected {fault['status']}",
                                                                      "type": "server_error"}})
                    batch = server._create_batch(json.loads(raw))
                    if fault and "sleep" in fault:
                        time.sleep(fault["sleep"])  # made (and billed) but answered after the client's timeout
                    return self._send(200, batch)
                self._send(404, {"error": {"message": "not found"}})

            def do_GET(self):
                url = urlsplit(self.path)
                parts = url.path.strip("/").split("/")
                if parts == ["v1", "batches"]:
                    return self._send(200, server._list_batches(parse_qs(url.query)))
                if parts[:2] == ["v1", "files"] and len(parts) == 4 and parts[3] == "content":
                    return self._send(200, raw=server.files[parts[2]]["data"])
                if parts[:2] == ["v1", "batches"] and len(parts) == 3:
                    return self._send(200, server._poll_batch(parts[2]))
                self._send(404, {"error": {"message": "not found"}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()

    # ---------------------------------------------------------------------------------------------- behaviour
    @staticmethod
    def prompt_key(body: dict) -> str:
        return hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest()[:16]

    def completion(self, body: dict) -> dict:
        text = body["messages"][-1]["content"]
        key = self.prompt_key(body)
        with self._lock:
            self.billed[key] += 1
        content = "" if self.empty_if in text else f"thought {key}: the steps behind the passage."
        finish = "length" if self.length_if in text else "stop"
        return {"id": "chatcmpl-" + uuid.uuid4().hex[:8], "object": "chat.completion", "created": int(time.time()),
                "model": body["model"], "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                                     "finish_reason": finish, "logprobs": None}],
                "usage": {"prompt_tokens": len(text) // 4 + 10, "completion_tokens": 12,
                          "total_tokens": len(text) // 4 + 22}}

    def _chat(self, handler, body):
        fault = None
        with self._lock:
            if self.faults:
                fault = self.faults.pop(0)
        if fault and "sleep" in fault:
            time.sleep(fault["sleep"])
        if fault and "status" in fault:
            headers = {"Retry-After": fault["retry_after"]} if "retry_after" in fault else {}
            return handler._send(fault["status"], {"error": {"message": f"injected {fault['status']}",
                                                             "type": "server_error"}}, headers=headers)
        handler._send(200, self.completion(body))

    def _add_file(self, data: bytes, purpose: str) -> str:
        fid = "file-" + uuid.uuid4().hex[:10]
        self.files[fid] = {"data": data, "meta": {"id": fid, "object": "file", "bytes": len(data),
                                                  "created_at": int(time.time()), "filename": "f.jsonl",
                                                  "purpose": purpose, "status": "processed"}}
        return fid

    def _create_batch(self, req: dict) -> dict:
        bid = "batch_" + uuid.uuid4().hex[:10]
        self.batches[bid] = {"id": bid, "object": "batch", "endpoint": req["endpoint"], "errors": None,
                             "input_file_id": req["input_file_id"], "completion_window": req["completion_window"],
                             "status": "in_progress", "output_file_id": None, "error_file_id": None,
                             "created_at": int(time.time()), "request_counts": {"total": 0, "completed": 0,
                                                                                 "failed": 0},
                             "metadata": req.get("metadata"), "_polls": 0, "_expire": self.expire_next_batch}
        self.expire_next_batch = False
        for line in self.files[req["input_file_id"]]["data"].decode().splitlines():
            if line.strip():
                self.batch_requests[json.loads(line)["custom_id"]] += 1
        return self._public(bid)

    def _list_batches(self, query: dict) -> dict:
        """GET /v1/batches?limit=&after=: newest first, `limit` (1..100, default 20) after the batch `after`."""
        self.list_calls += 1
        limit = max(1, min(100, int(query.get("limit", ["20"])[0])))
        ids = list(reversed(self.batches))
        after = query.get("after", [None])[0]
        start = ids.index(after) + 1 if after in ids else 0
        page = [self._public(bid) for bid in ids[start:start + limit]]
        return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None, "has_more": start + limit < len(ids)}

    def _public(self, bid: str) -> dict:
        return {k: v for k, v in self.batches[bid].items() if not k.startswith("_")}

    def _poll_batch(self, bid: str) -> dict:
        b = self.batches[bid]
        if b["status"] != "in_progress":
            return self._public(bid)
        b["_polls"] += 1
        if b["_polls"] < self.polls_to_complete:
            return self._public(bid)
        lines = [json.loads(l) for l in self.files[b["input_file_id"]]["data"].decode().splitlines() if l.strip()]
        if b["_expire"]:
            lines = lines[: len(lines) // 2]  # an expired batch returns what it finished
        out, err = [], []
        for item in lines:
            cid = item["custom_id"]
            if cid in self.batch_fail_ids:
                self.batch_fail_ids.discard(cid)
                err.append({"id": "r", "custom_id": cid, "response": {"status_code": 500, "body": {}},
                            "error": {"code": "server_error", "message": "injected failure"}})
            else:
                out.append({"id": "r", "custom_id": cid, "response": {"status_code": 200,
                                                                      "body": self.completion(item["body"])},
                            "error": None})
        b["output_file_id"] = self._add_file("".join(json.dumps(x) + "\n" for x in out).encode(), "batch_output")
        if err:
            b["error_file_id"] = self._add_file("".join(json.dumps(x) + "\n" for x in err).encode(), "batch_output")
        b["status"] = "expired" if b["_expire"] else "completed"
        b["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}
        return self._public(bid)
