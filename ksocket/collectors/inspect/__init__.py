"""Host inspection (``hosts.inspect``): logging in to one host over SSH, WinRM or SNMP and collecting."""
