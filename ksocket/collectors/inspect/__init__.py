"""Host inspection (``hosts.inspect``): logging in to one host over SSH, WinRM or SNMP and collecting.

The constants the command line needs live here, so that ``ksocket`` can build its parser without
loading the inspectors and their libraries.
"""

PROTOCOLS = ("ssh", "winrm", "snmp")
DEFAULT_PROTOCOL_TIMEOUT = 120.0
MAX_PROTOCOL_TIMEOUT = 3600.0
