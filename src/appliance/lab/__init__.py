"""The lab: systemd containers that stand in for an appliance's machines."""
