"""networks.scan in aws mode against moto's server mode: a real HTTP EC2/IAM endpoint on loopback.

Every test runs with ``AWS_EC2_METADATA_DISABLED=true``, HOME in a temporary folder (its
``~/.aws/config`` and ``~/.aws/credentials`` are the test's), ``AWS_ENDPOINT_URL`` at moto, and a
guard that fails the test on any connection to a real metadata address. The agent's-own-VPC lookup
is tested against :class:`tests.cloudtools.Ec2MetadataServer` on loopback.
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from ksocket import cli, redact
from ksocket.cli import scan as scan_command
from ksocket.collectors import cloud, scan
from ksocket.collectors.base import Cancelled, InvalidParams, NullContext, OperationFailed
from ksocket.collectors.cloud import aws
from tests.cloudtools import (
    Ec2MetadataServer,
    FaultServer,
    LoopbackGuard,
    RecordingContext,
    closed_port,
    guarded,
)
from tests.conftest import run_ksocket, write_home_config

pytestmark = pytest.mark.peer

REGION = "us-east-2"
LINUX_AMI = "ami-1e749f67"  # ubuntu in moto's image list
WINDOWS_AMI = "ami-03cf127a"
SECRET_KEY = "ksocket-test-secret-access-key-0123456789"
ACCESS_KEY = "AKIAKSOCKETTEST00001"
AWS_VARIABLES = [
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
    "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
]  # fmt: skip


@dataclass
class Lab:
    url: str
    vpc_a: str = ""
    vpc_b: str = ""
    vpc_c: str = ""
    subnet_a1: str = ""
    subnet_a2: str = ""
    subnet_b: str = ""
    a: list[str] = field(default_factory=list)
    b: list[str] = field(default_factory=list)
    c: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    terminated: str = ""
    multi: str = ""
    second_eni: str = ""
    eip_instance: str = ""
    eip: str = ""


def _client(url: str, service: str, **keys: str) -> Any:
    keys = keys or {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
    return boto3.client(service, endpoint_url=url, region_name=REGION, **keys)


def _launch(ec2: Any, subnet: str, name: str, image: str = LINUX_AMI, **tags: str) -> str:
    all_tags = [{"Key": "Name", "Value": name}, *({"Key": k, "Value": v} for k, v in tags.items())]
    reply = ec2.run_instances(
        ImageId=image,
        MinCount=1,
        MaxCount=1,
        SubnetId=subnet,
        InstanceType="t3.micro",
        TagSpecifications=[{"ResourceType": "instance", "Tags": all_tags}],
    )
    return str(reply["Instances"][0]["InstanceId"])


def _build(lab: Lab) -> None:
    """Three VPCs: A (two subnets, 23 instances, 2 stopped, 1 terminated), B (4), C (2)."""
    ec2 = _client(lab.url, "ec2")

    def vpc(cidr: str, name: str) -> str:
        vpc_id = str(ec2.create_vpc(CidrBlock=cidr)["Vpc"]["VpcId"])
        ec2.create_tags(Resources=[vpc_id], Tags=[{"Key": "Name", "Value": name}])
        return vpc_id

    def subnet(vpc_id: str, cidr: str, zone: str, name: str) -> str:
        subnet_id = str(ec2.create_subnet(VpcId=vpc_id, CidrBlock=cidr, AvailabilityZone=zone)["Subnet"]["SubnetId"])
        ec2.create_tags(Resources=[subnet_id], Tags=[{"Key": "Name", "Value": name}])
        return subnet_id

    lab.vpc_a, lab.vpc_b, lab.vpc_c = (
        vpc("10.1.0.0/16", "lab-a"),
        vpc("10.2.0.0/16", "lab-b"),
        vpc("10.3.0.0/16", "lab-c"),
    )
    lab.subnet_a1 = subnet(lab.vpc_a, "10.1.1.0/24", "us-east-2a", "a-front")
    lab.subnet_a2 = subnet(lab.vpc_a, "10.1.2.0/24", "us-east-2b", "a-back")
    lab.subnet_b = subnet(lab.vpc_b, "10.2.1.0/24", "us-east-2a", "b-only")
    subnet_c = subnet(lab.vpc_c, "10.3.1.0/24", "us-east-2c", "c-only")
    ec2.modify_subnet_attribute(SubnetId=lab.subnet_a1, MapPublicIpOnLaunch={"Value": True})

    lab.a = [_launch(ec2, lab.subnet_a1, f"web-{i:02d}", role="web") for i in range(1, 13)]
    lab.a += [_launch(ec2, lab.subnet_a2, f"db-{i:02d}", WINDOWS_AMI if i == 1 else LINUX_AMI) for i in range(1, 12)]
    lab.b = [_launch(ec2, lab.subnet_b, f"b-{i}") for i in range(1, 5)]
    lab.c = [_launch(ec2, subnet_c, f"c-{i}") for i in range(1, 3)]

    lab.stopped = lab.a[12:14]
    ec2.stop_instances(InstanceIds=lab.stopped)
    lab.terminated = lab.a[0]
    ec2.terminate_instances(InstanceIds=[lab.terminated])

    lab.multi = lab.a[14]
    eni = ec2.create_network_interface(SubnetId=lab.subnet_a2, SecondaryPrivateIpAddressCount=1)["NetworkInterface"]
    lab.second_eni = str(eni["NetworkInterfaceId"])
    ec2.attach_network_interface(NetworkInterfaceId=lab.second_eni, InstanceId=lab.multi, DeviceIndex=1)

    lab.eip_instance = lab.a[15]
    allocation = ec2.allocate_address(Domain="vpc")
    lab.eip = str(allocation["PublicIp"])
    ec2.associate_address(InstanceId=lab.eip_instance, AllocationId=allocation["AllocationId"])


def _moto_auth(url: str, count: str) -> None:
    """Moto's IAM enforcement: ``0`` enforces from the next request on, ``inf`` turns it off."""
    request = urllib.request.Request(
        f"{url}/moto-api/reset-auth", data=count.encode(), method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert json.load(answer)["status"] == "ok"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for name in AWS_VARIABLES:
            patch.delenv(name, raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        built = Lab(f"http://{host}:{port}")
        _build(built)
    yield built
    server.stop()


@pytest.fixture
def metadata_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackGuard]:
    yield from guarded(monkeypatch)


@pytest.fixture(autouse=True)
def aws_home(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, metadata_guard: LoopbackGuard
) -> Iterator[Path]:
    """HOME with the manual's ~/.aws/config (region) and ~/.aws/credentials (a CLI profile)."""
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "admin"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "config").write_text(f"[default]\nregion = {REGION}\n")
    (home / ".aws" / "credentials").write_text(
        f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
    )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", lab.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    yield home


def _by_id(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["id"]: item for item in result["instances"]}


def test_a_named_vpc_is_listed_over_several_pages(lab: Lab) -> None:
    context = RecordingContext()
    result = aws.collect({"vpcs": [lab.vpc_a], "pageSize": 5}, context)

    assert result["mode"] == "aws" and result["region"] == REGION and result["vpcSource"] == "params"
    instances = _by_id(result)
    assert set(instances) == set(lab.a)
    assert len(context.calls) >= 5  # 23 instances, 5 per page
    assert context.calls[-1] == (23, 23)
    assert all(done < total for done, total in context.calls[:-1])

    assert {i["state"] for i in instances.values() if i["id"] in lab.stopped} == {"stopped"}
    assert instances[lab.terminated]["state"] == "terminated"
    assert sum(i["state"] == "running" for i in instances.values()) == 20

    web = instances[lab.a[3]]
    assert web["name"] == "web-04" and web["tags"] == {"Name": "web-04", "role": "web"}
    assert web["type"] == "t3.micro" and web["image"] == LINUX_AMI and web["vpc"] == lab.vpc_a
    assert web["subnet"] == lab.subnet_a1 and web["availabilityZone"] == "us-east-2a"
    assert web["launchTime"].endswith("Z")
    (primary,) = web["privateAddresses"]
    assert primary["address"].startswith("10.1.1.") and primary["primary"] is True
    assert primary["subnet"] == lab.subnet_a1 and primary["interface"].startswith("eni-")
    assert primary["mac"] == web["macs"][0] and len(primary["mac"].split(":")) == 6
    assert web["publicAddresses"] and web["publicAddresses"][0]["privateAddress"] == primary["address"]
    assert instances[lab.a[20]]["publicAddresses"] == []  # a-back does not map public addresses
    assert instances[lab.a[12]]["platform"] == "Windows"

    (vpc,) = result["vpcs"]
    assert vpc["id"] == lab.vpc_a and vpc["name"] == "lab-a" and vpc["cidrs"] == ["10.1.0.0/16"]
    assert [(s["id"], s["cidr"]) for s in vpc["subnets"]] == sorted(
        [(lab.subnet_a1, "10.1.1.0/24"), (lab.subnet_a2, "10.1.2.0/24")]
    )
    json.dumps(result)  # the document is JSON-ready


def test_several_vpcs_and_nothing_else(lab: Lab) -> None:
    result = aws.collect({"vpcs": [lab.vpc_b, lab.vpc_c]}, NullContext())
    assert set(_by_id(result)) == set(lab.b + lab.c)
    assert [vpc["id"] for vpc in result["vpcs"]] == [lab.vpc_b, lab.vpc_c]
    assert {i["vpc"] for i in result["instances"]} == {lab.vpc_b, lab.vpc_c}


def test_second_interface_and_elastic_address(lab: Lab) -> None:
    instances = _by_id(aws.collect({"vpcs": [lab.vpc_a]}, NullContext()))
    multi = instances[lab.multi]
    assert len(multi["macs"]) == 2
    assert len(multi["privateAddresses"]) == 3
    assert sum(address["primary"] for address in multi["privateAddresses"]) == 1
    assert [a["interface"] for a in multi["privateAddresses"]].count(lab.second_eni) == 2
    assert {a["mac"] for a in multi["privateAddresses"]} == set(multi["macs"])
    assert [a["address"] for a in instances[lab.eip_instance]["publicAddresses"]] == [lab.eip]


def test_the_agents_own_vpc_comes_from_the_metadata_service(lab: Lab) -> None:
    with Ec2MetadataServer({"02:00:00:aa:bb:01": lab.vpc_b}) as imds:
        result = aws.collect({}, NullContext(), metadata_endpoint=imds.url)
    assert result["vpcSource"] == "metadata"
    assert set(_by_id(result)) == set(lab.b)
    token_put = imds.requests("PUT")
    assert [r.path for r in token_put] == ["/latest/api/token"]
    gets = imds.requests("GET")
    assert gets and all(r.headers.get("x-aws-ec2-metadata-token") == Ec2MetadataServer.TOKEN for r in gets)


def test_metadata_service_without_imdsv2_and_with_two_vpcs(lab: Lab) -> None:
    interfaces = {"02:00:00:aa:bb:01": lab.vpc_b, "02:00:00:aa:bb:02": lab.vpc_c}
    with Ec2MetadataServer(interfaces, imdsv2=False) as imds:
        result = aws.collect({}, NullContext(), metadata_endpoint=imds.url)
    assert set(_by_id(result)) == set(lab.b + lab.c)
    assert all("x-aws-ec2-metadata-token" not in r.headers for r in imds.requests("GET"))


def test_metadata_disabled_and_no_vpc_named_says_what_to_do(metadata_guard: LoopbackGuard) -> None:
    with pytest.raises(InvalidParams, match=r"AWS_EC2_METADATA_DISABLED.*params\.vpcs"):
        aws.collect({}, NullContext())
    assert metadata_guard.attempts == []


def test_unanswered_metadata_service_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")  # the endpoint variable points at a closed loopback port
    with pytest.raises(OperationFailed) as caught:
        aws.collect({}, NullContext())
    assert caught.value.code == "unreachable" and not caught.value.transient
    assert "127.0.0.1" in str(caught.value) and "params.vpcs" in str(caught.value) and "\n" not in str(caught.value)


def test_region_comes_from_params_over_the_config(lab: Lab) -> None:
    with pytest.raises(InvalidParams, match=f"no VPC {lab.vpc_a} in eu-west-1"):
        aws.collect({"vpcs": [lab.vpc_a], "region": "eu-west-1"}, NullContext())


def test_missing_region_names_what_to_set(aws_home: Path) -> None:
    (aws_home / ".aws" / "config").write_text("[default]\noutput = json\n")
    with pytest.raises(InvalidParams) as caught:
        aws.collect({"vpcs": ["vpc-0123456789abcdef0"]}, NullContext())
    assert str(caught.value) == aws.NO_REGION
    with pytest.raises(InvalidParams, match="no AWS region"):
        aws.check({})


def test_missing_credentials_names_what_to_set(aws_home: Path) -> None:
    (aws_home / ".aws" / "credentials").unlink()
    with pytest.raises(OperationFailed) as caught:
        aws.collect({"vpcs": ["vpc-0123456789abcdef0"]}, NullContext())
    assert caught.value.code == "no-credential" and not caught.value.transient
    assert str(caught.value).startswith("no AWS credentials:") and "~/.aws/credentials" in str(caught.value)


def _iam_user(lab: Lab, aws_home: Path, name: str, actions: list[str]) -> dict[str, str]:
    """A user allowed ``actions`` only, whose access key becomes the default profile's."""
    iam = _client(lab.url, "iam")
    iam.create_user(UserName=name)
    policy = iam.create_policy(
        PolicyName=f"{name}-policy",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
        ),
    )
    iam.attach_user_policy(UserName=name, PolicyArn=policy["Policy"]["Arn"])
    key: dict[str, str] = iam.create_access_key(UserName=name)["AccessKey"]
    (aws_home / ".aws" / "credentials").write_text(
        f"[default]\naws_access_key_id = {key['AccessKeyId']}\naws_secret_access_key = {key['SecretAccessKey']}\n"
    )
    return key


def test_iam_denied_is_auth_failed_and_not_retried(lab: Lab, aws_home: Path) -> None:
    key = _iam_user(lab, aws_home, "reader-without-ec2-instances", ["ec2:DescribeVpcs", "ec2:DescribeSubnets"])
    _moto_auth(lab.url, "0")
    try:
        with pytest.raises(OperationFailed) as denied:
            aws.collect({"vpcs": [lab.vpc_a]}, NullContext())
        with pytest.raises(OperationFailed) as check_denied:
            aws.check({})
        (aws_home / ".aws" / "credentials").write_text(
            f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
        )
        with pytest.raises(OperationFailed) as unknown_key:
            aws.collect({"vpcs": [lab.vpc_a]}, NullContext())
    finally:
        _moto_auth(lab.url, "inf")
    assert denied.value.code == "auth-failed" and denied.value.transient is False
    assert "ec2:DescribeInstances" in str(denied.value) and "AccessDenied" in str(denied.value)
    assert check_denied.value.code == "auth-failed"
    assert unknown_key.value.code == "auth-failed" and "AuthFailure" in str(unknown_key.value)
    assert key["SecretAccessKey"] not in redact.redact(f"x {key['SecretAccessKey']} y")


@pytest.mark.parametrize(
    ("allowed", "denied"),
    [
        (["ec2:DescribeInstances"], "ec2:DescribeVpcs"),
        (["ec2:DescribeInstances", "ec2:DescribeVpcs"], "ec2:DescribeSubnets"),
    ],
)
def test_check_names_any_call_of_the_scan_that_is_denied(
    lab: Lab, aws_home: Path, allowed: list[str], denied: str
) -> None:
    _iam_user(lab, aws_home, f"allowed-{len(allowed)}-calls", allowed)
    _moto_auth(lab.url, "0")
    try:
        with pytest.raises(OperationFailed) as check_denied:
            aws.check({})
        with pytest.raises(OperationFailed) as scan_denied:
            aws.collect({"vpcs": [lab.vpc_b]}, NullContext())
    finally:
        _moto_auth(lab.url, "inf")
    assert check_denied.value.code == "auth-failed"
    assert str(check_denied.value).startswith(f"{denied} {REGION}: AccessDenied")
    assert str(scan_denied.value).startswith(f"{denied} in {REGION}: AccessDenied")  # what the scan meets


EC2_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
    "<Message>{message}</Message></Error></Errors><RequestID>ksocket-test</RequestID></Response>"
)


@pytest.mark.parametrize(
    ("status", "code"), [(503, "RequestLimitExceeded"), (500, "InternalError"), (503, "Unavailable")]
)
def test_throttling_and_server_errors_are_transient_after_the_sdk_retries(
    monkeypatch: pytest.MonkeyPatch, status: int, code: str
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    with FaultServer(status, EC2_ERROR.format(code=code, message="try later")) as fault:
        monkeypatch.setenv("AWS_ENDPOINT_URL", fault.url)
        with pytest.raises(OperationFailed) as caught:
            aws.collect({"vpcs": ["vpc-0123456789abcdef0"]}, NullContext())
    assert caught.value.code == "unreachable" and caught.value.transient is True
    assert code in str(caught.value)
    assert len(fault.log) == 2  # botocore's own retry happened before the pipeline's


def test_an_unreachable_endpoint_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(OperationFailed) as caught:
        aws.check({})
    assert caught.value.code == "unreachable" and caught.value.transient is True
    assert "\n" not in str(caught.value)


def test_check_lists_nothing_and_names_region_and_credentials(lab: Lab) -> None:
    line = aws.check({})
    assert line == (
        f"region {REGION}, credentials from shared-credentials-file, "
        "ec2:DescribeVpcs, ec2:DescribeSubnets, ec2:DescribeInstances allowed"
    )
    assert cloud.check("aws").startswith(f"region {REGION}")


def test_diagnostics_reaches_the_api_under_connect_and_config_judges_only_the_file(lab: Lab, home: Path) -> None:
    write_home_config(home, '[operations]\nnetworksScanMode = "aws"\n')
    checked = run_ksocket("diagnostics", "config")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "aws API" not in checked.stdout
    checked = run_ksocket("diagnostics", "connect")
    assert checked.returncode == 1  # connect.host is not set: the hub's line is NG, the API's is still checked
    assert re.search(rf"^Reach the aws API with its credentials \.+ OK \[region {REGION}, ", checked.stdout, re.M)
    assert SECRET_KEY not in checked.stdout + checked.stderr


def test_scan_command_names_vpcs_and_region(
    lab: Lab, home: Path, aws_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (aws_home / ".aws" / "config").write_text("[default]\noutput = json\n")  # the region only from --region
    assert cli.main(["scan", "--mode", "aws", lab.vpc_b, lab.vpc_c, "--region", REGION, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["region"] == REGION and result["vpcSource"] == "params"
    assert set(_by_id(result)) == set(lab.b + lab.c)

    assert cli.main(["scan", "--mode", "aws", lab.vpc_b]) == 2
    error = capsys.readouterr().err.strip()
    assert "--region" in error and "params.region" in error


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--inspect"], "--inspect applies to --mode intranet only, not aws"),
        (["--rate", "0"], "--rate applies to --mode intranet only"),
        (["--subscription", "0badc0de-0000-4000-8000-000000000000"], "--subscription applies to --mode azure only"),
        (["10.0.0.0/8"], "vpcs: '10.0.0.0/8' is not a VPC id"),
    ],
)
def test_scan_command_refuses_what_aws_mode_would_ignore(
    home: Path, arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["scan", "--mode", "aws", "--region", REGION, *arguments]) == 2
    assert message in capsys.readouterr().err


def test_scan_command_without_a_vpc_says_how_to_name_one(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["scan", "--mode", "aws"]) == 2
    assert "params.vpcs (ksocket scan --mode aws VPC_ID…)" in capsys.readouterr().err


def test_the_secret_key_read_is_registered_for_redaction(lab: Lab) -> None:
    aws.collect({"vpcs": [lab.vpc_c]}, NullContext())
    assert redact.redact(f"boto said {SECRET_KEY}") == f"boto said {redact.MASK}"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"vpcs": "subnet-1234"}, "vpcs: 'subnet-1234'"),
        ({"vpcs": []}, "non-empty list"),
        ({"vpcs": [1]}, "vpcs: 1"),
        ({"region": "Tokyo"}, "region must be an AWS region"),
        ({"pageSize": 2}, "pageSize must be an integer from 5 to 1000"),
        ({"pageSize": True}, "pageSize"),
    ],
)
def test_invalid_params_are_refused_before_anything_is_sent(params: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidParams, match=message):
        aws.collect(params, NullContext())


def test_invalid_params_are_refused_at_admission(metadata_guard: LoopbackGuard) -> None:
    """networks.scan's validator, which the agent runs before it enqueues the operation."""
    with pytest.raises(InvalidParams, match="vpcs: 'subnet-1234'"):
        scan.validate({"mode": "aws", "vpcs": ["subnet-1234"]})
    with pytest.raises(InvalidParams, match="region must be an AWS region"):
        scan.validate({"mode": "aws", "region": "Tokyo"})
    scan.validate({"mode": "aws", "vpcs": ["vpc-0123456789abcdef0"], "region": REGION})
    assert metadata_guard.attempts == []


def test_cancelled_between_pages(lab: Lab) -> None:
    context = RecordingContext(cancel_after=2)
    with pytest.raises(Cancelled):
        aws.collect({"vpcs": [lab.vpc_a], "pageSize": 5}, context)
    assert len(context.calls) == 2


def test_run_through_the_package_and_the_table(lab: Lab) -> None:
    result = cloud.run("aws", {"vpcs": [lab.vpc_b]})
    printed = io.StringIO()
    scan_command.print_machines(result, printed)
    table = printed.getvalue()
    assert all(instance in table for instance in lab.b)
    assert table.splitlines()[-1] == f"4 aws machines in {lab.vpc_b} ({REGION})"
    with pytest.raises(InvalidParams, match="cloud mode"):
        cloud.run("gcp", {})


def test_a_terminated_record_without_interfaces() -> None:
    """The shape real EC2 gives a terminated instance: no interfaces, no VPC, no addresses."""
    document = aws.instance_document(
        {
            "InstanceId": "i-0abc",
            "State": {"Code": 48, "Name": "terminated"},
            "InstanceType": "t3.small",
            "ImageId": "ami-0abc",
            "Placement": {"AvailabilityZone": "us-east-2a"},
            "PlatformDetails": "Linux/UNIX",
            "NetworkInterfaces": [],
            "Tags": [{"Key": "Name", "Value": "gone"}],
        }
    )
    assert document["state"] == "terminated" and document["vpc"] is None and document["subnet"] is None
    assert document["privateAddresses"] == [] and document["publicAddresses"] == [] and document["macs"] == []
    assert document["platform"] == "Linux/UNIX" and document["name"] == "gone" and document["launchTime"] is None


def test_the_guard_keeps_tests_on_loopback(metadata_guard: LoopbackGuard) -> None:
    """The guard every test here runs under: a metadata address is refused before any packet leaves."""
    addresses: list[tuple[str, int] | tuple[str, int, int, int]] = [
        ("169.254.169.254", 80),
        ("fd00:ec2::254", 80, 0, 0),
        ("ec2.us-east-2.amazonaws.com", 443),
    ]
    for address in addresses:
        family = socket.AF_INET6 if len(address) == 4 else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock, pytest.raises(OSError, match="test guard"):
            sock.connect(address)
    assert metadata_guard.attempts == ["169.254.169.254", "fd00:ec2::254", "ec2.us-east-2.amazonaws.com"]
    metadata_guard.attempts.clear()


def test_an_unknown_profile_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(OperationFailed) as caught:
        aws.check({})
    assert caught.value.code == "no-credential" and "no-such-profile" in str(caught.value)
