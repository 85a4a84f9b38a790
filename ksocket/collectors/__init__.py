"""Collectors: what operations do (discovery, ssh, snmp, winrm, aws, azure).

Each is a function of the operation's params and a :class:`~ksocket.collectors.base.Context`
returning a JSON-ready result document. Collectors know nothing of the link or the pipeline.
"""
