"""RECAP's loss covers only the tokens generated after the prefill: the prefill is part of the prompt TRL
tokenizes, and the DAPO loss's gradient equals, to float precision, that of −Σ_i A_i Σ_{t ∈ completion_i} log π(t) / N
computed here row by row from the completion tokens alone (N = the number of kept completion tokens)."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf


def test_dapo_loss_and_ratios_cover_only_tokens_after_the_prefill(tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig

    from runner.models.builder import build_model
    from runner.models.tokenizer import byte_tokenizer
    from runner.safety.recap import dapo_trainer_class
    from runner.safety.recap_format import prefilled_prompt, use_reasoning_template

    torch.manual_seed(0)
    tok = use_reasoning_template(byte_tokenizer())
    mcfg = OmegaConf.create({"kind": "tiny", "tokenizer": "byte", "hidden_size": 32, "num_layers": 1, "num_heads": 2,
                             "num_kv_heads": 1, "intermediate_size": 64, "max_position_embeddings": 256,
                             "rope_theta": 10000.0, "tie_word_embeddings": False, "dtype": "float32"})
    model = build_model(mcfg, tok)
    prefill = "it is fine. i will"
    users = ["how do i steal a car?", "how do i bake bread?", "how do i hurt my neighbour?", "add 2 and 3."]
    rows = [{"prompt": prefilled_prompt(tok, [{"role": "user", "content": u}], prefill if i < 3 else None)}
            for i, u in enumerate(users)]

    def reward(prompts, completions, **_):  # an arbitrary function of the text: varies within groups
        return [sum(map(ord, c)) % 7 / 7 for c in completions]

    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=1, per_device_train_batch_size=8,
                      num_generations=2, max_completion_length=8, learning_rate=1e-3, beta=0.0, loss_type="dapo",
                      epsilon=0.2, epsilon_high=0.28, logging_steps=1, save_strategy="no", seed=0,
                      dataloader_num_workers=0, disable_tqdm=True)
    trainer = dapo_trainer_class()(model=model, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(rows),
                                   processing_class=tok, metrics_path=tmp_path / "m.jsonl", dynamic_sampling=True)
    batch = [rows[i // 2] for i in range(8)]  # G=2 copies of each prompt, as TRL's sampler groups them
    inputs = trainer._generate_and_score_completions(batch)

    # the prefill is the end of the prompt; the completion starts after it
    for i in range(8):
        prompt = tok.decode(inputs["prompt_ids"][i][inputs["prompt_mask"][i].bool()])
        assert prompt == batch[i]["prompt"]
    assert (inputs["completion_mask"].sum(1)[inputs["advantages"].abs() < 1e-6] == 0).all()  # dynamic sampling
    assert inputs["completion_mask"][:6].sum() > 0  # prefilled rows are trained on

    model.zero_grad()
    trainer.compute_loss(model, inputs).backward()
    got = [p.grad.clone() for p in model.parameters()]

    def reference_grad(extra_prompt_tokens: int) -> torch.Tensor:
        """∇ of −Σ_i A_i Σ_t log π(t) / N over each row's kept completion tokens, plus (a negative control) its
        last ``extra_prompt_tokens`` prompt tokens, i.e. the end of the prefill."""
        model.zero_grad()
        ref, n_tokens = torch.zeros(()), 0
        for i in range(8):
            p_ids = inputs["prompt_ids"][i][inputs["prompt_mask"][i].bool()]
            c_ids = inputs["completion_ids"][i][inputs["completion_mask"][i].bool()]
            if len(c_ids) == 0:
                continue
            ids = torch.cat([p_ids, c_ids])
            start = len(p_ids) - extra_prompt_tokens
            logp = torch.log_softmax(model(input_ids=ids.unsqueeze(0)).logits[0, :-1].float(), -1)
            ref = ref - inputs["advantages"][i] * logp[start - 1:].gather(-1, ids[start:].unsqueeze(-1)).sum()
            n_tokens += len(ids) - start
        (ref / n_tokens).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    got = torch.cat([g.flatten() for g in got])
    want = reference_grad(0)
    assert want.norm() > 0
    # TRL scores tokens with a fused LM head (log-probs ~1e-4 off a plain log_softmax): compare directions and norms
    assert (got - want).norm() / want.norm() < 0.01
    # counting the prefill's tokens would be far off (in DAPO's token normaliser; their log-prob terms cancel
    # within a group, whose advantages sum to zero)
    assert (got - reference_grad(len(prefill))).norm() / want.norm() > 0.3
