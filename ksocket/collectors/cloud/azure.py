"""``networks.scan`` in ``azure`` mode (manual 1.2): the VMs of a VNET, as Azure Resource Manager lists them.

``collect(params, context)`` with params (all optional; the intranet mode's params are ignored):

================= ==============================================================================
``vnets``          VNETs to list: resource ids (``/subscriptions/…/virtualNetworks/NAME``),
                   ``RESOURCEGROUP/NAME`` or ``NAME``; default: the VNET(s) of the agent's own VM,
                   found through the instance metadata service
``subscriptions``  subscription ids to search; default: those of the VNET ids, else every
                   subscription the identity can read (for names), else the agent's own (IMDS)
================= ==============================================================================

The identity (manual 1.2.1): a service principal when ``etc/ksocket/azure.toml`` exists
(``clientId``, ``secret``, ``tenant``: azure-identity's ClientSecretCredential), else the VM's
managed identity (ManagedIdentityCredential). It needs the Reader role on the subscription.

How the VMs are found, per subscription searched: the VNETs (``virtualNetworks`` list), the network
interfaces (``networkInterfaces`` list; a NIC's IP configurations name their subnet, hence their
VNET, and the NIC names its VM), the public IP addresses when a NIC of a listed VM has one, then
each VM with its instance view (``virtualMachines/{name}?$expand=instanceView``: power state, OS).
The subscription list is ARM's REST ``GET /subscriptions`` through the compute client's pipeline
(azure-mgmt-resource is not needed). Scale-set VMs (whose NICs ARM lists under the scale set) are
not listed.

Endpoints (:class:`Endpoints`, for tests and sovereign clouds): ARM at ``KSOCKET_AZURE_ARM_ENDPOINT``
(default ``https://management.azure.com``); the token authority is azure-identity's
(``AZURE_AUTHORITY_HOST``); the managed identity endpoint is azure-identity's (IMDS, or
``AZURE_POD_IDENTITY_AUTHORITY_HOST`` / ``IDENTITY_ENDPOINT``); the instance metadata that names the
agent's VM at ``KSOCKET_AZURE_METADATA_ENDPOINT`` (default ``http://169.254.169.254``).

Errors: a missing or broken identity is ``no-credential``; a refused token or an HTTP 401/403 is
``auth-failed`` (never retried); 429, 5xx and connection failures, after the SDK's own retries
(``Endpoints.retries``), are transient ``unreachable`` / ``timeout`` for the pipeline's backoff.

The result document (docs/cloud-results.md)::

    {"mode": "azure", "subscriptions": [...], "vnetSource": "params" | "metadata",
     "vnets": [{"id", "name", "resourceGroup", "subscription", "location", "cidrs", "tags",
                "subnets": [{"id", "name", "cidrs"}]}],
     "instances": [{"id", "vmId", "name", "resourceGroup", "subscription", "location", "zones", "size",
                    "state", "provisioningState", "osType", "osName", "osVersion", "image",
                    "computerName", "tags", "vnet", "subnet", "macs",
                    "privateAddresses": [{"address", "version", "primary", "interface", "mac", "subnet", "vnet"}],
                    "publicAddresses": [{"address", "version", "interface", "privateAddress", "dnsName", "id"}]}]}
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tomllib
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.rest import HttpRequest
from azure.identity import ClientSecretCredential, CredentialUnavailableError, ManagedIdentityCredential
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.core.exceptions import ARMErrorFormat
from azure.mgmt.network import NetworkManagementClient

from ksocket import bounded, paths, redact
from ksocket.collectors.base import Context, Document, InvalidParams, OperationFailed
from ksocket.collectors.cloud import common
from ksocket.collectors.cloud.common import dig
from ksocket.protocol import ErrorCode

__all__ = [
    "CONFIG_NAME",
    "Endpoints",
    "Identity",
    "Request",
    "check",
    "collect",
    "config_path",
    "failure",
    "instance_metadata",
    "load_identity",
    "validate",
    "vm_document",
]

CONFIG_NAME = "azure.toml"
DEFAULT_ARM = "https://management.azure.com"
DEFAULT_METADATA_ENDPOINT = "http://169.254.169.254"
SUBSCRIPTIONS_API = "2022-12-01"
METADATA_API = "2021-02-01"
PUBLIC_AUTHORITIES = frozenset(
    {
        "login.microsoftonline.com",
        "login.chinacloudapi.cn",
        "login.microsoftonline.us",
        "login.partner.microsoftonline.cn",
    }
)
NO_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"  # the compute client wants one; GET /subscriptions needs none
READABLE_STATES = frozenset({"enabled", "warned", "pastdue"})
NAME_THE_VNETS = "name the VNETs in params.vnets (ksocket scan --mode azure VNET…)"
MAX_VNETS = 100
MAX_SUBSCRIPTIONS = 100

GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
VNET_ID = re.compile(
    r"/subscriptions/(?P<subscription>[0-9a-fA-F-]{36})/resourceGroups/(?P<group>[^/]+)"
    r"/providers/Microsoft\.Network/virtualNetworks/(?P<name>[^/]+)",
    re.IGNORECASE,
)
VNET_NAME = re.compile(r"(?:[\w.()-]{1,90}/)?[\w.-]{1,80}")
VNET_SELECTOR = re.compile(rf"{VNET_ID.pattern}|{VNET_NAME.pattern}", re.IGNORECASE)
RESOURCE_ID = re.compile(
    r"/subscriptions/(?P<subscription>[^/]+)/resourceGroups/(?P<group>[^/]+)/providers/[^/]+/[^/]+/(?P<name>[^/]+)",
    re.IGNORECASE,
)
TENANT = re.compile(r"[A-Za-z0-9.-]{1,256}")


@dataclass(frozen=True)
class Request:
    vnets: tuple[str, ...] | None  # None: the agent's own
    subscriptions: tuple[str, ...] | None


def validate(params: Document) -> Request:
    return Request(
        vnets=common.string_list(
            params, "vnets", VNET_SELECTOR, "a VNET (a resource id, RESOURCEGROUP/NAME or NAME)", limit=MAX_VNETS
        ),
        subscriptions=common.string_list(
            params, "subscriptions", GUID, "a subscription id (a GUID)", limit=MAX_SUBSCRIPTIONS
        ),
    )


@dataclass(frozen=True)
class Endpoints:
    """Where the collector talks to; the defaults are Azure's public cloud."""

    arm: str = DEFAULT_ARM
    authority: str | None = None  # None: azure-identity's (AZURE_AUTHORITY_HOST, else login.microsoftonline.com)
    metadata: str = DEFAULT_METADATA_ENDPOINT
    ca_bundle: str | None = None  # None: the system's (or REQUESTS_CA_BUNDLE)
    retries: int = 3  # the SDK's own retries of 429, 5xx and connection failures

    @classmethod
    def from_env(cls) -> Endpoints:
        return cls(
            arm=os.environ.get("KSOCKET_AZURE_ARM_ENDPOINT") or DEFAULT_ARM,
            authority=os.environ.get("AZURE_AUTHORITY_HOST") or None,
            metadata=os.environ.get("KSOCKET_AZURE_METADATA_ENDPOINT") or DEFAULT_METADATA_ENDPOINT,
        )

    @property
    def scope(self) -> str:
        return self.arm.rstrip("/") + "/.default"

    def transport(self) -> dict[str, Any]:
        options: dict[str, Any] = {"retry_total": self.retries, "connection_timeout": 10, "read_timeout": 60}
        if self.ca_bundle:
            options["connection_verify"] = self.ca_bundle
        return options


# --- errors ------------------------------------------------------------------------------------


def _error_text(exc: AzureError) -> str:
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    message = getattr(error, "message", None) or getattr(exc, "message", None) or str(exc)
    status = getattr(exc, "status_code", None)
    prefix = code or (f"HTTP {status}" if status else type(exc).__name__)
    return f"{prefix}: {common.one_line(message, 300)}"


def failure(exc: BaseException, action: str, *, config: Path | None = None) -> OperationFailed:
    """The OperationFailed for an azure-core / azure-identity exception raised while doing ``action``."""
    if isinstance(exc, OperationFailed):
        return exc
    if isinstance(exc, CredentialUnavailableError):
        where = config or config_path()
        return OperationFailed(
            ErrorCode.NO_CREDENTIAL,
            f"no Azure credential: {where} does not exist and no managed identity is available "
            f"({common.one_line(exc.message, 200)}); assign a managed identity to the agent's VM or write "
            f"clientId, secret and tenant to {where}",
        )
    text = f"{action}: {_error_text(exc)}" if isinstance(exc, AzureError) else f"{action}: {common.one_line(exc)}"
    if isinstance(exc, HttpResponseError):
        status = exc.status_code
        if status == 429 or (isinstance(status, int) and status >= 500):
            return OperationFailed(ErrorCode.UNREACHABLE, text, transient=True)
        if status == 408:
            return OperationFailed(ErrorCode.TIMEOUT, text, transient=True)
        if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
            return OperationFailed(ErrorCode.AUTH_FAILED, text)
        if status == 404:
            return InvalidParams(text)
        return OperationFailed(ErrorCode.INTERNAL, text)
    if isinstance(exc, ServiceRequestTimeoutError | ServiceResponseTimeoutError):
        return OperationFailed(ErrorCode.TIMEOUT, text, transient=True)
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return OperationFailed(ErrorCode.UNREACHABLE, text, transient=True)
    return OperationFailed(ErrorCode.INTERNAL, text)


@contextlib.contextmanager
def _errors(action: str, config: Path | None = None) -> Iterator[None]:
    try:
        yield
    except (AzureError, ValueError) as exc:
        raise failure(exc, action, config=config) from None


# --- the identity --------------------------------------------------------------------------------


def config_path() -> Path:
    return paths.etc_dir() / CONFIG_NAME


@dataclass(frozen=True)
class Identity:
    credential: Any  # a TokenCredential
    description: str
    config: Path


def _read_config(path: Path) -> tuple[str, str, str]:
    """``clientId``, ``secret``, ``tenant`` of azure.toml, or a one-line error naming the file and field.

    A secret others may read is refused, as ``etc/ksocket`` keeps every secret 0600.
    """
    data = bounded.read_file(path, lambda message: OperationFailed(ErrorCode.NO_CREDENTIAL, message), private=True)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise OperationFailed(ErrorCode.NO_CREDENTIAL, f"{path}: not UTF-8") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise OperationFailed(ErrorCode.NO_CREDENTIAL, f"{path}: not TOML: {exc}") from None
    secret = document.get("secret")
    redact.register(secret)
    values: dict[str, str] = {}
    for name in ("clientId", "secret", "tenant"):
        value = document.get(name)
        if value is None:
            raise OperationFailed(
                ErrorCode.NO_CREDENTIAL, f"{path}: {name} is missing (clientId, secret and tenant are needed)"
            )
        if not isinstance(value, str) or not value.strip():
            raise OperationFailed(ErrorCode.NO_CREDENTIAL, f"{path}: {name} must be a non-empty string")
        values[name] = value.strip()
    if not TENANT.fullmatch(values["tenant"]):
        raise OperationFailed(ErrorCode.NO_CREDENTIAL, f"{path}: tenant must be a tenant id (a GUID) or a domain name")
    return values["clientId"], values["secret"], values["tenant"]


def load_identity(endpoints: Endpoints, path: Path | None = None) -> Identity:
    """The service principal of azure.toml when the file exists, else the managed identity."""
    path = path or config_path()
    options = endpoints.transport()
    if not path.exists():
        with _errors("managed identity", path):
            managed: Any = ManagedIdentityCredential(**options)
        return Identity(managed, "managed identity", path)
    client_id, secret, tenant = _read_config(path)
    if endpoints.authority:
        options["authority"] = endpoints.authority
        host = urllib.parse.urlsplit(endpoints.authority if "//" in endpoints.authority else f"//{endpoints.authority}")
        if host.hostname not in PUBLIC_AUTHORITIES:
            options["disable_instance_discovery"] = True  # MSAL would ask login.microsoftonline.com about it
    with _errors(f"{path}", path):
        principal: Any = ClientSecretCredential(tenant, client_id, secret, **options)
    return Identity(principal, f"service principal {client_id} (tenant {tenant}) from {path}", path)


# --- the agent's own VM ----------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceMetadata:
    subscription: str
    resource_id: str


def instance_metadata(endpoint: str) -> InstanceMetadata:
    """The agent's subscription and VM resource id, from the instance metadata service at ``endpoint``."""
    url = f"{endpoint.rstrip('/')}/metadata/instance?api-version={METADATA_API}"
    hint = f"if the agent does not run on an Azure VM, {NAME_THE_VNETS}"
    try:
        body = common.metadata_request("GET", url, {"Metadata": "true"})
    except common.MetadataError as error:
        raise OperationFailed(
            ErrorCode.UNREACHABLE, f"Azure instance metadata service at {endpoint}: {error}; {hint}"
        ) from None
    try:
        document = json.loads(body)
    except ValueError:
        raise OperationFailed(
            ErrorCode.INTERNAL, f"Azure instance metadata service at {endpoint}: not JSON; {hint}"
        ) from None
    compute = dig(document, "compute") or {}
    subscription = compute.get("subscriptionId")
    resource_id = compute.get("resourceId")
    if not resource_id and subscription and compute.get("resourceGroupName") and compute.get("name"):
        resource_id = (
            f"/subscriptions/{subscription}/resourceGroups/{compute['resourceGroupName']}"
            f"/providers/Microsoft.Compute/virtualMachines/{compute['name']}"
        )
    if not isinstance(subscription, str) or not isinstance(resource_id, str):
        raise OperationFailed(
            ErrorCode.INTERNAL, f"Azure instance metadata service at {endpoint}: no compute.resourceId; {hint}"
        )
    return InstanceMetadata(subscription, resource_id)


# --- ARM ---------------------------------------------------------------------------------------


def _rest(model: Any) -> dict[str, Any]:
    """An SDK model as the ARM JSON it came from (camelCase keys, ``properties`` nesting)."""
    if isinstance(model, Mapping):
        as_dict = getattr(model, "as_dict", None)
        return dict(as_dict()) if callable(as_dict) else dict(model)
    serialize = getattr(model, "serialize", None)  # msrest-style models of older SDKs
    if callable(serialize):
        return dict(serialize(keep_readonly=True))
    raise TypeError(f"unexpected Azure SDK model {type(model).__name__}")


def _key(resource_id: object) -> str:
    return str(resource_id or "").lower()


def _vnet_of(subnet_id: object) -> str | None:
    text = str(subnet_id or "")
    index = text.lower().find("/subnets/")
    return text[:index] if index > 0 else None


def _parts(resource_id: str) -> tuple[str, str, str]:
    match = RESOURCE_ID.match(resource_id)
    if not match:
        raise OperationFailed(ErrorCode.INTERNAL, f"unexpected Azure resource id {resource_id!r}")
    return match["subscription"], match["group"], match["name"]


class _Arm:
    """The ARM clients of one operation: one compute and one network client per subscription."""

    def __init__(self, identity: Identity, endpoints: Endpoints) -> None:
        self.identity = identity
        self.endpoints = endpoints
        self._compute: dict[str, ComputeManagementClient] = {}
        self._network: dict[str, NetworkManagementClient] = {}

    def __enter__(self) -> _Arm:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        clients: list[Any] = [*self._compute.values(), *self._network.values()]
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()
        with contextlib.suppress(Exception):
            self.identity.credential.close()

    def _options(self) -> dict[str, Any]:
        return {
            "base_url": self.endpoints.arm,
            "credential_scopes": [self.endpoints.scope],
            **self.endpoints.transport(),
        }

    def compute(self, subscription: str) -> ComputeManagementClient:
        if subscription not in self._compute:
            self._compute[subscription] = ComputeManagementClient(
                self.identity.credential, subscription, **self._options()
            )
        return self._compute[subscription]

    def network(self, subscription: str) -> NetworkManagementClient:
        if subscription not in self._network:
            self._network[subscription] = NetworkManagementClient(
                self.identity.credential, subscription, **self._options()
            )
        return self._network[subscription]

    def errors(self, action: str) -> contextlib.AbstractContextManager[None]:
        return _errors(action, self.identity.config)

    def subscriptions(self, context: Context | None = None) -> list[dict[str, Any]]:
        """The subscriptions the identity can read (ARM ``GET /subscriptions``, every page)."""
        client = self.compute(NO_SUBSCRIPTION)
        url: str | None = f"/subscriptions?api-version={SUBSCRIPTIONS_API}"
        found: list[dict[str, Any]] = []
        with self.errors("ARM GET /subscriptions"):
            while url:
                response = client.send_request(HttpRequest("GET", url))
                if response.status_code != 200:
                    raise HttpResponseError(response=response, error_format=ARMErrorFormat)
                document = response.json()
                found.extend(dict(item) for item in document.get("value", []) if isinstance(item, Mapping))
                url = document.get("nextLink") or None
                if context is not None:
                    context.check_cancelled()
        return [item for item in found if str(item.get("state", "Enabled")).lower() in READABLE_STATES]

    def listing(self, pages: Any, action: str, context: Context) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        with self.errors(action):
            for page in pages.by_page():
                items.extend(_rest(item) for item in page)
                context.check_cancelled()
        return items


@dataclass
class _Subscription:
    id: str
    vnets: list[dict[str, Any]] = field(default_factory=list)
    nics: list[dict[str, Any]] = field(default_factory=list)
    public_ips: dict[str, dict[str, Any]] = field(default_factory=dict)


# --- documents ---------------------------------------------------------------------------------


def _vnet_document(raw: Mapping[str, Any]) -> Document:
    subscription, group, _ = _parts(str(raw.get("id")))
    subnets = []
    for subnet in dig(raw, "properties", "subnets") or ():
        cidrs = [dig(subnet, "properties", "addressPrefix")] if dig(subnet, "properties", "addressPrefix") else []
        cidrs += [prefix for prefix in dig(subnet, "properties", "addressPrefixes") or () if prefix not in cidrs]
        subnets.append({"id": subnet.get("id"), "name": subnet.get("name"), "cidrs": cidrs})
    return {
        "id": raw.get("id"),
        "name": raw.get("name"),
        "resourceGroup": group,
        "subscription": subscription,
        "location": raw.get("location"),
        "cidrs": list(dig(raw, "properties", "addressSpace", "addressPrefixes") or []),
        "tags": common.tags(raw.get("tags")),
        "subnets": sorted(subnets, key=lambda item: str(item["name"])),
    }


def _power_state(instance_view: object) -> str | None:
    for status in dig(instance_view, "statuses") or ():
        code = str(dig(status, "code") or "")
        if code.lower().startswith("powerstate/"):
            return code.split("/", 1)[1]
    return None


def _image(storage: object) -> Document | None:
    reference = dig(storage, "imageReference")
    if not isinstance(reference, Mapping):
        return None
    if reference.get("publisher"):
        return {
            "publisher": reference.get("publisher"),
            "offer": reference.get("offer"),
            "sku": reference.get("sku"),
            "version": reference.get("exactVersion") or reference.get("version"),
        }
    for key in ("id", "sharedGalleryImageId", "communityGalleryImageId"):
        if reference.get(key):
            return {"id": reference[key]}
    return None


def vm_document(
    vm: Mapping[str, Any], nics: Mapping[str, Mapping[str, Any]], public_ips: Mapping[str, Mapping[str, Any]]
) -> Document:
    """One VM (with its instance view) as the result's instance object; ``nics``/``public_ips`` by lowercased id."""
    properties = vm.get("properties") or {}
    subscription, group, _ = _parts(str(vm.get("id")))
    references = [
        ref for ref in dig(properties, "networkProfile", "networkInterfaces") or () if isinstance(ref, Mapping)
    ]
    references.sort(key=lambda ref: not dig(ref, "properties", "primary"))
    if len(references) == 1 and dig(references[0], "properties", "primary") is None:
        references[0] = {**references[0], "properties": {"primary": True}}
    private: list[Document] = []
    public: list[Document] = []
    macs: list[str] = []
    for reference in references:
        nic = nics.get(_key(reference.get("id")))
        if nic is None:
            continue
        nic_primary = bool(dig(reference, "properties", "primary") or dig(nic, "properties", "primary"))
        address_mac = common.mac(dig(nic, "properties", "macAddress"))
        if address_mac and address_mac not in macs:
            macs.append(address_mac)
        configurations = list(dig(nic, "properties", "ipConfigurations") or ())
        configurations.sort(key=lambda item: not dig(item, "properties", "primary"))
        for configuration in configurations:
            settings = configuration.get("properties") or {}
            address = settings.get("privateIPAddress")
            subnet = dig(settings, "subnet", "id")
            if address:
                private.append(
                    {
                        "address": address,
                        "version": settings.get("privateIPAddressVersion") or "IPv4",
                        "primary": nic_primary and bool(settings.get("primary", len(configurations) == 1)),
                        "interface": nic.get("id"),
                        "mac": address_mac,
                        "subnet": subnet,
                        "vnet": _vnet_of(subnet),
                    }
                )
            public_ip = public_ips.get(_key(dig(settings, "publicIPAddress", "id")))
            if public_ip and dig(public_ip, "properties", "ipAddress"):
                public.append(
                    {
                        "address": dig(public_ip, "properties", "ipAddress"),
                        "version": dig(public_ip, "properties", "publicIPAddressVersion") or "IPv4",
                        "interface": nic.get("id"),
                        "privateAddress": address,
                        "dnsName": dig(public_ip, "properties", "dnsSettings", "fqdn"),
                        "id": public_ip.get("id"),
                    }
                )
    instance_view = properties.get("instanceView") or {}
    main = next((item for item in private if item["primary"]), private[0] if private else None)
    return {
        "id": vm.get("id"),
        "vmId": properties.get("vmId"),
        "name": vm.get("name"),
        "resourceGroup": group,
        "subscription": subscription,
        "location": vm.get("location"),
        "zones": list(vm.get("zones") or []),
        "size": dig(properties, "hardwareProfile", "vmSize"),
        "state": _power_state(instance_view),
        "provisioningState": properties.get("provisioningState"),
        "osType": dig(properties, "storageProfile", "osDisk", "osType"),
        "osName": instance_view.get("osName"),
        "osVersion": instance_view.get("osVersion"),
        "image": _image(properties.get("storageProfile")),
        "computerName": dig(properties, "osProfile", "computerName") or instance_view.get("computerName"),
        "tags": common.tags(vm.get("tags")),
        "vnet": main["vnet"] if main else None,
        "subnet": main["subnet"] if main else None,
        "macs": macs,
        "privateAddresses": private,
        "publicAddresses": public,
    }


# --- the operation -------------------------------------------------------------------------------


def _select(request: Request, subscriptions: list[_Subscription], own_vm: str | None) -> list[dict[str, Any]]:
    """The target VNETs (ARM JSON) among those listed, or the one-line error saying which is missing."""
    vnets = {_key(vnet.get("id")): vnet for sub in subscriptions for vnet in sub.vnets}
    searched = ", ".join(sub.id for sub in subscriptions)
    chosen: dict[str, dict[str, Any]] = {}
    if own_vm is not None:
        for nic in (nic for sub in subscriptions for nic in sub.nics):
            if _key(dig(nic, "properties", "virtualMachine", "id")) != _key(own_vm):
                continue
            for configuration in dig(nic, "properties", "ipConfigurations") or ():
                vnet_id = _key(_vnet_of(dig(configuration, "properties", "subnet", "id")))
                if vnet_id in vnets:
                    chosen.setdefault(vnet_id, vnets[vnet_id])
        if not chosen:
            raise OperationFailed(
                ErrorCode.AUTH_FAILED,
                f"the identity cannot see a network interface of the agent's VM {own_vm} in subscription {searched}: "
                f"give it the Reader role there, or {NAME_THE_VNETS}",
            )
        return list(chosen.values())
    for selector in request.vnets or ():
        if selector.startswith("/"):
            matches = [vnets[_key(selector)]] if _key(selector) in vnets else []
        else:
            group, _, name = selector.rpartition("/")
            matches = [
                vnet
                for vnet in vnets.values()
                if str(vnet.get("name")).lower() == name.lower()
                and (not group or _parts(str(vnet.get("id")))[1].lower() == group.lower())
            ]
        if not matches:
            raise InvalidParams(f"no VNET {selector} in subscription(s) {searched or '(none readable)'}")
        if len(matches) > 1:
            ids = ", ".join(str(vnet.get("id")) for vnet in matches)
            raise InvalidParams(f"VNET {selector} is ambiguous ({ids}): name it by resource id")
        chosen.setdefault(_key(matches[0].get("id")), matches[0])
    return list(chosen.values())


def collect(
    params: Document, context: Context, *, endpoints: Endpoints | None = None, config: Path | None = None
) -> Document:
    """``networks.scan`` in azure mode; ``endpoints`` and ``config`` (azure.toml) override the defaults."""
    request = validate(params)
    endpoints = endpoints or Endpoints.from_env()
    identity = load_identity(endpoints, config)
    own_vm: str | None = None
    with _Arm(identity, endpoints) as arm:
        if request.vnets is None:
            metadata = instance_metadata(endpoints.metadata)
            own_vm = metadata.resource_id
            subscription_ids = request.subscriptions or (metadata.subscription,)
        elif request.subscriptions:
            subscription_ids = request.subscriptions
        elif all(selector.startswith("/") for selector in request.vnets):
            subscription_ids = tuple(dict.fromkeys(_parts(selector)[0] for selector in request.vnets))
        else:
            subscription_ids = tuple(str(item.get("subscriptionId")) for item in arm.subscriptions(context))
            if not subscription_ids:
                raise OperationFailed(
                    ErrorCode.AUTH_FAILED, f"{identity.description} can read no subscription: give it the Reader role"
                )
        context.check_cancelled()

        subscriptions = []
        for subscription_id in subscription_ids:
            network = arm.network(subscription_id)
            where = f"in subscription {subscription_id}"
            sub = _Subscription(subscription_id)
            sub.vnets = arm.listing(network.virtual_networks.list_all(), f"list virtualNetworks {where}", context)
            sub.nics = arm.listing(network.network_interfaces.list_all(), f"list networkInterfaces {where}", context)
            subscriptions.append(sub)
        targets = _select(request, subscriptions, own_vm)
        vm_ids = _vms_in(subscriptions, {_key(vnet.get("id")) for vnet in targets})
        nics = {_key(nic.get("id")): nic for sub in subscriptions for nic in sub.nics}
        for sub in subscriptions:
            if _wants_public_ips(sub, vm_ids):
                listed = arm.listing(
                    arm.network(sub.id).public_ip_addresses.list_all(),
                    f"list publicIPAddresses in subscription {sub.id}",
                    context,
                )
                sub.public_ips = {_key(item.get("id")): item for item in listed}
        public_ips = {key: item for sub in subscriptions for key, item in sub.public_ips.items()}

        instances: list[Document] = []
        ordered = sorted(vm_ids.values(), key=str.lower)
        context.progress(0, len(ordered))
        for done, vm_id in enumerate(ordered, 1):
            context.check_cancelled()
            subscription_id, group, name = _parts(vm_id)
            vm = _get_vm(arm, subscription_id, group, name)
            if vm is not None:
                instances.append(vm_document(vm, nics, public_ips))
            context.progress(done, len(ordered))

    return {
        "mode": "azure",
        "subscriptions": list(subscription_ids),
        "vnetSource": "metadata" if own_vm else "params",
        "vnets": [_vnet_document(vnet) for vnet in sorted(targets, key=lambda vnet: _key(vnet.get("id")))],
        "instances": instances,
    }


def _vms_in(subscriptions: list[_Subscription], vnet_keys: set[str]) -> dict[str, str]:
    """The VMs with a network interface in one of the VNETs (lowercased ids): lowercased id -> id."""
    vm_ids: dict[str, str] = {}
    for sub in subscriptions:
        for nic in sub.nics:
            vm_id = dig(nic, "properties", "virtualMachine", "id")
            in_target = any(
                _key(_vnet_of(dig(configuration, "properties", "subnet", "id"))) in vnet_keys
                for configuration in dig(nic, "properties", "ipConfigurations") or ()
            )
            if vm_id and in_target:
                vm_ids.setdefault(_key(vm_id), str(vm_id))
    return vm_ids


def _wants_public_ips(sub: _Subscription, vm_ids: Mapping[str, str]) -> bool:
    for nic in sub.nics:
        if _key(dig(nic, "properties", "virtualMachine", "id")) not in vm_ids:
            continue
        for configuration in dig(nic, "properties", "ipConfigurations") or ():
            if dig(configuration, "properties", "publicIPAddress", "id"):
                return True
    return False


def _get_vm(arm: _Arm, subscription: str, group: str, name: str) -> dict[str, Any] | None:
    """The VM with its instance view; None when it went away since its NIC was listed."""
    action = f"get virtualMachines/{name} (resource group {group}, subscription {subscription})"
    try:
        with arm.errors(action):
            return _rest(arm.compute(subscription).virtual_machines.get(group, name, expand="instanceView"))
    except InvalidParams:  # 404: deleted in the meantime
        return None


def check(params: Document | None = None, *, endpoints: Endpoints | None = None, config: Path | None = None) -> str:
    """For ``ksocket diagnostics``: the identity gets a token and ARM answers, listing no VM."""
    validate(params or {})
    endpoints = endpoints or Endpoints.from_env()
    identity = load_identity(endpoints, config)
    with _Arm(identity, endpoints) as arm:
        with arm.errors("token"):
            identity.credential.get_token(endpoints.scope)
        readable = arm.subscriptions()
    if not readable:
        raise OperationFailed(
            ErrorCode.AUTH_FAILED, f"{identity.description} can read no subscription: give it the Reader role"
        )
    host = urllib.parse.urlsplit(endpoints.arm).netloc
    return f"{identity.description}: {len(readable)} subscription(s) readable at {host}"
