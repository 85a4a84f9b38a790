"""An Azure test server for the azure collector: a protocol-level stand-in, NOT Azure.

No Azure emulator exists for Resource Manager's compute and network APIs, so this module answers
the REST calls that azure-identity, MSAL and azure-mgmt-compute / azure-mgmt-network make, with
JSON shaped like ARM's, over real HTTPS (stdlib ``http.server`` + ``ssl``, a certificate from the
test CA of :mod:`tests.tlstools`):

- the token authority (:class:`ArmServer`, HTTPS): MSAL's tenant discovery
  ``GET /{tenant}/v2.0/.well-known/openid-configuration`` and the client-credentials grant
  ``POST /{tenant}/oauth2/v2.0/token`` (a wrong secret is AADSTS7000215, HTTP 401);
- Resource Manager (the same server): ``GET /subscriptions``, and per subscription the
  ``virtualNetworks``, ``networkInterfaces``, ``publicIPAddresses`` and ``virtualMachines`` lists
  (``/subscriptions/{s}/providers/{type}``), ``virtualMachines/{name}`` with
  ``$expand=instanceView`` and ``virtualMachines/{name}/instanceView``. Lists are paged by the
  server (``page_size`` items, then an absolute ``nextLink`` with ``$skiptoken``), as ARM does;
- the instance metadata service (:class:`ImdsServer`, plain HTTP as on a VM): the managed identity
  token ``GET /metadata/identity/oauth2/token`` (``Metadata: true``) and the instance document
  ``GET /metadata/instance``.

Requests are checked the way the services check them (a bearer token the server issued, the
``Metadata`` header, an ``api-version``), and every request is logged so tests can see what the SDK
sent. Recorded from :attr:`LoopbackServer.log` with azure-identity 1.27 / MSAL 1.39,
azure-mgmt-network 33.1 and azure-mgmt-compute 39.0 (``ArmServer.api_versions`` collects them):

- ``GET /{tenant}/v2.0/.well-known/openid-configuration``, ``POST /{tenant}/oauth2/v2.0/token``
  (form: ``client_id``, ``client_secret``, ``grant_type=client_credentials``, ``scope``);
- ``GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=…`` (``Metadata: true``);
- ``GET /subscriptions?api-version=2022-12-01`` (the collector's own REST call);
- ``GET /subscriptions/{s}/providers/Microsoft.Network/{virtualNetworks|networkInterfaces|
  publicIPAddresses}?api-version=2026-03-01``, then the ``nextLink`` pages as given;
- ``GET /subscriptions/{s}/resourceGroups/{g}/providers/Microsoft.Compute/virtualMachines/{name}
  ?api-version=2026-04-01&$expand=instanceView``.

The server accepts any ``api-version`` (it records it) and answers one ARM shape. The server does NOT validate request
bodies against Azure's schemas nor implement RBAC beyond the ``deny`` and ``readable`` rules below:
a call Azure would refuse may pass here.

Faults for tests: ``deny`` (principal, resource type) pairs answered 403 AuthorizationFailed;
``readable`` limits the subscriptions a principal sees; ``faults`` answers the next N requests
whose path contains a string with a status (429 / 503, with ``Retry-After: 0``).
"""

from __future__ import annotations

import itertools
import re
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.cloudtools import LoopbackServer, Request, Response
from tests.tlstools import CertificateAuthority

MANAGED_IDENTITY = "managed-identity"


@dataclass
class Fault:
    path_contains: str
    status: int
    count: int = 1
    code: str = "ServerBusy"


@dataclass
class AzureCloud:
    """The resources the servers answer about, as ARM JSON keyed by lowercased resource id."""

    tenant: str = "5f2c3b1a-7d4e-4f60-9a8b-0c1d2e3f4a5b"
    principals: dict[str, str] = field(default_factory=dict)  # clientId -> secret
    managed_identity: bool = True  # the IMDS token endpoint issues tokens (an identity is assigned)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    instance_views: dict[str, dict[str, Any]] = field(default_factory=dict)
    page_size: int = 2
    deny: set[tuple[str, str]] = field(default_factory=set)  # (principal, "Microsoft.Network/networkInterfaces")
    readable: dict[str, set[str]] = field(default_factory=dict)  # principal -> subscriptions; absent: all
    faults: list[Fault] = field(default_factory=list)
    agent_vm: str = ""  # the VM the IMDS instance document describes
    _macs: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # --- building ---

    def add_subscription(self, name: str, subscription: str | None = None, state: str = "Enabled") -> str:
        subscription = subscription or str(uuid.uuid4())
        self.subscriptions[subscription] = {
            "id": f"/subscriptions/{subscription}",
            "authorizationSource": "RoleBased",
            "managedByTenants": [],
            "subscriptionId": subscription,
            "tenantId": self.tenant,
            "displayName": name,
            "state": state,
            "subscriptionPolicies": {"locationPlacementId": "Public_2014-09-01", "quotaId": "PayAsYouGo_2014-09-01"},
        }
        return subscription

    def _put(self, document: dict[str, Any]) -> str:
        self.resources[document["id"].lower()] = document
        return str(document["id"])

    def add_vnet(
        self, subscription: str, group: str, name: str, prefixes: list[str], subnets: dict[str, str], location: str
    ) -> str:
        vnet_id = (
            f"/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.Network/virtualNetworks/{name}"
        )
        return self._put(
            {
                "name": name,
                "id": vnet_id,
                "etag": 'W/"00000000-0000-0000-0000-000000000001"',
                "type": "Microsoft.Network/virtualNetworks",
                "location": location,
                "tags": {"env": "lab"},
                "properties": {
                    "provisioningState": "Succeeded",
                    "resourceGuid": str(uuid.uuid4()),
                    "addressSpace": {"addressPrefixes": prefixes},
                    "subnets": [
                        {
                            "name": subnet,
                            "id": f"{vnet_id}/subnets/{subnet}",
                            "type": "Microsoft.Network/virtualNetworks/subnets",
                            "properties": {"provisioningState": "Succeeded", "addressPrefix": prefix},
                        }
                        for subnet, prefix in subnets.items()
                    ],
                    "virtualNetworkPeerings": [],
                    "enableDdosProtection": False,
                },
            }
        )

    def add_vm(
        self,
        subscription: str,
        group: str,
        name: str,
        nics: list[tuple[str, list[str]]],  # per NIC: (subnet id, private addresses)
        *,
        location: str = "japaneast",
        size: str = "Standard_B2s",
        power: str = "running",
        os_type: str = "Linux",
        public: bool = False,
        tags: dict[str, str] | None = None,
    ) -> str:
        base = f"/subscriptions/{subscription}/resourceGroups/{group}/providers"
        vm_id = f"{base}/Microsoft.Compute/virtualMachines/{name}"
        references = []
        for index, (subnet, addresses) in enumerate(nics):
            nic_id = f"{base}/Microsoft.Network/networkInterfaces/{name}-nic{index}"
            configurations = []
            for number, address in enumerate(addresses):
                configuration_id = f"{nic_id}/ipConfigurations/ipconfig{number + 1}"
                settings: dict[str, Any] = {
                    "provisioningState": "Succeeded",
                    "privateIPAddress": address,
                    "privateIPAllocationMethod": "Dynamic",
                    "privateIPAddressVersion": "IPv4",
                    "subnet": {"id": subnet},
                    "primary": number == 0,
                }
                if public and index == 0 and number == 0:
                    ip_id = f"{base}/Microsoft.Network/publicIPAddresses/{name}-ip"
                    octet = next(self._macs)
                    self._put(
                        {
                            "name": f"{name}-ip",
                            "id": ip_id,
                            "type": "Microsoft.Network/publicIPAddresses",
                            "location": location,
                            "sku": {"name": "Standard", "tier": "Regional"},
                            "properties": {
                                "provisioningState": "Succeeded",
                                "ipAddress": f"20.48.{octet // 250}.{octet % 250 + 1}",
                                "publicIPAddressVersion": "IPv4",
                                "publicIPAllocationMethod": "Static",
                                "idleTimeoutInMinutes": 4,
                                "dnsSettings": {
                                    "domainNameLabel": name,
                                    "fqdn": f"{name}.{location}.cloudapp.azure.com",
                                },
                                "ipConfiguration": {"id": configuration_id},
                            },
                        }
                    )
                    settings["publicIPAddress"] = {"id": ip_id}
                configurations.append(
                    {
                        "name": f"ipconfig{number + 1}",
                        "id": configuration_id,
                        "type": "Microsoft.Network/networkInterfaces/ipConfigurations",
                        "properties": settings,
                    }
                )
            mac = next(self._macs)
            self._put(
                {
                    "name": f"{name}-nic{index}",
                    "id": nic_id,
                    "type": "Microsoft.Network/networkInterfaces",
                    "location": location,
                    "properties": {
                        "provisioningState": "Succeeded",
                        "ipConfigurations": configurations,
                        "macAddress": f"00-0D-3A-{mac >> 16 & 255:02X}-{mac >> 8 & 255:02X}-{mac & 255:02X}",
                        "primary": index == 0,
                        "virtualMachine": {"id": vm_id},
                        "enableAcceleratedNetworking": False,
                        "nicType": "Standard",
                    },
                }
            )
            references.append({"id": nic_id, "properties": {"primary": index == 0}})
        image = (
            {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"}
            if os_type == "Linux"
            else {
                "publisher": "MicrosoftWindowsServer",
                "offer": "WindowsServer",
                "sku": "2022-datacenter",
                "version": "latest",
            }
        )
        image["exactVersion"] = "24.04.202501010" if os_type == "Linux" else "20348.2966.250104"
        self._put(
            {
                "name": name,
                "id": vm_id,
                "type": "Microsoft.Compute/virtualMachines",
                "location": location,
                "tags": tags or {},
                "zones": ["1"],
                "properties": {
                    "vmId": str(uuid.uuid4()),
                    "hardwareProfile": {"vmSize": size},
                    "storageProfile": {
                        "imageReference": image,
                        "osDisk": {
                            "osType": os_type,
                            "name": f"{name}_OsDisk_1",
                            "createOption": "FromImage",
                            "caching": "ReadWrite",
                            "managedDisk": {"storageAccountType": "Premium_LRS"},
                            "deleteOption": "Delete",
                            "diskSizeGB": 30,
                        },
                        "dataDisks": [],
                    },
                    "osProfile": {"computerName": name, "adminUsername": "azureuser", "secrets": []},
                    "networkProfile": {"networkInterfaces": references},
                    "provisioningState": "Succeeded",
                    "timeCreated": "2025-01-10T09:00:00.0000000+00:00",
                },
            }
        )
        statuses = [
            {
                "code": "ProvisioningState/succeeded",
                "level": "Info",
                "displayStatus": "Provisioning succeeded",
                "time": "2025-01-10T09:01:00.0000000+00:00",
            },
            {"code": f"PowerState/{power}", "level": "Info", "displayStatus": f"VM {power}"},
        ]
        running = power == "running"
        self.instance_views[vm_id.lower()] = {
            "computerName": name if running else None,
            "osName": ("ubuntu" if os_type == "Linux" else "Windows Server 2022 Datacenter") if running else None,
            "osVersion": ("24.04" if os_type == "Linux" else "10.0.20348.2966") if running else None,
            "vmAgent": {"vmAgentVersion": "2.12.0.2", "statuses": []} if running else None,
            "disks": [],
            "hyperVGeneration": "V2",
            "statuses": statuses,
        }
        return vm_id

    def remove(self, resource_id: str) -> None:
        self.resources.pop(resource_id.lower(), None)


def _arm_error(status: int, code: str, message: str) -> Response:
    return Response(status, {"error": {"code": code, "message": message}})


LIST = re.compile(r"/subscriptions/(?P<sub>[^/]+)/providers/(?P<type>Microsoft\.\w+/\w+)", re.IGNORECASE)
VM = re.compile(
    r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/[^/]+/providers/Microsoft\.Compute/virtualMachines/[^/]+"
    r"(?P<view>/instanceView)?",
    re.IGNORECASE,
)


class ArmServer(LoopbackServer):
    """The token authority and Resource Manager of :class:`AzureCloud`, over HTTPS with ``ca``'s certificate."""

    def __init__(self, cloud: AzureCloud, ca: CertificateAuthority) -> None:
        self.cloud = cloud
        self.tokens: dict[str, str] = {}  # access token -> principal
        self.api_versions: dict[str, set[str]] = {}
        super().__init__(self._answer, tls=ca.server_context("arm", ["127.0.0.1", "localhost"]))

    def issue(self, principal: str) -> str:
        token = f"at-{principal}-{uuid.uuid4().hex}"
        with self.lock:
            self.tokens[token] = principal
        return token

    # --- the authority ---

    def _authority(self, request: Request) -> Response | None:
        tenant = self.cloud.tenant
        if request.path == f"/{tenant}/v2.0/.well-known/openid-configuration":
            base = f"{self.url}/{tenant}"
            return Response(
                200,
                {
                    "token_endpoint": f"{base}/oauth2/v2.0/token",
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                    "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                    "issuer": f"{base}/v2.0",
                    "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
                    "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                    "tenant_region_scope": "AS",
                },
            )
        if request.path == f"/{tenant}/oauth2/v2.0/token" and request.method == "POST":
            form = request.form()
            if form.get("grant_type") != "client_credentials":
                return Response(400, {"error": "unsupported_grant_type", "error_description": "AADSTS70003"})
            client = form.get("client_id", "")
            if client not in self.cloud.principals:
                return Response(
                    400,
                    {
                        "error": "unauthorized_client",
                        "error_description": f"AADSTS700016: Application with identifier '{client}' was not found "
                        f"in the directory '{tenant}'.",
                        "error_codes": [700016],
                    },
                )
            if self.cloud.principals[client] != form.get("client_secret"):
                return Response(
                    401,
                    {
                        "error": "invalid_client",
                        "error_description": "AADSTS7000215: Invalid client secret provided. Ensure the secret "
                        f"being sent in the request is the client secret value, not the client secret ID, "
                        f"for a secret added to app '{client}'.",
                        "error_codes": [7000215],
                    },
                )
            return Response(
                200,
                {
                    "token_type": "Bearer",
                    "expires_in": 3599,
                    "ext_expires_in": 3599,
                    "access_token": self.issue(client),
                },
            )
        return None

    # --- Resource Manager ---

    def _page(self, request: Request, items: list[dict[str, Any]]) -> Response:
        start = int((request.query.get("$skiptoken") or ["0"])[0])
        end = start + self.cloud.page_size
        document: dict[str, Any] = {"value": items[start:end]}
        if end < len(items):
            query = {key: values[0] for key, values in request.query.items() if key != "$skiptoken"}
            query["$skiptoken"] = str(end)
            document["nextLink"] = f"{self.url}{request.path}?{urllib.parse.urlencode(query)}"
        return Response(200, document)

    def _answer(self, request: Request) -> Response:
        answered = self._authority(request)
        if answered is not None:
            return answered
        for fault in self.cloud.faults:
            if fault.count > 0 and fault.path_contains in request.path:
                fault.count -= 1
                return Response(
                    fault.status,
                    {"error": {"code": fault.code, "message": "The server is busy; retry later."}},
                    {"Retry-After": "0"},
                )
        authorization = request.headers.get("authorization", "")
        principal = self.tokens.get(authorization.removeprefix("Bearer "))
        if principal is None:
            return _arm_error(401, "InvalidAuthenticationToken", "The access token is invalid.")
        versions = request.query.get("api-version")
        if not versions:
            return _arm_error(400, "MissingApiVersionParameter", "The api-version query parameter is required.")
        if request.method != "GET":
            return _arm_error(405, "MethodNotAllowed", f"{request.method} is not served here")
        if request.path == "/subscriptions":
            self._note("subscriptions", versions[0])
            readable = self.cloud.readable.get(principal)
            subscriptions = [s for k, s in self.cloud.subscriptions.items() if readable is None or k in readable]
            return self._page(request, subscriptions)
        match = LIST.fullmatch(request.path) or VM.fullmatch(request.path)
        if match is None:
            return _arm_error(404, "TestServerUnknownPath", f"the test server does not serve {request.path}")
        subscription = match["sub"]
        kind = match["type"] if match.re is LIST else "Microsoft.Compute/virtualMachines"
        self._note(kind, versions[0])
        if subscription not in self.cloud.subscriptions:
            return _arm_error(404, "SubscriptionNotFound", f"The subscription '{subscription}' could not be found.")
        readable = self.cloud.readable.get(principal)
        if (principal, kind) in self.cloud.deny or (readable is not None and subscription not in readable):
            return _arm_error(
                403,
                "AuthorizationFailed",
                f"The client '{principal}' with object id '{uuid.uuid5(uuid.NAMESPACE_URL, principal)}' does not have "
                f"authorization to perform action '{kind}/read' over scope '/subscriptions/{subscription}' or the "
                "scope is invalid. If access was recently granted, please refresh your credentials.",
            )
        if match.re is LIST:
            prefix = f"/subscriptions/{subscription}/".lower()
            marker = f"/providers/{kind}/".lower()
            items = [
                resource
                for key, resource in sorted(self.cloud.resources.items())
                if key.startswith(prefix) and marker in key and key.count("/") == prefix.count("/") + 5
            ]
            return self._page(request, items)
        vm = self.cloud.resources.get(request.path.removesuffix("/instanceView").lower())
        if vm is None:
            name = request.path.rsplit("/", 1)[-1]
            return _arm_error(404, "ResourceNotFound", f"The Resource '{kind}/{name}' was not found.")
        view = self.cloud.instance_views[vm["id"].lower()]
        if match["view"]:
            return Response(200, view)
        if (request.query.get("$expand") or [""])[0].lower() == "instanceview":
            return Response(200, {**vm, "properties": {**vm["properties"], "instanceView": view}})
        return Response(200, vm)

    def _note(self, kind: str, version: str) -> None:
        with self.lock:
            self.api_versions.setdefault(kind, set()).add(version)


class ImdsServer(LoopbackServer):
    """Azure's instance metadata service over plain HTTP: managed identity tokens and the instance document."""

    def __init__(self, cloud: AzureCloud, arm: ArmServer) -> None:
        self.cloud = cloud
        self.arm = arm
        super().__init__(self._answer)

    def _answer(self, request: Request) -> Response:
        if request.headers.get("metadata") != "true":
            return Response(
                400, {"error": "invalid_request", "error_description": "Required metadata header not specified"}
            )
        if "x-forwarded-for" in request.headers:
            return Response(403, {"error": "forbidden"})
        if request.path == "/metadata/identity/oauth2/token":
            if not request.query.get("resource"):
                return Response(400, {"error": "invalid_request", "error_description": "Required resource parameter"})
            if not self.cloud.managed_identity:
                return Response(400, {"error": "invalid_request", "error_description": "Identity not found"})
            return Response(
                200,
                {
                    "access_token": self.arm.issue(MANAGED_IDENTITY),
                    "client_id": str(uuid.uuid5(uuid.NAMESPACE_URL, MANAGED_IDENTITY)),
                    "expires_in": "86399",
                    "expires_on": "4102444800",
                    "ext_expires_in": "86399",
                    "not_before": "1700000000",
                    "resource": request.query["resource"][0],
                    "token_type": "Bearer",
                },
            )
        if request.path == "/metadata/instance":
            if not request.query.get("api-version"):
                return Response(400, {"error": "Bad request. api-version was not specified in the request"})
            vm = self.cloud.resources[self.cloud.agent_vm.lower()]
            subscription, group = vm["id"].split("/")[2], vm["id"].split("/")[4]
            nics = [
                self.cloud.resources[ref["id"].lower()]
                for ref in vm["properties"]["networkProfile"]["networkInterfaces"]
            ]
            return Response(
                200,
                {
                    "compute": {
                        "azEnvironment": "AzurePublicCloud",
                        "location": vm["location"],
                        "name": vm["name"],
                        "resourceGroupName": group,
                        "resourceId": vm["id"],
                        "subscriptionId": subscription,
                        "vmId": vm["properties"]["vmId"],
                        "vmSize": vm["properties"]["hardwareProfile"]["vmSize"],
                        "osType": vm["properties"]["storageProfile"]["osDisk"]["osType"],
                        "tagsList": [],
                    },
                    "network": {
                        "interface": [
                            {
                                "macAddress": nic["properties"]["macAddress"].replace("-", ""),
                                "ipv4": {
                                    "ipAddress": [
                                        {"privateIpAddress": c["properties"]["privateIPAddress"], "publicIpAddress": ""}
                                        for c in nic["properties"]["ipConfigurations"]
                                    ],
                                    "subnet": [],
                                },
                                "ipv6": {"ipAddress": []},
                            }
                            for nic in nics
                        ]
                    },
                },
            )
        return Response(404, {"error": "not found"})
