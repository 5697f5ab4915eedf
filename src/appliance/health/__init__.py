"""GPU node health: the Xid parser and catalog, the node agent, the isolation controller, re-admission.

The agent and the controller run on appliance nodes with Debian's python3 and python3-yaml only: nothing
in this package imports typer, rich, ansible or a Kubernetes client library.
"""
