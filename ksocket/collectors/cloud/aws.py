"""``networks.scan`` in ``aws`` mode (manual 1.3): the EC2 instances of a VPC, as the EC2 API lists them.

``collect(params, context)`` with params (all optional; the intranet mode's params are ignored):

============ ==================================================================================
``vpcs``      VPC ids (``vpc-…``) to list; default: the VPC(s) of the agent's own instance, read
              from the instance metadata service (IMDSv2, falling back to IMDSv1)
``region``    the region to ask; default: the region of the AWS config (``~/.aws/config``,
              ``AWS_PROFILE``, ``AWS_DEFAULT_REGION``)
``pageSize``  instances per DescribeInstances page, 5 to 1000 (default 1000)
============ ==================================================================================

Credentials are boto3's standard chain: environment, the shared files ``~/.aws/credentials`` and
``~/.aws/config`` (the profile ``aws configure`` writes, or ``AWS_PROFILE``), then the EC2
instance's IAM role. Retries of throttled and failed calls are botocore's ``standard`` mode
(``AWS_MAX_ATTEMPTS`` / ``max_attempts`` in the config, 3 attempts by default); what still fails
becomes a transient ``unreachable`` for the pipeline's own backoff. Permission errors
(``UnauthorizedOperation``, ``AccessDenied``, ``AuthFailure``…) are ``auth-failed``, never retried.

The agent's own VPC comes from the metadata service at ``metadata_endpoint`` (an argument, for
tests), else ``AWS_EC2_METADATA_SERVICE_ENDPOINT``, else ``http://169.254.169.254`` (or
``http://[fd00:ec2::254]`` when ``AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6``).
``AWS_EC2_METADATA_DISABLED=true`` turns that lookup off unless an endpoint is passed as an
argument: the operation then needs ``vpcs``.

The result document (docs/cloud-results.md)::

    {"mode": "aws", "region": "us-east-2", "vpcSource": "params" | "metadata",
     "vpcs": [{"id", "name", "cidrs", "ipv6Cidrs", "isDefault", "tags",
               "subnets": [{"id", "name", "cidr", "ipv6Cidrs", "availabilityZone", "tags"}]}],
     "instances": [{"id", "name", "tags", "state", "type", "architecture", "vpc", "subnet",
                    "availabilityZone", "image", "platform", "launchTime", "macs",
                    "privateAddresses": [{"address", "primary", "interface", "subnet", "mac", "dnsName"}],
                    "publicAddresses": [{"address", "interface", "privateAddress", "dnsName", "elastic"}],
                    "ipv6Addresses": [{"address", "interface", "subnet", "mac"}]}]}
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from ksocket import __version__, redact
from ksocket.collectors.base import Context, Document, InvalidParams, OperationFailed
from ksocket.collectors.cloud import common
from ksocket.collectors.cloud.common import dig
from ksocket.protocol import ErrorCode

__all__ = [
    "DEFAULT_METADATA_ENDPOINT",
    "Request",
    "check",
    "collect",
    "failure",
    "instance_document",
    "own_vpcs",
    "resolve_metadata_endpoint",
    "validate",
]

DEFAULT_METADATA_ENDPOINT = "http://169.254.169.254"
DEFAULT_METADATA_ENDPOINT_V6 = "http://[fd00:ec2::254]"
DEFAULT_PAGE_SIZE = 1000
MAX_VPCS = 200  # the most values one EC2 filter takes

NO_REGION = "no AWS region: set region in ~/.aws/config (aws configure), or pass params.region (ksocket scan --region)"
NAME_THE_VPCS = "name the VPCs in params.vpcs (ksocket scan --mode aws VPC_ID…)"
NO_CREDENTIALS = (
    "no AWS credentials: attach an IAM role to the agent's EC2 instance, or configure a profile "
    "in ~/.aws/credentials (aws configure)"
)

SCAN_CALLS = {  # the EC2 API calls a scan makes, by IAM action, with the client's method
    "ec2:DescribeVpcs": "describe_vpcs",
    "ec2:DescribeSubnets": "describe_subnets",
    "ec2:DescribeInstances": "describe_instances",
}

VPC_ID = re.compile(r"vpc-[0-9a-f]{8,17}")
REGION = re.compile(r"[a-z]{2,4}(-[a-z]+)+-\d{1,2}")

AUTH_CODES = frozenset(
    {
        "UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "AuthFailure", "InvalidClientTokenId",
        "SignatureDoesNotMatch", "UnrecognizedClientException", "ExpiredToken", "ExpiredTokenException",
        "InvalidToken", "MissingAuthenticationToken", "RequestExpired", "OptInRequired", "Blocked",
    }
)  # fmt: skip
TRANSIENT_CODES = frozenset(
    {
        "RequestLimitExceeded", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
        "RequestThrottledException", "TooManyRequestsException", "EC2ThrottledException", "SlowDown",
        "InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable", "RequestTimeout",
        "RequestTimeoutException", "PriorRequestNotComplete",
    }
)  # fmt: skip
NOT_FOUND_CODES = frozenset({"InvalidVpcID.NotFound", "InvalidVpcID.Malformed"})


@dataclass(frozen=True)
class Request:
    vpcs: tuple[str, ...] | None  # None: the agent's own
    region: str | None  # None: the config's
    page_size: int


def validate(params: Document) -> Request:
    """The operation's params, checked before anything is sent."""
    return Request(
        vpcs=common.string_list(params, "vpcs", VPC_ID, "a VPC id (vpc-…)", limit=MAX_VPCS),
        region=common.optional_string(params, "region", REGION, "an AWS region code such as us-east-2"),
        page_size=common.integer(params, "pageSize", DEFAULT_PAGE_SIZE, 5, 1000),
    )


# --- errors ------------------------------------------------------------------------------------


def failure(exc: BaseException, action: str) -> OperationFailed:
    """The OperationFailed for a botocore exception raised while doing ``action`` (no traceback leaves here)."""
    if isinstance(exc, OperationFailed):
        return exc
    if isinstance(exc, botocore.exceptions.NoRegionError):
        return InvalidParams(NO_REGION)
    if isinstance(exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
        return OperationFailed(ErrorCode.NO_CREDENTIAL, f"{NO_CREDENTIALS} ({common.one_line(exc, 120)})")
    if isinstance(exc, botocore.exceptions.ProfileNotFound):
        return OperationFailed(ErrorCode.NO_CREDENTIAL, f"{common.one_line(exc)}: fix AWS_PROFILE or ~/.aws/config")
    if isinstance(exc, botocore.exceptions.ConfigParseError | botocore.exceptions.InvalidConfigError):
        return InvalidParams(f"AWS config: {common.one_line(exc)}")
    if isinstance(exc, botocore.exceptions.CredentialRetrievalError):
        return OperationFailed(ErrorCode.AUTH_FAILED, f"AWS credentials: {common.one_line(exc)}")
    if isinstance(exc, botocore.exceptions.ReadTimeoutError):
        return OperationFailed(ErrorCode.TIMEOUT, f"{action}: {common.one_line(exc)}", transient=True)
    if isinstance(exc, botocore.exceptions.ConnectionError | botocore.exceptions.ConnectionClosedError):
        return OperationFailed(ErrorCode.UNREACHABLE, f"{action}: {common.one_line(exc)}", transient=True)
    if isinstance(exc, botocore.exceptions.ClientError):
        return _client_failure(exc, action)
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return OperationFailed(ErrorCode.INTERNAL, f"{action}: {common.one_line(exc)}")
    return OperationFailed(ErrorCode.INTERNAL, f"{action}: {type(exc).__name__}: {common.one_line(exc)}")


def _client_failure(exc: botocore.exceptions.ClientError, action: str) -> OperationFailed:
    error = exc.response.get("Error", {})
    code = str(error.get("Code") or "")
    status = dig(exc.response, "ResponseMetadata", "HTTPStatusCode")
    text = f"{action}: {code or status}: {common.one_line(error.get('Message') or exc, 300)}"
    if code in AUTH_CODES or (code not in TRANSIENT_CODES and status in (401, 403)):
        return OperationFailed(ErrorCode.AUTH_FAILED, text)
    if code in TRANSIENT_CODES or (isinstance(status, int) and (status >= 500 or status == 429)):
        return OperationFailed(ErrorCode.UNREACHABLE, text, transient=True)
    if code in NOT_FOUND_CODES:
        return InvalidParams(text)
    return OperationFailed(ErrorCode.INTERNAL, text)


@contextlib.contextmanager
def _errors(action: str) -> Iterator[None]:
    try:
        yield
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise failure(exc, action) from None
    except ValueError as exc:  # botocore's word for a malformed setting, e.g. an endpoint URL
        raise InvalidParams(f"{action}: {common.one_line(exc)}") from None


# --- session -----------------------------------------------------------------------------------


@dataclass
class _Aws:
    session: boto3.session.Session
    region: str
    credentials_from: str

    def ec2(self) -> Any:
        config = botocore.config.Config(
            retries={"mode": "standard"},  # max_attempts: AWS_MAX_ATTEMPTS or the config file's, else 3
            connect_timeout=10,
            read_timeout=60,
            user_agent_extra=f"ksocket/{__version__}",
        )
        with _errors("EC2 client"):
            return self.session.client("ec2", region_name=self.region, config=config)


def _open(region: str | None) -> _Aws:
    """A boto3 session with a region and credentials, or the one-line error naming what to set."""
    with _errors("AWS config"):
        session = boto3.session.Session(region_name=region)
        name = session.region_name
        if not name:
            raise InvalidParams(NO_REGION)
        credentials = session.get_credentials()
        if credentials is None:
            raise OperationFailed(ErrorCode.NO_CREDENTIAL, NO_CREDENTIALS)
        frozen = credentials.get_frozen_credentials()
    redact.register(frozen.secret_key, frozen.token)
    return _Aws(session, name, str(getattr(credentials, "method", None) or "unknown"))


# --- the agent's own VPC -------------------------------------------------------------------------


def resolve_metadata_endpoint(explicit: str | None = None) -> str | None:
    """The IMDS base URL to use; None when the metadata service is disabled and none was passed."""
    if explicit:
        return explicit.rstrip("/")
    if os.environ.get("AWS_EC2_METADATA_DISABLED", "").strip().lower() == "true":
        return None
    configured = os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", "").strip()
    if configured:
        return configured.rstrip("/")
    if os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "").strip().lower() == "ipv6":
        return DEFAULT_METADATA_ENDPOINT_V6
    return DEFAULT_METADATA_ENDPOINT


def own_vpcs(endpoint: str | None) -> tuple[str, ...]:
    """The VPCs of the agent's instance's network interfaces, from the metadata service at ``endpoint``."""
    if endpoint is None:
        raise InvalidParams(
            "no VPC named and the EC2 instance metadata service is disabled (AWS_EC2_METADATA_DISABLED): "
            f"{NAME_THE_VPCS}"
        )
    headers: dict[str, str] = {}
    try:
        try:
            token = common.metadata_request(
                "PUT", f"{endpoint}/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"}
            )
            headers["X-aws-ec2-metadata-token"] = token.decode("ascii").strip()
        except common.MetadataError as error:
            if error.status not in (404, 405):  # 404/405: a service without IMDSv2; go on with IMDSv1
                raise
        macs = common.metadata_request("GET", f"{endpoint}/latest/meta-data/network/interfaces/macs/", headers)
        vpcs: list[str] = []
        for line in macs.decode("ascii", "replace").split():
            address = line.strip().rstrip("/")
            if not address:
                continue
            vpc = common.metadata_request(
                "GET", f"{endpoint}/latest/meta-data/network/interfaces/macs/{address}/vpc-id", headers
            )
            text = vpc.decode("ascii", "replace").strip()
            if VPC_ID.fullmatch(text) and text not in vpcs:
                vpcs.append(text)
    except common.MetadataError as error:
        raise OperationFailed(
            ErrorCode.UNREACHABLE,
            f"EC2 instance metadata service at {endpoint}: {error}; if the agent does not run on EC2, {NAME_THE_VPCS}",
        ) from None
    if not vpcs:
        raise OperationFailed(ErrorCode.INTERNAL, f"EC2 instance metadata service at {endpoint} names no VPC")
    return tuple(vpcs)


# --- documents ---------------------------------------------------------------------------------


def _name(raw: Mapping[str, Any]) -> str | None:
    name = common.tags(raw.get("Tags")).get("Name")
    return name or None


def instance_document(raw: Mapping[str, Any]) -> Document:
    """One DescribeInstances instance as the result's instance object."""
    private: list[Document] = []
    public: list[Document] = []
    ipv6: list[Document] = []
    macs: list[str] = []
    interfaces = sorted(
        (eni for eni in raw.get("NetworkInterfaces") or () if isinstance(eni, Mapping)),
        key=lambda eni: (dig(eni, "Attachment", "NetworkCardIndex") or 0, dig(eni, "Attachment", "DeviceIndex") or 0),
    )
    for eni in interfaces:
        interface = eni.get("NetworkInterfaceId")
        address_mac = common.mac(eni.get("MacAddress"))
        if address_mac and address_mac not in macs:
            macs.append(address_mac)
        for item in eni.get("PrivateIpAddresses") or ():
            address = item.get("PrivateIpAddress")
            if not address:
                continue
            private.append(
                {
                    "address": address,
                    "primary": bool(item.get("Primary")) and dig(eni, "Attachment", "DeviceIndex") in (0, None),
                    "interface": interface,
                    "subnet": eni.get("SubnetId"),
                    "mac": address_mac,
                    "dnsName": item.get("PrivateDnsName") or None,
                }
            )
            association = item.get("Association") or {}
            if association.get("PublicIp"):
                public.append(
                    {
                        "address": association["PublicIp"],
                        "interface": interface,
                        "privateAddress": address,
                        "dnsName": association.get("PublicDnsName") or None,
                        "elastic": bool(association.get("AllocationId"))
                        or association.get("IpOwnerId") not in (None, "amazon"),
                    }
                )
        for item in eni.get("Ipv6Addresses") or ():
            if item.get("Ipv6Address"):
                ipv6.append(
                    {
                        "address": item["Ipv6Address"],
                        "interface": interface,
                        "subnet": eni.get("SubnetId"),
                        "mac": address_mac,
                    }
                )
    if not private and raw.get("PrivateIpAddress"):  # no interfaces listed (an old or odd record)
        private.append(
            {
                "address": raw["PrivateIpAddress"],
                "primary": True,
                "interface": None,
                "subnet": raw.get("SubnetId"),
                "mac": None,
                "dnsName": raw.get("PrivateDnsName") or None,
            }
        )
    if not public and raw.get("PublicIpAddress"):
        public.append(
            {
                "address": raw["PublicIpAddress"],
                "interface": None,
                "privateAddress": raw.get("PrivateIpAddress"),
                "dnsName": raw.get("PublicDnsName") or None,
                "elastic": False,
            }
        )
    platform = raw.get("PlatformDetails") or ("Windows" if raw.get("Platform") == "windows" else None)
    return {
        "id": raw.get("InstanceId"),
        "name": _name(raw),
        "tags": common.tags(raw.get("Tags")),
        "state": dig(raw, "State", "Name"),
        "type": raw.get("InstanceType"),
        "architecture": raw.get("Architecture"),
        "vpc": raw.get("VpcId") or next((eni.get("VpcId") for eni in interfaces if eni.get("VpcId")), None),
        "subnet": raw.get("SubnetId") or (private[0]["subnet"] if private else None),
        "availabilityZone": dig(raw, "Placement", "AvailabilityZone"),
        "image": raw.get("ImageId"),
        "platform": platform,
        "launchTime": common.iso_time(raw.get("LaunchTime")),
        "macs": macs,
        "privateAddresses": private,
        "publicAddresses": public,
        "ipv6Addresses": ipv6,
    }


def _cidrs(raw: Mapping[str, Any], key: str, field: str) -> list[str]:
    """The associated blocks of an association set (``CidrBlock`` + ``CidrBlockState``, and IPv6 alike)."""
    blocks = [block for block in raw.get(key) or () if isinstance(block, Mapping)]
    return [
        str(block[field])
        for block in blocks
        if block.get(field) and dig(block, f"{field}State", "State") in (None, "associated", "associating")
    ]


def _vpc_document(raw: Mapping[str, Any], subnets: list[Document]) -> Document:
    cidrs = _cidrs(raw, "CidrBlockAssociationSet", "CidrBlock") or ([raw["CidrBlock"]] if raw.get("CidrBlock") else [])
    return {
        "id": raw.get("VpcId"),
        "name": _name(raw),
        "cidrs": cidrs,
        "ipv6Cidrs": _cidrs(raw, "Ipv6CidrBlockAssociationSet", "Ipv6CidrBlock"),
        "isDefault": bool(raw.get("IsDefault")),
        "tags": common.tags(raw.get("Tags")),
        "subnets": subnets,
    }


def _subnet_document(raw: Mapping[str, Any]) -> Document:
    return {
        "id": raw.get("SubnetId"),
        "name": _name(raw),
        "cidr": raw.get("CidrBlock"),
        "ipv6Cidrs": _cidrs(raw, "Ipv6CidrBlockAssociationSet", "Ipv6CidrBlock"),
        "availabilityZone": raw.get("AvailabilityZone"),
        "tags": common.tags(raw.get("Tags")),
    }


# --- the operation -------------------------------------------------------------------------------


def collect(params: Document, context: Context, *, metadata_endpoint: str | None = None) -> Document:
    """``networks.scan`` in aws mode; ``metadata_endpoint`` overrides where the agent's VPC is looked up."""
    request = validate(params)
    aws = _open(request.region)
    if request.vpcs is not None:
        vpcs, source = request.vpcs, "params"
    else:
        vpcs, source = own_vpcs(resolve_metadata_endpoint(metadata_endpoint)), "metadata"
    context.check_cancelled()
    ec2 = aws.ec2()
    vpc_filter = [{"Name": "vpc-id", "Values": list(vpcs)}]
    where = f"in {aws.region}"

    with _errors(f"ec2:DescribeVpcs {where}"):
        found = {vpc["VpcId"]: vpc for vpc in ec2.describe_vpcs(Filters=vpc_filter).get("Vpcs", [])}
    missing = [vpc for vpc in vpcs if vpc not in found]
    if missing:
        raise InvalidParams(f"no VPC {', '.join(missing)} {where} (or the credentials cannot see it)")
    context.check_cancelled()

    subnets: dict[str, list[Document]] = {vpc: [] for vpc in vpcs}
    with _errors(f"ec2:DescribeSubnets {where}"):
        for page in ec2.get_paginator("describe_subnets").paginate(Filters=vpc_filter):
            for raw in page.get("Subnets", []):
                subnets.setdefault(raw.get("VpcId"), []).append(_subnet_document(raw))
            context.check_cancelled()

    instances: list[Document] = []
    with _errors(f"ec2:DescribeInstances {where}"):
        pages = ec2.get_paginator("describe_instances").paginate(
            Filters=vpc_filter, PaginationConfig={"PageSize": request.page_size}
        )
        for page in pages:
            for reservation in page.get("Reservations", []):
                instances.extend(instance_document(raw) for raw in reservation.get("Instances", []))
            more = bool(page.get("NextToken"))
            context.progress(len(instances), len(instances) + (1 if more else 0))
            context.check_cancelled()

    instances.sort(key=lambda item: (item["vpc"] or "", item["id"] or ""))
    return {
        "mode": "aws",
        "region": aws.region,
        "vpcSource": source,
        "vpcs": [_vpc_document(found[vpc], sorted(subnets.get(vpc, []), key=lambda s: s["id"] or "")) for vpc in vpcs],
        "instances": instances,
    }


def check(params: Document | None = None) -> str:
    """For ``ksocket diagnostics``: region, credentials and EC2 reachability, listing nothing.

    Each call the scan makes, with ``DryRun``, answers ``DryRunOperation`` when it would be allowed
    and ``UnauthorizedOperation`` when not, without returning anything.
    """
    request = validate(params or {})
    aws = _open(request.region)
    ec2 = aws.ec2()
    for action, method in SCAN_CALLS.items():
        try:
            getattr(ec2, method)(DryRun=True)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "DryRunOperation":
                raise failure(exc, f"{action} {aws.region}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise failure(exc, f"{action} {aws.region}") from None
    return f"region {aws.region}, credentials from {aws.credentials_from}, {', '.join(SCAN_CALLS)} allowed"
