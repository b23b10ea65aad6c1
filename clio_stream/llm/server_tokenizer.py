"""A vLLM server's chat template as a tokenizer, for facets whose own prompt function applies it (the seed's).

A seed prompt function calls ``tokenizer.apply_chat_template(messages, tokenize=False, ...)`` and sends the
text it gets. Against a server there may be no local copy of the model's tokenizer (a hub model on a GPU box):
vLLM's ``/tokenize`` renders the messages with the model's own template (``chat_template_kwargs`` included)
and ``/detokenize`` turns the tokens back into the text, so the prompt is exactly what the server would build.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, Mapping, Sequence

import httpx


class ServerTokenizer:
    """``apply_chat_template`` and ``encode``/``decode`` answered by a vLLM server (``/tokenize``, ``/detokenize``)."""

    def __init__(self, base_url: str, model: str, *, api_key: str = "EMPTY", timeout_s: float = 60.0) -> None:
        self.root = re.sub(r"/v1/?$", "", base_url.rstrip("/"))
        self.model = model
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.timeout_s = timeout_s

    def _post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        r = httpx.post(f"{self.root}{path}", json={"model": self.model, **body}, headers=self.headers,
                       timeout=self.timeout_s)
        if r.status_code in (404, 405):
            raise RuntimeError(f"{self.root} has no {path}: a facet's own prompt function needs a vLLM server "
                               "(or a local copy of the model's tokenizer: give llm_model as a folder)")
        r.raise_for_status()
        return r.json()

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], tokenize: bool = True,
                            add_generation_prompt: bool = False, continue_final_message: bool = False,
                            **template_kwargs: Any) -> Any:
        """The messages through the server's chat template: token ids, or the text when ``tokenize=False``."""
        tokens = self._template_tokens(json.dumps(list(messages), sort_keys=True), add_generation_prompt,
                                       continue_final_message, json.dumps(template_kwargs, sort_keys=True))
        return self.decode(tokens) if not tokenize else list(tokens)

    @functools.lru_cache(maxsize=256)  # noqa: B019 - seed prompt builders render one template many times
    def _template_tokens(self, messages: str, add_generation_prompt: bool, continue_final_message: bool,
                         template_kwargs: str) -> tuple[int, ...]:
        body = {"messages": json.loads(messages), "add_generation_prompt": add_generation_prompt,
                "continue_final_message": continue_final_message, "add_special_tokens": False,
                "chat_template_kwargs": json.loads(template_kwargs) or None}
        return tuple(self._post("/tokenize", body)["tokens"])

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self._post("/tokenize", {"prompt": text, "add_special_tokens": add_special_tokens})["tokens"])

    def decode(self, tokens: Sequence[int], **_: Any) -> str:
        return str(self._post("/detokenize", {"tokens": list(tokens)})["prompt"])
