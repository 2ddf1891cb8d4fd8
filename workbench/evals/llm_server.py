"""Serve a local causal LM through OpenAI's chat-completions API, on localhost: what the tests of the endpoint path
talk to, and a way to share one loaded explainer between runs.

    python -m workbench.evals.llm_server --model smollm2-135m --models-dir store/models --port 8000
    workbench explain --store store/ --dict demo-topk --endpoint http://127.0.0.1:8000/v1 --model smollm2-135m

It answers POST /v1/chat/completions (messages, max_tokens, temperature 0, logprobs with top_logprobs for the first
token) and GET /v1/models; one request at a time. It is not a production server: use vLLM or ollama for that.
"""

from __future__ import annotations

import argparse
import json
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import torch

from workbench.evals.llm import LocalLM


def make_handler(llm: LocalLM):
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args):  # quiet: the tests read stdout
            pass

        def do_GET(self):
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": llm.name, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self):
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            messages, max_tokens = body["messages"], int(body.get("max_tokens") or 64)
            choice: dict = {"index": 0, "finish_reason": "stop"}
            if body.get("logprobs") and max_tokens == 1:
                with torch.no_grad():
                    ids = torch.tensor([llm._ids(messages)], device=llm.model.device)
                    logits = torch.log_softmax(llm.model(ids).logits[0, -1].float(), -1)
                top = logits.topk(int(body.get("top_logprobs") or 5))
                # "0" and "1" are always offered, so a scorer can read them even when neither is in the top few.
                candidates = dict(zip(top.indices.tolist(), top.values.tolist()))
                candidates.update({i: logits[i].item() for i in llm.answer_ids})
                entries = [{"token": llm.tokenizer.decode([i]), "logprob": v} for i, v in candidates.items()]
                best = max(entries, key=lambda e: e["logprob"])
                choice["message"] = {"role": "assistant", "content": best["token"]}
                choice["logprobs"] = {"content": [{**best, "top_logprobs": entries}]}
            else:
                choice["message"] = {"role": "assistant", "content": llm.complete(messages, max_tokens)}
            self.server.requests += 1  # type: ignore[attr-defined]
            self._send(200, {"id": f"wb-{time.time_ns()}", "object": "chat.completion", "model": llm.name,
                             "choices": [choice]})  # fmt: skip

    return Handler


def serve(llm: LocalLM, port: int, host: str = "127.0.0.1") -> HTTPServer:
    server = HTTPServer((host, port), make_handler(llm))
    server.requests = 0  # type: ignore[attr-defined]
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="registry name, HF folder or hub id")
    parser.add_argument("--models-dir", default="store/models", help="where registry models are built")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    server = serve(LocalLM(args.model, args.models_dir, args.device), args.port)
    print(f"serving {args.model} on http://127.0.0.1:{args.port}/v1", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
