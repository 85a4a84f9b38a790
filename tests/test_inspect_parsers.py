"""The SSH inspector's parsers: real outputs of each command, hostile values, and a fuzz run."""

from __future__ import annotations

import json
import random
import tracemalloc
from typing import Any

import pytest

from ksocket.collectors.inspect import parsers

NONCE = "0123456789abcdef"
M = parsers.marker(NONCE)

OS_RELEASE_DEBIAN = """PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
"""

OS_RELEASE_ROCKY = """NAME="Rocky Linux"
VERSION="9.3 (Blue Onyx)"
ID="rocky"
ID_LIKE="rhel centos fedora"
VERSION_ID="9.3"
PRETTY_NAME="Rocky Linux 9.3 (Blue Onyx)"
"""

CPUINFO_X86 = "".join(
    f"processor\t: {n}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz\n"
    f"physical id\t: {n // 8}\ncpu cores\t: 4\nsiblings\t: 8\n\n"
    for n in range(16)
)

CPUINFO_ARM = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41

processor\t: 1
BogoMIPS\t: 108.00

Hardware\t: BCM2835
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""

MEMINFO = """MemTotal:        8008368 kB
MemFree:          512000 kB
MemAvailable:    4096000 kB
Buffers:          100000 kB
SwapTotal:       2097148 kB
SwapFree:        2097148 kB
"""

LSBLK = (
    r'NAME="sda" KNAME="sda" TYPE="disk" SIZE="500107862016" MODEL="Samsung\x20SSD\x20860" SERIAL="S3Z9NB0K" '
    'FSTYPE="" MOUNTPOINT="" PKNAME=""\n'
    'NAME="sda1" KNAME="sda1" TYPE="part" SIZE="536870912" MODEL="" SERIAL="" FSTYPE="vfat" '
    'MOUNTPOINT="/boot/efi" PKNAME="sda"\n'
    'NAME="sr0" KNAME="sr0" TYPE="rom" SIZE="1073741312" MODEL="QEMU DVD-ROM" SERIAL="" FSTYPE="" MOUNTPOINT="" '
    'PKNAME=""\n'
)

DF_TYPED = """Filesystem     Type     1024-blocks     Used Available Capacity Mounted on
/dev/sda2      ext4       479597248 81234567 373926345      18% /
/dev/sda1      vfat          523248     6220    517028       2% /boot/efi
//nas/share    cifs        10485760  1048576   9437184      10% /mnt/my share
"""

DF_PLAIN = """Filesystem           1024-blocks      Used Available Capacity Mounted on
/dev/root               30428648  12345678  16512345  43% /
"""

IP_J_ADDR = json.dumps(
    [
        {
            "ifindex": 1,
            "ifname": "lo",
            "mtu": 65536,
            "operstate": "UNKNOWN",
            "address": "00:00:00:00:00:00",
            "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}],
        },
        {
            "ifindex": 2,
            "ifname": "eth0",
            "mtu": 1500,
            "operstate": "UP",
            "address": "52:54:00:12:34:56",
            "addr_info": [
                {"family": "inet", "local": "198.18.0.10", "prefixlen": 24},
                {"family": "inet6", "local": "fe80::5054:ff:fe12:3456", "prefixlen": 64},
            ],
        },
    ]
)

IP_O_ADDR = r"""1: lo    inet 127.0.0.1/8 scope host lo\       valid_lft forever preferred_lft forever
1: lo    inet6 ::1/128 scope host \       valid_lft forever preferred_lft forever
4: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\       valid_lft forever preferred_lft forever
4: eth0    inet6 fd00::2/64 scope global nodad \       valid_lft forever preferred_lft forever
"""

IP_O_LINK = (
    "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000"
    "\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\n"
    "4: eth0@if5: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1400 qdisc pfifo_fast state UP mode DEFAULT group default"
    " qlen 1000\\    link/ether 02:fc:00:00:00:01 brd ff:ff:ff:ff:ff:ff\n"
)

NEIGH_TEXT = """192.0.2.1 dev eth0 lladdr 02:fc:00:00:00:05 STALE
198.18.0.99 dev eth0  FAILED
fe80::1 dev eth0 lladdr 02:fc:00:00:00:06 router REACHABLE
"""

PROC_ARP = """IP address       HW type     Flags       HW address            Mask     Device
192.0.2.1        0x1         0x2         02:fc:00:00:00:05     *        eth0
"""

ROUTE_TEXT = """default via 192.0.2.1 dev eth0 proto static metric 100
192.0.2.0/24 dev eth0 proto kernel scope link src 192.0.2.2
unreachable 198.19.0.0/16 proto static
"""

ROUTE_JSON = json.dumps(
    [
        {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0", "flags": []},
        {"dst": "192.0.2.0/24", "dev": "eth0", "protocol": "kernel", "scope": "link", "prefsrc": "192.0.2.2"},
    ]
)

DPKG = (
    "ii \tadduser\t3.134\tall\n"
    "ii \tlibc6\t2.36-9+deb12u4\tamd64\n"
    "rc \tremoved-thing\t1.0\tamd64\n"
    "hi \topenssh-server\t1:9.2p1-2+deb12u2\tamd64\n"
)

RPM = (
    "bash\t(none):5.1.8-6.el9\tx86_64\nkernel\t0:5.14.0-362.el9\tx86_64\ngpg-pubkey\t(none):fd431d51-4ae0493b\t(none)\n"
)

APK = "P:musl\nV:1.2.4-r2\nA:x86_64\nP:busybox\nV:1.36.1-r15\nA:x86_64\n"

DMI = """/sys/class/dmi/id/sys_vendor:QEMU
/sys/class/dmi/id/product_name:Standard PC (Q35 + ICH9, 2009)
/sys/class/dmi/id/bios_version:1.16.2-debian-1.16.2-1
/sys/class/dmi/id/not_a_field:ignored
"""


def report_text(**overrides: str) -> str:
    sections = {
        "id": "1000\nkstest",
        "hostname": "web01",
        "uname": "Linux\n6.1.0-18-amd64\nx86_64\n#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1",
        "os-release": OS_RELEASE_DEBIAN,
        "release-files": "/etc/debian_version\t12.5",
        "cpuinfo": CPUINFO_X86,
        "nproc": "16",
        "meminfo": MEMINFO,
        "lsblk": LSBLK,
        "df": DF_TYPED,
        "ip-addr": IP_J_ADDR,
        "ip-link": "",
        "neigh": NEIGH_TEXT,
        "route": ROUTE_JSON,
        "route6": "fe80::/64 dev eth0 proto kernel metric 256 pref medium",
        "dpkg": DPKG,
        "rpm": "",
        "apk": "",
        "dmi": DMI,
        "dmi-sudo": "/sys/class/dmi/id/product_serial:ABC123",
        "uptime": "12345.67 45678.90",
        "end": "",
    }
    sections.update(overrides)
    return "".join(f"\n{M}{name}\n{body}\n" for name, body in sections.items())


# --- sections ----------------------------------------------------------------------------------


def test_sections_are_split_on_this_runs_markers_only() -> None:
    forged = parsers.marker("ffffffffffffffff")
    text = f"banner\n{M}hostname\nweb01\n{forged}id\n{M}uptime\n1.5 2\n{M}hostname\nforged\n"
    sections = parsers.split_sections(text, NONCE)
    assert sections == {"hostname": f"web01\n{forged}id", "uptime": "1.5 2"}
    assert parsers.split_sections("no markers at all\n", NONCE) == {}


@pytest.mark.parametrize("shape", ["one section", "every section"])
def test_megabytes_of_short_lines_are_parsed_in_bounded_memory(shape: str) -> None:
    from ksocket.collectors.inspect.ssh import MAX_OUTPUT, SSHInspector

    # every section goes through its parser, slowly under tracemalloc: an eighth of the output is enough
    names, size = (["id"], MAX_OUTPUT) if shape == "one section" else (list(parsers.SECTIONS), MAX_OUTPUT // 8)
    output = b"".join(f"\n{M}{name}\n".encode() + b"ab\n" * (size // 3 // len(names)) for name in names)
    tracemalloc.start()
    try:
        report = SSHInspector._parse(output, NONCE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report["hostname"] in ("", "ab")
    assert peak < 8 * size  # split into lines whole, it took over 40 times the output's size


def test_a_section_is_cut_at_max_section_characters() -> None:
    text = f"{M}dpkg\n" + "x" * (parsers.MAX_SECTION + 10) + f"\n{M}end\n"
    sections = parsers.split_sections(text, NONCE)
    assert len(sections["dpkg"]) == parsers.MAX_SECTION and sections["end"] == ""


def test_a_full_report() -> None:
    report = parsers.parse_report(parsers.split_sections(report_text(), NONCE))
    assert report["hostname"] == "web01"
    assert report["os"]["family"] == "debian"
    assert report["os"]["name"] == "Debian GNU/Linux"
    assert report["os"]["version"] == "12"
    assert report["os"]["kernel"] == "6.1.0-18-amd64"
    assert report["os"]["architecture"] == "x86_64"
    assert report["cpu"] == {"model": "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz", "count": 16, "sockets": 2, "cores": 8}
    assert report["memory"]["total_bytes"] == 8008368 * 1024
    assert [d["name"] for d in report["disks"]] == ["sda", "sda1", "sr0"]
    assert report["filesystems"][0]["mountpoint"] == "/"
    assert report["interfaces"][1]["mac"] == "52:54:00:12:34:56"
    assert report["neighbors"][0] == {
        "address": "192.0.2.1",
        "mac": "02:fc:00:00:00:05",
        "interface": "eth0",
        "state": "STALE",
    }
    assert [r["destination"] for r in report["routes"]] == ["default", "192.0.2.0/24", "fe80::/64"]
    assert report["routes"][2]["family"] == "inet6"
    assert [p["name"] for p in report["packages"]] == ["adduser", "libc6", "openssh-server"]
    assert report["dmi"]["product_serial"] == "ABC123"
    assert report["dmi"]["sys_vendor"] == "QEMU"
    assert report["uptime_seconds"] == 12345.67
    assert report["privileges"] == {"user": "kstest", "uid": 1000, "root": False, "sudo": True}
    assert report["warnings"] == []


def test_missing_sections_give_an_empty_report_with_warnings() -> None:
    report = parsers.parse_report({})
    assert report["hostname"] == ""
    assert report["packages"] == [] and report["interfaces"] == []
    assert report["uptime_seconds"] is None
    assert any("sections missing" in w and "hostname" in w for w in report["warnings"])


# --- one parser at a time ----------------------------------------------------------------------


def test_os_release_and_family() -> None:
    rocky = parsers.parse_os_release(OS_RELEASE_ROCKY)
    assert rocky["id"] == "rocky" and rocky["version_id"] == "9.3"
    assert parsers.os_family(rocky, {}, "Linux") == "redhat"
    ubuntu = parsers.parse_os_release('ID=ubuntu\nID_LIKE=debian\nNAME="Ubuntu"\n')
    assert parsers.os_family(ubuntu, {}, "Linux") == "debian"
    assert parsers.os_family({}, {"alpine-release": "3.19.1"}, "Linux") == "alpine"
    assert parsers.os_family({}, {}, "FreeBSD") == "freebsd"
    escaped = parsers.parse_os_release(r'PRETTY_NAME="A \"quoted\" \$name"' + "\n")
    assert escaped["pretty_name"] == 'A "quoted" $name'


def test_cpuinfo_without_physical_ids_counts_processors() -> None:
    arm = parsers.parse_cpuinfo(CPUINFO_ARM)
    assert arm == {"model": "BCM2835", "count": 2, "cores": 2}
    assert parsers.parse_cpuinfo(CPUINFO_ARM, "4\n")["count"] == 4


def test_meminfo_and_uptime() -> None:
    memory = parsers.parse_meminfo(MEMINFO)
    assert memory == {
        "total_bytes": 8008368 * 1024,
        "free_bytes": 512000 * 1024,
        "available_bytes": 4096000 * 1024,
        "swap_total_bytes": 2097148 * 1024,
        "swap_free_bytes": 2097148 * 1024,
    }
    assert parsers.parse_uptime("350735.47 234388.90\n") == 350735.47
    for bad in ("", "nan 1", "-5 1", "inf", "1e400", "x"):
        assert parsers.parse_uptime(bad) is None


def test_lsblk_unescapes_and_df_keeps_spaces_in_mount_points() -> None:
    disks = parsers.parse_lsblk(LSBLK)
    assert disks[0]["model"] == "Samsung SSD 860"
    assert disks[0]["size_bytes"] == 500107862016
    assert disks[1]["parent"] == "sda" and disks[1]["fstype"] == "vfat"
    typed = parsers.parse_df(DF_TYPED)
    assert typed[2] == {
        "device": "//nas/share",
        "type": "cifs",
        "size_bytes": 10485760 * 1024,
        "used_bytes": 1048576 * 1024,
        "available_bytes": 9437184 * 1024,
        "mountpoint": "/mnt/my share",
    }
    plain = parsers.parse_df(DF_PLAIN)
    assert plain == [
        {
            "device": "/dev/root",
            "type": "",
            "size_bytes": 30428648 * 1024,
            "used_bytes": 12345678 * 1024,
            "available_bytes": 16512345 * 1024,
            "mountpoint": "/",
        }
    ]


def test_ip_text_fallback_joins_link_and_addresses() -> None:
    interfaces = parsers.parse_ip_addr(IP_O_ADDR, IP_O_LINK)
    by_name = {i["name"]: i for i in interfaces}
    assert set(by_name) == {"lo", "eth0"}
    assert by_name["eth0"]["mac"] == "02:fc:00:00:00:01"
    assert by_name["eth0"]["mtu"] == 1400 and by_name["eth0"]["state"] == "UP"
    assert by_name["lo"]["mac"] == ""  # all zeros is no address
    assert by_name["eth0"]["addresses"] == [
        {"family": "inet", "address": "192.0.2.2", "prefixlen": 24},
        {"family": "inet6", "address": "fd00::2", "prefixlen": 64},
    ]


def test_neighbours_in_three_formats() -> None:
    text = parsers.parse_neighbors(NEIGH_TEXT)
    assert text[0] == {"address": "192.0.2.1", "mac": "02:fc:00:00:00:05", "interface": "eth0", "state": "STALE"}
    assert text[1]["mac"] == "" and text[1]["state"] == "FAILED"
    assert text[2]["address"] == "fe80::1" and text[2]["state"] == "REACHABLE"
    arp = parsers.parse_neighbors(PROC_ARP)
    assert arp == [{"address": "192.0.2.1", "mac": "02:fc:00:00:00:05", "interface": "eth0", "state": ""}]
    js = parsers.parse_neighbors('[{"dst":"192.0.2.1","dev":"eth0","lladdr":"02:FC:00:00:00:05","state":["STALE"]}]')
    assert js == [{"address": "192.0.2.1", "mac": "02:fc:00:00:00:05", "interface": "eth0", "state": "STALE"}]


def test_routes_text_and_json() -> None:
    text = parsers.parse_routes(ROUTE_TEXT)
    assert text[0]["destination"] == "default" and text[0]["gateway"] == "192.0.2.1" and text[0]["metric"] == 100
    assert text[1]["source"] == "192.0.2.2" and text[1]["scope"] == "link"
    assert text[2]["type"] == "unreachable" and text[2]["destination"] == "198.19.0.0/16"
    js = parsers.parse_routes(ROUTE_JSON)
    assert [(r["destination"], r["gateway"], r["interface"]) for r in js] == [
        ("default", "192.0.2.1", "eth0"),
        ("192.0.2.0/24", "", "eth0"),
    ]


def test_packages_of_three_managers() -> None:
    assert parsers.parse_dpkg(DPKG)[2] == {
        "name": "openssh-server",
        "version": "1:9.2p1-2+deb12u2",
        "architecture": "amd64",
        "manager": "dpkg",
    }
    rpm = parsers.parse_rpm(RPM)
    assert [(p["name"], p["version"], p["architecture"]) for p in rpm] == [
        ("bash", "5.1.8-6.el9", "x86_64"),
        ("kernel", "0:5.14.0-362.el9", "x86_64"),
        ("gpg-pubkey", "fd431d51-4ae0493b", ""),
    ]
    assert parsers.parse_apk(APK) == [
        {"name": "musl", "version": "1.2.4-r2", "architecture": "x86_64", "manager": "apk"},
        {"name": "busybox", "version": "1.36.1-r15", "architecture": "x86_64", "manager": "apk"},
    ]


def test_dmi_keeps_known_fields_only() -> None:
    assert parsers.parse_dmi(DMI) == {
        "sys_vendor": "QEMU",
        "product_name": "Standard PC (Q35 + ICH9, 2009)",
        "bios_version": "1.16.2-debian-1.16.2-1",
    }


# --- hostile and oversized output --------------------------------------------------------------


def test_hostile_values_stay_inert_text() -> None:
    hostile = "ii \t$(touch /tmp/pwned);`id`\x1b[31m\x00\t1.0\r\nrm -rf /\tamd64\n"
    packages = parsers.parse_dpkg(hostile)
    for package in packages:
        assert all(ord(c) >= 32 for value in package.values() for c in value)
    assert parsers.clean("a\x00b\x1b[2Jc\u2028d") == "a b [2Jc d"
    assert len(parsers.clean("x" * 100000)) == parsers.MAX_STRING
    assert parsers.parse_hostname("\x00\x00\n" + "h" * 1000) == "h" * 255


def test_caps_on_items() -> None:
    lines = "".join(f"ii \tpkg{n}\t1.{n}\tamd64\n" for n in range(parsers.MAX_PACKAGES + 500))
    assert len(parsers.parse_dpkg(lines)) == parsers.MAX_PACKAGES
    routes = "".join(f"10.{n // 256 % 256}.{n % 256}.0/24 dev eth0\n" for n in range(parsers.MAX_ROUTES + 10))
    assert len(parsers.parse_routes(routes)) == parsers.MAX_ROUTES
    many = {"family": "inet", "local": "10.0.0.1", "prefixlen": 8}
    addresses = json.dumps(
        [{"ifname": "eth0", "addr_info": [many] * 1000}]
        + [{"ifname": f"if{n}", "addr_info": [many]} for n in range(parsers.MAX_INTERFACES + 3)]
    )
    interfaces = parsers.parse_ip_addr(addresses)
    assert len(interfaces) == parsers.MAX_INTERFACES
    assert len(interfaces[0]["addresses"]) == parsers.MAX_ADDRESSES
    assert len(interfaces[1]["addresses"]) == 1
    assert parsers.parse_ip_addr("[" + " " * (parsers.MAX_SECTION + 1) + "]") == []  # too big to look at


def test_deeply_nested_json_is_not_a_crash() -> None:
    assert parsers.parse_ip_addr("[" * 200000) == []
    assert parsers.parse_routes("[" * 200000 + "]" * 200000) == []
    assert parsers.parse_neighbors('{"a": ' * 50000) == []


# --- fuzz --------------------------------------------------------------------------------------

# --- hosts without ip: ifconfig, arp -an, netstat -rn; /etc/machine-id ------------------------

# net-tools 2.10 on Debian 12 (this project's CI machine), as printed
IFCONFIG_NET_TOOLS = """eth0: flags=4163<UP,BROADCAST,RUNNING,MULTICAST>  mtu 1400
        inet 192.0.2.2  netmask 255.255.255.0  broadcast 192.0.2.255
        inet6 fd00::2  prefixlen 64  scopeid 0x0<global>
        inet6 fe80::fc:ff:fe00:1  prefixlen 64  scopeid 0x20<link>
        ether 02:fc:00:00:00:01  txqueuelen 1000  (Ethernet)
        RX packets 25573  bytes 639265418 (609.6 MiB)
        TX errors 0  dropped 0 overruns 0  carrier 0  collisions 0

ifb0: flags=130<BROADCAST,NOARP>  mtu 1500
        ether c2:7f:e8:a2:4d:f3  txqueuelen 32  (Ethernet)

lo: flags=73<UP,LOOPBACK,RUNNING>  mtu 65536
        inet 127.0.0.1  netmask 255.0.0.0
        inet6 ::1  prefixlen 128  scopeid 0x10<host>
        loop  txqueuelen 1000  (Local Loopback)
"""
# busybox 1.36 and net-tools before 1.60-25 (the recorded shape, with an alias interface)
IFCONFIG_BUSYBOX = """eth0      Link encap:Ethernet  HWaddr 02:42:AC:11:00:02
          inet addr:172.17.0.2  Bcast:172.17.255.255  Mask:255.255.0.0
          inet6 addr: fe80::42:acff:fe11:2/64 Scope:Link
          UP BROADCAST RUNNING MULTICAST  MTU:1500  Metric:1
          RX packets:12 errors:0 dropped:0 overruns:0 frame:0

eth0:1    Link encap:Ethernet  HWaddr 02:42:AC:11:00:02
          inet addr:172.18.0.9  Bcast:172.18.0.255  Mask:255.255.255.0
          UP BROADCAST RUNNING MULTICAST  MTU:1500  Metric:1

lo        Link encap:Local Loopback
          inet addr:127.0.0.1  Mask:255.0.0.0
          UP LOOPBACK RUNNING  MTU:65536  Metric:1
"""
# FreeBSD 14 (the recorded shape: hex netmasks, %scope, lladdr on OpenBSD, ether on FreeBSD)
IFCONFIG_BSD = """em0: flags=8863<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST> metric 0 mtu 1500
\toptions=481009b<RXCSUM,TXCSUM,VLAN_MTU,VLAN_HWTAGGING,VLAN_HWCSUM,VLAN_HWFILTER,NOMAP>
\tether 08:00:27:aa:bb:cc
\tinet 10.0.2.15 netmask 0xffffff00 broadcast 10.0.2.255
\tinet6 fe80::a00:27ff:feaa:bbcc%em0 prefixlen 64 scopeid 0x1
\tmedia: Ethernet autoselect (1000baseT <full-duplex>)
\tstatus: active
lo0: flags=8049<UP,LOOPBACK,RUNNING,MULTICAST> metric 0 mtu 16384
\tinet 127.0.0.1 netmask 0xff000000
\tinet6 ::1 prefixlen 128
"""
# Debian 12's arp -an (first line), FreeBSD's (the others)
ARP_AN = """? (192.0.2.1) at 02:fc:00:00:00:05 [ether] on eth0
? (10.0.2.2) at 52:54:00:12:35:02 on em0 expires in 1195 seconds [ethernet]
? (10.0.2.5) at (incomplete) on em0 expired [ethernet]
gw.example (10.0.2.3) at <incomplete> on em0
"""
# net-tools 2.10 on Debian 12: netstat -rn; netstat -rn -A inet6
NETSTAT_LINUX = """Kernel IP routing table
Destination     Gateway         Genmask         Flags   MSS Window  irtt Iface
0.0.0.0         192.0.2.1       0.0.0.0         UG        0 0          0 eth0
192.0.2.0       0.0.0.0         255.255.255.0   U         0 0          0 eth0
Kernel IPv6 routing table
Destination                    Next Hop                   Flag Met Ref  Use If
fd00::/64                      ::                         U    256 1      0 eth0
::/0                           fd00::1                    UG   1024 2      0 eth0
::1/128                        ::                         Un   0   4      0 lo
::/0                           ::                         !n   -1  1      0 lo
"""
# FreeBSD 14 netstat -rn (the recorded shape), with macOS's abbreviated destinations added
NETSTAT_BSD = """Routing tables

Internet:
Destination        Gateway            Flags     Netif Expire
default            10.0.2.2           UGS         em0
10.0.2.0/24        link#1             U           em0
127.0.0.1          link#2             UH          lo0
10.9/16            10.0.2.7           UGS         em0
172.16             10.0.2.8           UGSc        em0

Internet6:
Destination                       Gateway                       Flags     Netif Expire
default                           link#1                        UGS         em0
::/96                             ::1                           UGRS        lo0
fe80::%em0/64                     link#1                        U           em0
"""


def test_ifconfig_in_three_dialects() -> None:
    eth0, ifb0, lo = parsers.parse_ifconfig(IFCONFIG_NET_TOOLS)
    assert eth0 == {
        "name": "eth0",
        "mac": "02:fc:00:00:00:01",
        "mtu": 1400,
        "state": "UP",
        "addresses": [
            {"family": "inet", "address": "192.0.2.2", "prefixlen": 24},
            {"family": "inet6", "address": "fd00::2", "prefixlen": 64},
            {"family": "inet6", "address": "fe80::fc:ff:fe00:1", "prefixlen": 64},
        ],
    }
    assert (ifb0["state"], ifb0["addresses"]) == ("DOWN", [])
    assert (lo["mac"], lo["addresses"][0]["prefixlen"]) == ("", 8)
    eth0, alias, lo = parsers.parse_ifconfig(IFCONFIG_BUSYBOX)
    assert (eth0["name"], eth0["mac"], eth0["mtu"], eth0["state"]) == ("eth0", "02:42:ac:11:00:02", 1500, "UP")
    assert eth0["addresses"] == [
        {"family": "inet", "address": "172.17.0.2", "prefixlen": 16},
        {"family": "inet6", "address": "fe80::42:acff:fe11:2", "prefixlen": 64},
    ]
    assert (alias["name"], alias["addresses"][0]["address"]) == ("eth0:1", "172.18.0.9")
    em0, lo0 = parsers.parse_ifconfig(IFCONFIG_BSD)
    assert (em0["mac"], em0["mtu"]) == ("08:00:27:aa:bb:cc", 1500)
    assert [(a["address"], a["prefixlen"]) for a in em0["addresses"]] == [
        ("10.0.2.15", 24),
        ("fe80::a00:27ff:feaa:bbcc", 64),
    ]
    assert [(a["address"], a["prefixlen"]) for a in lo0["addresses"]] == [("127.0.0.1", 8), ("::1", 128)]


def test_arp_an_keeps_incomplete_rows_marked_as_such() -> None:
    assert parsers.parse_neighbors(ARP_AN) == [
        {"address": "192.0.2.1", "mac": "02:fc:00:00:00:05", "interface": "eth0", "state": ""},
        {"address": "10.0.2.2", "mac": "52:54:00:12:35:02", "interface": "em0", "state": ""},
        {"address": "10.0.2.5", "mac": "", "interface": "em0", "state": "INCOMPLETE"},
        {"address": "10.0.2.3", "mac": "", "interface": "em0", "state": "INCOMPLETE"},
    ]


def test_netstat_routes_linux_and_bsd() -> None:
    routes = [
        (r["destination"], r["family"], r["gateway"], r["interface"], r["type"])
        for r in parsers.parse_netstat_routes(NETSTAT_LINUX)
    ]
    assert routes == [
        ("default", "inet", "192.0.2.1", "eth0", "unicast"),
        ("192.0.2.0/24", "inet", "", "eth0", "unicast"),
        ("fd00::/64", "inet6", "", "eth0", "unicast"),
        ("default", "inet6", "fd00::1", "eth0", "unicast"),
        ("::1/128", "inet6", "", "lo", "unicast"),
        ("default", "inet6", "", "lo", "unreachable"),
    ]
    routes = [
        (r["destination"], r["family"], r["gateway"], r["interface"], r["type"])
        for r in parsers.parse_netstat_routes(NETSTAT_BSD)
    ]
    assert routes == [
        ("default", "inet", "10.0.2.2", "em0", "unicast"),
        ("10.0.2.0/24", "inet", "", "em0", "unicast"),
        ("127.0.0.1/32", "inet", "", "lo0", "unicast"),
        ("10.9.0.0/16", "inet", "10.0.2.7", "em0", "unicast"),
        ("172.16.0.0/16", "inet", "10.0.2.8", "em0", "unicast"),
        ("default", "inet6", "", "em0", "unicast"),
        ("::/96", "inet6", "::1", "lo0", "unreachable"),
        ("fe80::/64", "inet6", "", "em0", "unicast"),
    ]


def test_machine_id() -> None:
    assert parsers.parse_machine_id("3d1219c7c4c5404aaa1f6d2a48adfda4\n") == "3d1219c7c4c5404aaa1f6d2a48adfda4"
    for junk in ("", "uninitialized\n", "0" * 32, "3d1219c7c4c5404aaa1f6d2a48adfda", "x" * 10_000):
        assert parsers.parse_machine_id(junk) == ""


def test_a_report_without_ip_reads_ifconfig_and_netstat() -> None:
    sections = {
        "ip-addr": "",
        "ip-link": "",
        "ifconfig": IFCONFIG_BSD,
        "neigh": ARP_AN,
        "route": "",
        "netstat": NETSTAT_BSD,
        "machine-id": "3d1219c7c4c5404aaa1f6d2a48adfda4",
    }
    report = parsers.parse_report(sections)
    assert [i["name"] for i in report["interfaces"]] == ["em0", "lo0"]
    assert len(report["neighbors"]) == 4 and len(report["routes"]) == 8
    assert report["machine_id"] == "3d1219c7c4c5404aaa1f6d2a48adfda4"


def test_a_million_row_arp_table_and_routing_table_are_capped() -> None:
    arp = "".join(
        f"? (10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}) at 02:00:00:00:00:01 on em0\n" for n in range(10**6)
    )
    assert len(parsers.parse_neighbors(arp)) == parsers.MAX_NEIGHBORS
    routes = "Destination Gateway Flags Netif\n" + "".join(
        f"10.{n >> 8 & 255}.{n & 255}/24 link#1 U em0\n" for n in range(10**5)
    )
    assert len(parsers.parse_netstat_routes(routes)) == parsers.MAX_ROUTES
    ifconfig = "".join(
        f"if{n}: flags=1<UP> mtu 1500\n\tinet 10.0.0.{n % 256} netmask 0xffffff00\n" for n in range(10**5)
    )
    interfaces = parsers.parse_ifconfig(ifconfig)
    assert len(interfaces) == parsers.MAX_INTERFACES


SAMPLES = [
    OS_RELEASE_DEBIAN,
    OS_RELEASE_ROCKY,
    CPUINFO_X86,
    CPUINFO_ARM,
    MEMINFO,
    LSBLK,
    DF_TYPED,
    DF_PLAIN,
    IP_J_ADDR,
    IP_O_ADDR,
    IP_O_LINK,
    NEIGH_TEXT,
    PROC_ARP,
    ROUTE_TEXT,
    ROUTE_JSON,
    DPKG,
    RPM,
    APK,
    DMI,
    IFCONFIG_NET_TOOLS,
    IFCONFIG_BUSYBOX,
    IFCONFIG_BSD,
    ARP_AN,
    NETSTAT_LINUX,
    NETSTAT_BSD,
    "12345.67 45678.90",
    "1000\nkstest",
]

PARSERS: list[Any] = [
    parsers.parse_id,
    parsers.parse_hostname,
    parsers.parse_uname,
    parsers.parse_os_release,
    parsers.parse_release_files,
    parsers.parse_cpuinfo,
    parsers.parse_meminfo,
    parsers.parse_lsblk,
    parsers.parse_df,
    parsers.parse_ip_addr,
    parsers.parse_neighbors,
    parsers.parse_routes,
    parsers.parse_dpkg,
    parsers.parse_rpm,
    parsers.parse_apk,
    parsers.parse_dmi,
    parsers.parse_uptime,
    parsers.parse_ifconfig,
    parsers.parse_netstat_routes,
    parsers.parse_machine_id,
]

JUNK = [
    "\x00",
    "\xff",
    "\ufffd",
    "\t",
    "\\",
    '"',
    "[",
    "{",
    ":",
    "=",
    "/",
    " ",
    "\n",
    "\r",
    "\x1b",
    "0x",
    "-1",
    "99999999999999999999999",
    "nan",
    "ii ",
    "P:",
    "default",
    "dev",
    "via",
    M,
]


def mutate(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 12)):
        action = rng.random()
        position = rng.randint(0, len(chars)) if chars else 0
        if action < 0.3 and chars:
            chars[min(position, len(chars) - 1)] = chr(rng.randint(0, 0x2FFF))
        elif action < 0.55:
            chars[position:position] = list(rng.choice(JUNK))
        elif action < 0.7 and chars:
            del chars[position : position + rng.randint(1, 40)]
        elif action < 0.8:
            chars[position:position] = list(rng.choice(SAMPLES))
        elif action < 0.9:
            chars[position:position] = list(rng.choice(JUNK) * rng.randint(1, 3000))
        else:
            chars = chars[:position]
    return "".join(chars)


def check_bounded(value: Any, depth: int = 0) -> None:
    assert depth < 8, "unexpectedly deep result"
    if isinstance(value, str):
        assert len(value) <= parsers.MAX_STRING
        assert not any(ord(c) < 32 or c == "\x7f" for c in value), repr(value)
    elif isinstance(value, list):
        assert len(value) <= parsers.MAX_PACKAGES
        for item in value:
            check_bounded(item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str)
            check_bounded(item, depth + 1)
    else:
        assert value is None or isinstance(value, bool | int | float)


@pytest.mark.parametrize("seed", range(4))
def test_fuzz_every_parser(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(800):
        kind = rng.random()
        if kind < 0.2:
            text = "".join(
                chr(rng.randint(0, 0x10FFFF) if rng.random() < 0.1 else rng.randint(0, 255))
                for _ in range(rng.randint(0, 3000))
            )
            text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        else:
            text = mutate(rng, rng.choice(SAMPLES))
        parse = rng.choice(PARSERS)
        result = parse(text)
        check_bounded(result)
        json.dumps(result)


@pytest.mark.parametrize("seed", range(3))
def test_fuzz_whole_reports(seed: int) -> None:
    rng = random.Random(1000 + seed)
    for _ in range(150):
        data = mutate(rng, report_text()).encode("utf-8", "surrogatepass")
        if rng.random() < 0.3:  # raw random bytes spliced in, as a broken host would send them
            cut = rng.randint(0, len(data))
            data = data[:cut] + bytes(rng.randint(0, 255) for _ in range(rng.randint(1, 5000))) + data[cut:]
        text = data.decode("utf-8", errors="replace")
        report = parsers.parse_report(parsers.split_sections(text, NONCE))
        check_bounded(report)
        json.dumps(report)
        assert set(report) >= {"hostname", "os", "cpu", "memory", "packages", "interfaces", "warnings"}
