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
  :class:`~ksocket.collectors.base.OperationFailed` with a one-line reason;
- :func:`format_table`: the result as a table for a terminal.

The SDKs (boto3, azure-identity, azure-mgmt-*) are imported only when a mode is used.
"""

from __future__ import annotations

from typing import Any

from ksocket.collectors.base import Context, Document, InvalidParams, NullContext

__all__ = ["MODES", "check", "format_table", "run", "validate"]

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


def format_table(result: Document) -> str:
    """A result document of either mode as a table: one line per machine, then a summary."""
    aws = result.get("mode") == "aws"
    headers = ["ID", "NAME", "STATE", "TYPE"] if aws else ["NAME", "RESOURCE GROUP", "STATE", "SIZE"]
    headers += ["PRIVATE", "PUBLIC", "SUBNET"]
    rows: list[list[str]] = []
    for item in result.get("instances", []):
        first = [item.get("id"), item.get("name"), item.get("state"), item.get("type")]
        if not aws:
            first = [item.get("name"), item.get("resourceGroup"), item.get("state"), item.get("size")]
        rows.append(
            [
                *(str(cell or "-") for cell in first),
                ",".join(address["address"] for address in item.get("privateAddresses", [])) or "-",
                ",".join(address["address"] for address in item.get("publicAddresses", [])) or "-",
                str(item.get("subnet") or "-").rsplit("/", 1)[-1],
            ]
        )
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]
    networks = result.get("vpcs" if aws else "vnets") or []
    names = ", ".join(str(network["id"] if aws else network["name"]) for network in networks)
    where = result.get("region") if aws else ", ".join(result.get("subscriptions", []))
    lines.append("")
    lines.append(f"{len(rows)} {result.get('mode')} machines in {names} ({where})")
    return "\n".join(lines)
