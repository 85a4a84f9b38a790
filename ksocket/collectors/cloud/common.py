"""What the aws and azure collectors share: params checks, MAC and time formats, metadata requests.

The instance-metadata services (EC2's IMDS, Azure's IMDS) are plain HTTP on a link-local address
that only answers inside the cloud. :func:`metadata_request` is the one way the collectors reach
them: no proxy (an IMDS request must never leave the host), short timeouts, and the endpoint is
always the caller's (an argument or an environment variable), so that tests point it at loopback.
"""

from __future__ import annotations

import datetime
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from ksocket.collectors.base import Document, InvalidParams

MAX_MESSAGE = 400
METADATA_TIMEOUT = 2.0


class MetadataError(Exception):
    """A metadata request failed: ``status`` is the HTTP status, or None when nothing answered."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status


def one_line(text: object, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line, at most ``limit`` characters (cloud error messages can be long)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def string_list(
    params: Document, name: str, pattern: re.Pattern[str], what: str, *, limit: int
) -> tuple[str, ...] | None:
    """``params[name]`` as a tuple of strings that match ``pattern`` (``what`` names one); None when absent.

    A string is split at commas and blanks, for command lines.
    """
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        value = [part for part in value.replace(",", " ").split() if part]
    if not isinstance(value, list) or not value:
        raise InvalidParams(f"{name} must be a non-empty list, each item {what}")
    if len(value) > limit:
        raise InvalidParams(f"{name} may hold at most {limit} items, got {len(value)}")
    items: list[str] = []
    for item in value:
        if not isinstance(item, str) or not pattern.fullmatch(item):
            raise InvalidParams(f"{name}: {item!r} is not {what}")
        if item not in items:
            items.append(item)
    return tuple(items)


def optional_string(params: Document, name: str, pattern: re.Pattern[str], what: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidParams(f"{name} must be {what}, got {value!r}")
    return value


def integer(params: Document, name: str, default: int, low: int, high: int) -> int:
    value = params.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidParams(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return value


def mac(value: object) -> str | None:
    """A MAC address in the intranet mode's form (``0a:1b:2c:3d:4e:5f``); None when unusable.

    EC2 writes ``0a:1b:…``; Azure writes ``00-0D-3A-…`` (and some API versions ``000D3A…``).
    """
    if not isinstance(value, str):
        return None
    digits = re.sub(r"[^0-9a-fA-F]", "", value)
    if len(digits) != 12:
        return None
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2)).lower()


def iso_time(value: object) -> str | None:
    """A timestamp as ISO 8601 in UTC with a ``Z``; strings are passed through."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return value.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, str) and value:
        return value
    return None


def tags(value: object) -> dict[str, str]:
    """Tags as a plain object: EC2's ``[{"Key", "Value"}]`` list or Azure's mapping."""
    if isinstance(value, Mapping):
        return {str(key): "" if item is None else str(item) for key, item in value.items()}
    if isinstance(value, list):
        return {
            str(tag["Key"]): str(tag.get("Value", "")) for tag in value if isinstance(tag, Mapping) and "Key" in tag
        }
    return {}


def dig(document: Any, *keys: str | int) -> Any:
    """``document[k1][k2]…``, or None as soon as a step is missing or of the wrong kind."""
    for key in keys:
        if isinstance(key, int):
            if not isinstance(document, list) or not -len(document) <= key < len(document):
                return None
            document = document[key]
        else:
            if not isinstance(document, Mapping):
                return None
            document = document.get(key)
    return document


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def metadata_request(
    method: str, url: str, headers: Mapping[str, str], *, timeout: float = METADATA_TIMEOUT, tries: int = 2
) -> bytes:
    """One request to an instance-metadata service, never through a proxy; ``tries`` when nothing answers."""
    last = "no answer"
    for _ in range(max(1, tries)):
        request = urllib.request.Request(url, method=method, headers=dict(headers))  # noqa: S310 (http by design)
        try:
            with _NO_PROXY.open(request, timeout=timeout) as response:
                body: bytes = response.read()
                return body
        except urllib.error.HTTPError as error:
            raise MetadataError(error.code, f"HTTP {error.code} {error.reason}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            last = one_line(reason if str(reason) else type(reason).__name__, 120)
    raise MetadataError(None, last)
