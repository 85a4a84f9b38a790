"""``networks.scan`` in the ``aws`` and ``azure`` modes (``operations.networksScanMode``, manual 3.1.7).

Instead of sending probes, the scan asks the cloud's API for the virtual machines of the network
the agent runs in (or of the networks the params name): :mod:`.aws` lists EC2 instances of VPCs,
:mod:`.azure` Azure VMs of VNETs. Detail collection of those machines stays ``hosts.inspect``.
Result shapes: docs/cloud-results.md.

- :func:`run` ``(mode, params, context=None) -> dict``: the operation, for the pipeline and for
  ``ksocket scan --mode aws|azure``;
- :func:`validate` ``(mode, params)``: the params checked at admission, raising InvalidParams;
- :func:`check` ``(mode, params=None) -> str``: one line for ``ksocket diagnostics`` saying that
  the credentials work and the API answers, without listing any machine; failures raise
  :class:`~ksocket.collectors.base.OperationFailed` with a one-line reason.

``ksocket scan`` prints the result as a table (:mod:`ksocket.cli.scan`).

The SDKs (boto3, azure-identity, azure-mgmt-*) are imported only when a mode is used.
"""

from __future__ import annotations

from typing import Any

from ksocket.collectors.base import Context, Document, InvalidParams, NullContext

__all__ = ["MODES", "check", "run", "validate"]

MODES = ("aws", "azure")


def _module(mode: str) -> Any:
    if mode == "aws":
        from ksocket.collectors.cloud import aws

        return aws
    if mode == "azure":
        from ksocket.collectors.cloud import azure

        return azure
    raise InvalidParams(f"cloud mode must be one of {', '.join(MODES)}, got {mode!r}")


def run(mode: str, params: Document, context: Context | None = None) -> Document:
    """``networks.scan`` in ``mode`` (``aws`` or ``azure``)."""
    result: Document = _module(mode).collect(params, context or NullContext())
    return result


def validate(mode: str, params: Document) -> None:
    """Refuses ``mode``'s params (InvalidParams) before anything is sent or enqueued."""
    _module(mode).validate(params)


def check(mode: str, params: Document | None = None) -> str:
    """The diagnostics line's detail for ``mode``; raises OperationFailed with the reason when it fails."""
    detail: str = _module(mode).check(params or {})
    return detail
