"""OCI registries: a bundle as an OCI 1.1 artifact (docs/oci.md).

``reference`` parses ``oci://HOST[:PORT]/REPO(:TAG|@DIGEST)``; ``auth`` finds credentials (docker's
``config.json``, ``--registry-config``) and answers Basic and Bearer challenges; ``client`` speaks the
OCI distribution spec over the standard library (why not oras-py: docs/oci.md, "Why a small client");
``artifact`` is the artifact layout, pure; ``transfer`` pushes and pulls bundles, and opens a registry
artifact as a bundle whose chunks stream from the registry (:mod:`gapship.installer.bundle.source`).
The registry is not trusted: every blob is checked against its digest as it arrives, and every chunk
against the signed manifest, exactly as a bundle directory is.
"""
