"""Keys, hashes and signatures: Ed25519 and ML-DSA-87 public keys and detached signatures
(``keys``), the FIPS 180-4 hashes and streaming helpers (``hashing``), and sigstore bundles verified
offline (``sigstore``). Checks only; who must have signed what is decided in :mod:`gapship.installer.trust`.
"""
