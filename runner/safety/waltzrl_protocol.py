"""WaltzRL step 1, the collaboration protocol: who says what to whom (arXiv 2510.08240).

The conversation agent π_c answers the prompt (c_0). The feedback agent π_f reads (prompt, c_t) and writes
JSON ``{"reasoning", "unsafe", "overrefuse", "feedback"}``. Only if a label fires does the feedback text go
back to π_c, which revises (c_{t+1}); at most ``t_max`` feedback rounds. Malformed JSON is counted and never
triggers a revision. At inference both agents are deployed (:func:`collaborative_system`): the revision is
used only when π_f flags the answer.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.rollout.base import SamplingParams
from runner.safety.evaluate import System, SystemResponse

Messages = list[dict[str, str]]



@dataclass
class Turn:
    """One generated turn: its text and, for training, the tokens the agent saw and produced."""

    text: str
    prompt_ids: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)


Agent = Callable[[Sequence[Messages]], list[Turn]]
"""An agent maps a batch of chat conversations to one turn each (an engine, or a scripted function)."""


END_OF_TURN_TOKENS = ("<|end|>", "<|eot_id|>", "<|im_end|>")  # tiny chat template, Llama 3, ChatML


def end_of_turn_ids(tokenizer: Any) -> set[int]:
    """Token ids that end an assistant turn: EOS and the chat template's end-of-turn token."""
    vocab = tokenizer.get_vocab()
    return {tokenizer.eos_token_id} | {vocab[t] for t in END_OF_TURN_TOKENS if t in vocab}


def engine_agent(engine: Any, params: SamplingParams, tokenizer: Any = None) -> Agent:
    """An agent backed by a rollout engine (``hf`` or ``vllm``), sampling with ``params``.

    With ``tokenizer``, the engine also stops at the chat template's end-of-turn token (multi-turn chat
    models may go on to write the next user turn); the kept tokens are what the agent is trained on.
    """
    if tokenizer is not None:
        stop_ids = sorted(end_of_turn_ids(tokenizer) - {tokenizer.eos_token_id})
        params = dataclasses.replace(params, stop_token_ids=sorted({*params.stop_token_ids, *stop_ids}))

    def act(batch: Sequence[Messages]) -> list[Turn]:
        if not batch:
            return []
        rollouts = sorted(engine.generate(list(batch), params), key=lambda r: (r.prompt_index, r.sample_index))
        return [Turn(r.text, list(r.prompt_token_ids), list(r.token_ids)) for r in rollouts]

    return act


def single_agent_system(agent: Agent, protocol: Any) -> System:
    """The conversation agent alone (the base and single-model RL systems)."""

    def respond(prompts: Sequence[str]) -> list[SystemResponse]:
        turns = agent([conversation_messages(p, [], [], protocol) for p in prompts])
        return [SystemResponse(t.text) for t in turns]

    return respond


@dataclass(frozen=True)
class Feedback:
    """A parsed feedback message."""

    reasoning: str
    unsafe: bool
    overrefuse: bool
    feedback: str

    @property
    def flagged(self) -> bool:
        return self.unsafe or self.overrefuse


def parse_feedback(text: str) -> Feedback | None:
    """The first JSON object in ``text`` with the four keys of the right types, or None (malformed)."""
    start = text.find("{")
    if start < 0:
        return None
    try:
        obj, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    r, u, o, f = (obj.get(k) for k in ("reasoning", "unsafe", "overrefuse", "feedback"))
    if not (isinstance(r, str) and isinstance(u, bool) and isinstance(o, bool) and isinstance(f, str)):
        return None
    return Feedback(r, u, o, f)


def conversation_messages(prompt: str, responses: Sequence[str], feedbacks: Sequence[str],
                          protocol: Any) -> Messages:
    """π_c's view: the prompt, then each earlier answer followed by the feedback on it."""
    sp = protocol.conversation_system_prompt
    msgs: Messages = ([{"role": "system", "content": sp}] if sp else []) + [{"role": "user", "content": prompt}]
    for c, f in zip(responses, feedbacks):
        msgs += [{"role": "assistant", "content": c},
                 {"role": "user", "content": protocol.revision_template.format(feedback=f)}]
    return msgs


def feedback_messages(prompt: str, response: str, protocol: Any) -> Messages:
    """π_f's view (state p, c_t): the prompt and the answer under review."""
    sp = protocol.feedback_system_prompt
    user = protocol.feedback_template.format(prompt=prompt, response=response)
    return ([{"role": "system", "content": sp}] if sp else []) + [{"role": "user", "content": user}]


@dataclass
class Trajectory:
    """One episode: answers c_0..c_T, feedback turns f_0.., and their parses (None: malformed)."""

    prompt: str
    responses: list[Turn]
    feedbacks: list[Turn] = field(default_factory=list)
    parsed: list[Feedback | None] = field(default_factory=list)

    @property
    def final(self) -> str:
        return self.responses[-1].text

    @property
    def triggered(self) -> bool:
        """Whether feedback triggered at least one revision."""
        return len(self.responses) > 1

    @property
    def malformed(self) -> int:
        return sum(p is None for p in self.parsed)


def run_protocol(prompts: Sequence[str], conversation: Agent, feedback: Agent, protocol: Any) -> list[Trajectory]:
    """Answer → feedback → (revise only if a label fires) for up to ``protocol.t_max`` rounds, batched."""
    first = conversation([conversation_messages(p, [], [], protocol) for p in prompts])
    trajs = [Trajectory(p, [c]) for p, c in zip(prompts, first)]
    active = list(range(len(trajs)))
    for _ in range(protocol.t_max):
        if not active:
            break
        turns = feedback([feedback_messages(trajs[i].prompt, trajs[i].final, protocol) for i in active])
        revise = []
        for i, f in zip(active, turns):
            parsed = parse_feedback(f.text)
            trajs[i].feedbacks.append(f)
            trajs[i].parsed.append(parsed)
            if parsed is not None and parsed.flagged:
                revise.append(i)
        histories = [conversation_messages(trajs[i].prompt, [c.text for c in trajs[i].responses],
                                           [p.feedback for p in trajs[i].parsed if p is not None], protocol)
                     for i in revise]
        for i, c in zip(revise, conversation(histories)):
            trajs[i].responses.append(c)
        active = revise
    return trajs



def collaborative_system(conversation: Agent, feedback: Agent, protocol: Any) -> System:
    """Both agents deployed: the answer is revised only when the feedback agent flags it."""

    def respond(prompts: Sequence[str]) -> list[SystemResponse]:
        out = []
        for traj in run_protocol(prompts, conversation, feedback, protocol):
            first = traj.parsed[0] if traj.parsed else None
            out.append(SystemResponse(traj.final, {
                "feedback_triggered": traj.triggered, "feedback_malformed": traj.malformed > 0,
                "revisions": len(traj.responses) - 1, "first_response": traj.responses[0].text,
                "pred_unsafe": None if first is None else first.unsafe,
                "pred_overrefuse": None if first is None else first.overrefuse,
                "feedback_text": traj.feedbacks[0].text if traj.feedbacks else None,
                "feedback_message": None if first is None else first.feedback,
            }))
        return out

    return respond
