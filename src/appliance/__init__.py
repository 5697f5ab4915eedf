"""Provision and maintain air-gapped GPU Kubernetes appliances running Run:ai."""

__version__ = "0.1.0"
