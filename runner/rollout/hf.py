"""``hf`` engine: batched ``transformers`` generation on CPU or GPU, one seeded random stream per request.

Sampling goes through :class:`PerRequestSampler`, the last logits processor: it applies temperature, top-k
and top-p, then draws each row's token by inverse-CDF sampling with uniforms from that request's own
``torch.Generator`` (seeded by :func:`~runner.rollout.base.request_seed`), and hands ``generate`` a one-hot
score so that its greedy step takes exactly that token. A sample thus depends on its seed, prompt and the
model only: not on the batch it shares, the batch size or the global RNG, which is left untouched when the
call has a seed (without one, the call's seed is drawn from the global, run-seeded RNG). The engine shares
the training model object, so weight updates are visible without copying.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from runner.rollout.base import (
    Prompt,
    Rollout,
    SamplingParams,
    call_seed,
    request_seed,
    special_tokens_needed,
    truncate_at_stop,
)


class PerRequestSampler(LogitsProcessor):
    """A ``transformers`` logits processor that samples every row from its own generator.

    Row ``r`` draws its token at step ``t`` from the processed distribution (temperature, then top-k, then
    top-p, as vLLM's sampler) with the uniform ``U[r, t]`` by inverse CDF; ``logprobs[r, t]`` keeps the
    token's log-probability under that distribution. Returned scores are 0 at the drawn token and -inf
    elsewhere, so greedy decoding (``do_sample=False``) emits it.
    """

    def __init__(self, seeds: Sequence[int], max_new_tokens: int, prompt_len: int, temperature: float,
                 top_k: int = 0, top_p: float = 1.0, device: Any = "cpu"):
        from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

        self.uniforms = torch.stack([torch.rand(max_new_tokens, generator=torch.Generator().manual_seed(s),
                                                dtype=torch.float64) for s in seeds]).to(device)
        self.logprobs = torch.zeros(len(seeds), max_new_tokens, device=device)
        self.prompt_len, self.temperature = prompt_len, temperature
        self.warpers = [TopKLogitsWarper(top_k)] if top_k > 0 else []
        self.warpers += [TopPLogitsWarper(top_p)] if top_p < 1 else []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1] - self.prompt_len
        if t >= self.uniforms.shape[1]:  # a look-ahead step that generate() undoes
            return scores
        scores = scores.float() / self.temperature
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        logp = scores.log_softmax(-1)
        cdf = logp.double().exp().cumsum(-1)
        u = self.uniforms[:, t:t + 1] * cdf[:, -1:]
        token = torch.searchsorted(cdf, u, right=True).clamp_(max=scores.shape[-1] - 1)
        self.logprobs[:, t] = logp.gather(-1, token).squeeze(-1)
        return torch.full_like(scores, float("-inf")).scatter_(-1, token, 0.0)


class HFEngine:
    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, hardware_cfg: Any = None, batch_size: int = 64, **_: Any):
        return cls(model, tokenizer, batch_size=batch_size)

    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        return self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    def update_weights(self, model: Any) -> None:
        if model is not self.model:
            self.model.load_state_dict(model.state_dict())

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Rollout]:
        out: list[Rollout] = []
        texts = [self.render(p) for p in prompts]
        seed = call_seed(params) if params.temperature > 0 else 0
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(texts), self.batch_size):
                out += self._generate_batch(texts[start:start + self.batch_size], start, params, seed)
        finally:
            self.model.train(was_training)
        return out

    def _generate_batch(self, batch: list[str], offset: int, params: SamplingParams, seed: int) -> list[Rollout]:
        tok = self.tokenizer
        enc = tok(batch, return_tensors="pt", padding=True,
                  add_special_tokens=special_tokens_needed(tok, batch)).to(self.model.device)
        prompt_len = enc["input_ids"].shape[1]
        rows = {k: v.repeat_interleave(params.n, dim=0) for k, v in enc.items()}  # row i * n + j: copy j of prompt i
        sampler = None
        if params.temperature > 0:
            seeds = [request_seed(seed, offset + i, j) for i in range(len(batch)) for j in range(params.n)]
            sampler = PerRequestSampler(seeds, params.max_new_tokens, prompt_len, params.temperature,
                                        params.top_k, params.top_p, self.model.device)
        gen = self.model.generate(
            **rows,
            max_new_tokens=params.max_new_tokens,
            do_sample=False,  # greedy, or greedy over the sampler's one-hot scores
            temperature=None, top_p=None, top_k=None,
            logits_processor=LogitsProcessorList([sampler] if sampler else []),
            output_scores=sampler is None,
            return_dict_in_generate=True,
            pad_token_id=tok.pad_token_id,
            eos_token_id=[tok.eos_token_id, *params.stop_token_ids],
        )
        new_ids = gen.sequences[:, prompt_len:]
        if sampler is None:  # greedy: log-probabilities of the argmax tokens under the model's distribution
            logp = torch.stack(gen.scores, dim=1).float().log_softmax(-1)
            token_logp = logp.gather(-1, new_ids.unsqueeze(-1)).squeeze(-1)
        else:
            token_logp = sampler.logprobs
        rollouts = []
        for row in range(new_ids.shape[0]):
            i, j = divmod(row, params.n)
            ids = new_ids[row].tolist()
            finish = "length"
            stops = {tok.eos_token_id, *params.stop_token_ids}
            end = next((k for k, t in enumerate(ids) if t in stops), None)
            if end is not None:
                ids = ids[: end + 1]
                finish = "stop"
            text = tok.decode(ids, skip_special_tokens=True)
            if params.stop:
                ids, text, hit = self._cut_at_stop(ids, text, params.stop)
                finish = "stop" if hit else finish
            mask = enc["attention_mask"][i].bool()
            rollouts.append(Rollout(
                prompt_index=offset + i, sample_index=j, text=text, token_ids=ids,
                logprobs=token_logp[row, : len(ids)].tolist(), finish_reason=finish,
                prompt_token_ids=enc["input_ids"][i][mask].tolist(),
            ))
        return rollouts

    def _cut_at_stop(self, ids: list[int], text: str, stop: Sequence[str]) -> tuple[list[int], str, bool]:
        cut_text, hit = truncate_at_stop(text, stop)
        if not hit:
            return ids, text, False
        for k in range(1, len(ids) + 1):  # shortest token prefix whose text reaches the stop string
            if truncate_at_stop(self.tokenizer.decode(ids[:k], skip_special_tokens=True), stop)[1]:
                return ids[:k], cut_text, True
        return ids, cut_text, True
