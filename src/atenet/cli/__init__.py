"""The `atenet` (node operator) and `tok` (network owner / client) commands."""
