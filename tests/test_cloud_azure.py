"""networks.scan in azure mode against the project's ARM test server (tests/armserver.py), NOT Azure.

The token authority and Resource Manager answer over HTTPS with a certificate of a throw-away CA;
the instance metadata service (managed identity tokens, the instance document) over plain HTTP, as
on a VM. Both listen on 127.0.0.1. The managed identity reaches the metadata server through
azure-identity's ``AZURE_POD_IDENTITY_AUTHORITY_HOST``; a guard fails any test that tries a real
metadata address.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ksocket import cli, paths, redact
from ksocket.cli import scan as scan_command
from ksocket.collectors import cloud, scan
from ksocket.collectors.base import Cancelled, InvalidParams, NullContext, OperationFailed
from ksocket.collectors.cloud import azure
from tests.armserver import MANAGED_IDENTITY, ArmServer, AzureCloud, Fault, ImdsServer
from tests.cloudtools import (
    LoopbackGuard,
    RecordingContext,
    closed_port,
    guarded,
)
from tests.conftest import run_ksocket, write_home_config
from tests.tlstools import CertificateAuthority

pytestmark = pytest.mark.peer

CLIENT_ID = "app-reader"
SECRET = "reader-secret-Qx8~value-0123456789"
AZURE_VARIABLES = [
    "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "MSI_ENDPOINT",
    "MSI_SECRET", "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST", "AZURE_POD_IDENTITY_AUTHORITY_HOST", "KSOCKET_AZURE_ARM_ENDPOINT",
    "KSOCKET_AZURE_METADATA_ENDPOINT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY",
    "http_proxy", "https_proxy",
]  # fmt: skip


@dataclass
class Lab:
    cloud: AzureCloud
    arm: ArmServer
    imds: ImdsServer
    ca: CertificateAuthority
    main: str  # subscription ids
    other: str
    vnet_a: str  # resource ids
    vnet_b: str
    other_vnet_a: str
    agent: str
    vms: dict[str, str]  # name -> id

    def endpoints(self, **changes: Any) -> azure.Endpoints:
        values: dict[str, Any] = {
            "arm": self.arm.url,
            "authority": self.arm.url,
            "metadata": self.imds.url,
            "ca_bundle": str(self.ca.cert_path),
            "retries": 0,
        }
        return azure.Endpoints(**{**values, **changes})


def _build(tmp: Path) -> Lab:
    """Subscription "lab-main": vnet-a (front, back) with the agent and 10 VMs, vnet-b with 2; "lab-other":
    another vnet-a with 1 VM; "lab-disabled": disabled. The NIC list of lab-main spans several pages."""
    ca = CertificateAuthority.create(tmp / "ca")
    az = AzureCloud(page_size=2)
    az.principals[CLIENT_ID] = SECRET
    main = az.add_subscription("lab-main")
    other = az.add_subscription("lab-other")
    az.add_subscription("lab-disabled", state="Disabled")
    vnet_a = az.add_vnet(
        main, "rg-net", "vnet-a", ["10.10.0.0/16"], {"front": "10.10.1.0/24", "back": "10.10.2.0/24"}, "japaneast"
    )
    vnet_b = az.add_vnet(main, "rg-net", "vnet-b", ["10.20.0.0/16"], {"default": "10.20.1.0/24"}, "japaneast")
    other_vnet_a = az.add_vnet(other, "rg-other", "vnet-a", ["10.30.0.0/16"], {"default": "10.30.1.0/24"}, "japanwest")
    front, back, b_default = f"{vnet_a}/subnets/front", f"{vnet_a}/subnets/back", f"{vnet_b}/subnets/default"
    vms: dict[str, str] = {}
    vms["ksocket-agent"] = az.add_vm(main, "rg-ops", "ksocket-agent", [(front, ["10.10.1.4"])])
    for i in range(6):
        vms[f"web{i}"] = az.add_vm(
            main,
            "rg-web",
            f"web{i}",
            [(front, [f"10.10.1.{10 + i}"])],
            public=i < 2,
            power="stopped" if i == 5 else "running",
            tags={"role": "web"},
        )
    vms["db0"] = az.add_vm(main, "rg-db", "db0", [(back, ["10.10.2.10"])], os_type="Windows", size="Standard_D4s_v5")
    vms["db1"] = az.add_vm(main, "rg-db", "db1", [(back, ["10.10.2.11"])], power="deallocated")
    vms["router"] = az.add_vm(
        main, "rg-net", "router", [(front, ["10.10.1.250", "10.10.1.251"]), (b_default, ["10.20.1.250"])]
    )
    vms["app0"] = az.add_vm(main, "rg-app", "app0", [(b_default, ["10.20.1.10"])])
    vms["app1"] = az.add_vm(main, "rg-app", "app1", [(b_default, ["10.20.1.11"])])
    vms["other0"] = az.add_vm(other, "rg-other", "other0", [(f"{other_vnet_a}/subnets/default", ["10.30.1.10"])])
    az.agent_vm = vms["ksocket-agent"]
    arm = ArmServer(az, ca).start()
    imds = ImdsServer(az, arm).start()
    return Lab(az, arm, imds, ca, main, other, vnet_a, vnet_b, other_vnet_a, vms["ksocket-agent"], vms)


IN_VNET_A = {"ksocket-agent", "web0", "web1", "web2", "web3", "web4", "web5", "db0", "db1", "router"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    built = _build(tmp_path_factory.mktemp("azure"))
    yield built
    built.arm.stop()
    built.imds.stop()


@pytest.fixture
def metadata_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackGuard]:
    yield from guarded(monkeypatch)


@pytest.fixture(autouse=True)
def azure_env(lab: Lab, home: Path, monkeypatch: pytest.MonkeyPatch, metadata_guard: LoopbackGuard) -> Iterator[Path]:
    for name in AZURE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", lab.imds.url)
    monkeypatch.setenv("KSOCKET_AZURE_METADATA_ENDPOINT", lab.imds.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    yield home
    lab.cloud.deny.clear()
    lab.cloud.faults.clear()
    lab.cloud.readable.clear()
    lab.cloud.managed_identity = True
    with lab.arm.lock:
        lab.arm.log.clear()
    with lab.imds.lock:
        lab.imds.log.clear()


def _principal(lab: Lab, secret: str = SECRET, **extra: str) -> Path:
    path = paths.etc_dir() / "azure.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f'clientId = "{CLIENT_ID}"', f'secret = "{secret}"', f'tenant = "{lab.cloud.tenant}"']
    lines += [f'{key} = "{value}"' for key, value in extra.items()]
    path.write_text("# the manual's azure.toml\n" + "\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def _names(result: dict[str, Any]) -> set[str]:
    return {item["name"] for item in result["instances"]}


def _arm_calls(lab: Lab) -> list[str]:
    return [r.path for r in lab.arm.log if r.path.startswith("/subscriptions")]


def _environment_endpoints(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KSOCKET_AZURE_ARM_ENDPOINT", lab.arm.url)
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", lab.arm.url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(lab.ca.cert_path))


def test_service_principal_lists_a_named_vnet_over_pages(lab: Lab) -> None:
    config = _principal(lab)
    context = RecordingContext()
    result = azure.collect({"vnets": ["rg-net/vnet-a"]}, context, endpoints=lab.endpoints())

    assert result["mode"] == "azure" and result["vnetSource"] == "params"
    assert result["subscriptions"] == [lab.main, lab.other]  # a name: every readable (enabled) subscription
    assert _names(result) == IN_VNET_A
    assert [vnet["id"] for vnet in result["vnets"]] == [lab.vnet_a]
    vnet = result["vnets"][0]
    assert vnet["cidrs"] == ["10.10.0.0/16"] and vnet["resourceGroup"] == "rg-net" and vnet["subscription"] == lab.main
    assert [(s["name"], s["cidrs"]) for s in vnet["subnets"]] == [
        ("back", ["10.10.2.0/24"]),
        ("front", ["10.10.1.0/24"]),
    ]

    vms = {item["name"]: item for item in result["instances"]}
    web0 = vms["web0"]
    assert web0["id"] == lab.vms["web0"] and web0["resourceGroup"] == "rg-web" and web0["location"] == "japaneast"
    assert web0["state"] == "running" and web0["size"] == "Standard_B2s" and web0["tags"] == {"role": "web"}
    assert web0["osType"] == "Linux" and web0["osName"] == "ubuntu" and web0["image"]["publisher"] == "Canonical"
    assert web0["subnet"] == f"{lab.vnet_a}/subnets/front" and web0["vnet"] == lab.vnet_a
    (private,) = web0["privateAddresses"]
    assert private["address"] == "10.10.1.10" and private["primary"] is True and private["mac"] == web0["macs"][0]
    assert private["mac"].startswith("00:0d:3a:") and private["interface"].endswith("/networkInterfaces/web0-nic0")
    (public,) = web0["publicAddresses"]
    assert public["privateAddress"] == "10.10.1.10" and public["dnsName"] == "web0.japaneast.cloudapp.azure.com"
    assert vms["web2"]["publicAddresses"] == []
    assert vms["web5"]["state"] == "stopped" and vms["db1"]["state"] == "deallocated" and vms["db1"]["osName"] is None
    assert vms["db0"]["osType"] == "Windows" and vms["db0"]["size"] == "Standard_D4s_v5"

    router = vms["router"]
    assert len(router["macs"]) == 2 and len(router["privateAddresses"]) == 3
    assert [a["primary"] for a in router["privateAddresses"]] == [True, False, False]
    assert {a["vnet"] for a in router["privateAddresses"]} == {lab.vnet_a, lab.vnet_b}

    nic_pages = [r for r in lab.arm.log if r.path.endswith("/networkInterfaces") and lab.main in r.path]
    assert len(nic_pages) >= 5 and "$skiptoken" in nic_pages[-1].query  # the SDK followed nextLink
    assert len(lab.arm.requests("POST", "/oauth2/v2.0/token")) == 1
    assert all(
        r.headers["authorization"].startswith(f"Bearer at-{CLIENT_ID}-")
        for r in lab.arm.log
        if r.path.startswith("/subscriptions")
    )
    assert context.calls[-1] == (len(IN_VNET_A), len(IN_VNET_A))
    assert lab.imds.log == []  # named VNET: the metadata service is not asked
    assert redact.redact(f"x {SECRET} y") == f"x {redact.MASK} y"
    assert str(config) in azure.check({}, endpoints=lab.endpoints())
    json.dumps(result)


def test_vnets_named_by_id_search_only_their_subscription(lab: Lab) -> None:
    _principal(lab)
    result = azure.collect({"vnets": [lab.vnet_b]}, NullContext(), endpoints=lab.endpoints())
    assert _names(result) == {"app0", "app1", "router"}
    assert result["subscriptions"] == [lab.main]
    assert "/subscriptions" not in _arm_calls(lab)  # no subscription list needed
    assert all(lab.other not in path for path in _arm_calls(lab))


def test_a_name_in_two_subscriptions_is_ambiguous_and_an_unknown_one_is_refused(lab: Lab) -> None:
    _principal(lab)
    with pytest.raises(InvalidParams, match=r"VNET vnet-a is ambiguous .*name it by resource id"):
        azure.collect({"vnets": ["vnet-a"]}, NullContext(), endpoints=lab.endpoints())
    result = azure.collect(
        {"vnets": ["vnet-a"], "subscriptions": [lab.other]}, NullContext(), endpoints=lab.endpoints()
    )
    assert _names(result) == {"other0"} and result["instances"][0]["location"] == "japaneast"
    with pytest.raises(InvalidParams, match="no VNET rg-net/vnet-z in subscription"):
        azure.collect({"vnets": ["rg-net/vnet-z"]}, NullContext(), endpoints=lab.endpoints())


def test_managed_identity_and_the_agents_own_vnet(lab: Lab) -> None:
    result = azure.collect({}, NullContext(), endpoints=lab.endpoints())
    assert result["vnetSource"] == "metadata" and result["subscriptions"] == [lab.main]
    assert [vnet["id"] for vnet in result["vnets"]] == [lab.vnet_a]
    assert _names(result) == IN_VNET_A
    token_requests = lab.imds.requests("GET", "/metadata/identity/oauth2/token")
    assert token_requests and token_requests[0].query["resource"] == [lab.arm.url]
    (instance,) = lab.imds.requests("GET", "/metadata/instance")
    assert instance.headers["metadata"] == "true" and instance.query["api-version"] == [azure.METADATA_API]
    assert lab.arm.requests("POST") == []  # no service principal token
    assert all(r.headers["authorization"].startswith(f"Bearer at-{MANAGED_IDENTITY}-") for r in lab.arm.log)


def test_no_managed_identity_and_no_azure_toml_names_both(lab: Lab) -> None:
    lab.cloud.managed_identity = False
    with pytest.raises(OperationFailed) as caught:
        azure.collect({"vnets": [lab.vnet_a]}, NullContext(), endpoints=lab.endpoints())
    assert caught.value.code == "no-credential" and not caught.value.transient
    assert str(paths.etc_dir() / "azure.toml") in str(caught.value) and "managed identity" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_wrong_secret_is_auth_failed_and_never_shown(lab: Lab) -> None:
    wrong = "wrong-secret-value-9876543210"
    _principal(lab, secret=wrong)
    with pytest.raises(OperationFailed) as caught:
        azure.collect({"vnets": [lab.vnet_a]}, NullContext(), endpoints=lab.endpoints())
    assert caught.value.code == "auth-failed" and caught.value.transient is False
    assert "AADSTS7000215" in str(caught.value)
    assert wrong not in redact.redact(str(caught.value)) and redact.redact(wrong) == redact.MASK


def test_a_403_is_auth_failed_and_not_retried(lab: Lab) -> None:
    _principal(lab)
    lab.cloud.deny.add((CLIENT_ID, "Microsoft.Network/networkInterfaces"))
    with pytest.raises(OperationFailed) as caught:
        azure.collect({"vnets": [lab.vnet_a]}, NullContext(), endpoints=lab.endpoints(retries=3))
    assert caught.value.code == "auth-failed" and caught.value.transient is False
    assert "AuthorizationFailed" in str(caught.value) and "networkInterfaces" in str(caught.value)
    assert len([r for r in lab.arm.log if r.path.endswith("/networkInterfaces")]) == 1  # the SDK did not retry it


def test_throttling_is_retried_by_the_sdk_then_transient(lab: Lab) -> None:
    _principal(lab)
    lab.cloud.faults.append(Fault("/networkInterfaces", 429, count=1, code="TooManyRequests"))
    result = azure.collect({"vnets": [lab.vnet_b]}, NullContext(), endpoints=lab.endpoints(retries=1))
    assert _names(result) == {"app0", "app1", "router"}  # one 429, then the SDK's retry went through

    lab.cloud.faults.append(Fault("/virtualMachines/", 503, count=10))
    with pytest.raises(OperationFailed) as caught:
        azure.collect({"vnets": [lab.vnet_b]}, NullContext(), endpoints=lab.endpoints(retries=1))
    assert caught.value.code == "unreachable" and caught.value.transient is True
    assert "ServerBusy" in str(caught.value)
    assert lab.cloud.faults[-1].count == 8  # two attempts: the SDK's own retry, then the pipeline's turn


def test_an_unreachable_resource_manager_is_transient(lab: Lab) -> None:
    _principal(lab)
    endpoints = lab.endpoints(arm=f"https://127.0.0.1:{closed_port()}")
    with pytest.raises(OperationFailed) as caught:
        azure.collect({"vnets": [lab.vnet_a]}, NullContext(), endpoints=endpoints)
    assert caught.value.code == "unreachable" and caught.value.transient is True


def test_a_vm_deleted_after_its_nic_was_listed_is_left_out(lab: Lab) -> None:
    _principal(lab)
    vm = lab.cloud.resources.pop(lab.vms["app1"].lower())
    try:
        result = azure.collect({"vnets": [lab.vnet_b]}, NullContext(), endpoints=lab.endpoints())
    finally:
        lab.cloud.resources[lab.vms["app1"].lower()] = vm
    assert _names(result) == {"app0", "router"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('clientId = "a"\nsecret = \n', "azure.toml: not TOML"),
        ('secret = "s3cr3t-value"\ntenant = "t"\n', "azure.toml: clientId is missing"),
        ('clientId = "a"\nsecret = ""\ntenant = "t"\n', "azure.toml: secret must be a non-empty string"),
        ('clientId = "a"\nsecret = "s3cr3t-value"\ntenant = 5\n', "azure.toml: tenant must be a non-empty string"),
        ('clientId = "a"\nsecret = "s3cr3t-value"\ntenant = "bad tenant!"\n', "azure.toml: tenant must be a tenant id"),
    ],
)
def test_a_broken_azure_toml_is_one_line_naming_file_and_field(lab: Lab, text: str, message: str) -> None:
    path = paths.etc_dir() / "azure.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(OperationFailed, match=message) as caught:
        azure.collect({"vnets": [lab.vnet_a]}, NullContext(), endpoints=lab.endpoints())
    assert caught.value.code == "no-credential" and str(path) in str(caught.value)
    assert "\n" not in str(caught.value)
    assert lab.arm.log == []


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_an_azure_toml_open_to_others_is_refused_naming_chmod(lab: Lab, mode: int) -> None:
    path = _principal(lab)
    path.chmod(mode)
    with pytest.raises(OperationFailed) as caught:
        azure.check({}, endpoints=lab.endpoints())
    assert caught.value.code == "no-credential" and f"run chmod 600 {path}" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert lab.arm.log == []  # the secret was not sent anywhere


def test_check_lists_no_vm_and_fails_without_a_readable_subscription(lab: Lab) -> None:
    _principal(lab)
    line = azure.check({}, endpoints=lab.endpoints())
    assert line.startswith(f"service principal {CLIENT_ID} (tenant {lab.cloud.tenant})")
    assert line.endswith(f"2 subscription(s) readable at 127.0.0.1:{lab.arm.port}")  # the disabled one is left out
    assert all("virtualMachines" not in r.path and "networkInterfaces" not in r.path for r in lab.arm.log)
    lab.cloud.readable[CLIENT_ID] = set()
    with pytest.raises(OperationFailed, match="can read no subscription: give it the Reader role") as caught:
        azure.check({}, endpoints=lab.endpoints())
    assert caught.value.code == "auth-failed"


def test_run_and_check_through_the_environment(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default path: endpoints from the environment, the CA from REQUESTS_CA_BUNDLE, azure.toml from etc/."""
    _principal(lab)
    _environment_endpoints(lab, monkeypatch)
    result = cloud.run("azure", {"vnets": ["rg-net/vnet-b"]})
    assert _names(result) == {"app0", "app1", "router"}
    printed = io.StringIO()
    scan_command.print_machines(result, printed)
    table = printed.getvalue()
    assert "app0" in table and "10.20.1.250" in table and table.splitlines()[-1].startswith("3 azure machines in ")
    assert cloud.check("azure").startswith(f"service principal {CLIENT_ID}")


def test_scan_command_names_vnets_and_subscriptions(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _principal(lab)
    _environment_endpoints(lab, monkeypatch)
    assert cli.main(["scan", "--mode", "azure", "vnet-a", "--subscription", lab.other, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["subscriptions"] == [lab.other] and _names(result) == {"other0"}
    assert lab.imds.log == []  # the VNET came from the command line, not from the metadata service

    assert cli.main(["scan", "--mode", "azure", "rg-net/vnet-b", "--region", "us-east-2"]) == 2
    assert "--region applies to --mode aws only, not azure" in capsys.readouterr().err
    assert cli.main(["scan", "--mode", "azure", "--inspect"]) == 2
    assert "--inspect applies to --mode intranet only, not azure" in capsys.readouterr().err


def test_diagnostics_reaches_the_api_under_connect_and_config_judges_only_the_file(
    lab: Lab, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _principal(lab)
    _environment_endpoints(lab, monkeypatch)
    write_home_config(home, '[operations]\nnetworksScanMode = "azure"\n')
    checked = run_ksocket("diagnostics", "config")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "azure API" not in checked.stdout
    assert lab.arm.log == []
    checked = run_ksocket("diagnostics", "connect")
    assert checked.returncode == 1  # connect.host is not set: the hub's line is NG, the API's is still checked
    assert re.search(
        rf"^Reach the azure API with its credentials \.+ OK \[service principal {CLIENT_ID} ", checked.stdout, re.M
    )
    assert lab.arm.requests("POST", "/oauth2/v2.0/token")
    assert SECRET not in checked.stdout + checked.stderr


def test_cancelled_between_vms(lab: Lab) -> None:
    _principal(lab)
    context = RecordingContext(cancel_after=3)
    with pytest.raises(Cancelled):
        azure.collect({"vnets": [lab.vnet_a]}, context, endpoints=lab.endpoints())
    assert len([r for r in lab.arm.log if "/virtualMachines/" in r.path]) == 2


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"vnets": ["a/b/c"]}, "vnets: 'a/b/c'"),
        ({"vnets": {}}, "non-empty list"),
        ({"subscriptions": ["not-a-guid"]}, "subscriptions: 'not-a-guid'"),
    ],
)
def test_invalid_params_are_refused_before_anything_is_sent(lab: Lab, params: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidParams, match=message):
        azure.collect(params, NullContext(), endpoints=lab.endpoints())
    assert lab.arm.log == [] and lab.imds.log == []


def test_invalid_params_are_refused_at_admission(lab: Lab) -> None:
    """networks.scan's validator, which the agent runs before it enqueues the operation."""
    with pytest.raises(InvalidParams, match="subscriptions: 'not-a-guid'"):
        scan.validate({"mode": "azure", "subscriptions": ["not-a-guid"]})
    scan.validate({"mode": "azure", "vnets": ["rg-net/vnet-a"]})
    assert lab.arm.log == [] and lab.imds.log == []


def test_an_unanswered_metadata_service_says_to_name_the_vnets(lab: Lab) -> None:
    endpoints = lab.endpoints(metadata=f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(OperationFailed, match=r"Azure instance metadata service at .*name the VNETs in params\.vnets"):
        azure.collect({}, NullContext(), endpoints=endpoints)


def test_an_unknown_subscription_is_refused(lab: Lab) -> None:
    _principal(lab)
    missing = "0badc0de-0000-4000-8000-000000000000"
    with pytest.raises(InvalidParams, match=f"SubscriptionNotFound: The subscription '{missing}' could not be found"):
        azure.collect({"vnets": ["vnet-a"], "subscriptions": [missing]}, NullContext(), endpoints=lab.endpoints())
