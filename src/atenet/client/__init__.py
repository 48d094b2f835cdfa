"""The host side of atenet, what `tok` runs on a client machine: the sans-I/O client core
(``core``), `tok connect`'s TAP shell (``connect``) and `tok monitor` (``monitor``)."""
