"""``hf`` engine: batched ``transformers`` generation on CPU or GPU, seeded per call.

A call with ``params.seed`` runs under a forked torch RNG seeded with it, so it is reproducible and
leaves the training RNG untouched; without a seed it draws from the global (run-seeded) RNG. The
engine shares the training model object, so weight updates are visible without copying.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from runner.rollout.base import Prompt, Rollout, SamplingParams, special_tokens_needed, truncate_at_stop


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
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(texts), self.batch_size):
                batch = texts[start:start + self.batch_size]
                if params.seed is not None:
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(params.seed + start)
                        out += self._generate_batch(batch, start, params)
                else:
                    out += self._generate_batch(batch, start, params)
        finally:
            self.model.train(was_training)
        return out

    def _generate_batch(self, batch: list[str], offset: int, params: SamplingParams) -> list[Rollout]:
        tok = self.tokenizer
        enc = tok(batch, return_tensors="pt", padding=True,
                  add_special_tokens=special_tokens_needed(tok, batch)).to(self.model.device)
        greedy = params.temperature == 0
        gen = self.model.generate(
            **enc,
            max_new_tokens=params.max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else params.temperature,
            top_p=None if greedy else params.top_p,
            top_k=None if greedy else params.top_k,
            num_return_sequences=params.n,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=tok.pad_token_id,
            eos_token_id=[tok.eos_token_id, *params.stop_token_ids],
        )
        prompt_len = enc["input_ids"].shape[1]
        new_ids = gen.sequences[:, prompt_len:]
        # log-softmax of the processed scores: log-probabilities under the distribution actually sampled
        logp = torch.stack(gen.scores, dim=1).float().log_softmax(-1)
        token_logp = logp.gather(-1, new_ids.unsqueeze(-1)).squeeze(-1)
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
