"""Synchronous secure aggregation: pairwise and self masks with dropout recovery (Bonawitz et al. 2017).

The semi-honest protocol of Bonawitz et al. (CCS 2017, Fig. 4, without signatures and the consistency-check
round), optionally on a sparse ring graph where each client only pairs with ``neighbours`` others
(SecAgg+, Bell et al. 2020). Inputs are fixed-point vectors in Z_{2^k} (:class:`FixedPoint`).

0. AdvertiseKeys: client u makes two X25519 key pairs, (c_pk, c_sk) for its channels and (s_pk, s_sk) for
   its masks, and sends both public keys; the server relays them (U1 = who advertised).
1. ShareKeys: u draws a self-mask seed b_u and Shamir-shares s_sk_u and b_u (threshold t, prime field
   GF(2^256 + 297)) among its neighbours; each pair of shares is sealed for its holder with AES-GCM under
   HKDF(X25519(c_sk_u, c_pk_v)) and sent through the server (U2 = who shared).
2. MaskedInputCollection: u sends y_u = x_u + PRG(b_u) + Σ_{v ∈ N(u) ∩ U2} ±PRG(s_uv) (+ if u > v), where
   s_uv = HKDF(X25519(s_sk_u, s_pk_v)) and PRG is the ChaCha20 keystream (U3 = who sent y).
3. Unmasking: every u ∈ U3 still online (U5) opens the sealed shares it holds and reveals, per neighbour v,
   the share of s_sk_v if v dropped (v ∈ U2 \\ U3) or the share of b_v if v sent y, never both. The server
   reconstructs s_sk_v of each dropped v (hence the masks v shared with survivors) and b_u of each u ∈ U3:
   Σ_{U3} y_u − Σ_{U3} PRG(b_u) ∓ Σ masks of the dropped = Σ_{U3} x_u.
A step with fewer than t clients left (per share-holder group) aborts with :class:`SecAggError`.
Key material comes from a seeded generator so that simulations replay; a deployment would draw it from the
OS (``os.urandom``). :class:`SecAggServer` only ever holds public keys, ciphertexts, masked vectors, their
sum and the shares revealed in step 3.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

PRIME = 2**256 + 297  # the smallest prime above 2^256: a 32-byte key or seed is one field element
KEY_BYTES, SHARE_BYTES, ID_BYTES, NONCE_BYTES, TAG_BYTES = 32, 33, 4, 12, 16
SEALED_BYTES = NONCE_BYTES + 2 * ID_BYTES + 2 * SHARE_BYTES + TAG_BYTES  # one ciphertext of ShareKeys
ROUNDS = ("advertise_keys", "share_keys", "masked_input", "unmasking")
DROP_STAGES = ("share_keys", "masked_input", "unmasking")  # the round a client drops out before


class SecAggError(RuntimeError):
    """The protocol cannot finish: fewer than the threshold of clients are left."""


# --------------------------------------------------------------------------- fixed point in Z_{2^bits}
@dataclass(frozen=True)
class FixedPoint:
    """Signed fixed point in Z_{2^bits}: x ↦ round(x · 2^frac_bits) mod 2^bits.

    ``bound`` is the largest |coordinate| one client sends (an update clipped to L2 norm S has every
    coordinate in [-S, S]) and ``clients`` the most summands. Their sum lies in ±clients·round(bound·2^f) and
    must stay inside (-2^(bits-1), 2^(bits-1)) so that it does not wrap; the constructor checks it. Rounding
    to nearest: the decoded sum of n inputs is within n / 2^(f+1) of the real sum per coordinate.
    """

    bound: float
    clients: int
    frac_bits: int = 24
    bits: int = 64

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 64:
            raise ValueError(f"bits={self.bits} must be in [2, 64]")
        if self.clients < 1 or not self.bound > 0 or not math.isfinite(self.bound) or self.frac_bits < 0:
            raise ValueError(f"fixed point needs clients >= 1, a finite bound > 0 and frac_bits >= 0; got "
                             f"clients={self.clients}, bound={self.bound}, frac_bits={self.frac_bits}")
        worst = self.clients * (math.floor(self.bound * self.scale) + 1)
        if worst >= 2 ** (self.bits - 1):
            raise ValueError(
                f"fixed-point sum can wrap: {self.clients} clients × bound {self.bound} × 2^{self.frac_bits} "
                f"needs {worst.bit_length() + 1} bits, the field has {self.bits}; use frac_bits <= "
                f"{self.max_frac_bits(self.bound, self.clients, self.bits)} or more bits")

    @staticmethod
    def max_frac_bits(bound: float, clients: int, bits: int = 64) -> int:
        """The largest frac_bits whose sum of ``clients`` values in [-bound, bound] cannot wrap (-1: none)."""
        f = 62
        while f >= 0 and clients * (math.floor(bound * 2.0**f) + 1) >= 2 ** (bits - 1):
            f -= 1
        return f

    @classmethod
    def fitting(cls, bound: float, clients: int, bits: int = 64) -> FixedPoint:
        """The most precise encoding of ``clients`` summands bounded by ``bound`` in ``bits`` bits."""
        return cls(bound=bound, clients=clients, frac_bits=max(cls.max_frac_bits(bound, clients, bits), 0),
                   bits=bits)

    @property
    def scale(self) -> float:
        return 2.0**self.frac_bits

    def reduce(self, v: np.ndarray) -> np.ndarray:
        """v mod 2^bits (uint64 arithmetic already wraps mod 2^64)."""
        return v & np.uint64(2**self.bits - 1)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """round(x · 2^f) mod 2^bits as uint64; refuses coordinates outside [-bound, bound]."""
        x = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise ValueError("cannot encode a NaN or infinite coordinate")
        if x.size and np.abs(x).max() > self.bound * (1 + 1e-12):
            raise ValueError(f"coordinate {np.abs(x).max():.6g} exceeds the encoding bound {self.bound} "
                             "(clip the update first)")
        return self.reduce(np.round(x * self.scale).astype(np.int64).view(np.uint64))

    def decode(self, v: np.ndarray) -> np.ndarray:
        """The signed real value of field elements (sums included)."""
        v = self.reduce(np.asarray(v, dtype=np.uint64))
        if self.bits == 64:
            signed = v.view(np.int64)
        else:
            signed = v.astype(np.int64) - np.where(v >= np.uint64(2 ** (self.bits - 1)), 2**self.bits, 0)
        return signed / self.scale

    def nbytes(self, dim: int) -> int:
        """Bytes of one encoded vector of ``dim`` coordinates."""
        return math.ceil(dim * self.bits / 8)


# --------------------------------------------------------------------------- primitives
def prg(seed: bytes, dim: int, codec: FixedPoint) -> np.ndarray:
    """``dim`` uniform elements of Z_{2^bits}: the ChaCha20 keystream under the 32-byte key ``seed``."""
    stream = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor().update(bytes(8 * dim))
    return codec.reduce(np.frombuffer(stream, dtype="<u8").astype(np.uint64))


def kdf(secret: bytes, purpose: bytes) -> bytes:
    """A 32-byte key for ``purpose`` from an X25519 shared secret (HKDF-SHA256)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"secagg/" + purpose).derive(secret)


def shamir_share(secret: int, holders: Sequence[int], threshold: int, rng: np.random.Generator) -> dict[int, int]:
    """Shares f(h + 1) of a random polynomial f of degree threshold − 1 over GF(PRIME) with f(0) = secret."""
    if not 1 <= threshold <= len(holders):
        raise ValueError(f"threshold={threshold} must be in [1, {len(holders)}] (the number of holders)")
    coeffs = [secret % PRIME] + [int.from_bytes(rng.bytes(40), "big") % PRIME for _ in range(threshold - 1)]
    shares = {}
    for h in holders:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * (h + 1) + c) % PRIME
        shares[h] = y
    return shares


def shamir_reconstruct(shares: Mapping[int, int], threshold: int) -> int:
    """f(0) by Lagrange interpolation from any ``threshold`` shares {holder: f(holder + 1)}."""
    if len(shares) < threshold:
        raise SecAggError(f"{len(shares)} shares cannot reconstruct a secret of threshold {threshold}")
    pts = [(h + 1, y) for h, y in list(shares.items())[:threshold]]
    secret = 0
    for j, (xj, yj) in enumerate(pts):
        num, den = 1, 1
        for m, (xm, _) in enumerate(pts):
            if m != j:
                num, den = num * xm % PRIME, den * (xm - xj) % PRIME
        secret = (secret + yj * num * pow(den, -1, PRIME)) % PRIME
    return secret


def private_bytes(sk: X25519PrivateKey) -> bytes:
    return sk.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def public_bytes(sk: X25519PrivateKey) -> bytes:
    """The raw 32-byte X25519 public key of ``sk``."""
    return sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _pair_mask(sk: X25519PrivateKey, peer_pk: bytes, dim: int, codec: FixedPoint) -> np.ndarray:
    return prg(kdf(sk.exchange(X25519PublicKey.from_public_bytes(peer_pk)), b"mask"), dim, codec)


def ring_graph(ids: Sequence[int], neighbours: int | None) -> dict[int, frozenset[int]]:
    """Who pairs with whom: everyone (``neighbours`` None, Bonawitz) or the ``neighbours``/2 nearest on each
    side of a ring over the sorted ids (SecAgg+)."""
    ids = sorted(ids)
    n = len(ids)
    if neighbours is None or neighbours >= n - 1:
        return {u: frozenset(ids) - {u} for u in ids}
    if neighbours < 2 or neighbours % 2:
        raise ValueError(f"neighbours={neighbours} must be an even number >= 2 (or null for the complete graph)")
    half = neighbours // 2
    return {u: frozenset(ids[(i + s) % n] for s in range(-half, half + 1) if s) for i, u in enumerate(ids)}


# --------------------------------------------------------------------------- client
class SecAggClient:
    """One client's side of the protocol; it keeps its secrets and its plaintext to itself."""

    def __init__(self, cid: int, codec: FixedPoint, dim: int, rng: np.random.Generator):
        self.cid, self.codec, self.dim, self._rng = cid, codec, dim, rng
        self._c_sk = X25519PrivateKey.from_private_bytes(rng.bytes(KEY_BYTES))
        self._s_sk = X25519PrivateKey.from_private_bytes(rng.bytes(KEY_BYTES))
        self._keys: dict[int, tuple[bytes, bytes]] = {}
        self._channels: dict[int, AESGCM] = {}
        self._b = b""
        self._own: tuple[int, int] = (0, 0)

    def advertise_keys(self) -> tuple[bytes, bytes]:
        """Round 0: the public keys (c_pk, s_pk)."""
        return public_bytes(self._c_sk), public_bytes(self._s_sk)

    def _channel(self, v: int) -> AESGCM:
        """The authenticated channel to v (agreed once, kept for the unmasking round)."""
        if v not in self._channels:
            shared = self._c_sk.exchange(X25519PublicKey.from_public_bytes(self._keys[v][0]))
            self._channels[v] = AESGCM(kdf(shared, b"channel"))
        return self._channels[v]

    def share_keys(self, keys: Mapping[int, tuple[bytes, bytes]], threshold: int) -> dict[int, bytes]:
        """Round 1: Shamir shares of (s_sk, b) for each neighbour in ``keys``, sealed for that neighbour."""
        self._keys = dict(keys)
        self._b = self._rng.bytes(KEY_BYTES)
        holders = sorted([*keys, self.cid])
        s_sh = shamir_share(int.from_bytes(private_bytes(self._s_sk), "big"), holders, threshold, self._rng)
        b_sh = shamir_share(int.from_bytes(self._b, "big"), holders, threshold, self._rng)
        self._own = (s_sh[self.cid], b_sh[self.cid])
        sealed = {}
        for v in keys:
            nonce = self._rng.bytes(NONCE_BYTES)
            msg = b"".join([self.cid.to_bytes(ID_BYTES, "big"), v.to_bytes(ID_BYTES, "big"),
                            s_sh[v].to_bytes(SHARE_BYTES, "big"), b_sh[v].to_bytes(SHARE_BYTES, "big")])
            sealed[v] = nonce + self._channel(v).encrypt(nonce, msg, None)
        return sealed

    def masked_input(self, x: np.ndarray, shared: Collection[int]) -> np.ndarray:
        """Round 2: y = x + PRG(b) + Σ_{v ∈ N(u) ∩ U2} ±PRG(s_uv) in Z_{2^bits}."""
        x = np.asarray(x, dtype=np.float64).ravel()
        if x.shape[0] != self.dim:
            raise ValueError(f"client {self.cid}: update of {x.shape[0]} coordinates, the round expects {self.dim}")
        y = self.codec.encode(x) + prg(self._b, self.dim, self.codec)
        for v in sorted(set(self._keys) & set(shared)):
            m = _pair_mask(self._s_sk, self._keys[v][1], self.dim, self.codec)
            y = y + m if self.cid > v else y - m  # uint64 wraps mod 2^64; reduced below
        return self.codec.reduce(y)

    def unmask(self, inbox: Mapping[int, bytes], shared: Collection[int], survivors: Collection[int],
               threshold: int) -> dict[int, tuple[str, int]]:
        """Round 3: per neighbour v, the share of b_v (v ∈ U3) or of s_sk_v (v ∈ U2 \\ U3), never both."""
        shared, survivors = set(shared), set(survivors)
        if not survivors <= shared:
            raise SecAggError(f"client {self.cid}: the server lists survivors that never shared keys")
        if len(survivors & (set(self._keys) | {self.cid})) < threshold:
            raise SecAggError(f"client {self.cid}: fewer than t={threshold} of its group sent masked input")
        reveal: dict[int, tuple[str, int]] = {self.cid: ("b", self._own[1])}
        for v, ct in inbox.items():
            msg = self._channel(v).decrypt(ct[:NONCE_BYTES], ct[NONCE_BYTES:], None)
            sender, recipient = int.from_bytes(msg[:ID_BYTES], "big"), int.from_bytes(msg[ID_BYTES:2 * ID_BYTES], "big")
            if (sender, recipient) != (v, self.cid):
                raise SecAggError(f"client {self.cid}: a share from {v} is addressed to someone else")
            body = msg[2 * ID_BYTES:]
            s_share, b_share = int.from_bytes(body[:SHARE_BYTES], "big"), int.from_bytes(body[SHARE_BYTES:], "big")
            if v in survivors:
                reveal[v] = ("b", b_share)
            elif v in shared:
                reveal[v] = ("s", s_share)
        return reveal


# --------------------------------------------------------------------------- server
class SecAggServer:
    """Relays keys and sealed shares, sums masked inputs and removes the masks from the sum."""

    def __init__(self, codec: FixedPoint, dim: int, threshold: int, neighbours: int | None = None):
        self.codec, self.dim, self.threshold, self.neighbours = codec, dim, threshold, neighbours
        self.keys: dict[int, tuple[bytes, bytes]] = {}
        self.graph: dict[int, frozenset[int]] = {}
        self.inbox: dict[int, dict[int, bytes]] = {}
        self.shared: set[int] = set()
        self.survivors: set[int] = set()
        self.total = np.zeros(dim, dtype=np.uint64)

    def require(self, alive: Collection[int], stage: str) -> None:
        if len(alive) < self.threshold:
            raise SecAggError(f"secure aggregation aborted at {stage}: {len(alive)} clients left, "
                              f"the threshold is t={self.threshold}")

    def advertise_keys(self, keys: Mapping[int, tuple[bytes, bytes]]) -> dict[int, dict[int, tuple[bytes, bytes]]]:
        """Round 0: U1 and each client's neighbours' public keys."""
        self.require(keys, "advertise_keys")
        self.keys, self.graph = dict(keys), ring_graph(list(keys), self.neighbours)
        smallest = min(len(g) for g in self.graph.values()) + 1
        if self.threshold > smallest:
            raise ValueError(f"threshold t={self.threshold} exceeds the {smallest} share holders of a client "
                             f"(neighbours={self.neighbours}, {len(keys)} clients)")
        return {u: {v: self.keys[v] for v in g} for u, g in self.graph.items()}

    def share_keys(self, sealed: Mapping[int, Mapping[int, bytes]]) -> None:
        """Round 1: U2; store each ciphertext for its recipient."""
        self.require(sealed, "share_keys")
        self.shared = set(sealed)
        for u, out in sealed.items():
            for v, ct in out.items():
                self.inbox.setdefault(v, {})[u] = ct

    def neighbours_of(self, u: int) -> frozenset[int]:
        """The neighbours u pairs masks with: its graph neighbours that shared keys."""
        return self.graph[u] & self.shared

    def masked_input(self, u: int, y: np.ndarray) -> None:
        """Round 2: add one masked vector to the running sum (the server keeps only the sum)."""
        if u not in self.shared or u in self.survivors:
            raise SecAggError(f"client {u} sent masked input without sharing keys, or twice")
        self.total = self.codec.reduce(self.total + y)
        self.survivors.add(u)

    def unmask(self, reveals: Mapping[int, Mapping[int, tuple[str, int]]]) -> np.ndarray:
        """Round 3: reconstruct b of every u ∈ U3 and s_sk of every dropped v; the encoded Σ_{U3} x."""
        self.require(self.survivors, "masked_input")
        self.require(reveals, "unmasking")
        z = self.total.copy()
        for u in sorted(self.shared):
            kind = "b" if u in self.survivors else "s"
            shares = {h: r[u][1] for h, r in reveals.items() if u in r and r[u][0] == kind}
            if len(shares) < self.threshold:
                raise SecAggError(f"secure aggregation aborted at unmasking: client {u}'s "
                                  f"{'self-mask seed' if kind == 'b' else 'mask key'} has {len(shares)} shares, "
                                  f"t={self.threshold} are needed")
            secret = shamir_reconstruct(shares, self.threshold).to_bytes(KEY_BYTES, "big")
            if kind == "b":
                z = z - prg(secret, self.dim, self.codec)
                continue
            sk = X25519PrivateKey.from_private_bytes(secret)
            for w in sorted(self.graph[u] & self.survivors):  # w added +mask if w > u, −mask if w < u
                m = _pair_mask(sk, self.keys[w][1], self.dim, self.codec)
                z = z - m if w > u else z + m
        return self.codec.reduce(z)


# --------------------------------------------------------------------------- one round, as the simulator drives it
def expected_bytes_per_client(clients: int, dim: int, codec: FixedPoint, neighbours: int | None = None) -> int:
    """Bytes one client sends and receives in a round without dropouts: the cost model a simulator can
    charge without running the cryptography (:class:`SecureAggregation` counts the same messages)."""
    g = clients - 1 if neighbours is None or neighbours >= clients - 1 else neighbours
    keys, sealed = ID_BYTES + 2 * KEY_BYTES, ID_BYTES + SEALED_BYTES
    up = keys + g * sealed + codec.nbytes(dim) + (g + 1) * (ID_BYTES + 1 + SHARE_BYTES)
    down = g * keys + g * sealed + g * ID_BYTES
    return up + down


@dataclass
class SecAggStats:
    """Communication of one SecAgg run: bytes each client sent/received, rounds run, dropouts recovered."""

    upload: dict[int, int] = field(default_factory=dict)
    download: dict[int, int] = field(default_factory=dict)
    rounds: int = 0
    dropouts_recovered: int = 0
    plaintext_bytes: int = 0  # what one client would upload without SecAgg (float32 vector)

    def charge(self, cid: int, up: int = 0, down: int = 0) -> None:
        self.upload[cid] = self.upload.get(cid, 0) + up
        self.download[cid] = self.download.get(cid, 0) + down

    @property
    def bytes_per_client(self) -> float:
        """Mean bytes sent + received per client that took part."""
        ids = set(self.upload) | set(self.download)
        return sum(self.upload.get(c, 0) + self.download.get(c, 0) for c in ids) / max(len(ids), 1)

    def as_results(self) -> dict[str, float | int]:
        return {"bytes_per_client": self.bytes_per_client, "rounds": self.rounds,
                "dropouts_recovered": self.dropouts_recovered, "plaintext_bytes_per_client": self.plaintext_bytes}


class SecureAggregation:
    """One synchronous SecAgg round: keys are advertised and shared at construction (round start), each
    reporting client ``add``s its update (masked client-side), ``release`` unmasks the sum.

    ``drop_before_share``: clients that advertise keys and vanish before ShareKeys. Clients that shared keys
    but never ``add`` (stragglers, failures) are recovered through their mask keys' shares; those listed in
    ``release(drop_before_unmask=...)`` sent input but no shares, and their input is kept.
    """

    def __init__(self, clients: Sequence[int], dim: int, codec: FixedPoint, threshold: int, seed: int,
                 neighbours: int | None = None, drop_before_share: Collection[int] = ()):
        from runner.core.seeding import derive_seed

        if len(set(clients)) != len(clients):
            raise ValueError("client ids must be distinct")
        if len(clients) > codec.clients:
            raise ValueError(f"{len(clients)} clients but the fixed-point encoding is sized for {codec.clients}")
        self.codec, self.dim, self.threshold = codec, dim, threshold
        self.stats = SecAggStats(plaintext_bytes=4 * dim)
        self._clients = {u: SecAggClient(u, codec, dim, np.random.default_rng(derive_seed(seed, "secagg", u)))
                         for u in clients}
        self.server = SecAggServer(codec, dim, threshold, neighbours)
        keys = {u: c.advertise_keys() for u, c in self._clients.items()}
        roster = self.server.advertise_keys(keys)
        for u, peers in roster.items():
            self.stats.charge(u, up=ID_BYTES + 2 * KEY_BYTES, down=len(peers) * (ID_BYTES + 2 * KEY_BYTES))
        self.stats.rounds = 1
        sealed = {u: self._clients[u].share_keys(roster[u], threshold) for u in roster if u not in drop_before_share}
        self.server.share_keys(sealed)
        for u, out in sealed.items():
            self.stats.charge(u, up=len(out) * (ID_BYTES + SEALED_BYTES))
        for v, box in self.server.inbox.items():
            self.stats.charge(v, down=len(box) * (ID_BYTES + SEALED_BYTES))
        self.stats.rounds = 2

    @property
    def participants(self) -> set[int]:
        """U2: clients whose update can still enter the sum."""
        return set(self.server.shared)

    def add(self, cid: int, update: np.ndarray) -> None:
        """Round 2 for one client: mask its update on the client and send the masked vector."""
        if cid not in self.server.shared:
            raise SecAggError(f"client {cid} did not share keys in this round")
        y = self._clients[cid].masked_input(update, self.server.neighbours_of(cid))
        self.server.masked_input(cid, y)
        self.stats.charge(cid, up=self.codec.nbytes(self.dim))
        self.stats.rounds = 3

    def release(self, drop_before_unmask: Collection[int] = ()) -> np.ndarray:
        """Round 3: survivors reveal shares, the server unmasks; the decoded sum of the added updates."""
        return self.codec.decode(self.release_encoded(drop_before_unmask))

    def release_encoded(self, drop_before_unmask: Collection[int] = ()) -> np.ndarray:
        """:meth:`release` before decoding: Σ of the encoded updates in Z_{2^bits}."""
        srv = self.server
        srv.require(srv.survivors, "masked_input")
        survivors = sorted(srv.survivors)
        reveals = {}
        for u in survivors:
            if u in drop_before_unmask:
                continue
            group = srv.neighbours_of(u)
            self.stats.charge(u, down=len(group) * ID_BYTES)  # which neighbours survived
            reveals[u] = self._clients[u].unmask(srv.inbox.get(u, {}), srv.shared, srv.survivors & (group | {u}),
                                                 self.threshold)
            self.stats.charge(u, up=len(reveals[u]) * (ID_BYTES + 1 + SHARE_BYTES))
        total = srv.unmask(reveals)
        self.stats.rounds = len(ROUNDS)
        self.stats.dropouts_recovered = len(srv.shared - srv.survivors) + len(set(survivors) - set(reveals))
        return total


def secure_sum(updates: Sequence[np.ndarray], codec: FixedPoint, threshold: int, seed: int,
               neighbours: int | None = None,
               dropouts: Mapping[int, str] | None = None) -> tuple[np.ndarray, SecAggStats]:
    """Σ of the updates of the clients that send masked input, through one SecAgg round.

    ``dropouts`` maps a client index to the round it drops out before: ``share_keys`` (its update is
    lost, nothing to recover), ``masked_input`` (lost; its pairwise masks are removed from its shares) or
    ``unmasking`` (kept; its self mask is removed from its shares).
    """
    dropouts = dict(dropouts or {})
    bad = {s for s in dropouts.values() if s not in DROP_STAGES}
    if bad:
        raise ValueError(f"unknown dropout stage(s) {sorted(bad)}; use one of {', '.join(DROP_STAGES)}")
    if not updates:
        raise ValueError("secure_sum needs at least one update")
    agg = SecureAggregation(list(range(len(updates))), int(np.asarray(updates[0]).size), codec, threshold, seed,
                            neighbours, [u for u, s in dropouts.items() if s == "share_keys"])
    for u, x in enumerate(updates):
        if dropouts.get(u) in (None, "unmasking"):
            agg.add(u, x)
    total = agg.release([u for u, s in dropouts.items() if s == "unmasking"])
    return total, agg.stats
