"""Federated learning: event-driven simulator, clients, server modes (FedAvg/FedAvgM, FedAsync, FedBuff), backends.

- ``population``: device profiles, availability and durations derived from (seed, client id);
- ``client``: local SGD, one by one or vectorised with ``torch.func.vmap``; the update-codec hook (what a client
  uploads in place of its update);
- ``simulator``: the virtual clock and event loop;
- ``aggregators``: staleness weights, server optimisers and the server modes;
- ``private``: user-level DP and secure aggregation of a server mode's sum (``secagg``: Bonawitz et al.'s
  pairwise masking; ``trusted_buffer``: Papaya's enclave);
- ``backends``: client training in this process or on Ray (``dist`` extra);
- ``recipes``: the ``fedbuff`` and ``papaya`` comparisons;
- ``fedsynth``: FedSynth's synthetic-set upload and random masking (update codecs), and the ``fedsynth`` recipe.
"""
