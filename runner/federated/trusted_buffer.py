"""Asynchronous secure aggregation at the buffer level (Papaya, Huba et al. 2022): a trusted aggregator.

Pairwise masking needs every client of a sum to be online in the same few rounds, which asynchronous FL
(FedBuff) does not have. Papaya instead aggregates each buffer of K updates inside a trusted execution
environment (TEE) that releases only the sum of a full buffer:

1. The enclave publishes an (attested) X25519 public key; clients fetch it with the model.
2. A client encodes its clipped update in fixed point (:class:`~runner.federated.secagg.FixedPoint`),
   makes an ephemeral X25519 key, derives an AES-GCM key from the exchange with the enclave's key and
   uploads (ephemeral public key, nonce, ciphertext). The untrusted host only stores and forwards these.
3. The enclave decrypts each upload, scales it by the staleness weight s(τ) ∈ [0, 1] the host reports (the
   server, not the client, knows τ), adds it to the buffer sum in Z_{2^k} and discards it.
4. After K uploads the enclave releases their decoded sum and starts an empty buffer; asking for the sum of
   a partial buffer is refused.
The extra cost per client is the enclave key download and the envelope (key, nonce, tag) on the upload;
there are no extra rounds. Attestation itself is out of scope (the key is trusted as given).
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from runner.federated.secagg import (
    KEY_BYTES,
    NONCE_BYTES,
    TAG_BYTES,
    FixedPoint,
    SecAggError,
    SecAggStats,
    kdf,
    public_bytes,
)


def seal(update: np.ndarray, enclave_key: bytes, codec: FixedPoint, rng: np.random.Generator) -> bytes:
    """Client side: the fixed-point update encrypted for the enclave (ephemeral pk ‖ nonce ‖ AES-GCM)."""
    eph = X25519PrivateKey.from_private_bytes(rng.bytes(KEY_BYTES))
    key = kdf(eph.exchange(X25519PublicKey.from_public_bytes(enclave_key)), b"enclave")
    nonce = rng.bytes(NONCE_BYTES)
    body = codec.encode(np.asarray(update, dtype=np.float64).ravel()).astype("<u8").tobytes()
    return public_bytes(eph) + nonce + AESGCM(key).encrypt(nonce, body, None)


class _Enclave:
    """The trusted side: its private key and the running sum of the current buffer never leave it."""

    def __init__(self, codec: FixedPoint, dim: int, rng: np.random.Generator):
        self._sk = X25519PrivateKey.from_private_bytes(rng.bytes(KEY_BYTES))
        self.public_key = public_bytes(self._sk)
        self._codec, self._dim = codec, dim
        self._sum = np.zeros(dim, dtype=np.uint64)
        self.count = 0

    def ingest(self, envelope: bytes, weight: float = 1.0) -> None:
        head = KEY_BYTES + NONCE_BYTES
        eph, nonce, ct = envelope[:KEY_BYTES], envelope[KEY_BYTES:head], envelope[head:]
        key = kdf(self._sk.exchange(X25519PublicKey.from_public_bytes(eph)), b"enclave")
        x = np.frombuffer(AESGCM(key).decrypt(nonce, ct, None), dtype="<u8").astype(np.uint64)
        if x.shape[0] != self._dim:
            raise ValueError(f"update of {x.shape[0]} coordinates, the buffer holds {self._dim}")
        if weight != 1.0:  # s(τ) ≤ 1 keeps every coordinate within the encoding bound
            x = self._codec.encode(weight * self._codec.decode(x))
        self._sum = self._codec.reduce(self._sum + x)
        self.count += 1

    def release(self) -> np.ndarray:
        out = self._codec.decode(self._sum)
        self._sum[:] = 0
        self.count = 0
        return out


class TrustedBufferAggregator:
    """FedBuff's buffer behind a TEE: ``add`` one sealed update at a time, ``release`` the sum of K.

    ``codec.clients`` must cover ``buffer_size`` summands (checked), so a full buffer's sum cannot wrap.
    """

    def __init__(self, dim: int, buffer_size: int, codec: FixedPoint, seed: int):
        from runner.core.seeding import derive_seed

        if buffer_size < 1:
            raise ValueError(f"buffer_size={buffer_size} must be >= 1")
        if codec.clients < buffer_size:
            raise ValueError(f"the fixed-point encoding is sized for {codec.clients} summands, the buffer holds "
                             f"{buffer_size}")
        self.dim, self.buffer_size, self.codec = dim, buffer_size, codec
        self._enclave = _Enclave(codec, dim, np.random.default_rng(derive_seed(seed, "enclave")))
        self._client_rng = np.random.default_rng(derive_seed(seed, "enclave-clients"))
        self.stats = SecAggStats(plaintext_bytes=4 * dim)
        self.stats.rounds = 1  # a client still sends one message; SecAgg adds no round trip here
        self._uploads = 0

    @property
    def public_key(self) -> bytes:
        return self._enclave.public_key

    @property
    def count(self) -> int:
        """Updates in the current buffer."""
        return self._enclave.count

    @property
    def ready(self) -> bool:
        return self._enclave.count >= self.buffer_size

    def add_sealed(self, envelope: bytes, weight: float = 1.0) -> None:
        """Host side: forward one client's envelope (and its staleness weight) into the enclave."""
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"staleness weight {weight} must be in [0, 1]")
        if self.ready:
            raise SecAggError(f"the buffer already holds {self.buffer_size} updates: release it first")
        self._enclave.ingest(envelope, weight)
        self._uploads += 1
        self.stats.charge(self._uploads, up=len(envelope), down=KEY_BYTES)

    def add(self, update: np.ndarray, weight: float = 1.0) -> None:
        """One client's upload: sealed on the client for the enclave, then ingested with weight s(τ)."""
        self.add_sealed(seal(update, self.public_key, self.codec, self._client_rng), weight)

    def release(self) -> np.ndarray:
        """The decoded sum of a full buffer of K updates; the buffer starts empty again."""
        if not self.ready:
            raise SecAggError(f"the enclave releases only a full buffer: {self._enclave.count} of "
                              f"{self.buffer_size} updates so far")
        return self._enclave.release()

    @staticmethod
    def envelope_bytes(codec: FixedPoint, dim: int) -> int:
        """Bytes of one sealed upload."""
        return KEY_BYTES + NONCE_BYTES + codec.nbytes(dim) + TAG_BYTES
