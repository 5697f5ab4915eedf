"""The offline bundle: every artifact of an appliance, versioned and checksummed."""
