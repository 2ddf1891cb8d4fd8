"""The explainer and scorer LLMs of autointerp: a local Hugging Face causal LM, or any OpenAI-compatible endpoint
(vLLM, ollama, llama.cpp's server, a hosted API). Both answer the two questions autointerp asks:

    complete(messages, max_tokens)  the reply to a chat, greedy
    yes_probability(chats)          for each chat, P("1") / (P("0") + P("1")) of the reply's first token

The second is delphi's log-prob mode with one example per prompt: a weak model's bias towards one answer then
shows as a shifted probability rather than as unparseable lists.
"""

from __future__ import annotations

import json
import math
import os
import urllib.error
import urllib.request
from typing import Any, Protocol

import torch

from workbench.errors import EvaluationError

Chat = list[dict[str, str]]  # [{"role": "system" | "user" | "assistant", "content": ...}]
# SmolLM2's template (ChatML), for a tokenizer that carries none.
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class LLM(Protocol):
    name: str

    def complete(self, messages: Chat, max_tokens: int) -> str: ...

    def yes_probability(self, chats: list[Chat]) -> list[float]: ...


class LocalLM:
    """A causal LM from the model registry, a local HF folder, or the HF cache, run here."""

    def __init__(self, model: str, models_dir, device: str = "auto", dtype: str = "auto", batch_size: int = 8):
        from workbench.devices import resolve_placement
        from workbench.models import load_hf_model, resolve_model_dir

        self.name = model
        self.model, self.tokenizer = load_hf_model(
            resolve_model_dir(model, models_dir), resolve_placement(device, dtype)
        )
        self.model.eval()
        self.batch_size = batch_size
        if not getattr(self.tokenizer, "chat_template", None):
            self.tokenizer.chat_template = CHATML
        self.answer_ids = [self._single_token(text) for text in ("0", "1")]

    def _single_token(self, text: str) -> int:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise EvaluationError(
                f"The scorer's tokenizer splits '{text}' into {len(ids)} tokens; choose another scorer."
            )
        return ids[0]

    def _ids(self, messages: Chat) -> list[int]:
        # Rendered as text, then tokenised: tokenize=True returns a list in some transformers versions, an encoding
        # in others. The template carries its own special tokens.
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def complete(self, messages: Chat, max_tokens: int) -> str:
        ids = torch.tensor([self._ids(messages)], device=self.model.device)
        out = self.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        )
        return self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()

    @torch.no_grad()
    def yes_probability(self, chats: list[Chat]) -> list[float]:
        probabilities = []
        pad = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id or 0
        for start in range(0, len(chats), self.batch_size):
            sequences = [self._ids(chat) for chat in chats[start : start + self.batch_size]]
            width = max(len(s) for s in sequences)
            # Left padding with a mask, so every chat's last position is the same column.
            ids = torch.tensor([[pad] * (width - len(s)) + s for s in sequences], device=self.model.device)
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], device=self.model.device)
            positions = (mask.cumsum(1) - 1).clamp_min(0)
            logits = self.model(ids, attention_mask=mask, position_ids=positions).logits[:, -1].float()
            pair = torch.softmax(logits[:, self.answer_ids], dim=-1)
            probabilities += pair[:, 1].tolist()
        return probabilities


class EndpointLM:
    """An OpenAI-compatible chat-completions endpoint: `url` is its base (http://host:port/v1); the API key, if
    any, is read from the environment variable `key_env`."""

    def __init__(self, url: str, model: str, key_env: str = "OPENAI_API_KEY", timeout_s: float = 60.0):
        self.url = url.rstrip("/")
        self.name = model
        self.key = os.environ.get(key_env)
        self.key_env = key_env
        self.timeout_s = timeout_s

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        request = urllib.request.Request(
            f"{self.url}/chat/completions", data=json.dumps({"model": self.name, **body}).encode(), headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read()[:300].decode(errors="replace")
            hint = f" Set the API key in ${self.key_env}." if error.code in (401, 403) else ""
            raise EvaluationError(f"The endpoint {self.url} answered HTTP {error.code}: {detail}.{hint}") from None
        except (TimeoutError, urllib.error.URLError, ConnectionError) as error:
            reason = getattr(error, "reason", error)
            if isinstance(reason, TimeoutError):  # socket.timeout is TimeoutError since Python 3.10
                raise EvaluationError(
                    f"The endpoint {self.url} gave no answer within {self.timeout_s:g} s (--timeout). The features "
                    "finished so far are stored; run the same command again to continue."
                ) from None
            raise EvaluationError(
                f"Could not reach the endpoint {self.url} ({reason}). Is the server running? The features finished "
                "so far are stored; run the same command again to continue."
            ) from None
        except json.JSONDecodeError:
            raise EvaluationError(
                f"The endpoint {self.url} did not answer with JSON; is it OpenAI-compatible?"
            ) from None

    def complete(self, messages: Chat, max_tokens: int) -> str:
        reply = self._post({"messages": messages, "max_tokens": max_tokens, "temperature": 0})
        return (reply["choices"][0]["message"]["content"] or "").strip()

    def yes_probability(self, chats: list[Chat]) -> list[float]:
        probabilities = []
        for chat in chats:
            reply = self._post(
                {"messages": chat, "max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": 5}
            )
            choice = reply["choices"][0]
            candidates = ((choice.get("logprobs") or {}).get("content") or [{}])[0].get("top_logprobs") or []
            p = {c["token"].strip(): math.exp(c["logprob"]) for c in candidates if c["token"].strip() in ("0", "1")}
            if p:
                probabilities.append(p.get("1", 0.0) / (p.get("0", 0.0) + p.get("1", 0.0)))
            else:  # no log-probs offered: read the answer itself
                text = (choice["message"]["content"] or "").strip()
                probabilities.append(1.0 if text.startswith("1") else 0.0 if text.startswith("0") else 0.5)
        return probabilities
