"""Short texts in several domains with controllable mixtures: a toy world whose true ranking is known.

Domains: ``jobs`` (job posts), ``forum`` (forum questions), ``microblog`` (microblog posts) and ``code``
(code comments), each from its own templates and vocabulary, deterministic in the seed. A *mixture* maps
domains to weights. Federated clients draw their own mixture from a Dirichlet around the population
mixture (heterogeneous clients), then their texts; public candidates are plain samples of a mixture.
The distance of a candidate's mixture to the private one (total variation) is the ground-truth ranking.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

import numpy as np

_ROLES = ["backend engineer", "data analyst", "nurse", "warehouse associate", "product designer", "accountant",
          "sales representative", "teacher", "electrician", "marketing manager", "line cook", "truck driver"]
_COMPANIES = ["Acme Corp", "Northwind", "Blue Harbor Health", "Summit Logistics", "Brightpath Schools",
              "Greenleaf Foods", "Orbit Analytics", "Cedar & Co"]
_CITIES = ["Austin", "Denver", "Chicago", "Seattle", "Boston", "Atlanta", "Portland", "remote"]
_PERKS = ["competitive salary", "health insurance", "flexible hours", "401k matching", "paid time off",
          "tuition support", "a signing bonus", "weekly pay"]
_REQS = ["3+ years of experience", "a valid driver's license", "strong communication skills",
         "a bachelor's degree", "experience with SQL", "the ability to lift 50 lbs", "team leadership experience"]

_TOPICS = ["my laptop", "the router", "my sourdough starter", "a used car", "my tomato plants", "the dishwasher",
           "my cat", "a rental lease", "my bike chain", "the home wifi", "my phone battery", "a job offer"]
_PROBLEMS = ["keeps shutting down", "makes a weird noise", "stopped working after an update", "smells strange",
             "is much slower than before", "won't turn on", "keeps dropping the connection", "looks damaged"]
_ASKS = ["Has anyone seen this before?", "What should I try first?", "Is it worth fixing?",
         "Any advice would be appreciated.", "Should I call a professional?", "What am I doing wrong?"]

_FEELINGS = ["so happy", "exhausted", "lowkey obsessed", "not ready", "honestly shocked", "vibing", "so done"]
_EVENTS = ["the game last night", "this rain", "monday mornings", "the new album", "my coffee order",
           "the concert", "this traffic", "the season finale", "my commute", "pizza friday"]
_TAGS = ["#blessed", "#mood", "#fail", "#weekend", "#tbt", "#nofilter", "#goals", "#relatable"]
_EMOJI = ["lol", "omg", "smh", "ugh", "yay", "brb", "tbh", "fr"]

_VERBS = ["Returns", "Computes", "Validates", "Parses", "Caches", "Normalizes", "Loads", "Serializes"]
_OBJECTS = ["the user record", "the config dict", "the request payload", "the token list", "the sparse matrix",
            "the retry budget", "the file handle", "the session state"]
_CONDS = ["if the key is missing", "when the buffer is full", "before the lock is released",
          "unless the cache is stale", "for every pending batch", "after the connection times out"]
_NOTES = ["TODO: handle unicode input.", "FIXME: this is O(n^2).", "NOTE: not thread safe.",
          "Raises ValueError on bad input.", "See issue 42 for context.", "Deprecated, use load_v2 instead."]


def _jobs(r: random.Random) -> str:
    return (f"{r.choice(_COMPANIES)} is hiring a {r.choice(_ROLES)} in {r.choice(_CITIES)}. "
            f"Requires {r.choice(_REQS)}. We offer {r.choice(_PERKS)} and {r.choice(_PERKS)}. Apply today!")


def _forum(r: random.Random) -> str:
    return (f"Question: {r.choice(_TOPICS)} {r.choice(_PROBLEMS)} since {r.choice(['yesterday', 'last week', 'May'])}. "
            f"I already tried restarting it. {r.choice(_ASKS)}")


def _microblog(r: random.Random) -> str:
    return (f"{r.choice(_EMOJI)} {r.choice(_FEELINGS)} about {r.choice(_EVENTS)} rn "
            f"{r.choice(_TAGS)} {r.choice(_TAGS)}")


def _code(r: random.Random) -> str:
    return (f"# {r.choice(_VERBS)} {r.choice(_OBJECTS)} {r.choice(_CONDS)}. "
            f"{r.choice(_NOTES)}")


DOMAINS: dict[str, Callable[[random.Random], str]] = {
    "jobs": _jobs, "forum": _forum, "microblog": _microblog, "code": _code,
}


def check_mixture(mixture: Mapping[str, float], what: str = "mixture") -> dict[str, float]:
    """Validate and normalise a domain mixture (weights ≥ 0, known domains, positive total)."""
    unknown = [d for d in mixture if d not in DOMAINS]
    if unknown:
        raise ValueError(f"{what}: unknown domain '{unknown[0]}' (allowed: {', '.join(DOMAINS)})")
    if any(float(w) < 0 for w in mixture.values()) or sum(float(w) for w in mixture.values()) <= 0:
        raise ValueError(f"{what}: weights must be >= 0 with a positive sum, got {dict(mixture)}")
    total = sum(float(w) for w in mixture.values())
    return {d: float(mixture.get(d, 0.0)) / total for d in DOMAINS}


def total_variation(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """Total-variation distance between two (normalised) domain mixtures."""
    p, q = check_mixture(p), check_mixture(q)
    return 0.5 * sum(abs(p[d] - q[d]) for d in DOMAINS)


def sample_texts(mixture: Mapping[str, float], n: int, seed: int) -> list[str]:
    """``n`` texts whose domains are drawn i.i.d. from ``mixture``."""
    p = check_mixture(mixture)
    r = random.Random(seed)
    names = list(DOMAINS)
    doms = r.choices(names, weights=[p[d] for d in names], k=n)
    return [DOMAINS[d](r) for d in doms]


def federated_clients(mixture: Mapping[str, float], num_clients: int, samples_per_client: int, seed: int,
                      concentration: float = 5.0) -> list[list[str]]:
    """Clients whose own mixtures ~ Dirichlet(concentration × mixture); each holds ``samples_per_client`` texts."""
    p = check_mixture(mixture)
    rng = np.random.default_rng(seed)
    alpha = np.array([p[d] for d in DOMAINS]) * concentration + 1e-3
    clients = []
    for i in range(num_clients):
        own = dict(zip(DOMAINS, rng.dirichlet(alpha)))
        clients.append(sample_texts(own, samples_per_client, seed * 1_000_003 + i))
    return clients
